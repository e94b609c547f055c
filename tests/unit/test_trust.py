"""Trust between hosts and the control plane (docs/trust.md), against a real TLS listener on
loopback: bootstrap, per-node authorization, revocation, expiry, rotation, roles, IAM grants."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.node_credentials import NodeCredentials
from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from scheduler.api import make_app
from scheduler.auth import Auth
from scheduler.authstore import AuthStore, Token
from scheduler.core import Scheduler
from titus_common.iam_policy import IamPolicy
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca, server_context
from tests.harness import free_port
from titus_common.jobspec import parse_job_spec
from titus_common.pki import NODE_ORG, OPERATOR_ORG, client_context, key_pem, new_key, write_private
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.states import TaskState

JOB: dict[str, Any] = {"appName": "web", "owner": "alice", "batch": {"size": 1},
                       "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["true"],
                                     "resources": {"cpu": 0.1, "memoryMiB": 64}}}


@dataclass
class Cell:
    url: str
    pki: Path
    tmp: Path
    scheduler: Scheduler
    auth: Auth
    ca: CA

    def bootstrap_token(self, nodes: str = "n-*", uses: int = 1, ttl: float = 3600) -> Path:
        secret = self.auth.store.create_token(Token(id=f"b{time.monotonic_ns()}", kind="bootstrap",
                                                    expires_at=time.time() + ttl, nodes=nodes, uses_left=uses))
        path = self.tmp / f"token-{time.monotonic_ns()}"
        path.write_text(secret)
        return path

    def operator_token(self, role: str, owner: str = "") -> str:
        return self.auth.store.create_token(Token(id=f"o{time.monotonic_ns()}", kind="operator",
                                                  expires_at=time.time() + 3600, name=f"{role}-1", role=role,
                                                  owner=owner))

    def credentials(self, node: str, token: Path | None) -> NodeCredentials:
        return NodeCredentials(node, self.pki / "ca.crt", self.tmp / node / "pki", token)

    def client_cert(self, name: str, org: str, ttl: float = 3600, now: dt.datetime | None = None) -> ssl.SSLContext:
        key = new_key()
        signed = self.ca.issue(key.public_key(), name, org, ttl, now=now)
        write_private(self.tmp / f"{name}.key", key_pem(key))
        (self.tmp / f"{name}.crt").write_bytes(signed.pem)
        return client_context(self.pki / "ca.crt", self.tmp / f"{name}.crt", self.tmp / f"{name}.key")

    def refused(self, reason: str) -> float:
        return float(self.scheduler.metrics.registry.get_sample_value(
            "titus_scheduler_auth_refused_total", {"reason": reason}) or 0)


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    pki = tmp_path / "pki"
    init_ca(pki)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    iam = IamPolicy.model_validate({"grants": [{"owner": "alice", "roles": ["arn:aws:iam::*:role/alice-*"]}]})
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), iam, s.metrics.registry, node_cert_ttl=3600)
    ca = CA.load(pki)
    runner = web.AppRunner(make_app(s, None, auth, ca))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(pki)).start()
    yield Cell(f"https://127.0.0.1:{port}", pki, tmp_path, s, auth, ca)
    await runner.cleanup()
    auth.store.close()
    s.store.close()


def report(node: str) -> NodeReport:
    return NodeReport(id=node, capacity=CapacityReport(cpus=2, memory_mib=4096, disk_mib=10_000))


async def post(url: str, ctx: ssl.SSLContext, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, ssl=ctx, headers=headers) as r:
        return r.status, json.loads(await r.text())


async def test_bootstrap_then_sync_only_as_itself(cell: Cell) -> None:
    client = SchedulerClient(cell.url, "n-1", cell.credentials("n-1", cell.bootstrap_token()))
    try:
        await client.sync(report("n-1"), 0)
        assert "n-1" in cell.scheduler.nodes
        key = cell.tmp / "n-1" / "pki" / "node.key"
        assert key.stat().st_mode & 0o777 == 0o600
        # the same certificate, syncing as another node: refused, nothing stored
        ctx = client_context(cell.pki / "ca.crt", cell.tmp / "n-1/pki/node.crt", key)
        before = cell.refused("wrong_node")
        body = {"node": report("n-2").model_dump(mode="json", by_alias=True)}
        status, doc = await post(f"{cell.url}/v1/nodes/n-2/sync", ctx, body)
        assert status == 403 and "not n-2" in doc["error"]["message"]
        assert "n-2" not in cell.scheduler.nodes and cell.refused("wrong_node") == before + 1
        # a node certificate cannot list or submit jobs
        status, _ = await post(f"{cell.url}/v1/jobs", ctx, JOB)
        assert status == 403 and not cell.scheduler.jobs
    finally:
        await client.close()


async def test_no_certificate_is_401(cell: Cell) -> None:
    body = {"node": report("n-9").model_dump(mode="json", by_alias=True)}
    status, doc = await post(f"{cell.url}/v1/nodes/n-9/sync", client_context(cell.pki / "ca.crt"), body)
    assert status == 401 and "client certificate or a bearer token" in doc["error"]["message"]
    assert "n-9" not in cell.scheduler.nodes and cell.refused("no_credentials") == 1


async def test_plain_http_to_the_tls_port_gets_nothing(cell: Cell) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(cell.url.replace("https", "http") + "/v1/jobs") as r:
                await r.read()


async def test_token_reuse_expiry_and_pattern(cell: Cell) -> None:
    token = cell.bootstrap_token(nodes="n-*")
    first = SchedulerClient(cell.url, "n-1", cell.credentials("n-1", token))
    reuse = SchedulerClient(cell.url, "n-2", cell.credentials("n-2", token))
    expired = SchedulerClient(cell.url, "n-3", cell.credentials("n-3", cell.bootstrap_token(ttl=-1)))
    pattern = SchedulerClient(cell.url, "other", cell.credentials("other", cell.bootstrap_token(nodes="n-*")))
    try:
        await first.sync(report("n-1"), 0)
        for client, words in ((reuse, "already used"), (expired, "expired"), (pattern, "is for nodes")):
            with pytest.raises(SchedulerUnavailable, match=words):
                await client.sync(report(client.node_id), 0)
        assert set(cell.scheduler.nodes) == {"n-1"}
        assert cell.refused("bootstrap_token") == 3
    finally:
        for c in (first, reuse, expired, pattern):
            await c.close()


async def test_a_node_id_cannot_be_taken_over(cell: Cell) -> None:
    first = SchedulerClient(cell.url, "n-1", cell.credentials("n-1", cell.bootstrap_token()))
    thief = SchedulerClient(cell.url, "n-1", NodeCredentials("n-1", cell.pki / "ca.crt", cell.tmp / "thief",
                                                             cell.bootstrap_token()))
    try:
        await first.sync(report("n-1"), 0)
        with pytest.raises(SchedulerUnavailable, match="409.*already has a live certificate"):
            await thief.sync(report("n-1"), 0)
        assert cell.refused("node_taken") == 1
    finally:
        await first.close()
        await thief.close()


async def test_revoked_certificate_stops_at_once(cell: Cell) -> None:
    client = SchedulerClient(cell.url, "n-1", cell.credentials("n-1", cell.bootstrap_token()))
    try:
        await client.sync(report("n-1"), 0)
        admin = client_context(cell.pki / "ca.crt", cell.pki / "admin.crt", cell.pki / "admin.key")
        status, doc = await post(f"{cell.url}/v1/admin/nodes/n-1/revoke", admin, None)
        assert status == 200 and len(doc["revoked"]) == 1
        with pytest.raises(SchedulerUnavailable, match="401.*revoked"):
            await client.sync(report("n-1"), 0)  # the same kept-alive connection
        assert cell.refused("revoked") == 1
    finally:
        await client.close()


async def test_expired_certificate_fails_the_handshake(cell: Cell) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    ctx = cell.client_cert("n-old", NODE_ORG, ttl=3600, now=long_ago)
    with pytest.raises(aiohttp.ClientError):
        await post(f"{cell.url}/v1/nodes/n-old/sync", ctx, {})
    assert "n-old" not in cell.scheduler.nodes


async def test_updates_for_another_nodes_task_are_not_applied(cell: Cell) -> None:
    a = SchedulerClient(cell.url, "n-a", cell.credentials("n-a", cell.bootstrap_token()))
    b = SchedulerClient(cell.url, "n-b", cell.credentials("n-b", cell.bootstrap_token()))
    try:
        await a.sync(report("n-a"), 0)
        await b.sync(report("n-b"), 0)
        job, _ = cell.scheduler.submit(parse_job_spec(JOB))
        assert cell.scheduler.schedule_pass() == 1
        (task,) = cell.scheduler.job_tasks(job.id)
        owner, other = (a, b) if task.node_id == "n-a" else (b, a)
        state = task.state
        finished = TaskUpdate(task_id=task.id, state=TaskState.FINISHED, timestamps={TaskState.FINISHED: time.time()},
                              exit_code=0)
        await other.updates([finished])
        assert cell.scheduler.task(task.id).state is state
        assert cell.scheduler.metrics.registry.get_sample_value(
            "titus_scheduler_rejected_updates_total", {"reason": "other_node"}) == 1
        assert owner.node_id == task.node_id
    finally:
        await a.close()
        await b.close()


async def test_roles_and_iam_grants(cell: Cell) -> None:
    ctx = client_context(cell.pki / "ca.crt")
    sub = {"Authorization": f"Bearer {cell.operator_token('submitter', owner='alice')}"}
    op = {"Authorization": f"Bearer {cell.operator_token('operator')}"}
    status, doc = await post(f"{cell.url}/v1/jobs", ctx, {**JOB, "owner": "bob"}, sub)
    assert status == 403 and "only for owner 'alice'" in doc["error"]["message"]
    role = {**JOB, "container": {**JOB["container"], "iamRole": "arn:aws:iam::123456789012:role/admin"}}
    status, doc = await post(f"{cell.url}/v1/jobs", ctx, role, sub)
    assert status == 403 and doc["error"]["problems"][0]["field"] == "container.iamRole"
    # the model also takes the field name `iam_role`: the check reads the parsed spec, not raw keys
    snake = {**JOB, "container": {**JOB["container"], "iam_role": "arn:aws:iam::123456789012:role/admin"}}
    status, doc = await post(f"{cell.url}/v1/jobs", ctx, snake, sub)
    assert status == 403 and doc["error"]["problems"][0]["field"] == "container.iamRole"
    assert not cell.scheduler.jobs
    granted = {**JOB, "container": {**JOB["container"], "iamRole": "arn:aws:iam::123456789012:role/alice-web"}}
    status, job = await post(f"{cell.url}/v1/jobs", ctx, granted, sub)
    assert status == 201
    status, doc = await post(f"{cell.url}/v1/jobs", ctx, JOB, op)
    assert status == 403 and "role 'operator' may not POST /v1/jobs" in doc["error"]["message"]
    status, _ = await post(f"{cell.url}/v1/jobs/{job['id']}/kill", ctx, None, op)
    assert status == 202
    status, doc = await post(f"{cell.url}/v1/admin/tokens", ctx, {"kind": "bootstrap", "nodes": "*"}, op)
    assert status == 403
    status, doc = await post(f"{cell.url}/v1/jobs", ctx, JOB, {"Authorization": "Bearer nope.nope"})
    assert status == 401
    events = cell.auth.store.audit_log()
    assert any(e["who"] == "operator:operator-1(operator)" and e["status"] == 202 for e in events)
    assert any(e["status"] == 403 and e["path"] == "/v1/jobs" for e in events)


async def test_operator_certificate_roles(cell: Cell) -> None:
    ctx = cell.client_cert("carol", f"{OPERATOR_ORG}:submitter")
    status, doc = await post(f"{cell.url}/v1/admin/tokens", ctx, {"kind": "bootstrap", "nodes": "*"})
    assert status == 403 and "needs admin" in doc["error"]["message"]


async def test_rotation_keeps_syncing(cell: Cell) -> None:
    cell.auth.node_cert_ttl = 60.0
    creds = cell.credentials("n-1", cell.bootstrap_token())
    client = SchedulerClient(cell.url, "n-1", creds)
    try:
        await client.sync(report("n-1"), 0)
        first = creds.certificate()
        assert first is not None and not creds.should_rotate()
        # a certificate with less than a third of its life left is rotated before the next call
        later = first.not_valid_after_utc - dt.timedelta(seconds=10)
        assert creds.should_rotate(later)
        cell.auth.node_cert_ttl = 3600.0
        old_serial = first.serial_number
        creds.clock = lambda: later
        await client.sync(report("n-1"), 0)
        creds.clock = lambda: dt.datetime.now(dt.UTC)
        new = creds.certificate()
        assert new is not None and new.serial_number != old_serial and creds.rotations == 1
        await client.sync(report("n-1"), 0)  # with the new certificate
        assert set(cell.auth.store.live_certs("n-1")) == {format(old_serial, "x"), format(new.serial_number, "x")}
    finally:
        await client.close()


def test_clock_skew_of_five_minutes_is_tolerated(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    ca = CA.load(pki)
    creds = NodeCredentials("n-1", pki / "ca.crt", tmp_path / "n", None)
    key = new_key()
    creds.install(key_pem(key), ca.issue(key.public_key(), "n-1", NODE_ORG, 3600).pem.decode(), rotated=False)
    now = dt.datetime.now(dt.UTC)
    for skew in (-5, 5):
        at = now + dt.timedelta(minutes=skew)
        assert creds.valid(at) and not creds.should_rotate(at)
    cert = creds.certificate()
    assert cert is not None and cert.not_valid_before_utc <= now - dt.timedelta(minutes=5)


def test_ca_init_refuses_to_replace_and_keys_are_private(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "pki")
    for f in files:
        if f.suffix == ".key":
            assert f.stat().st_mode & 0o777 == 0o600
    with pytest.raises(Exception, match="refusing to replace"):
        init_ca(tmp_path / "pki")


async def test_insecure_mode_lets_agents_sync_without_certificates(tmp_path: Path) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(enforce=False), s.metrics.registry, insecure=True)
    runner = web.AppRunner(make_app(s, None, auth, None))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = SchedulerClient(f"http://127.0.0.1:{port}", "n-1")
    try:
        await client.sync(report("n-1"), 0)
        assert "n-1" in s.nodes
    finally:
        await client.close()
        await runner.cleanup()
        auth.store.close()
        s.store.close()
