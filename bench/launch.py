"""Launch latency: submit → Started through titus (scheduler + agent), side by side with the floor —
`docker run` of the same image and options (limits, seccomp profile, capabilities, masked paths,
built by titus's own hardening code) through the docker SDK — in the same run.

    python bench/launch.py            # 30 sequential + a burst of 20, per side
    python bench/launch.py --quick    # 10 sequential + a burst of 10 (under a minute)

Sequential launches alternate titus and floor so machine noise hits both alike. The last line is
`RESULT launch seq_p50_ratio=… burst_p50_ratio=… seq_p99_ms=… floor_seq_p99_ms=…`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from security.hardening import hardening_options  # noqa: E402
from security.posture import probe_host_posture  # noqa: E402
from security.profiles import default_policy, resolve_security  # noqa: E402
from tests.harness import IMAGE, Platform, wait_for  # noqa: E402
from titus_common.jobspec import ContainerSpec, Resources  # noqa: E402

CPU, MEMORY_MIB = 0.1, 64


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def titus_launch(p: Platform, command: list[str]) -> float:
    """Seconds from the submit call to the task's Started timestamp (agent clock, same host)."""
    t0 = time.time()
    job_id = p.submit(command, resources={"cpu": CPU, "memoryMiB": MEMORY_MIB})
    task = wait_for(lambda: next((t for t in p.tasks(job_id) if "Started" in t["timestamps"]), None), 60,
                    "Started")
    return float(task["timestamps"]["Started"]) - t0


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


def step_means(metrics: str) -> dict[str, float]:
    sums = dict(re.findall(r'titus_agent_step_seconds_sum\{phase="setup",step="(\w+)"\} ([0-9.e+-]+)', metrics))
    counts = dict(re.findall(r'titus_agent_step_seconds_count\{phase="setup",step="(\w+)"\} ([0-9.e+-]+)', metrics))
    return {k: float(sums[k]) / float(counts[k]) * 1000 for k in sums if float(counts.get(k, 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 sequential + burst of 10; ends within a minute")
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
            p.start_agent()
            floor_hc = floor_host_config(engine)
            short = ["true"]
            titus_launch(p, short)  # warm-up: image present, code paths hot
            floor_launch(engine, short, label, floor_hc)
            seq_t, seq_f = [], []
            for _ in range(seq_n):
                seq_t.append(titus_launch(p, short))
                seq_f.append(floor_launch(engine, short, label, floor_hc))
            seq_jobs = [j["id"] for j in p.api("GET", "/v1/jobs")["jobs"]]
            # The burst: all launches at once; containers stay up until measured.
            long = ["sleep", "120"]
            with ThreadPoolExecutor(max_workers=burst_n) as pool:
                burst_t = list(pool.map(lambda _: titus_launch(p, long), range(burst_n)))
            with ThreadPoolExecutor(max_workers=burst_n) as pool:
                burst_f = list(pool.map(lambda _: floor_launch(engine, long, label, floor_hc), range(burst_n)))
            breakdown = phase_breakdown(p, seq_jobs)
            steps = step_means(p.agent_metrics())
        finally:
            p.close()
            for c in engine.containers.list(all=True, filters={"label": f"titus.bench={label}"}):
                c.remove(force=True)

    def row(name: str, t: list[float], f: list[float]) -> tuple[str, float, float, float, float, float]:
        return (name, pct(t, 50) * 1000, pct(t, 99) * 1000, pct(f, 50) * 1000, pct(f, 99) * 1000,
                pct(t, 50) / pct(f, 50))

    rows = [row(f"sequential x{seq_n}", seq_t, seq_f), row(f"burst x{burst_n}", burst_t, burst_f)]
    print(f"{'launches':<16} {'titus p50':>10} {'titus p99':>10} {'floor p50':>10} {'floor p99':>10} {'p50 ratio':>10}")
    for name, tp50, tp99, fp50, fp99, ratio in rows:
        print(f"{name:<16} {tp50:>8.0f}ms {tp99:>8.0f}ms {fp50:>8.0f}ms {fp99:>8.0f}ms {ratio:>9.2f}x")
    print("where titus spends a sequential launch (median ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items())
          + " | agent steps (mean ms): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    print(
        f"RESULT launch seq_p50_ratio={rows[0][5]:.2f} burst_p50_ratio={rows[1][5]:.2f} "
        f"seq_p99_ms={rows[0][2]:.0f} floor_seq_p99_ms={rows[0][4]:.0f}"
    )


if __name__ == "__main__":
    main()
