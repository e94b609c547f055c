"""titus-scheduler entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from pathlib import Path

from security.profiles import PolicyError, default_policy, load_policy
from scheduler.api import make_app
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore, StoreCorrupt
from titus_common.daemon import CannotStart, parse_listen, refuse_start, serve_http, stop_on_signals
from titus_common.logs import setup_logging

log = logging.getLogger("titus.scheduler")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titus-scheduler", description=__doc__)
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 7100), help="HOST:PORT of the API")
    p.add_argument("--db", type=Path, default=Path("/var/lib/titus/scheduler.db"), help="SQLite database")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--disconnect-after", type=float, default=SchedulerConfig.disconnect_after)
    p.add_argument("--lost-after", type=float, default=SchedulerConfig.lost_after)
    p.add_argument("--system-backoff-max", type=float, default=SchedulerConfig.system_backoff_max)
    p.add_argument("--security-policy", type=Path, metavar="PATH",
                   help="security policy JSON checked at submit (seccomp variant allow-list, AppArmor mode; "
                        "docs/security.md); default: built-in, only the `default` variant")
    return p


async def serve(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.security_policy) if args.security_policy is not None else default_policy()
    except PolicyError as e:
        return refuse_start("titus-scheduler", log, e)
    try:
        store = SQLiteStore(args.db)
        config = SchedulerConfig(
            disconnect_after=args.disconnect_after,
            lost_after=args.lost_after,
            system_backoff_max=args.system_backoff_max,
        )
        scheduler = Scheduler(store, FirstFit(), SchedulerMetrics(), config, security_policy=policy)
    except (StoreCorrupt, sqlite3.DatabaseError) as e:
        return refuse_start("titus-scheduler", log, e)
    stop = stop_on_signals()
    try:
        runner = await serve_http(make_app(scheduler, policy), args.listen)
    except CannotStart as e:
        store.close()
        return refuse_start("titus-scheduler", log, e)
    host, port = args.listen
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
