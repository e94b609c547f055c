"""Node certificates bound to the EC2 instance (scheduler/iid.py, docs/trust.md "Bound to the
instance"), through the real bootstrap route on a TLS listener: the agent's client sends the
instance identity document signed by a test "AWS" key the scheduler's policy trusts."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509

from agent.node_credentials import NodeCredentials
from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from scheduler.api import make_app
from scheduler.auth import Auth
from scheduler.authstore import AuthStore, Token
from scheduler.core import Scheduler
from scheduler.iid import IidVerifier
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca, server_context
from tests.ec2sim.iid import ACCOUNT, IidAuthority, identity_document
from tests.harness import free_port
from tests.unit.test_trust import post, report
from titus_common.iam_policy import IamPolicy
from titus_common.pki import client_context
from titus_common.protocol import NodeReport

I1, I2 = "i-0000000000000aaa1", "i-0000000000000bbb2"


@dataclass
class Cell:
    url: str
    pki: Path
    tmp: Path
    scheduler: Scheduler
    auth: Auth
    aws: IidAuthority

    def token(self, nodes: str = "*") -> Path:
        secret = self.auth.store.create_token(Token(id=f"b{time.monotonic_ns()}", kind="bootstrap",
                                                    expires_at=time.time() + 3600, nodes=nodes, uses_left=1))
        path = self.tmp / f"token-{time.monotonic_ns()}"
        path.write_text(secret)
        return path

    def proof(self, instance: str, **kw: object) -> Callable[[], dict[str, str]]:
        doc = identity_document(instance, **kw)  # type: ignore[arg-type]
        return lambda: {"document": doc, "signature": self.aws.sign(doc)}

    def client(self, node: str, proof: Callable[[], dict[str, str]] | None, state: str = "") -> SchedulerClient:
        creds = NodeCredentials(node, self.pki / "ca.crt", self.tmp / (state or node) / "pki", self.token(),
                                instance_proof=proof)
        return SchedulerClient(self.url, node, creds)

    def refused(self, reason: str) -> float:
        return float(self.scheduler.metrics.registry.get_sample_value(
            "titus_scheduler_auth_refused_total", {"reason": reason}) or 0)

    async def admin(self, path: str) -> tuple[int, object]:
        ctx = client_context(self.pki / "ca.crt", self.pki / "admin.crt", self.pki / "admin.key")
        return await post(f"{self.url}{path}", ctx, None)


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    pki = tmp_path / "pki"
    init_ca(pki)
    aws = IidAuthority()
    iid = IidVerifier.load(aws.write_policy(tmp_path / "iid", nodeIds={I2: "web-2"}, maxDocumentAgeSeconds=600))
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(), s.metrics.registry, node_cert_ttl=3600, iid=iid)
    runner = web.AppRunner(make_app(s, None, auth, CA.load(pki)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(pki)).start()
    yield Cell(f"https://127.0.0.1:{port}", pki, tmp_path, s, auth, aws)
    await runner.cleanup()
    auth.store.close()
    s.store.close()


def bound_to(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def aws_report(node: str, instance: str | None) -> NodeReport:
    r = report(node)
    return r.model_copy(update={"labels": {"instanceId": instance}}) if instance else r


async def test_bootstrap_binds_the_certificate_to_the_instance(cell: Cell) -> None:
    client = cell.client(I1, cell.proof(I1))
    mapped = cell.client("web-2", cell.proof(I2))
    try:
        await client.sync(aws_report(I1, I1), 0)
        arn = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{I1}"
        assert I1 in cell.scheduler.nodes and bound_to(cell.tmp / I1 / "pki/node.crt") == [arn]
        assert cell.auth.store.instance_binding(I1) == arn
        await mapped.sync(aws_report("web-2", I2), 0)  # the policy's mapping: instance I2 joins as web-2
        assert bound_to(cell.tmp / "web-2/pki/node.crt") == [arn.replace(I1, I2)]
    finally:
        await client.close()
        await mapped.close()


@pytest.mark.parametrize("case", ["missing", "wrong_signer", "tampered", "wrong_account", "other_node", "stale"])
async def test_refusals_store_nothing_and_spend_nothing(cell: Cell, case: str) -> None:
    doc = identity_document(I1)
    proofs: dict[str, tuple[Callable[[], dict[str, str]] | None, str, str]] = {
        "missing": (None, "401", "iid_missing"),
        "wrong_signer": (lambda: {"document": doc, "signature": IidAuthority("x").sign(doc)}, "403", "iid_signature"),
        "tampered": (lambda: {"document": doc.replace("m5.large", "m5.24xlarge"), "signature": cell.aws.sign(doc)},
                     "403", "iid_signature"),
        "wrong_account": (cell.proof(I1, account="999999999999"), "403", "iid_policy"),
        "other_node": (cell.proof(I2), "403", "iid_node"),  # I2 may join only as web-2
        "stale": (cell.proof(I1, pending=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)), "403", "iid_stale"),
    }
    proof, status, reason = proofs[case]
    client = cell.client(I1, proof)
    try:
        with pytest.raises(SchedulerUnavailable, match=f"HTTP {status}"):
            await client.sync(aws_report(I1, I1), 0)
        assert cell.refused(reason) == 1
        assert not cell.scheduler.nodes and not cell.auth.store.live_certs(I1)
        assert cell.auth.store.instance_use(I1) is None
        token = client.credentials.bootstrap_token() if client.credentials else ""
        assert cell.auth.store.use_bootstrap(token, I1, spend=False).uses_left == 1  # not spent
    finally:
        await client.close()


async def test_an_instance_bootstraps_once_until_readmitted(cell: Cell) -> None:
    proof = cell.proof(I1)
    first = cell.client(I1, proof)
    again = cell.client(I1, proof, state="again")
    try:
        await first.sync(aws_report(I1, I1), 0)
        status, _ = await cell.admin(f"/v1/admin/nodes/{I1}/revoke")
        assert status == 200
        # the same (valid, signed) document with a fresh token: a replay
        with pytest.raises(SchedulerUnavailable, match="HTTP 409.*already bootstrapped.*readmit"):
            await again.sync(aws_report(I1, I1), 0)
        assert cell.refused("iid_replayed") == 1 and not cell.auth.store.live_certs(I1)
        assert await cell.admin("/v1/admin/nodes/nobody/readmit") == (404, {"error": {
            "message": "node nobody is bound to no EC2 instance"}})
        status, doc = await cell.admin(f"/v1/admin/nodes/{I1}/readmit")
        assert status == 200 and doc == {"node": I1, "instanceId": I1, "readmitted": True}
        # re-admitted: once, and without the age bound (an instance that has run for days)
        old = cell.proof(I1, pending=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        back = cell.client(I1, old, state="back")
        await back.sync(aws_report(I1, I1), 0)
        assert bound_to(cell.tmp / "back/pki/node.crt")[0].endswith(I1)
        await back.close()
        status, _ = await cell.admin(f"/v1/admin/nodes/{I1}/revoke")
        thrice = cell.client(I1, old, state="thrice")
        with pytest.raises(SchedulerUnavailable, match="HTTP 409"):
            await thrice.sync(aws_report(I1, I1), 0)
        await thrice.close()
    finally:
        await first.close()
        await again.close()


async def test_rotation_keeps_the_binding_and_a_different_instance_is_refused(cell: Cell) -> None:
    cell.auth.node_cert_ttl = 60.0
    client = cell.client(I1, cell.proof(I1))
    creds = client.credentials
    assert creds is not None
    try:
        await client.sync(aws_report(I1, I1), 0)
        first = creds.certificate()
        assert first is not None
        later = first.not_valid_after_utc - dt.timedelta(seconds=10)
        creds.clock = lambda: later
        creds.instance_proof = None  # rotation asks nothing new of the instance
        await client.sync(aws_report(I1, I1), 0)
        creds.clock = lambda: dt.datetime.now(dt.UTC)
        assert creds.rotations == 1 and bound_to(creds.cert_file)[0].endswith(I1)
        # the node now reports another instance (a copied certificate, a baked image): refused
        with pytest.raises(SchedulerUnavailable, match="HTTP 403.*bound to instance .* reports instance i-0fff"):
            await client.sync(aws_report(I1, "i-0fff00000000000ff"), 0)
        assert cell.refused("instance_mismatch") == 1
        assert cell.scheduler.nodes[I1].labels.get("instanceId") == I1  # the refused report was not applied
        # or reports none (the host's record would name no instance to retire): refused too
        with pytest.raises(SchedulerUnavailable, match="HTTP 403.*bound to instance .* no instanceId label"):
            await client.sync(aws_report(I1, None), 0)
        assert cell.refused("instance_unreported") == 1
        assert cell.scheduler.nodes[I1].labels.get("instanceId") == I1
    finally:
        await client.close()


async def test_a_node_bound_to_no_instance_cannot_rotate_under_the_policy(cell: Cell) -> None:
    iid, cell.auth.iid = cell.auth.iid, None  # a node bootstrapped before the policy was turned on
    cell.auth.node_cert_ttl = 60.0
    client = cell.client("n-old", None)
    creds = client.credentials
    assert creds is not None
    try:
        await client.sync(report("n-old"), 0)
        cell.auth.iid = iid
        first = creds.certificate()
        assert first is not None
        creds.clock = lambda: first.not_valid_after_utc - dt.timedelta(seconds=10)
        await client.sync(report("n-old"), 0)  # rotation refused (logged), the old certificate still works
        assert creds.rotations == 0 and cell.refused("iid_unbound") == 1
    finally:
        await client.close()
