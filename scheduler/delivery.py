"""What was sent to which agent and when, and the wake-ups of the agents' long polls.

A launch or kill is in the answer to an agent's sync; it is sent again if the task has not moved on
within `redeliver_after` seconds (the agent ignores a launch it already holds). Nothing here is
persisted: after a restart everything is due again, which the agent tolerates.
"""

from __future__ import annotations

import asyncio

from scheduler.records import JobRecord, TaskRecord
from titus_common.protocol import TaskAssignment
from titus_common.provenance import provenance_of
from titus_common.states import TaskState

__all__ = ["Deliveries", "assignment"]


def assignment(task: TaskRecord, job: JobRecord) -> TaskAssignment:
    """The launch an agent receives: everything it needs without asking back."""
    return TaskAssignment(
        task_id=task.id,
        job_id=task.job_id,
        index=task.index,
        container=job.spec.container,
        runtime_limit_seconds=job.spec.batch.runtime_limit_seconds if job.spec.batch else None,
        accepted_at=task.timestamps[TaskState.ACCEPTED.value],
        owner=job.spec.owner,
        app_name=job.spec.app_name,
        # Every launch of a pinned job runs the pinned digest (docs/provenance.md).
        image_digest=job.image_digest,
        provenance=provenance_of(job.spec.attributes),
    )


class Deliveries:
    def __init__(self, redeliver_after: float) -> None:
        self.redeliver_after = redeliver_after
        self._sent_at: dict[str, float] = {}  # task id → when its launch/kill was last sent
        self._events: dict[str, asyncio.Event] = {}

    def sent(self, task_id: str, now: float) -> None:
        self._sent_at[task_id] = now

    def was_sent(self, task_id: str) -> bool:
        return task_id in self._sent_at

    def due(self, task_id: str, now: float) -> bool:
        """Never sent, or sent at least `redeliver_after` ago."""
        return now - self._sent_at.get(task_id, -1e18) >= self.redeliver_after

    def shift(self, step: float) -> None:
        """The wall clock stepped: what was sent stays as long ago as it was."""
        self._sent_at = {k: v + step for k, v in self._sent_at.items()}

    def forget(self, task_id: str) -> None:
        """The task moved on (or must be sent anew, e.g. a kill after a launch)."""
        self._sent_at.pop(task_id, None)

    def compact(self) -> None:
        """A new table sized to what is left (a dict never shrinks by deleting): after an eviction."""
        self._sent_at = dict(self._sent_at)

    def event(self, node_id: str) -> asyncio.Event:
        return self._events.setdefault(node_id, asyncio.Event())

    def wake(self, node_id: str) -> None:
        event = self._events.get(node_id)
        if event is not None:
            event.set()
