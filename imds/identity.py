"""What the agent knows about a task, as the metadata service answers it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskIdentity:
    task_id: str
    job_id: str
    role_arn: str | None  # the job's IAM role (arn:aws:iam::123456789012:role/path/name); None = no credentials
    ipv4: str
    mac: str
    hostname: str
    instance_id: str
    instance_type: str
    availability_zone: str
    region: str
    account_id: str
    v1_allowed: bool = False  # serve GETs without an IMDSv2 token (per job, off by default)
    ecs_token: str = field(default="", repr=False)  # bearer secret of the ECS-style endpoint
    # Image provenance (docs/provenance.md), served at /latest/meta-data/titus/provenance: image,
    # imageDigest and the job's source./build. attributes, as (key, value) pairs.
    provenance: tuple[tuple[str, str], ...] = ()
