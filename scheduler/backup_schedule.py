"""The scheduled backup and restore test, run by the scheduler process (docs/reconcile.md, "Backups").

Every `backup_interval` seconds: an online snapshot into `backup_dir`, retention down to
`backup_keep`, then the restore test of that snapshot — all in a worker thread, so the event loop
keeps serving. The result is exported: `titus_backup_last_snapshot_timestamp_seconds`,
`titus_backup_last_verified_timestamp_seconds` (the last snapshot that passed),
`titus_backup_last_restore_test_ok` (1 passed, 0 failed), the durations and failures by step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler import backup
from titus_common.errors import TitusError

__all__ = ["BackupMetrics", "BackupSchedule"]

log = logging.getLogger("titus.scheduler.backup")


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_snapshot = Gauge("titus_backup_last_snapshot_timestamp_seconds",
                                   "When the last snapshot was written", registry=registry)
        self.last_verified = Gauge("titus_backup_last_verified_timestamp_seconds",
                                   "When a snapshot last passed its restore test", registry=registry)
        self.last_ok = Gauge("titus_backup_last_restore_test_ok",
                             "1 if the last restore test passed, 0 if it failed", registry=registry)
        self.snapshot_seconds = Gauge("titus_backup_snapshot_seconds", "Duration of the last snapshot",
                                      registry=registry)
        self.verify_seconds = Gauge("titus_backup_restore_test_seconds", "Duration of the last restore test",
                                    registry=registry)
        self.failures = Counter("titus_backup_failures", "Failed backup steps", ["step"], registry=registry)


class BackupSchedule:
    def __init__(self, db: Path, out_dir: Path, interval: float, keep: int, registry: CollectorRegistry) -> None:
        self.db, self.out_dir, self.interval, self.keep = db, out_dir, interval, keep
        self.metrics = BackupMetrics(registry)

    def once(self) -> bool:
        """Snapshot, prune, restore-test. Returns whether the restore test passed (blocking)."""
        started = time.monotonic()
        try:
            snap = backup.snapshot(self.db, self.out_dir)
        except TitusError as e:
            self.metrics.failures.labels(step="snapshot").inc()
            log.error("BACKUP FAILED: %s", e)
            return False
        self.metrics.snapshot_seconds.set(time.monotonic() - started)
        self.metrics.last_snapshot.set(time.time())
        backup.prune(self.out_dir, self.keep)
        try:
            result = backup.verify(snap)
        except TitusError as e:
            self.metrics.failures.labels(step="restore_test").inc()
            self.metrics.last_ok.set(0)
            log.error("RESTORE TEST FAILED: %s", e)
            return False
        self.metrics.verify_seconds.set(result.seconds)
        self.metrics.last_ok.set(1)
        self.metrics.last_verified.set(time.time())
        log.info("backup %s written and restore-tested (%.2fs)", snap.name, result.seconds)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.once)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
