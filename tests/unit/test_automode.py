"""The automatic spread ⇄ pack switch on a burst: hysteresis (pure), and through the scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.automode import AutoMode
from scheduler.config import SchedulerConfig, service_config
from scheduler.core import Scheduler
from scheduler.engine import Engine
from scheduler.errors import Conflict
from scheduler.fitness import Mode
from scheduler.metrics import SchedulerMetrics
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock
from tests.unit.test_scheduling_passes import big_job, node
from titus_common.errors import ConfigError

P, S = Mode.PACK, Mode.SPREAD


@pytest.mark.parametrize("steps, expect", [
    # (depth, current mode, time) → decision at each step
    ([(500, S, 0), (500, S, 29), (500, S, 30)], [None, None, P]),  # holds 30 s, then packs
    ([(500, S, 0), (50, S, 10), (500, S, 20), (500, S, 49), (500, S, 50)], [None, None, None, None, P]),  # dip resets
    ([(300, S, 0), (300, S, 100)], [None, None]),  # between the thresholds: no change either way
    ([(500, P, 0), (500, P, 100)], [None, None]),  # already packing
    ([(100, P, 0), (100, P, 30)], [None, S]),  # drained: back to spread after the hold
    ([(101, P, 0), (101, P, 300)], [None, None]),  # just above the low mark: stays packed
])
def test_hysteresis(steps: list[tuple[int, Mode, float]], expect: list[Mode | None]) -> None:
    auto = AutoMode(pack_at=400, spread_at=100, hold_s=30)
    assert [auto.decide(d, m, t) for d, m, t in steps] == expect


def test_a_hold_does_not_survive_a_pin() -> None:
    auto = AutoMode(pack_at=10, spread_at=1, hold_s=30)
    assert auto.decide(50, S, 0) is None  # the hold starts
    auto.pinned = True
    auto.reset()
    auto.pinned = False
    assert auto.decide(50, S, 1000) is None  # a new hold, not the stale one
    assert auto.decide(50, S, 1030) is P


def test_off_and_pinned_never_switch() -> None:
    assert AutoMode(0, 0, 0).decide(10**6, S, 0) is None
    pinned = AutoMode(10, 1, 0, pinned=True)
    assert pinned.decide(10**6, S, 0) is None and not pinned.enabled


def test_thresholds_need_a_gap() -> None:
    with pytest.raises(ConfigError, match="must be below auto_pack_queue_depth"):
        service_config({"auto_pack_queue_depth": 100, "auto_spread_queue_depth": 100})
    assert service_config({"auto_pack_queue_depth": 100, "auto_spread_queue_depth": 10}).scheduler.auto_pack_queue_depth == 100


def test_a_burst_packs_and_the_drain_spreads_an_operator_pins(tmp_path: Path) -> None:
    clock = Clock()
    config = SchedulerConfig(auto_pack_queue_depth=20, auto_spread_queue_depth=2, auto_mode_hold=5)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), config, clock=clock)
    node(s, "n1", cpus=4)
    burst, _ = s.submit(big_job(8, 30))  # 30 tasks no host fits: the queue stays deep
    s.schedule_pass()
    assert s.scheduling_mode is S
    clock.now += 5
    s.schedule_pass()
    assert s.scheduling_mode is P
    s.kill_job(burst.id)
    s.schedule_pass()
    clock.now += 5
    s.schedule_pass()
    assert s.scheduling_mode is S  # drained
    s.set_scheduling_mode("spread", actor="alice")  # an operator's choice pins it
    s.submit(big_job(8, 30))
    for _ in range(3):
        clock.now += 10
        s.schedule_pass()
    assert s.scheduling_mode is S
    s.set_scheduling_mode("auto", actor="alice")
    s.schedule_pass()
    clock.now += 5
    s.schedule_pass()
    assert s.scheduling_mode is P


def test_auto_when_off_is_a_conflict(tmp_path: Path) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), SchedulerConfig(), clock=Clock())
    with pytest.raises(Conflict, match="automatic switch is off"):
        s.set_scheduling_mode("auto", actor="bob")
