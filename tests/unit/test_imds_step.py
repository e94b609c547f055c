"""ImdsStep with a fake host (metadata links, listeners, the service, token files): what setup records
in the checkpoint and offers the container, role-less tasks, readopt after a restart, teardown after
a full or partial setup and when repeated, and the errors with whose fault they are."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import agent.steps.imds as imds_module
from agent.checkpoint import NetworkOutput, TaskCheckpoint
from agent.host.gate import Gate
from agent.steps.base import LaunchContext, StepError
from agent.steps.imds import TOKEN_PATH_IN_TASK, ImdsStep
from imds.identity import TaskIdentity
from netns.errors import NetworkError
from titus_common.iam_policy import IamPolicy
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState

ACCOUNT = "123456789012"
MAC = "0e:aa:bb:cc:dd:ee"
ADDRESS = "10.20.30.40"
NETNS = "/run/netns/titus-t1"
NETWORK = {"lease": {"address": ADDRESS}, "wiring": {"netns_path": NETNS}}


class FakePath:
    """The metadata namespace's per-task links and listening sockets (netns/metadata.py)."""

    def __init__(self) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.attach_error: Exception | None = None
        self.listen_error: Exception | None = None

    def attach(self, task_id: str, netns_path: str, address: str) -> dict[str, Any]:
        self.calls.append(("attach", task_id, netns_path, address))
        if self.attach_error is not None:
            raise self.attach_error
        record = {"meta_ifname": f"tm-{task_id}", "address": address, "netns_path": netns_path}
        self.links[task_id] = record
        return dict(record)

    def detach(self, task_id: str, record: dict[str, Any] | None = None) -> None:
        self.calls.append(("detach", task_id, record))
        self.links.pop(task_id, None)

    def listeners(self, task_id: str, ecs: bool = True) -> tuple[list[str], list[str]]:
        self.calls.append(("listeners", task_id, ecs))
        if self.listen_error is not None:
            raise self.listen_error
        return [f"imds-socket-{task_id}"], ([f"ecs-socket-{task_id}"] if ecs else [])


class FakeService:
    """The metadata service (imds/): which tasks it serves, with which identity and sockets."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[TaskIdentity, list[Any], list[Any]]] = {}
        self.calls: list[tuple[str, str]] = []
        self.add_error: Exception | None = None

    async def add_task(self, identity: TaskIdentity, imds: list[Any], ecs: list[Any]) -> None:
        self.calls.append(("add", identity.task_id))
        if self.add_error is not None:
            raise self.add_error
        assert identity.task_id not in self.tasks, "added twice without a remove"
        self.tasks[identity.task_id] = (identity, imds, ecs)

    async def remove_task(self, task_id: str) -> None:
        self.calls.append(("remove", task_id))
        self.tasks.pop(task_id, None)


class FakeHost:
    """HostMetadata-like: what the step uses of the host-wide metadata half."""

    def __init__(self, token_dir: Path, account_id: str | None = None) -> None:
        self.path = FakePath()
        self.service = FakeService()
        self.token_dir = token_dir
        self.region = "eu-west-1"
        self.availability_zone = "eu-west-1b"
        self.instance_type = "m5.xlarge"
        self.account_id = account_id
        self.account_calls = 0
        self.account_error: Exception | None = None
        self.iam_policy = IamPolicy(enforce=False)
        self.wiring = Gate()

    def ecs_token(self, task_id: str) -> str:
        return f"ecs-token-of-{task_id}"

    def token_file(self, task_id: str) -> Path:
        return self.token_dir / f"{task_id}.token"

    def write_token_file(self, task_id: str) -> Path:
        self.token_dir.mkdir(parents=True, exist_ok=True)
        path = self.token_file(task_id)
        path.write_text(self.ecs_token(task_id))
        return path

    async def account(self) -> str:
        self.account_calls += 1
        if self.account_error is not None:
            raise self.account_error
        return ACCOUNT


class Ctx:
    """A launch context whose saves are recorded (a copy of the step's resources at each save)."""

    def __init__(self, role: str | None = "app-role", network: dict[str, Any] | None = NETWORK,
                 v1: bool = False, owner: str | None = None) -> None:
        a = TaskAssignment(
            task_id="t1", job_id="j1", index=0, accepted_at=1.0, owner=owner, app_name="web",
            container=ContainerSpec(image="busybox", iam_role=role, imds_v1_allowed=v1),
        )
        record = TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED)
        if network is not None:  # what the network step records, and publishes for later steps
            record.resources["network"] = copy.deepcopy(network)
            address = (network.get("lease") or {}).get("address")
            netns_path = (network.get("wiring") or {}).get("netns_path")
            if address and netns_path:
                record.outputs.network = NetworkOutput(address=address, netns_path=netns_path, sandbox_id="sb1")
        self.saved: list[dict[str, Any]] = []
        self.ctx = LaunchContext(record, docker=None, node_id="n1", save=self._save)  # type: ignore[arg-type]

    def _save(self) -> None:
        self.saved.append(copy.deepcopy(self.ctx.record.resources.get("imds") or {}))

    @property
    def mine(self) -> dict[str, Any]:
        return self.ctx.record.resources["imds"]


def make_step(host: FakeHost) -> ImdsStep:
    return ImdsStep(host)  # type: ignore[arg-type]  # HostMetadata-like


@pytest.fixture(autouse=True)
def fake_mac(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []

    def task_mac(netns_path: str) -> str:
        asked.append(netns_path)
        return MAC

    monkeypatch.setattr(imds_module, "task_mac", task_mac)
    return asked


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "tokens")


async def test_setup_with_a_role_records_link_token_and_role(host: FakeHost, fake_mac: list[str]) -> None:
    c = Ctx(role="app-role")
    await make_step(host).setup(c.ctx)
    arn = f"arn:aws:iam::{ACCOUNT}:role/app-role"
    token = host.token_file("t1")
    assert fake_mac == [NETNS]
    assert c.mine == {
        "mac": MAC,
        "link": {"meta_ifname": "tm-t1", "address": ADDRESS, "netns_path": NETNS},
        "token_file": str(token),
        "role_arn": arn,
    }
    # The link was checkpointed before anything else was made for it, and the token file before serving.
    assert "link" in c.saved[0] and "token_file" not in c.saved[0]
    # The token file with the role in one write, before serving; nothing written after serving.
    assert c.saved[-1] == c.mine
    # The container gets the token file read-only and the variable naming it, plus the region.
    assert c.ctx.binds == [f"{token}:{TOKEN_PATH_IN_TASK}:ro"]
    assert c.ctx.environment == {
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": TOKEN_PATH_IN_TASK,
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in c.ctx.environment  # the task opts in itself
    assert token.read_text() == host.ecs_token("t1")
    # The service serves the task on both endpoints, as itself.
    identity, imds_socks, ecs_socks = host.service.tasks["t1"]
    assert imds_socks == ["imds-socket-t1"] and ecs_socks == ["ecs-socket-t1"]
    assert (identity.task_id, identity.job_id, identity.role_arn, identity.ipv4, identity.mac) == (
        "t1", "j1", arn, ADDRESS, MAC
    )
    assert (identity.region, identity.availability_zone, identity.instance_type, identity.account_id) == (
        "eu-west-1", "eu-west-1b", "m5.xlarge", ACCOUNT
    )
    assert identity.hostname == "ip-10-20-30-40.eu-west-1.compute.internal"
    assert identity.ecs_token == host.ecs_token("t1") and identity.v1_allowed is False
    assert host.account_calls == 1
    assert ("listeners", "t1", True) in host.path.calls


async def test_a_full_role_arn_needs_no_account_lookup(host: FakeHost) -> None:
    arn = "arn:aws:iam::210987654321:role/team/app"
    c = Ctx(role=arn)
    await make_step(host).setup(c.ctx)
    identity = host.service.tasks["t1"][0]
    assert identity.role_arn == arn and identity.account_id == "210987654321"
    assert host.account_calls == 0 and c.mine["role_arn"] == arn


async def test_the_job_env_region_is_not_overridden(host: FakeHost) -> None:
    c = Ctx()
    c.ctx.environment["AWS_REGION"] = "us-west-2"
    await make_step(host).setup(c.ctx)
    assert c.ctx.environment["AWS_REGION"] == "us-west-2"
    assert c.ctx.environment["AWS_DEFAULT_REGION"] == "eu-west-1"


async def test_a_task_without_a_role_gets_no_token_file(host: FakeHost) -> None:
    c = Ctx(role=None, v1=True)
    await make_step(host).setup(c.ctx)
    assert "token_file" not in c.mine and c.mine["role_arn"] is None and "link" in c.mine
    assert c.ctx.binds == []
    assert c.ctx.environment == {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert not host.token_file("t1").exists()
    # No credentials: nothing listens on the ECS address.
    assert ("listeners", "t1", False) in host.path.calls
    identity, imds_socks, ecs_socks = host.service.tasks["t1"]
    assert identity.role_arn is None and ecs_socks == [] and imds_socks == ["imds-socket-t1"]
    assert identity.account_id == "000000000000" and identity.v1_allowed is True
    assert host.account_calls == 0


async def test_setup_re_run_serves_the_task_once(host: FakeHost) -> None:
    step = make_step(host)
    c = Ctx()
    await step.setup(c.ctx)
    await step.setup(Ctx().ctx)  # a re-run after a restart, from the checkpoint
    assert list(host.service.tasks) == ["t1"]
    assert [call for call in host.service.calls if call[0] == "add"] == [("add", "t1"), ("add", "t1")]


async def test_readopt_serves_again_from_the_checkpoint(host: FakeHost) -> None:
    step = make_step(host)
    c = Ctx()
    await step.setup(c.ctx)
    # An agent restart: a new process, no service state; only the checkpoint is left.
    host.service = FakeService()
    host.path.calls.clear()
    restarted = Ctx()
    restarted.ctx.record.resources = copy.deepcopy(c.ctx.record.resources)
    await make_step(host).readopt(restarted.ctx)
    identity, imds_socks, ecs_socks = host.service.tasks["t1"]
    assert identity.mac == MAC and identity.ipv4 == ADDRESS and ecs_socks == ["ecs-socket-t1"]
    assert identity.role_arn == f"arn:aws:iam::{ACCOUNT}:role/app-role"
    # It does not re-wire: no attach, no new token file, no change to what the container has.
    assert [call[0] for call in host.path.calls] == ["listeners"]
    assert restarted.ctx.binds == [] and restarted.ctx.environment == {}
    assert restarted.ctx.record.resources == c.ctx.record.resources


async def test_readopt_of_a_task_without_a_link_does_nothing(host: FakeHost) -> None:
    c = Ctx()
    await make_step(host).readopt(c.ctx)
    assert host.service.calls == [] and host.path.calls == []


async def test_teardown_detaches_and_removes_the_token_file(host: FakeHost) -> None:
    step = make_step(host)
    c = Ctx()
    await step.setup(c.ctx)
    link = c.mine["link"]
    assert host.token_file("t1").exists()
    await step.teardown(c.ctx)
    assert "t1" not in host.service.tasks and "t1" not in host.path.links
    assert ("detach", "t1", link) in host.path.calls
    assert not host.token_file("t1").exists()
    await step.teardown(c.ctx)  # repeated: still fine
    assert not host.token_file("t1").exists() and "t1" not in host.service.tasks


async def test_teardown_with_no_setup_at_all(host: FakeHost) -> None:
    c = Ctx(network=None)
    await make_step(host).teardown(c.ctx)
    assert host.service.calls == [("remove", "t1")]  # idempotent removal only
    assert host.path.calls == []


async def test_missing_network_is_a_step_error_and_teardown_is_safe(host: FakeHost, fake_mac: list[str]) -> None:
    for network in (None, {}, {"lease": {"address": ADDRESS}}, {"wiring": {"netns_path": NETNS}}):
        c = Ctx(network=network)
        step = make_step(host)
        with pytest.raises(StepError) as e:
            await step.setup(c.ctx)
        assert e.value.reason is FinishReason.CRASHED
        assert "the task has no network" in e.value.message
        await step.teardown(c.ctx)
    assert fake_mac == [] and host.path.links == {} and host.service.tasks == {}
    assert not host.token_dir.exists()


async def test_unreadable_link_is_a_step_error(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(netns_path: str) -> str:
        raise OSError("No such file or directory")

    monkeypatch.setattr(imds_module, "task_mac", gone)
    c = Ctx()
    step = make_step(host)
    with pytest.raises(StepError) as e:
        await step.setup(c.ctx)
    assert e.value.reason is FinishReason.CRASHED and "cannot read the task's network link" in e.value.message
    await step.teardown(c.ctx)
    assert host.path.calls == []  # nothing was attached, nothing to detach


async def test_attach_failure_then_teardown_detaches(host: FakeHost) -> None:
    host.path.attach_error = NetworkError("veth create failed: EEXIST")
    c = Ctx()
    step = make_step(host)
    with pytest.raises(StepError) as e:
        await step.setup(c.ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == "no metadata link: veth create failed: EEXIST"
    await step.teardown(c.ctx)
    # A failed attach can leave a link behind: teardown still asks for it to go.
    assert [call[0] for call in host.path.calls] == ["attach", "detach"]
    assert not host.token_file("t1").exists()


async def test_service_refusal_is_failed_and_teardown_cleans_up(host: FakeHost) -> None:
    host.service.add_error = ValueError("invalid IAM role ARN")
    c = Ctx()
    step = make_step(host)
    with pytest.raises(StepError) as e:
        await step.setup(c.ctx)
    assert e.value.reason is FinishReason.FAILED  # the job's role, the job's fault
    assert e.value.message.startswith("metadata service refused the task: ")
    # What had been made is in the checkpoint, and teardown releases it.
    assert "link" in c.saved[-1] and c.saved[-1]["token_file"] == str(host.token_file("t1"))
    await step.teardown(c.ctx)
    assert "t1" not in host.path.links and not host.token_file("t1").exists()


async def test_listen_failure_is_crashed(host: FakeHost) -> None:
    host.path.listen_error = NetworkError("address in use")
    c = Ctx()
    with pytest.raises(StepError) as e:
        await make_step(host).setup(c.ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == "cannot listen for the task's metadata: address in use"
    await make_step(host).teardown(c.ctx)
    assert "t1" not in host.path.links and not host.token_file("t1").exists()


async def test_account_lookup_failure_is_crashed(host: FakeHost) -> None:
    host.account_error = RuntimeError("STS unreachable")
    c = Ctx(role="app-role")
    step = make_step(host)
    with pytest.raises(StepError) as e:
        await step.setup(c.ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == "cannot tell the account of role 'app-role': STS unreachable"
    assert "link" in c.saved[-1]
    await step.teardown(c.ctx)
    assert "t1" not in host.path.links


async def test_a_role_outside_the_iam_grants_gets_no_credentials(host: FakeHost) -> None:
    """Defence in depth (docs/trust.md): the agent re-checks the grant before serving the role."""
    host.iam_policy = IamPolicy.model_validate(
        {"grants": [{"owner": "alice", "roles": ["arn:aws:iam::*:role/alice-*"]}]})
    c = Ctx(role="arn:aws:iam::210987654321:role/admin", owner="alice")
    with pytest.raises(StepError) as e:
        await make_step(host).setup(c.ctx)
    assert e.value.reason is FinishReason.FAILED and "container.iamRole" in e.value.message
    assert "t1" not in host.service.tasks
    ok = Ctx(role="arn:aws:iam::210987654321:role/alice-web", owner="alice")
    await make_step(host).setup(ok.ctx)
    assert host.service.tasks["t1"][0].role_arn == "arn:aws:iam::210987654321:role/alice-web"
