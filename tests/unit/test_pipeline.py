"""Pipeline: setup in order, teardown in reverse for every step (the failed one and the ones that never
ran included), StepError reasons and messages, teardown/readopt never raise and return the problems."""

from __future__ import annotations

import pytest

from agent.checkpoint import TaskCheckpoint
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.steps.base import LaunchContext, StepError
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState


class FakeStep:
    """Records every call in a shared journal as (phase, name); `fail_setup` / `fail_teardown` is raised."""

    def __init__(
        self,
        name: str,
        journal: list[tuple[str, str]],
        fail_setup: BaseException | None = None,
        fail_teardown: BaseException | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail_setup = fail_setup
        self.fail_teardown = fail_teardown

    async def setup(self, ctx: LaunchContext) -> None:
        self.journal.append(("setup", self.name))
        if self.fail_setup is not None:
            raise self.fail_setup

    async def teardown(self, ctx: LaunchContext) -> None:
        self.journal.append(("teardown", self.name))
        if self.fail_teardown is not None:
            raise self.fail_teardown


class FakeReadoptStep(FakeStep):
    def __init__(self, *args: object, fail_readopt: BaseException | None = None, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.fail_readopt = fail_readopt

    async def readopt(self, ctx: LaunchContext) -> None:
        self.journal.append(("readopt", self.name))
        if self.fail_readopt is not None:
            raise self.fail_readopt


def context() -> LaunchContext:
    a = TaskAssignment(task_id="t1", job_id="j1", index=0, container=ContainerSpec(image="busybox"), accepted_at=1.0)
    record = TaskCheckpoint(assignment=a, state=TaskState.START_INITIATED)
    return LaunchContext(record, docker=None, node_id="n1", save=lambda: None)  # type: ignore[arg-type]


def failures(metrics: AgentMetrics, step: str) -> float:
    return metrics.registry.get_sample_value("titus_agent_step_failures_total", {"step": step}) or 0.0


def observations(metrics: AgentMetrics, step: str, phase: str) -> float:
    return metrics.registry.get_sample_value(
        "titus_agent_step_seconds_count", {"step": step, "phase": phase}
    ) or 0.0


async def test_setup_runs_in_order_and_teardown_in_reverse() -> None:
    journal: list[tuple[str, str]] = []
    metrics = AgentMetrics()
    p = Pipeline([FakeStep(n, journal) for n in ("a", "b", "c")], metrics)
    ctx = context()
    await p.setup(ctx)
    assert journal == [("setup", "a"), ("setup", "b"), ("setup", "c")]
    journal.clear()
    assert await p.teardown(ctx) == []
    assert journal == [("teardown", "c"), ("teardown", "b"), ("teardown", "a")]
    for n in ("a", "b", "c"):
        assert observations(metrics, n, "setup") == 1 and observations(metrics, n, "teardown") == 1
        assert failures(metrics, n) == 0


@pytest.mark.parametrize("reason", [FinishReason.CRASHED, FinishReason.FAILED])
async def test_failing_step_stops_setup_and_keeps_reason_and_message(reason: FinishReason) -> None:
    journal: list[tuple[str, str]] = []
    metrics = AgentMetrics()
    steps = [
        FakeStep("a", journal),
        FakeStep("b", journal, fail_setup=StepError("no such image", reason)),
        FakeStep("c", journal),
    ]
    p = Pipeline(steps, metrics)
    ctx = context()
    with pytest.raises(StepError) as e:
        await p.setup(ctx)
    assert e.value.reason is reason
    assert e.value.message == "b step: no such image"
    assert str(e.value) == "b step: no such image"
    assert journal == [("setup", "a"), ("setup", "b")]  # c never ran
    assert failures(metrics, "b") == 1 and failures(metrics, "a") == 0 and failures(metrics, "c") == 0
    assert observations(metrics, "b", "setup") == 1 and observations(metrics, "c", "setup") == 0
    # The caller's teardown covers every step: the one that failed and the one that never ran.
    journal.clear()
    assert await p.teardown(ctx) == []
    assert journal == [("teardown", "c"), ("teardown", "b"), ("teardown", "a")]


async def test_unexpected_exception_becomes_crashed_step_error() -> None:
    journal: list[tuple[str, str]] = []
    metrics = AgentMetrics()
    p = Pipeline([FakeStep("a", journal, fail_setup=KeyError("boom")), FakeStep("b", journal)], metrics)
    with pytest.raises(StepError) as e:
        await p.setup(context())
    assert e.value.reason is FinishReason.CRASHED
    assert e.value.message == "a step: unexpected error: KeyError('boom')"
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert journal == [("setup", "a")]
    assert failures(metrics, "a") == 1


async def test_cancellation_is_not_turned_into_a_step_error() -> None:
    # An agent stopping mid-launch cancels the runner: that must not end the task as crashed.
    import asyncio

    journal: list[tuple[str, str]] = []
    p = Pipeline([FakeStep("a", journal, fail_setup=asyncio.CancelledError())], AgentMetrics())
    with pytest.raises(asyncio.CancelledError):
        await p.setup(context())


async def test_teardown_never_raises_and_returns_every_problem() -> None:
    journal: list[tuple[str, str]] = []
    metrics = AgentMetrics()
    steps = [
        FakeStep("a", journal, fail_teardown=RuntimeError("link busy")),
        FakeStep("b", journal),
        FakeStep("c", journal, fail_teardown=StepError("ip not released")),
    ]
    p = Pipeline(steps, metrics)
    problems = await p.teardown(context())
    assert problems == ["c: ip not released", "a: link busy"]  # in teardown order
    assert journal == [("teardown", "c"), ("teardown", "b"), ("teardown", "a")]  # a problem stops nothing
    assert all(observations(metrics, n, "teardown") == 1 for n in ("a", "b", "c"))


async def test_teardown_is_repeatable() -> None:
    journal: list[tuple[str, str]] = []
    p = Pipeline([FakeStep("a", journal), FakeStep("b", journal)], AgentMetrics())
    ctx = context()
    assert await p.teardown(ctx) == [] and await p.teardown(ctx) == []
    assert journal == [("teardown", "b"), ("teardown", "a")] * 2


async def test_readopt_calls_only_steps_that_implement_it_and_collects_problems() -> None:
    journal: list[tuple[str, str]] = []
    metrics = AgentMetrics()
    steps = [
        FakeStep("plain", journal),
        FakeReadoptStep("listener", journal, fail_readopt=OSError("address in use")),
        FakeStep("plain2", journal),
        FakeReadoptStep("cache", journal),
    ]
    p = Pipeline(steps, metrics)
    problems = await p.readopt(context())
    assert problems == ["listener: address in use"]
    # In setup order, only the steps with readopt, and a failing one does not stop the next.
    assert journal == [("readopt", "listener"), ("readopt", "cache")]
    assert failures(metrics, "listener") == 1 and failures(metrics, "cache") == 0


async def test_readopt_with_no_readopt_steps_is_a_no_op() -> None:
    journal: list[tuple[str, str]] = []
    p = Pipeline([FakeStep("a", journal)], AgentMetrics())
    assert await p.readopt(context()) == [] and journal == []


def test_step_names_must_be_distinct() -> None:
    journal: list[tuple[str, str]] = []
    with pytest.raises(ValueError, match="distinct names"):
        Pipeline([FakeStep("a", journal), FakeStep("b", journal), FakeStep("a", journal)], AgentMetrics())
    Pipeline([], AgentMetrics())  # an empty pipeline is fine


async def test_recent_step_durations_are_summarised_per_step_and_phase() -> None:
    journal: list[tuple[str, str]] = []
    pipeline = Pipeline([FakeStep("a", journal), FakeStep("b", journal)], AgentMetrics())
    for _ in range(3):
        ctx = context()
        await pipeline.setup(ctx)
        await pipeline.teardown(ctx)
    rows = {(r["step"], r["phase"]): r for r in pipeline.timings.summary()}
    assert set(rows) == {("a", "setup"), ("b", "setup"), ("a", "teardown"), ("b", "teardown")}
    for r in rows.values():
        assert r["count"] == 3
        assert 0 <= float(r["minMs"]) <= float(r["medianMs"]) <= float(r["maxMs"])


def test_step_timings_keep_only_the_recent_launches() -> None:
    from agent.step_timings import StepTimings

    timings = StepTimings(recent=4)
    for ms in (100, 1, 2, 3, 4):
        timings.record("image", "setup", ms / 1000)
    (row,) = timings.summary()
    assert row["count"] == 4 and row["maxMs"] == 4.0 and row["minMs"] == 1.0


async def test_the_test_hook_parks_a_launch_before_the_named_step(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from agent.pipeline import STALL_ENV, STALL_MARKER

    monkeypatch.setenv(STALL_ENV, "b")
    journal: list[tuple[str, str]] = []
    pipeline = Pipeline([FakeStep("a", journal), FakeStep("b", journal)], AgentMetrics())
    caplog.set_level("WARNING", logger="titus.agent.pipeline")
    launch = asyncio.create_task(pipeline.setup(context()))
    while f"{STALL_MARKER} b" not in caplog.text:
        await asyncio.sleep(0)
    assert journal == [("setup", "a")] and not launch.done()
    launch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await launch
    monkeypatch.delenv(STALL_ENV)
    assert Pipeline([FakeStep("a", journal)], AgentMetrics()).stall_before is None
