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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    # Containers the scheduler does not know may be killed after this age (0: never; off by default).
    orphan_kill_after: Annotated[float, Field(ge=0)] = 0.0
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
    # Placement (docs/scheduling.md): the mode at start (switch live with `titusctl admin
    # scheduling-mode`), the tie-break seed, and one job's per-host cap when it sets none.
    scheduling_mode: Literal["spread", "pack"] = "spread"
    placement_seed: Annotated[int, Field(ge=0)] = 0
    job_cap_per_host: Annotated[int, Field(ge=1, le=1000)] = 8


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
    # Workload identity (docs/identity.md): the cell's name (the SPIFFE trust domain of task
    # identities) and the lifetime of a task's certificate (the agent rotates it with a third left).
    cell: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$")] = "local"
    workload_cert_ttl: Annotated[float, Field(ge=10, le=86400)] = 3600.0
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
    for key in ("db", "security_policy", "backup_dir", "pki", "iam_policy"):
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
