"""`titus-scheduler backup|restore-test|restore`: the operator's side of scheduler/backup.py.

    titus-scheduler backup [--db PATH] --out DIR [--keep N]     an online snapshot (+ manifest)
    titus-scheduler restore-test SNAPSHOT                      load it into a scratch scheduler, verify
    titus-scheduler restore SNAPSHOT --db PATH [--force]       verify, then make it the store
                                                               (and its trust store <db>.auth)

Each prints one JSON line on stdout on success; a failure is one line on stderr,
`titus-scheduler <command>: …`, and the exit code of its kind (titus_common/errors.py): 2 usage or a
refused overwrite, 3 a snapshot or store that does not verify.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from scheduler import backup
from scheduler.config import ServiceConfig
from titus_common.errors import ConfigError, TitusError, exit_code_for

__all__ = ["COMMANDS", "main"]

COMMANDS = ("backup", "restore-test", "restore")
log = logging.getLogger("titus.scheduler.backup")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="titus-scheduler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="an online snapshot of the store, with its manifest")
    b.add_argument("--db", type=Path, default=ServiceConfig().db)
    b.add_argument("--out", type=Path, required=True, metavar="DIR")
    b.add_argument("--keep", type=int, default=0, help="then delete all but the newest N (0: keep all)")
    t = sub.add_parser("restore-test", help="verify a snapshot in a scratch scheduler that talks to no agent")
    t.add_argument("snapshot", type=Path)
    r = sub.add_parser("restore", help="verify a snapshot, then make it the store")
    r.add_argument("snapshot", type=Path)
    r.add_argument("--db", type=Path, required=True)
    r.add_argument("--force", action="store_true", help="replace a store that holds data (kept beside it)")
    return p


def run(argv: list[str]) -> dict[str, object]:
    args = _parser().parse_args(argv)
    if args.command == "backup":
        if args.keep < 0:
            raise ConfigError("--keep must be 0 or more")
        snap = backup.snapshot(args.db, args.out)
        pruned = backup.prune(args.out, args.keep) if args.keep else []
        return {"snapshot": str(snap), "manifest": json.loads(backup.manifest_json(snap)),
                "pruned": [str(p) for p in pruned]}
    if args.command == "restore-test":
        return backup.verify(args.snapshot).to_json()
    restored = backup.restore(args.snapshot, args.db, force=args.force)
    if restored.trust_note:
        log.warning("restore: %s", restored.trust_note)
    return restored.to_json(args.db, args.snapshot)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "?"
    try:
        print(json.dumps(run(argv), sort_keys=True))
    except TitusError as e:
        print(f"titus-scheduler {command}: {' '.join(str(e).split())}", file=sys.stderr)
        return exit_code_for(e)
    return 0
