"""A task's resource usage from the agent's view (`titusctl task stats`, docs/provenance.md
"Task diagnostics"): its cgroup's CPU usage and throttling, memory usage and limit, pids, cpuset, the
network counters of the interfaces in its namespace, and its processes — read from cgroupfs and
/proc on the host, cgroup v1 (cgroupfs or systemd driver) or v2. Pure file reads (call on a thread);
a file that is missing leaves its figure null rather than failing the whole answer.

Processes are listed by their PID inside the container (NSpid), never the host's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.scheduler_client import SchedulerUnavailable
from titus_common.protocol import StatsReport, StatsRequest
from titus_common.states import TaskState

if TYPE_CHECKING:
    from agent.checkpoint import TaskCheckpoint
    from agent.docker_api import Docker
    from agent.scheduler_client import SchedulerClient  # noqa: F401

log = logging.getLogger("titus.agent.taskstats")

__all__ = ["MAX_PROCESSES", "answer", "collect", "container_cgroups", "reply"]

MAX_PROCESSES = 200
MAX_CMDLINE = 256
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_V1_UNLIMITED = 1 << 62  # memory.limit_in_bytes when there is no limit (page-rounded LONG_MAX)


def container_cgroups(root: Path, container_id: str) -> tuple[str, dict[str, Path]]:
    """("v1" | "v2", controller → the container's cgroup directory) for the layouts dockerd uses."""
    v2 = [root / "system.slice" / f"docker-{container_id}.scope", root / "docker" / container_id]
    if (root / "cgroup.controllers").exists():
        for d in v2:
            if d.is_dir():
                return "v2", {"unified": d}
        return "v2", {}
    found: dict[str, Path] = {}
    for controller in ("cpu", "cpuacct", "memory", "pids", "cpuset"):
        for d in (root / controller / "docker" / container_id,
                  root / controller / "system.slice" / f"docker-{container_id}.scope"):
            if d.is_dir():
                found[controller] = d
                break
    return "v1", found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None  # "max" and the like


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _v1(dirs: dict[str, Path]) -> dict[str, Any]:
    cpu, acct, mem = dirs.get("cpu"), dirs.get("cpuacct") or dirs.get("cpu"), dirs.get("memory")
    throttle = _keyed(cpu / "cpu.stat") if cpu else {}
    usage = _int(acct / "cpuacct.usage") if acct else None
    ticks = _keyed(acct / "cpuacct.stat") if acct else {}
    quota = _int(cpu / "cpu.cfs_quota_us") if cpu else None
    period = _int(cpu / "cpu.cfs_period_us") if cpu else None
    mstat = _keyed(mem / "memory.stat") if mem else {}
    limit = _int(mem / "memory.limit_in_bytes") if mem else None
    oom = _keyed(mem / "memory.oom_control") if mem else {}
    return {
        "cpu": {
            "usageSeconds": usage / 1e9 if usage is not None else None,
            "userSeconds": ticks["user"] / _TICKS if "user" in ticks else None,
            "systemSeconds": ticks["system"] / _TICKS if "system" in ticks else None,
            "periods": throttle.get("nr_periods"),
            "throttledPeriods": throttle.get("nr_throttled"),
            "throttledSeconds": throttle["throttled_time"] / 1e9 if "throttled_time" in throttle else None,
            "limitCpus": quota / period if quota is not None and quota > 0 and period else None,
        },
        "memory": {
            "usageBytes": _int(mem / "memory.usage_in_bytes") if mem else None,
            "limitBytes": limit if limit is not None and limit < _V1_UNLIMITED else None,
            "peakBytes": _int(mem / "memory.max_usage_in_bytes") if mem else None,
            "anonBytes": mstat.get("total_rss", mstat.get("rss")),
            "fileBytes": mstat.get("total_cache", mstat.get("cache")),
            "oomKills": oom.get("oom_kill"),
        },
        "pids": _pids(dirs.get("pids")),
        "cpuset": _cpuset(dirs.get("cpuset"), "cpuset.cpus", "cpuset.mems"),
    }


def _v2(d: Path | None) -> dict[str, Any]:
    if d is None:
        return {"cpu": {}, "memory": {}, "pids": {}, "cpuset": {}}
    stat = _keyed(d / "cpu.stat")
    quota, _, period = (_read(d / "cpu.max") or "max").strip().partition(" ")
    events = _keyed(d / "memory.events")
    mstat = _keyed(d / "memory.stat")

    def usec(key: str) -> float | None:
        return stat[key] / 1e6 if key in stat else None

    return {
        "cpu": {
            "usageSeconds": usec("usage_usec"), "userSeconds": usec("user_usec"), "systemSeconds": usec("system_usec"),
            "periods": stat.get("nr_periods"), "throttledPeriods": stat.get("nr_throttled"),
            "throttledSeconds": usec("throttled_usec"),
            "limitCpus": int(quota) / int(period) if quota.isdigit() and period.isdigit() and int(period) else None,
        },
        "memory": {
            "usageBytes": _int(d / "memory.current"), "limitBytes": _int(d / "memory.max"),
            "peakBytes": _int(d / "memory.peak"), "anonBytes": mstat.get("anon"), "fileBytes": mstat.get("file"),
            "oomKills": events.get("oom_kill"),
        },
        "pids": _pids(d),
        "cpuset": _cpuset(d, "cpuset.cpus.effective", "cpuset.mems.effective"),
    }


def _pids(d: Path | None) -> dict[str, Any]:
    return {"current": _int(d / "pids.current"), "limit": _int(d / "pids.max")} if d else {}


def _cpuset(d: Path | None, cpus: str, mems: str) -> dict[str, Any]:
    if d is None:
        return {}
    return {"cpus": (_read(d / cpus) or "").strip() or None, "mems": (_read(d / mems) or "").strip() or None}


def network(proc: Path, pid: int) -> dict[str, dict[str, int]]:
    """Counters of every interface in the namespace of `pid` (its /proc/<pid>/net/dev), but lo."""
    out: dict[str, dict[str, int]] = {}
    for line in (_read(proc / str(pid) / "net" / "dev") or "").splitlines()[2:]:
        name, _, fields = line.partition(":")
        values = fields.split()
        if len(values) < 16 or name.strip() == "lo":
            continue
        v = [int(x) for x in values]
        out[name.strip()] = {"rxBytes": v[0], "rxPackets": v[1], "rxErrors": v[2], "rxDropped": v[3],
                             "txBytes": v[8], "txPackets": v[9], "txErrors": v[10], "txDropped": v[11]}
    return out


def processes(proc: Path, pids: list[int]) -> list[dict[str, Any]]:
    out = []
    for pid in sorted(pids)[:MAX_PROCESSES]:
        base = proc / str(pid)
        stat, status = _read(base / "stat"), _read(base / "status")
        if stat is None or status is None:
            continue  # exited meanwhile
        comm = stat[stat.find("(") + 1: stat.rfind(")")]
        rest = stat[stat.rfind(")") + 2:].split()
        fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status.splitlines())}
        nspid = fields.get("NSpid", "").split()
        cmdline = (_read(base / "cmdline") or "").replace("\0", " ").strip()
        out.append({
            "pid": int(nspid[-1]) if nspid else None,  # as the container sees it
            "comm": comm,
            "state": rest[0] if rest else "?",
            "cpuSeconds": (int(rest[11]) + int(rest[12])) / _TICKS if len(rest) > 12 else None,
            "rssBytes": int(rest[21]) * _PAGE if len(rest) > 21 else None,
            "threads": int(fields["Threads"]) if fields.get("Threads", "").isdigit() else None,
            "cmdline": cmdline[:MAX_CMDLINE],
        })
    return out


def collect(cgroup_root: Path, container_id: str, pid: int | None, proc: Path = Path("/proc")) -> dict[str, Any]:
    """The task's usage document; `pid`: the container's init (host PID) for its network namespace."""
    version, dirs = container_cgroups(cgroup_root, container_id)
    doc = _v1(dirs) if version == "v1" else _v2(dirs.get("unified"))
    procs_dir = dirs.get("unified") or dirs.get("pids") or dirs.get("memory") or dirs.get("cpu")
    pids = [int(x) for x in (_read(procs_dir / "cgroup.procs") or "").split() if x.isdigit()] if procs_dir else []
    doc.update({
        "cgroup": version,
        "cgroupFound": bool(dirs),
        "network": network(proc, pid) if pid else {},
        "processes": processes(proc, pids),
        "processCount": len(pids),
    })
    return doc


async def answer(docker: Docker, cgroup_root: Path, request: StatsRequest,
                 record: TaskCheckpoint | None) -> StatsReport:
    """The report for one request: the task must be this agent's and running."""
    def refuse(why: str) -> StatsReport:
        return StatsReport(id=request.id, task_id=request.task_id, error=why)

    if record is None:
        return refuse("this agent does not hold the task")
    if record.state is not TaskState.STARTED or record.container_id is None:
        return refuse(f"the task is {record.state.value}, not running")
    try:
        state = await docker.inspect(record.container_id)
    except Exception as e:  # the engine down: say so, the user's call is answered
        return refuse(f"the engine did not answer: {e}")
    if state is None or not state["State"]["Running"]:
        return refuse("the task's container is not running")
    pid = int(state["State"].get("Pid") or 0) or None
    doc = await asyncio.to_thread(collect, cgroup_root, str(state["Id"]), pid)
    doc.update(containerId=str(state["Id"])[:12], collectedAt=time.time())
    try:
        return StatsReport(id=request.id, task_id=request.task_id, stats=doc)
    except ValueError as e:
        return refuse(f"usage document refused: {str(e).splitlines()[0]}")


async def reply(client: SchedulerClient, docker: Docker, cgroup_root: Path, request: StatsRequest,
                record: TaskCheckpoint | None) -> None:
    """Answer one request to the scheduler (once: an answer lost in transit times the user's call out)."""
    report = await answer(docker, cgroup_root, request, record)
    try:
        await client.stats([report])
    except SchedulerUnavailable as e:
        log.warning("stats answer for %s not delivered: %s", request.task_id, e)
