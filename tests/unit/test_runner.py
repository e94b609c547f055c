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
