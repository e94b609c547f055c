"""TaskRunner paths that need no engine: resuming a finish interrupted by an agent restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.runner import TaskRunner
from agent.steps.base import LaunchContext
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState


class RecordingStep:
    name = "recording"

    def __init__(self) -> None:
        self.teardowns = 0

    async def setup(self, ctx: LaunchContext) -> None:
        raise AssertionError("a decided task must not be set up again")

    async def teardown(self, ctx: LaunchContext) -> None:
        self.teardowns += 1


async def test_outcome_recorded_before_teardown_survives_restart(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assignment = TaskAssignment(
        task_id="t1", job_id="j1", index=0, container=ContainerSpec(image="busybox"), accepted_at=1.0
    )
    # What a kill -9 between "outcome decided" and "teardown done" leaves on disk.
    record = TaskCheckpoint(
        assignment=assignment,
        state=TaskState.STARTED,
        timestamps={TaskState.STARTED: 2.0},
        reason=FinishReason.FAILED,
        message="exited with code 3",
        exit_code=3,
        container_id="gone",
    )
    store.save(record)
    (loaded,) = store.load_all()
    step = RecordingStep()
    metrics = AgentMetrics()
    changes: list[Any] = []
    runner = TaskRunner(
        loaded, Pipeline([step], metrics), docker=None, store=store, node_id="n1",  # type: ignore[arg-type]
        metrics=metrics, on_change=changes.append,
    )
    await runner.run()
    assert step.teardowns == 1
    (final,) = store.load_all()
    assert (final.state, final.reason, final.exit_code, final.message) == (
        TaskState.FINISHED, FinishReason.FAILED, 3, "exited with code 3"
    )
    assert final.unreported and changes


# ---- the life of a task, with a fake engine and fake steps -----------------------------------------

import asyncio  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

import agent.runner as runner_module  # noqa: E402
from agent.docker_api import DockerError, DockerUnavailable  # noqa: E402
from agent.steps.base import StepError  # noqa: E402

GRACE = 7.0
CONTAINER = "c0ffee"


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for a condition, polling; fail (never pass) if it does not come within `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FakeEngine:
    """The engine calls the runner makes: inspect (scriptable: running, exited, unreachable) and stop
    (records the call, then the container exits as SIGTERM would end it)."""

    def __init__(self) -> None:
        self.running = True
        self.exit_code = 0
        self.failures: list[Exception] = []  # raised by the next inspects, in order
        self.inspects = 0
        self.failed_inspects = 0
        self.ok_inspects = 0
        self.stops: list[tuple[str, float]] = []
        self.on_stop: Callable[[], None] = lambda: None

    def exit(self, code: int) -> None:
        self.running, self.exit_code = False, code

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        assert container_id == CONTAINER
        self.inspects += 1
        if self.failures:
            self.failed_inspects += 1
            raise self.failures.pop(0)
        self.ok_inspects += 1
        return {"State": {"Running": self.running, "ExitCode": 0 if self.running else self.exit_code,
                          "OOMKilled": False, "Error": ""}}

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        self.stops.append((container_id, grace_seconds))
        self.on_stop()
        self.exit(143)


class FakeStep:
    def __init__(self, name: str, journal: list[str], fail: Exception | None = None) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail

    async def setup(self, ctx: LaunchContext) -> None:
        self.journal.append(f"setup {self.name}")
        if self.fail is not None:
            raise self.fail
        ctx.resources(self.name)["made"] = True
        ctx.save()

    async def teardown(self, ctx: LaunchContext) -> None:
        self.journal.append(f"teardown {self.name}")


class FakeContainerStep(FakeStep):
    """What the container step leaves behind: the container id and its start time."""

    def __init__(self, journal: list[str], started_at: float | None = None) -> None:
        super().__init__("container", journal)
        self.started_at = started_at

    async def setup(self, ctx: LaunchContext) -> None:
        self.journal.append("setup container")
        ctx.record.container_id = CONTAINER
        ctx.resources(self.name)["started_at"] = self.started_at if self.started_at is not None else time.time()
        ctx.record.outputs.container_started_at = ctx.resources(self.name)["started_at"]
        ctx.save()


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        runtime_limit: float | None = None,
        steps: list[Any] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.store = CheckpointStore(tmp_path)
        self.engine = FakeEngine()
        self.journal: list[str] = []
        self.steps = steps if steps is not None else [
            FakeStep("image", self.journal), FakeContainerStep(self.journal, started_at)
        ]
        for s in self.steps:
            s.journal = self.journal
        assignment = TaskAssignment(
            task_id="t1", job_id="j1", index=0, accepted_at=time.time(),
            container=ContainerSpec(image="busybox", kill_grace_seconds=GRACE),
            runtime_limit_seconds=runtime_limit,
        )
        record = TaskCheckpoint(assignment=assignment, state=TaskState.LAUNCHED)
        self.metrics = AgentMetrics()
        # Each change as the runner announced it, next to what the store held at that moment.
        self.changes: list[tuple[TaskCheckpoint, TaskCheckpoint]] = []
        self.runner = TaskRunner(
            record, Pipeline(self.steps, self.metrics), docker=self.engine,  # type: ignore[arg-type]
            store=self.store, node_id="n1", metrics=self.metrics, on_change=self._changed,
        )
        self.task: asyncio.Task[None] | None = None

    def on_disk(self) -> TaskCheckpoint:
        (record,) = self.store.load_all()
        return record

    def _changed(self, record: TaskCheckpoint) -> None:
        self.changes.append((record.model_copy(deep=True), self.on_disk()))

    def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run())

    async def started(self) -> None:
        """Running and supervising: Started, and the engine has said the container runs."""
        await until(lambda: self.runner.record.state is TaskState.STARTED and self.engine.ok_inspects >= 1,
                    "the task to be Started and inspected")
        assert self.task is not None and not self.task.done()

    async def finished(self) -> TaskCheckpoint:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=5.0)
        final = self.on_disk()
        assert final == self.runner.record  # the last word is on disk
        assert final.state is TaskState.FINISHED and final.unreported
        return final

    def states(self) -> list[TaskState]:
        return [announced.state for announced, _ in self.changes]

    def assert_every_transition_checkpointed(self) -> None:
        assert self.changes
        for announced, stored in self.changes:
            assert stored == announced  # saved before it was announced
        revisions = [announced.revision for announced, _ in self.changes]
        assert revisions == list(range(1, len(self.changes) + 1))
        for announced, _ in self.changes:
            assert announced.state in announced.timestamps


async def test_normal_exit_finishes_normal(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.start()
    await h.started()
    assert h.on_disk().state is TaskState.STARTED and h.on_disk().reason is None
    h.engine.exit(0)
    h.runner.container_may_have_exited()
    final = await h.finished()
    assert (final.reason, final.exit_code, final.message) == (FinishReason.NORMAL, 0, "exited with code 0")
    assert h.states() == [TaskState.START_INITIATED, TaskState.STARTED, TaskState.FINISHED]
    assert h.journal == ["setup image", "setup container", "teardown container", "teardown image"]
    assert h.engine.stops == []
    assert final.resources["image"] == {"made": True} and final.container_id == CONTAINER
    h.assert_every_transition_checkpointed()
    assert h.metrics.registry.get_sample_value("titus_agent_tasks_finished_total", {"reason": "normal"}) == 1


async def test_non_zero_exit_finishes_failed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.start()
    await h.started()
    h.engine.exit(3)
    h.runner.container_may_have_exited()
    final = await h.finished()
    assert (final.reason, final.exit_code, final.message) == (FinishReason.FAILED, 3, "exited with code 3")
    assert h.engine.stops == []
    h.assert_every_transition_checkpointed()


async def test_kill_request_goes_through_kill_initiated_and_ends_killed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    at_stop: list[TaskCheckpoint] = []
    h.engine.on_stop = lambda: at_stop.append(h.on_disk())
    h.start()
    await h.started()
    h.runner.request_kill()
    final = await h.finished()
    assert h.engine.stops == [(CONTAINER, GRACE)]  # the job's grace period
    # When stop was called, KillInitiated (and the request) was already on disk.
    (stored,) = at_stop
    assert stored.state is TaskState.KILL_INITIATED and stored.kill_requested and stored.reason is None
    assert (final.reason, final.message, final.exit_code) == (FinishReason.KILLED, "killed on request", 143)
    assert h.states() == [TaskState.START_INITIATED, TaskState.STARTED, TaskState.KILL_INITIATED,
                          TaskState.FINISHED]
    assert final.timestamps[TaskState.KILL_INITIATED] <= final.timestamps[TaskState.FINISHED]
    assert h.journal[-2:] == ["teardown container", "teardown image"]
    h.assert_every_transition_checkpointed()


async def test_kill_requested_twice_stops_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.engine.on_stop = lambda: h.runner.request_kill()  # a second kill while the first is under way
    h.start()
    await h.started()
    h.runner.request_kill()
    final = await h.finished()
    assert h.engine.stops == [(CONTAINER, GRACE)] and final.reason is FinishReason.KILLED


async def test_kill_before_start_never_launches(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.runner.record.kill_requested = True
    h.start()
    final = await h.finished()
    assert (final.reason, final.message) == (FinishReason.KILLED, "killed before it started")
    assert h.journal == ["teardown container", "teardown image"]  # nothing set up, all torn down
    assert h.engine.inspects == 0 and h.engine.stops == []
    assert TaskState.STARTED not in final.timestamps
    h.assert_every_transition_checkpointed()


async def test_runtime_limit_kills_with_the_limit_reason(tmp_path: Path) -> None:
    h = Harness(tmp_path, runtime_limit=0.05)
    at_stop: list[TaskCheckpoint] = []
    h.engine.on_stop = lambda: at_stop.append(h.on_disk())
    h.start()
    final = await h.finished()  # the runner's own timer fires; nothing here waits for it
    assert h.engine.stops == [(CONTAINER, GRACE)]
    (stored,) = at_stop
    assert stored.runtime_limit_hit and stored.state is TaskState.KILL_INITIATED and not stored.kill_requested
    assert (final.reason, final.message) == (FinishReason.FAILED, "runtime limit of 0.05s exceeded")
    assert final.runtime_limit_hit and not final.kill_requested
    assert h.states() == [TaskState.START_INITIATED, TaskState.STARTED, TaskState.KILL_INITIATED,
                          TaskState.FINISHED]
    h.assert_every_transition_checkpointed()


async def test_runtime_limit_already_past_kills_at_once(tmp_path: Path) -> None:
    # The container started (per the container step) longer ago than the limit: no waiting at all.
    h = Harness(tmp_path, runtime_limit=30, started_at=time.time() - 60)
    h.start()
    final = await h.finished()
    assert h.engine.stops == [(CONTAINER, GRACE)]
    assert (final.reason, final.message) == (FinishReason.FAILED, "runtime limit of 30s exceeded")


async def test_kill_request_outranks_the_runtime_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, runtime_limit=3600)
    h.start()
    await h.started()
    h.runner.request_kill()
    final = await h.finished()
    assert final.reason is FinishReason.KILLED and not final.runtime_limit_hit


async def test_network_lost_stops_and_crashes_with_the_message(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.start()
    await h.started()
    h.runner.network_lost("the network sandbox of t1 died")
    h.runner.network_lost("a second report")  # ignored: already ending
    final = await h.finished()
    assert h.engine.stops == [(CONTAINER, GRACE)]
    assert (final.reason, final.message) == (FinishReason.CRASHED, "the network sandbox of t1 died")
    assert not final.kill_requested
    assert h.states() == [TaskState.START_INITIATED, TaskState.STARTED, TaskState.KILL_INITIATED,
                          TaskState.FINISHED]
    h.assert_every_transition_checkpointed()


class _NoBackoff:
    """Stands in for the asyncio module inside agent.runner: its back-off sleeps are recorded and
    only yield, so the retries happen at once. Everything else is the real asyncio."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def test_engine_unavailable_during_supervise_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backoff = _NoBackoff()
    monkeypatch.setattr(runner_module, "asyncio", backoff)
    h = Harness(tmp_path)
    h.start()
    await h.started()
    # The engine goes away while the container runs: the runner keeps asking and decides nothing.
    ok_before = h.engine.ok_inspects
    h.engine.failures = [DockerUnavailable("socket gone")] * 5 + [DockerError(500, "engine restarting")] * 5
    h.runner.container_may_have_exited()  # a wake-up makes it look
    await until(lambda: not h.engine.failures, "the runner to retry through the outage")
    assert h.engine.failed_inspects == 10
    assert not h.task.done()  # type: ignore[union-attr]
    record = h.on_disk()
    assert record.state is TaskState.STARTED and record.reason is None and record.exit_code is None
    assert h.engine.stops == [] and h.journal[-1] == "setup container"  # no kill, no teardown
    assert len(backoff.delays) >= 10 and all(d > 0 for d in backoff.delays)
    assert max(backoff.delays) <= runner_module.DOCKER_RETRY_MAX
    # The engine answers again (the failures are used up first), the container still runs:
    # supervision carries on and waits for the container.
    await until(lambda: h.engine.ok_inspects > ok_before, "an answered inspect after the outage")
    assert not h.task.done() and h.runner.record.state is TaskState.STARTED  # type: ignore[union-attr]
    h.engine.exit(0)
    h.runner.container_may_have_exited()
    final = await h.finished()
    assert (final.reason, final.exit_code) == (FinishReason.NORMAL, 0)
    assert h.states() == [TaskState.START_INITIATED, TaskState.STARTED, TaskState.FINISHED]
    h.assert_every_transition_checkpointed()


@pytest.mark.parametrize("error,reason,message", [
    (StepError("image busybox not found", FinishReason.FAILED), FinishReason.FAILED,
     "network step: image busybox not found"),
    (StepError("no IP left"), FinishReason.CRASHED, "network step: no IP left"),
    (RuntimeError("bug"), FinishReason.CRASHED, "network step: unexpected error: RuntimeError('bug')"),
])
async def test_setup_failure_ends_with_its_reason_after_full_teardown(
    tmp_path: Path, error: Exception, reason: FinishReason, message: str
) -> None:
    journal: list[str] = []
    steps = [FakeStep("image", journal), FakeStep("network", journal, fail=error), FakeContainerStep(journal)]
    h = Harness(tmp_path, steps=steps)
    h.start()
    final = await h.finished()
    assert (final.reason, final.message, final.exit_code) == (reason, message, None)
    assert h.journal == ["setup image", "setup network", "teardown container", "teardown network", "teardown image"]
    assert h.engine.inspects == 0 and final.container_id is None
    assert h.states() == [TaskState.START_INITIATED, TaskState.FINISHED]
    assert TaskState.STARTED not in final.timestamps
    h.assert_every_transition_checkpointed()


async def test_teardown_problems_are_added_to_the_message(tmp_path: Path) -> None:
    class LeakyStep(FakeStep):
        async def teardown(self, ctx: LaunchContext) -> None:
            await super().teardown(ctx)
            raise RuntimeError("veth busy")

    journal: list[str] = []
    h = Harness(tmp_path, steps=[LeakyStep("network", journal), FakeContainerStep(journal)])
    h.start()
    await h.started()
    h.engine.exit(0)
    h.runner.container_may_have_exited()
    final = await h.finished()
    assert final.reason is FinishReason.NORMAL
    assert final.message == "exited with code 0 [teardown left: network: veth busy]"


async def test_restart_readopts_a_running_task_without_setting_it_up(tmp_path: Path) -> None:
    class ReadoptStep(FakeStep):
        async def readopt(self, ctx: LaunchContext) -> None:
            self.journal.append(f"readopt {self.name}")

    journal: list[str] = []
    h = Harness(tmp_path, steps=[ReadoptStep("imds", journal), FakeContainerStep(journal)])
    rec = h.runner.record
    rec.state, rec.container_id = TaskState.STARTED, CONTAINER
    rec.timestamps[TaskState.STARTED] = time.time()
    h.start()
    await until(lambda: h.engine.ok_inspects >= 1, "supervision of the re-adopted task")
    assert h.journal == ["readopt imds"]  # no setup ran again
    h.engine.exit(0)
    h.runner.container_may_have_exited()
    final = await h.finished()
    assert final.reason is FinishReason.NORMAL
    assert h.journal == ["readopt imds", "teardown container", "teardown imds"]
