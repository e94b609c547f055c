"""The trust store (`<db>.auth`: token digests, node certificate serials, the deny list, the audit
log; docs/trust.md) is part of every backup (scheduler/backup.py). Restoring the scheduler's store
without it would lose the deny list (a revoked node could sync again with a certificate that has not
expired) and every node's certificate record (every agent would have to bootstrap again).

Beside `scheduler-<time>.db` lies `scheduler-<time>.db.auth`, taken with SQLite's backup API right
after the main store; the manifest's `trust` part holds its name, SHA-256, size and row counts, and
the restore test checks all of them plus SQLite's integrity check and that it opens as a trust
store.

Restoring an older trust store must not undo what only ever grows: `restore` merges from the trust
store it replaces (when that one still reads) every revocation, every certificate issued since (the
CA signed them; the nodes hold them), the lower remaining uses of each token (a spent single-use
token stays spent), the newer audit rows and the EC2 instances that bootstrapped (an instance
identity document is never made replayable by a restore)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from scheduler.authstore import AuthStore, auth_db_path

__all__ = ["TABLES", "TrustPart", "copy_trust", "restore_trust", "trust_snapshot_path", "verify_trust"]

TABLES = ("tokens", "node_certs", "revoked", "audit", "node_instances")


class TrustPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot: str  # the file's name, beside the main snapshot
    sha256: str
    bytes: int
    counts: dict[str, int]  # table → rows


def trust_snapshot_path(snap: Path) -> Path:
    return auth_db_path(snap)


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    """Rows per table present (a snapshot from before a table existed has no count for it, as its
    manifest has none: the two still compare equal)."""
    present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608 (fixed names)
            for t in TABLES if t in present}


def copy_trust(db: Path, partial: Path) -> dict[str, int] | None:
    """Copy the live trust store beside `db` to `partial` (online, one read transaction). None when
    the scheduler has none (plain `--insecure` cells that never minted a token still have one)."""
    src_path = auth_db_path(db)
    if not src_path.is_file():
        return None
    src = sqlite3.connect(src_path)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            return _counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


def verify_trust(copy: Path, part: TrustPart) -> list[str]:
    """The trust half of the restore test, on a scratch copy."""
    try:
        db = sqlite3.connect(copy)
        try:
            check = [row[0] for row in db.execute("PRAGMA integrity_check")]
            counts = _counts(db)
        finally:
            db.close()
    except sqlite3.Error as e:
        return [f"trust store {part.snapshot}: not a readable trust store: {e}"]
    problems = []
    if check != ["ok"]:
        problems.append(f"trust store {part.snapshot}: SQLite integrity check: {'; '.join(check[:5])}")
    if counts != part.counts:
        problems.append(f"trust store {part.snapshot}: counts {counts} differ from the manifest's {part.counts}")
    try:
        AuthStore(copy).close()  # opens as the scheduler would open it (deny list and serials load)
    except sqlite3.Error as e:
        problems.append(f"trust store {part.snapshot}: does not open as a trust store: {e}")
    return problems


_MERGE = (
    "INSERT OR IGNORE INTO revoked SELECT * FROM previous.revoked",
    "INSERT OR IGNORE INTO node_certs SELECT * FROM previous.node_certs",
    "UPDATE node_certs SET revoked = 1 WHERE serial IN (SELECT serial FROM revoked)",
    "INSERT OR IGNORE INTO tokens SELECT * FROM previous.tokens",
    "UPDATE tokens SET uses_left = min(uses_left, (SELECT p.uses_left FROM previous.tokens p WHERE p.id = tokens.id))"
    " WHERE id IN (SELECT id FROM previous.tokens)",
    "INSERT INTO audit SELECT * FROM previous.audit WHERE at > (SELECT coalesce(max(at), 0) FROM main.audit)",
)
# The store replaced is newer than the snapshot: its instance bindings are the truth about which
# EC2 instances have bootstrapped (a restore must not let a used instance identity be replayed).
_MERGE_INSTANCES = "INSERT OR REPLACE INTO node_instances SELECT * FROM previous.node_instances"


def merge_monotonic(restored: Path, previous: Path) -> str | None:
    """Carry what only grows from `previous` into `restored`; None, or why it could not (a trust
    store too damaged to read: the restored one is used as it is)."""
    try:
        con = sqlite3.connect(restored, isolation_level=None)
        try:
            con.execute("ATTACH DATABASE ? AS previous", (str(previous),))
            old = {r[0] for r in con.execute("SELECT name FROM previous.sqlite_master WHERE type = 'table'")}
            con.execute("BEGIN IMMEDIATE")
            for statement in _MERGE:
                con.execute(statement)
            if "node_instances" in old:
                con.execute(_MERGE_INSTANCES)
            con.execute("COMMIT")
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"{previous}: not merged ({e}); revocations and certificates since the snapshot are not carried over"
    return None


def restore_trust(snap_trust: Path, db: Path, aside_suffix: str) -> tuple[Path | None, str | None]:
    """Make `snap_trust` the trust store beside `db`. An existing one (even beside an empty store:
    `token create` writes it before the first start) is moved aside with `aside_suffix`, then what
    only grows is merged from it. Returns (the one moved aside, why a merge failed)."""
    target = auth_db_path(db)
    aside: Path | None = None
    if target.exists():
        aside = target.with_name(target.name + aside_suffix)
        target.rename(aside)
    for suffix in ("-wal", "-shm"):
        side = target.with_name(target.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix)) if aside else side.unlink()
    tmp = target.with_name(target.name + ".restoring")
    shutil.copyfile(snap_trust, tmp)
    AuthStore(tmp).close()  # today's schema (a snapshot from before a table existed lacks it)
    problem = merge_monotonic(tmp, aside) if aside is not None else None
    tmp.rename(target)
    return aside, problem
