#!/usr/bin/env python3
"""The failover burst end to end over the real protocol (issue 15): a real titus-scheduler process,
`titus-fleetsim` hosts in this process (long-poll sync + updates, launch model scaled by
--time-scale), steady state measured first (scheduler CPU %, RSS with every host heartbeating),
then the seed's failover: switch to pack, submit the burst at once, wait until every task is Started.

    python bench/fleet.py --quick    # 700 hosts, burst 750
    python bench/fleet.py            # 7,000 hosts, burst 7,500
    python bench/fleet.py --insecure # plain HTTP, for comparison

By default over mTLS, as in production (docs/trust.md): a cell CA made in the temp dir
(`titus-scheduler ca init`, whose admin certificate is the operator's), one bootstrap token for
'sim-*' with as many uses as hosts, and every simulated host bootstrapping its own node certificate
(`bootstrap:` line, timed apart from the burst; the burst's fleet keeps those certificates). Every
simulated host bootstraps from 127.0.0.1, so the bench opens the bootstrap limiter's bursts to the
fleet's size (`--bootstrap-source-burst`, `--bootstrap-burst`): with the defaults one address gets
1 bootstrap a second and the cell 20 a second after 200, i.e. ~6 min for 7,000 hosts of pacing that
production wants and this bench does not measure.

Last line: `RESULT fleet tls=… hosts=… burst=… all_started_s=… e2e_pps=… sync_p99_ms=… scheduler_rss_mb=…
steady_cpu_pct=… bootstrap_s=…`. all_started_s is wall seconds from the first submission until every task is Started;
the launch model runs at --time-scale (0.01: a 42 s cold launch takes 0.42 s), so at these speeds the
wall time is the platform's (scheduler + simulated agents sharing the 2 cores), not the model's.

Measured back to back on the 2-core machine (docs/fleet-burst.md), 7,000 hosts × 7,500 tasks:
mTLS: bootstrap 41.7 s (168 hosts/s), steady 61.2 % CPU / 3.1 GB RSS, all Started 18.8 s;
--insecure: steady 26.9 % / 259 MB, all Started 11.5 s. 700 × 750 mTLS: bootstrap 4.3 s, 5.6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetsim.main import run_burst  # noqa: E402
from fleetsim.sim import Fleet, LaunchModel  # noqa: E402
from fleetsim.trust import FleetTrust  # noqa: E402
from tests.harness import Proc, free_port, wait_for  # noqa: E402


HTTP = requests.Session()  # the bench's own calls (/healthz, /metrics); over TLS it verifies the cell CA
HTTP.trust_env = False


def _ok(url: str) -> bool:
    try:
        return HTTP.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def _cpu(pid: int) -> float:
    return float(sum(psutil.Process(pid).cpu_times()[:2]))


def _trust_cli(*argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "scheduler.main", *argv], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def make_trust(d: Path, hosts: int) -> tuple[FleetTrust, list[str]]:
    """A cell CA in `d`, a bootstrap token for the fleet (one use per host) and the admin certificate
    as the operator's; returns the fleet's credentials and the scheduler's TLS flags."""
    pki, db = d / "pki", d / "s.db"
    _trust_cli("ca", "init", "--pki", str(pki))
    token = _trust_cli("token", "create", "--db", str(db), "--nodes", "sim-*", "--uses", str(hosts), "--ttl", "2h")
    HTTP.verify = str(pki / "ca.crt")
    HTTP.cert = (str(pki / "admin.crt"), str(pki / "admin.key"))
    # One source address for the whole fleet (see the docstring): the buckets hold the fleet.
    flags = ["--pki", str(pki), "--bootstrap-source-burst", str(hosts), "--bootstrap-burst", str(hosts)]
    return FleetTrust(pki / "ca.crt", d / "sim", token, pki / "admin.crt", pki / "admin.key"), flags


@dataclass
class Steady:
    cpu_pct: float
    rss_mb: float
    bootstrap_s: float = 0.0  # until every host held its certificate (0 over plain HTTP)
    bootstrap_sched_cpu_s: float = 0.0
    bootstrap_fleet_cpu_s: float = 0.0


async def steady(url: str, hosts: int, seconds: float, pid: int, trust: FleetTrust | None) -> Steady:
    fleet = Fleet(url, hosts, LaunchModel(), wait_seconds=5.0, seed=1, trust=trust)
    stop = asyncio.Event()
    c0, f0, t0 = _cpu(pid), _cpu(os.getpid()), time.monotonic()
    task = asyncio.create_task(fleet.run(stop))
    ready = asyncio.create_task(fleet.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not fleet.ready.is_set():
        ready.cancel()
        task.result()  # a bootstrap refused: say why
        raise RuntimeError("the fleet stopped before it was bootstrapped")
    boot = Steady(0.0, 0.0, time.monotonic() - t0, _cpu(pid) - c0, _cpu(os.getpid()) - f0) if trust else Steady(0.0, 0.0)
    await asyncio.sleep(8.0)  # registrations settle
    p = psutil.Process(pid)
    c0, t0 = _cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    boot.cpu_pct = (_cpu(pid) - c0) / (time.monotonic() - t0) * 100
    stop.set()
    await task
    boot.rss_mb = p.memory_info().rss / 2**20
    return boot


def passes(url: str) -> dict[str, float]:
    """The scheduler's placement-pass histogram (cumulative): bucket bound → count, plus sum/count."""
    out: dict[str, float] = {}
    for line in HTTP.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("titus_scheduler_placement_pass_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("titus_scheduler_placement_pass_seconds_sum", "titus_scheduler_placement_pass_seconds_count")):
            out[line.split(" ", 1)[0].rsplit("_", 1)[1]] = float(line.rsplit(" ", 1)[1])
    return out


def pass_quantile(before: dict[str, float], after: dict[str, float], q: float) -> str:
    """The bucket bound holding quantile `q` of the passes between the two readings."""
    n = after.get("count", 0) - before.get("count", 0)
    if n <= 0:
        return "-"
    for le in sorted((k for k in after if k not in ("sum", "count")), key=lambda k: float(k.replace("+Inf", "inf"))):
        if after[le] - before.get(le, 0) >= q * n:
            return f"≤{float(le) * 1000:g} ms" if le != "+Inf" else "> 5 s"
    return "-"


def spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (collapsed stacks), until stopped with SIGINT."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--insecure", action="store_true", help="plain HTTP, no credentials (for comparison with mTLS)")
    ap.add_argument("--py-spy", type=Path, metavar="DIR",
                    help="sample the scheduler and this process (the fleet) with py-spy during the burst: DIR/*.txt")
    a = ap.parse_args()
    hosts, burst = (700, 750) if a.quick else (7000, 7500)
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        trust, flags = (None, ["--insecure"]) if a.insecure else make_trust(Path(d), hosts)
        url = f"{'http' if a.insecure else 'https'}://127.0.0.1:{port}"
        proc = Proc("scheduler", [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}",
                                  "--db", f"{d}/s.db", "--log-level", "WARNING", *flags], Path(d) / "scheduler.log")
        try:
            wait_for(lambda: _ok(f"{url}/healthz"), 15, "scheduler /healthz")
            assert proc.p.pid is not None
            st = asyncio.run(steady(url, hosts, 10.0, proc.p.pid, trust))
            cpu, rss = st.cpu_pct, st.rss_mb
            if trust is not None:
                print(f"bootstrap: {hosts} hosts each bootstrapped a node certificate in {st.bootstrap_s:.1f} s"
                      f" ({hosts / st.bootstrap_s:.0f}/s, 8 at a time; CPU: scheduler {st.bootstrap_sched_cpu_s:.1f} s,"
                      f" fleet {st.bootstrap_fleet_cpu_s:.1f} s); not part of the burst")
            print(f"steady: {hosts} hosts heartbeating (5 s long-polls{'' if a.insecure else ', mTLS'}):"
                  f" scheduler {cpu:.1f} % CPU, RSS {rss:.0f} MB")
            p0 = passes(url)
            spies = []
            if a.py_spy is not None:
                a.py_spy.mkdir(parents=True, exist_ok=True)
                spies = [spy(proc.p.pid, a.py_spy / "scheduler.txt"), spy(os.getpid(), a.py_spy / "fleet.txt")]
            load0 = os.getloadavg()[0]
            c0 = sum(psutil.Process(proc.p.pid).cpu_times()[:2])
            f0 = sum(psutil.Process().cpu_times()[:2])
            r = asyncio.run(run_burst(url, hosts, burst, 10, "pack", LaunchModel(time_scale=a.time_scale), timeout=900,
                                      trust=trust))
            sched_cpu = sum(psutil.Process(proc.p.pid).cpu_times()[:2]) - c0
            fleet_cpu = sum(psutil.Process().cpu_times()[:2]) - f0
            load1 = os.getloadavg()[0]
            for sp in spies:
                sp.send_signal(signal.SIGINT)
                sp.wait(60)
            p1 = passes(url)
            rss2 = psutil.Process(proc.p.pid).memory_info().rss / 2**20
        finally:
            proc.stop()
    print(f"burst: {burst} tasks on {hosts} hosts in pack: all Started after {r.all_started_s:.1f} s wall"
          f" (launch model at time scale {a.time_scale:g}), {r.e2e_pps:.0f} tasks/s end to end, sync p99 {r.sync_p99_ms:.0f} ms,"
          f" errors {r.errors}")
    print(f"  submitted in {r.submitted_s:.1f} s; submit→launch at the host p50 {r.assigned_p50_s:.1f} s p99 {r.assigned_p99_s:.1f} s;"
          f" submit→Started p50 {r.running_p50_s:.1f} s p99 {r.running_p99_s:.1f} s")
    n = p1.get("count", 0) - p0.get("count", 0)
    total = p1.get("sum", 0) - p0.get("sum", 0)
    print(f"  placement passes: {n:.0f}, {total:.2f} s in all, p50 {pass_quantile(p0, p1, 0.5)}, p99 {pass_quantile(p0, p1, 0.99)};"
          f" CPU during the burst: scheduler {sched_cpu:.1f} s, fleet {fleet_cpu:.1f} s (of {r.all_started_s * 2:.0f} core-s);"
          f" machine load average {load0:.1f} → {load1:.1f} (2 cores; other work on the machine competes)")
    print(f"RESULT fleet tls={0 if a.insecure else 1} hosts={hosts} burst={burst} all_started_s={r.all_started_s:.1f} e2e_pps={r.e2e_pps:.0f}"
          f" sync_p99_ms={r.sync_p99_ms:.0f} scheduler_rss_mb={max(rss, rss2):.0f} steady_cpu_pct={cpu:.1f}"
          f" running_p50_s={r.running_p50_s:.1f} running_p99_s={r.running_p99_s:.1f} pass_s_total={total:.2f}"
          f" bootstrap_s={st.bootstrap_s:.1f}")


if __name__ == "__main__":
    main()
