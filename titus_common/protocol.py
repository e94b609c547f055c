"""Messages between agent and scheduler. The agent always initiates (the scheduler never reaches into
hosts): a long-poll `sync` that is also the heartbeat and delivers work, and `updates` that report
task transitions as they happen.

Every model is strict where a wrong type could slip through coercion: a boolean is not a number
(`waitSeconds: false`, `exitCode: false` are refused), NaN/infinity are refused, ids are non-empty
and bounded, lists and strings have upper bounds (docs/openapi.json states the same limits)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict
from pydantic.alias_generators import to_camel

from titus_common.jobspec import ContainerSpec
from titus_common.states import FinishReason, TaskState

MAX_WAIT_SECONDS = 30.0
MAX_TASKS_PER_NODE = 100_000
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"

# Strict scalars: JSON `true` is not 1, `"5"` is not 5 (an int is still a valid float).
Num = Annotated[float, Strict()]
Int = Annotated[int, Strict()]
Id = Annotated[str, Strict(), Field(min_length=1, max_length=253, pattern=ID_PATTERN)]
Text = Annotated[str, Strict(), Field(max_length=4096)]
Label = Annotated[str, Strict(), Field(max_length=1024)]


class _Msg(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, allow_inf_nan=False
    )


class CapacityReport(_Msg):
    cpus: Annotated[Num, Field(gt=0, le=4096)]
    memory_mib: Annotated[Int, Field(alias="memoryMiB", gt=0, le=1 << 40)]
    disk_mib: Annotated[Int, Field(alias="diskMiB", gt=0, le=1 << 50)]


class NodeReport(_Msg):
    id: Annotated[str, Strict(), Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    capacity: CapacityReport
    labels: Annotated[dict[Label, Label], Field(max_length=256)] = Field(default_factory=dict)
    agent_version: Annotated[str, Strict(), Field(max_length=256)] = ""
    # Task ids the agent holds (any non-final state).
    running: Annotated[list[Id], Field(max_length=MAX_TASKS_PER_NODE)] = Field(default_factory=list)
    unknown_containers: Annotated[list[Label], Field(max_length=MAX_TASKS_PER_NODE)] = Field(default_factory=list)
    # The host's security posture (security/posture.py HostPosture.to_json(): kernel, cgroup
    # version, seccomp, AppArmor, userns); None until the agent has probed it.
    posture: dict[str, Any] | None = None


class SyncRequest(_Msg):
    node: NodeReport
    wait_seconds: Annotated[Num, Field(ge=0, le=MAX_WAIT_SECONDS)] = 0.0


class TaskAssignment(_Msg):
    task_id: str
    job_id: str
    index: int
    container: ContainerSpec
    runtime_limit_seconds: float | None = None
    accepted_at: float
    # The job's owner and app, for the agent's re-check of the security variant allow-list (None in
    # assignments from before they were sent: the scheduler's submit-time check is then the gate).
    owner: str | None = None
    app_name: str | None = None


class SyncResponse(_Msg):
    launch: list[TaskAssignment] = Field(default_factory=list)
    kill: list[str] = Field(default_factory=list)
    heartbeat_interval_seconds: float = 5.0


class TaskUpdate(_Msg):
    task_id: Id
    state: TaskState
    # When the task entered each state it went through on this agent.
    timestamps: Annotated[dict[TaskState, Annotated[Num, Field(ge=0)]], Field(max_length=16)]
    reason: FinishReason | None = None
    message: Text = ""
    exit_code: Annotated[Int, Field(ge=-(1 << 31), le=(1 << 32) - 1)] | None = None
    container_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)] | None = None


class UpdatesRequest(_Msg):
    updates: Annotated[list[TaskUpdate], Field(max_length=10_000)]


class UpdatesResponse(_Msg):
    # Every update the scheduler has durably taken (applied, or recognised as stale): the agent may
    # forget these. Anything not listed is sent again.
    accepted: list[str]
