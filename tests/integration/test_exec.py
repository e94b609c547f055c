"""Owner exec into a task (docs/exec.md) against the real engine, over the TLS platform of
tests/harness.py: `titusctl task exec` as a submitter of the job's owner, relayed by the scheduler to
the agent's outbound websocket. The exec'd process has the task's user, capabilities, seccomp mode,
AppArmor label and cgroup (compared with the task's PID 1, seen from the host), sees neither host
processes nor host files, is denied what the escape suite's attempts try, and every session is in the
audit log; refusals (no grant, finished task, cordoned host) carry their status."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests import escape_attempts as E
from tests.harness import Platform, wait_for

pytestmark = pytest.mark.integration
STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
# The escape suite's shell attempts (no helper binary needed), run through exec.
ESCAPES = ("mount", "unshare-user", "unshare-mount", "core_pattern", "proc1-root", "mknod", "cgroup-write")


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("exec"), engine)
    try:
        p.start_scheduler()
        p.start_agent()
        yield p
    finally:
        p.close()
    assert not p.containers(all=True)


def token(p: Platform, role: str, name: str, owner: str = "") -> str:
    body = {"kind": "operator", "role": role, "name": name, "owner": owner, "ttlSeconds": 3600}
    return str(p.api("POST", "/v1/admin/tokens", body, expect=201)["token"])


@pytest.fixture(scope="module")
def owner_token(plat: Platform) -> str:
    return token(plat, "submitter", "alice", "tests")  # the harness submits as owner "tests"


@pytest.fixture(scope="module")
def task(plat: Platform) -> dict[str, Any]:
    job = plat.submit("sleep 3600", killGraceSeconds=1)
    (t,) = wait_for(lambda: plat.started(job), 60, "task Started")
    return dict(t)


def ctl_env(p: Platform, tok: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITUS_")}
    return {**env, "TITUS_SCHEDULER": p.url, "TITUS_CA": str(p.pki / "ca.crt"), "TITUS_TOKEN": tok,
            "TITUS_PKI": str(p.tmp / "no-pki")}


def titusctl(p: Platform, tok: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "titusctl.main", *argv], capture_output=True, text=True,
                          timeout=timeout, env=ctl_env(p, tok))


def exec_out(p: Platform, tok: str, task_id: str, script: str) -> str:
    r = titusctl(p, tok, "task", "exec", task_id, "--", "/bin/sh", "-c", script)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k in
            (*STATUS_KEYS, "Uid", "Gid")}


def container(p: Platform, task_id: str) -> Any:
    return E.titus_task_container(p, task_id)


def test_id_and_status_match_the_tasks_pid1(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    r = titusctl(plat, owner_token, "task", "exec", task["id"], "--", "id")
    assert r.returncode == 0, r.stderr
    inside = exec_out(plat, owner_token, task["id"], "cat /proc/self/status; echo ===; cat /proc/1/status")
    mine, pid1 = (status(part) for part in inside.split("==="))
    # The task's PID 1 as the host sees it (its capability sets and seccomp mode are the task's).
    host_pid = container(plat, task["id"]).attrs["State"]["Pid"]
    host_view = status(Path(f"/proc/{host_pid}/status").read_text())
    for key in STATUS_KEYS:
        assert mine[key] == host_view[key] == pid1[key], (key, mine, host_view)
    assert mine["Seccomp"] == "2"  # filtered, as the task
    assert mine["Uid"] == pid1["Uid"] and mine["Gid"] == pid1["Gid"]
    uid = pid1["Uid"].split()[0]
    assert re.match(rf"uid={uid}\b", r.stdout), r.stdout
    assert exec_out(plat, owner_token, task["id"], "cmp /proc/self/cgroup /proc/1/cgroup && echo same") == "same\n"
    if Path("/sys/module/apparmor/parameters/enabled").exists():  # this host's kernel may have no AppArmor
        label = exec_out(plat, owner_token, task["id"],
                         "cmp /proc/self/attr/current /proc/1/attr/current && cat /proc/self/attr/current")
        assert label.strip() and "unconfined" not in label


def test_exit_code_and_stderr_are_propagated(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    r = titusctl(plat, owner_token, "task", "exec", task["id"], "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 42")
    assert (r.returncode, r.stdout, r.stderr) == (42, "out\n", "err\n")
    r = titusctl(plat, owner_token, "task", "exec", "-i", task["id"], "--", "/bin/sh", "-c", "tr a-z A-Z")
    assert r.returncode == 0  # stdin closed at once (capture_output gives none): EOF reached the command


def test_interactive_shell_with_a_tty(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "titusctl.main", "task", "exec", "-it", task["id"], "--", "/bin/sh"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**ctl_env(plat, owner_token), "PYTHONFAULTHANDLER": "1"})
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.time() + timeout
        while marker not in seen and time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert marker in seen, seen

    try:
        read_until(b"# ")  # the shell's prompt: it has set up its terminal (input before that may be flushed)
        os.write(master, b"tty; echo sum-$((40+2)); [ -t 0 ] && echo is-a-tty\n")
        read_until(b"is-a-tty")
        os.write(master, b"exit 7\n")
        deadline = time.time() + 20
        while proc.poll() is None and time.time() < deadline:  # keep reading, as a terminal does
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(master, 4096)
        if proc.poll() is None:  # where it hangs (faulthandler prints every thread's stack)
            proc.send_signal(6)
            time.sleep(1)
            with contextlib.suppress(OSError):
                seen += os.read(master, 65536)
        assert proc.wait(timeout=10) == 7, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"/dev/pts/" in seen and b"sum-42" in seen


def test_exec_sees_no_host_process_or_file(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    assert plat.agent is not None
    marker = Path(f"/tmp/titus-exec-marker-{uuid.uuid4().hex[:8]}")
    marker.write_text("host only\n")
    try:
        out = exec_out(plat, owner_token, task["id"],
                       f"ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
                       f" test -e {marker} && echo HOST-FILE-VISIBLE; test -e /proc/{plat.agent.p.pid}/cmdline &&"
                       f" cat /proc/{plat.agent.p.pid}/cmdline; grep -l agent.main /proc/[0-9]*/cmdline; true")
    finally:
        marker.unlink()
    pids, init = out.splitlines()[:2]
    assert len(pids.split()) <= 6, pids  # the task's init, its sleep, the exec's shell and its pipeline
    assert "sleep 3600" in init
    assert "HOST-FILE-VISIBLE" not in out and "agent.main" not in out and "dockerd" not in out


def test_escape_attempts_through_exec_are_denied(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    ctx = E.host_context(plat)
    Path(ctx.marker).write_text("host marker\n")
    try:
        for attempt in (a for a in E.ATTEMPTS if a.key in ESCAPES):
            r = titusctl(plat, owner_token, "task", "exec", task["id"], "--", "/bin/sh", "-c",
                         ctx.fmt(attempt.command) + " 2>&1")
            out = r.stdout + r.stderr
            assert "ESCAPED" not in out, (attempt.key, out)
            assert re.search(attempt.denial, out, re.MULTILINE), (attempt.key, attempt.denial, out)
    finally:
        Path(ctx.marker).unlink(missing_ok=True)


def test_refusals(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    other = token(plat, "submitter", "mallory", "someone-else")
    ops = token(plat, "operator", "oscar")
    for tok, who in ((other, "mallory"), (ops, "oscar")):
        r = titusctl(plat, tok, "task", "exec", task["id"], "--", "id")
        assert r.returncode == 1 and f"operator:{who}" in r.stderr and "may not exec" in r.stderr, r.stderr
        raw = requests.get(f"{plat.url}/v1/tasks/{task['id']}/exec", params={"cmd": "id"}, timeout=10,
                           verify=str(plat.pki / "ca.crt"), headers={"Authorization": f"Bearer {tok}"})
        assert raw.status_code == 403
    # the owner without a websocket upgrade: 400; an unknown task: 404
    url = f"{plat.url}/v1/tasks/{task['id']}/exec"
    hdr = {"Authorization": f"Bearer {owner_token}"}
    assert requests.get(url, params={"cmd": "id"}, headers=hdr, verify=str(plat.pki / "ca.crt"), timeout=10).status_code == 400
    r = titusctl(plat, owner_token, "task", "exec", "no-such-task", "--", "id")
    assert r.returncode == 1 and "no task" in r.stderr
    # a finished task: 409
    job = plat.submit("true")
    plat.wait_job_finished(job)
    (done,) = plat.tasks(job)
    r = titusctl(plat, owner_token, "task", "exec", done["id"], "--", "id")
    assert r.returncode == 1 and "exec needs a running (Started) task" in r.stderr, r.stderr
    # a cordoned (draining) host: 409, and exec works again once uncordoned
    plat.api("POST", f"/v1/nodes/{plat.node_id}/cordon", {"reason": "exec test"}, expect=200)
    try:
        r = titusctl(plat, owner_token, "task", "exec", task["id"], "--", "id")
        assert r.returncode == 1 and "cordoned or draining (exec test)" in r.stderr, r.stderr
    finally:
        plat.api("POST", f"/v1/nodes/{plat.node_id}/uncordon", expect=200)
    assert titusctl(plat, owner_token, "task", "exec", task["id"], "--", "true").returncode == 0


def test_sessions_are_in_the_audit_log(plat: Platform, owner_token: str, task: dict[str, Any]) -> None:
    r = titusctl(plat, owner_token, "task", "exec", task["id"], "--", "/bin/sh", "-c", "exit 3")
    assert r.returncode == 3
    events = plat.api("GET", "/v1/admin/audit", expect=200)["events"]
    end = next(e for e in events if e["method"] == "EXEC-END" and e["detail"]["command"] == ["/bin/sh", "-c", "exit 3"])
    assert end["who"] == "operator:alice(submitter)" and end["status"] == 200
    d = end["detail"]
    assert d["task"] == task["id"] and d["exitCode"] == 3 and d["end"] == "exited" and d["durationSeconds"] >= 0
    start = next(e for e in events if e["method"] == "EXEC" and e["detail"]["session"] == d["session"])
    assert start["status"] == 101 and start["at"] <= end["at"]
    refused = [e for e in events if e["path"].endswith("/exec") and e["status"] == 403]
    assert refused, "refused exec attempts are audited too"
    shown = subprocess.run([sys.executable, "-m", "titusctl.main", "admin", "audit"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, **plat.ctl_env()})
    assert shown.returncode == 0 and "EXEC-END" in shown.stdout and d["session"] in shown.stdout


def test_session_ends_when_the_task_is_killed(plat: Platform, owner_token: str) -> None:
    job = plat.submit("sleep 3600", killGraceSeconds=1)
    (t,) = wait_for(lambda: plat.started(job), 60, "task Started")
    proc = subprocess.Popen([sys.executable, "-m", "titusctl.main", "task", "exec", t["id"], "--", "sleep", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ctl_env(plat, owner_token))
    try:
        c = container(plat, t["id"])
        wait_for(lambda: "sleep 600" in " ".join(" ".join(p) for p in c.top()["Processes"]), 30, "exec'd sleep running")
        plat.api("POST", f"/v1/tasks/{t['id']}/kill", expect=202)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, (out, err)
    events = plat.api("GET", "/v1/admin/audit", expect=200)["events"]
    end = next(e for e in events if e["method"] == "EXEC-END" and e["detail"]["task"] == t["id"])
    assert end["detail"]["end"] in ("task ended", "exited", "agent closed"), end
    plat.wait_job_finished(job)
