#!/usr/bin/python3 -IS
"""The Python titus-runc-create that native/titus-runc-create.c replaced, kept as the tests' oracle
(tests/unit/test_titus_runc_create.py: the C output must parse to the same JSON). Unchanged but
for this paragraph; not installed anywhere.

titus-runc-create: `create` of the titus OCI runtime (scripts/titus-runc execs it; docs/launch-netns.md).

A thin wrapper around runc. For every command but `create` it execs runc unchanged. For `create`,
when the bundle's process environment carries TITUS_NETNS=<path> (the agent sets it last, after the
user's environment, and only for containers it creates with this runtime), it points the spec's
network namespace at that path — a namespace the agent prepared and wired beforehand — removes the
variable from the environment and execs runc. The path must be a pinned namespace under NETNS_ROOT;
anything else fails the create (never a fresh, unwired namespace in its place).

Registered in /etc/docker/daemon.json `runtimes` by scripts/setup-host.sh. Standard library only,
started with -IS: it runs on every runc call of a titus container.
"""

import json
import os
import sys

# Resolved and exported by the titus-runc front (TITUS_RUNC_REAL, else its search list).
RUNC = os.environ.get("TITUS_RUNC_REAL", "")
NETNS_ROOT = "/run/titus/netns/"
ENV_KEY = "TITUS_NETNS="


def fail(message, argv):
    message = "titus-runc: " + message
    sys.stderr.write(message + "\n")
    # The shim reports the last error of runc's --log file: put ours there too.
    if "--log" in argv:
        i = argv.index("--log")
        if i + 1 < len(argv):
            try:
                with open(argv[i + 1], "a") as f:
                    f.write(json.dumps({"level": "error", "msg": message}) + "\n")
            except OSError:
                pass
    sys.exit(1)


def bundle_of(argv):
    after = argv[argv.index("create") + 1:]
    for i, a in enumerate(after):
        if a in ("--bundle", "-b") and i + 1 < len(after):
            return after[i + 1]
        if a.startswith("--bundle="):
            return a.split("=", 1)[1]
    return os.getcwd()


def prepare(argv):
    path = os.path.join(bundle_of(argv), "config.json")
    with open(path) as f:
        spec = json.load(f)
    process = spec.get("process") or {}
    env = process.get("env") or []
    wanted = [e[len(ENV_KEY):] for e in env if e.startswith(ENV_KEY)]
    if not wanted:
        return
    netns = os.path.realpath(wanted[-1])
    if not netns.startswith(NETNS_ROOT) or not os.path.ismount(netns):
        fail("the task's prepared network namespace %s does not exist (or is not one titus pins)" % wanted[-1], argv)
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    nets = [n for n in namespaces if n.get("type") == "network"]
    if not nets:
        fail("the container has no network namespace of its own to replace", argv)
    for n in nets:
        n["path"] = netns
    # The namespace is owned by a user namespace the agent created with the engine's remapping
    # (netns path + ".user"): the container joins it too, as a container joining a sandbox does.
    userns = netns + ".user"
    users = [n for n in namespaces if n.get("type") == "user"]
    if users:
        if not os.path.ismount(userns):
            fail("the task's prepared user namespace %s does not exist" % userns, argv)
        for n in users:
            n["path"] = userns
    process["env"] = [e for e in env if not e.startswith(ENV_KEY)]
    tmp = path + ".titus"
    with open(tmp, "w") as f:
        json.dump(spec, f)
    os.replace(tmp, path)


def main():
    argv = sys.argv[1:]
    if not RUNC:
        fail("TITUS_RUNC_REAL is unset: run titus-runc-create through titus-runc, which finds runc", argv)
    if "create" in argv:
        try:
            prepare(argv)
        except (OSError, ValueError) as e:
            fail("cannot prepare the bundle: %s" % e, argv)
    os.execv(RUNC, [RUNC] + argv)


main()
