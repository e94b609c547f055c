"""Launch latency: submit → Started through titus (scheduler + agent), side by side with the floor —
`docker create` + `start` of the same image and options (limits, seccomp profile, capabilities,
masked paths, built by titus's own hardening code, no network) through the docker SDK — in the same run.

    python bench/launch.py            # 30 sequential, a burst of 20 and a burst of 50, per side
    python bench/launch.py --quick    # 10 sequential, a burst of 10 and a burst of 50

Columns: titus with networking (and so metadata) off, to show the network's own cost, sequential
against its own same-run floor samples; then titus with networking, metadata, cpuset and security on:
sequential, a burst, and a burst of 50. Sequential launches alternate titus and floor so machine
noise hits both alike. Each burst prints the CPU seconds per launch it cost the agent, the scheduler
and the rest of the machine (the engine), beside the floor's. The agent's step durations (min / median / max, from `/v1/steps`) are printed
for the networked agent. The last line is `RESULT launch seq_p50_ratio=… burst_p50_ratio=…
burst50_p50_ratio=… nonet_seq_p50_ratio=… seq_p99_ms=… floor_seq_p99_ms=…`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from security.hardening import hardening_options  # noqa: E402
from security.posture import probe_host_posture  # noqa: E402
from security.profiles import default_policy, resolve_security  # noqa: E402
from tests.harness import IMAGE, Platform, wait_for  # noqa: E402
from titus_common.jobspec import ContainerSpec, Resources  # noqa: E402

# Small enough that the bursts' 60 long tasks fit a 2-CPU host's capacity at once.
CPU, MEMORY_MIB = 0.02, 64
BURST50 = 50


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def titus_launch(p: Platform, command: list[str]) -> float:
    """Seconds from the submit call to the task's Started timestamp (agent clock, same host)."""
    t0 = time.time()
    job_id = p.submit(command, resources={"cpu": CPU, "memoryMiB": MEMORY_MIB})
    task = wait_for(lambda: next((t for t in p.tasks(job_id) if "Started" in t["timestamps"]), None), 300,
                    "Started")
    return float(task["timestamps"]["Started"]) - t0


def titus_burst(p: Platform, n: int, command: list[str]) -> list[float]:
    """n jobs submitted at once; seconds from each submit call to its task's Started timestamp. One
    poller watches them all: a poller per launch (50 clients at 10 Hz over TLS) cost this 2-core
    machine more CPU than the platform's own launch work, and the floor's SDK calls poll nothing."""
    def submit(_: int) -> tuple[str, float]:
        t0 = time.time()
        return p.submit(command, resources={"cpu": CPU, "memoryMiB": MEMORY_MIB}), t0

    with ThreadPoolExecutor(max_workers=n) as pool:
        submitted = dict(pool.map(submit, range(n)))
    started: dict[str, float] = {}

    def all_started() -> bool:
        for t in p.api("GET", "/v1/tasks?state=Started")["tasks"]:
            job_id = t["jobId"]
            if job_id in submitted and job_id not in started:
                started[job_id] = float(t["timestamps"]["Started"]) - submitted[job_id]
        return len(started) == n

    wait_for(all_started, 300, f"{n} burst tasks Started")
    return list(started.values())


def floor_host_config(engine: docker.DockerClient) -> dict[str, Any]:
    """The HostConfig titus gives a default task (same limits, seccomp profile, capabilities, masked
    paths), built by the same code, so the floor pays what titus pays inside the engine."""
    spec = ContainerSpec(image=IMAGE, resources=Resources(cpu=CPU, memory_mib=MEMORY_MIB))
    decision = resolve_security(spec, default_policy(), probe_host_posture(engine.api))
    options = hardening_options(decision, memory_mib=MEMORY_MIB)
    hc = options.host_config(
        lambda **kw: engine.api.create_host_config(
            network_mode="none", init=True, nano_cpus=int(CPU * 1e9), **kw
        )
    )
    return hc


def floor_launch(engine: docker.DockerClient, command: list[str], label: str, host_config: dict[str, Any]) -> float:
    """The same image and options through the docker SDK: create + start, returning when started."""
    t0 = time.time()
    created = engine.api.create_container(IMAGE, command, labels={"titus.bench": label}, host_config=host_config)
    engine.api.start(created["Id"])
    return time.time() - t0


def phase_breakdown(p: Platform, job_ids: list[str]) -> dict[str, float]:
    """Median time between the task's recorded transitions: where titus spends the launch."""
    gaps: dict[str, list[float]] = {"place": [], "deliver": [], "pipeline": []}
    for job_id in job_ids:
        for t in p.tasks(job_id):
            ts = t["timestamps"]
            if {"Accepted", "Launched", "StartInitiated", "Started"} <= set(ts):
                gaps["place"].append(ts["Launched"] - ts["Accepted"])
                gaps["deliver"].append(ts["StartInitiated"] - ts["Launched"])
                gaps["pipeline"].append(ts["Started"] - ts["StartInitiated"])
    return {k: statistics.median(v) * 1000 for k, v in gaps.items() if v}


def step_table(p: Platform) -> list[dict[str, Any]]:
    """The agent's recent step durations (agent/step_timings.py), setup phase."""
    rows = p.http.get(f"http://127.0.0.1:{p.agent_port}/v1/steps", timeout=5).json()["steps"]
    return [r for r in rows if r["phase"] == "setup"]


class CpuWindow:
    """CPU seconds spent over a window: the whole machine (/proc/stat), and the agent's and the
    scheduler's own (with their reaped children: `unshare`, `ip`, `nft`…); the rest is the engine
    (dockerd, containerd, shims, runc and the titus runtime) and the machine's other work."""

    def __init__(self, p: Platform) -> None:
        assert p.agent is not None and p.scheduler is not None
        self.procs = {"agent": psutil.Process(p.agent.p.pid), "scheduler": psutil.Process(p.scheduler.p.pid)}

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)

    def _own(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            c = proc.cpu_times()
            out[name] = float(c.user + c.system + c.children_user + c.children_system)
        return out

    def __enter__(self) -> "CpuWindow":
        self.b0, self.o0 = self._busy(), self._own()
        return self

    def __exit__(self, *_: object) -> None:
        o1 = self._own()
        self.seconds = {k: o1[k] - self.o0[k] for k in o1}
        self.seconds["rest"] = self._busy() - self.b0 - sum(self.seconds.values())


def sequential(p: Platform, engine: docker.DockerClient, n: int, label: str,
               floor_hc: dict[str, Any]) -> tuple[list[float], list[float]]:
    titus, floor = [], []
    for _ in range(n):
        titus.append(titus_launch(p, ["true"]))
        floor.append(floor_launch(engine, ["true"], label, floor_hc))
    return titus, floor


def burst(p: Platform, engine: docker.DockerClient, n: int, label: str,
          floor_hc: dict[str, Any]) -> tuple[list[float], list[float]]:
    """All launches at once; the containers stay up until the run ends."""
    long = ["sleep", "300"]
    with CpuWindow(p) as cpu:
        titus = titus_burst(p, n, long)
    # A client whose connection pool holds every concurrent call (the SDK's default of 10 overflows
    # at 50 threads, and urllib3 then fails a put back into a pool it is replacing).
    wide = docker.from_env(max_pool_size=n)
    try:
        with CpuWindow(p) as floor_cpu, ThreadPoolExecutor(max_workers=n) as pool:
            floor = list(pool.map(lambda _: floor_launch(wide, long, label, floor_hc), range(n)))
    finally:
        wide.close()
    print(f"burst x{n}: CPU seconds per launch: titus: agent {cpu.seconds['agent'] / n:.3f}, scheduler "
          f"{cpu.seconds['scheduler'] / n:.3f}, engine and the rest {cpu.seconds['rest'] / n:.3f}; floor: engine and "
          f"the rest {floor_cpu.seconds['rest'] / n:.3f} (agent and scheduler idle: "
          f"{(floor_cpu.seconds['agent'] + floor_cpu.seconds['scheduler']) / n:.3f})", flush=True)
    return titus, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 sequential, burst of 10, burst of 50")
    ap.add_argument("--seq", type=int, default=30)
    ap.add_argument("--burst", type=int, default=20)
    args = ap.parse_args()
    seq_n, burst_n = (10, 10) if args.quick else (args.seq, args.burst)
    engine = docker.from_env()
    label = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="titus-bench-") as tmp:
        p = Platform(Path(tmp), engine)
        try:
            p.start_scheduler()
            floor_hc = floor_host_config(engine)
            # Networking off first (its tasks end at once), then the same node with everything on.
            p.start_agent("--no-network")
            titus_launch(p, ["true"])  # warm-up: image present, code paths hot
            floor_launch(engine, ["true"], label, floor_hc)
            nonet_t, nonet_f = sequential(p, engine, seq_n, label, floor_hc)
            assert p.agent is not None
            p.agent.stop()
            p.start_agent()
            titus_launch(p, ["true"])
            seq_t, seq_f = sequential(p, engine, seq_n, label, floor_hc)
            seq_jobs = [j["id"] for j in p.api("GET", "/v1/jobs")["jobs"]]
            burst_t, burst_f = burst(p, engine, burst_n, label, floor_hc)
            burst50_t, burst50_f = burst(p, engine, BURST50, label, floor_hc)
            breakdown = phase_breakdown(p, seq_jobs)
            steps = step_table(p)
        finally:
            p.close()
            for c in engine.containers.list(all=True, filters={"label": f"titus.bench={label}"}):
                c.remove(force=True)

    def row(name: str, t: list[float], f: list[float]) -> tuple[str, float, float, float, float, float]:
        return (name, pct(t, 50) * 1000, pct(t, 99) * 1000, pct(f, 50) * 1000, pct(f, 99) * 1000,
                pct(t, 50) / pct(f, 50))

    rows = [row(f"no-net seq x{seq_n}", nonet_t, nonet_f), row(f"sequential x{seq_n}", seq_t, seq_f),
            row(f"burst x{burst_n}", burst_t, burst_f), row(f"burst x{BURST50}", burst50_t, burst50_f)]
    print(f"{'launches':<18} {'titus p50':>10} {'titus p99':>10} {'floor p50':>10} {'floor p99':>10} {'p50 ratio':>10}")
    for name, tp50, tp99, fp50, fp99, ratio in rows:
        print(f"{name:<18} {tp50:>8.0f}ms {tp99:>8.0f}ms {fp50:>8.0f}ms {fp99:>8.0f}ms {ratio:>9.2f}x")
    print("where titus spends a sequential launch (median ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
    print(f"agent setup steps, last {max((r['count'] for r in steps), default=0)} launches (ms):")
    print(f"  {'step':<10} {'min':>8} {'median':>8} {'mean':>8} {'max':>8}")
    for r in steps:
        print(f"  {r['step']:<10} {r['minMs']:>8.1f} {r['medianMs']:>8.1f} {r['meanMs']:>8.1f} {r['maxMs']:>8.1f}")
    nonet, seq, b, b50 = rows
    print(
        f"RESULT launch seq_p50_ratio={seq[5]:.2f} burst_p50_ratio={b[5]:.2f} burst50_p50_ratio={b50[5]:.2f} "
        f"nonet_seq_p50_ratio={nonet[5]:.2f} seq_p99_ms={seq[2]:.0f} floor_seq_p99_ms={seq[4]:.0f}"
    )


if __name__ == "__main__":
    main()
