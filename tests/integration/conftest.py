"""Fixtures for the integration tests: a real platform per test (tests/harness.py), and a socket relay
to play "the Docker engine is down"."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.harness import Platform

DOCKER_SOCK = "/var/run/docker.sock"


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    client = docker.from_env()
    try:
        client.ping()
    except Exception as e:  # the suite needs the engine: say how to get one, do not skip silently
        pytest.fail(f"Docker engine not reachable ({e}); `make test` starts dockerd and the registry")
    try:
        requests.get("http://127.0.0.1:5000/v2/", timeout=2).raise_for_status()
    except requests.RequestException as e:
        pytest.fail(f"local registry not reachable on 127.0.0.1:5000 ({e}); run scripts/setup-host.sh")
    _engine_was_up.append(True)
    return client


_engine_was_up: list[bool] = []
DOCKERD_LOG = Path("/var/log/titus/dockerd.log")  # scripts/setup-host.sh


@pytest.fixture(autouse=True)
def engine_still_answers() -> None:
    """An engine that answered earlier in the run and no longer does ends the run at once, with its
    log: every later test would fail on it, each after its own timeouts."""
    if not _engine_was_up:
        return
    client = docker.from_env(timeout=30)
    try:
        client.ping()
    except Exception as e:
        tail = "\n".join(DOCKERD_LOG.read_text(errors="replace").splitlines()[-40:]) if DOCKERD_LOG.exists() else ""
        pytest.exit(f"the Docker engine stopped answering ({e}); dockerd's last log lines:\n{tail}", returncode=3)
    finally:
        client.close()


class SocketProxy:
    """A unix-socket relay in front of dockerd that a test can cut, to play 'Docker is down'."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self.path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(self.path))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(DOCKER_SOCK)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns.clear()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def platform(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent()
        yield p
    finally:
        p.close()


@pytest.fixture
def docker_proxy(tmp_path: Path) -> Iterator[SocketProxy]:
    proxy = SocketProxy(tmp_path / "docker-proxy.sock")
    yield proxy
    proxy.down()
