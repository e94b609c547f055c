"""The security launch step (agent/steps/security.py) and the container step's merge + hardening audit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.docker_api import Docker
from security.hardening import MASKED_PATHS, host_pids_limit
from security.profiles import default_policy, load_policy
from agent.steps.base import LaunchContext, StepError
from agent.steps.container import ContainerStep
from agent.host.security import HostSecurity
from agent.steps.security import SecurityStep
from tests.security.hosts import ENGINE_PLAIN, fake_posture
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState
from titusctl.render import doctor_text, posture_summary


def record(task_id: str = "t1", owner: str | None = "me", app: str | None = "web", **attrs: str) -> TaskCheckpoint:
    spec = ContainerSpec(image="busybox", resources=Resources(memory_mib=64), security_attributes=attrs)  # type: ignore[call-arg]
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, container=spec, accepted_at=1.0, owner=owner, app_name=app)
    return TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED)


def ctx_for(rec: TaskCheckpoint, store: CheckpointStore) -> LaunchContext:
    return LaunchContext(rec, docker=Docker(), node_id="n1", save=lambda: store.save(rec))


@pytest.fixture
def host(tmp_path: Path) -> HostSecurity:
    return HostSecurity(default_policy(), fake_posture(ENGINE_PLAIN, tmp_path / "host", apparmor_on=False))


async def test_setup_records_the_decision_and_hardens(tmp_path: Path, host: HostSecurity) -> None:
    store = CheckpointStore(tmp_path / "state")
    rec = record()
    ctx = ctx_for(rec, store)
    step = SecurityStep(host)
    await step.setup(ctx)
    mine = rec.resources["security"]
    assert mine["variant"] == "default" and mine["seccompDigest"].startswith("sha256:")
    assert mine["apparmor"] == "unavailable" and mine["apparmorProfile"] is None
    assert any("AppArmor not enforced" in w for w in mine["warnings"])
    assert store.load_all()[0].resources["security"] == mine  # saved before returning
    assert ctx.host_config_options["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in ctx.host_config_options["security_opt"]
    assert set(MASKED_PATHS) <= set(ctx.host_config_raw["MaskedPaths"])
    # Idempotent: run again (agent restart mid-launch) → the same record; teardown is a repeatable no-op.
    again = ctx_for(rec, store)
    await step.setup(again)
    assert rec.resources["security"] == mine and again.host_config_options == ctx.host_config_options
    await step.teardown(ctx)
    await step.teardown(ctx_for(record("never"), store))


async def test_refusals_are_the_users_failure(tmp_path: Path, host: HostSecurity) -> None:
    store = CheckpointStore(tmp_path / "state")
    step = SecurityStep(host)
    with pytest.raises(StepError) as e:
        await step.setup(ctx_for(record(apparmor="required"), store))
    assert e.value.reason is FinishReason.FAILED
    assert "requires AppArmor" in e.value.message and "cannot enforce" in e.value.message
    # The owner allow-list is checked again at launch now that assignments carry owner and app.
    with pytest.raises(StepError) as e:
        await step.setup(ctx_for(record(seccomp="perf"), store))
    assert e.value.reason is FinishReason.FAILED and "not allowed" in e.value.message


async def test_owner_allow_list_from_the_policy_file(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"version": 1, "variants": {"perf": [{"owner": "me"}]}}))
    host = HostSecurity(load_policy(policy_file), fake_posture(ENGINE_PLAIN, tmp_path / "host", apparmor_on=False))
    store = CheckpointStore(tmp_path / "state")
    rec = record(seccomp="perf")
    await SecurityStep(host).setup(ctx_for(rec, store))
    assert rec.resources["security"]["variant"] == "perf"
    with pytest.raises(StepError) as e:
        await SecurityStep(host).setup(ctx_for(record("t2", owner="other", seccomp="perf"), store))
    assert e.value.reason is FinishReason.FAILED


async def test_no_posture_yet_is_the_platforms_fault(tmp_path: Path) -> None:
    with pytest.raises(StepError) as e:
        await SecurityStep(HostSecurity(default_policy())).setup(ctx_for(record(), CheckpointStore(tmp_path)))
    assert e.value.reason is FinishReason.CRASHED


async def test_container_step_merges_raw_fields_and_audits(tmp_path: Path, host: HostSecurity) -> None:
    store = CheckpointStore(tmp_path / "state")
    ctx = ctx_for(record(), store)
    await SecurityStep(host).setup(ctx)
    opts: dict[str, Any] = ContainerStep()._options(ctx)
    hc = opts["host_config"]
    assert hc["PidsLimit"] == host_pids_limit() and hc["CapDrop"] == ["ALL"] and hc["NetworkMode"] == "none"
    assert set(MASKED_PATHS) <= set(hc["MaskedPaths"]) and "/proc/sys/kernel" in hc["ReadonlyPaths"]
    # A later step that quietly weakens the container is caught before create (a platform bug).
    ctx.host_config_options["privileged"] = True
    with pytest.raises(StepError) as e:
        ContainerStep()._options(ctx)
    assert e.value.reason is FinishReason.CRASHED and "Privileged" in e.value.message
    # Without the security step the container is not hardened: refused too.
    with pytest.raises(StepError) as e:
        ContainerStep()._options(ctx_for(record("bare"), store))
    assert "hardening audit" in e.value.message


def test_doctor_text_says_what_the_host_cannot_enforce(tmp_path: Path) -> None:
    posture = fake_posture(ENGINE_PLAIN, tmp_path, apparmor_on=False).to_json()
    summary = posture_summary(posture)
    assert summary is not None and summary["apparmorEnforced"] is False and summary["cgroupVersion"] == 1
    nodes = [
        {"id": "n1", "status": "Ready", "lastHeartbeat": None, "summary": summary, "posture": posture},
        {"id": "old", "status": "Ready", "lastHeartbeat": None, "summary": None, "posture": None},
    ]
    text = doctor_text(nodes, {"url": "http://127.0.0.1:1", "reachable": False, "error": "ConnectionError"})
    assert "apparmor   NOT enforced: kernel has no AppArmor" in text
    assert "container root is host root" in text and "cgroup     v1" in text
    assert "posture: not reported" in text and "not reachable" in text


def test_agent_config_and_bad_policy_stops_the_agent(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from agent.config import load_config

    assert load_config(["--node-id", "n1"]).security_policy is None
    assert load_config(["--node-id", "n1", "--security-policy", "/etc/titus/p.json"]).security_policy == Path(
        "/etc/titus/p.json"
    )
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 1, "openVariants": ["default", "nope"]}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "agent.main", "--node-id", "n1", "--listen", f"127.0.0.1:{port}",
         "--state-dir", str(tmp_path / "state"), "--scheduler", "http://127.0.0.1:1", "--no-cpuset",
         "--security-policy", str(policy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot start" in proc.stderr and "security policy" in proc.stderr and str(policy) in proc.stderr


class CreatingEngine(Docker):
    """Creates and starts on paper: what the container step sends is kept for the test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[dict[str, Any]] = []
        self.started: list[str] = []

    async def create(self, name: str, **options: Any) -> str:  # type: ignore[override]
        self.created.append(options)
        return f"id-of-{name}"

    async def start(self, container_id: str) -> None:
        self.started.append(container_id)


async def test_a_created_container_leaves_its_create_inputs_behind(tmp_path: Path, host: HostSecurity) -> None:
    """A running task does not keep what its create call needed (the seccomp profile, the platform's
    environment…): the agent holds 100+ tasks for hours (issue 17)."""
    store = CheckpointStore(tmp_path / "state")
    rec = record()
    engine = CreatingEngine()
    ctx = LaunchContext(rec, docker=engine, node_id="n1", save=lambda: store.save(rec))
    await SecurityStep(host).setup(ctx)
    ctx.environment["AWS_REGION"] = "eu-west-1"
    ctx.binds.append(f"{tmp_path}/tokens:/run/titus:ro")
    await ContainerStep().setup(ctx)
    (sent,) = engine.created
    assert any(o.startswith("seccomp=") for o in sent["host_config"]["SecurityOpt"])
    assert sent["environment"]["AWS_REGION"] == "eu-west-1" and engine.started == ["id-of-titus-t1"]
    assert (ctx.create_options, ctx.host_config_options, ctx.host_config_raw, ctx.environment, ctx.binds) == (
        {}, {}, {}, {}, [])
    assert [r.container_id for r in store.load_all()] == ["id-of-titus-t1"]  # checkpointed after the release
