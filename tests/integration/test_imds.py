"""The metadata/credential proxy end to end (agent/steps/imds.py, docs/imds.md): real agent and
containers, moto in server mode as STS/IAM. The real botocore default credential chain, run in a
task's network namespace, gets the task's own assumed role; two tasks never see each other's; IMDSv1
without a token, user-data and other roles are refused from inside the container; an agent kill -9
keeps serving (a token issued before still works); teardown leaves no metadata link or token file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import docker
import pytest

from agent.host.network import netns_dir
from netns.metadata import MetadataNetwork, meta_ifname
from netns.wiring import netns_name
from tests.harness import Platform, wait_for
from tests.moto_server import moto_server

pytestmark = pytest.mark.integration

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})

# Runs in a fresh interpreter: the credential chain inside the task's namespace, then the STS call to
# moto from the host's namespace (moto listens on the host's loopback, which the task cannot reach).
CHAIN = r"""
import json, os, sys
from netns.wiring import enter_netns_fd
task_ns, moto = sys.argv[1], sys.argv[2]
host = os.open("/proc/self/ns/net", os.O_RDONLY)
enter_netns_fd(os.open(task_ns, os.O_RDONLY))
import botocore.session
creds = botocore.session.get_session().get_credentials()
if creds is None:
    print(json.dumps({"error": "no credentials"})); sys.exit(0)
frozen = creds.get_frozen_credentials()
enter_netns_fd(host)
import boto3
sts = boto3.client("sts", endpoint_url=moto, region_name="us-east-1", aws_access_key_id=frozen.access_key,
                   aws_secret_access_key=frozen.secret_key, aws_session_token=frozen.token)
print(json.dumps({"method": creds.method, "key": frozen.access_key,
                  "arn": sts.get_caller_identity()["Arn"]}))
"""


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


def make_role(moto: str, name: str) -> str:
    iam = boto3.client("iam", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"])


@pytest.fixture
def imds_platform(tmp_path: Path, engine: docker.DockerClient, moto: str) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    p.agent_env = AWS_ENV
    try:
        p.start_scheduler()
        p.start_agent("--aws-sts-endpoint-url", moto)
        yield p
    finally:
        p.close()


def sandbox_netns(p: Platform, task_id: str) -> str:
    """The task's prepared network namespace (netns.prepared)."""
    return str(netns_dir(p.node_id) / netns_name(task_id))


def chain_in_task(p: Platform, task_id: str, moto: str, tmp: Path, **env: str) -> dict[str, Any]:
    """The real botocore credential chain, in the task's namespace, with no other credentials around."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "AWS_EC2_METADATA_V1_DISABLED": "true",
             "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
             "PYTHONPATH": str(Path.cwd()), **env}
    done = subprocess.run([sys.executable, "-c", CHAIN, sandbox_netns(p, task_id), moto], env=clean,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def http_in_container(box: Any, method: str, path: str, headers: dict[str, str] | None = None,
                      address: str = "169.254.169.254") -> tuple[int, str]:
    """A raw HTTP/1.1 request from inside the task's container, through busybox nc (busybox wget
    cannot PUT, and crashes on some answers)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
    request = "\\r\\n".join(lines)
    # busybox nc stops reading at the end of its input: hold the input open a moment for the answer.
    _, out = box.exec_run(["sh", "-c", f"(printf '{request}'; sleep 1) | nc -w 5 {address} 80"])
    text = out.decode(errors="replace")
    match = re.match(r"HTTP/1\.1 (\d{3})", text)
    assert match, f"no HTTP answer from {address}: {text!r}"
    return int(match.group(1)), text.split("\r\n\r\n", 1)[-1]


def container_of(p: Platform, task_id: str) -> Any:
    return next(c for c in p.containers() if c.labels.get("titus.task_id") == task_id)


def test_each_task_gets_its_own_role_and_nothing_else(imds_platform: Platform, moto: str, tmp_path: Path) -> None:
    p = imds_platform
    arn_a, arn_b = make_role(moto, "app-a"), make_role(moto, "app-b")
    job_a = p.submit("sleep 600", service=True, iamRole=arn_a, killGraceSeconds=1)
    job_b = p.submit("sleep 600", service=True, iamRole="app-b", killGraceSeconds=1)  # a bare name
    wait_for(lambda: p.started(job_a) and p.started(job_b), 60, "both Started")
    (task_a,), (task_b,) = p.started(job_a), p.started(job_b)
    a, b = task_a["id"], task_b["id"]

    # The real botocore chain (IMDSv2) in each task's namespace: each gets its own assumed role.
    got_a = chain_in_task(p, a, moto, tmp_path)
    got_b = chain_in_task(p, b, moto, tmp_path)
    assert got_a["method"] == "iam-role" and got_b["method"] == "iam-role"
    assert got_a["arn"].endswith(f":assumed-role/app-a/titus-{a}"), got_a
    assert got_b["arn"].endswith(f":assumed-role/app-b/titus-{b}"), got_b
    assert got_a["key"] != got_b["key"]
    # The ECS-style endpoint, for SDKs configured that way: the same role, the bearer file required.
    token_file = p.tmp / "tokens" / f"{a}.token"
    ecs = chain_in_task(p, a, moto, tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.2/v2/credentials",
                        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file))
    assert ecs["method"] == "container-role" and ecs["arn"].endswith(f":assumed-role/app-a/titus-{a}"), ecs

    # From inside the container itself (busybox, its own user): IMDSv2 rules and the deny list.
    box = container_of(p, a)
    status, token = http_in_container(box, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "600"})
    assert status == 200 and len(token) > 20
    auth = {"X-aws-ec2-metadata-token": token}
    assert http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/")[0] == 401  # v1 refused
    assert http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/", auth) == (200, "app-a")
    status, body = http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/app-a", auth)
    assert status == 200 and json.loads(body)["Code"] == "Success"
    assert http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/app-b", auth)[0] == 404
    assert http_in_container(box, "GET", "/latest/user-data", auth)[0] == 404  # denied = unknown (docs/imds.md)
    assert http_in_container(
        box, "GET", "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", auth)[0] == 404
    assert http_in_container(box, "PUT", "/latest/api/token",
                             {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"})[0] == 403
    # Task A's token means nothing on task B's endpoint.
    assert http_in_container(container_of(p, b), "GET", "/latest/meta-data/instance-id", auth)[0] == 401
    # What the task is told: its own address as local-ipv4, the token file and the region.
    ipv4 = http_in_container(box, "GET", "/latest/meta-data/local-ipv4", auth)[1]
    assert ipv4.startswith("100.64.")
    env = box.attrs["Config"]["Env"]
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/titus/aws-container-token" in env and "AWS_REGION=us-east-1" in env
    code, out = box.exec_run(["cat", "/run/titus/aws-container-token"])
    assert code == 0 and out.decode() == token_file.read_text()

    # kill -9 of the agent: after the restart the same token still works and credentials are served.
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    p.start_agent("--aws-sts-endpoint-url", moto)
    wait_for(lambda: "titus_agent_adopted_total 2.0" in p.agent_metrics(), 30, "2 adopted")
    wait_for(lambda: http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/app-a", auth)[0] == 200,
             20, "credentials served after the restart")
    assert chain_in_task(p, a, moto, tmp_path)["arn"].endswith(f":assumed-role/app-a/titus-{a}")

    # Teardown: no metadata link, no token file.
    for job in (job_a, job_b):
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    for job in (job_a, job_b):
        p.wait_job_finished(job, timeout=30)
    links = MetadataNetwork(owner=p.node_id).links()
    assert meta_ifname(a) not in links and meta_ifname(b) not in links
    assert not token_file.exists()


def test_a_task_without_a_role_gets_metadata_but_no_credentials(imds_platform: Platform) -> None:
    p = imds_platform
    job = p.submit("sleep 600", service=True, killGraceSeconds=1)
    wait_for(lambda: p.started(job), 60, "Started")
    (task,) = p.started(job)
    box = container_of(p, task["id"])
    status, token = http_in_container(box, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    auth = {"X-aws-ec2-metadata-token": token}
    assert http_in_container(box, "GET", "/latest/meta-data/instance-id", auth) == (200, task["id"])
    assert http_in_container(box, "GET", "/latest/meta-data/iam/security-credentials/", auth)[0] == 404
    # No role, no ECS endpoint: nothing listens there for this task.
    code, _ = box.exec_run(["sh", "-c", "echo | nc -w 2 169.254.170.2 80"])
    assert code != 0
    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=30)
