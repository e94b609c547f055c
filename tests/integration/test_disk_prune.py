"""A full engine disk fixed by the `prune` remediation, end to end: real scheduler, real agent, a
private dockerd whose data root is a 400 MiB loop-mounted ext4 (tests/private_engine.py; the
shared engine is never filled). A batch task fills its container's filesystem and exits; the
engine fails the removal of its container once (as dockerd does on a busy rootfs), so the exited
container stays: the disk check fails, the scheduler orders `prune`, the agent removes the
container, the check passes again and the node's taint lifts.

The agent runs with --no-network --no-imds --no-cpuset: nothing here touches the shared network
namespaces, nftables or cpusets (the disk path needs none of them). Routine image GC is set to
start at 99% use and container retention to an hour, so only the remediation frees the disk."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.harness import IMAGE, Platform, wait_for
from tests.private_engine import PrivateEngine, disk_used_pct

pytestmark = pytest.mark.integration

FILL_MIB = 300  # of the ~360 MiB the loop filesystem offers: ~84% used, past the failed limit
DEGRADED_PCT, FAILED_PCT = 60.0, 75.0
_DELETE = re.compile(rb"^DELETE /(?:v[\d.]+/)?containers/([0-9a-f]{64})[?\s]")


class RemovalRefusingRelay:
    """A unix-socket relay in front of the private engine that answers the first DELETE of a chosen
    container with the engine's 500 (`refuse_once`); every other request passes. Requests are
    parsed only as far as needed: a chunked or upgraded (attach/exec) one switches its connection
    to a raw pipe."""

    def __init__(self, path: Path, upstream: Path) -> None:
        self.path = path
        self.upstream = upstream
        self.refuse: set[str] = set()
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(64)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def refuse_once(self, container_id: str) -> None:
        with self._lock:
            self.refuse.add(container_id)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(str(self.upstream))
            self._conns += [client, up]
            threading.Thread(target=self._requests, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client), daemon=True).start()

    def _refused(self, head: bytes) -> bool:
        m = _DELETE.match(head)
        with self._lock:
            if m is None or m.group(1).decode() not in self.refuse:
                return False
            self.refuse.discard(m.group(1).decode())
            self.refused.append(m.group(1).decode())
            return True

    def _requests(self, client: socket.socket, up: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(b":") for line in head.split(b"\r\n")[1:])}
                if b"upgrade" in headers or headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    up.sendall(buf)
                    self._pipe(client, up)
                    return
                length = int(headers.get(b"content-length", b"0"))
                while len(rest) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    rest += data
                request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                if self._refused(head):
                    body = b'{"message":"driver failed to remove root filesystem: device or resource busy"}'
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    up.sendall(request)
        except OSError:
            pass
        finally:
            self._shut(client, up)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(src, dst)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._server.close()
        for c in self._conns:
            c.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def private_engine(tmp_path: Path) -> Iterator[PrivateEngine]:
    engine = PrivateEngine(tmp_path)
    try:
        engine.start().images.pull(IMAGE)
        yield engine
    finally:
        engine.stop()


def _disk(node: dict[str, Any] | None) -> dict[str, Any] | None:
    return next((dict(c) for c in (node or {}).get("health") or [] if c["check"] == "disk"), None)


def _put_file(container: Any, name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo(name))
    container.put_archive("/", buf.getvalue())


def test_prune_frees_a_full_engine_disk(tmp_path: Path, private_engine: PrivateEngine) -> None:
    engine = private_engine.client
    assert engine is not None
    root = private_engine.root_dir()
    assert disk_used_pct(root) < DEGRADED_PCT - 10  # room to fill: the thresholds below mean something
    relay = RemovalRefusingRelay(tmp_path / "relay.sock", private_engine.socket)
    (tmp_path / "agent.toml").write_text(
        f'docker_root = "{root}"\n'
        f"health_disk_seconds = 1.0\nhealth_disk_degraded_pct = {DEGRADED_PCT}\nhealth_disk_failed_pct = {FAILED_PCT}\n"
        "image_gc_high_pct = 99.0\nimage_gc_low_pct = 98.0\ncontainer_retention_seconds = 3600.0\n")
    p = Platform(tmp_path, engine)
    try:
        # A re-order after a prune that found nothing yet (the filling task still held) comes soon.
        p.start_scheduler("--remediation-cooldown", "3", "--remediation-actions-per-hour", "20")
        p.start_agent("--config", str(tmp_path / "agent.toml"), "--docker-url", f"unix://{relay.path}",
                      "--no-network", "--no-imds", "--no-cpuset")
        assert p.agent is not None
        p.agent.wait_for(lambda: (c := _disk(p.node())) is not None and c["status"] == "ok" and c, 30,
                         "disk ok at the scheduler")
        job_id = p.submit(f"until [ -e /go ]; do sleep 0.1; done; dd if=/dev/zero of=/fill bs=1M count={FILL_MIB}",
                          resources={"cpu": 0.1, "memoryMiB": 64, "diskMiB": 100})
        p.agent.wait_for(lambda: p.started(job_id), 60, "the filling task started")
        container = wait_for(lambda: next(iter(p.containers()), None), 10, "the task's container")
        relay.refuse_once(container.id)  # its removal after the exit fails once: the container stays
        _put_file(container, "go")
        p.wait_job_finished(job_id, timeout=60)
        assert [t["reason"] for t in p.tasks(job_id)] == ["normal"]
        wait_for(lambda: relay.refused, 30, "the agent's removal of the finished task's container")
        failed = p.agent.wait_for(
            lambda: (n := p.node()) is not None and "health.disk" in n["taints"] and _disk(n),
            30, "disk failed (its taint) at the scheduler")
        assert failed["status"] == "failed" and failed["reason"] == "DiskPressure", failed
        assert str(root) in failed["message"] and failed["evidence"]["engine.usedPct"] >= FAILED_PCT, failed
        # The prune (maybe after one that ran while the task was still held) removes the container.
        pruned = p.agent.wait_for(
            lambda: [e for e in (p.node() or {}).get("remediationHistory", [])
                     if e["action"] == "prune" and e["outcome"] == "ok" and "removed 1 exited" in e["message"]],
            60, "a prune that removed the exited container")
        assert pruned[0]["check"] == "disk" and pruned[0]["reason"] == "DiskPressure", pruned
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(container.id)
        p.agent.wait_for(lambda: (c := _disk(p.node())) is not None and c["status"] == "ok", 30,
                         "disk ok again at the scheduler")
        node = p.node()
        assert node is not None and not node["taints"] and node["remediation"] is None, node
        ctl = subprocess.run([sys.executable, "-m", "titusctl.main", "-o", "json", "node", "history", p.node_id],
                             capture_output=True, text=True, timeout=60, env={**os.environ, **p.ctl_env()})
        assert ctl.returncode == 0, ctl.stderr
        history = json.loads(ctl.stdout)["history"]
        assert history[-1]["outcome"] == "ok" and "removed 1 exited container(s)" in history[-1]["message"], history
        assert {e["action"] for e in history} == {"prune"}, history
        assert {e["outcome"] for e in history} <= {"ordered", "ok"}, history  # no failure, no drain
        assert disk_used_pct(root) < DEGRADED_PCT
    finally:
        p.close()
        relay.close()
