"""Workload identity, the issuer (docs/identity.md): the scheduler signs a task's CSR, sent by the
agent over its node certificate, only for a task placed on that very node and still held there, with
the identity the scheduler derives from the job (cell, app, job id, task id) — never one the CSR or
the job asks for. The key stays on the host: the CSR carries only its public half.

Route: POST /v1/nodes/{node_id}/tasks/{task_id}/identity (the auth middleware has already checked
that the caller holds node_id's current certificate)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry, Counter

from scheduler.appgrants import AppRefused
from scheduler.authstore import AuthStore
from scheduler.core import Scheduler
from scheduler.records import JobRecord, TaskRecord
from scheduler.tls import CA, load_p256_csr
from titus_common.pki import CLOCK_SKEW
from titus_common.states import TaskState
from titus_common.workload import WORKLOAD_ORG, IdentityRefused, spiffe_id

__all__ = ["WORKLOAD_KEY", "WorkloadIssuer", "add_workload_routes"]

log = logging.getLogger("titus.scheduler.workload")
# The states in which the agent holds the task (launching or running).
HELD = (TaskState.LAUNCHED, TaskState.START_INITIATED, TaskState.STARTED, TaskState.KILL_INITIATED)
MAX_CSR = 16384


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class WorkloadIssuer:
    def __init__(self, ca: CA, cell: str, ttl: float, registry: CollectorRegistry,
                 store: AuthStore | None = None) -> None:
        """`store`: the trust store, whose app grants an identity must agree with (docs/identity.md)."""
        spiffe_id(cell, "a", "j")  # refuses a cell that is not a trust domain
        self.store = store
        self.ca = ca
        self.cell = cell
        self.ttl = ttl
        self.bundle = ca.cert.public_bytes(serialization.Encoding.PEM)
        self.issued = Counter("titus_scheduler_workload_certificates", "Task identity CSRs by outcome",
                              ["outcome"], registry=registry)

    def job_identity(self, job: JobRecord) -> str | None:
        """What the API states for a job: each task gets this + /task/<task id> (None: the job's
        names cannot form an identity; submit-time validation makes that unreachable today)."""
        try:
            return spiffe_id(self.cell, job.spec.app_name, job.id)
        except IdentityRefused:
            return None

    def task_identity(self, job: JobRecord, task: TaskRecord) -> str:
        return spiffe_id(self.cell, job.spec.app_name, job.id, task.id)

    def sign(self, csr_pem: bytes, task_id: str, identity: str, now: dt.datetime | None = None) -> x509.Certificate:
        """The task's certificate for `identity`. IdentityRefused for a CSR naming anything else
        (another CN, or any SAN at all); ValueError for a CSR that is not a valid P-256 request."""
        csr, key = load_p256_csr(csr_pem)
        cns = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        orgs = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if cns != [task_id] or orgs != [WORKLOAD_ORG]:
            raise IdentityRefused(f"the request names O={orgs} CN={cns}; it must be O={WORKLOAD_ORG}, CN={task_id}")
        if len(csr.extensions):
            raise IdentityRefused("the request may not ask for extensions (SANs): the scheduler decides the identity")
        now = now or dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, WORKLOAD_ORG),
                             x509.NameAttribute(NameOID.COMMON_NAME, task_id)])
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.ca.cert.subject).public_key(key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(seconds=self.ttl))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )

    def issue(self, s: Scheduler, node_id: str, task_id: str, csr: str) -> dict[str, Any]:
        task = s.tasks.get(task_id)
        if task is None:
            raise Refusal(403, "unknown_task", f"no task {task_id} is placed on node {node_id}")
        if task.node_id != node_id:
            raise Refusal(403, "other_node", f"task {task_id} is not placed on node {node_id}")
        if task.state not in HELD:
            raise Refusal(403, "not_held", f"task {task_id} is {task.state.value}: no identity for it")
        job = s.jobs.get(task.job_id)
        if job is None:
            raise Refusal(403, "unknown_task", f"task {task_id} has no job")
        self._check_app(job, task_id)
        try:
            identity = self.task_identity(job, task)
        except IdentityRefused as e:
            raise Refusal(403, "no_identity", f"task {task_id} cannot have an identity: {e}") from None
        try:
            cert = self.sign(csr.encode(), task_id, identity)
        except IdentityRefused as e:
            raise Refusal(403, "other_identity", f"csr: {e}") from None
        except ValueError as e:
            raise Refusal(400, "bad_csr", f"csr: {e}") from None
        log.info("task identity issued: %s to node %s, serial %x, until %s", identity, node_id, cert.serial_number,
                 cert.not_valid_after_utc.isoformat(), extra={"task_id": task_id, "job_id": job.id})
        return {"certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "bundle": self.bundle.decode(), "spiffeId": identity, "serial": format(cert.serial_number, "x"),
                "notAfter": cert.not_valid_after_utc.timestamp()}


    def _check_app(self, job: JobRecord, task_id: str) -> None:
        """The job's owner must hold its app: a job stored before app grants existed, or whose app an
        admin has since given to another owner, gets no identity of that app (a first use claims it)."""
        if self.store is None:
            return
        try:
            claim = self.store.apps.admit(job.spec.app_name, job.spec.owner, f"job {job.id}")
        except AppRefused as e:
            raise Refusal(403, "app_grant", f"task {task_id} gets no identity: {e}") from None
        if claim is not None and self.store.apps.settle(claim, True):  # a stored job uses it: final
            self.store.audit(claim.by, "APP-CLAIM", f"/v1/jobs/{job.id}", 201, detail=claim.view())


WORKLOAD_KEY = web.AppKey("workload", WorkloadIssuer)


def _refuse(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if field:
        body["problems"] = [{"field": field, "message": message}]
    return web.json_response({"error": body}, status=status)


def add_workload_routes(app: web.Application, issuer: WorkloadIssuer, scheduler: Scheduler) -> None:
    async def issue(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _refuse(400, f"malformed JSON: {e}")
        csr = body.get("csr") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) != {"csr"} or not isinstance(csr, str) or not csr \
                or len(csr) > MAX_CSR:
            issuer.issued.labels("bad_request").inc()
            return _refuse(400, f'expected {{"csr": "<PEM, at most {MAX_CSR} characters>"}}', "csr")
        try:
            doc = issuer.issue(scheduler, request.match_info["node_id"], request.match_info["task_id"], csr)
        except Refusal as e:
            issuer.issued.labels(e.reason).inc()
            log.warning("task identity refused (%s): %s", e.reason, e.message)
            return _refuse(e.status, e.message, "csr" if e.reason in ("bad_csr", "other_identity") else None)
        issuer.issued.labels("issued").inc()
        return web.json_response(doc, status=201)

    app.router.add_post("/v1/nodes/{node_id}/tasks/{task_id}/identity", issue)
