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
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SCHEMA_VERSION, Snapshot, SQLiteStore, StoreCorrupt
from titus_common.errors import ConfigError

__all__ = [
    "Counts",
    "Manifest",
    "RestoreRefused",
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
    except sqlite3.Error as e:
        partial.unlink(missing_ok=True)
        raise StoreCorrupt(f"{db}: backup failed: {e}") from None
    manifest = Manifest(snapshot=name, created_at=at, source=str(db), schema_version=version, counts=counts,
                        sha256=_sha256(partial), bytes=partial.stat().st_size)
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
    if problems:
        raise StoreCorrupt(f"{snap}: restore test FAILED: {'; '.join(problems)}")
    return Verification(snap, manifest, time.monotonic() - started)


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


def restore(snap: Path, db: Path, force: bool = False) -> Path | None:
    """Verify `snap`, then make it the store at `db`. A store holding data is only replaced with
    `force`, and then kept beside it as `<db>.before-restore-<time>`, which is returned."""
    verify(snap)
    aside: Path | None = None
    if _holds_data(db):
        if not force:
            raise RestoreRefused(
                f"{db} holds a store already; stop its scheduler and pass --force to replace it "
                "(the old one is kept beside it)"
            )
        aside = db.with_name(f"{db.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        db.rename(aside)
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix)) if aside else side.unlink()
    tmp = db.with_name(db.name + ".restoring")
    shutil.copyfile(snap, tmp)
    tmp.rename(db)
    return aside


def manifest_json(snap: Path) -> str:
    return json.dumps(read_manifest(snap).model_dump(mode="json"), sort_keys=True)
