"""Reading the kernel log: /dev/kmsg records (`pri,seq,usec,flags;message`, then ` KEY=value`
continuation lines) from the end of the buffer on, without a thread: the non-blocking fd is watched
by the event loop, and each wake-up reads at most `BATCH` records before yielding, so a flood
delays the agent's other work by one batch at a time, never starves it."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["BATCH", "KmsgReader", "kmsg_message"]

log = logging.getLogger("titus.health.kmsg")

BATCH = 512
RECORD_MAX = 8192  # a kmsg record is at most ~1 KiB of text; a read returns exactly one record


def kmsg_message(record: str) -> str:
    """The message text of one /dev/kmsg record (continuation lines dropped)."""
    head, sep, rest = record.partition(";")
    text = rest if sep else head
    return text.split("\n", 1)[0]


class KmsgReader:
    def __init__(self, on_line: Callable[[str], object], path: Path = Path("/dev/kmsg")) -> None:
        self.on_line = on_line
        self.path = path
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.records = 0
        self.overruns = 0  # records the kernel overwrote before we read them (EPIPE)

    def start(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(fd, 0, os.SEEK_END)  # only what is logged from now on
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        for _ in range(BATCH):
            try:
                data = os.read(fd, RECORD_MAX)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EPIPE:
                    self.overruns += 1
                    continue
                log.warning("reading %s: %s; kernel log signals stop", self.path, e)
                self.stop()
                return
            if not data:
                return
            self.records += 1
            self.on_line(kmsg_message(data.decode("utf-8", errors="replace")))
        # More may be waiting: the reader is level-triggered, so returning lets the loop run its
        # other callbacks and calls us again.

    def stop(self) -> None:
        if self._fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
