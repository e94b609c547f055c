"""`titusctl task top TASK [--interval S] [--count N]`: a running task's processes by CPU, like top(1),
from two readings of the task's stats (`GET /v1/tasks/{id}/stats`, relayed to its agent: no host
login) `--interval` seconds apart. CPU % is a process's CPU time used between the readings over the
time between them (the agent's `collectedAt`), 100 % being one CPU; processes are the container's own
PIDs (NSpid)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from titusctl.client import EXIT_OK, EXIT_USAGE, Api, CliError
from titusctl.render import emit, table

__all__ = ["cmd_task_top", "top_rows", "top_text"]


def top_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """`after`'s processes with `cpuPercent` over the time since `before`, busiest first (a process new
    since `before` counts from zero; None where either reading lacks the figures)."""
    span = (after.get("collectedAt") or 0) - (before.get("collectedAt") or 0)
    earlier = {(p.get("pid"), p.get("comm")): p.get("cpuSeconds") for p in before.get("processes") or []}
    rows = []
    for p in after.get("processes") or []:
        now, then = p.get("cpuSeconds"), earlier.get((p.get("pid"), p.get("comm")), 0.0)
        pct = 100 * max(0.0, now - then) / span if span > 0 and now is not None and then is not None else None
        rows.append({**p, "cpuPercent": None if pct is None else round(pct, 1)})
    return sorted(rows, key=lambda r: (-(r["cpuPercent"] or 0.0), r.get("pid") or 0))


def top_text(before: dict[str, Any], after: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    span = (after.get("collectedAt") or 0) - (before.get("collectedAt") or 0)
    cpu_a, cpu_b = (after.get("cpu") or {}).get("usageSeconds"), (before.get("cpu") or {}).get("usageSeconds")
    task_pct = f"{100 * (cpu_a - cpu_b) / span:.1f}%" if span > 0 and cpu_a is not None and cpu_b is not None else "-"
    mem = after.get("memory") or {}
    usage, limit = mem.get("usageBytes"), mem.get("limitBytes")
    memory = f"{usage / 1048576:.1f}MiB of {limit / 1048576:.1f}MiB" if usage is not None and limit else "-"
    head = (f"task {after.get('taskId')} on {after.get('nodeId')}: cpu {task_pct} over {span:.1f}s "
            f"(limit {(after.get('cpu') or {}).get('limitCpus') or '-'} cpus), memory {memory}, "
            f"{after.get('processCount', len(rows))} processes")
    lines = [[str(r.get("pid") if r.get("pid") is not None else "-"), str(r.get("state", "?")),
              "-" if r["cpuPercent"] is None else f"{r['cpuPercent']:.1f}",
              "-" if r.get("rssBytes") is None else f"{r['rssBytes'] / 1048576:.1f}MiB",
              str(r.get("threads") if r.get("threads") is not None else "-"),
              (r.get("cmdline") or r.get("comm") or "")[:80]] for r in rows]
    return head + "\n" + table(lines, ["PID", "S", "CPU%", "RSS", "THR", "COMMAND"])


def cmd_task_top(api: Api, args: argparse.Namespace) -> int:
    if not 0.2 <= args.interval <= 60 or not 1 <= args.count <= 10_000:
        raise CliError("--interval is 0.2..60 seconds and --count 1..10000", EXIT_USAGE)
    before = api.call("GET", f"/v1/tasks/{args.id}/stats")
    for i in range(args.count):
        time.sleep(args.interval)
        after = api.call("GET", f"/v1/tasks/{args.id}/stats")
        rows = top_rows(before, after)
        emit(args, {**after, "processes": rows}, ("\n" if i else "") + top_text(before, after, rows))
        before = after
    return EXIT_OK
