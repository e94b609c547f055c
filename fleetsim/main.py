"""`titus-fleetsim`: run simulated hosts against a real titus-scheduler and, optionally, a burst.

    titus-fleetsim --scheduler http://127.0.0.1:7100 --hosts 300 --burst 1000 --mode pack --time-scale 0.01
    titus-fleetsim --scheduler https://127.0.0.1:7100 --ca pki/ca.crt --cert pki/admin.crt --key pki/admin.key \
        --bootstrap-token-file TOKEN ...   # TLS: TOKEN from `titusctl admin token create --nodes 'sim-*' --uses N`

Registers the hosts, waits until the scheduler lists them all Ready, switches the mode if asked,
submits the burst (jobs of `--job-size` tasks, images from the hosts' pool), waits until every task is
Started, and prints `RESULT fleetsim hosts=… burst=… all_started_s=… e2e_pps=… sync_p99_ms=… errors=…`
(all_started_s in wall seconds; divide by --time-scale for model seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from fleetsim.sim import Fleet, LaunchModel
from fleetsim.trust import FleetTrust


@dataclass
class BurstResult:
    hosts: int
    burst: int
    all_started_s: float
    e2e_pps: float
    sync_p99_ms: float
    errors: int
    submitted_s: float = 0.0  # until the last submission was answered
    assigned_p50_s: float = 0.0  # a job's submission → its task's launch reached the host
    assigned_p99_s: float = 0.0
    running_p50_s: float = 0.0  # a job's submission → its task Started on the host
    running_p99_s: float = 0.0


async def _wait(pred_coro: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await pred_coro():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"fleetsim: {what} not reached in {timeout:g}s")
        await asyncio.sleep(0.1)


async def run_burst(base: str, hosts: int, burst: int, job_size: int = 10, mode: str | None = None,
                    model: LaunchModel | None = None, seed: int = 0, timeout: float = 300.0,
                    trust: FleetTrust | None = None) -> BurstResult:
    """`trust`: for an https scheduler (each simulated host bootstraps its certificate; the burst
    uses the operator's credentials)."""
    fleet = Fleet(base, hosts, model or LaunchModel(time_scale=0.01), seed=seed, wait_seconds=5.0, trust=trust)
    stop = asyncio.Event()
    runner = asyncio.create_task(fleet.run(stop))
    operator: ssl.SSLContext | bool = trust.operator_ssl() if trust is not None else True
    headers = trust.operator_headers() if trust is not None else {}
    try:
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=operator)) as http:
            async def bootstrapped() -> bool:
                if runner.done():
                    runner.result()  # a bootstrap refused: say why, now
                return fleet.ready.is_set()
            await _wait(bootstrapped, timeout, f"{hosts} hosts bootstrapped")

            async def all_synced() -> bool:  # a host the scheduler lists from an earlier run may not have yet
                return all(a.synced for a in fleet.agents)
            await _wait(all_synced, timeout, f"{hosts} hosts synced")

            async def all_ready() -> bool:  # a listing of every host is heavy at 7,000: not every 0.1 s
                async with http.get(f"{base}/v1/nodes") as r:
                    nodes = (await r.json())["nodes"]
                if sum(1 for n in nodes if n["id"].startswith("sim-") and n["status"] == "Ready") >= hosts:
                    return True
                await asyncio.sleep(2.0)
                return False
            await _wait(all_ready, timeout, f"{hosts} hosts Ready")
            await asyncio.sleep(min(5.0, fleet.wait_seconds))  # the first syncs' images reports settle
            if mode is not None:
                async with http.put(f"{base}/v1/admin/scheduling-mode", json={"mode": mode},
                                    headers={"X-Titus-Actor": "fleetsim"}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"mode switch refused: {await r.text()}")
            rng = random.Random(seed)
            started0 = fleet.stats.started
            t0 = time.monotonic()
            sizes = []
            left = burst
            while left > 0:
                sizes.append(min(job_size, left))
                left -= sizes[-1]
            gate = asyncio.Semaphore(16)  # submissions in flight, as many clients would

            sent: dict[str, float] = {}  # job id → when its submission was sent

            async def submit(n: int) -> None:
                spec = {"appName": "fleetsim", "owner": "fleetsim", "batch": {"size": n},
                        "container": {"image": f"registry.sim/app{rng.randrange(50)}:1", "command": ["run"],
                                      "resources": {"cpu": rng.choice([1, 1, 2, 2, 4]), "memoryMiB": 1024}}}
                async with gate:
                    at = time.monotonic()
                    async with http.post(f"{base}/v1/jobs", json=spec) as r:
                        if r.status != 201:
                            raise RuntimeError(f"submit refused: {await r.text()}")
                        sent[(await r.json())["id"]] = at
            await asyncio.gather(*(submit(n) for n in sizes))
            submitted = time.monotonic() - t0

            async def all_started() -> bool:
                return fleet.stats.started - started0 >= burst
            await _wait(all_started, timeout, f"{burst} tasks Started")
            took = time.monotonic() - t0
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)  # a bootstrap refusal was raised above
    lat = sorted(fleet.stats.sync_latency)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    st = fleet.stats
    ours = [t for t, j in st.job_of.items() if j in sent]
    assigned = sorted(st.received[t] - sent[st.job_of[t]] for t in ours)
    running = sorted(st.started_at[t] - sent[st.job_of[t]] for t in ours if t in st.started_at)
    return BurstResult(hosts, burst, took, burst / took, p99, st.errors, submitted,
                       _pct(assigned, 0.5), _pct(assigned, 0.99), _pct(running, 0.5), _pct(running, 0.99))


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="titus-fleetsim", description=__doc__.splitlines()[0])
    p.add_argument("--scheduler", default="http://127.0.0.1:7100")
    p.add_argument("--hosts", type=int, default=300)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--job-size", type=int, default=10)
    p.add_argument("--mode", choices=("spread", "pack"))
    p.add_argument("--time-scale", type=float, default=0.01, help="wall seconds per launch-model second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ca", type=Path, help="the cell CA (https scheduler)")
    p.add_argument("--cert", type=Path, help="operator client certificate (or --token-file)")
    p.add_argument("--key", type=Path, help="its key")
    p.add_argument("--token-file", type=Path, help="operator bearer token (or --cert/--key)")
    p.add_argument("--bootstrap-token-file", type=Path, help="bootstrap token for nodes 'sim-*' with --uses ≥ --hosts")
    a = p.parse_args(argv)
    if a.hosts < 1 or a.burst < 0 or a.job_size < 1 or a.time_scale <= 0:
        p.error("--hosts, --job-size ≥ 1, --burst ≥ 0, --time-scale > 0")
    https = a.scheduler.startswith("https:")
    if https and (a.ca is None or a.bootstrap_token_file is None or (a.cert is None and a.token_file is None)):
        p.error("an https scheduler needs --ca, --bootstrap-token-file and --cert/--key or --token-file")
    with tempfile.TemporaryDirectory(prefix="titus-fleetsim-") as keys:
        trust = None
        if https:
            trust = FleetTrust(a.ca, Path(keys), _read(p, a.bootstrap_token_file), a.cert, a.key,
                               _read(p, a.token_file) if a.token_file else None)
        r = asyncio.run(run_burst(a.scheduler, a.hosts, a.burst, a.job_size, a.mode,
                                  LaunchModel(time_scale=a.time_scale), a.seed, trust=trust))
    print(f"RESULT fleetsim hosts={r.hosts} burst={r.burst} all_started_s={r.all_started_s:.2f} e2e_pps={r.e2e_pps:.0f}"
          f" sync_p99_ms={r.sync_p99_ms:.0f} errors={r.errors}")
    sys.exit(0)


def _read(p: argparse.ArgumentParser, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        p.error(f"{path}: {e.strerror or e}")


if __name__ == "__main__":
    main()
