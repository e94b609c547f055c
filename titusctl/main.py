"""titusctl: the operator's CLI for jobs, tasks and nodes.

Exit codes scripts can rely on: 0 ok · 1 the request was refused or the object not found ·
2 bad usage or input file · 3 the scheduler cannot be reached · 4 `--wait` ended with a task not normal.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import requests

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TASK_NOT_NORMAL = 0, 1, 2, 3, 4
DEFAULT_URL = os.environ.get("TITUS_SCHEDULER", "http://127.0.0.1:7100")
DEFAULT_AGENT_URL = os.environ.get("TITUS_AGENT", "http://127.0.0.1:7101")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Api:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        try:
            r = self.http.request(method, self.base + path, json=body, timeout=self.timeout, headers=headers)
        except requests.RequestException as e:
            raise CliError(
                f"cannot reach the scheduler at {self.base} ({e.__class__.__name__}); is titus-scheduler "
                "running? (set --scheduler or TITUS_SCHEDULER)",
                EXIT_UNREACHABLE,
            ) from None
        try:
            doc = r.json()
        except ValueError:
            raise CliError(f"{method} {path}: HTTP {r.status_code} with a non-JSON answer", EXIT_UNREACHABLE) from None
        if r.status_code >= 400:
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            lines = [f"error: {err.get('message', f'HTTP {r.status_code}')}"]
            for p in err.get("problems", []):
                lines.append(f"  {p.get('field') or '(job)'}: {p.get('message')}")
            raise CliError("\n".join(lines), EXIT_REFUSED)
        return doc


# ---- output ----------------------------------------------------------------------------------


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


def describe(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


# ---- commands --------------------------------------------------------------------------------


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env {item!r}: expected NAME=VALUE", EXIT_USAGE)
        env[name] = value
    return env


def job_spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        if args.image or args.cmd:
            raise CliError("give a job file or --image/--cmd, not both", EXIT_USAGE)
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            doc = json.loads(text)
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror}", EXIT_USAGE) from None
        except json.JSONDecodeError as e:
            raise CliError(f"{args.file} is not valid JSON: {e}", EXIT_USAGE) from None
        if not isinstance(doc, dict):
            raise CliError(f"{args.file}: the job must be a JSON object", EXIT_USAGE)
        return doc
    if not args.image:
        raise CliError("give a job file, or --image (and usually --cmd)", EXIT_USAGE)
    container: dict[str, Any] = {
        "image": args.image,
        "resources": {"cpu": args.cpu, "memoryMiB": args.memory, "diskMiB": args.disk},
        "env": _parse_env(args.env),
    }
    if args.cmd:
        container["command"] = ["/bin/sh", "-c", args.cmd] if args.shell else shlex.split(args.cmd)
    if args.iam_role:
        container["iamRole"] = args.iam_role
    job: dict[str, Any] = {"appName": args.app, "owner": args.owner, "container": container}
    if args.service:
        job["service"] = {"desired": args.count}
    else:
        job["batch"] = {
            "size": args.count,
            "retryPolicy": {"retries": args.retries},
            **({"runtimeLimitSeconds": args.runtime_limit} if args.runtime_limit else {}),
        }
    return job


def wait_for_job(api: Api, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        job = api.call("GET", f"/v1/jobs/{job_id}")
        if job["state"] == "Finished":
            return dict(job)
        if time.time() > deadline:
            raise CliError(f"job {job_id} not finished after {timeout:g}s (state {job['state']})", EXIT_REFUSED)
        time.sleep(0.3)


def cmd_job_submit(api: Api, args: argparse.Namespace) -> int:
    spec = job_spec_from_args(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    job = api.call("POST", "/v1/jobs", spec, headers=headers)
    if not args.wait:
        emit(args, job, job["id"])
        return EXIT_OK
    job = wait_for_job(api, job["id"], args.timeout)
    tasks = api.call("GET", f"/v1/tasks?jobId={job['id']}")["tasks"]
    emit(args, {"job": job, "tasks": tasks}, task_rows(tasks))
    final = [t for t in tasks if t["state"] == "Finished" and not t.get("replacedBy")]
    return EXIT_OK if all(t["reason"] == "normal" for t in final) else EXIT_TASK_NOT_NORMAL


def cmd_job_list(api: Api, args: argparse.Namespace) -> int:
    q = f"?state={args.state}" if args.state else ""
    doc = api.call("GET", f"/v1/jobs{q}")
    emit(args, doc, job_rows(doc["jobs"]))
    return EXIT_OK


def cmd_describe(noun: str, api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", f"/v1/{noun}s/{args.id}")
    emit(args, doc, describe(doc))
    return EXIT_OK


def cmd_kill(noun: str, api: Api, args: argparse.Namespace) -> int:
    doc = api.call("POST", f"/v1/{noun}s/{args.id}/kill")
    emit(args, doc, f"{noun} {args.id}: {doc['state']}")
    return EXIT_OK


def cmd_task_list(api: Api, args: argparse.Namespace) -> int:
    params = [f"{k}={v}" for k, v in (("jobId", args.job), ("state", args.state), ("nodeId", args.node)) if v]
    doc = api.call("GET", "/v1/tasks" + ("?" + "&".join(params) if params else ""))
    emit(args, doc, task_rows(doc["tasks"]))
    return EXIT_OK


def cmd_node_list(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", "/v1/nodes")
    rows = [
        [
            n["id"], n["status"], f"{n['capacity']['cpus']:g}", str(n["capacity"]["memoryMiB"]),
            _ago(n["lastHeartbeat"]), str(len(n.get("unknownContainers", []))), str(len(n.get("missingTasks", []))),
        ]
        for n in doc["nodes"]
    ]
    emit(args, doc, table(rows, ["NODE", "STATUS", "CPUS", "MEM_MIB", "HEARTBEAT", "UNKNOWN", "MISSING"]))
    return EXIT_OK


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


def ask_agent(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """A host diagnostic: asked of the local agent (`--agent`), never through the scheduler."""
    url = args.agent.rstrip("/") + path
    try:
        r = requests.get(url, timeout=10)
        doc = r.json()
    except requests.RequestException as e:
        raise CliError(f"cannot reach the agent at {args.agent} ({e.__class__.__name__}); set --agent", EXIT_UNREACHABLE) from None
    except ValueError:
        raise CliError(f"GET {url}: HTTP {r.status_code} with a non-JSON answer", EXIT_UNREACHABLE) from None
    if r.status_code >= 400:
        raise CliError(f"error: {doc.get('error', {}).get('message', f'HTTP {r.status_code}')}", EXIT_REFUSED)
    return dict(doc)


def cmd_node_cpus(api: Api, args: argparse.Namespace) -> int:
    doc = ask_agent(args, "/v1/cpus")
    emit(args, doc, cpu_map(doc))
    return EXIT_OK


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


def cmd_node_net(api: Api, args: argparse.Namespace) -> int:
    doc = ask_agent(args, "/v1/net")
    emit(args, doc, net_map(doc))
    return EXIT_OK


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


def doctor_text(nodes: list[dict[str, Any]], agent: dict[str, Any]) -> str:
    out: list[str] = []
    for n in nodes:
        out.append(f"node {n['id']} ({n['status']}, heartbeat {_ago(n.get('lastHeartbeat'))} ago)")
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
    else:
        out.append(f"local agent {agent['url']}: not reachable ({agent.get('error')}); skipped")
    return "\n".join(out)


def cmd_node_doctor(api: Api, args: argparse.Namespace) -> int:
    nodes = api.call("GET", "/v1/nodes")["nodes"]
    if args.node is not None:
        nodes = [n for n in nodes if n["id"] == args.node]
        if not nodes:
            raise CliError(f"error: no node {args.node!r}", EXIT_REFUSED)
    report = [
        {
            "id": n["id"],
            "status": n["status"],
            "lastHeartbeat": n.get("lastHeartbeat"),
            "summary": posture_summary(n.get("posture")),
            "posture": n.get("posture"),
        }
        for n in nodes
    ]
    # Only meaningful on the host itself: the local agent's own view (skipped when it is not there).
    url = args.agent.rstrip("/")
    agent: dict[str, Any] = {"url": url, "reachable": False}
    try:
        r = requests.get(url + "/healthz", timeout=3)
        agent.update(reachable=True, healthz=r.json())
    except (requests.RequestException, ValueError) as e:
        agent["error"] = e.__class__.__name__
    emit(args, {"nodes": report, "agent": agent}, doctor_text(report, agent))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titusctl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scheduler", default=DEFAULT_URL, help=f"scheduler URL (default {DEFAULT_URL})")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    sub = p.add_subparsers(dest="noun", required=True)

    job = sub.add_parser("job", help="jobs").add_subparsers(dest="verb", required=True)
    s = job.add_parser("submit", help="submit a job from a JSON file or from flags")
    s.add_argument("file", nargs="?", help="job spec JSON file ('-' for stdin)")
    s.add_argument("--image")
    s.add_argument("--cmd", help="command line (split like a shell would; see --shell)")
    s.add_argument("--shell", action="store_true", help="run --cmd through /bin/sh -c")
    s.add_argument("--app", default="adhoc")
    s.add_argument("--owner", default=os.environ.get("USER", "operator"))
    s.add_argument("--count", type=int, default=1, help="batch size, or desired count with --service")
    s.add_argument("--service", action="store_true", help="a service job (kept running)")
    s.add_argument("--cpu", type=float, default=1.0)
    s.add_argument("--memory", type=int, default=256, help="MiB")
    s.add_argument("--disk", type=int, default=1024, help="MiB")
    s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--retries", type=int, default=0)
    s.add_argument("--runtime-limit", type=float, help="seconds (batch)")
    s.add_argument("--iam-role")
    s.add_argument("--idempotency-key")
    s.add_argument("--wait", action="store_true", help="wait for the job to finish; exit 4 unless all normal")
    s.add_argument("--timeout", type=float, default=300.0)
    s.set_defaults(fn=cmd_job_submit)
    ls = job.add_parser("list")
    ls.add_argument("--state")
    ls.set_defaults(fn=cmd_job_list)
    for verb, fn in (("describe", functools.partial(cmd_describe, "job")), ("kill", functools.partial(cmd_kill, "job"))):
        c = job.add_parser(verb)
        c.add_argument("id")
        c.set_defaults(fn=fn)

    task = sub.add_parser("task", help="tasks").add_subparsers(dest="verb", required=True)
    tl = task.add_parser("list")
    tl.add_argument("--job")
    tl.add_argument("--state")
    tl.add_argument("--node")
    tl.set_defaults(fn=cmd_task_list)
    for verb, fn in (("describe", functools.partial(cmd_describe, "task")), ("kill", functools.partial(cmd_kill, "task"))):
        c = task.add_parser(verb)
        c.add_argument("id")
        c.set_defaults(fn=fn)

    node = sub.add_parser("node", help="hosts").add_subparsers(dest="verb", required=True)
    node.add_parser("list").set_defaults(fn=cmd_node_list)
    nc = node.add_parser("cpus", help="this host's CPU map: which task holds which thread (asks the local agent)")
    nc.add_argument("--agent", default=DEFAULT_AGENT_URL, help=f"agent URL (default {DEFAULT_AGENT_URL})")
    nc.set_defaults(fn=cmd_node_cpus)
    nn = node.add_parser("net", help="this host's IPs: ENIs, free/warm, assigned to which task, cooling, leaks"
                                     " (asks the local agent)")
    nn.add_argument("--agent", default=DEFAULT_AGENT_URL, help=f"agent URL (default {DEFAULT_AGENT_URL})")
    nn.set_defaults(fn=cmd_node_net)
    nd = node.add_parser("doctor", help="each host's security posture (userns, seccomp, AppArmor, cgroup, kernel)"
                                        " and the local agent's health")
    nd.add_argument("node", nargs="?", help="only this node")
    nd.add_argument("--agent", default=DEFAULT_AGENT_URL,
                    help=f"the local agent, asked for /healthz if reachable (default {DEFAULT_AGENT_URL})")
    nd.set_defaults(fn=cmd_node_doctor)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(Api(args.scheduler), args)
    except CliError as e:
        print(str(e), file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
