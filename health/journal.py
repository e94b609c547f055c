"""Reading the systemd journal for log signals (dockerd and containerd write their errors there, not
to the kernel log), with systemd-python's `systemd.journal.Reader` (the `journald` extra; libsystemd
reads the journal files itself, no journalctl process). Like `kmsg.KmsgReader`: no thread — the
reader's inotify fd is watched by the event loop, each wake-up takes at most `BATCH` entries, and
only entries written from the start on are read (the tail, this boot).

`identifiers` restricts the entries to those `SYSLOG_IDENTIFIER`s (node-problem-detector's
journald plugin `pluginConfig.source`, e.g. `dockerd`); empty: every entry. Where the journal cannot
be opened (no systemd-python, an unreadable `path`) `start` raises OSError and the owner reports the
check as `LogSourceUnavailable`; a host with no journal files yet opens fine and reads the files
journald creates later.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BATCH", "JournalReader"]

log = logging.getLogger("titus.health.journal")

BATCH = 512


class JournalReader:
    def __init__(self, on_line: Callable[[str], object], identifiers: Sequence[str] = (),
                 path: Path | None = None) -> None:
        self.on_line = on_line
        self.identifiers = tuple(identifiers)
        self.path = path  # a journal directory; None: the system's (/run/log/journal, /var/log/journal)
        self.entries = 0
        self._reader: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None

    def start(self) -> None:
        try:
            journal: Any = importlib.import_module("systemd.journal")
        except ImportError as e:
            raise OSError(f"systemd-python is not installed ({e})") from None
        try:
            reader = journal.Reader(path=str(self.path) if self.path is not None else None)
        except OSError as e:
            raise OSError(f"cannot open the journal: {e}") from None
        for ident in self.identifiers:
            reader.add_match(SYSLOG_IDENTIFIER=ident)
        reader.seek_tail()
        reader.get_previous()  # positioned on the last entry: get_next() returns only new ones
        self._reader = reader
        self._fd = reader.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            reader.process()  # clears the inotify event; new files are picked up
            for _ in range(BATCH):
                entry = reader.get_next()
                if not entry:
                    return
                self.entries += 1
                message = entry.get("MESSAGE")
                if isinstance(message, bytes):
                    message = message.decode("utf-8", errors="replace")
                if isinstance(message, str):
                    self.on_line(message)
        except OSError as e:
            log.warning("reading the journal: %s; journal log signals stop", e)
            self.stop()
            return
        # More may be waiting: come back on the next turn of the loop (not starving it).
        if self._loop is not None:
            self._loop.call_soon(self._readable)

    def stop(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
