"""End to end against moto (server mode on loopback) as STS/IAM, with the real botocore credential
chain in a subprocess (IMDSv2 only, and the ECS-style container provider)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imds.credentials import CredentialBroker
from imds.service import DEFAULT_IMDS_HOSTS, MetadataService
from imds.thread import ServiceThread

from .conftest import ECS_TOKEN, KEY, identity, listener, url

SCRIPT = """
import sys, boto3
session = boto3.session.Session(region_name="us-east-1")
creds = session.get_credentials()
print(creds.method if creds else "none")
print(session.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"])
"""


def moto_session() -> Any:
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")


def make_role(endpoint: str, name: str, path: str = "/") -> str:
    iam = moto_session().client("iam", endpoint_url=endpoint)
    try:
        return str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        policy = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        return str(iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=policy)["Role"]["Arn"])


def moto_broker(endpoint: str) -> CredentialBroker:
    return CredentialBroker(lambda: moto_session().client("sts", endpoint_url=endpoint))


def service(endpoint: str) -> MetadataService:
    return MetadataService(
        moto_broker(endpoint), KEY, imds_hosts=(*DEFAULT_IMDS_HOSTS, "127.0.0.1"), ecs_hosts=("127.0.0.1",)
    )


async def run_sdk(env: dict[str, str], moto: str, tmp: Path) -> tuple[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "AWS_CONFIG_FILE": str(tmp / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, moto, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    method, arn = out.decode().split()
    return method, arn


async def test_botocore_imdsv2_chain(moto_sts: str, tmp_path: Path) -> None:
    role = make_role(moto_sts, "sdk-role", "/apps/")
    svc = service(moto_sts)
    sock = listener()
    try:
        await svc.add_task(identity("task-sdk-1", role), [sock])
        method, arn = await run_sdk({
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{sock.getsockname()[1]}/",
            "AWS_EC2_METADATA_V1_DISABLED": "true",
        }, moto_sts, tmp_path)
        assert method == "iam-role"
        assert arn == "arn:aws:sts::123456789012:assumed-role/sdk-role/titus-task-sdk-1"
        snap = svc.snapshot()["task-sdk-1"]["credentials"]
        assert snap["remaining_s"] > 3500 and snap["last_error"] is None
    finally:
        await svc.close()


async def test_botocore_ecs_chain(moto_sts: str, tmp_path: Path) -> None:
    role = make_role(moto_sts, "ecs-role")
    svc = service(moto_sts)
    imds, ecs = listener(), listener()
    token_file = tmp_path / "token"
    token_file.write_text(ECS_TOKEN)
    try:
        await svc.add_task(identity("task-ecs-1", role), [imds], [ecs])
        method, arn = await run_sdk({
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{ecs.getsockname()[1]}/v2/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
            "AWS_EC2_METADATA_DISABLED": "true",
        }, moto_sts, tmp_path)
        assert method == "container-role"
        assert arn == "arn:aws:sts::123456789012:assumed-role/ecs-role/titus-task-ecs-1"
    finally:
        await svc.close()


async def test_two_tasks_two_roles_isolated(moto_sts: str) -> None:
    role_a, role_b = make_role(moto_sts, "role-a"), make_role(moto_sts, "role-b")
    with ServiceThread(service(moto_sts)) as thread:  # the agent's deployment shape
        sock_a, sock_b = listener(), listener()
        await thread.add_task(identity("task-a", role_a), [sock_a])
        await thread.add_task(identity("task-b", role_b), [sock_b])
        async with aiohttp.ClientSession() as http:
            async def token(sock: Any) -> str:
                async with http.put(url(sock, "/latest/api/token"),
                                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}) as r:
                    return await r.text()

            async def get(sock: Any, path: str, tok: str) -> tuple[int, str]:
                async with http.get(url(sock, path), headers={"X-aws-ec2-metadata-token": tok}) as r:
                    return r.status, await r.text()

            tok_a, tok_b = await token(sock_a), await token(sock_b)
            base = "/latest/meta-data/iam/security-credentials/"
            assert await get(sock_a, base, tok_a) == (200, "role-a")
            assert await get(sock_b, base, tok_b) == (200, "role-b")
            status_a, body_a = await get(sock_a, base + "role-a", tok_a)
            status_b, body_b = await get(sock_b, base + "role-b", tok_b)
            assert status_a == status_b == 200
            creds_a, creds_b = json.loads(body_a), json.loads(body_b)
            assert creds_a["AccessKeyId"] != creds_b["AccessKeyId"]
            assert (await get(sock_a, base + "role-b", tok_a))[0] == 404
            assert (await get(sock_b, base + "role-a", tok_b))[0] == 404
            assert (await get(sock_b, base + "role-b", tok_a))[0] == 401
            # the credentials really are each task's own role
            for creds, role, task in ((creds_a, "role-a", "task-a"), (creds_b, "role-b", "task-b")):
                sts = moto_session().client(
                    "sts", endpoint_url=moto_sts, aws_access_key_id=creds["AccessKeyId"],
                    aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["Token"])
                arn = (await asyncio.to_thread(sts.get_caller_identity))["Arn"]
                assert arn == f"arn:aws:sts::123456789012:assumed-role/{role}/titus-{task}"
            snap = await thread.snapshot_async()
            assert set(snap) == {"task-a", "task-b"} and thread.snapshot()["task-a"]["role_arn"] == role_a
            await thread.remove_task("task-a")
            assert sock_a.fileno() == -1
            assert (await get(sock_b, base + "role-b", tok_b))[0] == 200
    assert sock_b.fileno() == -1  # stop() closed everything


async def test_default_factory_against_moto(moto_sts: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    role = make_role(moto_sts, "factory-role")
    b = CredentialBroker(endpoint_url=moto_sts, region="us-east-1")
    b.add("x" * 80, role)
    creds = await b.get("x" * 80)
    assert creds.expiration > 0 and b.snapshot()["x" * 80]["session_name"] == ("titus-" + "x" * 58)
    await b.close()


async def test_sts_unreachable_then_503() -> None:
    b = CredentialBroker(lambda: moto_session().client("sts", endpoint_url="http://127.0.0.1:9"), wait_s=10)
    svc = MetadataService(b, KEY, imds_hosts=("127.0.0.1",))
    sock = listener()
    await svc.add_task(identity("down"), [sock])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.put(url(sock, "/latest/api/token"),
                                headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}) as r:
                tok = await r.text()
            async with http.get(url(sock, "/latest/meta-data/iam/security-credentials/app-role"),
                                headers={"X-aws-ec2-metadata-token": tok}) as r:
                assert r.status == 503
                assert json.loads(await r.text())["Code"] == "Connection"
    finally:
        await svc.close()
