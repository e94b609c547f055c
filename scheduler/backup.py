"""Backups you can trust: online snapshots of the store, their manifests, retention, restore tests
and restores (docs/reconcile.md, "Backups").

A snapshot is taken with SQLite's backup API from its own connection, in one step: one read
transaction, so the copy is consistent while the scheduler keeps committing (WAL readers never block
the writer). Beside each `scheduler-<UTC time>.db` lies `….manifest.json`: when, the schema version,
the counts (jobs, nodes, tasks per state) and the file's SHA-256.

`verify` is the restore test: it loads a copy of the snapshot into a scratch scheduler that talks to
no agent and checks that every byte is the one written (checksum), SQLite's own integrity check,
the schema version is one this code knows, every record reads, the start-up integrity invariants
hold (no task in two places, counts per job, references), and the counts match the manifest. Any
failure is a `StoreCorrupt` (exit code 3) naming every problem.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from scheduler import integrity
from scheduler.backup_trust import TrustPart, copy_trust, restore_trust, trust_snapshot_path, verify_trust
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SCHEMA_VERSION, Snapshot, SQLiteStore, StoreCorrupt
from titus_common.errors import ConfigError

__all__ = [
    "Counts",
    "Manifest",
    "RestoreRefused",
    "Restored",
    "Verification",
    "manifest_path",
    "prune",
    "restore",
    "snapshot",
    "snapshots",
    "verify",
]

PREFIX = "scheduler-"


class RestoreRefused(ConfigError):
    """A restore that would overwrite a store holding data, without --force (exit code 2)."""


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    jobs: int
    nodes: int
    tasks: dict[str, int]  # task state → count


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot: str  # the file's name, beside the manifest
    created_at: float
    source: str
    schema_version: int
    counts: Counts
    sha256: str
    bytes: int
    # The trust store beside it (scheduler/backup_trust.py); None: the scheduler had none, or a
    # snapshot taken before trust was part of backups.
    trust: TrustPart | None = None


@dataclass(frozen=True)
class Verification:
    snapshot: Path
    manifest: Manifest
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "snapshot": str(self.snapshot), "seconds": round(self.seconds, 3),
                "manifest": self.manifest.model_dump(mode="json")}


def manifest_path(snap: Path) -> Path:
    return snap.with_name(snap.stem + ".manifest.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_counts(db: sqlite3.Connection) -> Counts:
    states = dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    return Counts(
        jobs=db.execute("SELECT count(*) FROM jobs").fetchone()[0],
        nodes=db.execute("SELECT count(*) FROM nodes").fetchone()[0],
        tasks={str(k): int(v) for k, v in sorted(states.items())},
    )


def _loaded_counts(snap: Snapshot) -> Counts:
    by_state = Counter(t.state.value for t in snap.tasks)
    return Counts(jobs=len(snap.jobs), nodes=len(snap.nodes), tasks=dict(sorted(by_state.items())))


def snapshot(db: Path, out_dir: Path, now: float | None = None) -> Path:
    """Copy the live store `db` into `out_dir` (online) and write its manifest. Returns the snapshot."""
    if not db.is_file():
        raise StoreCorrupt(f"{db}: no such store to back up")
    out_dir.mkdir(parents=True, exist_ok=True)
    at = time.time() if now is None else now
    name = PREFIX + time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1e6) % 1_000_000:06d}Z.db"
    final = out_dir / name
    partial = final.with_suffix(".partial")
    trust_partial = trust_snapshot_path(final).with_suffix(".auth-partial")
    try:
        src = sqlite3.connect(db)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # all pages in one step: one consistent read transaction
                dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
                version = dst.execute("PRAGMA user_version").fetchone()[0]
                counts = _raw_counts(dst)
            finally:
                dst.close()
        finally:
            src.close()
        trust_counts = copy_trust(db, trust_partial)
    except sqlite3.Error as e:
        partial.unlink(missing_ok=True)
        trust_partial.unlink(missing_ok=True)
        raise StoreCorrupt(f"{db}: backup failed: {e}") from None
    trust = None
    if trust_counts is not None:
        trust = TrustPart(snapshot=trust_snapshot_path(final).name, sha256=_sha256(trust_partial),
                          bytes=trust_partial.stat().st_size, counts=trust_counts)
        trust_partial.rename(trust_snapshot_path(final))
    manifest = Manifest(snapshot=name, created_at=at, source=str(db), schema_version=version, counts=counts,
                        sha256=_sha256(partial), bytes=partial.stat().st_size, trust=trust)
    partial.rename(final)
    tmp = manifest_path(final).with_suffix(".partial")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.rename(manifest_path(final))
    return final


def snapshots(out_dir: Path) -> list[Path]:
    """The snapshots in `out_dir` that have a manifest, oldest first."""
    return sorted(p for p in out_dir.glob(PREFIX + "*.db") if manifest_path(p).is_file())


def prune(out_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots (and their manifests). Returns those deleted."""
    old = snapshots(out_dir)[:-keep] if keep > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
        trust_snapshot_path(p).unlink(missing_ok=True)
        manifest_path(p).unlink(missing_ok=True)
    return old


def read_manifest(snap: Path) -> Manifest:
    path = manifest_path(snap)
    try:
        return Manifest.model_validate_json(path.read_text())
    except OSError as e:
        raise StoreCorrupt(f"{snap}: its manifest {path.name} cannot be read: {e.strerror or e}") from None
    except (ValidationError, UnicodeDecodeError) as e:
        raise StoreCorrupt(f"{snap}: its manifest {path.name} is not a valid manifest: {e}") from None


def verify(snap: Path) -> Verification:
    """The restore test; raises StoreCorrupt naming every problem found."""
    started = time.monotonic()
    if not snap.is_file():
        raise StoreCorrupt(f"{snap}: no such snapshot")
    manifest = read_manifest(snap)
    problems: list[str] = []
    digest = _sha256(snap)
    if digest != manifest.sha256:
        problems.append(f"checksum {digest[:12]}… differs from the manifest's {manifest.sha256[:12]}… "
                        "(the file changed after it was taken)")
    if manifest.schema_version > SCHEMA_VERSION or manifest.schema_version < 1:
        problems.append(f"schema version {manifest.schema_version} is not one this scheduler knows (1..{SCHEMA_VERSION})")
    with tempfile.TemporaryDirectory(prefix="titus-restore-test-") as scratch:
        copy = Path(scratch) / "store.db"
        shutil.copyfile(snap, copy)
        problems += _verify_copy(copy, manifest)
        if manifest.trust is not None:
            problems += _verify_trust_file(snap, manifest.trust, Path(scratch))
    if problems:
        raise StoreCorrupt(f"{snap}: restore test FAILED: {'; '.join(problems)}")
    return Verification(snap, manifest, time.monotonic() - started)


def _verify_trust_file(snap: Path, part: TrustPart, scratch: Path) -> list[str]:
    path = snap.with_name(part.snapshot)
    if not path.is_file():
        return [f"the trust store {part.snapshot} named in the manifest is missing"]
    digest = _sha256(path)
    if digest != part.sha256:
        return [f"trust store {part.snapshot}: checksum {digest[:12]}… differs from the manifest's "
                f"{part.sha256[:12]}… (the file changed after it was taken)"]
    copy = scratch / "store.db.auth"
    shutil.copyfile(path, copy)
    return verify_trust(copy, part)


def _verify_copy(copy: Path, manifest: Manifest) -> list[str]:
    problems: list[str] = []
    try:
        db = sqlite3.connect(copy)
        try:
            check = [row[0] for row in db.execute("PRAGMA integrity_check")]
            version = db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        return [f"not a readable SQLite database: {e}"]
    if check != ["ok"]:
        problems.append(f"SQLite integrity check: {'; '.join(check[:5])}")
    if version != manifest.schema_version:
        problems.append(f"schema version {version}, the manifest says {manifest.schema_version}")
    try:
        store = SQLiteStore(copy)  # refuses an unknown schema version
    except StoreCorrupt as e:
        return [*problems, str(e)]
    try:
        snap = store.load()  # every record must read
        problems += integrity.problems(snap)
        counts = _loaded_counts(snap)
        if counts != manifest.counts:
            problems.append(f"counts {counts.model_dump()} differ from the manifest's {manifest.counts.model_dump()}")
        if not problems:
            # A scratch scheduler on it, talking to no agent: the store loads as a start would load it.
            Scheduler(store, FirstFit(), SchedulerMetrics())
    except StoreCorrupt as e:
        problems.append(str(e))
    finally:
        store.close()
    return problems


def _holds_data(db: Path) -> bool:
    if not db.exists() or db.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(db)
        try:
            tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            return bool(tables)
        finally:
            con.close()
    except sqlite3.Error:
        return True  # something we cannot read is still something not to overwrite


@dataclass(frozen=True)
class Restored:
    previous: Path | None  # the store it replaced, kept beside it
    trust: bool  # the snapshot's trust store was restored too
    trust_previous: Path | None  # the trust store it replaced, kept beside it (and merged from)
    trust_note: str | None  # why that merge could not be done

    def to_json(self, db: Path, snap: Path) -> dict[str, object]:
        return {"restored": str(db), "from": str(snap), "previous": str(self.previous) if self.previous else None,
                "trust": self.trust, "trustPrevious": str(self.trust_previous) if self.trust_previous else None,
                "trustNote": self.trust_note}


def restore(snap: Path, db: Path, force: bool = False) -> Restored:
    """Verify `snap`, then make it the store at `db`, and its trust store `<db>.auth` (an existing
    one is kept beside it as `<db>.auth.before-restore-<time>`, and what only grows is merged from
    it: scheduler/backup_trust.py). A store holding data is only replaced with `force`, and then
    kept beside it as `<db>.before-restore-<time>`."""
    manifest = verify(snap).manifest
    stamp = f".before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside: Path | None = None
    if _holds_data(db):
        if not force:
            raise RestoreRefused(
                f"{db} holds a store already; stop its scheduler and pass --force to replace it "
                "(the old one is kept beside it)"
            )
        aside = db.with_name(db.name + stamp)
        db.rename(aside)
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix)) if aside else side.unlink()
    tmp = db.with_name(db.name + ".restoring")
    shutil.copyfile(snap, tmp)
    tmp.rename(db)
    trust_aside, note = (restore_trust(snap.with_name(manifest.trust.snapshot), db, stamp)
                         if manifest.trust is not None else (None, None))
    return Restored(aside, manifest.trust is not None, trust_aside, note)


def manifest_json(snap: Path) -> str:
    return json.dumps(read_manifest(snap).model_dump(mode="json"), sort_keys=True)
