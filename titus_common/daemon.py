"""What both daemons do the same way: stop on SIGTERM/SIGINT, serve HTTP, refuse to start loudly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

EXIT_CANNOT_START = 2


class CannotStart(Exception):
    pass


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


async def serve_http(app: web.Application, listen: tuple[str, int]) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise CannotStart(f"cannot listen on {host}:{port}: {e}") from None
    return runner


def refuse_start(prog: str, log: logging.Logger, reason: object) -> int:
    """Say why on stderr (what an operator sees first) and in the log; exit code 2."""
    log.critical("cannot start: %s", reason)
    print(f"{prog}: cannot start: {reason}", file=sys.stderr)
    return EXIT_CANNOT_START
