"""Messages between agent and scheduler. The agent always initiates (the scheduler never reaches into
hosts): a long-poll `sync` that is also the heartbeat and delivers work, and `updates` that report
task transitions as they happen."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from titus_common.jobspec import ContainerSpec
from titus_common.states import FinishReason, TaskState

MAX_WAIT_SECONDS = 30.0


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class CapacityReport(_Msg):
    cpus: Annotated[float, Field(gt=0, le=4096)]
    memory_mib: Annotated[int, Field(alias="memoryMiB", gt=0)]
    disk_mib: Annotated[int, Field(alias="diskMiB", gt=0)]


class WarmNetwork(_Msg):
    """An attached ENI: its security-group set and how many more IPs it can hand out."""

    security_groups: Annotated[list[str], Field(max_length=16)]
    free_ips: Annotated[int, Field(ge=0, le=4096)]


class NodeReport(_Msg):
    id: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    capacity: CapacityReport
    labels: dict[str, str] = Field(default_factory=dict)
    agent_version: str = ""
    running: list[str] = Field(default_factory=list)  # task ids the agent holds (any non-final state)
    unknown_containers: list[str] = Field(default_factory=list)
    # The host's security posture (security/posture.py HostPosture.to_json(): kernel, cgroup
    # version, seccomp, AppArmor, userns); None until the agent has probed it.
    posture: dict[str, Any] | None = None
    # Placement facts (docs/scheduling.md), all optional so older agents still validate. Cached images
    # go compactly: every heartbeat carries a digest of the sorted list; the list itself only when it
    # changed or the scheduler asks (SyncResponse.send_cached_images).
    cached_images_digest: Annotated[str, Field(max_length=128)] = ""
    cached_images: Annotated[list[Annotated[str, Field(max_length=512)]] | None, Field(max_length=4096)] = None
    # IPs the host can still assign (None: not reported; placement does not limit by IPs), and its
    # attached ENIs by security-group set.
    free_ips: Annotated[int | None, Field(ge=0, le=65536)] = None
    warm_networks: Annotated[list[WarmNetwork], Field(max_length=64)] = Field(default_factory=list)


def images_digest(images: list[str]) -> str:
    """The digest an agent reports for its cached image list (order-insensitive)."""
    return hashlib.sha256("\n".join(sorted(set(images))).encode()).hexdigest()[:32]


class SyncRequest(_Msg):
    node: NodeReport
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)] = 0.0


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
    # The scheduler does not know the image list behind the digest: send `cached_images` next time.
    send_cached_images: bool = False


class TaskUpdate(_Msg):
    task_id: str
    state: TaskState
    # When the task entered each state it went through on this agent.
    timestamps: dict[TaskState, float]
    reason: FinishReason | None = None
    message: str = ""
    exit_code: int | None = None
    container_id: str | None = None


class UpdatesRequest(_Msg):
    updates: Annotated[list[TaskUpdate], Field(max_length=10_000)]


class UpdatesResponse(_Msg):
    # Every update the scheduler has durably taken (applied, or recognised as stale): the agent may
    # forget these. Anything not listed is sent again.
    accepted: list[str]
