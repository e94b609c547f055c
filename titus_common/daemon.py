"""What both daemons do the same way: stop on SIGTERM/SIGINT, serve HTTP, refuse to start loudly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from titus_common.errors import EXIT_BAD_CONFIG, CannotListen, exit_code_for

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


async def serve_http(
    app: web.Application, listen: tuple[str, int], ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
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
