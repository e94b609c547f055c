"""Image and container GC against the real engine: under disk pressure (the usage is injected — the
shared engine's disk is not filled) it removes the least recently used unused image and the exited
container of a finished task, never the image of a pending task nor one a container uses. Only
images built by this test (a unique label) are candidates: the engine is shared."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.checkpoint import TaskCheckpoint
from agent.config import AgentConfig
from agent.docker_api import LABEL_AGENT, LABEL_TASK, Docker
from agent.host.imagegc import ImageGcResource
from agent.metrics import AgentMetrics
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState

pytestmark = pytest.mark.integration

BASE = "127.0.0.1:5000/titus/busybox:latest"
GIB = 2**30


def pending(task_id: str, image: str) -> TaskCheckpoint:
    spec = ContainerSpec(image=image, resources=Resources(cpu=1))  # type: ignore[arg-type]
    return TaskCheckpoint(assignment=TaskAssignment(task_id=task_id, job_id="j", index=0, container=spec,
                                                    accepted_at=1.0), state=TaskState.ACCEPTED)


@pytest.fixture
def images(engine: docker.DockerClient) -> Any:
    run = uuid.uuid4().hex[:8]
    label = f"titus.test.imagegc={run}"
    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        engine.images.pull(BASE)
    tags = {}
    for name in ("used", "pending", "idle"):
        tag = f"titus-gc-test/{run}:{name}"
        dockerfile = f"FROM {BASE}\nLABEL titus.test.imagegc={run} which={name}\n".encode()
        engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
        tags[name] = tag
    yield run, label, tags
    for c in engine.containers.list(all=True, filters={"label": f"titus.test.imagegc={run}"}):
        c.remove(force=True)
    for tag in tags.values():
        try:
            engine.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


async def test_gc_under_pressure_against_the_engine(tmp_path: Path, engine: docker.DockerClient, images: Any) -> None:
    run, label, tags = images
    node = f"gc-test-{run}"
    exited = engine.containers.create(tags["used"], ["true"], network_mode="none",
                                      labels={LABEL_AGENT: node, LABEL_TASK: "t-finished", "titus.test.imagegc": run})
    exited.start()
    exited.wait(timeout=30)
    d = Docker()
    metrics = AgentMetrics()
    try:
        config = AgentConfig(node_id=node, state_dir=tmp_path, container_retention_seconds=3600.0)
        gc = ImageGcResource(config, d, metrics, usage=lambda: (90.0, 100 * GIB), image_label=label)
        tasks = {"t-pending": pending("t-pending", tags["pending"])}
        await gc.reconcile(tasks)
        p = await gc.run(tasks)
        assert p.pressure
        left = {t for i in engine.images.list(filters={"label": label}) for t in i.tags}
        assert left == {tags["used"], tags["pending"]}  # idle removed; the others used / pending
        assert [c.id for c in p.containers] == [exited.id]  # the finished task's container, under pressure
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(exited.id)
        assert metrics.image_gc_images_removed.labels(trigger="pressure")._value.get() == 1
        assert metrics.image_gc_containers_removed._value.get() == 1
        assert metrics.image_gc_bytes_reclaimed._value.get() > 0
        # next round: nothing uses "used" any more; "pending" is still a pending launch
        p = await gc.run(tasks)
        left = {t for i in engine.images.list(filters={"label": label}) for t in i.tags}
        assert left == {tags["pending"]}
        # without pressure and with every image just seen, the age rule removes nothing
        quiet = ImageGcResource(config, d, metrics, usage=lambda: (30.0, 100 * GIB), image_label=label)
        assert (await quiet.run({})).images == []
        assert {t for i in engine.images.list(filters={"label": label}) for t in i.tags} == {tags["pending"]}
    finally:
        d.pool.shutdown(wait=False)
