"""Issue 13's API benchmark: the node sync round-trip and job submit over TLS (client
certificates, kept-alive connections) against the same scheduler code over plain HTTP, in one run.
Two schedulers are started side by side, one with `--pki` and one with `--insecure`. On the TLS
one, a node bootstraps its certificate the way the agent does (agent/scheduler_client.py), and the
admin submits with its certificate. No engine is needed.

    python bench/api.py            # 5000 syncs and 300 submits on each
    python bench/api.py --quick    # 1000 syncs and 100 submits on each

Last line: `RESULT api tls_sync_p99_ms=… plain_sync_p99_ms=… tls_overhead_ratio=… submit_rps=…`.
`submit_rps` is over TLS. Goal: tls_overhead_ratio ≤ 1.2 for a kept-alive sync.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.node_credentials import NodeCredentials
from agent.scheduler_client import SchedulerClient
from tests.harness import free_port, wait_for
from titus_common.pki import client_context
from titus_common.protocol import CapacityReport, NodeReport

JOB: dict[str, Any] = {"appName": "bench", "owner": "bench", "batch": {"size": 1},
                       "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["true"],
                                     "resources": {"cpu": 0.01, "memoryMiB": 16}}}


def _scheduler(tmp: Path, name: str, *trust: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    scheme = "https" if "--pki" in trust else "http"
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}",
                             "--db", str(tmp / f"{name}.db"), "--log-level", "WARNING", *trust],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"{scheme}://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=2, verify=str(tmp / "pki" / "ca.crt")).ok
        except requests.RequestException:
            return False

    wait_for(up, 20, f"{name} scheduler")
    return proc, url


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def _syncs(tls: SchedulerClient, plain: SchedulerClient, node: str, n: int) -> tuple[list[float], list[float]]:
    """Alternate one TLS sync and one plain sync (the order swapped every pair), so the machine's
    drift and hiccups hit both alike. Same client code, kept-alive connections on both."""
    report = NodeReport(id=node, capacity=CapacityReport(cpus=64, memory_mib=1 << 20, disk_mib=1 << 20))
    for client in (tls, plain):
        for _ in range(20):  # bootstrap / connect / warm up outside the measurement
            await client.sync(report, 0)
    out: dict[int, list[float]] = {id(tls): [], id(plain): []}
    for i in range(n):
        for client in ((tls, plain) if i % 2 else (plain, tls)):
            t = time.perf_counter()
            await client.sync(report, 0)
            out[id(client)].append((time.perf_counter() - t) * 1000)
    return out[id(tls)], out[id(plain)]


async def _submits(url: str, ssl: Any, n: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as http:
        t = time.perf_counter()
        for _ in range(n):
            async with http.post(f"{url}/v1/jobs", json=JOB) as r:
                assert r.status == 201, await r.text()
        return n / (time.perf_counter() - t)


async def run(tmp: Path, syncs: int, submits: int) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "scheduler.main", "ca", "init", "--pki", str(tmp / "pki")], check=True,
                   capture_output=True)
    token = subprocess.run([sys.executable, "-m", "scheduler.main", "token", "create", "--db", str(tmp / "tls.db"),
                            "--nodes", "bench-*"], check=True, capture_output=True, text=True).stdout.strip()
    (tmp / "token").write_text(token)
    tls_proc, tls_url = _scheduler(tmp, "tls", "--pki", str(tmp / "pki"))
    plain_proc, plain_url = _scheduler(tmp, "plain", "--insecure")
    try:
        tls = SchedulerClient(tls_url, "bench-1", NodeCredentials("bench-1", tmp / "pki" / "ca.crt", tmp / "node",
                                                                  tmp / "token"))
        plain = SchedulerClient(plain_url, "bench-1")
        try:
            tls_ms, plain_ms = await _syncs(tls, plain, "bench-1", syncs)
        finally:
            await tls.close()
            await plain.close()
        admin = client_context(tmp / "pki" / "ca.crt", tmp / "pki" / "admin.crt", tmp / "pki" / "admin.key")
        tls_rps = await _submits(tls_url, admin, submits)
        plain_rps = await _submits(plain_url, True, submits)
    finally:
        for p in (tls_proc, plain_proc):
            p.terminate()
            p.wait(15)
    return {
        "tls_sync_p50_ms": _p(tls_ms, 50), "tls_sync_p99_ms": _p(tls_ms, 99),
        "plain_sync_p50_ms": _p(plain_ms, 50), "plain_sync_p99_ms": _p(plain_ms, 99),
        "submit_rps": tls_rps, "plain_submit_rps": plain_rps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1000 syncs and 100 submits per scheduler")
    args = ap.parse_args()
    syncs, submits = (1000, 100) if args.quick else (5000, 300)
    with tempfile.TemporaryDirectory(prefix="titus-api-bench-") as tmp:
        r = asyncio.run(run(Path(tmp), syncs, submits))
    ratio = r["tls_sync_p99_ms"] / r["plain_sync_p99_ms"]
    print(f"sync (kept-alive, {syncs} each): TLS p50 {r['tls_sync_p50_ms']:.2f} ms p99 {r['tls_sync_p99_ms']:.2f} ms; "
          f"plain p50 {r['plain_sync_p50_ms']:.2f} ms p99 {r['plain_sync_p99_ms']:.2f} ms")
    print(f"submit ({submits} each, sequential): TLS {r['submit_rps']:.0f}/s, plain {r['plain_submit_rps']:.0f}/s")
    print(f"RESULT api tls_sync_p99_ms={r['tls_sync_p99_ms']:.2f} plain_sync_p99_ms={r['plain_sync_p99_ms']:.2f} "
          f"tls_overhead_ratio={ratio:.2f} submit_rps={r['submit_rps']:.0f} "
          f"tls_p50_ratio={r['tls_sync_p50_ms'] / r['plain_sync_p50_ms']:.2f} plain_submit_rps={r['plain_submit_rps']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
