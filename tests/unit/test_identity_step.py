"""The agent's half of workload identity (docs/identity.md): the per-task directory (layout, modes,
atomic generation swap), idempotent issue, rotation under an injected clock, the JWT, teardown, GC
and the identity step. The scheduler is replaced by its real signer behind a function."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from agent.checkpoint import TaskCheckpoint
from agent.host.workload import IdentityResource, IdentityUnavailable, Issued, TaskIdentities
from agent.steps.base import LaunchContext, StepError
from agent.steps.identity import MOUNT, IdentityStep
from scheduler.tls import CA, init_ca
from scheduler.workload import WorkloadIssuer
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState
from titus_common.workload import spiffe_id, verify_cert, verify_jwt


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class Scheduler:
    """The scheduler's signer, as the agent's issue call reaches it (TTL 60 s)."""

    def __init__(self, tmp: Path, clock: Clock) -> None:
        init_ca(tmp / "pki")
        self.ca = CA.load(tmp / "pki")
        self.issuer = WorkloadIssuer(self.ca, "cell-1", 60, CollectorRegistry())
        self.clock = clock
        self.calls = 0
        self.down = False

    async def issue(self, task_id: str, csr: str) -> Issued:
        self.calls += 1
        if self.down:
            raise IdentityUnavailable("scheduler unreachable")
        cert = self.issuer.sign(csr.encode(), task_id, spiffe_id("cell-1", "web", "j1", task_id), now=self.clock())
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), self.issuer.bundle.decode())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sched(tmp_path: Path, clock: Clock) -> Scheduler:
    return Scheduler(tmp_path, clock)


@pytest.fixture
def ids(tmp_path: Path, sched: Scheduler, clock: Clock) -> TaskIdentities:
    return TaskIdentities(tmp_path / "identity", sched.issue, clock=clock)


def record(task_id: str = "t1", state: TaskState = TaskState.START_INITIATED) -> TaskCheckpoint:
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, accepted_at=1.0, owner="alice", app_name="web",
                       container=ContainerSpec(image="busybox"))
    return TaskCheckpoint(assignment=a, state=state)


def serial(ids: TaskIdentities, task_id: str = "t1") -> int:
    held = ids.current(task_id)
    assert held is not None
    return int(held[1].serial_number)


async def test_issue_writes_a_private_per_task_directory(ids: TaskIdentities, sched: Scheduler, clock: Clock) -> None:
    cert = await ids.ensure("t1")
    top = ids.dir("t1")
    assert stat.S_IMODE(ids.root.stat().st_mode) == 0o700  # no other host user reaches a key
    assert stat.S_IMODE(top.stat().st_mode) == 0o755
    for name in ("cert.pem", "key.pem", "bundle.pem"):
        assert os.readlink(top / name) == f"..data/{name}"
        assert stat.S_IMODE((top / name).stat().st_mode) == 0o444
    assert verify_cert(cert, sched.ca.cert, clock()) == "spiffe://cell-1/app/web/job/j1/task/t1"
    bundle = x509.load_pem_x509_certificate((top / "bundle.pem").read_bytes())
    assert bundle == sched.ca.cert
    # idempotent: a second setup (agent restart mid-launch) reuses the valid certificate
    assert (await ids.ensure("t1")).serial_number == cert.serial_number and sched.calls == 1


async def test_rotation_swaps_key_and_certificate_together(ids: TaskIdentities, sched: Scheduler,
                                                           clock: Clock) -> None:
    first = await ids.ensure("t1")
    first_gen = os.readlink(ids.dir("t1") / "..data")
    assert (ids.due("t1") or 0) > 0
    clock.now += dt.timedelta(seconds=45)  # 15 s of 60 left: less than a third
    assert (ids.due("t1") or 1) <= 0
    second = await ids.ensure("t1")
    assert second.serial_number != first.serial_number and ids.rotations == 1
    key, cert = ids.current("t1")  # type: ignore[misc]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert (ids.dir("t1") / first_gen).is_dir()  # the previous generation stays for a reader mid-way
    clock.now += dt.timedelta(seconds=45)
    await ids.ensure("t1")
    assert not (ids.dir("t1") / first_gen).exists() and len(list(ids.dir("t1").glob("g*"))) == 2


async def test_jwt_names_the_task_and_verifies_against_the_ca(ids: TaskIdentities, sched: Scheduler,
                                                              clock: Clock) -> None:
    assert ids.jwt("t1", "payments") is None  # no identity yet
    await ids.ensure("t1")
    now = clock().timestamp()
    token = ids.jwt("t1", "payments", now)
    assert token is not None
    assert verify_jwt(token, sched.ca.cert, "payments", now)["sub"].endswith("/task/t1")


async def test_rotation_loop_rotates_running_tasks(ids: TaskIdentities, sched: Scheduler, clock: Clock) -> None:
    running = record("t1", TaskState.STARTED)
    running.resources["identity"] = {"spiffe_id": "x"}
    tasks = {"t1": running, "t2": record("t2", TaskState.STARTED)}  # t2 has no identity: left alone
    registry = CollectorRegistry()
    resource = IdentityResource(ids, lambda: tasks, registry)
    await ids.ensure("t1")
    before = serial(ids)
    assert await resource.rotate_due() > 1 and serial(ids) == before
    clock.now += dt.timedelta(seconds=45)
    sched.down = True  # a failed rotation keeps the old certificate and is retried soon
    assert await resource.rotate_due() == 5.0 and serial(ids) == before
    sched.down = False
    await resource.rotate_due()
    assert serial(ids) != before and ids.current("t2") is None
    assert registry.get_sample_value("titus_agent_identity_rotations_total", {"outcome": "failed"}) == 1
    assert registry.get_sample_value("titus_agent_identity_rotations_total", {"outcome": "ok"}) == 1


async def test_gc_and_teardown(ids: TaskIdentities, sched: Scheduler) -> None:
    await ids.ensure("t1")
    await ids.ensure("leaked")
    resource = IdentityResource(ids, dict)
    await resource.gc({"t1": record("t1", TaskState.STARTED)})
    assert not ids.dir("leaked").exists() and ids.dir("t1").exists()
    await resource.gc({"t1": record("t1", TaskState.START_INITIATED)})  # a launch mid-way: GC waits
    ids.remove("t1")
    ids.remove("t1")
    assert not ids.dir("t1").exists()


async def test_the_step(ids: TaskIdentities, sched: Scheduler) -> None:
    rec = record()
    saved: list[dict[str, object]] = []
    ctx = LaunchContext(rec, docker=None, node_id="n1",  # type: ignore[arg-type]
                        save=lambda: saved.append(dict(rec.resources.get("identity") or {})))
    step = IdentityStep(ids)
    await step.setup(ctx)
    assert saved[0] == {"dir": str(ids.dir("t1"))}  # the trail before anything is written
    assert rec.resources["identity"]["spiffe_id"] == "spiffe://cell-1/app/web/job/j1/task/t1"
    assert ctx.binds == [f"{ids.dir('t1')}:{MOUNT}:ro"]  # the directory, read-only
    assert ctx.environment["TITUS_IDENTITY_CERT"] == f"{MOUNT}/cert.pem"
    assert ctx.environment["TITUS_IDENTITY_KEY"] == f"{MOUNT}/key.pem"
    assert ctx.environment["TITUS_IDENTITY_BUNDLE"] == f"{MOUNT}/bundle.pem"
    await step.teardown(ctx)
    await step.teardown(ctx)
    assert not ids.dir("t1").exists()
    never = LaunchContext(record("t9"), docker=None, node_id="n1", save=lambda: None)  # type: ignore[arg-type]
    await IdentityStep(ids).teardown(never)  # never set up: nothing to do


async def test_the_step_crashes_when_the_scheduler_does_not_issue(ids: TaskIdentities, sched: Scheduler) -> None:
    sched.down = True
    ctx = LaunchContext(record(), docker=None, node_id="n1", save=lambda: None)  # type: ignore[arg-type]
    with pytest.raises(StepError, match="no task identity: scheduler unreachable") as e:
        await IdentityStep(ids).setup(ctx)
    assert e.value.reason.value == "crashed" and not ctx.binds
