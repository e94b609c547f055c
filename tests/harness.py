"""A real one-host platform run as processes: titus-scheduler and titus-agent against the real Docker
engine and the local registry. Shared by the integration tests and the benchmarks; everything it
starts, `Platform.close` stops and removes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import requests

from agent.host.network import netns_dir
from netns import prepared
from netns.metadata import MetadataNetwork
from netns.wiring import Wiring

IMAGE = os.environ.get("TITUS_TEST_IMAGE", "127.0.0.1:5000/titus/busybox:latest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._fh = open(log, "ab")
        self.p = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process' output, for a failure message."""
        with contextlib.suppress(OSError):
            self._fh.flush()
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(log unreadable)"

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """`wait_for`, with the process' fate and its last output in the failure (CI shows little else)."""
        try:
            return wait_for(check, timeout, what)
        except AssertionError as e:
            fate = "still running" if self.alive() else f"exited {self.p.returncode}"
            raise AssertionError(f"{e}\n--- {self.name} ({fate}), last output ---\n{self.log_tail()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.alive():
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                try:
                    self.p.wait(30)
                except subprocess.TimeoutExpired:  # uninterruptible sleep: say where, do not hang the run
                    raise RuntimeError(f"{self.name} (pid {self.p.pid}) survives SIGKILL, wchan "
                                       f"{_read(f'/proc/{self.p.pid}/wchan')}\n{self.log_tail()}") from None
        self._fh.close()
        return int(self.p.returncode)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        return f"? ({e.strerror})"


class Platform:
    def __init__(self, tmp: Path, engine: docker.DockerClient) -> None:
        self.tmp = tmp
        self.engine = engine
        self.node_id = f"test-{uuid.uuid4().hex[:10]}"
        self.scheduler_port = free_port()
        self.agent_port = free_port()
        # The scheduler serves TLS with the cell CA made here (docs/trust.md); the test client is the
        # admin, the agent bootstraps its node certificate with a one-time token.
        self.pki = tmp / "pki"
        self.url = f"https://127.0.0.1:{self.scheduler_port}"
        self.scheduler: Proc | None = None
        self.agent: Proc | None = None
        self.agent_env: dict[str, str] = {}  # extra environment of the agent process (e.g. AWS keys)
        self.http = requests.Session()
        self.http.trust_env = False  # else REQUESTS_CA_BUNDLE overrides `verify`
        self.http.verify = str(self.pki / "ca.crt")
        self.http.cert = (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))

    def ctl_env(self) -> dict[str, str]:
        """The environment titusctl needs to reach this platform's scheduler as its admin."""
        return {"TITUS_SCHEDULER": self.url, "TITUS_PKI": str(self.pki)}

    def _trust(self, *argv: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "scheduler.main", *argv], capture_output=True, text=True,
                              timeout=60, check=True)
        return proc.stdout.strip()

    # ---- processes ----------------------------------------------------------------------------

    def start_scheduler(self, *extra: str) -> None:
        if not (self.pki / "ca.key").exists():
            self._trust("ca", "init", "--pki", str(self.pki))
        self.scheduler = Proc(
            "scheduler",
            [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{self.scheduler_port}",
             "--db", str(self.tmp / "scheduler.db"), "--system-backoff-max", "2", "--pki", str(self.pki), *extra],
            self.tmp / "scheduler.log",
        )
        self.scheduler.wait_for(lambda: self._ok(f"{self.url}/healthz"), 15, "scheduler /healthz")

    def start_agent(self, *extra: str, wait: bool = True) -> None:
        """`wait=False`: return once the process runs (an agent whose bootstrap is to be refused)."""
        token = self.tmp / "bootstrap.token"
        token.write_text(self._trust("token", "create", "--db", str(self.tmp / "scheduler.db"),
                                     "--nodes", self.node_id, "--ttl", "1h"))
        self.agent = Proc(
            "agent",
            [sys.executable, "-m", "agent.main", "--scheduler", self.url, "--scheduler-ca", str(self.pki / "ca.crt"),
             "--bootstrap-token-file", str(token), "--listen",
             f"127.0.0.1:{self.agent_port}", "--state-dir", str(self.tmp / "agent"), "--node-id", self.node_id,
             "--sync-wait", "2", "--imds-token-dir", str(self.tmp / "tokens"), *extra],
            self.tmp / "agent.log",
            self.agent_env,
        )
        if not wait:
            return
        # This agent's own first sync answered (its API listens before its start is done, and the node
        # may still be Ready from a previous agent): only then is it up.
        self.agent.wait_for(lambda: self._synced(f"http://127.0.0.1:{self.agent_port}/healthz"), 30, "agent's first sync")
        self.agent.wait_for(lambda: (n := self.node()) is not None and n["status"] == "Ready", 20, "agent registration")

    def _synced(self, url: str) -> bool:
        try:
            return self.http.get(url, timeout=2).json().get("scheduler") is True
        except (requests.RequestException, ValueError):
            return False

    def _ok(self, url: str) -> bool:
        try:
            return self.http.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def close(self) -> None:
        for p in (self.agent, self.scheduler):
            if p is not None:
                p.stop()
        for c in self.containers(all=True):
            c.remove(force=True)
        # The engine health check's scratch containers, when a cut engine socket stopped their removal.
        for c in self.engine.containers.list(all=True, ignore_removed=True, filters={"label": f"titus.health={self.node_id}"}):
            c.remove(force=True)
        self.remove_sandboxes()

    def remove_sandboxes(self) -> None:
        """The per-task network sandboxes (not labelled titus.agent: they are not tasks), then the
        policy rules their links left (a link goes with its namespace, a rule does not)."""
        for c in self.engine.containers.list(all=True, ignore_removed=True, filters={"label": f"titus.sandbox_agent={self.node_id}"}):
            c.remove(force=True)
        Wiring(owner=self.node_id).gc(set())
        # The namespaces the agent prepared (docs/launch-netns.md): containers removed above, an
        # agent stopped without teardown leaves them pinned.
        directory = netns_dir(self.node_id)
        prepared.collect(directory, set())
        with contextlib.suppress(OSError):
            directory.rmdir()
        # The agent's metadata namespace outlives the agent on purpose (its tasks' links live there).
        MetadataNetwork(owner=self.node_id).remove_namespace()

    # ---- API ----------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        r = self.http.request(method, self.url + path, json=body, timeout=30)
        if expect is not None:
            assert r.status_code == expect, r.text
        return r.json()

    def submit(self, command: list[str] | str, count: int = 1, service: bool = False, **container: Any) -> str:
        cmd = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        spec: dict[str, Any] = {
            "appName": "itest",
            "owner": "tests",
            "container": {"image": IMAGE, "command": cmd, "resources": {"cpu": 0.1, "memoryMiB": 64}, **container},
        }
        spec["service" if service else "batch"] = {"desired": count} if service else {"size": count}
        return str(self.api("POST", "/v1/jobs", spec, expect=201)["id"])

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/v1/tasks?jobId={job_id}")["tasks"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/jobs/{job_id}"))

    def node(self) -> dict[str, Any] | None:
        try:
            nodes = self.api("GET", "/v1/nodes")["nodes"]
        except requests.RequestException:
            return None
        return next((n for n in nodes if n["id"] == self.node_id), None)

    def wait_job_finished(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return dict(wait_for(lambda: (j := self.job(job_id))["state"] == "Finished" and j, timeout, "job Finished"))

    def started(self, job_id: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(job_id) if t["state"] == "Started"]

    def containers(self, all: bool = False) -> list[Any]:
        return list(self.engine.containers.list(all=all, ignore_removed=True, filters={"label": f"titus.agent={self.node_id}"}))

    def agent_metrics(self) -> str:
        return str(self.http.get(f"http://127.0.0.1:{self.agent_port}/metrics", timeout=5).text)
