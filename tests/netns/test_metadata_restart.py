"""`restart-metadata` (agent/host/metadata.py `MetadataResource.restart`) against the kernel: a task's
metadata answers again from inside its namespace after the metadata namespace lost its pin (the old
namespace lives on, held by the listeners, with the task's veth in it: the stale `imds0` is re-made)
and after its links were deleted too; a second run changes nothing. Run under the engine lock."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.checkpoint import NetworkOutput, TaskCheckpoint
from agent.config import AgentConfig
from agent.host.metadata import MetadataResource
from agent.metrics import AgentMetrics
from imds.identity import TaskIdentity
from netns.metadata import CONTAINER_IFNAME, IMDS_ADDRESS, METADATA_NETNS_PREFIX, MetadataNetwork, meta_ifname
from netns.wiring import unpin_netns_path
from tests.netns.world import World, sh, socket_in
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ADDRESS = "10.41.0.1"


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"tmr{os.getpid() % 10000}-")
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
async def resource(tmp_path: Path) -> AsyncIterator[MetadataResource]:
    node = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    res = MetadataResource(AgentConfig(node_id=node, state_dir=tmp_path, imds_token_dir=tmp_path / "tokens"),
                           AgentMetrics())
    res.host.path = MetadataNetwork(node, tmp_path / "netns")
    await res.start([])
    try:
        yield res
    finally:
        await res.stop()
        await asyncio.to_thread(res.host.path.remove_namespace)


def ask(netns_path: str, path: str = "/latest/meta-data/instance-id") -> str:
    s = socket_in(netns_path)
    s.settimeout(3)
    try:
        s.connect((IMDS_ADDRESS, 80))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {IMDS_ADDRESS}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    finally:
        s.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body


def link_names(path: str) -> list[str]:
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


async def started_task(res: MetadataResource, world: World, task_id: str) -> tuple[str, dict[str, TaskCheckpoint]]:
    """A namespace playing a wired container, attached and served as the metadata step does."""
    netns = world.container(task_id[-1])
    sh("ip", "-n", f"{world.prefix}c{task_id[-1]}", "addr", "add", f"{ADDRESS}/32", "dev", "lo")
    # Blocking netlink: off the event loop, as the agent does.
    link = await asyncio.to_thread(res.host.path.attach, task_id, netns, ADDRESS)
    imds, ecs = await asyncio.to_thread(res.host.path.listeners, task_id, False)
    await res.host.service.add_task(TaskIdentity(
        task_id=task_id, job_id="j1", role_arn=None, ipv4=ADDRESS, mac="02:00:00:00:00:01", hostname="h",
        instance_id=task_id, instance_type="m5.large", availability_zone="us-east-1a", region="us-east-1",
        account_id="123456789012", v1_allowed=True, ecs_token=secrets.token_hex(20)), imds, ecs)
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, accepted_at=1.0, container=ContainerSpec(image="busybox"))
    record = TaskCheckpoint(assignment=a, state=TaskState.STARTED)
    record.outputs.network = NetworkOutput(address=ADDRESS, netns_path=netns)
    record.resources["imds"] = {"link": link}
    return netns, {task_id: record}


async def test_an_unpinned_namespace_is_re_created_and_the_stale_peer_re_made(
        resource: MetadataResource, world: World) -> None:
    netns, tasks = await started_task(resource, world, "task-a")
    assert ask(netns) == "task-a"
    old_inode = os.stat(resource.host.path.path).st_ino
    # Unpinned only: the listeners keep the old namespace alive, the task's veth with it.
    unpin_netns_path(resource.host.path.path, METADATA_NETNS_PREFIX)
    assert not resource.host.path.pinned()

    result = await resource.restart(lambda: tasks)
    assert result == "metadata namespace re-created, service answered (kept), 1 task(s) re-wired, 0 unchanged"
    assert os.stat(resource.host.path.path).st_ino != old_inode
    assert ask(netns) == "task-a"  # through the new namespace's tm… and new listeners
    assert link_names(netns).count(CONTAINER_IFNAME) == 1
    assert await asyncio.to_thread(resource.host.path.links) == [meta_ifname("task-a")]
    again = await resource.restart(lambda: tasks)
    assert again == "metadata namespace adopted, service answered (kept), 0 task(s) re-wired, 1 unchanged"
    assert ask(netns) == "task-a"


async def test_deleted_links_and_pin_are_re_made(resource: MetadataResource, world: World) -> None:
    netns, tasks = await started_task(resource, world, "task-b")
    assert ask(netns) == "task-b"
    outside = MetadataNetwork(resource.host.path.owner, resource.host.path.path.parent)
    await asyncio.to_thread(outside.remove_namespace)  # from outside
    assert CONTAINER_IFNAME not in link_names(netns)  # its veth went with its tm…
    result = await resource.restart(lambda: tasks)
    assert result == "metadata namespace re-created, service answered (kept), 1 task(s) re-wired, 0 unchanged"
    assert ask(netns) == "task-b"
