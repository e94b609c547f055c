"""`titusctl task stats TASK`: a running task's usage from its agent's view — CPU usage and
throttling, memory against its limit, pids, cpuset, network counters, processes — asked through the
scheduler (authenticated; relayed to the agent over its own connection, scheduler/taskstats.py), so
no host login is needed."""

from __future__ import annotations

import argparse
from typing import Any

from titusctl.client import EXIT_OK, Api
from titusctl.render import emit, table


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / 1048576:.1f}MiB"


def stats_text(doc: dict[str, Any]) -> str:
    cpu, mem, pids, cpuset = doc.get("cpu", {}), doc.get("memory", {}), doc.get("pids", {}), doc.get("cpuset", {})
    throttled = cpu.get("throttledPeriods")
    periods = cpu.get("periods")
    share = f" ({100 * throttled / periods:.1f}% of periods)" if throttled is not None and periods else ""
    lines = [
        f"task     {doc.get('taskId')} on {doc.get('nodeId')} (container {doc.get('containerId')}, cgroup {doc.get('cgroup')})",
        f"cpu      {_num(cpu.get('usageSeconds'))}s used (user {_num(cpu.get('userSeconds'))}s, system "
        f"{_num(cpu.get('systemSeconds'))}s), limit {_num(cpu.get('limitCpus'))} cpus",
        f"throttle {_num(throttled, '{}')} of {_num(periods, '{}')} periods{share}, "
        f"{_num(cpu.get('throttledSeconds'))}s throttled",
        f"memory   {_mib(mem.get('usageBytes'))} of {_mib(mem.get('limitBytes'))} (peak {_mib(mem.get('peakBytes'))}, "
        f"anon {_mib(mem.get('anonBytes'))}, file {_mib(mem.get('fileBytes'))}), OOM kills {_num(mem.get('oomKills'), '{}')}",
        f"pids     {_num(pids.get('current'), '{}')} of {_num(pids.get('limit'), '{}')}",
        f"cpuset   cpus {cpuset.get('cpus') or '-'}, mems {cpuset.get('mems') or '-'}",
    ]
    nets = doc.get("network") or {}
    if nets:
        rows = [[name, str(n["rxBytes"]), str(n["rxPackets"]), str(n["rxDropped"]), str(n["txBytes"]),
                 str(n["txPackets"]), str(n["txDropped"])] for name, n in sorted(nets.items())]
        lines += ["", table(rows, ["IFACE", "RX BYTES", "RX PKTS", "RX DROP", "TX BYTES", "TX PKTS", "TX DROP"])]
    procs = doc.get("processes") or []
    if procs:
        rows = [[_num(p.get("pid"), "{}"), p.get("state", "?"), _num(p.get("cpuSeconds")), _mib(p.get("rssBytes")),
                 (p.get("cmdline") or p.get("comm") or "")[:80]] for p in procs]
        lines += ["", table(rows, ["PID", "S", "CPU S", "RSS", "COMMAND"])]
        if doc.get("processCount", len(procs)) > len(procs):
            lines.append(f"… {doc['processCount'] - len(procs)} more processes")
    return "\n".join(lines)


def cmd_task_stats(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", f"/v1/tasks/{args.id}/stats")
    emit(args, doc, stats_text(doc))
    return EXIT_OK
