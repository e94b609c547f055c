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
from typing import Annotated, Any

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


class ServiceConfig(BaseModel):
    """Everything `titus-scheduler` starts from."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    listen: tuple[str, int] = ("127.0.0.1", 7100)
    db: Path = Path("/var/lib/titus/scheduler.db")
    log_level: str = "INFO"
    # None: the built-in policy (only the `default` variant; docs/security.md).
    security_policy: Path | None = None
    # Trust (docs/trust.md): the cell CA directory (`titus-scheduler ca init`), or plain HTTP without
    # authentication with `insecure` (a warning at every start). One of the two is required.
    pki: Path | None = None
    insecure: bool = False
    iam_policy: Path | None = None
    node_cert_ttl: Annotated[float, Field(ge=30, le=30 * 86400)] = 86400.0
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
    for key in ("db", "security_policy", "pki", "iam_policy"):
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
