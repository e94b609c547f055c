"""Host health: the checks' overhead on the agent, fault → condition (and "no new work") at the
scheduler, and the kernel-log rule engine's throughput.

    python bench/health.py            # overhead over 180 s, 5 kmsg faults, 3 engine faults
    python bench/health.py --quick    # overhead over 35 s, 3 kmsg faults, 1 engine fault

- overhead: the default checks (engine scratch container, disk, pressure, registry, kernel log) and
  the datapath ones (`forward`: `nft -j list ruleset` of the host; `eni`: the netlink reads of one
  link, its table and the rules, on the host's `lo` and an empty table; `imds`: the self-probe
  through a task-side link into a real metadata namespace and service) at their default periods in
  this process: CPU time of this process and its children (nft) / wall time (the engine's own work
  for the scratch container is dockerd's, not counted), RSS growth;
- detection: a real scheduler and agent (tests/harness.py); a line written to /dev/kmsg matching a
  rule, and the engine's socket cut (a relay in front of dockerd), each timed until the scheduler's
  node shows the condition and the taint (same heartbeat: "no new work" from then on);
- kmsg_lines_per_s: the shipped rules over 200,000 lines, 1 % of them matching.

Needs root (writes /dev/kmsg; sets printk_devkmsg=on for the run and restores it). Run under the
engine lock. Last line: `RESULT health detect_p50_s=… overhead_cpu_pct=… kmsg_lines_per_s=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import AgentConfig  # noqa: E402
from agent.docker_api import Docker  # noqa: E402
from agent.host.health import default_checks, kernel_log_signals  # noqa: E402
from agent.metrics import AgentMetrics  # noqa: E402
from health import HealthMonitor  # noqa: E402
from health.logsignal import SHIPPED_RULES, LogSignals, load_rules  # noqa: E402
from tests.harness import Platform, wait_for  # noqa: E402
from tests.integration.conftest import SocketProxy  # noqa: E402


def kmsg_throughput(n: int = 200_000) -> float:
    s = LogSignals(load_rules(SHIPPED_RULES), max_hits_per_second=1e9)
    lines = [f"docker0: port {i % 64}(veth{i:x}) entered forwarding state" for i in range(n)]
    for i in range(0, n, 100):
        lines[i] = f"INFO: task kworker/{i % 4}:1:{i} blocked for more than 120 seconds."
    t = time.perf_counter()
    for line in lines:
        s.feed(line)
    return n / (time.perf_counter() - t)


def _datapath_checks(state: Path) -> tuple[list[Any], Any]:
    """The forward, eni and imds (with its self-probe) checks on real host objects; and a closer."""
    from agent.host.health_sources import eni_link
    from agent.host.metadata import HostMetadata
    from agent.host.metadata_probe import MetadataProbe
    from health.checks.eni import EniCheck
    from health.checks.forward import ForwardCheck, ForwardFacts
    from health.checks.network import MetadataCheck, MetadataFacts
    from imds.credentials import CredentialBroker
    from imds.service import MetadataService
    from imds.thread import ServiceThread
    from netns.inspect import inspect_eni, nft_ruleset
    from netns.metadata import MetadataNetwork
    from netns.wiring import HostEni

    path = MetadataNetwork(f"bench-{uuid.uuid4().hex[:8]}", state / "netns")
    path.ensure()
    service = ServiceThread(MetadataService(CredentialBroker(endpoint_url=None, region="us-east-1"),
                                            os.urandom(32))).start()
    host = HostMetadata(service=service, path=path, token_dir=state / "tokens", key=os.urandom(32),
                        region="us-east-1", availability_zone="us-east-1a", instance_type="bench",
                        sts_endpoint_url=None)
    probe = MetadataProbe(host, "bench-health")

    def facts() -> MetadataFacts:
        r = probe.run()
        if not r.ok:
            raise RuntimeError(f"metadata probe failed: {r}")
        return MetadataFacts(path.pinned(), True, probe_ok=r.ok, probe_step=r.step, probe_ms=r.elapsed_ms)

    async def links() -> list[Any]:
        return [eni_link(await asyncio.to_thread(inspect_eni, "eni-bench", HostEni(99, "lo", "127.0.0.1")))]

    def close() -> None:
        service.stop()
        path.remove_namespace()

    return [ForwardCheck(lambda: ForwardFacts("local", nft_ruleset())), EniCheck(links), MetadataCheck(facts)], close


async def _overhead(seconds: float, state: Path) -> tuple[float, float, int]:
    d = Docker()
    config = AgentConfig(node_id="bench-health", state_dir=state)
    metrics = AgentMetrics()
    signals = kernel_log_signals(config, metrics)
    datapath, close = await asyncio.to_thread(_datapath_checks, state)  # pyroute2's sync IPRoute: not on a loop
    checks = [*default_checks(config, d, lambda: True), *datapath, *([signals] if signals else [])]
    runs = 0
    failures: list[str] = []

    def count(cond: Any, _prev: Any) -> None:
        nonlocal runs
        runs += 1
        # (`eni` on `lo` and an empty table is failed by design: what is measured is its reads)
        if cond.check in ("forward", "imds") and cond.status.value == "failed":
            failures.append(f"{cond.check} {cond.reason} {cond.message}")

    mon = HealthMonitor(checks, on_result=count)
    rss0 = psutil.Process().memory_info().rss
    def usage() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    try:
        c0, w0 = usage(), time.monotonic()
        mon.start()
        await asyncio.sleep(seconds)
        await mon.stop()
        c1, w1 = usage(), time.monotonic()
    finally:
        d.pool.shutdown(wait=False)
        await asyncio.to_thread(close)  # the metadata namespace unpinned, its service stopped
    if failures:
        raise SystemExit(f"a datapath check failed during the overhead run: {failures[0]}")
    cpu = c1 - c0
    return 100 * cpu / (w1 - w0), (psutil.Process().memory_info().rss - rss0) / 2**20, runs


def _condition(p: Platform, check: str) -> dict[str, Any] | None:
    node = p.node() or {}
    for c in node.get("health") or []:
        if c["check"] == check:
            return {**c, "taints": node.get("taints", {})}
    return None


def detect_kmsg(p: Platform, token: str, n: int) -> list[float]:
    out = []
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for i in range(n):
            line = f"{token} broken {i} {uuid.uuid4().hex[:6]}"
            t = time.monotonic()
            os.write(fd, (line + "\n").encode())
            wait_for(lambda: (c := _condition(p, "kernel-log")) is not None
                     and c["evidence"].get("BenchCondition.line") == line and "health.kernel-log" in c["taints"],
                     60, "kmsg condition at the scheduler")
            out.append(time.monotonic() - t)
    finally:
        os.close(fd)
    return out


def detect_engine(p: Platform, proxy: SocketProxy, n: int) -> list[float]:
    out = []
    for _ in range(n):
        wait_for(lambda: (c := _condition(p, "engine")) is not None and c["status"] == "ok", 120, "engine ok")
        t = time.monotonic()
        proxy.down()
        wait_for(lambda: (c := _condition(p, "engine")) is not None and c["status"] == "failed"
                 and "health.engine" in c["taints"], 120, "engine failed at the scheduler")
        out.append(time.monotonic() - t)
        proxy.up()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="35 s overhead, 3 kmsg + 1 engine faults")
    args = ap.parse_args()
    seconds, n_kmsg, n_engine = (35.0, 3, 1) if args.quick else (180.0, 5, 3)

    rate = kmsg_throughput()
    print(f"kmsg rule engine: {rate:,.0f} lines/s (shipped rules, 1 % matching)")
    with tempfile.TemporaryDirectory() as tmp:
        cpu_pct, rss_mib, runs = asyncio.run(_overhead(seconds, Path(tmp)))
    print(f"overhead over {seconds:g}s at default periods: {cpu_pct:.2f} % of one core, RSS +{rss_mib:.1f} MiB, "
          f"{runs} check runs")

    knob = Path("/proc/sys/kernel/printk_devkmsg")
    before = knob.read_text().strip()
    knob.write_text("on\n")
    engine = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        token = f"titus-health-bench-{uuid.uuid4().hex[:8]}"
        rules = tmpdir / "rules.json"
        rules.write_text(json.dumps({
            "source": "bench", "conditions": [{"type": "BenchCondition", "reason": "NoBenchProblem"}],
            "rules": [{"type": "permanent", "condition": "BenchCondition", "reason": "BenchProblem",
                       "pattern": f"{token} broken .*"}],
        }))
        proxy = SocketProxy(tmpdir / "docker.sock")
        p = Platform(tmpdir, engine)
        try:
            p.start_scheduler()
            p.start_agent("--docker-url", f"unix://{proxy.path}", "--health-log-rules", str(rules), "--no-network")
            kmsg = detect_kmsg(p, token, n_kmsg)
            eng = detect_engine(p, proxy, n_engine)
        finally:
            p.close()
            proxy.down()
            knob.write_text(before + "\n")
    print(f"kmsg line → condition + taint at the scheduler: {', '.join(f'{x:.1f}' for x in kmsg)} s "
          "(kernel-log period 10 s + heartbeat)")
    print(f"engine cut → condition + taint at the scheduler: {', '.join(f'{x:.1f}' for x in eng)} s "
          "(engine period 30 s + heartbeat)")
    detect = kmsg + eng
    print(f"RESULT health detect_p50_s={statistics.median(detect):.1f} kmsg_detect_p50_s={statistics.median(kmsg):.1f} "
          f"engine_detect_p50_s={statistics.median(eng):.1f} overhead_cpu_pct={cpu_pct:.2f} "
          f"overhead_rss_mib={rss_mib:.1f} kmsg_lines_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
