"""The start-up integrity check: a store whose records contradict one another is refused."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from scheduler.integrity import problems
from scheduler.store import SQLiteStore, StoreCorrupt
from tests.unit.test_scheduler_core import Clock, node, report, spec
from tests.unit.test_reconcile_core import make
from titus_common.states import TaskState as S


def running_cell(tmp_path: Path) -> tuple[str, list[str]]:
    clock = Clock()
    s = make(tmp_path, clock)
    node(s, cpus=16)
    job, _ = s.submit(spec(batch={"size": 4}))
    s.schedule_pass()
    ids = [t.id for t in s.job_tasks(job.id)]
    for i in ids:
        report(s, i, S.STARTED, clock.now)
    s.store.close()
    return job.id, ids


def test_a_deleted_task_row_of_a_running_job_refuses_start(tmp_path: Path) -> None:
    job_id, ids = running_cell(tmp_path)
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("DELETE FROM tasks WHERE id = ?", (ids[2],))
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupt, match=f"integrity check failed: job {job_id} created 4 tasks but the store holds 3"):
        make(tmp_path, Clock())


def test_a_task_in_two_places_is_found(tmp_path: Path) -> None:
    _, ids = running_cell(tmp_path)
    store = SQLiteStore(tmp_path / "s.db")
    snap = store.load()
    store.close()
    snap.tasks[1].index = snap.tasks[0].index
    assert any("2 live tasks (a task in two places)" in p for p in problems(snap))
    snap.tasks[0].node_id = "ghost"
    assert any("host ghost, which is not in the store" in p for p in problems(snap))


def test_a_consistent_store_passes_and_an_empty_one_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    running_cell(tmp_path)
    store = SQLiteStore(tmp_path / "s.db")
    assert problems(store.load()) == []
    store.close()
    with caplog.at_level(logging.WARNING):
        make(tmp_path / "empty", Clock())
    assert "starting on an EMPTY store" in caplog.text
