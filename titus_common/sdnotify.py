"""systemd readiness, status and watchdog for both daemons (`Type=notify`, `WatchdogSec=`).

Outside systemd (no `NOTIFY_SOCKET` in the environment) every call does nothing, so `make run`, the
tests and a daemon started by hand behave as before.

- `ready(status)` sends `READY=1` once the daemon can do its job (what that means for each daemon is
  written at its call site and in docs/install.md).
- `watchdog(status_of)` is a coroutine to run as a task on the daemon's own event loop: every half
  of `WATCHDOG_USEC` it sends `WATCHDOG=1`, plus `STATUS=` when `status_of()` changed. Because the
  pings come from the loop itself, a loop that hangs (a blocking call, SIGSTOP) stops them and systemd
  restarts the service.
- `reloading()` / `ready()` bracket a SIGHUP re-read of the configuration (`RELOADING=1`).

The transport is `systemd.daemon.notify` (systemd-python); tests inject their own `send`.

Imports: the standard library, and systemd-python lazily (optional dependency `journald`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger("titus.sdnotify")

Send = Callable[[str], bool]


def watchdog_interval(environ: dict[str, str] | os._Environ[str] | None = None) -> float | None:
    """Seconds between pings asked by systemd (half of WATCHDOG_USEC), or None when there is no
    watchdog for this process (unset, not a positive integer, or WATCHDOG_PID names another pid)."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


def _systemd_send() -> Send | None:
    try:
        daemon: Any = importlib.import_module("systemd.daemon")
    except ImportError:
        log.warning("NOTIFY_SOCKET is set but systemd-python is not installed: no readiness or watchdog")
        return None

    def send(message: str) -> bool:
        return bool(daemon.notify(message))

    return send


class Notifier:
    """One per daemon. `send=None` picks systemd's when `NOTIFY_SOCKET` is set, else none at all."""

    def __init__(self, send: Send | None = None, *, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        if send is None and env.get("NOTIFY_SOCKET"):
            send = _systemd_send()
        self._send = send
        self.interval = watchdog_interval(env) if send is not None else None
        self.pings = 0
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def _notify(self, *lines: str) -> None:
        if self._send is None:
            return
        try:
            self._send("\n".join(lines))
        except OSError as e:  # systemd gone (shutdown) or socket full: never take the daemon down
            log.warning("sd_notify failed: %s", e)

    def ready(self, status: str | None = None) -> None:
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={status}")
            self._last_status = status
        self._notify(*lines)

    def status(self, text: str) -> None:
        """STATUS= (what `systemctl status` shows), only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self._notify(f"STATUS={text}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 match the reload; older ones ignore it.
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._notify("STOPPING=1", "STATUS=stopping")

    def ping(self) -> None:
        self.pings += 1
        self._notify("WATCHDOG=1")

    async def watchdog(self, status_of: Callable[[], str] | None = None, every: float | None = None) -> None:
        """Ping (and refresh STATUS=) every `every` seconds, default half of WATCHDOG_USEC; with no
        watchdog configured it still refreshes STATUS= every 5 s; with no systemd it returns."""
        if self._send is None:
            return
        period = every if every is not None else (self.interval or 5.0)
        while True:
            if status_of is not None:
                try:
                    self.status(status_of())
                except Exception as e:  # a status bug must not stop the pings
                    log.warning("status line failed: %s", e)
            if self.interval is not None or every is not None:
                self.ping()
            await asyncio.sleep(period)
