"""The contract of a launch step.

A task's launch is an ordered list of steps; each owns exactly one kind of resource (image, network,
cpuset, credentials, security profile, container). The pipeline runs `setup` in order and, when the
task ends or a setup fails, `teardown` in reverse order — for every step, including the one that
failed and those that never ran.

Rules every step follows:
- `setup` is idempotent: after an agent restart it may run again for the same task and must find and
  reuse what it already made (name resources after the task id) rather than make a second one.
- Before returning from `setup`, record what was acquired in `ctx.record.resources[step.name]` and
  call `await ctx.commit()` (it returns once the record is in place, written on a thread and made
  durable by the group sync: docs/footprint.md), so a `kill -9` right after still leaves a trail
  for teardown and GC. Data that is derived or only informational (nothing acquired since the last
  write) is recorded without a write of its own: the next write carries it, and a restart re-runs
  the step (docs/launch-netns.md).
- `teardown` is safe after a partial setup, after no setup at all, and when repeated; it reads what
  to release from `ctx.record.resources`, never from the step's memory.
- Errors leave as `StepError`, whose reason says whose fault it is: CRASHED (the platform; costs the
  user no retry) or FAILED (the user's request cannot run, e.g. the image does not exist).
- Steps contribute to the container through `ctx.create_options` / `ctx.host_config_options` (SDK
  keywords of `create_host_config`) / `ctx.host_config_raw` (HostConfig fields the SDK has no keyword
  for, merged into the final dict); only the container step talks to the engine about the container
  itself, and it audits the final HostConfig (security/hardening.py) before create.
- A step that holds something in the agent's process for a running task (a listening socket, a
  cache) also implements `readopt`: after an agent restart, for a task whose container kept running,
  it rebuilds that from the checkpoint. It must not touch the container; a failure is logged and the
  task keeps running (an agent problem never kills a task).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.checkpoint import TaskCheckpoint
from agent.docker_api import Docker
from titus_common.states import FinishReason


class StepError(Exception):
    def __init__(self, message: str, reason: FinishReason = FinishReason.CRASHED) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass
class LaunchContext:
    record: TaskCheckpoint
    docker: Docker
    node_id: str
    save: Callable[[], None]
    # The same write off the agent's loop (the runner's; the disk can stall a write for ms under
    # load); steps call `await ctx.commit()`. Without it `commit` falls back to `save`.
    save_async: Callable[[], Awaitable[None]] | None = None
    # Accumulated arguments for the engine's container create call and its HostConfig.
    create_options: dict[str, Any] = field(default_factory=dict)
    host_config_options: dict[str, Any] = field(default_factory=dict)
    # Raw HostConfig fields (engine API names, e.g. MaskedPaths) merged after create_host_config.
    host_config_raw: dict[str, Any] = field(default_factory=dict)
    # Environment the platform offers the task (the job's own env wins over it) and read-only binds.
    environment: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return self.record.task_id

    async def commit(self) -> None:
        """Write the checkpoint and return once it is in place (a kill -9 right after finds it)."""
        if self.save_async is not None:
            await self.save_async()
        else:
            self.save()

    def release_create_inputs(self) -> None:
        """The container exists: what the steps gathered for its create call (the seccomp profile,
        the environment…) is not needed again (a repeated setup adopts the container), so a running
        task does not keep it (issue 17: the agent's footprint at 100+ tasks)."""
        self.create_options.clear()
        self.host_config_options.clear()
        self.host_config_raw.clear()
        self.environment.clear()
        self.binds.clear()

    def resources(self, step: str) -> dict[str, Any]:
        return self.record.resources.setdefault(step, {})


class LaunchStep(Protocol):
    name: str

    async def setup(self, ctx: LaunchContext) -> None: ...

    async def teardown(self, ctx: LaunchContext) -> None: ...


@runtime_checkable
class ReadoptStep(Protocol):
    """A step with process-held state for running tasks (see the module's rules)."""

    async def readopt(self, ctx: LaunchContext) -> None: ...
