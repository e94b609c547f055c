"""The lifecycle contract every host-wide resource follows (after Nomad's runner_lifecycle.go).

Rules:
- `start` runs once, before any task runner, with every task checkpoint the agent loaded.
- `start` refuses the agent's start by raising a `titus_common.errors.TitusError` kind, never
  anything else; what it acquired before refusing is released by `stop`.
- `stop` is safe after a failed start, after no start, and when repeated.
- `stop` leaves every task's resources in place: containers keep running and are re-adopted.
- `reconcile` and `gc` never raise: they log, count, and try again on the next round.
- `gc` removes only what no live task holds, and is not called while a launch is mid-setup.
- Launch steps reach a resource through its public methods, never through its private state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from agent.checkpoint import TaskCheckpoint
from titus_common.states import TaskState

__all__ = ["HostResource", "LiveTasks", "launching"]

# task id → its checkpoint, for every task the agent holds (the input of reconcile and gc; read-only).
LiveTasks = Mapping[str, TaskCheckpoint]


def launching(tasks: LiveTasks) -> bool:
    """Some task is mid-launch (setting up its steps): GC that could race its setup waits."""
    return any(r.state.rank < TaskState.STARTED.rank for r in tasks.values())


@runtime_checkable
class HostResource(Protocol):
    name: str

    async def start(self, records: Sequence[TaskCheckpoint]) -> None: ...

    async def reconcile(self, tasks: LiveTasks) -> None: ...

    async def gc(self, tasks: LiveTasks) -> None: ...

    async def stop(self) -> None: ...
