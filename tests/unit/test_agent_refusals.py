"""Every way titus-agent refuses to start ends in one line on stderr (`titus-agent: cannot start: …`
or `titus-agent: bad configuration: …`) and the exit code of its kind (titus_common/errors.py),
never a traceback. The agent runs as a real subprocess against a fake engine on loopback (what
`docker info` answers decides the posture), so no dockerd is needed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from cpuset.synthetic import SyntheticSpec, write_sysfs
from titus_common.errors import (
    EXIT_BAD_CONFIG,
    EXIT_CANNOT_LISTEN,
    EXIT_HOST_REFUSED,
    EXIT_PROVIDER,
    EXIT_STATE_CORRUPT,
)
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState

REPO = Path(__file__).resolve().parents[2]


class FakeEngine(BaseHTTPRequestHandler):
    info: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            body: Any = "OK"
        elif path.endswith("/containers/json"):
            body = []
        elif path.endswith("/info"):
            body = self.info
        else:
            self.send_error(404)
            return
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


def engine_info(userns: bool) -> dict[str, Any]:
    options = ["name=seccomp,profile=builtin"] + (["name=userns"] if userns else [])
    return {"SecurityOptions": options, "CgroupVersion": "1", "ServerVersion": "20.10.24",
            "DockerRootDir": "/var/lib/docker", "Runtimes": {"runc": {}, "titus": {}}}


@pytest.fixture
def engine() -> Iterator[tuple[str, type[FakeEngine]]]:
    handler = type("Engine", (FakeEngine,), {"info": engine_info(userns=False)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_agent(tmp_path: Path, engine_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent.main", "--node-id", "n1", "--listen", f"127.0.0.1:{free_port()}",
            "--state-dir", str(tmp_path / "state"), "--scheduler", "http://127.0.0.1:1",
            "--docker-url", engine_url, *args]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO, env=env)


def assert_refused(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("titus-agent: ")]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def record(task_id: str, cpus: str) -> TaskCheckpoint:
    spec = ContainerSpec(image="busybox", resources=Resources(cpu=1.0), cpu_class="static")  # type: ignore[arg-type]
    rec = TaskCheckpoint(
        assignment=TaskAssignment(task_id=task_id, job_id="j1", index=0, container=spec, accepted_at=1.0),
        state=TaskState.START_INITIATED,
    )
    rec.resources["cpuset"] = {"class": "static", "request": 1, "cpus": cpus}
    return rec


NO_HOST_RESOURCES = ("--no-cpuset", "--no-network", "--allow-no-userns")


def test_corrupt_task_checkpoint(tmp_path: Path, engine: tuple[str, Any]) -> None:
    (tmp_path / "state" / "tasks").mkdir(parents=True)
    (tmp_path / "state" / "tasks" / "t1.json").write_text("{not json")
    proc = run_agent(tmp_path, engine[0], *NO_HOST_RESOURCES)
    assert_refused(proc, EXIT_STATE_CORRUPT, "cannot start:", "t1.json cannot be read")


def test_cpu_grants_that_do_not_fit(tmp_path: Path, engine: tuple[str, Any]) -> None:
    sysfs = write_sysfs(SyntheticSpec(name="four", sockets=1, l3_per_socket=1, cores_per_l3=4, threads=1),
                        tmp_path / "sys")
    store = CheckpointStore(tmp_path / "state")
    store.save(record("a", "2"))
    store.save(record("b", "2"))
    proc = run_agent(tmp_path, engine[0], "--no-network", "--allow-no-userns", "--sysfs-root", str(sysfs),
                     "--reserved-cpus", "")
    assert_refused(proc, EXIT_STATE_CORRUPT, "cannot start:", "task b's checkpoint claims CPUs 2")


def test_corrupt_ipam_checkpoint(tmp_path: Path, engine: tuple[str, Any]) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ipam.json").write_text("{garbage")
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--allow-no-userns", "--no-imds",
                     "--network-local-vpc-state", str(tmp_path / "vpc.json"))
    assert_refused(proc, EXIT_STATE_CORRUPT, "cannot start:", "ipam.json cannot be read")


def test_provider_error_at_restore(tmp_path: Path, engine: tuple[str, Any]) -> None:
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--allow-no-userns", "--no-imds",
                     "--network-provider", "aws", "--aws-endpoint-url", f"http://127.0.0.1:{free_port()}",
                     "--aws-subnet-id", "subnet-12345678", "--aws-instance-id", "i-0123456789abcdef0",
                     "--aws-instance-type", "m5.large", "--aws-region", "us-east-1",
                     "--network-default-security-group", "sg-0123456789abcdef0")
    assert_refused(proc, EXIT_PROVIDER, "cannot start:", "failed after")


def test_provider_error_resolving_the_default_security_group(tmp_path: Path, engine: tuple[str, Any]) -> None:
    # No default group configured: it is asked of EC2 (the VPC's `default`) before anything starts.
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--allow-no-userns", "--no-imds",
                     "--network-provider", "aws", "--aws-endpoint-url", f"http://127.0.0.1:{free_port()}",
                     "--aws-subnet-id", "subnet-12345678", "--aws-instance-id", "i-0123456789abcdef0",
                     "--aws-instance-type", "m5.large", "--aws-region", "us-east-1")
    assert_refused(proc, EXIT_PROVIDER, "cannot start:", "EC2 DescribeSecurityGroups")


def test_imds_identity_unreachable(tmp_path: Path, engine: tuple[str, Any]) -> None:
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--allow-no-userns", "--no-imds",
                     "--network-provider", "aws", "--aws-imds-identity",
                     "--aws-imds-endpoint", f"http://127.0.0.1:{free_port()}",
                     "--aws-endpoint-url", f"http://127.0.0.1:{free_port()}")
    assert_refused(proc, EXIT_PROVIDER, "cannot start:", "IMDS token (IMDSv2)", "unreachable")


def test_engine_without_userns_remap(tmp_path: Path, engine: tuple[str, Any]) -> None:
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--no-network")
    assert_refused(proc, EXIT_HOST_REFUSED, "cannot start:", "--userns-remap", "--allow-no-userns")


def test_bad_token_key(tmp_path: Path, engine: tuple[str, Any]) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "imds-token.key").write_bytes(b"short")
    proc = run_agent(tmp_path, engine[0], "--no-cpuset", "--allow-no-userns")
    assert_refused(proc, EXIT_BAD_CONFIG, "cannot start:", "metadata proxy:", "imds-token.key")


def test_bad_config_value(tmp_path: Path, engine: tuple[str, Any]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('sync_wait_seconds = "5"\n')
    proc = run_agent(tmp_path, engine[0], "--config", str(config))
    assert_refused(proc, EXIT_BAD_CONFIG, "bad configuration:", "sync_wait_seconds")


def test_cannot_listen(tmp_path: Path, engine: tuple[str, Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_agent(tmp_path, engine[0], *NO_HOST_RESOURCES, "--listen", f"127.0.0.1:{port}")
    assert_refused(proc, EXIT_CANNOT_LISTEN, "cannot start:", f"127.0.0.1:{port}")
