"""Workload identity (docs/identity.md): the pure parts (SPIFFE ids, signing, verification, JWTs,
expiry under an injected clock) and the scheduler's issuing route against a real TLS listener:
a node gets a certificate only for a task placed on it, only with the identity the scheduler derives."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from prometheus_client import CollectorRegistry

from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from scheduler.api import make_app
from scheduler.auth import Auth
from scheduler.authstore import AuthStore
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca, server_context
from scheduler.workload import WorkloadIssuer
from tests.harness import free_port
from tests.unit.test_trust import JOB, Cell, post, report
from titus_common.iam_policy import IamPolicy
from titus_common.jobspec import parse_job_spec
from titus_common.pki import new_key
from titus_common.protocol import TaskUpdate
from titus_common.states import TaskState
from titus_common.workload import (
    WORKLOAD_ORG,
    IdentityRefused,
    cert_spiffe_id,
    mint_jwt,
    spiffe_id,
    task_csr,
    verify_cert,
    verify_jwt,
)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    init_ca(tmp_path / "pki")
    return CA.load(tmp_path / "pki")


def issuer(ca: CA, ttl: float = 60) -> WorkloadIssuer:
    return WorkloadIssuer(ca, "cell-1", ttl, CollectorRegistry())


def test_spiffe_ids_are_derived_and_validated() -> None:
    assert spiffe_id("cell-1", "web", "j1", "t1") == "spiffe://cell-1/app/web/job/j1/task/t1"
    assert spiffe_id("cell-1", "web", "j1") == "spiffe://cell-1/app/web/job/j1"
    for bad in (("Cell", "a", "j"), ("c", "a/b", "j"), ("c", "..", "j"), ("c", "a", "")):
        with pytest.raises(IdentityRefused):
            spiffe_id(*bad)


def test_certificate_chains_to_the_cell_ca_and_names_the_task(ca: CA) -> None:
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    ident = spiffe_id("cell-1", "web", "j1", "t1")
    cert = issuer(ca).sign(task_csr(key, "t1"), "t1", ident, now=now)
    assert verify_cert(cert, ca.cert, now) == ident == cert_spiffe_id(cert)
    # the same check by cryptography's own path builder (RFC 5280 / CA/B web PKI profile), at `now`
    verified = PolicyBuilder().store(Store([ca.cert])).time(now).build_client_verifier().verify(cert, [])
    assert [u.value for u in verified.subjects or [] if isinstance(u, x509.UniformResourceIdentifier)] == [ident]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # the host's key


def test_a_verifier_refuses_it_after_expiry(ca: CA) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = issuer(ca, ttl=60).sign(task_csr(new_key(), "t1"), "t1", spiffe_id("cell-1", "a", "j", "t1"), now=now)
    later = now + dt.timedelta(seconds=61)
    with pytest.raises(IdentityRefused, match="not valid at"):
        verify_cert(cert, ca.cert, later)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca.cert])).time(later).build_client_verifier().verify(cert, [])


def test_another_ca_is_refused(ca: CA, tmp_path: Path) -> None:
    init_ca(tmp_path / "other")
    other = CA.load(tmp_path / "other")
    cert = issuer(other).sign(task_csr(new_key(), "t1"), "t1", spiffe_id("cell-1", "a", "j", "t1"))
    with pytest.raises(IdentityRefused, match="not issued by the cell CA"):
        verify_cert(cert, ca.cert, dt.datetime.now(dt.UTC))


def test_a_csr_naming_another_identity_is_refused(ca: CA) -> None:
    ident = spiffe_id("cell-1", "a", "j", "t1")
    with pytest.raises(IdentityRefused, match="CN=t1"):
        issuer(ca).sign(task_csr(new_key(), "t2"), "t1", ident)
    key = new_key()
    asking = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, WORKLOAD_ORG),
                                       x509.NameAttribute(NameOID.COMMON_NAME, "t1")]))
              .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                  "spiffe://cell-1/app/payments/job/x/task/t1")]), critical=False)
              .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(IdentityRefused, match="extensions"):
        issuer(ca).sign(asking, "t1", ident)
    with pytest.raises(ValueError, match="PEM"):
        issuer(ca).sign(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "t1", ident)


def test_jwt_is_audience_bound_and_expires(ca: CA) -> None:
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    ident = spiffe_id("cell-1", "web", "j1", "t1")
    cert = issuer(ca, ttl=600).sign(task_csr(key, "t1"), "t1", ident, now=now)
    t = now.timestamp()
    token = mint_jwt(key, cert, "payments", t)
    claims = verify_jwt(token, ca.cert, "payments", t + 1)
    assert claims["sub"] == ident and claims["iss"] == "spiffe://cell-1" and claims["aud"] == "payments"
    with pytest.raises(IdentityRefused, match="audience"):
        verify_jwt(token, ca.cert, "billing", t + 1)
    with pytest.raises(IdentityRefused, match="expired"):
        verify_jwt(token, ca.cert, "payments", t + 301)
    # never longer than the certificate: 100 s left → the JWT ends with it; after it nothing is minted
    late = mint_jwt(key, cert, "x", t + 500)
    assert verify_jwt(late, ca.cert, "x", t + 501)["exp"] <= cert.not_valid_after_utc.timestamp()
    with pytest.raises(IdentityRefused, match="not valid at"):
        verify_jwt(late, ca.cert, "x", t + 601)
    with pytest.raises(IdentityRefused, match="expired"):
        mint_jwt(key, cert, "x", t + 700)
    head, claims_b64, sig = token.split(".")
    forged = mint_jwt(new_key(), cert, "payments", t).split(".")
    with pytest.raises(IdentityRefused, match="signature"):
        verify_jwt(f"{forged[0]}.{forged[1]}.{forged[2]}", ca.cert, "payments", t + 1)
    with pytest.raises(IdentityRefused):
        mint_jwt(key, cert, "has space", t)
    with pytest.raises(IdentityRefused, match="malformed"):
        verify_jwt("a.b", ca.cert, "payments", t)


# ---- the scheduler's route ---------------------------------------------------------------------


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    pki = tmp_path / "pki"
    init_ca(pki)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(enforce=False), s.metrics.registry)
    ca = CA.load(pki)
    workload = WorkloadIssuer(ca, "cell-1", 600, s.metrics.registry)
    runner = web.AppRunner(make_app(s, None, auth, ca, workload))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(pki)).start()
    yield Cell(f"https://127.0.0.1:{port}", pki, tmp_path, s, auth, ca)
    await runner.cleanup()
    auth.store.close()
    s.store.close()


def issued(cell: Cell, outcome: str) -> float:
    return float(cell.scheduler.metrics.registry.get_sample_value(
        "titus_scheduler_workload_certificates_total", {"outcome": outcome}) or 0)


async def test_the_scheduler_signs_only_for_a_task_placed_on_that_node(cell: Cell) -> None:
    a = SchedulerClient(cell.url, "n-a", cell.credentials("n-a", cell.bootstrap_token()))
    b = SchedulerClient(cell.url, "n-b", cell.credentials("n-b", cell.bootstrap_token()))
    try:
        await a.sync(report("n-a"), 0)
        await b.sync(report("n-b"), 0)
        job, _ = cell.scheduler.submit(parse_job_spec(JOB))
        assert cell.scheduler.schedule_pass() == 1
        (task,) = cell.scheduler.job_tasks(job.id)
        owner, other = (a, b) if task.node_id == "n-a" else (b, a)
        key = new_key()
        csr = task_csr(key, task.id).decode()
        # the other node: refused, nothing issued
        with pytest.raises(SchedulerUnavailable, match="403.*not placed on node"):
            await other.task_identity(task.id, csr)
        assert issued(cell, "other_node") == 1
        with pytest.raises(SchedulerUnavailable, match="403.*no task"):
            await owner.task_identity("no-such-task", task_csr(key, "no-such-task").decode())
        # a CSR naming another task: refused
        with pytest.raises(SchedulerUnavailable, match="403.*CN="):
            await owner.task_identity(task.id, task_csr(key, "someone-else").decode())
        assert issued(cell, "other_identity") == 1
        pem, bundle = await owner.task_identity(task.id, csr)
        cert = x509.load_pem_x509_certificate(pem.encode())
        expected = f"spiffe://cell-1/app/web/job/{job.id}/task/{task.id}"
        assert verify_cert(cert, x509.load_pem_x509_certificate(bundle.encode()), dt.datetime.now(dt.UTC)) == expected
        # the identity is stated on the job and the task, derived from the job (no field for a user to set)
        admin = cell.client_cert("admin-t", "titus:operators:admin")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{cell.url}/v1/tasks/{task.id}", ssl=admin) as r:
                assert (await r.json())["workloadIdentity"] == expected
            async with http.get(f"{cell.url}/v1/jobs/{job.id}", ssl=admin) as r:
                assert (await r.json())["workloadIdentity"] == expected.rsplit("/task/", 1)[0]
        with pytest.raises(Exception, match="workloadIdentity|Extra inputs"):
            parse_job_spec({**JOB, "workloadIdentity": "spiffe://cell-1/app/payments"})
        # a finished task gets no more certificates
        await owner.updates([TaskUpdate(task_id=task.id, state=TaskState.FINISHED,
                                        timestamps={TaskState.FINISHED: time.time()}, exit_code=0)])
        with pytest.raises(SchedulerUnavailable, match="403.*Finished"):
            await owner.task_identity(task.id, csr)
    finally:
        await a.close()
        await b.close()


async def test_an_operator_cannot_ask_for_a_task_identity(cell: Cell) -> None:
    admin = cell.client_cert("admin-u", "titus:operators:admin")
    status, doc = await post(f"{cell.url}/v1/nodes/n-a/tasks/t/identity", admin,
                             {"csr": task_csr(new_key(), "t").decode()})
    assert status == 403 and "only node n-a" in doc["error"]["message"]
