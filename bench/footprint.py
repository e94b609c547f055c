"""Footprint: the scheduler's and the agent's RSS before and after a burst of work has ended, or
(`--running`) the agent's footprint while it holds 0, 100 and 250 running tasks.

    python bench/footprint.py            # 10,000-task job; agent: 20 tasks with the largest env allowed
    python bench/footprint.py --quick    # the same 10,000-task job; agent: 5 tasks
    python bench/footprint.py --running  # agent at 0 / 100 / 250 running tasks, 60 s idle each
    python bench/footprint.py --running --quick   # the same, 20 s idle each

`--running` (issue 17): tiny `sleep` tasks (0.01 CPU, 16 MiB memory and disk) with networking, metadata, cpuset and
security on; at each level, once every task is Started, the agent is left idle and its RSS, CPU %
of one core over the window (sync loop at the agent's default long-poll, event watcher, rebalance,
GC, health checks at their default periods), threads, open
fds and sockets are read from /proc, with the scheduler's RSS. Last line `RESULT footprint
rss_mb_0=… rss_mb_100=… rss_mb_250=… idle_cpu_pct_0=… idle_cpu_pct_100=… idle_cpu_pct_250=…
threads_250=… fds_250=… sched_rss_mb_250=…`.

Scheduler: a 10,000-task job is submitted and killed (its tasks ask for more CPUs than the host has,
so none is placed: this measures the control plane, not the engine), then its retention (5 s here)
passes and the job leaves memory. Agent: tasks each carrying the largest environment a job spec
admits (4000 variables, ~1 MB, within the exec budget) run to completion and are forgotten. RSS is
read from /proc after each process has settled. Needs the engine: run under the shared lock
(`flock /tmp/titus-engine.lock python bench/footprint.py --quick`).

The last line is `RESULT footprint sched_rss_before_mb=… sched_rss_peak_mb=… sched_rss_after_mb=…
sched_rss_after_ratio=… agent_rss_before_mb=… agent_rss_peak_mb=… agent_rss_after_mb=…
agent_rss_after_ratio=…` (ratio = after / before).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import docker
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import AgentConfig  # noqa: E402
from tests.harness import IMAGE, Platform, wait_for  # noqa: E402

RETENTION = 5.0
BIG_ENV = {f"V{i:04d}": "x" * 240 for i in range(4000)}


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 1e6


def settled_rss(pid: int, seconds: float = 3.0) -> float:
    """The lowest RSS seen over a few seconds (a process that just finished a burst is still freeing)."""
    low = rss_mb(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.25)
        low = min(low, rss_mb(pid))
    return low


def agent_job(p: Platform, count: int, pid: int | None = None) -> tuple[float, set[str]]:
    """Tasks with the largest env a spec admits, run to completion and forgotten by the agent."""
    job_id = p.submit(["true"], count=count, env=BIG_ENV, resources={"cpu": 0.1, "memoryMiB": 64})
    peak = 0.0
    while p.job(job_id)["state"] != "Finished":
        peak = max(peak, rss_mb(pid)) if pid else 0.0
        time.sleep(0.2)
    reasons = {str(t["reason"]) for t in p.tasks(job_id)}
    wait_for(lambda: not p.containers(all=True), 60, "containers removed")
    return (max(peak, rss_mb(pid)) if pid else 0.0), reasons


def scheduler_job(p: Platform, size: int, pid: int | None = None) -> float:
    """`size` tasks submitted and killed (unplaceable: more CPUs than the host), then evicted."""
    spec = {"appName": "footprint", "owner": "bench", "batch": {"size": size},
            "container": {"image": IMAGE, "command": ["true"], "resources": {"cpu": 1000, "memoryMiB": 64}}}
    job_id = p.api("POST", "/v1/jobs", spec, expect=201)["id"]
    peak = rss_mb(pid) if pid else 0.0
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=60)
    peak = max(peak, rss_mb(pid)) if pid else 0.0
    wait_for(lambda: all(j["id"] != job_id for j in p.api("GET", "/v1/jobs")["jobs"]), 120,
             "the finished job evicted from memory")
    assert p.job(job_id)["state"] == "Finished"  # still answered, from the store
    return peak


def idle_figures(agent_pid: int, sched_pid: int, seconds: float) -> dict[str, float]:
    """The agent over an idle window: CPU % of one core, then RSS, threads, fds, sockets at its end."""
    proc = psutil.Process(agent_pid)
    t0, c0 = time.monotonic(), proc.cpu_times()
    time.sleep(seconds)
    t1, c1 = time.monotonic(), proc.cpu_times()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
    return {"rss_mb": rss_mb(agent_pid), "idle_cpu_pct": cpu, "threads": float(proc.num_threads()),
            "fds": float(proc.num_fds()), "sockets": float(len(proc.net_connections(kind="all"))),
            "sched_rss_mb": rss_mb(sched_pid)}


def running_footprint(quick: bool) -> int:
    levels, idle = (0, 100, 250), (20.0 if quick else 60.0)
    engine = docker.from_env()
    figures: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="titus-footprint-") as tmp:
        p = Platform(Path(tmp), engine)
        jobs: list[str] = []
        try:
            p.start_scheduler("--host-task-limit", str(max(levels) + 20))  # the default places 120 a host
            # The scheduler's count: 250 x 0.01 CPU fits; cpusets stay real. The long-poll at the
            # agent's own default (the harness shortens it for tests): idle CPU is at default periods.
            default_wait = AgentConfig.model_fields["sync_wait_seconds"].default
            p.start_agent("--cpus", "4", "--sync-wait", str(default_wait))
            assert p.scheduler is not None and p.agent is not None
            spid, apid = p.scheduler.p.pid, p.agent.p.pid
            warm = p.submit(["true"])  # every launch code path once
            p.wait_job_finished(warm, timeout=60)
            running = 0
            for level in levels:
                if level > running:
                    t0 = time.monotonic()
                    job = p.submit(["sleep", "3600"], count=level - running, killGraceSeconds=1,
                                   resources={"cpu": 0.01, "memoryMiB": 16, "diskMiB": 16})
                    jobs.append(job)
                    try:
                        wait_for(lambda j=job, n=level - running: len(p.started(j)) == n, 300, f"{level} tasks Started")
                    except AssertionError:
                        # A level the host cannot reach (capacity, the scheduler's host_task_limit).
                        print(f"only {running + len(p.started(job))} tasks Started: stopping below {level}", flush=True)
                        states = Counter((t["state"], str(t.get("reason"))) for t in p.tasks(job))
                        print(f"the job's tasks by state and reason: {dict(states)}", flush=True)
                        node = p.node() or {}
                        print(f"node taints: {node.get('taints')}", flush=True)
                        break
                    print(f"{level - running} more tasks Started in {time.monotonic() - t0:.0f}s", flush=True)
                    running = level
                figures[level] = idle_figures(apid, spid, idle)
                f = figures[level]
                print(f"{level:>4} tasks: agent RSS {f['rss_mb']:.1f} MB, idle CPU {f['idle_cpu_pct']:.2f}% of a core "
                      f"over {idle:.0f}s, {f['threads']:.0f} threads, {f['fds']:.0f} fds, {f['sockets']:.0f} sockets; "
                      f"scheduler RSS {f['sched_rss_mb']:.1f} MB", flush=True)
            for job in jobs:
                p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
            for job in jobs:
                p.wait_job_finished(job, timeout=600)
        finally:
            p.close()
    top = max(figures)
    if top:
        per_task = (figures[top]["rss_mb"] - figures[0]["rss_mb"]) / top * 1000
        print(f"agent RSS per running task: {per_task:.0f} kB (0 → {top})")
    nan = {"rss_mb": float("nan"), "idle_cpu_pct": float("nan"), "threads": float("nan"), "fds": float("nan"),
           "sockets": float("nan"), "sched_rss_mb": float("nan")}
    got = {n: figures.get(n, nan) for n in levels}
    print(
        "RESULT footprint " + " ".join(f"rss_mb_{n}={got[n]['rss_mb']:.1f}" for n in levels) + " "
        + " ".join(f"idle_cpu_pct_{n}={got[n]['idle_cpu_pct']:.2f}" for n in levels)
        + f" threads_{top}={figures[top]['threads']:.0f} fds_{top}={figures[top]['fds']:.0f}"
        f" sched_rss_mb_{top}={figures[top]['sched_rss_mb']:.1f}"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 agent tasks instead of 20 (--running: 20 s idle windows)")
    ap.add_argument("--running", action="store_true", help="the agent at 0, 100 and 250 running tasks")
    args = ap.parse_args()
    if args.running:
        return running_footprint(args.quick)
    agent_tasks = 5 if args.quick else 20
    engine = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="titus-footprint-") as tmp:
        p = Platform(Path(tmp), engine)
        try:
            p.start_scheduler("--finished-job-retention", str(RETENTION))
            p.start_agent()
            assert p.scheduler is not None and p.agent is not None
            spid, apid = p.scheduler.p.pid, p.agent.p.pid
            # Warm-up: every code path once (first launch: image, sandbox, metadata service, thread
            # pools; first submit/kill/eviction), so "before" is a steady state, not a cold process.
            t0 = time.monotonic()
            agent_job(p, 1)
            scheduler_job(p, 100)
            time.sleep(RETENTION + 2)
            sched_before, agent_before = settled_rss(spid), settled_rss(apid)
            print(f"warm-up {time.monotonic() - t0:.0f}s", flush=True)

            t0 = time.monotonic()
            agent_peak, reasons = agent_job(p, agent_tasks, apid)
            print(f"agent tasks {time.monotonic() - t0:.0f}s", flush=True)
            t0 = time.monotonic()
            sched_peak = scheduler_job(p, 10_000, spid)
            print(f"10,000-task job {time.monotonic() - t0:.0f}s", flush=True)
            time.sleep(RETENTION + 2)  # the agent's deferred give-back has run too
            sched_after, agent_after = settled_rss(spid), settled_rss(apid)
        finally:
            p.close()
    print(f"agent tasks: {agent_tasks} with {len(BIG_ENV)} env vars each, reasons {sorted(reasons)}")
    print(f"scheduler RSS MB: before {sched_before:.1f} peak {sched_peak:.1f} after {sched_after:.1f}")
    print(f"agent RSS MB: before {agent_before:.1f} peak {agent_peak:.1f} after {agent_after:.1f}")
    print(
        f"RESULT footprint sched_rss_before_mb={sched_before:.1f} sched_rss_peak_mb={sched_peak:.1f} "
        f"sched_rss_after_mb={sched_after:.1f} sched_rss_after_ratio={sched_after / sched_before:.2f} "
        f"agent_rss_before_mb={agent_before:.1f} agent_rss_peak_mb={agent_peak:.1f} "
        f"agent_rss_after_mb={agent_after:.1f} agent_rss_after_ratio={agent_after / agent_before:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
