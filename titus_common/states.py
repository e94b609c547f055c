"""The task state machine and finish reasons, shared by the scheduler and the agent.

Titus's model: Accepted → Launched → StartInitiated → Started → KillInitiated → Finished.
Updates only move forward; a backward update is a stale message and is ignored, never applied.
"""

from __future__ import annotations

import enum


class TaskState(str, enum.Enum):
    ACCEPTED = "Accepted"  # queued in the scheduler, no host yet
    LAUNCHED = "Launched"  # placed on a host, not yet picked up by its agent
    START_INITIATED = "StartInitiated"  # the agent runs the launch pipeline
    STARTED = "Started"  # the user's process runs
    KILL_INITIATED = "KillInitiated"  # a kill was asked for and is in progress
    FINISHED = "Finished"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    @property
    def terminal(self) -> bool:
        return self is TaskState.FINISHED

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) resources on a host."""
        return self in (
            TaskState.LAUNCHED,
            TaskState.START_INITIATED,
            TaskState.STARTED,
            TaskState.KILL_INITIATED,
        )


_ORDER = [
    TaskState.ACCEPTED,
    TaskState.LAUNCHED,
    TaskState.START_INITIATED,
    TaskState.STARTED,
    TaskState.KILL_INITIATED,
    TaskState.FINISHED,
]


class FinishReason(str, enum.Enum):
    NORMAL = "normal"  # exit 0
    FAILED = "failed"  # the user's process exited non-zero, was OOM-killed or ran out of time
    KILLED = "killed"  # somebody asked for it
    CRASHED = "crashed"  # the platform could not start or run it
    LOST = "lost"  # the host stopped answering

    @property
    def system_error(self) -> bool:
        """Platform faults: they never consume the job's retries (crashed ≠ failed)."""
        return self in (FinishReason.CRASHED, FinishReason.LOST)


class TransitionError(ValueError):
    pass


def can_transition(current: TaskState, new: TaskState) -> bool:
    """Forward moves only; skipping states is allowed (a fast container can be Started before
    the StartInitiated report arrives), going back or leaving Finished is not."""
    return new.rank > current.rank


def check_transition(current: TaskState, new: TaskState) -> None:
    if not can_transition(current, new):
        raise TransitionError(f"task cannot move from {current.value} to {new.value}")
