"""Workload identity end to end (docs/identity.md), real scheduler, agent and engine: a task's
certificate chains to the cell CA and names it, rotates inside the running container without a
restart, is removed at teardown, and is out of reach of a second task (its files and its metadata
endpoint) and of an unprivileged process on the host."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from cryptography import x509

from tests.harness import Platform, wait_for
from tests.integration.test_imds import container_of, http_in_container
from titus_common.workload import verify_cert, verify_jwt

pytestmark = pytest.mark.integration

MOUNT = "/run/titus/identity"
JWT = "/titus/v1/identity/jwt"


@pytest.fixture
def cell(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler("--cell", "itest", "--workload-cert-ttl", "30")  # rotated with < 10 s left
        p.start_agent()
        yield p
    finally:
        p.close()


def ca(p: Platform) -> x509.Certificate:
    return x509.load_pem_x509_certificate((p.pki / "ca.crt").read_bytes())


def cat(box: Any, path: str, user: str = "") -> bytes:
    code, out = box.exec_run(["cat", path], user=user)
    assert code == 0, out
    return bytes(out)


def cert_in(box: Any) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cat(box, f"{MOUNT}/cert.pem"))


def jwt_in(box: Any, audience: str) -> tuple[int, str]:
    status, token = http_in_container(box, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    return http_in_container(box, "GET", f"{JWT}?audience={audience}", {"X-aws-ec2-metadata-token": token})


def test_the_certificate_names_the_task_and_rotates_in_place(cell: Platform) -> None:
    p = cell
    job = p.submit("sleep 3600", service=True, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job), 60, "task Started")
    box = container_of(p, task["id"])
    expected = f"spiffe://itest/app/itest/job/{job}/task/{task['id']}"
    assert task["workloadIdentity"] == expected and p.job(job)["workloadIdentity"] == expected.rsplit("/task/", 1)[0]
    env = dict(e.split("=", 1) for e in box.attrs["Config"]["Env"])
    assert env["TITUS_IDENTITY_CERT"] == f"{MOUNT}/cert.pem" and env["TITUS_IDENTITY_SPIFFE_ID"] == expected
    first = cert_in(box)
    assert verify_cert(first, ca(p), dt.datetime.now(dt.UTC)) == expected
    assert x509.load_pem_x509_certificate(cat(box, f"{MOUNT}/bundle.pem")) == ca(p)
    # readable by a non-root user of the task; read-only for everyone in it
    assert cat(box, f"{MOUNT}/key.pem", user="1000").startswith(b"-----BEGIN PRIVATE KEY-----")
    code, _ = box.exec_run(["sh", "-c", f"echo x > {MOUNT}/cert.pem"])
    assert code != 0
    started_at, pid = box.attrs["State"]["StartedAt"], box.attrs["State"]["Pid"]

    rotated = wait_for(lambda: (c := cert_in(box)).serial_number != first.serial_number and c, 60, "rotation")
    assert verify_cert(rotated, ca(p), dt.datetime.now(dt.UTC)) == expected
    # the same container, the same process: nothing restarted
    box.reload()
    assert (box.attrs["State"]["StartedAt"], box.attrs["State"]["Pid"], box.attrs["RestartCount"]) == \
           (started_at, pid, 0)
    assert [t["state"] for t in p.tasks(job)] == ["Started"]

    # after an agent kill -9 and restart, the re-adopted task keeps being rotated (state is in files)
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    p.start_agent()
    again = wait_for(lambda: (c := cert_in(box)).serial_number != rotated.serial_number and c, 60,
                     "rotation after restart")
    assert verify_cert(again, ca(p), dt.datetime.now(dt.UTC)) == expected
    box.reload()
    assert (box.attrs["State"]["StartedAt"], box.attrs["State"]["Pid"]) == (started_at, pid)

    # torn down with the task
    host_dir = p.tmp / "agent" / "identity" / task["id"]
    assert host_dir.is_dir()
    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job)
    wait_for(lambda: not host_dir.exists(), 30, "identity directory removed")


def test_a_second_task_cannot_reach_the_first_ones_identity(cell: Platform) -> None:
    p = cell
    job_a = p.submit("sleep 3600", service=True, killGraceSeconds=1)
    job_b = p.submit("sleep 3600", service=True, killGraceSeconds=1)
    wait_for(lambda: p.started(job_a) and p.started(job_b), 60, "both Started")
    (a,), (b,) = p.started(job_a), p.started(job_b)
    box_a, box_b = container_of(p, a["id"]), container_of(p, b["id"])
    key_a = cat(box_a, f"{MOUNT}/key.pem")

    # files: B's mount holds B's own identity only, and A's host directory is not in B's filesystem
    assert verify_cert(cert_in(box_b), ca(p), dt.datetime.now(dt.UTC)) == b["workloadIdentity"]
    assert cat(box_b, f"{MOUNT}/key.pem") != key_a
    host_dir_a = p.tmp / "agent" / "identity" / a["id"]
    code, _ = box_b.exec_run(["test", "-e", str(host_dir_a)])
    assert code != 0
    code, out = box_b.exec_run(["sh", "-c", "find / \\( -path /proc -o -path /sys \\) -prune -o -name '*.pem' -print"])
    found = out.decode().split()
    assert f"{MOUNT}/key.pem" in found and all(line.startswith(f"{MOUNT}/") for line in found), out

    # metadata: each task's endpoint mints only its own JWT, audience-bound
    status, token_b = jwt_in(box_b, "payments")
    assert status == 200
    assert verify_jwt(token_b, ca(p), "payments", dt.datetime.now(dt.UTC).timestamp())["sub"] == b["workloadIdentity"]
    status, token_a = jwt_in(box_a, "payments")
    assert verify_jwt(token_a, ca(p), "payments", dt.datetime.now(dt.UTC).timestamp())["sub"] == a["workloadIdentity"]
    status, token = http_in_container(box_b, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert http_in_container(box_b, "GET", JWT, {"X-aws-ec2-metadata-token": token})[0] == 400  # no audience

    # the host: an unprivileged process cannot read A's key either (the identity root is 0700 root)
    denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                             str(host_dir_a / "key.pem")], capture_output=True, text=True)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
