"""Security wired end to end: a task launched through titus (scheduler → agent → security step →
container) runs confined; a job asking for what this host cannot enforce is refused with the reason;
`titusctl node doctor` shows the posture the agent reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from security import apparmor
from security.capabilities import DEFAULT_CAPABILITIES
from security.hardening import host_pids_limit
from tests.harness import Platform, wait_for

pytestmark = pytest.mark.integration

# Capability numbers (linux/capability.h) of titus's default set.
CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10,
}
CAP_EFF = f"{sum(1 << CAP_NUMBERS[c] for c in DEFAULT_CAPABILITIES):016x}"

# Run by the task's own process (through tini): each check that fails exits with its own code, so a
# `normal` finish means every one held inside the container titus launched.
CHECKS = f"""
grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || exit 11
grep -q '^CapEff:[[:space:]]*{CAP_EFF}$' /proc/self/status || exit 12
grep -q '^CapBnd:[[:space:]]*{CAP_EFF}$' /proc/self/status || exit 13
grep -q '^Seccomp:[[:space:]]*2$' /proc/self/status || exit 14
unshare -U true 2>/dev/null && exit 15
head -c 1 /proc/kallsyms | grep -q . && exit 16
echo 1 > /proc/sys/kernel/panic_on_oops 2>/dev/null && exit 17
mknod /tmp/null c 1 3 2>/dev/null && exit 18
exit 0
"""


def agent_tasks(p: Platform) -> list[dict[str, Any]]:
    return list(requests.get(f"http://127.0.0.1:{p.agent_port}/v1/tasks", timeout=5).json()["tasks"])


def test_task_runs_hardened(platform: Platform) -> None:
    p = platform
    checks = p.submit(CHECKS)
    holder = p.submit("sleep 600", service=True, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(holder), 30, "holder Started")
    (container,) = [c for c in p.containers() if c.labels.get("titus.task_id") == task["id"]]
    # The engine was asked for exactly what the security step decided.
    hc = container.attrs["HostConfig"]
    assert hc["Privileged"] is False and hc["CapDrop"] == ["ALL"]
    assert sorted(hc["CapAdd"]) == sorted(DEFAULT_CAPABILITIES)
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert any(o.startswith("seccomp=") for o in hc["SecurityOpt"])
    assert not any(o.startswith("apparmor=") for o in hc["SecurityOpt"]) or apparmor.detect_support().enforceable
    assert hc["PidsLimit"] == host_pids_limit() and hc["Memory"] == hc["MemorySwap"] == 64 * 1024 * 1024
    assert "/proc/kallsyms" in hc["MaskedPaths"] and "/proc/sys/kernel" in hc["ReadonlyPaths"]
    # ... and it holds inside: the main process (tini, PID 1) and anything started in the container.
    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    assert "NoNewPrivs:\t1" in status and f"CapEff:\t{CAP_EFF}" in status and "Seccomp:\t2" in status
    denied = container.exec_run(["unshare", "-U", "true"])
    assert denied.exit_code != 0 and b"Operation not permitted" in denied.output
    assert container.exec_run(["cat", "/proc/kallsyms"]).output == b""  # masked: /dev/null over it
    pids = container.exec_run(["sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"])
    assert pids.output.decode().strip() == str(host_pids_limit())
    # The decision is in the task's checkpoint (the agent's local view shows it).
    mine = next(t for t in agent_tasks(p) if t["taskId"] == task["id"])["resources"]["security"]
    assert mine["variant"] == "default" and mine["noNewPrivileges"] is True
    assert mine["seccompDigest"].startswith("sha256:") and mine["capabilities"] == list(DEFAULT_CAPABILITIES)
    if not apparmor.detect_support().enforceable:
        assert mine["apparmor"] == "unavailable" and mine["apparmorProfile"] is None
        assert any("AppArmor not enforced" in w for w in mine["warnings"])
    # The same checks from the task's own process.
    p.wait_job_finished(checks)
    (done,) = p.tasks(checks)
    assert done["reason"] == "normal", done
    p.api("POST", f"/v1/jobs/{holder}/kill", expect=202)
    p.wait_job_finished(holder, timeout=30)


def test_submit_time_refusals(platform: Platform) -> None:
    p = platform
    for attrs, field in (
        ({"privileged": "true"}, "container.securityAttributes.privileged"),
        ({"seccomp": "no-such-profile"}, "container.securityAttributes.seccomp"),
        ({"seccomp": "perf"}, "container.securityAttributes.seccomp"),  # not granted by the default policy
    ):
        spec = {
            "appName": "itest", "owner": "tests",
            "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "securityAttributes": attrs},
            "batch": {"size": 1},
        }
        r = p.http.post(f"{p.url}/v1/jobs", json=spec, timeout=10)
        assert r.status_code == 400, r.text
        assert field in [x["field"] for x in r.json()["error"]["problems"]]
    assert p.api("GET", "/v1/jobs")["jobs"] == []


@pytest.mark.skipif(apparmor.detect_support().enforceable, reason="this host enforces AppArmor")
def test_apparmor_required_waits_for_a_host_that_can_enforce_it(platform: Platform) -> None:
    p = platform
    # Admissible at submit (the attributes are valid); the scheduler places it only on a host whose
    # reported posture enforces AppArmor — none here — and says so. Never run unconfined. (Should a
    # host's posture change after placement, the agent's security step refuses it at launch:
    # tests/unit/test_security_step.py.)
    job_id = p.submit("echo should-not-run", securityAttributes={"apparmor": "required"})
    (task,) = wait_for(
        lambda: [t for t in p.tasks(job_id) if t["message"]], 20, "a waiting reason"
    )
    assert task["state"] == "Accepted" and task["nodeId"] is None
    assert task["message"] == "waiting: job requires AppArmor; host cannot enforce it (every Ready host)"
    assert not p.containers(all=True)  # no container was ever created
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    job = p.wait_job_finished(job_id, timeout=10)
    assert [t["reason"] for t in p.tasks(job_id)] == ["killed"] and not job["crashLooping"]


def test_node_doctor_shows_the_posture(platform: Platform) -> None:
    p = platform
    wait_for(lambda: (n := p.node()) is not None and n.get("posture"), 20, "posture reported")
    proc = subprocess.run(
        [sys.executable, "-m", "titusctl.main", "--scheduler", p.url, "-o", "json", "node", "doctor", p.node_id,
         "--agent", f"http://127.0.0.1:{p.agent_port}"],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **p.ctl_env()},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (node,) = doc["nodes"]
    support = apparmor.detect_support()
    summary = node["summary"]
    assert summary["apparmorEnforced"] is support.enforceable and summary["apparmorReason"] == support.reason
    assert summary["seccomp"] is True and summary["cgroupVersion"] in (1, 2)
    # scripts/setup-host.sh runs dockerd with --userns-remap=default: the posture must say so.
    assert summary["kernel"] and node["posture"]["userns"]["remapped"] is True
    assert doc["agent"]["reachable"] is True
    sec = doc["agent"]["healthz"]["security"]
    assert sec["postureProbed"] is True and sec["variants"] == ["default", "fuse", "perf"]
    assert sec["apparmor"] == ("enforced" if support.enforceable else "unavailable")
    if not support.enforceable:  # this host
        assert summary["apparmorEnforced"] is False
    # Human output, and an unreachable local agent is skipped, not an error.
    proc = subprocess.run(
        [sys.executable, "-m", "titusctl.main", "--scheduler", p.url, "node", "doctor", "--agent", "http://127.0.0.1:1"],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **p.ctl_env()},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"node {p.node_id}" in proc.stdout and "apparmor" in proc.stdout and "not reachable" in proc.stdout


def remap_base(user: str = "dockremap") -> int:
    for line in open("/etc/subuid"):
        name, start, _count = line.strip().split(":")
        if name == user:
            return int(start)
    raise AssertionError(f"no /etc/subuid range for {user}: is dockerd running with --userns-remap=default?")


def test_container_root_is_an_unprivileged_host_uid(platform: Platform) -> None:
    """userns-remap: root in the container is the remap range's first UID on the host, so a file the
    task writes as root belongs to that UID, and the task's processes are not host root."""
    p = platform
    base = remap_base()
    job_id = p.submit("id -u > /tmp/partial && mv /tmp/partial /tmp/written-by-root; sleep 600", killGraceSeconds=1)
    wait_for(lambda: p.started(job_id), 30, "Started")
    (container,) = p.containers()
    pid = int(container.attrs["State"]["Pid"])
    host_file = Path(f"/proc/{pid}/root/tmp/written-by-root")
    wait_for(host_file.exists, 10, "file written")  # renamed into place: complete when it exists
    assert host_file.read_text().strip() == "0"  # root inside
    assert host_file.stat().st_uid == base and base > 0  # an unprivileged UID outside
    uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert {int(u) for u in uids.split()[1:]} == {base}
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=30)
