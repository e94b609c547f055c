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


# ---- the arrival-rate trigger ----------------------------------------------------------------------

def rate_mode(**kw: float) -> AutoMode:
    return AutoMode(pack_at=0, spread_at=100, hold_s=30,
                    pack_rate=kw.get("pack_rate", 100.0), spread_rate=kw.get("spread_rate", 10.0), window_s=10)


@pytest.mark.parametrize("steps, expect", [
    # (tasks submitted at this step, queue depth, current mode, time) → decision at each step
    ([(1000, 0, S, 0)], [P]),  # 100/s over 10 s: packs at once, even with an empty queue
    ([(999, 0, S, 0)], [None]),  # 99.9/s: just below
    ([(500, 0, S, 0), (500, 0, S, 5)], [None, P]),  # two submits within the window add up
    ([(500, 0, S, 0), (500, 0, S, 10)], [None, None]),  # the first one left the window
    ([(1000, 0, P, 0), (0, 0, P, 5)], [None, None]),  # already packing; the window still holds the burst
    # Back to spread: the rate at or below 10/s and the queue at or below 100, for 30 s in a row.
    ([(1000, 0, S, 0), (0, 0, P, 10), (0, 0, P, 39), (0, 0, P, 40)], [P, None, None, S]),
    ([(1000, 0, S, 0), (0, 0, P, 10), (0, 500, P, 30), (0, 0, P, 40), (0, 0, P, 69), (0, 0, P, 70)],
     [P, None, None, None, None, S]),  # a backlog left over resets the hold
    # Between the two rates (50/s): neither packs nor spreads.
    ([(1000, 0, S, 0), (500, 0, P, 10), (0, 0, P, 15)], [P, None, None]),
    ([(1000, 0, S, 0), (500, 0, P, 10), (0, 0, P, 19), (0, 0, P, 20), (0, 0, P, 49), (0, 0, P, 50)],
     [P, None, None, None, None, S]),  # calm only once the 50/s submit left the window (t=20)
])
def test_arrival_rate_hysteresis(steps: list[tuple[int, int, Mode, float]], expect: list[Mode | None]) -> None:
    auto = rate_mode()
    got = []
    for n, depth, mode, t in steps:
        auto.arrived(n, t)
        got.append(auto.decide(depth, mode, t))
    assert got == expect


def test_both_triggers_the_backlog_one_still_works() -> None:
    auto = AutoMode(pack_at=400, spread_at=100, hold_s=30, pack_rate=100, spread_rate=10, window_s=10)
    auto.arrived(50, 0)
    assert auto.decide(500, S, 0) is None and auto.decide(500, S, 30) is P  # a slow, sustained backlog
    assert auto.why == "queue depth 500, arrival rate 0/s"
    auto.arrived(2000, 100)
    assert auto.decide(0, S, 100) is P and auto.why == "arrival rate 200/s over 10s"


def test_rate_thresholds_need_a_gap_and_rate_only_may_be_handed_back(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be below auto_pack_arrival_rate"):
        service_config({"auto_pack_arrival_rate": 10, "auto_spread_arrival_rate": 10})
    clock = Clock()
    config = SchedulerConfig(auto_pack_arrival_rate=50, auto_spread_arrival_rate=5, auto_arrival_window=10,
                             auto_mode_hold=5)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), config, clock=clock)
    node(s, "n1", cpus=64)
    s.set_scheduling_mode("spread", actor="alice")
    s.set_scheduling_mode("auto", actor="alice")  # the rate trigger alone makes the switch available


def test_a_fitting_burst_packs_before_any_backlog_forms(tmp_path: Path) -> None:
    clock = Clock()
    mono = Clock()
    config = SchedulerConfig(auto_pack_queue_depth=5000, auto_spread_queue_depth=0, auto_mode_hold=5,
                             auto_pack_arrival_rate=5, auto_spread_arrival_rate=0.5, auto_arrival_window=10)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), config, clock=clock, monotonic=mono)
    for i in range(8):
        node(s, f"n{i}", cpus=64)
    s.submit(big_job(0.1, 60))  # 6 tasks/s over the window; all fit, no queue builds up
    assert s.schedule_pass() == 60 and not s.pending_tasks()
    assert s.scheduling_mode is P  # the backlog trigger (5000 queued) would never have fired
    assert s.placing.auto.describe(mono())["arrivalRate"] == 6.0
    for _ in range(3):  # the window empties, then the hold runs: spread again
        clock.now += 6
        mono.now += 6
        s.schedule_pass()
    assert s.scheduling_mode is S
