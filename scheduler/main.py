"""titus-scheduler entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from pathlib import Path

from aiohttp import web

from scheduler.api import make_app
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore, StoreCorrupt
from titus_common.logs import setup_logging

log = logging.getLogger("titus.scheduler")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titus-scheduler", description=__doc__)
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 7100), help="HOST:PORT of the API")
    p.add_argument("--db", type=Path, default=Path("/var/lib/titus/scheduler.db"), help="SQLite database")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--disconnect-after", type=float, default=SchedulerConfig.disconnect_after)
    p.add_argument("--lost-after", type=float, default=SchedulerConfig.lost_after)
    p.add_argument("--system-backoff-max", type=float, default=SchedulerConfig.system_backoff_max)
    return p


async def serve(args: argparse.Namespace) -> int:
    try:
        store = SQLiteStore(args.db)
        config = SchedulerConfig(
            disconnect_after=args.disconnect_after,
            lost_after=args.lost_after,
            system_backoff_max=args.system_backoff_max,
        )
        scheduler = Scheduler(store, FirstFit(), SchedulerMetrics(), config)
    except (StoreCorrupt, sqlite3.DatabaseError) as e:
        log.critical("cannot start: %s", e)
        print(f"titus-scheduler: cannot start: {e}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(scheduler), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = args.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        print(f"titus-scheduler: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        await runner.cleanup()
        return 2
    log.info("scheduler listening on http://%s:%d (db %s)", host, port, args.db)
    control = asyncio.create_task(scheduler.run(stop))
    try:
        await stop.wait()
    finally:
        control.cancel()
        await runner.cleanup()
        store.close()
    log.info("scheduler stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("titus-scheduler", args.log_level)
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
