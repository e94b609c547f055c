"""Crash-safe file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("titus.files")


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """write-temp + fsync + rename + fsync(dir), so a kill -9 or power loss keeps one whole version."""
    _replace(path, data, mode, durable=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def replace_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """write-temp + rename, no fsync: a reader (and a restart after kill -9 of the writer) sees the old
    content or the new, never a torn file; only a power loss before the page cache reaches the disk
    can lose it. Pair with `GroupSync` for that (below)."""
    _replace(path, data, mode, durable=False)


def _replace(path: Path, data: bytes, mode: int, durable: bool) -> None:
    """Write a temporary file beside `path` (fsynced when `durable`), then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class GroupSync:
    """Makes files written by `replace_bytes` in one directory durable on a thread of its own, in
    batches: every file named since the last round is fsynced, then the directory once. A burst of
    writes costs its writer no disk wait and the disk a handful of flushes (group commit).

    A failed fsync is sticky (`error`): after EIO the kernel may have dropped the dirty pages and a
    later fsync of the same file can succeed without them, so nothing since is claimed durable and
    `flush` answers False from then on."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cond = threading.Condition()
        self._dirty: set[Path] = set()
        self._queued = 0  # generations: every `written` call takes the next number
        self._synced = 0
        self._thread: threading.Thread | None = None
        self.rounds = 0  # flush rounds done (for tests and figures)
        self.error: str | None = None  # the first fsync that failed: durability is lost since

    def written(self, path: Path) -> None:
        with self._cond:
            self._dirty.add(path)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-sync", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written before this call is on disk; False on timeout, or when an
        fsync has failed (it may not be)."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._synced >= target, timeout) and self.error is None

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued > self._synced)
                batch, self._dirty, upto = self._dirty, set(), self._queued
            for path in [*batch, self.directory]:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # deleted since (or a test's directory removed): nothing to keep
                except OSError as e:
                    self._failed(f"cannot open {path} to make it durable: {e}")
                    continue
                try:
                    os.fsync(fd)
                except OSError as e:  # EIO: the disk is failing
                    self._failed(f"fsync of {path} failed: {e}")
                finally:
                    os.close(fd)
            with self._cond:
                self._synced = upto
                self.rounds += 1
                self._cond.notify_all()

    def _failed(self, message: str) -> None:
        log.error("%s: records written since are not known to be durable", message)
        with self._cond:
            if self.error is None:
                self.error = message
