"""Issue 19's exec benchmark: the round trip of a trivial command (`true`) through titusctl's client
path (a new TLS websocket to the scheduler → the scheduler wakes the agent's long poll → the agent
opens its websocket and runs the engine exec → exit code back) against `docker exec` on the same
container, interleaved in one run on one real platform (tests/harness.py; scheduler, agent, engine).

Measured per round, in this order: `docker exec CID true` (the CLI, as a person types it),
`titusctl task exec TASK -- true` as a fresh process (`python -m titusctl.main`: interpreter start-up,
imports, a new TLS connection, the relay — what a person typing it waits for), the titusctl client
path in-process (titusctl.exec.ExecClient, what that process runs after Python has started), and the
engine's exec API called in-process (create + start + inspect over the unix socket: the floor any
exec path pays).

    flock /tmp/titus-engine.lock python bench/exec.py            # 200 rounds
    flock /tmp/titus-engine.lock python bench/exec.py --quick    # 30 rounds, about a minute

Last line: `RESULT exec p50_ratio=… fresh_p50_ratio=… p99_ms=… …`:
- fresh_p50_ratio = `titusctl task exec` as a new process p50 / `docker exec` CLI p50 — both are new
  processes, so this is the like-for-like figure. Goal: ≤ 1.5.
- p50_ratio = the in-process client p50 / `docker exec` CLI p50 (flatters titus: no start-up);
  p99_ms = the in-process client path's p99; fresh_p99_ms the new process's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.docker_exec import EngineExec
from tests.harness import Platform, wait_for
from titusctl.client import Credentials
from titusctl.exec import ExecClient


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# CPU seconds (user + system) each new process used: on a loaded 2-core host the wall time of a
# process start is mostly waiting for a CPU, so this is the load-independent figure.
CPU: dict[str, list[float]] = {"docker": [], "fresh": []}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children only (not the running daemons)
    return ru.ru_utime + ru.ru_stime


def _docker_cli(cid: str) -> float:
    c0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run(["docker", "exec", cid, "true"], capture_output=True)
    took = time.perf_counter() - t0
    CPU["docker"].append(_children_cpu() - c0)
    assert r.returncode == 0, r.stderr
    return took


PHASES: dict[str, list[float]] = {"create": [], "stream": [], "exit_code": []}


async def _engine_api(engine: EngineExec, cid: str) -> float:
    t0 = time.perf_counter()
    exec_id = await engine.create(cid, ["true"], tty=False, stdin=False)
    t1 = time.perf_counter()
    stream = await engine.start(exec_id, False)
    while (await stream.read())[1]:
        pass
    stream.close()
    t2 = time.perf_counter()
    code = await engine.exit_code(exec_id)  # polls inspect until the engine recorded the exit
    took = time.perf_counter() - t0
    assert code == 0
    for name, v in (("create", t1 - t0), ("stream", t2 - t1), ("exit_code", t0 + took - t2)):
        PHASES[name].append(v)
    return took


def _titus_inproc(client: ExecClient, task_id: str) -> float:
    t0 = time.perf_counter()
    code = client.run(task_id, ["true"], out=lambda kind, data: None)
    took = time.perf_counter() - t0
    assert code == 0
    return took


def _fresh(env: dict[str, str], task_id: str) -> float:
    c0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "titusctl.main", "task", "exec", task_id, "--", "true"],
                       capture_output=True, env=env)
    took = time.perf_counter() - t0
    CPU["fresh"].append(_children_cpu() - c0)
    assert r.returncode == 0, r.stderr
    return took


async def _rounds(client: ExecClient, env: dict[str, str], task_id: str, cid: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"docker": [], "fresh": [], "titus": [], "api": []}
    engine = EngineExec(None)
    loop = asyncio.get_running_loop()
    # warm every path once: the first exec, the first TLS, the interpreter's files in the page cache
    await loop.run_in_executor(None, _docker_cli, cid)
    await loop.run_in_executor(None, _fresh, env, task_id)
    await loop.run_in_executor(None, _titus_inproc, client, task_id)
    for _ in range(n):
        out["docker"].append(await loop.run_in_executor(None, _docker_cli, cid))
        out["fresh"].append(await loop.run_in_executor(None, _fresh, env, task_id))
        out["titus"].append(await loop.run_in_executor(None, _titus_inproc, client, task_id))
        out["api"].append(await _engine_api(engine, cid))
    await engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 rounds (under a minute)")
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args()
    n = args.rounds or (30 if args.quick else 200)
    p = Platform(Path(tempfile.mkdtemp(prefix="bench-exec-")), docker.from_env())
    try:
        p.start_scheduler("--log-level", "WARNING")
        p.start_agent("--log-level", "WARNING")
        token = p.api("POST", "/v1/admin/tokens", {"kind": "operator", "role": "submitter", "name": "bench",
                                                   "owner": "tests", "ttlSeconds": 3600}, expect=201)["token"]
        job = p.submit("sleep 3600", killGraceSeconds=1)
        (task,) = wait_for(lambda: p.started(job), 60, "task Started")
        cid = next(c.id for c in p.containers() if c.labels.get("titus.task_id") == task["id"])
        client = ExecClient(p.url, Credentials(ca=p.pki / "ca.crt", token=token))
        # The fresh process runs with its modules' bytecode, as an installed titusctl does (the .deb
        # and pip both ship or compile it): written once, by the warm-up run, under a private prefix.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TITUS_") and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(TITUS_SCHEDULER=p.url, TITUS_CA=str(p.pki / "ca.crt"), TITUS_TOKEN=token,
                   TITUS_PKI=str(p.tmp / "none"), PYTHONPYCACHEPREFIX=str(p.tmp / "pycache"))
        t0 = time.perf_counter()
        r = asyncio.run(_rounds(client, env, task["id"], cid, n))
        wall = time.perf_counter() - t0
    finally:
        p.close()
    ms = {k: [v * 1000 for v in vs] for k, vs in r.items()}
    for name, what in (("docker", "docker exec CID true (CLI, new process)"),
                       ("fresh", "titusctl task exec (CLI, new process)"),
                       ("titus", "titusctl client path in-process (relay + agent)"),
                       ("api", "engine exec API in-process (floor)")):
        v = ms[name]
        print(f"{what:50s} p50 {statistics.median(v):7.1f} ms  p99 {_p(v, 0.99):7.1f} ms  n={len(v)}")
    print(f"CPU per new process p50 (user+sys): docker exec CLI {statistics.median(CPU['docker'][1:]) * 1000:.0f} ms, "
          f"titusctl task exec {statistics.median(CPU['fresh'][1:]) * 1000:.0f} ms (the first, warm-up, run left out)")
    print("engine API phases p50: " + "  ".join(f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in PHASES.items()))
    print(f"{n} interleaved rounds in {wall:.1f}s; load average {os.getloadavg()[0]:.1f}")
    med = {k: statistics.median(v) for k, v in ms.items()}
    print(f"RESULT exec p50_ratio={med['titus'] / med['docker']:.2f} fresh_p50_ratio={med['fresh'] / med['docker']:.2f} "
          f"p99_ms={_p(ms['titus'], 0.99):.1f} fresh_p99_ms={_p(ms['fresh'], 0.99):.1f} "
          f"titus_p50_ms={med['titus']:.1f} fresh_p50_ms={med['fresh']:.1f} docker_p50_ms={med['docker']:.1f} "
          f"engine_api_p50_ms={med['api']:.1f} fresh_cpu_ms={statistics.median(CPU['fresh'][1:]) * 1000:.0f} "
          f"docker_cli_cpu_ms={statistics.median(CPU['docker'][1:]) * 1000:.0f}")


if __name__ == "__main__":
    main()
