"""Metadata proxy latency and throughput: cached credential GETs and token PUTs.

Server side (this process): a `MetadataService` in its `ServiceThread` (as the agent runs it) serving
one task on a pre-bound listening socket on 127.0.0.1, credentials from STS = moto in server mode on
loopback (`--fake-sts`: an in-process fake answering like STS; either way every measured GET is
served from the cache). The floor, in the same run and the same socket setup: a minimal aiohttp
low-level server on its own loop thread answering a fixed body of the same size.

Load (a separate process, so client CPU is not charged to the server): N keep-alive connections
driven by raw asyncio protocols (cheaper per request than aiohttp's client, so the server is the
bottleneck), Host 169.254.169.254 and a real IMDSv2 token:
- closed loop for a fixed duration at 50 (and 200 without --quick) concurrent clients: req/s, p50/p99;
- open loop at a fixed offered rate of 1,000 req/s over 50 connections; latency counted from the
  scheduled send time (no coordinated omission).

Last line: RESULT imds cred_p99_ms=<p99 at 1000 req/s> rps=<max cred GET req/s> floor_ratio=<cred/floor req/s>
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from imds.credentials import CredentialBroker  # noqa: E402
from imds.identity import TaskIdentity  # noqa: E402
from imds.service import MetadataService  # noqa: E402
from imds.thread import ServiceThread  # noqa: E402
from tests.moto_server import moto_server  # noqa: E402

HOST = "169.254.169.254"
ROLE = "bench-role"
ACCOUNT = "123456789012"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- client (separate process)


class Conn(asyncio.Protocol):
    def __init__(self, request: bytes, done: Any) -> None:
        self.request = request
        self.done = done
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, t0: float) -> None:
        self.t0 = t0
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(self.buf[9:12])
            del self.buf[:total]
            self.done(self, status)


async def load(port: int, request: bytes, conns: int, duration: float, rate: float, warmup: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    now = time.perf_counter
    start = now() + 0.2  # connect first
    record_from = start + warmup
    end = record_from + duration
    idle: collections.deque[Conn] = collections.deque()
    pending: collections.deque[float] = collections.deque()
    finished = loop.create_future()

    def done(conn: Conn, status: int) -> None:
        nonlocal errors
        t = now()
        if conn.t0 >= record_from and t <= end:
            latencies.append((t - conn.t0) * 1000)
            if status != 200:
                errors += 1
        if t >= end:
            if not finished.done():
                finished.set_result(None)
            return
        if rate <= 0:
            conn.send(now())
        elif pending:
            conn.send(pending.popleft())
        else:
            idle.append(conn)

    protocols: list[Conn] = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: Conn(request, done), "127.0.0.1", port)
        protocols.append(proto)
    while now() < start:
        await asyncio.sleep(0.005)
    if rate <= 0:
        for p in protocols:
            p.send(now())
    else:
        idle.extend(protocols)
        interval = 1.0 / rate
        next_at = now()
        while next_at < end:
            t = now()
            while next_at <= t:
                if idle:
                    idle.popleft().send(next_at)
                else:
                    pending.append(next_at)
                next_at += interval
            await asyncio.sleep(max(0.0, next_at - now()))
    try:
        await asyncio.wait_for(finished, duration + 10)
    except TimeoutError:
        pass
    for p in protocols:
        if p.transport is not None:
            p.transport.close()
    return {"lat": latencies, "errors": errors, "duration": duration}


def client_main(conn: Any, port: int, request: bytes, conns: int, duration: float, rate: float, warmup: float) -> None:
    conn.send(asyncio.run(load(port, request, conns, duration, rate, warmup)))
    conn.close()


def run_client(port: int, request: bytes, conns: int, duration: float, rate: float = 0.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=client_main, args=(child, port, request, conns, duration, rate, 0.5))
    proc.start()
    child.close()
    result: dict[str, Any] = parent.recv()
    proc.join(10)
    return result


# ---------------------------------------------------------------- server side


class FakeSts:
    def assume_role(self, RoleArn: str, RoleSessionName: str, DurationSeconds: int) -> Any:  # noqa: N803
        exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=DurationSeconds)
        return {
            "Credentials": {"AccessKeyId": "ASIA" + "B" * 16, "SecretAccessKey": "s" * 40,
                            "SessionToken": "t" * 600, "Expiration": exp},
            "AssumedRoleUser": {"Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{RoleSessionName}"},
        }


def moto_factory(endpoint: str) -> Any:
    import boto3

    def make() -> Any:
        return boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench",
                                     region_name="us-east-1").client("sts", endpoint_url=endpoint)

    iam = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench",
                                region_name="us-east-1").client("iam", endpoint_url=endpoint)
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
    arn = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=policy)["Role"]["Arn"]
    return make, arn


class Floor:
    """A minimal static aiohttp low-level server on its own loop thread."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sock = listener()

    def start(self) -> int:
        self.thread.start()

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return web.Response(body=self.body, content_type="text/plain")

        async def serve() -> Any:
            return await self.loop.create_server(web.Server(handler, access_log=None), sock=self.sock)

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return int(self.sock.getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def request(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", HOST)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def row(label: str, r: dict[str, Any]) -> str:
    lat = r["lat"]
    rps = len(lat) / r["duration"]
    return (f"{label:<34} n={len(lat):<7} rps={rps:8.0f} p50={statistics.median(lat):6.2f} ms "
            f"p99={pct(lat, 0.99):6.2f} ms max={max(lat):7.2f} ms errors={r['errors']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, 50 clients only (< 1 minute)")
    parser.add_argument("--fake-sts", action="store_true", help="in-process fake STS instead of moto")
    args = parser.parse_args()
    duration, rate_duration = (4.0, 8.0) if args.quick else (10.0, 20.0)
    levels = [50] if args.quick else [50, 200]

    stack = contextlib.ExitStack()
    floor: Floor | None = None
    thread: ServiceThread | None = None
    results: dict[str, dict[str, Any]] = {}
    try:
        if args.fake_sts:
            factory: Any = FakeSts
            role = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
            source = "fake STS (in-process)"
        else:
            endpoint = stack.enter_context(moto_server())
            factory, role = moto_factory(endpoint)
            source = "moto STS (server mode, loopback)"
        broker = CredentialBroker(factory, region="us-east-1")
        thread = ServiceThread(MetadataService(broker, os.urandom(32))).start()
        sock = listener()
        port = int(sock.getsockname()[1])
        ident = TaskIdentity("bench-task", "bench-job", role, "10.0.0.2", "0e:00:00:00:00:01", "ip-10-0-0-2",
                             "i-0bench", "m5.large", "us-east-1a", "us-east-1", ACCOUNT)

        async def add() -> None:
            await thread.service.add_task(ident, [sock])  # type: ignore[union-attr]
            await broker.get("bench-task")

        thread.submit(add()).result(30)
        status, token = request(port, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        assert status == 200, status
        cred_path = f"/latest/meta-data/iam/security-credentials/{ROLE}"
        status, body = request(port, "GET", cred_path, {"X-aws-ec2-metadata-token": token.decode()})
        assert status == 200 and json.loads(body)["Code"] == "Success", (status, body[:200])
        floor = Floor(b"x" * len(body))
        floor_port = floor.start()

        get_req = (f"GET {cred_path} HTTP/1.1\r\nHost: {HOST}\r\n"
                   f"X-aws-ec2-metadata-token: {token.decode()}\r\n\r\n").encode()
        put_req = (f"PUT /latest/api/token HTTP/1.1\r\nHost: {HOST}\r\n"
                   "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n").encode()
        floor_req = f"GET /floor HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        for c in levels:
            results[f"floor GET c={c}"] = run_client(floor_port, floor_req, c, duration)
            results[f"imds cred GET c={c}"] = run_client(port, get_req, c, duration)
        results["imds token PUT c=50"] = run_client(port, put_req, 50, duration)
        results["imds cred GET @1000/s (50 conns)"] = run_client(port, get_req, 50, rate_duration, 1000.0)
        if not args.quick:
            results["floor GET @1000/s (50 conns)"] = run_client(floor_port, floor_req, 50, rate_duration, 1000.0)
        snap = thread.snapshot()["bench-task"]["credentials"]
    finally:
        if floor is not None:
            floor.stop()
        if thread is not None:
            thread.stop()
        stack.close()

    print(f"# imds proxy, {os.cpu_count()} CPUs, credentials from {source}, cred body {len(body)} bytes, "
          f"client in a separate process")
    for label, r in results.items():
        print(row(label, r))
    print(f"credentials at end: remaining {snap['remaining_s']} s, STS failures {snap['failures']}")
    rps = {k: len(v["lat"]) / v["duration"] for k, v in results.items()}
    cred_rps = max(rps[f"imds cred GET c={c}"] for c in levels)
    floor_rps = max(rps[f"floor GET c={c}"] for c in levels)
    at_rate = results["imds cred GET @1000/s (50 conns)"]
    errors = sum(r["errors"] for r in results.values())
    if errors:
        print(f"WARNING: {errors} non-200 answers")
    print(f"RESULT imds cred_p99_ms={pct(at_rate['lat'], 0.99):.2f} rps={cred_rps:.0f} "
          f"floor_ratio={cred_rps / floor_rps:.2f}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
