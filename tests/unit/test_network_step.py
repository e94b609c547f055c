"""The network launch step (agent/steps/network.py) with a fake engine and fake TaskNetworks, the
local VPC's shared state file, the agent's network flags and `titusctl node net`'s rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.config import ConfigError, load_config
from agent.docker_api import Docker, DockerError
from security.hardening import audit_host_config
from agent.steps.base import LaunchContext, StepError
from agent.host.network import TaskNetworking
from agent.host.security import HostSecurity
from agent.steps.container import ContainerStep
from agent.steps.network import NetworkStep
from agent.steps.security import SecurityStep
from security.profiles import default_policy
from netns.errors import SubnetExhausted, UnknownSecurityGroup, WiringError
from netns.wiring import netns_name
from netns.providers.local import LocalProvider, LocalVpc
from tests.security.hosts import ENGINE_PLAIN, fake_posture
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState
from titusctl.render import net_map


def record(task_id: str = "t1") -> TaskCheckpoint:
    spec = ContainerSpec(image="busybox", resources=Resources(memory_mib=64))
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, container=spec, accepted_at=1.0)
    return TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED)


class FakeDocker(Docker):
    def __init__(self) -> None:
        super().__init__()
        self.created: dict[str, dict[str, Any]] = {}
        self.started: list[str] = []
        self.removed: list[str] = []
        self.fail_create: Exception | None = None

    async def create(self, name: str, **kwargs: Any) -> str:
        if self.fail_create is not None:
            raise self.fail_create
        self.created[name] = kwargs
        return f"id-{name}"

    async def start(self, container_id: str) -> None:
        self.started.append(container_id)

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        running = container_id in self.started
        return {"Id": container_id, "State": {"Running": running, "Pid": 4242 if running else 0,
                                               "FinishedAt": "0001-01-01T00:00:00Z"}}

    async def remove(self, container_id: str) -> None:
        self.removed.append(container_id)


class FakeNetworks:
    def __init__(self) -> None:
        self.setups: list[tuple[str, str]] = []
        self.teardowns: list[str] = []
        self.fail: Exception | None = None

    async def setup(self, task_id: str, netns_path: str, groups: list[str], rec: dict[str, Any], save: Any) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.setups.append((task_id, netns_path))
        rec["lease"] = {"address": "100.64.0.9"}
        await save()  # the step hands over ctx.commit
        rec["wiring"] = {"host_ifname": "tnabc"}
        await save()
        return rec

    async def teardown(self, task_id: str, rec: dict[str, Any]) -> None:
        self.teardowns.append(task_id)


def setup_ctx(tmp_path: Path, docker: FakeDocker, rec: TaskCheckpoint | None = None) -> LaunchContext:
    rec = rec or record()
    store = CheckpointStore(tmp_path / "state")
    return LaunchContext(rec, docker=docker, node_id="n1", save=lambda: store.save(rec))


async def secured(tmp_path: Path, ctx: LaunchContext) -> None:
    host = HostSecurity(default_policy(), fake_posture(ENGINE_PLAIN, tmp_path / "host", apparmor_on=False))
    await SecurityStep(host).setup(ctx)


class Prepared(TaskNetworking):
    """TaskNetworking whose namespaces are only recorded (creating real ones needs the engine lock:
    tests/integration/test_network.py does that)."""

    def __init__(self, nets: FakeNetworks) -> None:
        super().__init__(nets, "img", Path("/run/titus/netns/n1"))  # type: ignore[arg-type]
        self.prepared: list[str] = []
        self.released: list[str] = []

    async def prepare(self, netns_path: str) -> None:
        self.prepared.append(netns_path)

    async def release_netns(self, netns_path: str) -> None:
        self.released.append(netns_path)


async def test_setup_prepares_the_namespace_wires_it_and_runs_the_task_with_the_titus_runtime(
    tmp_path: Path,
) -> None:
    docker, nets = FakeDocker(), FakeNetworks()
    host = Prepared(nets)
    step = NetworkStep(host)
    ctx = setup_ctx(tmp_path, docker)
    await secured(tmp_path, ctx)
    await step.setup(ctx)
    path = f"/run/titus/netns/n1/{netns_name('t1')}"
    assert host.prepared == [path] and nets.setups == [("t1", path)]
    assert docker.created == {} and docker.started == []  # no second container
    mine = ctx.record.resources["network"]
    assert mine["netns_path"] == path and mine["lease"]["address"] == "100.64.0.9"
    assert ctx.record.outputs.network is not None and ctx.record.outputs.network.netns_path == path
    assert ctx.host_config_options["runtime"] == "titus"
    # The task's container: network_mode none (a namespace of its own, swapped by the runtime),
    # TITUS_NETNS last so a job's environment cannot point it at another task's namespace.
    ctx.record.assignment.container.env["TITUS_NETNS"] = "/run/titus/netns/n1/titus-0000000000000000"
    opts = ContainerStep()._options(ctx)
    assert opts["environment"]["TITUS_NETNS"] == path
    assert opts["host_config"]["NetworkMode"] == "none" and opts["host_config"]["Runtime"] == "titus"
    assert audit_host_config(opts["host_config"]) == []
    # Idempotent: a second setup (restart mid-launch) prepares (a no-op when pinned) and re-wires.
    await step.setup(ctx)
    assert host.prepared == [path, path]
    # Teardown: unwire, then unpin; repeatable. A sandbox recorded by an older agent goes too.
    await step.teardown(ctx)
    mine["sandbox_id"] = "old-box"
    await step.teardown(ctx)
    assert nets.teardowns == ["t1", "t1"] and host.released == [path, path] and docker.removed == ["old-box"]


@pytest.mark.parametrize(
    "error, reason", [(SubnetExhausted("subnet x has no free address"), FinishReason.CRASHED),
                      (UnknownSecurityGroup("security groups do not exist: sg-x"), FinishReason.FAILED),
                      (WiringError("preparing the network namespace x: unshare failed"), FinishReason.CRASHED)]
)
async def test_network_errors_say_whose_fault(tmp_path: Path, error: Exception, reason: FinishReason) -> None:
    docker, nets = FakeDocker(), FakeNetworks()
    nets.fail = error
    host = Prepared(nets)
    step = NetworkStep(host)
    ctx = setup_ctx(tmp_path, docker)
    await secured(tmp_path, ctx)
    with pytest.raises(StepError) as e:
        await step.setup(ctx)
    assert e.value.reason is reason and str(error) in e.value.message
    await step.teardown(ctx)  # after a partial setup: the namespace still goes
    assert host.released == [f"/run/titus/netns/n1/{netns_name('t1')}"] and docker.removed == []


async def test_teardown_without_setup(tmp_path: Path) -> None:
    docker, nets = FakeDocker(), FakeNetworks()
    host = Prepared(nets)
    await NetworkStep(host).teardown(setup_ctx(tmp_path, docker))
    assert nets.teardowns == [] and host.released == [f"/run/titus/netns/n1/{netns_name('t1')}"]
    assert docker.removed == []


async def test_local_vpc_state_is_shared_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "vpc.json"
    a = LocalProvider("a", LocalVpc("100.64.0.0/24", state_path=path))
    b = LocalProvider("b", LocalVpc("100.64.0.0/24", state_path=path))  # another agent, same host
    eni_a = await a.create_eni(("sg",), 1)
    eni_b = await b.create_eni(("sg",), 1)
    got = await a.assign_ips(eni_a.eni_id, 3) + await b.assign_ips(eni_b.eni_id, 3)
    assert len(set(got + [eni_a.primary_ip, eni_b.primary_ip])) == 8
    again = LocalProvider("a", LocalVpc("100.64.0.0/24", state_path=path))  # agent a restarted
    (eni,) = await again.list_enis()
    assert eni.eni_id == eni_a.eni_id and set(eni.secondary_ips) == set(got[:3])
    # A node silent for a day (its agent gone for good) loses its ENIs and addresses.
    again.vpc.node_expiry_s = 0.0
    b.vpc.node_expiry_s = 0.0
    await b.list_enis()
    assert await LocalProvider("a", LocalVpc("100.64.0.0/24", state_path=path)).list_enis() == []
    with pytest.raises(Exception, match="not 100.65"):
        await LocalProvider("c", LocalVpc("100.65.0.0/24", state_path=path)).list_enis()


def test_network_flags() -> None:
    c = load_config(["--node-id", "n", "--network-cidr", "100.100.0.0/28", "--network-acquire-timeout", "2",
                     "--sandbox-image", "x:1"])
    assert (c.network_enabled, c.network_cidr, c.network_acquire_timeout_seconds, c.sandbox_image) == (
        True, "100.100.0.0/28", 2.0, "x:1")
    assert load_config(["--node-id", "n", "--no-network"]).network_enabled is False
    with pytest.raises(ConfigError, match="network_cidr"):
        load_config(["--node-id", "n", "--network-cidr", "100.100.0.0/30"])


def test_node_net_rendering() -> None:
    doc = {
        "nodeId": "n1", "provider": {"name": "local", "api_calls": 3},
        "counts": {"assigned": 1, "free": 1, "cooling": 1, "releasing": 0},
        "enis": [{"eni_id": "eni-1", "device_index": 1, "security_groups": ["sg-default"], "ips": [
            {"address": "100.64.0.5", "state": "assigned", "task_id": "task-a", "cooldown_left_s": 0.0},
            {"address": "100.64.0.6", "state": "cooling", "task_id": None, "cooldown_left_s": 12.5},
            {"address": "100.64.0.7", "state": "free", "task_id": None, "cooldown_left_s": 0.0}]}],
        "waiting": {}, "errors": {},
        "leaks": {"links": ["tn0123456789"], "rules": [], "namespaces": [], "enis": []},
    }
    text = net_map(doc)
    assert "assigned 1, free (warm) 1, cooling 1" in text
    assert "task-a" in text and "12.5s" in text
    assert "leaks found at the last GC: links tn0123456789" in text
