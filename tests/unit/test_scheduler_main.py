"""The scheduler process refuses to start on configuration or state it cannot use, and says why:
one line on stderr, `titus-scheduler: cannot start: …`, and the exit code of the error's kind
(titus_common/errors.py): 2 configuration, 3 store, 6 listen. Never a traceback."""

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from tests.ec2sim.iid import IidAuthority
from titus_common.jobspec import parse_job_spec

PREFIX = "titus-scheduler: cannot start: "


def start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.main", *args], capture_output=True, text=True, timeout=30
    )


def refusal(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one refusal line, after checking the exit code and that nothing else went wrong."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(PREFIX), proc.stderr
    assert [line for line in lines if line.startswith("titus-scheduler:")] == [lines[-1]], proc.stderr
    return lines[-1]


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
    proc = start("--listen", "127.0.0.1:1", "--db", str(db))
    assert proc.returncode == 3
    assert "cannot start" in proc.stderr and "tasks record" in proc.stderr and "cannot be read" in proc.stderr
    line = refusal(proc, 3)
    assert str(db) in line and "tasks record" in line and "cannot be read" in line


def test_bad_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    proc = start("--listen", "nonsense", "--db", str(tmp_path / "s.db"))
    assert proc.returncode == 2 and "expected HOST:PORT" in proc.stderr
    assert "--listen" in refusal(proc, 2)


def test_bad_security_policy_stops_the_process(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 1, "variants": {"nope": [{"owner": "x"}]}}')
    proc = start("--listen", "127.0.0.1:1", "--db", str(tmp_path / "s.db"), "--security-policy", str(policy))
    assert proc.returncode == 2
    assert "cannot start" in proc.stderr and str(policy) in proc.stderr and "nope" in proc.stderr
    line = refusal(proc, 2)
    assert str(policy) in line and "nope" in line


def test_missing_security_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "absent.json"
    line = refusal(start("--db", str(tmp_path / "s.db"), "--security-policy", str(policy)), 2)
    assert str(policy) in line and "cannot read" in line


def test_bad_flag_value(tmp_path: Path) -> None:
    line = refusal(start("--db", str(tmp_path / "s.db"), "--lost-after", "x"), 2)
    assert "--lost-after" in line and "'x'" in line
    line = refusal(start("--db", str(tmp_path / "s.db"), "--lost-after", "0"), 2)
    assert "--lost-after" in line and "greater than 0" in line
    line = refusal(start("--db", str(tmp_path / "s.db"), "--log-level", "LOUD"), 2)
    assert "--log-level" in line and "LOUD" in line
    assert "--no-such-flag" in refusal(start("--no-such-flag"), 2)


def test_config_file_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text('lost_after = 900.0\nlost_afterr = 1\nlisten_on = "x"\n')
    line = refusal(start("--config", str(config)), 2)
    assert str(config) in line and "unknown keys ['listen_on', 'lost_afterr']" in line


def test_config_file_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text('lost_after = "x"\n')
    line = refusal(start("--config", str(config), "--db", str(tmp_path / "s.db")), 2)
    assert f"{config}: lost_after = 'x'" in line and "valid number" in line


def test_config_file_out_of_range_and_unreadable(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text("max_lost_per_minute = 0\n")
    line = refusal(start("--config", str(config), "--db", str(tmp_path / "s.db")), 2)
    assert "max_lost_per_minute = 0" in line and "greater than or equal to 1" in line
    config.write_text("lost_after = [\n")
    assert "not valid TOML" in refusal(start("--config", str(config)), 2)
    assert "cannot read" in refusal(start("--config", str(tmp_path / "absent.toml")), 2)


def test_store_with_tables_but_no_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, doc TEXT NOT NULL)")
    conn.commit()
    conn.close()
    line = refusal(start("--listen", "127.0.0.1:1", "--db", str(db)), 3)
    assert str(db) in line and "schema version 0" in line and "jobs" in line
    assert "already exists" not in line
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # the refused file is left as it was
    conn.close()


def test_store_newer_than_the_code(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    line = refusal(start("--listen", "127.0.0.1:1", "--db", str(db)), 3)
    assert "schema version 99 is newer" in line


def test_store_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.write_text("not sqlite at all\n" * 100)
    line = refusal(start("--listen", "127.0.0.1:1", "--db", str(db)), 3)
    assert str(db) in line and "not a database" in line


def test_address_in_use_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refusal(start("--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "s.db"), "--insecure"), 6)
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_no_pki_and_not_insecure_refuses_to_start(tmp_path: Path) -> None:
    line = refusal(start("--listen", "127.0.0.1:1", "--db", str(tmp_path / "s.db")), 2)
    assert "no --pki" in line and "ca init" in line and "--insecure" in line


def test_a_pki_without_a_ca_refuses_to_start(tmp_path: Path) -> None:
    line = refusal(start("--listen", "127.0.0.1:1", "--db", str(tmp_path / "s.db"), "--pki", str(tmp_path / "none")), 2)
    assert "cell CA" in line and "ca init" in line


def test_a_bad_instance_identity_policy_refuses_to_start(tmp_path: Path) -> None:
    """--aws-imds-identity (docs/trust.md, "Bound to the instance"): a policy that names no readable
    AWS certificate, or the flag without TLS, is a one-line configuration refusal (exit 2)."""
    pki = tmp_path / "pki"
    assert start("ca", "init", "--pki", str(pki)).returncode == 0
    policy = tmp_path / "iid.json"
    policy.write_text('{"certificates": {"us-east-1": ["/nonexistent/aws.pem"]}, "accounts": ["123456789012"]}')
    db = str(tmp_path / "s.db")
    line = refusal(start("--listen", "127.0.0.1:1", "--db", db, "--pki", str(pki), "--aws-imds-identity", str(policy)), 2)
    assert "AWS identity certificate for us-east-1" in line and "/nonexistent/aws.pem" in line
    policy.write_text('{"certificates": {"*": []}, "accounts": []}')
    line = refusal(start("--listen", "127.0.0.1:1", "--db", db, "--pki", str(pki), "--aws-imds-identity", str(policy)), 2)
    assert "--aws-imds-identity" in line and "accounts" in line
    good = IidAuthority().write_policy(tmp_path / "good")
    line = refusal(start("--listen", "127.0.0.1:1", "--db", db, "--insecure", "--aws-imds-identity", str(good)), 2)
    assert "--aws-imds-identity needs --pki" in line


def test_trust_commands(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert start("ca", "init", "--pki", str(pki)).returncode == 0
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
    again = start("ca", "init", "--pki", str(pki))
    assert again.returncode == 2 and "refusing to replace" in again.stderr
    made = start("token", "create", "--db", str(tmp_path / "s.db"), "--nodes", "i-*", "--ttl", "1h")
    assert made.returncode == 0 and "." in made.stdout.strip()
    both = start("token", "create", "--db", str(tmp_path / "s.db"), "--nodes", "i-*", "--role", "admin")
    assert both.returncode == 2 and "either --nodes" in both.stderr


def test_choice_and_switch_flags_of_the_tunables() -> None:
    """Literal tunables take their choices, booleans --x/--no-x (they used to parse as floats)."""
    import pytest

    from scheduler.main import load_config
    from titus_common.errors import ConfigError

    c = load_config(["--insecure", "--scheduling-mode", "pack", "--retire-provider", "aws",
                     "--no-remediation-enabled", "--host-task-limit", "300"])
    assert (c.scheduler.scheduling_mode, c.scheduler.retire_provider) == ("pack", "aws")
    assert c.scheduler.remediation_enabled is False and c.scheduler.host_task_limit == 300
    with pytest.raises(ConfigError, match="invalid choice"):
        load_config(["--insecure", "--scheduling-mode", "binpack"])
