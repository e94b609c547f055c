"""The scheduler process refuses to start on state it cannot read, and says why."""

import sqlite3
import subprocess
import sys
from pathlib import Path

from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titus_common.errors import EXIT_STATE_CORRUPT
from titus_common.jobspec import parse_job_spec


def test_corrupt_record_stops_the_process(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    s = Scheduler(SQLiteStore(db), FirstFit(), SchedulerMetrics())
    spec = {"appName": "a", "owner": "o", "container": {"image": "busybox"}, "batch": {"size": 1}}
    job, _ = s.submit(parse_job_spec(spec))
    s.store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET doc = 'garbage'")
    conn.commit()
    conn.close()
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.main", "--listen", "127.0.0.1:1", "--db", str(db)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == EXIT_STATE_CORRUPT, proc.stderr  # 3: persisted state cannot be read
    assert "cannot start" in proc.stderr and "tasks record" in proc.stderr and "cannot be read" in proc.stderr


def test_bad_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.main", "--listen", "nonsense", "--db", str(tmp_path / "s.db")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2 and "expected HOST:PORT" in proc.stderr


def test_bad_security_policy_stops_the_process(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 1, "variants": {"nope": [{"owner": "x"}]}}')
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.main", "--listen", "127.0.0.1:1", "--db", str(tmp_path / "s.db"),
         "--security-policy", str(policy)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot start" in proc.stderr and str(policy) in proc.stderr and "nope" in proc.stderr
