"""`titusctl task top` (titusctl/top.py): CPU % per process between two stats readings, busiest
first, new processes counted from zero, and the verb's two readings through the API."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from titusctl.client import CliError
from titusctl.main import build_parser
from titusctl.top import top_rows, top_text


def reading(at: float, cpu: float, procs: list[tuple[int, str, float | None]]) -> dict[str, Any]:
    return {"taskId": "t1", "nodeId": "n1", "collectedAt": at, "processCount": len(procs),
            "cpu": {"usageSeconds": cpu, "limitCpus": 2.0}, "memory": {"usageBytes": 8 << 20, "limitBytes": 64 << 20},
            "processes": [{"pid": pid, "comm": comm, "state": "R", "cpuSeconds": s, "rssBytes": 1 << 20,
                           "threads": 1, "cmdline": comm} for pid, comm, s in procs]}


def test_cpu_percent_between_readings_busiest_first() -> None:
    before = reading(100.0, 10.0, [(1, "sh", 1.0), (7, "spin", 5.0), (9, "gone", 1.0)])
    after = reading(102.0, 12.5, [(1, "sh", 1.0), (7, "spin", 6.8), (12, "new", 0.4), (13, "odd", None)])
    rows = top_rows(before, after)
    assert [(r["pid"], r["cpuPercent"]) for r in rows] == [(7, 90.0), (12, 20.0), (1, 0.0), (13, None)]
    text = top_text(before, after, rows)
    assert text.startswith("task t1 on n1: cpu 125.0% over 2.0s (limit 2.0 cpus), memory 8.0MiB of 64.0MiB")
    assert "PID" in text and "90.0" in text and "spin" in text
    # a reused PID with another command is a new process, not a negative delta
    assert top_rows(reading(0, 0, [(5, "a", 9.0)]), reading(1, 0, [(5, "b", 0.5)]))[0]["cpuPercent"] == 50.0


def test_the_verb_reads_twice(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = iter([reading(0.0, 0.0, [(1, "sh", 0.0)]), reading(1.0, 0.5, [(1, "sh", 0.5)])])
    calls: list[tuple[str, str]] = []

    class Fake:
        def call(self, method: str, path: str, body: Any = None) -> Any:
            calls.append((method, path))
            return next(docs)

    monkeypatch.setattr("titusctl.top.time.sleep", lambda s: None)
    args: argparse.Namespace = build_parser().parse_args(["task", "top", "t1", "--interval", "0.5"])
    assert args.fn(Fake(), args) == 0
    assert calls == [("GET", "/v1/tasks/t1/stats")] * 2
    assert "50.0" in capsys.readouterr().out
    bad = build_parser().parse_args(["task", "top", "t1", "--interval", "0"])
    with pytest.raises(CliError, match="--interval"):
        bad.fn(Fake(), bad)
