"""titusctl's entry point (`titusctl.main:main`, also `python -m titusctl.main`): the argparse
tree (every noun, verb and flag), dispatch to `commands`, and turning a `CliError` into its
message on stderr and its exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from titusctl.client import DEFAULT_AGENT_URL, DEFAULT_URL, Api, CliError, Credentials

Verb = Callable[[Api, argparse.Namespace], int]


def _lazy(module: str, name: str, *first: str) -> Verb:
    """A verb imported when it runs, not at start-up: each run of titusctl pays only for its own
    verb's modules (`task exec`'s start-up is part of its latency, docs/exec.md)."""

    def verb(api: Api, args: argparse.Namespace) -> int:
        fn: Callable[..., int] = getattr(importlib.import_module(module), name)
        return fn(*first, api, args)

    verb.__name__ = name
    return verb


def _cmd(name: str, *first: str) -> Verb:
    return _lazy("titusctl.commands", name, *first)


# `titusctl --help`'s description (the exit codes are defined in client.py).
DESCRIPTION = """titusctl: the operator's CLI for jobs, tasks and nodes.

Exit codes scripts can rely on: 0 ok · 1 the request was refused or the object not found ·
2 bad usage or input file · 3 the scheduler cannot be reached · 4 `--wait` ended with a task not normal.
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole tree; with `only` (a noun), that noun's verbs and the other nouns bare (their help
    line only): a run builds, and imports, no more than its own noun needs."""
    p = argparse.ArgumentParser(prog="titusctl", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scheduler", default=DEFAULT_URL, help=f"scheduler URL (default {DEFAULT_URL})")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--ca", help="cell CA certificate to verify the scheduler (TITUS_CA)")
    p.add_argument("--cert", help="client certificate (TITUS_CERT)")
    p.add_argument("--key", help="client certificate's key (TITUS_KEY)")
    p.add_argument("--token-file", help="file holding a bearer token (TITUS_TOKEN_FILE; or TITUS_TOKEN)")
    sub = p.add_subparsers(dest="noun", required=True)
    for noun, what, verbs in (("job", "jobs", _job_verbs), ("task", "tasks", _task_verbs),
                              ("node", "hosts", _node_verbs), ("admin", "control-plane administration", None)):
        if only is not None and noun != only:
            sub.add_parser(noun, help=what)
        elif verbs is None:
            _admin_verbs(sub)
        else:
            verbs(sub.add_parser(noun, help=what).add_subparsers(dest="verb", required=True))
    return p


def _job_verbs(job: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = job.add_parser("submit", help="submit a job from a JSON file or from flags")
    s.add_argument("file", nargs="?", help="job spec JSON file ('-' for stdin)")
    s.add_argument("--image")
    s.add_argument("--cmd", help="command line (split like a shell would; see --shell)")
    s.add_argument("--shell", action="store_true", help="run --cmd through /bin/sh -c")
    s.add_argument("--app", help="the app (default adhoc-<owner>: an app belongs to one owner, docs/identity.md)")
    s.add_argument("--owner", default=os.environ.get("USER", "operator"))
    s.add_argument("--count", type=int, default=1, help="batch size, or desired count with --service")
    s.add_argument("--service", action="store_true", help="a service job (kept running)")
    s.add_argument("--cpu", type=float, default=1.0)
    s.add_argument("--memory", type=int, default=256, help="MiB")
    s.add_argument("--disk", type=int, default=1024, help="MiB")
    s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                   help="a job attribute, e.g. source.commit=<sha>, source.repo, build.id, build.url (docs/provenance.md)")
    s.add_argument("--retries", type=int, default=0)
    s.add_argument("--runtime-limit", type=float, help="seconds (batch)")
    s.add_argument("--iam-role")
    s.add_argument("--idempotency-key")
    s.add_argument("--wait", action="store_true", help="wait for the job to finish; exit 4 unless all normal")
    s.add_argument("--timeout", type=float, default=300.0)
    s.set_defaults(fn=_cmd("cmd_job_submit"))
    ls = job.add_parser("list")
    ls.add_argument("--state")
    ls.set_defaults(fn=_cmd("cmd_job_list"))
    for verb, fn in (("describe", _cmd("cmd_describe", "job")), ("kill", _cmd("cmd_kill", "job"))):
        c = job.add_parser(verb)
        c.add_argument("id")
        c.set_defaults(fn=fn)


def _task_verbs(task: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tl = task.add_parser("list")
    tl.add_argument("--job")
    tl.add_argument("--state")
    tl.add_argument("--node")
    tl.set_defaults(fn=_cmd("cmd_task_list"))
    for verb, fn in (("describe", _cmd("cmd_describe", "task")), ("kill", _cmd("cmd_kill", "task"))):
        c = task.add_parser(verb)
        c.add_argument("id")
        c.set_defaults(fn=fn)
    ts = task.add_parser("stats", help="a running task's CPU, throttling, memory, pids, cpuset, network and "
                                       "processes, from its agent (through the scheduler)")
    ts.add_argument("id")
    ts.set_defaults(fn=_lazy("titusctl.stats", "cmd_task_stats"))
    tt = task.add_parser("top", help="a running task's processes by CPU, from two stats readings (through the "
                                     "scheduler; no host login)")
    tt.add_argument("id")
    tt.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    tt.add_argument("--count", type=int, default=1, help="how many tables to print (default 1)")
    tt.set_defaults(fn=_lazy("titusctl.top", "cmd_task_top"))
    e = task.add_parser("exec", help="run a command inside one of your task's containers (not on the host)")
    e.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    e.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (with -i for a shell)")
    e.add_argument("id", help="task id")
    e.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG…]")
    e.set_defaults(fn=_lazy("titusctl.exec", "cmd_task_exec"))  # docs/exec.md


def _node_verbs(node: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node.add_parser("list").set_defaults(fn=_cmd("cmd_node_list"))
    nc = node.add_parser("cpus", help="this host's CPU map: which task holds which thread (asks the local agent)")
    nc.add_argument("--agent", default=DEFAULT_AGENT_URL, help=f"agent URL (default {DEFAULT_AGENT_URL})")
    nc.set_defaults(fn=_cmd("cmd_node_cpus"))
    nn = node.add_parser("net", help="this host's IPs: ENIs, free/warm, assigned to which task, cooling, leaks"
                                     " (asks the local agent)")
    nn.add_argument("--agent", default=DEFAULT_AGENT_URL, help=f"agent URL (default {DEFAULT_AGENT_URL})")
    nn.set_defaults(fn=_cmd("cmd_node_net"))
    nd = node.add_parser("doctor", help="each host's security posture (userns, seccomp, AppArmor, cgroup, kernel)"
                                        " and the local agent's health")
    nd.add_argument("node", nargs="?", help="only this node")
    nd.add_argument("--agent", default=DEFAULT_AGENT_URL,
                    help=f"the local agent, asked for /healthz if reachable (default {DEFAULT_AGENT_URL})")
    nd.set_defaults(fn=_cmd("cmd_node_doctor"))
    nh = node.add_parser("health", help="the fleet's health conditions (checks not ok; --all for every one)")
    nh.add_argument("--all", action="store_true", help="every check of every host, ok ones too")
    nh.set_defaults(fn=_cmd("cmd_node_health"))
    nhist = node.add_parser("history", help="a host's remediation history (orders, outcomes, drains)")
    nhist.add_argument("node")
    nhist.set_defaults(fn=_cmd("cmd_node_history"))
    node_verbs: tuple[tuple[str, str, str], ...] = (
        ("cordon", "cmd_node_cordon", "no new work on the host; its tasks stay"),
        ("drain", "cmd_node_drain", "cordon, then move the host's tasks off under disruption budgets"),
        ("drain-status", "cmd_node_drain_status", "a drain's progress: each task left and what it waits for"),
        ("uncordon", "cmd_node_uncordon", "the host takes new work again (stops a drain; health taints still apply)"),
        ("undrain", "cmd_node_uncordon", "the same as uncordon"),
    )
    for verb, verb_fn, what in node_verbs:
        nv = node.add_parser(verb, help=what)
        nv.add_argument("node")
        if verb in ("cordon", "drain"):
            nv.add_argument("--reason", default="", help="why (shown on the node and in `node doctor`)")
        if verb == "drain":
            nv.add_argument("--batch-deadline", type=float, default=None, metavar="SECONDS",
                            help="batch tasks may finish for this long, then are evicted (default: the scheduler's)")
        nv.set_defaults(fn=_cmd(verb_fn))


def _admin_verbs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from titusctl import admin, trust_admin

    
    admin_verbs = admin.add_parser(sub)
    trust_admin.add_verbs(admin_verbs)
    sm = admin_verbs.add_parser("scheduling-mode", help="show or switch the placement mode live (spread normally, pack in a failover)")
    sm.add_argument("mode", nargs="?", choices=("spread", "pack", "auto"),
                    help="spread|pack pin the mode; auto hands it to the automatic switch on a burst")
    sm.set_defaults(fn=_cmd("cmd_scheduling_mode"))


def _noun(argv: list[str]) -> str | None:
    """The noun of a command line (the first word not an option or a global option's value)."""
    valued = {"--scheduler", "-o", "--output", "--ca", "--cert", "--key", "--token-file"}
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in valued:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_noun(words)).parse_args(words)
    try:
        code = args.fn(Api(args.scheduler, credentials=Credentials.from_args(args)), args)
    except CliError as e:
        print(str(e), file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
