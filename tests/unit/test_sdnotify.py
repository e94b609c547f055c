"""systemd notify: nothing outside systemd; READY/STATUS/WATCHDOG/RELOADING over the real
NOTIFY_SOCKET datagram protocol (systemd-python's notify) when run as a `Type=notify` unit.

The scheduler test runs the real process with NOTIFY_SOCKET and WATCHDOG_USEC pointing at a socket
the test owns, as systemd would: READY=1 with a STATUS= line, WATCHDOG=1 pings from its event loop,
pings again after SIGSTOP/SIGCONT, and SIGHUP → RELOADING=1 … READY=1 without restarting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.main import status_line as agent_status
from titus_common.daemon import apply_log_level
from titus_common.sdnotify import Notifier, watchdog_interval
from titus_common.states import TaskState


def test_outside_systemd_nothing_is_sent_and_the_watchdog_returns() -> None:
    n = Notifier(environ={})
    assert not n.enabled and n.interval is None
    n.ready("x")
    n.status("y")
    n.ping()
    asyncio.run(asyncio.wait_for(n.watchdog(lambda: "s"), 5))  # returns at once: no loop to run


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_status_only_sent_when_it_changes_and_ready_carries_it() -> None:
    sent: list[str] = []
    n = Notifier(sent.append, environ={"WATCHDOG_USEC": "2000000"})
    n.ready("3 tasks")
    n.status("3 tasks")
    n.status("4 tasks")
    n.reloading()
    n.stopping()
    assert sent[0] == "READY=1\nSTATUS=3 tasks"
    assert sent[1] == "STATUS=4 tasks"
    assert sent[2].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert sent[3] == "STOPPING=1\nSTATUS=stopping"
    assert n.interval == 1.0


def test_a_failing_transport_never_raises() -> None:
    def broken(_: str) -> bool:
        raise ConnectionRefusedError("gone")

    n = Notifier(broken, environ={})
    n.ready("x")
    n.ping()


async def test_watchdog_pings_from_the_loop_and_survives_a_status_bug() -> None:
    sent: list[str] = []
    calls = 0

    def status() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug")
        return f"tick {calls}"

    n = Notifier(sent.append, environ={"WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(n.watchdog(status))
    while n.pings < 4:
        await asyncio.sleep(0.005)
    task.cancel()
    assert sent.count("WATCHDOG=1") == n.pings
    assert "STATUS=tick 1" in sent and "STATUS=tick 3" in sent


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_the_real_transport_reaches_notify_socket(notify_socket: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    n.ready("up")
    assert notify_socket.recv(4096).decode() == "READY=1\nSTATUS=up"


def _recv_until(sock: socket.socket, want: str) -> list[str]:
    seen: list[str] = []
    while True:
        msg = sock.recv(4096).decode()
        seen.append(msg)
        if want in msg.splitlines():
            return seen


def test_scheduler_process_ready_pings_and_reloads(notify_socket: socket.socket, tmp_path: Path) -> None:
    sock_path = notify_socket.getsockname()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "scheduler.toml"
    conf.write_text('log_level = "INFO"\n')
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="200000")  # ping every 0.1 s
    env.pop("JOURNAL_STREAM", None)  # log to stderr, read below
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.main", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
         "--db", str(tmp_path / "s.db"), "--insecure"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = _recv_until(notify_socket, "READY=1")[-1]
        assert "STATUS=0 jobs, 0 active tasks, 0 nodes" in ready.splitlines()
        _recv_until(notify_socket, "WATCHDOG=1")
        _recv_until(notify_socket, "WATCHDOG=1")  # repeated, not a one-off
        # SIGSTOP freezes the loop (systemd would restart it after WatchdogSec); SIGCONT resumes pings.
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOWAIT)  # it really is stopped
        notify_socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:  # whatever was queued before the stop
                notify_socket.recv(4096)
        notify_socket.settimeout(30)
        os.kill(proc.pid, signal.SIGCONT)
        _recv_until(notify_socket, "WATCHDOG=1")
        conf.write_text('log_level = "DEBUG"\nlost_after = 1234.0\n')
        proc.send_signal(signal.SIGHUP)
        seen = _recv_until(notify_socket, "READY=1")
        assert any(m.startswith("RELOADING=1") for m in seen)
        assert proc.poll() is None  # reloaded in place
        proc.terminate()
        assert proc.wait(30) == 0
        assert "need a restart: scheduler" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reload_applies_the_log_level_and_names_what_needs_a_restart() -> None:
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        line = apply_log_level(SimpleNamespace(log_level="INFO", listen=1), SimpleNamespace(log_level="debug", listen=2))
        assert root.level == logging.DEBUG
        assert line == "log level DEBUG; changed but need a restart: listen"
    finally:
        root.setLevel(before)


def _runner(state: TaskState) -> Any:
    return SimpleNamespace(record=SimpleNamespace(state=state))


def test_agent_status_line_says_tasks_sync_and_degraded() -> None:
    agent: Any = SimpleNamespace(
        runners={"a": _runner(TaskState.STARTED), "b": _runner(TaskState.FINISHED)},
        unknown_containers=["x"],
        last_sync_ok=None,
        config=SimpleNamespace(scheduler_url="http://s:7100", sync_wait_seconds=5.0),
    )
    assert agent_status(agent, now=100.0) == "1 tasks, 1 unknown containers, waiting for the first sync with http://s:7100"
    agent.last_sync_ok = 98.0
    assert agent_status(agent, now=100.0) == "1 tasks, 1 unknown containers, last sync 2s ago"
    agent.last_sync_ok = 50.0
    assert agent_status(agent, now=100.0).endswith("last sync 50s ago, degraded: scheduler not answering")
