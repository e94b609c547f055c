"""Client errors logged so that no client can flood the log: a task sending the metadata proxy bad
HTTP, an agent sending the scheduler a malformed message.

Every error is counted (the caller's metric, by a bounded `kind`), and logged at most once per
(source, kind) per `interval` seconds, as one WARNING line without a traceback; the next line for that
key says how many were suppressed since the last one. A client error is the client's problem, not a
bug of ours: the traceback would say nothing about our code.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

DEFAULT_INTERVAL = 60.0
MAX_KEYS = 10_000  # sources × kinds remembered; past it, expired windows are dropped, then the oldest


@dataclass
class _Window:
    logged_at: float
    suppressed: int = 0


class ClientErrorLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        count: Callable[[str], None] | None = None,
        what: str = "client",
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._count = count
        self._what = what
        self._windows: dict[tuple[str, str], _Window] = {}

    def report(self, source: str, kind: str, detail: str, *, emit: bool = True,
               extra: dict[str, Any] | None = None) -> bool:
        """Count one error of `kind` from `source`; log it unless one was logged for this key in the
        last interval (`emit=False`: the caller logs it). Returns whether it is to be logged."""
        if self._count is not None:
            self._count(kind)
        now = self._clock()
        key = (source, kind)
        w = self._windows.get(key)
        if w is not None and now - w.logged_at < self.interval:
            w.suppressed += 1
            return False
        suppressed = w.suppressed if w is not None else 0
        self._remember(key, now)
        tail = f" ({suppressed} more suppressed in the last {self.interval:g}s)" if suppressed else ""
        if emit:
            self.logger.warning("%s %s: %s: %s%s", self._what, source, kind, _short(detail), tail,
                                extra=extra or None)
        return True

    def forget(self, source: str) -> None:
        """The source is gone (a task ended): release its windows."""
        for key in [k for k in self._windows if k[0] == source]:
            del self._windows[key]

    def _remember(self, key: tuple[str, str], now: float) -> None:
        self._windows.pop(key, None)
        if len(self._windows) >= MAX_KEYS:
            for k in [k for k, w in self._windows.items() if now - w.logged_at >= self.interval]:
                del self._windows[k]
            while len(self._windows) >= MAX_KEYS:
                del self._windows[next(iter(self._windows))]
        self._windows[key] = _Window(now)

    def __len__(self) -> int:
        return len(self._windows)

    def http_logger(self, source: str, **extra: Any) -> logging.Logger:
        """A logger to hand aiohttp's server (`logger=`): the HTTP errors it would log with a traceback
        ("Error handling request", LineTooLong, BadStatusLine, …) become client errors of `source`.
        Anything that is not a client's malformed HTTP (a bug in a handler) still gets its traceback,
        but at most once per interval too: a task can trigger a bug in a loop."""
        adapter = _HttpErrorAdapter(self, source, extra)
        return adapter  # type: ignore[return-value]  # aiohttp calls only Logger methods the adapter has


def http_error_kind(exc: BaseException | None) -> str:
    """A bounded label: aiohttp's parse-error class names, or 'Other'."""
    if isinstance(exc, HttpProcessingError):
        return type(exc).__name__
    return "Other"


def _short(detail: str, limit: int = 200) -> str:
    one = " ".join(detail.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


class _HttpErrorAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self, errors: ClientErrorLog, source: str, extra: dict[str, Any]) -> None:
        super().__init__(errors.logger, extra)
        self._errors = errors
        self._source = source

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc: BaseException | None = None
        if isinstance(exc_info, BaseException):
            exc = exc_info
        elif exc_info is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc_info, tuple):
            exc = exc_info[1]
        if level < logging.WARNING and exc is None:
            super().log(level, msg, *args, **kwargs)
            return
        kind = http_error_kind(exc)
        if kind != "Other":
            self._errors.report(self._source, kind, str(exc), extra=dict(self.extra or {}))
            return
        # Not a client's malformed HTTP: keep the traceback (it is ours to fix), rate-limited.
        if self._errors.report(self._source, "Other", "", emit=False):
            super().log(level, msg, *args, **kwargs)
