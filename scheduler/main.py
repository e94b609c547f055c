"""titus-scheduler entry point.

Configuration: the flags, optionally on top of a TOML file (`--config FILE`) whose keys are the long
flags with underscores (`lost_after = 900.0`, `listen = "0.0.0.0:7100"`); a flag given wins over the
file. Every start-up refusal — a bad flag or config value, a bad security policy file, a store that
cannot be read, an address that cannot be bound — is one line on stderr, `titus-scheduler: cannot
start: …`, and the exit code of its kind (titus_common/errors.py): 2 configuration, 3 store, 6 listen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import typing
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

from scheduler import backup_cli
from scheduler.api import make_app
from scheduler.backup_schedule import BackupSchedule
from scheduler.config import SCHEDULER_KEYS, SchedulerConfig, ServiceConfig, read_toml, service_config
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.engine import Engine
from scheduler.fitness import Mode
from scheduler import trust_cli
from scheduler.provenance import TagWatcher
from scheduler.registry import Registry
from titus_common.gctune import tune_for_server
from titus_common.tlsbuffers import shrink_tls_buffers
from scheduler.trust import build_trust
from scheduler.store import SQLiteStore, StoreCorrupt
from security.profiles import SecurityPolicy, default_policy, load_policy
from titus_common.daemon import apply_log_level, parse_listen, refuse_start, reload_on_sighup, serve_http, stop_on_signals
from titus_common.errors import ConfigError, TitusError
from titus_common.logs import setup_logging
from titus_common.sdnotify import Notifier

PROG = "titus-scheduler"
log = logging.getLogger("titus.scheduler")

_HELP = {
    "heartbeat_interval": "seconds between an agent's heartbeats (told to agents)",
    "disconnect_after": "seconds of missed heartbeats before a host is Disconnected (no new work)",
    "lost_after": "seconds of silence before a host's tasks are declared lost and replaced",
    "max_lost_per_minute": "at most this many tasks declared lost per minute",
    "redeliver_after": "seconds before an unacknowledged launch or kill is sent again",
    "system_backoff_base": "back-off after the first platform fault (crashed/lost), doubling",
    "system_backoff_max": "longest back-off after platform faults",
    "service_failure_backoff_max": "longest back-off of a service task failing on its own",
    "streak_reset_after": "seconds Started after which an index's crash/failure streak resets",
    "crash_loop_threshold": "platform faults in a row that flag a job crash-looping",
    "registry_timeout": "seconds a registry lookup of an image tag's digest may take (submit, tag check)",
    "registry_reuse": "seconds submissions of one tag share a registry lookup (0: each asks)",
    "drf_tolerance": "dominant-share slack within which DRF gives one capacity group a run of tasks (0: task by task)",
    "tag_check_interval": "seconds between checks that a running job's image tag has not moved (0: off)",
    "tag_checks_per_pass": "at most this many registry lookups per tag-check pass",
}


class UsageError(ConfigError):
    """A flag argparse refused."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Flags default to None (not given): the file's value, else the model's default, applies."""
    defaults = ServiceConfig()
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML file with the long flags' keys")
    p.add_argument("--listen", type=parse_listen, help=f"HOST:PORT of the API (default {':'.join(map(str, defaults.listen))})")
    p.add_argument("--db", type=Path, help=f"SQLite database (default {defaults.db})")
    p.add_argument("--log-level", help=f"default {defaults.log_level}")
    p.add_argument("--security-policy", type=Path, metavar="PATH",
                   help="security policy JSON checked at submit (seccomp variant allow-list, AppArmor mode; "
                        "docs/security.md); default: built-in, only the `default` variant")
    p.add_argument("--backup-dir", type=Path, metavar="DIR",
                   help="take an online snapshot here every --backup-interval and restore-test it (default: off)")
    p.add_argument("--backup-interval", type=float, help=f"seconds (default {defaults.backup_interval})")
    p.add_argument("--backup-keep", type=int, help=f"snapshots kept (default {defaults.backup_keep})")
    p.add_argument("--pki", type=Path, metavar="DIR",
                   help="the cell CA directory (`titus-scheduler ca init --pki DIR`): serve TLS, authenticate callers")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="plain HTTP, no authentication (local development only; warns at every start)")
    p.add_argument("--iam-policy", type=Path, metavar="PATH", help="IAM role grants checked at submit (docs/trust.md)")
    p.add_argument("--aws-imds-identity", type=Path, metavar="POLICY.json",
                   help="admit only EC2 instances: bootstraps carry the instance identity document, checked against "
                        "this policy's AWS certificates and accounts (docs/trust.md; default: off, as for local hosts)")
    p.add_argument("--node-cert-ttl", type=float, metavar="SECONDS", help="node certificates' lifetime (default 86400)")
    for flag, number, what in (("bootstrap-rate", float, "bootstraps a second for the cell"),
                               ("bootstrap-burst", int, "bootstraps at once for the cell"),
                               ("bootstrap-source-rate", float, "bootstraps a second from one address"),
                               ("bootstrap-source-burst", int, "bootstraps at once from one address")):
        default = ServiceConfig.model_fields[flag.replace("-", "_")].default
        p.add_argument(f"--{flag}", type=number, help=f"{what}; past it 429 (default {default})")
    p.add_argument("--cell", help="the cell's name: the trust domain of task identities (default local; docs/identity.md)")
    p.add_argument("--workload-cert-ttl", type=float, metavar="SECONDS",
                   help="task identity certificates' lifetime (default 3600)")
    p.add_argument("--app-ownership", choices=("claim", "granted"),
                   help="an app no admin granted: claimed by the first owner using it (default claim), or refused "
                        "(granted); docs/identity.md")
    for key in SCHEDULER_KEYS:
        field = SchedulerConfig.model_fields[key]
        flag, ann, what = f"--{key.replace('_', '-')}", field.annotation, _HELP.get(key, key)
        if typing.get_origin(ann) in (list, dict):
            continue  # tables (capacity_groups): in the TOML file only
        if typing.get_origin(ann) is typing.Literal:
            p.add_argument(flag, dest=key, choices=typing.get_args(ann), help=f"{what} (default {field.default})")
        elif ann is bool:
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{what} (default {field.default})")
        else:
            kind: type = {int: int, str: str}.get(ann, float)  # type: ignore[arg-type]
            p.add_argument(flag, dest=key, type=kind, help=f"{what} (default {field.default})")
    return p


def load_config(argv: list[str] | None = None) -> ServiceConfig:
    """Flags over the optional TOML file; raises ConfigError naming the key or flag."""
    args = vars(build_parser().parse_args(argv))
    path: Path | None = args.pop("config")
    values: dict[str, Any] = read_toml(path) if path is not None else {}
    sources = {k: str(path) for k in values}
    for key, value in args.items():
        if value is not None:
            values[key] = value
            sources[key] = "--" + key.replace("_", "-")
    return service_config(values, sources)


def _policy(config: ServiceConfig) -> SecurityPolicy:
    path = config.security_policy
    if path is None:
        return default_policy()
    try:
        return load_policy(path)
    except TitusError:
        raise
    except ValueError as e:  # e.g. a policy file that is not UTF-8
        raise ConfigError(f"security policy {path}: {e}") from None


def _scheduler(config: ServiceConfig, policy: SecurityPolicy) -> Scheduler:
    store = SQLiteStore(config.db)
    try:
        c = config.scheduler
        engine = Engine(Mode(c.scheduling_mode), c.placement_seed, c.job_cap_per_host)
        return Scheduler(store, engine, SchedulerMetrics(), c, security_policy=policy,
                         registry=Registry(c.registry_timeout, c.registry_reuse))
    except BaseException:
        store.close()
        raise


def status_line(scheduler: Scheduler) -> str:
    """What `systemctl status titus-scheduler` shows."""
    active = sum(1 for t in scheduler.tasks.values() if not t.state.terminal)
    return f"{len(scheduler.jobs)} jobs, {active} active tasks, {len(scheduler.nodes)} nodes"


async def serve(config: ServiceConfig, argv: list[str] | None = None, notifier: Notifier | None = None) -> int:
    notifier = notifier if notifier is not None else Notifier()
    try:
        policy = _policy(config)
        try:
            scheduler = _scheduler(config, policy)
        except sqlite3.Error as e:  # the store wraps SQLite's errors; this is a last resort
            raise StoreCorrupt(f"{config.db}: {e}") from None
        stop = stop_on_signals()
        try:
            trust = build_trust(config, scheduler.metrics.registry)
            runner = await serve_http(make_app(scheduler, policy, trust.auth, trust.ca, trust.workload), config.listen, trust.ssl)
        except BaseException:
            scheduler.store.close()
            raise
    except TitusError as e:
        return refuse_start(PROG, log, e)
    host, port = config.listen
    log.info("scheduler listening on %s://%s:%d (db %s)", "https" if trust.ssl else "http", host, port, config.db)
    control = asyncio.create_task(scheduler.run(stop))
    # READY: the store is loaded and the API is listening. Pings come from this loop.
    notifier.ready(status_line(scheduler))
    watchdog = asyncio.create_task(notifier.watchdog(lambda: status_line(scheduler)), name="watchdog")
    current = [config]

    def reload() -> str:
        new = load_config(argv)
        line = apply_log_level(current[0], new)
        current[0] = new
        return line

    reload_on_sighup(notifier, reload)
    c = config.scheduler
    if scheduler.registry is not None and c.tag_check_interval > 0:
        tags = TagWatcher(scheduler, scheduler.registry, c.tag_check_interval, c.tag_checks_per_pass, scheduler.clock)
        control = asyncio.create_task(_both(control, tags.run(stop)))
    if config.backup_dir is not None:
        backups = BackupSchedule(config.db, config.backup_dir, config.backup_interval, config.backup_keep,
                                 scheduler.metrics.registry)
        control = asyncio.create_task(_both(control, backups.run(stop)))
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        watchdog.cancel()
        control.cancel()
        await runner.cleanup()
        scheduler.store.close()
        trust.auth.store.close()
    log.info("scheduler stopped")
    return 0


async def _both(control: asyncio.Task[None], other: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(control, other)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in backup_cli.COMMANDS:  # backup, restore-test, restore (scheduler/backup_cli.py)
        setup_logging(PROG)
        sys.exit(backup_cli.main(argv))
    if argv and argv[0] == "replay":  # re-run a decision trace (scheduler/trace.py)
        from scheduler import trace

        sys.exit(trace.main(argv[1:]))
    if argv and argv[0] in trust_cli.COMMANDS:  # offline trust commands (`ca init`, `token create`)
        sys.exit(trust_cli.main(argv))
    try:
        config = load_config(argv)
    except ConfigError as e:
        setup_logging(PROG)  # so the refusal is logged like any other, not by logging's last resort
        sys.exit(refuse_start(PROG, log, e))
    setup_logging(PROG, config.log_level)
    tune_for_server()  # full collections were half the CPU at 7,000 hosts (titus_common/gctune.py)
    shrink_tls_buffers()  # 256 KiB per TLS connection: ~3 GB at 7,000 hosts (titus_common/tlsbuffers.py)
    sys.exit(asyncio.run(serve(config, argv)))


if __name__ == "__main__":
    main()
