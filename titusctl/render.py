"""titusctl's output: the human tables and texts for each verb, and `emit`, which prints either
them or the JSON document (`-o json`). Pure functions of the documents the scheduler and the
agent return; no HTTP here."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def emit(args: argparse.Namespace, doc: Any, human: str) -> None:
    print(json.dumps(doc, indent=2) if args.output == "json" else human)


def job_rows(jobs: list[dict[str, Any]]) -> str:
    rows = []
    for j in jobs:
        spec = j["spec"]
        kind = "batch" if spec.get("batch") else "service"
        counts = j.get("taskCounts", {})
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        flag = " CRASH-LOOP" if j.get("crashLooping") else ""
        rows.append([j["id"], spec["appName"], kind, j["state"] + flag, summary, _ago(j["createdAt"])])
    return table(rows, ["JOB", "APP", "KIND", "STATE", "TASKS", "AGE"])


def task_rows(tasks: list[dict[str, Any]]) -> str:
    rows = []
    for t in tasks:
        rows.append(
            [
                t["id"], t["jobId"][:8], str(t["index"]), t["state"], t.get("reason") or "-",
                t.get("nodeId") or "-", _ago(t["timestamps"].get("Accepted")), (t.get("message") or "")[:60],
            ]
        )
    return table(rows, ["TASK", "JOB", "IDX", "STATE", "REASON", "NODE", "AGE", "MESSAGE"])


def node_rows(nodes: list[dict[str, Any]]) -> str:
    rows = [
        [
            n["id"], n["status"], f"{n['capacity']['cpus']:g}", str(n["capacity"]["memoryMiB"]),
            _ago(n["lastHeartbeat"]), str(len(n.get("unknownContainers", []))), str(len(n.get("missingTasks", []))),
        ]
        for n in nodes
    ]
    return table(rows, ["NODE", "STATUS", "CPUS", "MEM_MIB", "HEARTBEAT", "UNKNOWN", "MISSING"])


def fleet_health_rows(nodes: list[dict[str, Any]], show_all: bool = False) -> str:
    rows = []
    for n in nodes:
        taints = n.get("taints") or {}
        if "cordoned" in taints:
            rows.append([n["id"], n["status"], "cordon", "CORDONED", "-", taints["cordoned"][:60]])
        if n.get("health") is None:
            if show_all:
                rows.append([n["id"], n["status"], "-", "unreported", "-", "agent without health checks"])
            continue
        for c in n["health"]:
            if show_all or c["status"] != "ok":
                rows.append([n["id"], n["status"], c["check"], c["status"], c["reason"], (c.get("message") or "")[:60]])
    return table(rows, ["NODE", "STATUS", "CHECK", "HEALTH", "REASON", "MESSAGE"]) if rows else "every host healthy"


def history_rows(history: list[dict[str, Any]]) -> str:
    rows = [[_ago(e.get("at")), e.get("check", "?"), e.get("reason", "?"), e.get("action", "?"),
             e.get("outcome", "?"), (e.get("message") or "")[:60]] for e in history]
    return table(rows, ["AGO", "CHECK", "REASON", "ACTION", "OUTCOME", "MESSAGE"]) if rows else "no remediation"


def drain_rows(doc: dict[str, Any]) -> str:
    """A host's drain: its state and counts, then each task left on it with its phase."""
    d = doc.get("drain")
    if d is None:
        return f"node {doc['nodeId']}: no drain" + (" (cordoned)" if doc.get("cordoned") else "")
    head = (f"node {doc['nodeId']}: {doc['state']} (by {d.get('by') or '?'}, {_ago(d.get('startedAt'))} ago: "
            f"{d.get('reason', '')}); moved {d.get('moved', 0)}, evicted {d.get('evicted', 0)}, "
            f"{len(doc['remaining'])} task(s) left")
    rows = [[t["taskId"], t["jobId"][:8], str(t["index"]), t["kind"], t["state"], t["phase"][:70]]
            for t in doc["remaining"]]
    return head + ("\n" + table(rows, ["TASK", "JOB", "INDEX", "KIND", "STATE", "PHASE"]) if rows else "")


def describe(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, indent=2)
    prov = doc.get("provenance")
    return f"{text}\n\n{provenance_text(prov)}" if isinstance(prov, dict) else text


def provenance_text(p: dict[str, Any]) -> str:
    """What a job or task runs and where it came from (docs/provenance.md); a moved tag stands out."""
    pinned = p.get("imageDigest")
    lines = [f"image    {p.get('image', '?')}",
             f"pinned   {pinned} (by {p.get('pinnedBy')})" if pinned else
             f"pinned   not yet ({p.get('resolveError') or 'resolved at first launch'})"]
    if "taskImageDigest" in p:
        lines.append(f"running  {p.get('taskImageDigest') or '-'}")
    if p.get("source.repo") or p.get("source.commit"):
        lines.append(f"source   {p.get('source.repo', '-')} @ {p.get('source.commit', '-')}")
    if p.get("build.id") or p.get("build.url"):
        lines.append(f"build    {p.get('build.id', '-')} {p.get('build.url', '')}".rstrip())
    if p.get("tagMoved"):
        lines.append(f"TAG MOVED: the tag now points at {p.get('tagDigest')}; this task runs "
                     f"{p.get('taskImageDigest') or pinned} (new launches keep the pinned digest)")
    return "\n".join(lines)


def cpu_map(doc: dict[str, Any]) -> str:
    """The host's threads grouped socket → NUMA node → L3 group → core; a group's id is printed
    where it starts, so the tree reads top-down."""
    rows: list[list[str]] = []
    last: tuple[int, ...] = ()
    for c in sorted(doc["cpus"], key=lambda c: (c["socket"], c["node"], c["l3"], c["core"], c["cpu"])):
        key = (c["socket"], c["node"], c["l3"], c["core"])
        first_new = next((i for i in range(4) if not last or key[i] != last[i]), 4)
        shown = ["" if i < first_new else str(k) for i, k in enumerate(key)]
        last = key
        holder = c["taskId"] or ("reserved" if c["reserved"] else "idle")
        burst = f"{len(c['burstTasks'])} task(s)" if c["burstTasks"] else ""
        rows.append([*shown, str(c["cpu"]), holder, c["class"] or "", burst])
    out = [
        f"node {doc.get('nodeId', '?')}: {doc['topology']['description']}",
        f"burst pool {doc['burstPool'] or '-'} · SMT cores shared between tasks: {doc['smtSharedCores']}",
        "",
        table(rows, ["SOCKET", "NUMA", "L3", "CORE", "CPU", "HOLDER", "CLASS", "BURSTING"]),
    ]
    if doc["tasks"]:
        tasks = [
            [t["taskId"], t["class"], f"{t['request']:g}", t["exclusive"] or "-", t["cpuset"], t["applied"] or "-"]
            for t in doc["tasks"]
        ]
        out += ["", table(tasks, ["TASK", "CLASS", "CPU", "EXCLUSIVE", "CPUSET", "APPLIED"])]
    return "\n".join(out)


def net_map(doc: dict[str, Any]) -> str:
    """The host's network: ENIs, each IP's state (free, assigned to which task, cooling) and leaks."""
    counts = doc.get("counts", {})
    provider = doc.get("provider", {})
    out = [
        f"node {doc.get('nodeId', '?')}: provider {provider.get('name', '?')} ({provider.get('api_calls', 0)} API calls)"
        f" · IPs assigned {counts.get('assigned', 0)}, free (warm) {counts.get('free', 0)},"
        f" cooling {counts.get('cooling', 0)}, releasing {counts.get('releasing', 0)}",
    ]
    rows = []
    for eni in doc.get("enis", []):
        for ip in eni["ips"]:
            left = f"{ip['cooldown_left_s']:g}s" if ip["state"] == "cooling" else ""
            rows.append([eni["eni_id"], str(eni["device_index"]), ",".join(eni["security_groups"]),
                         ip["address"], ip["state"], ip["task_id"] or "", left])
    out += ["", table(rows, ["ENI", "DEV", "GROUPS", "IP", "STATE", "TASK", "COOLDOWN"]) if rows else "no ENIs yet"]
    if doc.get("waiting"):
        out.append("waiting for an IP: " + ", ".join(f"{k or 'default'}: {v}" for k, v in doc["waiting"].items()))
    for groups, message in (doc.get("errors") or {}).items():
        out.append(f"error ({groups}): {message}")
    leaks = doc.get("leaks") or {}
    found = [f"{k} {', '.join(v)}" for k, v in leaks.items() if v]
    out.append("leaks found at the last GC: " + ("; ".join(found) if found else "none"))
    return "\n".join(out)


def _yes(v: Any) -> str:
    return "?" if v is None else ("yes" if v else "NO")


def posture_summary(posture: dict[str, Any] | None) -> dict[str, Any] | None:
    """The operator's questions about a host's posture, answered from what its agent reported
    (security/posture.py HostPosture.to_json())."""
    if posture is None:
        return None
    aa = posture.get("apparmor") or {}
    userns = posture.get("userns") or {}
    return {
        "kernel": posture.get("kernelVersion"),
        "cgroupVersion": posture.get("cgroupVersion"),
        "seccomp": posture.get("seccompEnforceable"),
        "apparmorEnforced": aa.get("enforceable"),
        "apparmorReason": aa.get("reason"),
        "usernsRemapped": userns.get("remapped"),
        "usernsRootUid": userns.get("rootUid"),
        "usernsProblem": userns.get("problem"),
        "engineVersion": posture.get("engineVersion"),
    }


def health_lines(conditions: list[dict[str, Any]] | None, indent: str = "  ") -> list[str]:
    """One line per health check: status, reason, message, then its evidence."""
    if conditions is None:
        return [f"{indent}health: not reported (agent without health checks)"]
    if not conditions:
        return [f"{indent}health: no check has run yet"]
    out = []
    for c in conditions:
        mark = {"ok": "ok", "degraded": "DEGRADED", "failed": "FAILED"}.get(c.get("status", ""), "?")
        msg = f": {c['message']}" if c.get("message") else ""
        out.append(f"{indent}{c.get('check', '?'):<10} {mark:<9} {c.get('reason', '?')}{msg} "
                   f"(since {_ago(c.get('since'))} ago, {c.get('durationMs', 0):.0f} ms)")
        ev = c.get("evidence") or {}
        if ev:
            out.append(f"{indent}{'':<10} " + ", ".join(f"{k}={v}" for k, v in sorted(ev.items())))
    return out


def doctor_text(nodes: list[dict[str, Any]], agent: dict[str, Any]) -> str:
    out: list[str] = []
    for n in nodes:
        out.append(f"node {n['id']} ({n['status']}, heartbeat {_ago(n.get('lastHeartbeat'))} ago)")
        if n.get("taints"):
            out.append("  NO NEW WORK: " + "; ".join(f"{k}: {v}" for k, v in sorted(n["taints"].items())))
        out += health_lines(n.get("health"))
        sm = n["summary"]
        if sm is None:
            out += ["  posture: not reported (agent older than the security step, or not probed yet)", ""]
            continue
        userns = "remapped" + (f" (container root = host uid {sm['usernsRootUid']})" if sm["usernsRootUid"] else "")
        if not sm["usernsRemapped"]:
            userns = "NOT remapped: container root is host root" + (f" ({sm['usernsProblem']})" if sm["usernsProblem"] else "")
        aa = "enforced" if sm["apparmorEnforced"] else "NOT enforced"
        out += [
            f"  kernel     {sm['kernel'] or '?'}",
            f"  cgroup     v{sm['cgroupVersion'] if sm['cgroupVersion'] is not None else '?'}",
            f"  seccomp    {'enforced' if sm['seccomp'] else 'NOT enforceable: no job can run'}",
            f"  apparmor   {aa}: {sm['apparmorReason'] or '?'}",
            f"  userns     {userns}",
            f"  engine     {sm['engineVersion'] or '?'}",
            "",
        ]
    if agent.get("reachable"):
        h = agent["healthz"]
        sec = h.get("security") or {}
        out.append(
            f"local agent {agent['url']}: docker {_yes(h.get('docker'))}, scheduler {_yes(h.get('scheduler'))}, "
            f"tasks {h.get('tasks', '?')}"
        )
        if sec:
            out.append(
                f"  security: posture probed {_yes(sec.get('postureProbed'))}, policy {sec.get('policy')}, "
                f"variants {', '.join(sec.get('variants') or []) or '-'}, "
                f"AppArmor-unavailable mode {sec.get('apparmorUnavailable')}"
            )
            if sec.get("brokenProfiles"):
                out.append(f"  BROKEN seccomp profiles (jobs naming them are refused): {', '.join(sec['brokenProfiles'])}")
        if agent.get("health") is not None:
            out.append(f"  health: {agent['health'].get('status')} (checks {', '.join(agent['health'].get('checks') or [])})")
            out += health_lines(agent["health"].get("conditions"), indent="    ")
    else:
        out.append(f"local agent {agent['url']}: not reachable ({agent.get('error')}); skipped")
    return "\n".join(out)
