"""HTTP behaviour of the IMDS and ECS endpoints on real loopback sockets, with a fake STS and clock."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest

from imds.service import DEFAULT_IMDS_HOSTS, MetadataService
from imds.credentials import CredentialBroker

from .conftest import ACCOUNT, ECS_TOKEN, KEY, Env, identity, listener, role_arn, settle, url

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
TS_FMT = "%Y-%m-%dT%H:%M:%SZ"


async def raw(sock: socket.socket, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def test_token_put(env: Env) -> None:
    imds, _ = await env.add(identity("t1"))
    async with env.http.put(url(imds, "/latest/api/token"), headers={TTL: "300"}) as r:
        assert r.status == 200
        assert r.headers[TTL] == "300"
        tok = await r.text()
    assert (await env.get("t1", "/latest/meta-data/instance-id", tok)) == (200, "i-0123456789abcdef0")


@pytest.mark.parametrize("headers,code", [
    ({}, 400),
    ({TTL: ""}, 400),
    ({TTL: "0"}, 400),
    ({TTL: "21601"}, 400),
    ({TTL: "-5"}, 400),
    ({TTL: "ten"}, 400),
    ({TTL: "60", "X-Forwarded-For": "10.0.0.1"}, 403),
    ({TTL: "60", "Host": "evil.example.com"}, 403),
    ({TTL: "60", "Host": "169.254.169.254:8080"}, 403),
    ({TTL: "21600"}, 200),
    ({TTL: "1"}, 200),
    ({TTL: "60", "Host": "169.254.169.254"}, 200),
    ({TTL: "60", "Host": "169.254.169.254:80"}, 200),
    ({TTL: "60", "Host": "[fd00:ec2::254]"}, 200),
    ({TTL: "60", "Host": "[FD00:EC2::254]:80"}, 200),
])
async def test_token_put_errors(env: Env, headers: dict[str, str], code: int) -> None:
    imds, _ = await env.add(identity("t1"))
    async with env.http.put(url(imds, "/latest/api/token"), headers=headers) as r:
        assert r.status == code


@pytest.mark.parametrize("method,path,code", [
    ("GET", "/latest/api/token", 405),
    ("POST", "/latest/api/token", 405),
    ("DELETE", "/latest/api/token", 405),
    ("POST", "/latest/meta-data/instance-id", 405),
    ("PUT", "/latest/meta-data/instance-id", 405),
    ("HEAD", "/latest/meta-data/instance-id", 405),
    ("PATCH", "/latest/meta-data/", 405),
])
async def test_methods(env: Env, method: str, path: str, code: int) -> None:
    imds, _ = await env.add(identity("t1"))
    tok = await env.token("t1")
    async with env.http.request(method, url(imds, path), headers={TOKEN: tok, TTL: "60"}) as r:
        assert r.status == code


async def test_missing_host_header(env: Env) -> None:
    imds, _ = await env.add(identity("t1"))
    assert await raw(imds, b"PUT /latest/api/token HTTP/1.0\r\n" + TTL.encode() + b": 60\r\n\r\n") == 403
    host = f"Host: 127.0.0.1:{imds.getsockname()[1]}\r\n".encode()
    assert await raw(imds, b"PUT /latest/api/token HTTP/1.0\r\n" + host + TTL.encode() + b": 60\r\n\r\n") == 200


async def test_get_requires_token(env: Env) -> None:
    await env.add(identity("t1"))
    path = "/latest/meta-data/iam/security-credentials/app-role"
    assert (await env.get("t1", path))[0] == 401
    assert (await env.get("t1", path, "garbage"))[0] == 401
    assert (await env.get("t1", "/latest/user-data"))[0] == 401  # no path oracle without a token
    tok = await env.token("t1", ttl="10")
    assert (await env.get("t1", path, tok))[0] == 200
    env.clock.advance(11)
    assert (await env.get("t1", path, tok))[0] == 401


async def test_cross_task_token_rejected(env: Env) -> None:
    await env.add(identity("task-a", "role-a"))
    await env.add(identity("task-b", "role-b"))
    tok_a = await env.token("task-a")
    assert (await env.get("task-a", "/latest/meta-data/instance-id", tok_a))[0] == 200
    assert (await env.get("task-b", "/latest/meta-data/instance-id", tok_a))[0] == 401
    assert (await env.get("task-b", "/latest/meta-data/iam/security-credentials/role-a", tok_a))[0] == 401
    tok_b = await env.token("task-b")
    # task B cannot read task A's role even with its own valid token
    assert (await env.get("task-b", "/latest/meta-data/iam/security-credentials/role-a", tok_b))[0] == 404
    status, body = await env.get("task-b", "/latest/meta-data/iam/security-credentials/role-b", tok_b)
    assert status == 200 and "role-b" in json.loads(body)["SecretAccessKey"]
    status, body = await env.get("task-a", "/latest/meta-data/iam/security-credentials/role-a", tok_a)
    assert status == 200 and "role-a" in json.loads(body)["SecretAccessKey"]


async def test_v1_fallback(env: Env) -> None:
    await env.add(identity("v1", v1_allowed=True))
    assert await env.get("v1", "/latest/meta-data/local-ipv4") == (200, "10.1.2.3")
    assert (await env.get("v1", "/latest/meta-data/iam/security-credentials/app-role"))[0] == 200
    assert (await env.get("v1", "/latest/meta-data/local-ipv4", "bogus"))[0] == 401  # supplied → validated
    tok = await env.token("v1")
    assert (await env.get("v1", "/latest/meta-data/local-ipv4", tok))[0] == 200
    # v1 off by default
    await env.add(identity("v2"))
    assert (await env.get("v2", "/latest/meta-data/local-ipv4"))[0] == 401


ALLOWED = {
    "/latest/": "dynamic\nmeta-data",
    "/latest/meta-data/": "hostname\niam/\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nplacement/",
    "/latest/meta-data": None,
    "/latest/meta-data/iam/": "info\nsecurity-credentials/",
    "/latest/meta-data/iam/security-credentials/": "app-role",
    "/latest/meta-data/iam/security-credentials": "app-role",
    "/latest/meta-data/instance-id": "i-0123456789abcdef0",
    "/latest/meta-data/instance-type": "m5.large",
    "/latest/meta-data/local-ipv4": "10.1.2.3",
    "/latest/meta-data/mac": "0e:11:22:33:44:55",
    "/latest/meta-data/hostname": "ip-10-1-2-3.ec2.internal",
    "/latest/meta-data/local-hostname": "ip-10-1-2-3.ec2.internal",
    "/latest/meta-data/placement/": "availability-zone\nregion",
    "/latest/meta-data/placement/availability-zone": "us-east-1a",
    "/latest/meta-data/placement/region": "us-east-1",
    "/latest/dynamic/instance-identity/": "document",
    "/latest/meta-data/instance-id?x=1": "i-0123456789abcdef0",
}

DENIED = [
    "/latest/user-data",
    "/latest/user-data/",
    "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
    "/latest/meta-data/identity-credentials/ec2/info",
    "/latest/meta-data/public-keys/",
    "/latest/meta-data/public-keys/0/openssh-key",
    "/latest/meta-data/ami-id",
    "/latest/meta-data/tags/instance",
    "/latest/meta-data/network/interfaces/macs/",
    "/latest/dynamic/instance-identity/pkcs7",
    "/latest/dynamic/instance-identity/signature",
    "/latest/dynamic/instance-identity/rsa2048",
    "/latest/meta-data/iam/security-credentials/host-role",
    "/latest/meta-data/iam/security-credentials/app-role/",
    "/latest/meta-data/iam/security-credentials/APP-ROLE",
    "/latest/meta-data/iam/security-credentials/app-role/../host-role",
    "/latest/meta-data/iam/security-credentials/%2e%2e/host-role",
    "/latest/meta-data/public-ipv4",
    "/latest/meta-data/nonexistent",
    "/2021-01-03/meta-data/iam/security-credentials/app-role",
    "/",
    "/latest/api/token/",
]


async def test_allowed_paths(env: Env) -> None:
    await env.add(identity("t1"))
    tok = await env.token("t1")
    for path, body in ALLOWED.items():
        status, text = await env.get("t1", path, tok)
        assert status == 200, path
        if body is not None:
            assert text == body, path


async def test_denied_paths(env: Env) -> None:
    await env.add(identity("t1"))
    tok = await env.token("t1")
    for path in DENIED:
        status, _ = await env.get("t1", path, tok)
        assert status == 404, path
    assert env.metric("titus_imds_requests_total", {"endpoint": "imds", "path_class": "denied", "code": "404"}) >= 12


async def test_credentials_document(env: Env) -> None:
    await env.add(identity("t1"))
    tok = await env.token("t1")
    status, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    assert status == 200
    doc = json.loads(body)
    assert set(doc) == {"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
    exp = time.mktime(time.strptime(doc["Expiration"], TS_FMT)) - time.timezone
    assert abs(exp - (env.clock.now + 3600)) <= 1
    time.strptime(doc["LastUpdated"], TS_FMT)
    assert env.sts.calls == [(role_arn("app-role"), "titus-t1", 3600)]


async def test_iam_info_and_identity_document(env: Env) -> None:
    await env.add(identity("t1", role_arn("app-role", "/team/")))
    tok = await env.token("t1")
    status, body = await env.get("t1", "/latest/meta-data/iam/info", tok)
    info = json.loads(body)
    assert status == 200 and info["Code"] == "Success"
    assert info["InstanceProfileArn"] == f"arn:aws:iam::{ACCOUNT}:instance-profile/team/app-role"
    assert info["InstanceProfileId"].startswith("AIPA") and len(info["InstanceProfileId"]) == 21
    status, body = await env.get("t1", "/latest/dynamic/instance-identity/document", tok)
    doc = json.loads(body)
    assert status == 200
    assert doc["region"] == "us-east-1" and doc["availabilityZone"] == "us-east-1a"
    assert doc["accountId"] == ACCOUNT and doc["instanceId"] == "i-0123456789abcdef0"
    assert doc["privateIp"] == "10.1.2.3" and doc["instanceType"] == "m5.large"


async def test_task_without_role(env: Env) -> None:
    await env.add(identity("norole", role=None))
    tok = await env.token("norole")
    for path in ("/latest/meta-data/iam/security-credentials/", "/latest/meta-data/iam/info",
                 "/latest/meta-data/iam/", "/latest/meta-data/iam/security-credentials/app-role"):
        assert (await env.get("norole", path, tok))[0] == 404, path
    status, listing = await env.get("norole", "/latest/meta-data/", tok)
    assert status == 200 and "iam/" not in listing
    assert (await env.ecs("norole"))[0] == 404
    assert env.sts.calls == []


async def test_ecs_endpoint(env: Env) -> None:
    await env.add(identity("t1"))
    assert (await env.ecs("t1", auth=None))[0] == 401
    assert (await env.ecs("t1", auth="wrong"))[0] == 403
    assert (await env.ecs("t1", auth=ECS_TOKEN + "x"))[0] == 403
    assert (await env.ecs("t1", path="/v2/credentials/other"))[0] == 404
    status, body = await env.ecs("t1")
    assert status == 200
    doc = json.loads(body)
    assert {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "RoleArn"} <= set(doc)
    assert doc["RoleArn"] == role_arn("app-role")
    _, ecs = env.sockets["t1"]
    async with env.http.get(url(ecs, "/v2/credentials"), headers={"Authorization": ECS_TOKEN, "Host": "evil"}) as r:
        assert r.status == 403
    async with env.http.post(url(ecs, "/v2/credentials"), headers={"Authorization": ECS_TOKEN}) as r:
        assert r.status == 405
    # the ECS socket does not speak IMDS, the IMDS socket does not speak ECS
    async with env.http.get(url(ecs, "/latest/meta-data/instance-id"), headers={"Authorization": ECS_TOKEN}) as r:
        assert r.status == 404
    imds, _ = env.sockets["t1"]
    async with env.http.get(url(imds, "/v2/credentials"), headers={"Authorization": ECS_TOKEN}) as r:
        assert r.status == 401


async def test_remove_task(env: Env) -> None:
    imds, ecs = await env.add(identity("t1"))
    tok = await env.token("t1")
    assert "t1" in env.service.snapshot()
    await env.service.remove_task("t1")
    await env.service.remove_task("t1")  # idempotent
    await env.service.remove_task("never-added")
    assert imds.fileno() == -1 and ecs.fileno() == -1
    assert "t1" not in env.service.snapshot()
    assert env.broker.peek("t1") is None
    with pytest.raises(OSError):
        await env.get("t1", "/latest/meta-data/instance-id", tok)
    assert env.metric("titus_imds_tasks") == 0


async def test_add_task_validation(env: Env) -> None:
    for bad in ("arn:aws:iam::12345:role/x", "arn:aws:iam::123456789012:user/x", "role-name",
                "arn:aws:iam::123456789012:role/", "arn:aws:iam::123456789012:role/a b",
                "arn:aws:iam::123456789012:role/" + "x" * 65):
        sock = listener()
        with pytest.raises(ValueError, match="role ARN"):
            await env.service.add_task(identity("bad", role_arn=bad), [sock])
        assert sock.fileno() == -1  # ownership passed, closed on failure
    sock = listener()
    with pytest.raises(ValueError, match="ecs_token"):
        await env.service.add_task(identity("bad", ecs_token="short"), [], [sock])
    await env.add(identity("dup"))
    sock = listener()
    with pytest.raises(ValueError, match="already"):
        await env.service.add_task(identity("dup"), [sock])
    assert env.sts.calls == [(role_arn("app-role"), "titus-dup", 3600)]


async def test_add_task_does_not_block_on_sts(env: Env) -> None:
    import threading

    env.sts.gate = threading.Event()
    try:
        start = time.monotonic()
        imds, _ = await env.add(identity("slow"), wait=False)
        assert time.monotonic() - start < 0.5
        tok = await env.token("slow")  # metadata other than credentials is served meanwhile
        assert (await env.get("slow", "/latest/meta-data/instance-id", tok))[0] == 200
        getter = asyncio.ensure_future(env.get("slow", "/latest/meta-data/iam/security-credentials/app-role", tok))
        await asyncio.sleep(0.05)
        assert not getter.done()
    finally:
        env.sts.gate.set()
    assert (await getter)[0] == 200
    assert len(env.sts.calls) == 1


async def test_no_secrets_in_logs_snapshot_metrics(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import generate_latest

    caplog.set_level(logging.DEBUG, logger="titus.imds")
    await env.add(identity("t1"))
    tok = await env.token("t1")
    _, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    doc = json.loads(body)
    await env.ecs("t1")
    await env.ecs("t1", auth="wrong")
    secrets = [doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"], tok, ECS_TOKEN]
    dumps = [caplog.text, json.dumps(env.service.snapshot()), generate_latest(env.registry).decode(),
             repr(env.broker.peek("t1")), repr(env.service._tasks["t1"].identity)]
    for text in dumps:
        for secret in secrets:
            assert secret not in text
    snap = env.service.snapshot()["t1"]
    assert snap["role_arn"] == role_arn("app-role")
    assert snap["credentials"]["remaining_s"] == pytest.approx(3600, abs=1)
    assert "task" in caplog.text


async def test_metrics_bounded(env: Env) -> None:
    await env.add(identity("t1"))
    tok = await env.token("t1")
    for i in range(20):
        await env.get("t1", f"/latest/meta-data/random-{i}", tok)
    await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    samples = [s for m in env.registry.collect() for s in m.samples if s.name == "titus_imds_requests_total"]
    assert len(samples) <= 6
    for s in samples:
        assert "random" not in str(s.labels) and "app-role" not in str(s.labels)
    assert env.metric("titus_imds_requests_total", {"endpoint": "imds", "path_class": "cred", "code": "200"}) == 1
    assert env.metric("titus_imds_credential_age_seconds_count") == 1
    assert env.metric("titus_imds_credential_remaining_seconds_count") == 1
    assert env.metric("titus_imds_tasks") == 1


async def test_default_hosts_refuse_loopback() -> None:
    """Without configuring it, a Host of 127.0.0.1 is refused (DNS-rebinding/SSRF guard)."""
    import aiohttp

    from .conftest import FakeClock, FakeSts

    clock = FakeClock()
    sts = FakeSts(clock)
    service = MetadataService(CredentialBroker(lambda: sts, clock=clock), KEY, clock=clock)
    sock = listener()
    await service.add_task(identity("t1"), [sock])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.put(url(sock, "/latest/api/token"), headers={TTL: "60"}) as r:
                assert r.status == 403
            async with http.put(url(sock, "/latest/api/token"), headers={TTL: "60", "Host": DEFAULT_IMDS_HOSTS[0]}) as r:
                assert r.status == 200
    finally:
        await service.close()

