"""titusctl's verbs: one `cmd_*` function per command, `(api, args) -> exit code`, plus the job
spec built from flags or a file. A verb asks through `client`, prints through `render`, and
signals failure by raising `client.CliError`."""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from titusctl.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TASK_NOT_NORMAL,
    EXIT_USAGE,
    Api,
    CliError,
    agent_health,
    ask_agent,
)
from titusctl.render import (
    cpu_map,
    describe,
    drain_rows,
    doctor_text,
    fleet_health_rows,
    history_rows,
    emit,
    job_rows,
    net_map,
    node_rows,
    posture_summary,
    task_rows,
)


def _parse_env(items: list[str], flag: str = "--env") -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"{flag} {item!r}: expected NAME=VALUE", EXIT_USAGE)
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
    # An app belongs to one owner (docs/identity.md): the default is the owner's own, never a shared name.
    app = args.app or f"adhoc-{args.owner}"
    job: dict[str, Any] = {"appName": app, "owner": args.owner, "container": container}
    if getattr(args, "attribute", None):
        job["attributes"] = _parse_env(args.attribute, "--attribute")
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
    emit(args, doc, node_rows(doc["nodes"]))
    return EXIT_OK


def cmd_node_cpus(api: Api, args: argparse.Namespace) -> int:
    doc = ask_agent(args, "/v1/cpus")
    emit(args, doc, cpu_map(doc))
    return EXIT_OK


def cmd_node_net(api: Api, args: argparse.Namespace) -> int:
    doc = ask_agent(args, "/v1/net")
    emit(args, doc, net_map(doc))
    return EXIT_OK


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
            "health": n.get("health"),
            "taints": n.get("taints", {}),
        }
        for n in nodes
    ]
    # Only meaningful on the host itself: the local agent's own view (skipped when it is not there).
    agent = agent_health(args.agent)
    emit(args, {"nodes": report, "agent": agent}, doctor_text(report, agent))
    return EXIT_OK


def cmd_node_health(api: Api, args: argparse.Namespace) -> int:
    """The fleet's health conditions: one row per host and check that is not ok (all with --all)."""
    nodes = api.call("GET", "/v1/nodes")["nodes"]
    emit(args, {"nodes": [{"id": n["id"], "status": n["status"], "taints": n.get("taints", {}),
                           "health": n.get("health")} for n in nodes]},
         fleet_health_rows(nodes, show_all=args.all))
    return EXIT_OK


def cmd_node_cordon(api: Api, args: argparse.Namespace) -> int:
    reason = args.reason or "cordoned by an operator"
    node = api.call("POST", f"/v1/nodes/{args.node}/cordon", {"reason": reason})
    emit(args, node, f"node {node['id']}: takes no new work ({reason})")
    return EXIT_OK


def cmd_node_drain(api: Api, args: argparse.Namespace) -> int:
    """Cordon and move the tasks off (service: replaced elsewhere first; batch: until the deadline)."""
    body: dict[str, object] = {"reason": args.reason or "drained by an operator"}
    if args.batch_deadline is not None:
        body["batchDeadlineSeconds"] = args.batch_deadline
    doc = api.call("POST", f"/v1/nodes/{args.node}/drain", body, headers={"X-Titus-Actor": getpass.getuser()})
    emit(args, doc, drain_rows(doc))
    return EXIT_OK


def cmd_node_drain_status(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", f"/v1/nodes/{args.node}/drain")
    emit(args, doc, drain_rows(doc))
    return EXIT_OK


def cmd_node_uncordon(api: Api, args: argparse.Namespace) -> int:
    node = api.call("POST", f"/v1/nodes/{args.node}/uncordon")
    left = node.get("taints") or {}
    extra = f"; still tainted: {', '.join(sorted(left))}" if left else ""
    emit(args, node, f"node {node['id']}: cordon lifted{extra}")
    return EXIT_OK


def cmd_node_history(api: Api, args: argparse.Namespace) -> int:
    """The host's remediation history: every order, outcome and drain, newest last."""
    node = api.call("GET", f"/v1/nodes/{args.node}")
    doc = {"id": node["id"], "remediation": node.get("remediation"), "history": node.get("remediationHistory", [])}
    emit(args, doc, history_rows(doc["history"]))
    return EXIT_OK


def cmd_scheduling_mode(api: Api, args: argparse.Namespace) -> int:
    """Show the placement mode, or switch it live (spread ⇄ pack; audited by the scheduler)."""
    if args.mode is None:
        doc = api.call("GET", "/v1/admin/scheduling-mode")
    else:
        doc = api.call("PUT", "/v1/admin/scheduling-mode", {"mode": args.mode}, headers={"X-Titus-Actor": getpass.getuser()})
    auto = doc.get("auto") or {}
    triggers = []
    if auto.get("packAtQueueDepth"):
        triggers.append(f"pack at >= {auto['packAtQueueDepth']} queued")
    if auto.get("packAtArrivalRate"):
        triggers.append(f"pack at >= {auto['packAtArrivalRate']:g} tasks/s submitted (now {auto.get('arrivalRate', 0):g}/s)")
    spread = f"spread at <= {auto.get('spreadAtQueueDepth')} queued" + (
        f" and <= {auto['spreadAtArrivalRate']:g} tasks/s" if auto.get("packAtArrivalRate") else "")
    state = ("off" if not auto.get("enabled") else "pinned by an operator" if auto.get("pinned")
             else ", ".join([*triggers, spread]))
    emit(args, doc, f"scheduling mode: {doc['mode']} (automatic switch: {state})")
    return EXIT_OK
