"""The `restart-metadata` remediation's logic (agent/host/metadata.py `MetadataResource.restart`) with
a fake namespace (netns/metadata.py is exercised for real in tests/netns/test_metadata_restart.py)
and the real metadata service on its thread: which tasks are re-wired and served on new listeners,
which are left alone, a service whose loop is stuck restarted, per-task failures collected, and
the result line."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import NetworkOutput, TaskCheckpoint
from agent.config import AgentConfig
from agent.host.metadata import MetadataResource, RestartIncomplete, restart_summary
from agent.metrics import AgentMetrics
from agent.playbooks import Playbooks
from imds.identity import TaskIdentity
from netns.errors import WiringError
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState


class FakePath:
    """The metadata namespace (netns/metadata.py): pinned or not, each task's `tm…` ifindex, and
    real listening sockets on loopback (the service serves them for real)."""

    def __init__(self) -> None:
        self.is_pinned = True
        self.created = 0
        self.ifindex: dict[str, int] = {}
        self.attach_error: dict[str, Exception] = {}
        self.attached: list[tuple[str, bool]] = []

    def pinned(self) -> bool:
        return self.is_pinned

    def ensure(self) -> str:
        if not self.is_pinned:
            self.is_pinned, self.created = True, self.created + 1
        return "/run/netns/titusmd-x"

    def attach(self, task_id: str, netns_path: str, address: str, *, replace_stale_peer: bool = False) -> dict[str, Any]:
        self.attached.append((task_id, replace_stale_peer))
        if task_id in self.attach_error:
            raise self.attach_error[task_id]
        return {"meta_ifindex": self.ifindex.setdefault(task_id, 10 + len(self.ifindex))}

    def listeners(self, task_id: str, ecs: bool = True) -> tuple[list[socket.socket], list[socket.socket]]:
        def one() -> socket.socket:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4)
            s.setblocking(False)
            return s
        return [one()], ([one()] if ecs else [])


def identity(task_id: str, role: str | None = "arn:aws:iam::123456789012:role/app") -> TaskIdentity:
    return TaskIdentity(task_id=task_id, job_id="j1", role_arn=role, ipv4="10.0.0.1", mac="02:00:00:00:00:01",
                        hostname="h", instance_id=task_id, instance_type="m5.large", availability_zone="us-east-1a",
                        region="us-east-1", account_id="123456789012", ecs_token=secrets.token_hex(20))


def record(task_id: str, state: TaskState = TaskState.STARTED, ifindex: int | None = 10,
           reason: FinishReason | None = None) -> TaskCheckpoint:
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, accepted_at=1.0, container=ContainerSpec(image="busybox"))
    r = TaskCheckpoint(assignment=a, state=state, reason=reason)
    r.outputs.network = NetworkOutput(address="10.0.0.1", netns_path=f"/run/netns/titus-{task_id}")
    if ifindex is not None:
        r.resources["imds"] = {"link": {"meta_ifname": f"tm-{task_id}", "meta_ifindex": ifindex}}
    return r


@pytest.fixture
def resource(tmp_path: Path) -> Iterator[MetadataResource]:
    res = MetadataResource(AgentConfig(node_id="n1", state_dir=tmp_path, imds_token_dir=tmp_path / "tokens"),
                           AgentMetrics())
    res.host.path = FakePath()  # type: ignore[assignment]
    res.host.service.start()
    try:
        yield res
    finally:
        res.host.service.stop()


def fake(res: MetadataResource) -> FakePath:
    path = res.host.path
    assert isinstance(path, FakePath)
    return path


async def serve(res: MetadataResource, task_id: str) -> None:
    imds, ecs = fake(res).listeners(task_id)
    fake(res).ifindex[task_id] = 10
    await res.host.service.add_task(identity(task_id), imds, ecs)


def listeners(res: MetadataResource) -> dict[str, list[str]]:
    return {t: v["listeners"] for t, v in res.host.service.snapshot().items()}


def test_result_line() -> None:
    assert restart_summary(True, False, 2, 0, []) == (
        "metadata namespace re-created, service answered (kept), 2 task(s) re-wired, 0 unchanged")
    assert restart_summary(False, True, 0, 1, ["t1: gone", "t2: no"]) == (
        "metadata namespace adopted, service restarted (it did not answer), 0 task(s) re-wired, 1 unchanged, "
        "2 failed: t1: gone; t2: no")


async def test_a_replaced_namespace_rewires_every_started_task_on_new_listeners(resource: MetadataResource) -> None:
    for t in ("t1", "t2", "t-ending", "t-killing"):
        await serve(resource, t)
    before = listeners(resource)
    fake(resource).is_pinned = False
    tasks = {"t1": record("t1"), "t2": record("t2"), "t-nolink": record("t-nolink", ifindex=None),
             "t-ending": record("t-ending", reason=FinishReason.FAILED),
             "t-killing": record("t-killing", TaskState.KILL_INITIATED)}
    result = await resource.restart(lambda: tasks)
    assert result == "metadata namespace re-created, service answered (kept), 2 task(s) re-wired, 0 unchanged"
    assert fake(resource).created == 1
    assert fake(resource).attached == [("t1", True), ("t2", True)]  # a stale imds0 is re-made
    after = listeners(resource)
    assert set(after) == set(before)
    assert after["t1"] != before["t1"] and after["t2"] != before["t2"]  # served on the new sockets
    assert after["t-ending"] == before["t-ending"]  # left to its teardown


async def test_intact_links_are_kept_and_a_re_made_link_is_re_served_once(resource: MetadataResource) -> None:
    await serve(resource, "t1")
    await serve(resource, "t2")
    tasks = {"t1": record("t1"), "t2": record("t2")}
    before = listeners(resource)
    assert await resource.restart(lambda: tasks) == (
        "metadata namespace adopted, service answered (kept), 0 task(s) re-wired, 2 unchanged")
    assert listeners(resource) == before  # nothing churned: no connection dropped, no credential re-fetched
    fake(resource).ifindex["t2"] = 99  # its tm… was re-made: the listeners' SO_BINDTODEVICE no longer matches
    assert "1 task(s) re-wired, 1 unchanged" in await resource.restart(lambda: tasks)
    after = listeners(resource)
    assert after["t1"] == before["t1"] and after["t2"] != before["t2"]
    assert "0 task(s) re-wired, 2 unchanged" in await resource.restart(lambda: tasks)  # safe to repeat


async def test_a_stuck_service_loop_is_restarted_and_serves_every_task_again(resource: MetadataResource) -> None:
    await serve(resource, "t1")
    await serve(resource, "t2")
    stuck, release = resource.host.service.loop, threading.Event()
    stuck.call_soon_threadsafe(release.wait)
    try:
        assert not resource.host.service.answers(timeout=0.2)
        result = await resource.restart(lambda: {"t1": record("t1"), "t2": record("t2")})
        assert result == ("metadata namespace adopted, service restarted (it did not answer), 2 task(s) re-wired, "
                          "0 unchanged")
        assert resource.host.service.loop is not stuck
        served = resource.host.service.snapshot()
        assert set(served) == {"t1", "t2"}
        assert served["t1"]["role_arn"] == "arn:aws:iam::123456789012:role/app"  # the identity it had
    finally:
        release.set()


async def test_per_task_failures_are_collected_and_fail_the_action(resource: MetadataResource) -> None:
    for t in ("t1", "t2"):
        await serve(resource, t)
    fake(resource).is_pinned = False
    fake(resource).attach_error["t1"] = WiringError("container namespace gone")
    tasks = {"t1": record("t1"), "t2": record("t2"), "t-unknown": record("t-unknown"),
             "t-launching": record("t-launching", TaskState.START_INITIATED)}
    with pytest.raises(RestartIncomplete) as e:
        await resource.restart(lambda: tasks)
    assert str(e.value) == (
        "metadata namespace re-created, service answered (kept), 1 task(s) re-wired, 0 unchanged, 2 failed: "
        "t-unknown: never served by this agent: no identity to serve it again with; t1: container namespace gone")
    assert "t2" in resource.host.service.snapshot()


async def test_the_playbook_runs_the_restart_and_says_unsupported_without_the_proxy(
        resource: MetadataResource) -> None:
    from agent.remediation import Unsupported

    class Agent:
        metadata: MetadataResource | None = resource

        def tasks(self) -> dict[str, TaskCheckpoint]:
            return {}

    agent = Agent()
    action = Playbooks(agent).actions()["restart-metadata"]  # type: ignore[arg-type]
    assert await action() == "metadata namespace adopted, service answered (kept), 0 task(s) re-wired, 0 unchanged"
    agent.metadata = None
    with pytest.raises(Unsupported):
        await action()
