"""Messages between agent and scheduler. The agent always initiates (the scheduler never reaches into
hosts): a long-poll `sync` that is also the heartbeat and delivers work, and `updates` that report
task transitions as they happen.

Every model is strict where a wrong type could slip through coercion: a boolean is not a number
(`waitSeconds: false`, `exitCode: false` are refused), NaN/infinity are refused, ids are non-empty
and bounded, lists and strings have upper bounds (docs/openapi.json states the same limits)."""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from pydantic.alias_generators import to_camel

from titus_common.jobspec import MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, ContainerSpec
from titus_common.states import FinishReason, TaskState

MAX_WAIT_SECONDS = 30.0
# Sizes a message may have, stated in the schema and enforced by the same models (the scheduler's
# 4 MiB body limit is the outer bound): a host holds at most MAX_TASKS_PER_NODE tasks; ids are short.
MAX_TASKS_PER_NODE = 10_000
MAX_ID = 128
MAX_MESSAGE = 4096
MAX_POSTURE_BYTES = 64 * 1024
# The last lines of a finished task's output, sent with its terminal update (docs/health.md, "logs
# collected"): small, so a burst of terminal updates stays far below the request limit.
MAX_LOG_TAIL = 2048

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"

# Strict scalars: JSON `true` is not 1, `"5"` is not 5 (an int is still a valid float).
Num = Annotated[float, Strict()]
Int = Annotated[int, Strict()]
Id = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]
Text = Annotated[str, Strict(), Field(max_length=MAX_MESSAGE)]
Label = Annotated[str, Strict(), Field(max_length=1024)]
_Id = Id


class _Msg(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, allow_inf_nan=False
    )


class CapacityReport(_Msg):
    cpus: Annotated[Num, Field(gt=0, le=4096)]
    memory_mib: Annotated[Int, Field(alias="memoryMiB", gt=0, le=1 << 40)]
    disk_mib: Annotated[Int, Field(alias="diskMiB", gt=0, le=1 << 50)]


class HealthStatus(str, enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"  # works, worse: lower placement preference
    FAILED = "failed"  # no new work

    @property
    def rank(self) -> int:
        return _HEALTH_RANK[self]


_HEALTH_RANK = {HealthStatus.OK: 0, HealthStatus.DEGRADED: 1, HealthStatus.FAILED: 2}

EvidenceValue = str | int | float | bool


class HealthCondition(_Msg):
    """The latest result of one host health check (health/; docs/health.md)."""

    check: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")]
    status: HealthStatus
    reason: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")]
    message: Annotated[str, Field(max_length=256)] = ""
    since: float  # when the check entered this status and reason
    observed_at: float
    duration_ms: Annotated[float, Field(ge=0)] = 0.0
    evidence: Annotated[dict[str, EvidenceValue], Field(max_length=32)] = Field(default_factory=dict)


class RemediationOrder(_Msg):
    """The scheduler asks the agent to run one playbook action for a failed condition."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    action: Annotated[str, Field(min_length=1, max_length=64)]
    check: str
    reason: str


class RemediationResult(_Msg):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    action: str
    ok: bool
    # False: this agent cannot run the action (unknown, or not configured): not a failure of the host.
    supported: bool = True
    message: Annotated[str, Field(max_length=256)] = ""
    finished_at: float
class WarmNetwork(_Msg):
    """An attached ENI: its security-group set and how many more IPs it can hand out."""

    security_groups: Annotated[list[str], Field(max_length=16)]
    free_ips: Annotated[int, Field(ge=0, le=4096)]


class NodeReport(_Msg):
    id: Annotated[str, Strict(), Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    capacity: CapacityReport
    labels: Annotated[
        dict[Annotated[str, Strict(), Field(max_length=MAX_LABEL_KEY)],
             Annotated[str, Strict(), Field(max_length=MAX_LABEL_VALUE)]],
        Field(max_length=MAX_LABELS),
    ] = Field(default_factory=dict)
    agent_version: Annotated[str, Strict(), Field(max_length=MAX_ID)] = ""
    # Task ids the agent holds (any non-final state).
    running: Annotated[list[Id], Field(max_length=MAX_TASKS_PER_NODE)] = Field(default_factory=list)
    unknown_containers: Annotated[
        list[Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID)]], Field(max_length=MAX_TASKS_PER_NODE)
    ] = Field(default_factory=list)
    # The host's security posture (security/posture.py HostPosture.to_json(): kernel, cgroup
    # version, seccomp, AppArmor, userns); None until the agent has probed it.
    posture: dict[str, Any] | None = None
    # The host's health checks' latest results (None: an agent that does not run them).
    health: Annotated[list[HealthCondition], Field(max_length=128)] | None = None
    # Outcomes of the latest remediation orders the agent ran (the scheduler matches them by id).
    remediation_results: Annotated[list[RemediationResult], Field(max_length=32)] = Field(default_factory=list)

    @field_validator("posture")
    @classmethod
    def _posture_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(json.dumps(v)) > MAX_POSTURE_BYTES:
            raise ValueError(f"posture is larger than {MAX_POSTURE_BYTES} bytes of JSON")
        return v
    # Placement facts (docs/scheduling.md), all optional so older agents still validate. Cached images
    # go compactly: every heartbeat carries a digest of the sorted list; the list itself only when it
    # changed or the scheduler asks (SyncResponse.send_cached_images).
    cached_images_digest: Annotated[str, Field(max_length=128)] = ""
    cached_images: Annotated[list[Annotated[str, Field(max_length=512)]] | None, Field(max_length=4096)] = None
    # IPs the host can still assign (None: not reported; placement does not limit by IPs), and its
    # attached ENIs by security-group set. `ip_capacity` (addresses the host can hold for tasks in
    # all, its ENI × IP limits) wins when present: the scheduler subtracts the tasks it has placed
    # there, so launches placed since this heartbeat are not counted twice.
    free_ips: Annotated[int | None, Field(ge=0, le=65536)] = None
    ip_capacity: Annotated[int | None, Field(ge=0, le=65536)] = None
    warm_networks: Annotated[list[WarmNetwork], Field(max_length=64)] = Field(default_factory=list)


def images_digest(images: list[str]) -> str:
    """The digest an agent reports for its cached image list (order-insensitive)."""
    return hashlib.sha256("\n".join(sorted(set(images))).encode()).hexdigest()[:32]


class SyncRequest(_Msg):
    node: NodeReport
    wait_seconds: Annotated[Num, Field(ge=0, le=MAX_WAIT_SECONDS)] = 0.0


class TaskAssignment(_Msg):
    task_id: _Id
    job_id: _Id
    index: int
    container: ContainerSpec
    runtime_limit_seconds: float | None = None
    accepted_at: float
    # The job's owner and app, for the agent's re-check of the security variant allow-list (None in
    # assignments from before they were sent: the scheduler's submit-time check is then the gate).
    owner: str | None = None
    app_name: str | None = None
    # Image provenance (docs/provenance.md): the manifest digest the job is pinned to (the agent pulls
    # and runs name@digest; None: not resolved yet, the agent resolves the tag and reports what it ran)
    # and the job's source./build. attributes, for the container's labels and the task's metadata.
    image_digest: Annotated[str, Strict(), Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    provenance: Annotated[dict[Label, Label], Field(max_length=8)] = Field(default_factory=dict)


class StatsRequest(_Msg):
    """A user asked for a running task's usage (`titusctl task stats`): the agent answers it with a
    `StatsReport` to `POST /v1/nodes/{id}/stats` (one-shot; an unanswered request times out)."""

    id: Id
    task_id: Id


MAX_STATS_BYTES = 256 * 1024


class StatsReport(_Msg):
    id: Id
    task_id: Id
    # agent/taskstats.py's document (cpu, memory, pids, cpuset, network, processes); None with `error`.
    stats: dict[str, Any] | None = None
    error: Text = ""

    @field_validator("stats")
    @classmethod
    def _stats_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(json.dumps(v)) > MAX_STATS_BYTES:
            raise ValueError(f"stats are larger than {MAX_STATS_BYTES} bytes of JSON")
        return v


class StatsReportRequest(_Msg):
    reports: Annotated[list[StatsReport], Field(max_length=64)]


MAX_EXEC_ARGS = 256
MAX_EXEC_BYTES = 64 * 1024


class ExecOrder(_Msg):
    """An owner's exec session into a task (docs/exec.md): the agent opens the session's websocket
    (GET /v1/nodes/<id>/exec/<session>) and runs `command` in the task's container, confined as the task."""

    session_id: Annotated[str, Strict(), Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    task_id: _Id
    command: Annotated[list[Annotated[str, Strict(), Field(max_length=MAX_EXEC_BYTES)]],
                       Field(min_length=1, max_length=MAX_EXEC_ARGS)]
    tty: bool = False
    stdin: bool = False
    rows: Annotated[Int, Field(ge=0, le=1000)] = 0
    cols: Annotated[Int, Field(ge=0, le=1000)] = 0


class SyncResponse(_Msg):
    launch: Annotated[list[TaskAssignment], Field(max_length=MAX_TASKS_PER_NODE)] = Field(default_factory=list)
    kill: Annotated[list[_Id], Field(max_length=MAX_TASKS_PER_NODE)] = Field(default_factory=list)
    # Containers the agent reported as unknown that the scheduler's reconciliation decided to kill
    # (orphans past `orphan_kill_after`); the agent kills one only while it still matches no task.
    kill_containers: Annotated[
        list[Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID)]], Field(max_length=MAX_TASKS_PER_NODE)
    ] = Field(default_factory=list)
    # Playbook actions to run (redelivered until the agent reports their result; it runs each id once).
    remediate: Annotated[list[RemediationOrder], Field(max_length=32)] = Field(default_factory=list)
    heartbeat_interval_seconds: float = 5.0
    # The scheduler does not know the image list behind the digest: send `cached_images` next time.
    send_cached_images: bool = False
    # Usage reads of running tasks to answer now (StatsRequest).
    stats: Annotated[list[StatsRequest], Field(max_length=64)] = Field(default_factory=list)
    # Exec sessions waiting for this agent to connect (docs/exec.md); redelivered until it does.
    exec_orders: Annotated[list[ExecOrder], Field(max_length=64)] = Field(default_factory=list)


class TaskUpdate(_Msg):
    task_id: Id
    state: TaskState
    # When the task entered each state it went through on this agent.
    timestamps: Annotated[dict[TaskState, Annotated[Num, Field(ge=0)]], Field(max_length=16)]
    reason: FinishReason | None = None
    message: Text = ""
    exit_code: Annotated[Int, Field(ge=-(1 << 31), le=(1 << 32) - 1)] | None = None
    container_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)] | None = None
    # The image manifest digest the container runs (None: the agent could not tell, e.g. a local-only image).
    image_digest: Annotated[str, Strict(), Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    # Terminal updates: the container's last output lines (stdout and stderr), captured before the
    # agent lets the container go; None: not captured (no container, or the engine did not answer).
    log_tail: Annotated[str, Strict(), Field(max_length=MAX_LOG_TAIL)] | None = None


class UpdatesRequest(_Msg):
    updates: Annotated[list[TaskUpdate], Field(max_length=MAX_TASKS_PER_NODE)]


class UpdatesResponse(_Msg):
    # Every update the scheduler has durably taken (applied, or recognised as stale): the agent may
    # forget these. Anything not listed is sent again.
    accepted: list[str]
