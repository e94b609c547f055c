"""What both daemons do the same way: stop on SIGTERM/SIGINT, re-read config on SIGHUP, serve HTTP,
refuse to start loudly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from titus_common.errors import EXIT_BAD_CONFIG, CannotListen, TitusError, exit_code_for
from titus_common.sdnotify import Notifier

# The logger aiohttp's server logs malformed HTTP with (LineTooLong, …): an app may set it to a
# rate-limited one (titus_common/clientlog.py); by default aiohttp's own, a traceback per request.
HTTP_LOGGER_KEY = web.AppKey("http_logger", logging.Logger)

EXIT_CANNOT_START = EXIT_BAD_CONFIG  # kept for callers that refuse without an error object


class CannotStart(CannotListen):
    """The HTTP listener cannot be bound (exit code 6)."""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def reload_on_sighup(notifier: Notifier, reload: Callable[[], str]) -> None:
    """SIGHUP: `RELOADING=1`, `reload()` (re-reads the config and applies what is safe to change
    live; returns a line saying what it did), `READY=1`. A config that no longer loads is logged and
    the running one kept: a bad edit never takes a running daemon down."""
    log = logging.getLogger("titus.daemon")

    def handle() -> None:
        notifier.reloading()
        try:
            log.info("SIGHUP: %s", reload())
        except TitusError as e:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", one_line(e))
        notifier.ready()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handle)


def apply_log_level(old: object, new: object, live: tuple[str, ...] = ("log_level",)) -> str:
    """What a reload can change without a restart: the log level. Returns the line for the log,
    naming the keys that changed but only take effect after `systemctl restart`."""
    old_d, new_d = _as_dict(old), _as_dict(new)
    level = str(new_d.get("log_level", "INFO")).upper()
    logging.getLogger().setLevel(level)
    later = sorted(k for k in new_d if k not in live and new_d[k] != old_d.get(k))
    tail = f"; changed but need a restart: {', '.join(later)}" if later else ""
    return f"log level {level}{tail}"


def _as_dict(config: object) -> dict[str, object]:
    dump = getattr(config, "model_dump", None)
    return dict(dump()) if callable(dump) else dict(vars(config))


async def serve_http(
    app: web.Application, listen: tuple[str, int], ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    extra: dict[str, Any] = {"logger": app[HTTP_LOGGER_KEY]} if HTTP_LOGGER_KEY in app else {}
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, **extra)
    await runner.setup()
    host, port = listen
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as e:
        await runner.cleanup()
        raise CannotStart(f"cannot listen on {host}:{port}: {e}") from None
    return runner


def refuse_start(prog: str, log: logging.Logger, reason: object) -> int:
    """Say why in one line on stderr (what an operator sees first) and in the log; return the exit
    code of the error's kind (titus_common/errors.py), or 2 for a reason that is not an error."""
    log.critical("cannot start: %s", reason)
    print(f"{prog}: cannot start: {one_line(reason)}", file=sys.stderr)
    return exit_code_for(reason) if isinstance(reason, BaseException) else EXIT_CANNOT_START


def one_line(reason: object) -> str:
    return " ".join(str(reason).split())
