"""Offline trust commands of titus-scheduler (docs/trust.md):

  titus-scheduler ca init --pki DIR [--san NAME ...] [--force]
  titus-scheduler token create --db DB --nodes PATTERN [--ttl 1h] [--uses 1]
  titus-scheduler token create --db DB --role ROLE --name NAME [--owner OWNER] [--ttl 1h]

`token create` writes straight into the trust store (`<db>.auth`), so `make run` can mint the local
agent's bootstrap token before the scheduler starts; with the scheduler running, `titusctl admin
token create` does the same over the API. The token is printed once, on stdout."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from scheduler.authstore import ROLES, AuthStore, Token, auth_db_path, parse_ttl
from scheduler.tls import init_ca
from titus_common.errors import ConfigError, exit_code_for

__all__ = ["COMMANDS", "main"]

COMMANDS = ("ca", "token")


def _ttl(value: str) -> float:
    try:
        return parse_ttl(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titus-scheduler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="the cell CA").add_subparsers(dest="action", required=True)
    init = ca.add_parser("init", help="create the CA, the server certificate and an admin client certificate")
    init.add_argument("--pki", type=Path, required=True, help="directory (created 0700)")
    init.add_argument("--san", action="append", default=[], help="another name or IP of the scheduler")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    tok = sub.add_parser("token", help="tokens").add_subparsers(dest="action", required=True)
    create = tok.add_parser("create", help="a bootstrap token (--nodes) or an operator token (--role)")
    create.add_argument("--db", type=Path, required=True, help="the scheduler's --db")
    create.add_argument("--nodes", help="node-id pattern (fnmatch) the bootstrap token may register")
    create.add_argument("--uses", type=int, default=1, help="how many nodes it may bootstrap (default 1)")
    create.add_argument("--role", choices=ROLES, help="operator token's role")
    create.add_argument("--name", help="operator token's holder")
    create.add_argument("--owner", default="", help="submitter token's owner")
    create.add_argument("--ttl", type=_ttl, default=3600.0, help="lifetime: 90s, 30m, 1h, 7d (default 1h)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.command == "ca":
        for path in init_ca(args.pki, args.san, force=args.force):
            print(path)
        return 0
    if (args.nodes is None) == (args.role is None):
        raise ConfigError("token create: give either --nodes (bootstrap) or --role and --name (operator)")
    if args.role is not None and not args.name:
        raise ConfigError("token create: an operator token needs --name")
    if args.role == "submitter" and not args.owner:
        raise ConfigError("token create: a submitter token needs --owner")
    if args.uses < 1:
        raise ConfigError("token create: --uses must be at least 1")
    kind = "bootstrap" if args.nodes is not None else "operator"
    token = Token(id=uuid.uuid4().hex[:12], kind=kind, expires_at=time.time() + args.ttl, nodes=args.nodes or "",
                  uses_left=args.uses if kind == "bootstrap" else 0, name=args.name or "", role=args.role or "",
                  owner=args.owner)
    store = AuthStore(auth_db_path(args.db))
    try:
        print(store.create_token(token))
    finally:
        store.close()
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"titus-scheduler: {e}", file=sys.stderr)
        return exit_code_for(e)
    except OSError as e:
        print(f"titus-scheduler: {e}", file=sys.stderr)
        return 1
