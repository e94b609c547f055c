"""The trust store `<db>.auth` is part of every backup (scheduler/backup_trust.py): snapshotted beside
the store, named and checksummed in the manifest, checked by the restore test, put back by restore
(the deny list survives: a revoked node stays revoked), pruned with its snapshot."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from scheduler import backup
from scheduler.authstore import AuthStore, Token, TokenRefused, auth_db_path
from scheduler.backup_cli import main as cli
from scheduler.store import StoreCorrupt
from tests.unit.test_backup import populated
from titus_common.errors import EXIT_OK, EXIT_STATE_CORRUPT


def with_trust(tmp_path: Path) -> tuple[Path, AuthStore]:
    db, s = populated(tmp_path)
    s.store.close()
    store = AuthStore(auth_db_path(db))
    store.create_token(Token(id="op1", kind="operator", expires_at=time.time() + 3600, name="bob", role="admin"))
    store.record_cert("n-1", "abc1", time.time() + 3600)
    store.record_cert("n-2", "abc2", time.time() + 3600)
    store.revoke_node("n-2")
    store.audit("operator:bob(admin)", "POST", "/v1/jobs", 201)
    return db, store


def test_snapshot_carries_the_trust_store_and_the_restore_test_checks_it(tmp_path: Path) -> None:
    db, store = with_trust(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")  # online: the live trust store stays open
    m = backup.read_manifest(snap)
    assert m.trust is not None and m.trust.snapshot == snap.name + ".auth"
    assert m.trust.counts == {"tokens": 1, "node_certs": 2, "revoked": 1, "audit": 1, "node_instances": 0}
    assert (snap.parent / m.trust.snapshot).is_file()
    assert backup.verify(snap).manifest.trust == m.trust
    assert backup.snapshots(tmp_path / "out") == [snap]  # the trust file is no snapshot of its own
    store.close()


def test_a_damaged_or_missing_trust_store_fails_the_restore_test(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db, store = with_trust(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    trust = snap.with_name(snap.name + ".auth")
    con = sqlite3.connect(trust)
    con.execute("DELETE FROM revoked")  # the deny list lost
    con.commit()
    con.close()
    with pytest.raises(StoreCorrupt, match="trust store .*checksum"):
        backup.verify(snap)
    path = backup.manifest_path(snap)  # as if it had been taken that way: the counts still disagree
    doc = json.loads(path.read_text())
    doc["trust"]["sha256"] = backup._sha256(trust)
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreCorrupt, match="'revoked': 0.*differ from the manifest"):
        backup.verify(snap)
    trust.unlink()
    assert cli(["restore-test", str(snap)]) == EXIT_STATE_CORRUPT
    err = capsys.readouterr().err
    assert "trust store" in err and "missing" in err, err
    store.close()


def test_restore_puts_the_trust_store_back_and_keeps_the_old_one(tmp_path: Path) -> None:
    db, store = with_trust(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    store.close()
    target = tmp_path / "new" / "s.db"
    target.parent.mkdir()
    # `token create` before the first start writes a trust store beside an empty store
    AuthStore(auth_db_path(target)).close()
    assert cli(["restore", str(snap), "--db", str(target)]) == EXIT_OK
    restored = AuthStore(auth_db_path(target))
    try:
        assert restored.revoked("abc2")  # the revoked node stays revoked
        assert restored.cert_current("n-1", "abc1") and not restored.cert_current("n-2", "abc2")
        assert restored.audit_log()[0]["path"] == "/v1/jobs"
    finally:
        restored.close()
    assert list(target.parent.glob("s.db.auth.before-restore-*"))


def test_prune_removes_the_trust_snapshot_too(tmp_path: Path) -> None:
    db, store = with_trust(tmp_path)
    out = tmp_path / "out"
    snaps = [backup.snapshot(db, out, now=1000.0 + i) for i in range(3)]
    backup.prune(out, keep=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [snaps[-1].name, snaps[-1].name + ".auth", backup.manifest_path(snaps[-1]).name])
    store.close()


def test_a_snapshot_without_a_trust_store_still_verifies(tmp_path: Path) -> None:
    db, s = populated(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    assert backup.read_manifest(snap).trust is None
    backup.verify(snap)
    s.store.close()


def test_restoring_an_older_trust_store_undoes_no_revocation_certificate_or_spent_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, store = with_trust(tmp_path)
    boot = store.create_token(Token(id="boot1", kind="bootstrap", expires_at=time.time() + 3600, nodes="n-*",
                                    uses_left=1))
    snap = backup.snapshot(db, tmp_path / "out")
    # after the backup: n-1 revoked, n-3 bootstrapped (its token spent), an audited call
    store.revoke_node("n-1")
    store.use_bootstrap(boot, "n-3")
    store.record_cert("n-3", "abc3", time.time() + 3600)
    store.audit("operator:bob(admin)", "POST", "/v1/admin/nodes/n-1/revoke", 200, at=time.time() + 1)
    assert store.bind_instance("i-00000000000000003", "n-3", "arn:aws:ec2:us-east-1:1:instance/i-00000000000000003")
    store.close()
    assert cli(["restore", str(snap), "--db", str(db), "--force"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["trust"] is True and out["trustNote"] is None and Path(out["trustPrevious"]).is_file()
    restored = AuthStore(auth_db_path(db))
    try:
        assert restored.revoked("abc1") and not restored.cert_current("n-1", "abc1")
        assert restored.cert_current("n-3", "abc3")
        with pytest.raises(TokenRefused, match="already used"):
            restored.use_bootstrap(boot, "n-4")
        assert restored.audit_log()[0]["path"] == "/v1/admin/nodes/n-1/revoke"
        # the instance that bootstrapped after the backup stays used: its document is no replay
        assert restored.instance_use("i-00000000000000003") == ("n-3", False)
        assert restored.instance_binding("n-3") is not None
    finally:
        restored.close()


def test_a_snapshot_from_before_instance_bindings_verifies_and_restores(tmp_path: Path) -> None:
    db, store = with_trust(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    store.close()
    trust = snap.with_name(snap.name + ".auth")  # as an older scheduler wrote it: no node_instances
    con = sqlite3.connect(trust)
    con.execute("DROP TABLE node_instances")
    con.commit()
    con.close()
    path = backup.manifest_path(snap)
    doc = json.loads(path.read_text())
    doc["trust"]["sha256"] = backup._sha256(trust)
    doc["trust"]["bytes"] = trust.stat().st_size
    del doc["trust"]["counts"]["node_instances"]
    path.write_text(json.dumps(doc))
    backup.verify(snap)
    assert cli(["restore", str(snap), "--db", str(db), "--force"]) == EXIT_OK
    restored = AuthStore(auth_db_path(db))
    try:
        assert restored.revoked("abc2") and restored.instance_use("i-00000000000000009") is None
    finally:
        restored.close()


def test_an_unreadable_previous_trust_store_is_set_aside_not_merged(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db, store = with_trust(tmp_path)
    snap = backup.snapshot(db, tmp_path / "out")
    store.close()
    for side in ("-wal", "-shm"):
        auth_db_path(db).with_name(auth_db_path(db).name + side).unlink(missing_ok=True)
    auth_db_path(db).write_bytes(b"not a database at all" * 100)
    assert cli(["restore", str(snap), "--db", str(db), "--force"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert "not merged" in out["trustNote"]
    restored = AuthStore(auth_db_path(db))
    try:
        assert restored.revoked("abc2")
    finally:
        restored.close()
