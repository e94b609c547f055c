"""The scheduler's configuration: typed, validated and frozen.

`SchedulerConfig` holds the control loop's tunables (liveness, redelivery, back-off, crash loop);
`ServiceConfig` adds what the process needs (listen address, store, log level, security policy).
`scheduler/main.py` builds a `ServiceConfig` from a TOML file (`--config`) and the flags, flags winning;
`service_config` refuses an unknown key or a value of the wrong type or range with a `ConfigError`
that names the key — never a TypeError.
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scheduler.capacity import CapacityGroup
from titus_common.daemon import parse_listen
from titus_common.errors import ConfigError

__all__ = ["SchedulerConfig", "ServiceConfig", "read_toml", "service_config"]

class SchedulerConfig(BaseModel):
    """Tunables of the control loop. Durations are seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    heartbeat_interval: Annotated[float, Field(gt=0)] = 5.0
    # Missed heartbeats for this long → Disconnected: no new work; its tasks still count as running.
    disconnect_after: Annotated[float, Field(gt=0)] = 20.0
    # Disconnected for this long → its tasks are declared lost and replaced.
    lost_after: Annotated[float, Field(gt=0)] = 600.0
    # Brake on declaring tasks lost, so a control-plane network blip cannot fail a fleet at once.
    max_lost_per_minute: Annotated[int, Field(ge=1)] = 100
    # A delivered launch or kill not acknowledged within this time is delivered again.
    redeliver_after: Annotated[float, Field(gt=0)] = 10.0
    system_backoff_base: Annotated[float, Field(gt=0)] = 1.0
    system_backoff_max: Annotated[float, Field(ge=0)] = 30.0
    service_failure_backoff_max: Annotated[float, Field(ge=0)] = 300.0
    # A task that stayed Started this long clears its index's crash/failure streak.
    streak_reset_after: Annotated[float, Field(gt=0)] = 300.0
    crash_loop_threshold: Annotated[int, Field(ge=1)] = 3
    # A Finished job leaves memory (with its tasks) this long after it finished; it stays in the
    # store and the API still answers for it, from the store (scheduler/retention.py).
    finished_job_retention: Annotated[float, Field(ge=0)] = 3600.0
    # Reconciliation and its one kill path (docs/reconcile.md).
    reconcile_interval: Annotated[float, Field(gt=0)] = 5.0
    # After start (or becoming leader) nothing is killed or declared lost for this long.
    reconcile_grace: Annotated[float, Field(ge=0)] = 120.0
    # A mismatch above either threshold freezes every kill until an operator acts.
    reconcile_freeze_abs: Annotated[int, Field(ge=0)] = 10
    reconcile_freeze_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Global token bucket of the kill path: a kill or declared-lost per 1/rate seconds, plus a burst.
    kill_rate_per_second: Annotated[float, Field(gt=0)] = 0.1
    kill_burst: Annotated[int, Field(ge=1)] = 3
    # Per-job disruption budget: at most this fraction of a job's live tasks (at least 1) per window.
    job_disruption_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    job_disruption_window: Annotated[float, Field(gt=0)] = 600.0
    # A task the agent of a Ready host does not report for this long is proposed lost.
    missing_lost_after: Annotated[float, Field(gt=0)] = 60.0
    # ... and it is only a mismatch (counted towards a freeze) once unreported this long: a task that
    # just started (a replacement placed a moment ago) is not in the agent's last report yet.
    missing_after: Annotated[float, Field(ge=0)] = 30.0
    # Orphans (tasks or containers an agent runs that the scheduler does not know) are killed after
    # this age, through the kill path (freeze, grace, bucket; never after an empty-store start
    # without an operator's approval). 0: never (the default).
    orphan_kill_after: Annotated[float, Field(ge=0)] = 0.0
    # A wall-clock step larger than this (against the monotonic clock) moves every age by the step
    # and restarts the reconciliation grace (scheduler/clockstep.py).
    clock_step_tolerance: Annotated[float, Field(gt=0)] = 10.0
    # Stuck-state timeouts (Titus' defaults).
    stuck_launched_after: Annotated[float, Field(gt=0)] = 300.0
    stuck_start_initiated_after: Annotated[float, Field(gt=0)] = 300.0
    stuck_kill_initiated_after: Annotated[float, Field(gt=0)] = 600.0
    # Run with the freeze's JSON on stdin when reconciliation freezes (empty: none).
    page_command: str = ""
    # Automated remediation of failed health conditions (scheduler/remediation.py; docs/health.md).
    remediation_enabled: bool = True
    # At most this many hosts, and this fraction of the cell (at least one host), remediating at once.
    remediation_max_hosts: Annotated[int, Field(ge=0)] = 1
    remediation_max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    # At most this many actions per host per hour; a host still failing after them is drained.
    remediation_actions_per_hour: Annotated[int, Field(ge=1)] = 3
    # This many failed actions in a row on a host → drained.
    remediation_failures_before_drain: Annotated[int, Field(ge=1)] = 2
    # After an action, the host gets no other order (nor a drain) for this long: its checks re-run.
    remediation_cooldown: Annotated[float, Field(ge=0)] = 120.0
    # An order without a result after this long counts as failed.
    remediation_timeout: Annotated[float, Field(gt=0)] = 300.0
    # At least this fraction of Ready hosts (and 2 hosts) failing at once is a fleet problem, not a
    # host problem: no remediation and no drain, an operator alert instead.
    remediation_freeze_fraction: Annotated[float, Field(gt=0, le=1)] = 0.3
    # The host quality tracker (scheduler/quality.py; docs/health.md).
    quality_enabled: bool = True
    quality_window: Annotated[float, Field(gt=0)] = 3600.0
    quality_min_launches: Annotated[int, Field(ge=1)] = 5
    quality_min_crashes: Annotated[int, Field(ge=1)] = 3
    quality_factor: Annotated[float, Field(ge=1)] = 3.0
    quality_margin: Annotated[float, Field(ge=0, le=1)] = 0.2
    quality_quarantine_seconds: Annotated[float, Field(gt=0)] = 1800.0
    # A drain lets batch tasks finish for this long, then evicts them (`titusctl node drain
    # --batch-deadline` overrides it per drain; scheduler/drain.py).
    drain_batch_deadline: Annotated[float, Field(ge=0)] = 3600.0
    # A host remediation drained, once empty, is retired (scheduler/retire.py): `local` marks it
    # retired, `aws` terminates its instance (EC2 at the region/endpoint below), `none` leaves it.
    retire_provider: Literal["none", "local", "aws"] = "local"
    retire_aws_region: Annotated[str, Field(min_length=1, max_length=64)] = "us-east-1"
    retire_aws_endpoint_url: Annotated[str, Field(max_length=1024)] = ""
    # Placement (docs/scheduling.md): the mode at start (switch live with `titusctl admin
    # scheduling-mode`), the tie-break seed, and one job's per-host cap when it sets none.
    scheduling_mode: Literal["spread", "pack"] = "spread"
    placement_seed: Annotated[int, Field(ge=0)] = 0
    job_cap_per_host: Annotated[int, Field(ge=1, le=1000)] = 8
    # At most this many tasks on one host (the engine's host task limit; its CPUs and IPs bind too).
    host_task_limit: Annotated[int, Field(ge=1, le=4096)] = 120
    # Image provenance (docs/provenance.md): a registry lookup's timeout (at submit and in the tag
    # check); how often each running job's tag is checked for having moved (0: never), at most this
    # many lookups per pass.
    registry_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Submissions within this many seconds of one another share one lookup per tag (0: every
    # submission asks); the tag check always asks afresh.
    registry_reuse: Annotated[float, Field(ge=0, le=300)] = 10.0
    tag_check_interval: Annotated[float, Field(ge=0)] = 300.0
    tag_checks_per_pass: Annotated[int, Field(ge=1, le=1000)] = 16
    # The automatic switch on a burst (scheduler/automode.py): pack once this many Accepted tasks wait
    # for `auto_mode_hold` seconds, spread again at or below `auto_spread_queue_depth`. 0: off.
    auto_pack_queue_depth: Annotated[int, Field(ge=0)] = 0
    auto_spread_queue_depth: Annotated[int, Field(ge=0)] = 100
    auto_mode_hold: Annotated[float, Field(ge=0)] = 30.0
    # Its arrival-rate trigger: pack at once when at least this many tasks a second were submitted
    # over the last `auto_arrival_window` seconds; spread again (with the queue at or below
    # `auto_spread_queue_depth`, for `auto_mode_hold`) at or below `auto_spread_arrival_rate`. 0: off.
    auto_pack_arrival_rate: Annotated[float, Field(ge=0)] = 0.0
    auto_spread_arrival_rate: Annotated[float, Field(ge=0)] = 10.0
    auto_arrival_window: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # Append every engine pass (inputs and choices) to this JSON-lines file, for `titus-scheduler
    # replay` (scheduler/trace.py). Empty: off. ~1 MB per pass at 7,000 hosts.
    decision_trace: Annotated[str, Field(max_length=4096)] = ""
    # Guarding critical capacity groups' reservations (scheduler/preempt.py): hold their idle
    # reservation back from other work; preempt tasks of groups above their reservation for a
    # critical task within its own (at most this many victims a pass, each through the kill path).
    reservation_hold_back: bool = True
    preemption: bool = True
    preemption_max_per_pass: Annotated[int, Field(ge=1, le=10_000)] = 50
    # Capacity groups (scheduler/capacity.py): `[[capacity_groups]]` tables in the TOML file.
    capacity_groups: list[CapacityGroup] = Field(default_factory=list, max_length=10_000)
    # DRF hands a group a run of tasks while its dominant share stays within this much of the next
    # group's (0: strictly task by task; docs/capacity-runs.md).
    drf_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.01

    @model_validator(mode="after")
    def _capacity_group_names_unique(self) -> SchedulerConfig:
        names = [g.name for g in self.capacity_groups]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"capacity group names must be unique: {', '.join(twice)} given twice")
        return self

    @model_validator(mode="after")
    def _auto_mode_has_a_gap(self) -> SchedulerConfig:
        if self.auto_pack_queue_depth and self.auto_spread_queue_depth >= self.auto_pack_queue_depth:
            raise ValueError(
                f"auto_spread_queue_depth ({self.auto_spread_queue_depth}) must be below "
                f"auto_pack_queue_depth ({self.auto_pack_queue_depth}): the gap keeps the mode from flapping")
        if self.auto_pack_arrival_rate and self.auto_spread_arrival_rate >= self.auto_pack_arrival_rate:
            raise ValueError(
                f"auto_spread_arrival_rate ({self.auto_spread_arrival_rate:g}) must be below "
                f"auto_pack_arrival_rate ({self.auto_pack_arrival_rate:g}): the gap keeps the mode from flapping")
        return self


class ServiceConfig(BaseModel):
    """Everything `titus-scheduler` starts from."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    listen: tuple[str, int] = ("127.0.0.1", 7100)
    db: Path = Path("/var/lib/titus/scheduler.db")
    log_level: str = "INFO"
    # None: the built-in policy (only the `default` variant; docs/security.md).
    security_policy: Path | None = None
    # Scheduled online snapshots, each restore-tested (docs/reconcile.md, "Backups"); None: off.
    backup_dir: Path | None = None
    backup_interval: Annotated[float, Field(gt=0)] = 3600.0
    backup_keep: Annotated[int, Field(ge=1)] = 24
    # Trust (docs/trust.md): the cell CA directory (`titus-scheduler ca init`), or plain HTTP without
    # authentication with `insecure` (a warning at every start). One of the two is required.
    pki: Path | None = None
    insecure: bool = False
    iam_policy: Path | None = None
    node_cert_ttl: Annotated[float, Field(ge=30, le=30 * 86400)] = 86400.0
    # Nodes are EC2 instances: a bootstrap must carry the instance identity document, verified
    # against this policy file's AWS certificates and accounts (scheduler/iid.py); None: off (local).
    aws_imds_identity: Path | None = None
    # POST /v1/bootstrap's token buckets (scheduler/bootstrap_limit.py): the cell's, and each source
    # address's; a refused call gets 429 with Retry-After.
    bootstrap_rate: Annotated[float, Field(gt=0, le=10_000)] = 20.0
    bootstrap_burst: Annotated[int, Field(ge=1, le=100_000)] = 200
    bootstrap_source_rate: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    bootstrap_source_burst: Annotated[int, Field(ge=1, le=100_000)] = 10
    # Workload identity (docs/identity.md): the cell's name (the SPIFFE trust domain of task
    # identities) and the lifetime of a task's certificate (the agent rotates it with a third left).
    cell: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$")] = "local"
    workload_cert_ttl: Annotated[float, Field(ge=10, le=86400)] = 3600.0
    # Who may name an app (docs/identity.md): an app with no admin grant is claimed by the first owner
    # that uses it (`claim`), or refused until an admin grants it (`granted`).
    app_ownership: Literal["claim", "granted"] = "claim"
    scheduler: SchedulerConfig = SchedulerConfig()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"unknown log level {value!r}; one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value


SCHEDULER_KEYS = tuple(SchedulerConfig.model_fields)
SERVICE_KEYS = tuple(k for k in ServiceConfig.model_fields if k != "scheduler")
KEYS = (*SERVICE_KEYS, *SCHEDULER_KEYS)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def service_config(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the configuration from flat keys (the long flags with underscores). `values` holds
    Python values (a `listen` tuple, `Path`s) or TOML ones (strings) — both are accepted.
    `sources` says where each key came from (a file's path, or `--flag`), for the error message."""
    sources = sources or {}

    def where(key: str, value: Any) -> str:
        source = sources.get(key, "configuration")
        return f"{source} {value}" if source.startswith("--") else f"{source}: {key} = {value!r}"

    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        files = sorted({sources.get(k, "configuration") for k in unknown})
        raise ConfigError(f"{', '.join(files)}: unknown keys {unknown}; known: {sorted(KEYS)}")
    service: dict[str, Any] = {k: values[k] for k in SERVICE_KEYS if k in values}
    for key in ("db", "security_policy", "backup_dir", "pki", "iam_policy", "aws_imds_identity"):
        if isinstance(service.get(key), str):
            service[key] = Path(service[key])
        elif key in service and not isinstance(service[key], Path | None):
            raise ConfigError(f"{where(key, service[key])}: expected a path (a string)")
    if isinstance(service.get("listen"), str):
        try:
            service["listen"] = parse_listen(service["listen"])
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{sources.get('listen', 'configuration')}: listen: {e}") from None
    tuning = {k: values[k] for k in SCHEDULER_KEYS if k in values}
    try:
        return ServiceConfig(**service, scheduler=SchedulerConfig(**tuning))
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else "configuration"
            problems.append(f"{where(key, err.get('input'))}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None
