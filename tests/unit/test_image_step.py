"""ImageStep with a fake engine: a present image is not pulled, an absent one is, `always_pull` pulls
anyway; a registry's "not found" is the user's fault (FAILED), other pull errors are the platform's
(CRASHED) after the retries; teardown never touches the image."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import titus_common.retry as image_module
from agent.checkpoint import TaskCheckpoint
from agent.docker_api import DockerError, DockerUnavailable
from agent.steps.base import LaunchContext, StepError
from agent.steps.image import ImageStep
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState

REF = "registry.example/app:1.2"
IMAGE_ID = "sha256:" + "ab" * 32


class FakeDocker:
    """inspect_image / pull against a set of present images; `pull_errors` are raised by the next pulls."""

    def __init__(self, present: bool = False, pull_errors: list[Exception] | None = None) -> None:
        self.present = {REF} if present else set()
        self.pull_errors = list(pull_errors or [])
        self.calls: list[tuple[str, str]] = []
        self.pull_lands = True  # a successful pull makes the image present

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        self.calls.append(("inspect_image", ref))
        return {"Id": IMAGE_ID, "RepoTags": [ref]} if ref in self.present else None

    async def pull(self, ref: str) -> None:
        self.calls.append(("pull", ref))
        if self.pull_errors:
            raise self.pull_errors.pop(0)
        if self.pull_lands:
            self.present.add(ref)

    def pulls(self) -> int:
        return sum(1 for call, _ in self.calls if call == "pull")


class Ctx:
    def __init__(self, docker: FakeDocker) -> None:
        a = TaskAssignment(task_id="t1", job_id="j1", index=0, container=ContainerSpec(image=REF), accepted_at=1.0)
        self.saves = 0
        self.ctx = LaunchContext(
            TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED), docker,  # type: ignore[arg-type]
            "n1", save=self._save,
        )

    def _save(self) -> None:
        self.saves += 1


class RecordedSleeps:
    """Stands in for the asyncio module inside agent.steps.image: records back-off delays, waits none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordedSleeps:
    recorded = RecordedSleeps()
    monkeypatch.setattr(image_module, "asyncio", recorded)
    return recorded


async def test_present_image_is_not_pulled(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(present=True)
    c = Ctx(docker)
    await ImageStep().setup(c.ctx)
    assert docker.calls == [("inspect_image", REF)]
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID}
    # Nothing acquired, so no checkpoint write of its own: the next step's write carries the record.
    assert c.saves == 0 and sleeps.delays == []


async def test_absent_image_is_pulled_then_recorded(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(present=False)
    c = Ctx(docker)
    await ImageStep().setup(c.ctx)
    assert docker.calls == [("inspect_image", REF), ("pull", REF), ("inspect_image", REF)]
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID}
    assert c.saves == 0 and sleeps.delays == []


async def test_an_image_found_present_is_not_asked_about_again_within_the_ttl(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(present=True)
    now = [100.0]
    step = ImageStep(present_ttl=30.0, clock=lambda: now[0])
    await step.setup(Ctx(docker).ctx)
    now[0] += 29.0
    second = Ctx(docker)
    await step.setup(second.ctx)
    assert docker.calls == [("inspect_image", REF)]  # the second launch made no engine call
    assert second.ctx.record.resources["image"] == {"image_id": IMAGE_ID}
    now[0] += 2.0  # past the TTL: asked again
    await step.setup(Ctx(docker).ctx)
    assert docker.calls == [("inspect_image", REF)] * 2
    # always_pull never trusts the memory.
    pulling = ImageStep(always_pull=True, clock=lambda: now[0])
    await pulling.setup(Ctx(docker).ctx)
    await pulling.setup(Ctx(docker).ctx)
    assert docker.calls.count(("pull", REF)) == 2


async def test_always_pull_pulls_a_present_image(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(present=True)
    c = Ctx(docker)
    await ImageStep(always_pull=True).setup(c.ctx)
    assert docker.calls == [("pull", REF), ("inspect_image", REF)]
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID}


@pytest.mark.parametrize("text", [
    "manifest for registry.example/app:1.2 not found",
    "manifest unknown: manifest unknown",
    "repository registry.example/app does not exist or may require 'docker login'",
    "Error: repository name not known to registry",
    "NOT FOUND",  # matched whatever the case
])
async def test_not_found_is_failed_without_retry(sleeps: RecordedSleeps, text: str) -> None:
    docker = FakeDocker(pull_errors=[DockerError(404, text)])
    c = Ctx(docker)
    with pytest.raises(StepError) as e:
        await ImageStep(attempts=3).setup(c.ctx)
    assert e.value.reason is FinishReason.FAILED
    assert e.value.message.startswith(f"image {REF} not found in its registry: ")
    assert docker.pulls() == 1 and sleeps.delays == []  # no retry for an image that does not exist
    assert "image_id" not in c.ctx.record.resources.get("image", {})


async def test_not_found_on_a_later_attempt_is_still_failed(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(pull_errors=[DockerError(500, "registry timeout"), DockerError(404, "manifest unknown")])
    with pytest.raises(StepError) as e:
        await ImageStep(attempts=3, backoff=1.0).setup(Ctx(docker).ctx)
    assert e.value.reason is FinishReason.FAILED
    assert docker.pulls() == 2 and sleeps.delays == [1.0]


async def test_other_errors_are_crashed_after_all_attempts(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(pull_errors=[DockerError(500, f"registry said 500 (#{i})") for i in range(1, 4)])
    c = Ctx(docker)
    with pytest.raises(StepError) as e:
        await ImageStep(attempts=3, backoff=0.5).setup(c.ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == f"pulling image {REF} failed 3 times: registry said 500 (#3)"
    assert docker.pulls() == 3
    assert sleeps.delays == [0.5, 1.0]  # doubling, and none after the last attempt
    assert "image_id" not in c.ctx.record.resources.get("image", {})


async def test_a_transient_error_is_retried_and_then_succeeds(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(pull_errors=[DockerError(None, '{"error": "unexpected EOF"}')])
    c = Ctx(docker)
    await ImageStep(attempts=3, backoff=2.0).setup(c.ctx)
    assert docker.pulls() == 2 and sleeps.delays == [2.0]
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID}


async def test_backoff_zero_needs_no_patching() -> None:
    # The back-off is injectable: with 0 the retries cost no time even without the fixture.
    docker = FakeDocker(pull_errors=[DockerError(500, "x"), DockerError(500, "y")])
    await ImageStep(attempts=3, backoff=0.0).setup(Ctx(docker).ctx)
    assert docker.pulls() == 3


async def test_engine_unavailable_is_crashed(sleeps: RecordedSleeps) -> None:
    class Down(FakeDocker):
        async def inspect_image(self, ref: str) -> dict[str, Any] | None:
            raise DockerUnavailable("Docker engine unreachable: socket gone")

    with pytest.raises(StepError) as e:
        await ImageStep().setup(Ctx(Down()).ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == f"image {REF}: Docker engine unreachable: socket gone"


async def test_engine_unavailable_during_pull_is_crashed(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker(pull_errors=[DockerUnavailable("Docker engine unreachable: timed out")])
    with pytest.raises(StepError) as e:
        await ImageStep(attempts=3).setup(Ctx(docker).ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert "Docker engine unreachable" in e.value.message


async def test_image_missing_after_a_successful_pull_is_crashed(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker()
    docker.pull_lands = False
    with pytest.raises(StepError) as e:
        await ImageStep().setup(Ctx(docker).ctx)
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == f"image {REF} is still missing after a successful pull"


async def test_setup_is_idempotent(sleeps: RecordedSleeps) -> None:
    docker = FakeDocker()
    c = Ctx(docker)
    step = ImageStep()
    await step.setup(c.ctx)
    await step.setup(c.ctx)  # a re-run after an agent restart finds the image
    assert docker.pulls() == 1
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID}


async def test_teardown_is_a_no_op() -> None:
    class Untouchable(FakeDocker):
        def __getattribute__(self, name: str) -> Any:
            if name in ("remove", "remove_image", "pull", "inspect_image"):
                raise AssertionError(f"teardown used the engine ({name})")
            return super().__getattribute__(name)

    c = Ctx(Untouchable())
    c.ctx.record.resources["image"] = {"image_id": IMAGE_ID}
    step = ImageStep()
    await step.teardown(c.ctx)
    await step.teardown(c.ctx)  # repeated
    assert c.ctx.record.resources["image"] == {"image_id": IMAGE_ID} and c.saves == 0
    await step.teardown(Ctx(Untouchable()).ctx)  # and with nothing set up


@pytest.mark.parametrize("arch,os_name,refused", [("amd64", "linux", False), ("arm64", "linux", True),
                                                  ("", "linux", False), ("amd64", "windows", True)])
async def test_an_image_for_another_platform_is_the_users_error(
    sleeps: RecordedSleeps, arch: str, os_name: str, refused: bool
) -> None:
    docker = FakeDocker(present=True)
    real = docker.inspect_image

    async def inspect(ref: str) -> dict[str, Any] | None:
        image = await real(ref)
        return None if image is None else {**image, "Architecture": arch, "Os": os_name}

    docker.inspect_image = inspect  # type: ignore[method-assign]
    c = Ctx(docker)
    if not refused:
        await ImageStep(host_arch="amd64").setup(c.ctx)
        return
    with pytest.raises(StepError) as e:
        await ImageStep(host_arch="amd64").setup(c.ctx)
    assert e.value.reason is FinishReason.FAILED and "this host runs linux/amd64" in e.value.message
