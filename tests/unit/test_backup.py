"""Backups: an online snapshot while writes continue, its manifest, retention, the restore test
(a good snapshot passes; flipped bytes, a deleted row, a manifest that disagrees fail loudly with
exit code 3), restore refusing to overwrite a store, and the scheduled run's metrics."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from scheduler import backup
from scheduler.backup_cli import main as cli
from scheduler.backup_schedule import BackupSchedule
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore, StoreCorrupt
from tests.unit.test_scheduler_core import Clock, node, spec
from titus_common.errors import EXIT_BAD_CONFIG, EXIT_OK, EXIT_STATE_CORRUPT


def populated(tmp_path: Path, jobs: int = 3) -> tuple[Path, Scheduler]:
    db = tmp_path / "live.db"
    s = Scheduler(SQLiteStore(db), FirstFit(), SchedulerMetrics(), clock=Clock())
    node(s, cpus=64)
    for _ in range(jobs):
        s.submit(spec(batch={"size": 4}))
    s.schedule_pass()
    return db, s


def test_good_snapshot_passes_with_a_manifest(tmp_path: Path) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    m = backup.read_manifest(snap)
    assert m.schema_version == 1 and m.counts.jobs == 3 and m.counts.nodes == 1
    assert m.counts.tasks == {"Launched": 12}
    result = backup.verify(snap)
    assert result.manifest == m
    assert cli(["restore-test", str(snap)]) == EXIT_OK
    s.store.close()


def test_snapshot_is_consistent_while_writes_continue(tmp_path: Path) -> None:
    db, s = populated(tmp_path, jobs=1)
    stop = threading.Event()
    writer = SQLiteStore(db)  # a second writer committing jobs (with their tasks) the whole time

    def write() -> None:
        w = Scheduler(writer, FirstFit(), SchedulerMetrics(), clock=Clock())
        while not stop.is_set():
            w.submit(spec(batch={"size": 5}))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        snaps = [backup.snapshot(db, tmp_path / "out", now=1000.0 + i) for i in range(5)]
    finally:
        stop.set()
        thread.join()
    for snap in snaps:  # each one whole: every job with all its task rows, counts as the manifest says
        backup.verify(snap)
    assert backup.read_manifest(snaps[-1]).counts.jobs > 1
    writer.close()
    s.store.close()


def test_flipped_bytes_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    data = bytearray(snap.read_bytes())
    for i in range(4096 + 100, 4096 + 140):  # inside the second page
        data[i] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="checksum"):
        backup.verify(snap)
    assert cli(["restore-test", str(snap)]) == EXIT_STATE_CORRUPT
    assert "restore test FAILED" in capsys.readouterr().err
    s.store.close()


def _delete_task_row(snap: Path, restamp: bool) -> None:
    con = sqlite3.connect(snap)
    con.execute("DELETE FROM tasks WHERE rowid = (SELECT min(rowid) FROM tasks)")
    con.commit()
    con.close()
    if restamp:  # as if the snapshot had been taken of a store already missing the row
        path = backup.manifest_path(snap)
        doc = json.loads(path.read_text())
        doc["sha256"] = backup._sha256(snap)
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize("restamp", [False, True])
def test_a_deleted_row_fails(tmp_path: Path, restamp: bool) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    _delete_task_row(snap, restamp)
    with pytest.raises(StoreCorrupt) as e:
        backup.verify(snap)
    assert "created 4 tasks but the store holds 3" in str(e.value)
    assert "differ from the manifest" in str(e.value)
    if not restamp:
        assert "checksum" in str(e.value)
    s.store.close()


def test_manifest_mismatch_fails(tmp_path: Path) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    path = backup.manifest_path(snap)
    doc = json.loads(path.read_text())
    doc["counts"]["tasks"] = {"Started": 12}
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreCorrupt, match="differ from the manifest"):
        backup.verify(snap)
    path.write_text("{not json")
    assert cli(["restore-test", str(snap)]) == EXIT_STATE_CORRUPT
    path.unlink()
    with pytest.raises(StoreCorrupt, match="manifest"):
        backup.verify(snap)
    s.store.close()


def test_unknown_schema_version_fails(tmp_path: Path) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    con = sqlite3.connect(snap)
    con.execute("PRAGMA user_version=99")
    con.commit()
    con.close()
    with pytest.raises(StoreCorrupt, match="newer than this scheduler understands"):
        backup.verify(snap)
    s.store.close()


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    db, s = populated(tmp_path, jobs=1)
    out = tmp_path / "out"
    snaps = [backup.snapshot(db, out, now=1000.0 + i) for i in range(5)]
    assert backup.prune(out, 2) == snaps[:3]
    assert backup.snapshots(out) == snaps[3:]
    assert not backup.manifest_path(snaps[0]).exists()
    s.store.close()


def test_restore_refuses_a_store_with_data_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    s.submit(spec())  # the live store moves on
    s.store.close()
    assert cli(["restore", str(snap), "--db", str(db)]) == EXIT_BAD_CONFIG
    assert "--force" in capsys.readouterr().err
    assert cli(["restore", str(snap), "--db", str(db), "--force"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert Path(out["previous"]).is_file()
    restored = SQLiteStore(db).load()
    assert len(restored.jobs) == 3  # the snapshot's, not the 4 of the moved-on store
    fresh = tmp_path / "new" / "s.db"
    assert cli(["restore", str(snap), "--db", str(fresh)]) == EXIT_OK
    assert cli(["backup", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "o")]) == EXIT_STATE_CORRUPT
    assert cli(["restore"]) == EXIT_BAD_CONFIG


def test_scheduled_run_exports_the_result(tmp_path: Path) -> None:
    db, s = populated(tmp_path)
    registry = CollectorRegistry()
    sched = BackupSchedule(db, tmp_path / "out", 3600, 2, registry)
    assert sched.once()
    assert (registry.get_sample_value("titus_backup_last_verified_timestamp_seconds") or 0) > 0
    assert registry.get_sample_value("titus_backup_last_restore_test_ok") == 1
    s.store.close()
    db.unlink()
    assert not sched.once()
    assert registry.get_sample_value("titus_backup_failures_total", {"step": "snapshot"}) == 1
