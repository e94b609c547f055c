"""What the scheduler stores: jobs, tasks and nodes, as typed records serialised to JSON."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from titus_common.jobspec import JobSpec
from titus_common.protocol import HealthCondition
from titus_common.states import FinishReason, TaskState


class _Record(BaseModel):
    # cache_strings="keys": pydantic-core otherwise keeps every short string value it parsed from
    # JSON (task and job ids: up to 16,384 of them) in a process-wide cache, long-lived objects
    # made mid-burst that pin the heap after the burst's records are freed (issue #18).
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, cache_strings="keys")

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class JobState(str, enum.Enum):
    ACCEPTED = "Accepted"
    KILL_INITIATED = "KillInitiated"
    FINISHED = "Finished"


class JobRecord(_Record):
    id: str
    spec: JobSpec
    state: JobState = JobState.ACCEPTED
    created_at: float
    finished_at: float | None = None
    # Batch: the final outcome of each task index ("0" → "normal"), filled as indexes complete.
    index_results: dict[str, FinishReason] = Field(default_factory=dict)
    # Tasks created so far (the next task's sequence number).
    tasks_created: int = 0
    # Image provenance (scheduler/provenance.py, docs/provenance.md): the manifest digest every launch
    # of this job runs, who pinned it (reference: the job named a digest; submit: the registry at
    # submit; launch: the first agent that ran it), and why it could not be resolved at submit.
    image_digest: str | None = None
    image_pinned_by: str = ""
    image_resolve_error: str = ""
    # What the job's tag pointed at in the registry at the last periodic check, and when.
    tag_digest: str | None = None
    tag_checked_at: float | None = None


class TaskRecord(_Record):
    id: str
    job_id: str
    index: int
    state: TaskState = TaskState.ACCEPTED
    reason: FinishReason | None = None
    message: str = ""
    exit_code: int | None = None
    # The container's last output, from the terminal update (agent/logtail.py); None: not captured.
    log_tail: str | None = None
    node_id: str | None = None
    container_id: str | None = None
    # When the task entered each state (state name → epoch seconds).
    timestamps: dict[str, float] = Field(default_factory=dict)
    # A replacement may wait (retry delay, crash back-off) before it is placed.
    not_before: float = 0.0
    retries_used: int = 0  # user retries consumed by this index so far
    system_retries: int = 0  # replacements after crashed/lost (never count against retries)
    consecutive_crashes: int = 0  # system errors in a row on this index: the crash-loop signal
    consecutive_failures: int = 0  # user failures in a row (service jobs back off on these)
    kill_requested: bool = False
    # A kill the control plane sent (a stuck-state timeout) ends the task as this, not `killed`.
    finish_as: FinishReason | None = None
    # The task that took over this one's index. Set before the task ends when a drain started the
    # replacement first (scheduler/drain.py): ending this one then starts no other.
    replaced_by: str | None = None
    # Evicted by a drain (a batch task past the drain's deadline): replaced at once, counters kept.
    evicted: bool = False
    # The image manifest digest the agent ran this task with (its report).
    image_digest: str | None = None
    # Why no host took it at the last placement pass: (reason, hosts), most hosts first.
    placement_failures: list[tuple[str, int]] = Field(default_factory=list)

    def enter(self, state: TaskState, at: float) -> None:
        self.state = state
        self.timestamps.setdefault(state.value, at)


class NodeStatus(str, enum.Enum):
    READY = "Ready"
    DISCONNECTED = "Disconnected"  # missed heartbeats: no new work, its tasks still count as running
    LOST = "Lost"  # gone long enough that its tasks were declared lost


class Capacity(_Record):
    cpus: float = Field(gt=0)
    memory_mib: int = Field(alias="memoryMiB", gt=0)
    disk_mib: int = Field(alias="diskMiB", gt=0)


class RemediationEntry(_Record):
    """One line of a host's remediation history (`titusctl node history`)."""

    at: float
    check: str
    reason: str
    action: str
    # ordered | ok | failed | unsupported | timeout | drained
    outcome: str
    order_id: str = ""
    message: str = ""


class DrainState(_Record):
    """A drain in progress or done (`titusctl node drain`; scheduler/drain.py)."""

    started_at: float
    by: str = ""
    reason: str = ""
    batch_deadline: float  # batch tasks still running then are evicted (killed, replaced elsewhere)
    finished_at: float | None = None  # no task left on the host
    moved: int = 0  # service tasks replaced elsewhere, then killed here
    evicted: int = 0  # batch tasks killed at the deadline
    # Remediation's drains end in retirement (scheduler/retire.py): when, or the last failure.
    retired_at: float | None = None
    retire_error: str = ""
    retire_error_at: float | None = None


class NodeRecord(_Record):
    id: str
    capacity: Capacity
    labels: dict[str, str] = Field(default_factory=dict)
    status: NodeStatus = NodeStatus.READY
    registered_at: float
    last_heartbeat: float
    agent_version: str = ""
    # Containers the agent found that neither its checkpoint nor the scheduler knows: reported, not killed.
    unknown_containers: list[str] = Field(default_factory=list)
    # Tasks the scheduler believes run there but the agent did not report (a mismatch to look at).
    missing_tasks: list[str] = Field(default_factory=list)
    # The host's security posture as the agent last reported it (None: never reported).
    posture: dict[str, Any] | None = None
    # The host's health checks as the agent last reported them (None: an agent without them).
    health: list[HealthCondition] | None = None
    # An operator (or remediation) keeps new work off the host (`titusctl node cordon|drain`).
    cordoned: bool = False
    cordon_reason: str = ""
    cordoned_at: float | None = None
    # Why the host takes no new work, key → reason ("cordoned", "health.<check>"); a job
    # tolerates health taints it names in its `titus.health.tolerate` attribute (docs/health.md).
    taints: dict[str, str] = Field(default_factory=dict)
    # The remediation order the host is running (its "ordered" history entry), None when idle.
    remediation: RemediationEntry | None = None
    remediation_history: list[RemediationEntry] = Field(default_factory=list)  # newest last, bounded
    # The quality tracker's quarantine (scheduler/quality.py): the taint `quality` until then.
    quarantined_until: float | None = None
    quarantine_reason: str = ""
    # A drain: cordoned, and its tasks moved off under the disruption budgets (None: no drain).
    drain: DrainState | None = None
