"""Persistent state of the scheduler.

The in-memory model in `core.Scheduler` is the working copy; every change is committed here first,
in one transaction per API call or agent report, so a crash never leaves half a job behind.

On start, every record must load. One that does not is an error that stops the scheduler: starting
with partial state would make reconciliation "fix" the missing part by killing or re-running tasks —
the mass-kill pattern of the talk. Every failure to open, migrate or read the store (an unreadable
record, a schema newer than the code, tables without a schema version, a file that is not a SQLite
database, SQLite's own errors) is a `StoreCorrupt` naming the file: exit code 3 at start-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from scheduler.records import JobRecord, NodeRecord, TaskRecord
from titus_common.errors import StateCorrupt


class StoreCorrupt(StateCorrupt):
    """A stored record cannot be read; the message names the table, the id and what is wrong."""


@dataclass
class Snapshot:
    jobs: list[JobRecord] = field(default_factory=list)
    tasks: list[TaskRecord] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def commit(
        self,
        jobs: Iterable[JobRecord] = (),
        tasks: Iterable[TaskRecord] = (),
        nodes: Iterable[NodeRecord] = (),
    ) -> None:
        """Write all records in one transaction: all land or none."""
        ...

    def close(self) -> None: ...

    # Reads of records no longer held in memory (finished jobs past their retention).
    def load_job(self, job_id: str) -> JobRecord | None: ...

    def load_task(self, task_id: str) -> TaskRecord | None: ...

    def load_job_tasks(self, job_id: str) -> list[TaskRecord]: ...

    # What the API says of an evicted job, in SQL: no 10,000 task records built for one read.
    def job_task_counts(self, job_id: str) -> dict[str, int]: ...

    def job_task_started(self, job_id: str) -> bool: ...

    def job_finished_outcomes(self, job_id: str) -> Iterator[tuple[str | None, str]]: ...

    def job_live_crashes(self, job_id: str) -> list[int]: ...


def _v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, doc TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, state TEXT NOT NULL, doc TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX tasks_job ON tasks (job_id)")
    db.execute("CREATE TABLE nodes (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")


# Explicit, append-only migrations: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreCorrupt(f"{path}: cannot create its directory: {e.strerror or e}") from None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreCorrupt(f"{path}: cannot open the store: {e}") from None
        try:
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._schema_version()  # before changing anything in a file we may refuse
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; a power cut may lose the last
            # transactions but never corrupts the database.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(version)
        except StoreCorrupt:
            self._db.close()
            raise
        except sqlite3.Error as e:
            self._db.close()
            raise StoreCorrupt(f"{path}: cannot open the store: {e}") from None

    def _schema_version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{self.path}: schema version {version} is newer than this scheduler understands "
                f"({SCHEMA_VERSION}); run the newer release or restore a backup"
            )
        tables = sorted(
            name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
        if version == 0 and tables:
            raise StoreCorrupt(
                f"{self.path}: schema version 0 (PRAGMA user_version) but it already has tables "
                f"{', '.join(tables)}: not a store this scheduler created, or its version was reset; "
                "restore a backup or point --db at a new file"
            )
        return version

    def _migrate(self, version: int) -> None:
        for target in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[target](self._db)
                self._db.execute(f"PRAGMA user_version={target + 1}")
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK")
                raise StoreCorrupt(
                    f"{self.path}: migration to schema version {target + 1} failed: {e}; restore a backup"
                ) from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load(self) -> Snapshot:
        try:
            return self._load()
        except sqlite3.Error as e:
            raise StoreCorrupt(f"{self.path}: cannot read the store: {e}") from None

    def _load(self) -> Snapshot:
        snap = Snapshot()
        for table, model, out in (
            ("jobs", JobRecord, snap.jobs),
            ("tasks", TaskRecord, snap.tasks),
            ("nodes", NodeRecord, snap.nodes),
        ):
            for row_id, doc in self._db.execute(f"SELECT id, doc FROM {table} ORDER BY rowid"):
                try:
                    record = model.model_validate_json(doc)
                except ValidationError as e:
                    raise StoreCorrupt(
                        f"{self.path}: {table} record {row_id!r} cannot be read: "
                        f"{e.errors(include_url=False)[0]['msg']} at "
                        f"{'.'.join(str(p) for p in e.errors()[0]['loc']) or 'top level'}. "
                        "Refusing to start with partial state; restore a backup or repair the record."
                    ) from None
                if record.id != row_id:
                    raise StoreCorrupt(f"{self.path}: {table} row {row_id!r} holds a record for {record.id!r}")
                out.append(record)  # type: ignore[arg-type]
        job_ids = {j.id for j in snap.jobs}
        for t in snap.tasks:
            if t.job_id not in job_ids:
                raise StoreCorrupt(f"{self.path}: task {t.id!r} belongs to job {t.job_id!r}, which is missing")
        return snap

    def commit(
        self,
        jobs: Iterable[JobRecord] = (),
        tasks: Iterable[TaskRecord] = (),
        nodes: Iterable[NodeRecord] = (),
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for j in jobs:
                db.execute(
                    "INSERT INTO jobs (id, idempotency_key, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                    (j.id, j.spec.idempotency_key, j.model_dump_json()),
                )
            for t in tasks:
                db.execute(
                    "INSERT INTO tasks (id, job_id, state, doc) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, doc = excluded.doc",
                    (t.id, t.job_id, t.state.value, t.model_dump_json()),
                )
            for n in nodes:
                db.execute(
                    "INSERT INTO nodes (id, doc) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                    (n.id, n.model_dump_json()),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def load_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def load_task(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT doc FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else TaskRecord.model_validate_json(row[0])

    def load_job_tasks(self, job_id: str) -> list[TaskRecord]:
        rows = self._db.execute("SELECT doc FROM tasks WHERE job_id = ? ORDER BY rowid", (job_id,))
        return [TaskRecord.model_validate_json(doc) for (doc,) in rows]

    def job_task_counts(self, job_id: str) -> dict[str, int]:
        """State → number of the job's tasks, in the order the states first occur (as counting the
        records in order would give)."""
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM tasks WHERE job_id = ? GROUP BY state ORDER BY MIN(rowid)", (job_id,)
        )
        return {state: count for state, count in rows}

    def job_task_started(self, job_id: str) -> bool:
        """Whether any of the job's tasks ever reached Started."""
        row = self._db.execute(
            "SELECT 1 FROM tasks WHERE job_id = ? AND json_type(doc, '$.timestamps.Started') IS NOT NULL LIMIT 1",
            (job_id,),
        ).fetchone()
        return row is not None

    def job_finished_outcomes(self, job_id: str) -> Iterator[tuple[str | None, str]]:
        """(reason, message) of the job's Finished tasks in order, read one row at a time."""
        rows = self._db.execute(
            "SELECT json_extract(doc, '$.reason'), json_extract(doc, '$.message') FROM tasks "
            "WHERE job_id = ? AND state = 'Finished' ORDER BY rowid",
            (job_id,),
        )
        for reason, message in rows:
            yield reason, message or ""

    def job_live_crashes(self, job_id: str) -> list[int]:
        """consecutive_crashes of the job's tasks not Finished (none, for a finished job)."""
        rows = self._db.execute(
            "SELECT json_extract(doc, '$.consecutive_crashes') FROM tasks WHERE job_id = ? AND state != 'Finished'",
            (job_id,),
        )
        return [int(n or 0) for (n,) in rows]

    def close(self) -> None:
        self._db.close()
