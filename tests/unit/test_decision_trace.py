"""Decision traces: every engine pass is written down and `titus-scheduler replay` reproduces it
bit for bit; a tampered input is caught; a trace of other engine code is refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.engine import Engine
from scheduler.fitness import Mode
from scheduler.metrics import SchedulerMetrics
from scheduler.store import SQLiteStore
from scheduler.trace import main, replay
from tests.unit.test_scheduler_core import Clock, spec
from tests.unit.test_scheduling_passes import node
from titus_common.errors import ConfigError
from titus_common.protocol import WarmNetwork, images_digest


def traced_cell(tmp_path: Path) -> tuple[Scheduler, Path, list[str]]:
    trace = tmp_path / "trace.jsonl"
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(Mode.SPREAD, seed=7), SchedulerMetrics(),
                  SchedulerConfig(decision_trace=str(trace)), clock=Clock())
    for i in range(12):
        imgs = ["busybox:latest"] if i % 3 == 0 else []
        node(s, f"n{i:02d}", cpus=8 + i % 4, zone="abc"[i % 3], cached_images_digest=images_digest(imgs),
             cached_images=imgs, ip_capacity=20,
             warm_networks=[WarmNetwork(security_groups=[], free_ips=3)] if i % 2 else [])
    jobs = [
        s.submit(spec(batch={"size": 9}))[0],
        s.submit(spec(constraints={"hard": {"uniqueHost": "true"}, "soft": {"zoneBalance": "true"}},
                      batch={"size": 5}))[0],
        s.submit(spec(container={"image": "busybox:latest", "command": ["true"],
                                 "resources": {"cpu": 64, "memoryMiB": 128}}, batch={"size": 2}))[0],  # fits nowhere
    ]
    s.schedule_pass()
    s.set_scheduling_mode("pack", actor="test")
    s.submit(spec(batch={"size": 6}))
    s.schedule_pass()
    return s, trace, [j.id for j in jobs]


def test_replay_reproduces_every_pass_bit_for_bit(tmp_path: Path) -> None:
    s, trace, _ = traced_cell(tmp_path)
    assert len(trace.read_text().splitlines()) == 2  # one line per engine pass
    out = io.StringIO()
    assert replay(trace, out) == 0
    text = out.getvalue()
    assert "pass 1: mode spread, 12 hosts, 16 decisions: identical" in text
    assert "pass 2: mode pack" in text and "0 differ" in text
    placed = next(t for t in s.tasks.values() if t.node_id)
    out = io.StringIO()
    replay(trace, out, explain=placed.id)
    assert f"task {placed.id} -> {placed.node_id}: score" in out.getvalue() and "resources" in out.getvalue()


def test_a_tampered_input_is_caught(tmp_path: Path) -> None:
    _, trace, _ = traced_cell(tmp_path)
    lines = trace.read_text().splitlines()
    doc = json.loads(lines[0])
    chosen = next(d["host"] for d in doc["decisions"] if d["host"])
    for h in doc["hosts"]:
        if h["id"] == chosen:
            h["free_cpus"] = 0.0  # the host the first task went to now has no room
    trace.write_text("\n".join([json.dumps(doc), *lines[1:]]) + "\n")
    out = io.StringIO()
    assert replay(trace, out) > 0 and "DIFFER" in out.getvalue()


def test_a_trace_of_other_engine_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, trace, _ = traced_cell(tmp_path)
    doc = json.loads(trace.read_text().splitlines()[0])
    doc["code"] = "0123456789abcdef"
    trace.write_text(json.dumps(doc) + "\n")
    with pytest.raises(ConfigError, match="written by engine code '0123456789abcdef'"):
        replay(trace, io.StringIO())
    assert main([str(trace)]) == 2 and "a replay with other code proves nothing" in capsys.readouterr().err
    trace.write_text("not json\n")
    assert main([str(trace)]) == 2


def test_an_unwritable_trace_is_a_config_error_and_a_failing_one_stops_only_tracing(tmp_path: Path) -> None:
    from scheduler.trace import TraceWriter

    with pytest.raises(ConfigError, match="decision_trace: .* cannot be written"):
        TraceWriter(tmp_path / "missing" / "trace.jsonl")
    s, trace, _ = traced_cell(tmp_path)
    trace.unlink()
    trace.mkdir()  # writes fail from now on (a directory where the file was)
    s.submit(spec(batch={"size": 2}))
    assert s.schedule_pass() == 2  # placement goes on
    assert s.placing.trace is not None and s.placing.trace.failed
