"""SchedulerConfig and the scheduler's flags + TOML file: typed, validated, flags winning."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from scheduler.config import SchedulerConfig, ServiceConfig, service_config
from scheduler.core import SchedulerConfig as FromCore
from scheduler.main import load_config
from titus_common.errors import EXIT_BAD_CONFIG, ConfigError


def test_defaults_frozen_and_importable_from_core() -> None:
    assert FromCore is SchedulerConfig
    c = SchedulerConfig()
    assert (c.disconnect_after, c.lost_after, c.max_lost_per_minute, c.crash_loop_threshold) == (20.0, 600.0, 100, 3)
    with pytest.raises(ValidationError):
        c.lost_after = 1.0  # type: ignore[misc]
    assert SchedulerConfig(lost_after=5).lost_after == 5.0  # an int is a fine number of seconds


@pytest.mark.parametrize(
    "values",
    [
        {"lost_after": 0},
        {"disconnect_after": -1.0},
        {"redeliver_after": "10"},
        {"heartbeat_interval": True},
        {"max_lost_per_minute": 0},
        {"max_lost_per_minute": 1.5},
        {"crash_loop_threshold": 0},
        {"system_backoff_max": -0.5},
        {"unknown": 1},
    ],
)
def test_invalid_values_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SchedulerConfig(**values)  # type: ignore[arg-type]


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('lost_after = 900.0\ndisconnect_after = 30\nlisten = "0.0.0.0:7200"\ndb = "/data/s.db"\n')
    c = load_config(["--config", str(f), "--lost-after", "60", "--db", str(tmp_path / "x.db")])
    assert c.scheduler.lost_after == 60.0 and c.scheduler.disconnect_after == 30.0
    assert c.listen == ("0.0.0.0", 7200) and c.db == tmp_path / "x.db"
    assert load_config([]) == ServiceConfig()


def test_every_scheduler_key_has_a_flag() -> None:
    c = load_config(["--heartbeat-interval", "2", "--max-lost-per-minute", "7", "--crash-loop-threshold", "5",
                     "--redeliver-after", "3", "--system-backoff-base", "0.5", "--streak-reset-after", "60",
                     "--service-failure-backoff-max", "0", "--system-backoff-max", "2"])
    assert c.scheduler == SchedulerConfig(
        heartbeat_interval=2, max_lost_per_minute=7, crash_loop_threshold=5, redeliver_after=3,
        system_backoff_base=0.5, streak_reset_after=60, service_failure_backoff_max=0, system_backoff_max=2,
    )


@pytest.mark.parametrize(
    "values,message",
    [
        ({"lost_after": "x"}, "f.toml: lost_after = 'x': Input should be a valid number"),
        ({"lost_after": 0}, "f.toml: lost_after = 0: Input should be greater than 0"),
        ({"nope": 1, "lost_after": 1}, "f.toml: unknown keys ['nope']"),
        ({"listen": "nonsense"}, "f.toml: listen: expected HOST:PORT"),
        ({"listen": 7100}, "f.toml: listen = 7100"),
        ({"db": 3}, "f.toml: db = 3: expected a path"),
        ({"log_level": "LOUD"}, "f.toml: log_level = 'LOUD': unknown log level"),
        ({"scheduler": {}}, "f.toml: unknown keys ['scheduler']"),  # keys are flat, like the flags
    ],
)
def test_config_errors_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        service_config(values, {k: "f.toml" for k in values})
    assert message in str(e.value)
    assert e.value.exit_code == EXIT_BAD_CONFIG
