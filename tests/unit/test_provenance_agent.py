"""Image provenance on the agent (docs/provenance.md): a pinned job is pulled and run by digest, an
unpinned one reports the digest the engine recorded for it; the container carries every provenance
label; the task's update reports the digest; the task's metadata serves its own provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.docker_api import Docker
from agent.host.security import HostSecurity
from agent.steps.base import LaunchContext
from agent.steps.container import ContainerStep
from agent.steps.image import ImageStep, repo_digest
from agent.steps.security import SecurityStep
from imds.service import META, render_static
from security.profiles import default_policy
from tests.imds.conftest import identity
from tests.security.hosts import ENGINE_PLAIN, fake_posture
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState

REF = "127.0.0.1:5000/titus/web:v1"
PINNED = "sha256:" + "1" * 64
LOCAL = "sha256:" + "2" * 64
PROVENANCE = {"source.commit": "abcdef1", "build.url": "https://ci.example.com/1"}


class FakeDocker(Docker):
    """The engine's image calls over a table of present references (each with its RepoDigests)."""

    def __init__(self, present: dict[str, list[str]]) -> None:
        super().__init__()
        self.present = present
        self.calls: list[tuple[str, str]] = []

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        self.calls.append(("inspect_image", ref))
        if ref not in self.present:
            return None
        return {"Id": "sha256:" + "f" * 64, "Architecture": "", "Os": "linux", "RepoDigests": self.present[ref]}

    async def pull(self, ref: str) -> None:
        self.calls.append(("pull", ref))
        self.present[ref] = [ref]


def context(docker: Docker, tmp_path: Path, digest: str | None) -> LaunchContext:
    spec = ContainerSpec(image=REF, resources=Resources(memory_mib=64))  # type: ignore[call-arg]
    a = TaskAssignment(task_id="t1", job_id="j1", index=0, container=spec, accepted_at=1.0, owner="me",
                       app_name="web", image_digest=digest, provenance=PROVENANCE)
    rec = TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED)
    store = CheckpointStore(tmp_path / "state")
    return LaunchContext(rec, docker=docker, node_id="n1", save=lambda: store.save(rec))


async def test_a_pinned_job_is_pulled_and_run_by_digest(tmp_path: Path) -> None:
    # The host has the tag, pointing at another (newer) image: the pin wins.
    docker = FakeDocker({REF: [f"127.0.0.1:5000/titus/web@{LOCAL}"]})
    ctx = context(docker, tmp_path, PINNED)
    await ImageStep().setup(ctx)
    by_digest = f"127.0.0.1:5000/titus/web@{PINNED}"
    assert docker.calls == [("inspect_image", by_digest), ("pull", by_digest), ("inspect_image", by_digest)]
    image = ctx.record.outputs.image
    assert image is not None and (image.ref, image.digest) == (by_digest, PINNED)
    assert ctx.record.to_update().image_digest == PINNED
    await SecurityStep(HostSecurity(default_policy(), fake_posture(ENGINE_PLAIN, tmp_path / "h", apparmor_on=False))
                       ).setup(ctx)
    options = ContainerStep()._options(ctx)
    assert options["image"] == by_digest
    assert {k: v for k, v in options["labels"].items() if k.startswith(("titus.image", "titus.source", "titus.build"))} == {
        "titus.image.ref": REF, "titus.image.digest": PINNED, "titus.source.commit": "abcdef1",
        "titus.build.url": "https://ci.example.com/1"}


async def test_an_unpinned_job_reports_what_the_engine_ran(tmp_path: Path) -> None:
    docker = FakeDocker({REF: ["other.example/web@" + PINNED, f"127.0.0.1:5000/titus/web@{LOCAL}"]})
    ctx = context(docker, tmp_path, None)
    await ImageStep().setup(ctx)
    assert docker.calls == [("inspect_image", REF)]
    assert ctx.record.outputs.image is not None and ctx.record.outputs.image.digest == LOCAL
    assert ctx.record.to_update().image_digest == LOCAL


def test_a_local_only_image_has_no_digest() -> None:
    assert repo_digest({"RepoDigests": []}, REF) is None
    assert repo_digest({}, f"127.0.0.1:5000/titus/web@{PINNED}") == PINNED


@pytest.mark.parametrize("with_provenance", [True, False])
def test_metadata_serves_the_tasks_own_provenance(with_provenance: bool) -> None:
    pairs = (("image", REF), ("imageDigest", PINNED), *PROVENANCE.items()) if with_provenance else ()
    table = render_static(identity("t1", provenance=pairs), None, 0.0)
    listing = table[META].body.decode().splitlines()
    if with_provenance:
        assert "titus/" in listing and table[META + "titus/"].body == b"provenance"
        doc = json.loads(table[META + "titus/provenance"].body)
        assert doc == {"image": REF, "imageDigest": PINNED, **PROVENANCE}
    else:  # a task launched without it: the path does not exist (404 like any unknown path)
        assert "titus/" not in listing and META + "titus/provenance" not in table
