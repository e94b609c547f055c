"""`titusctl admin reconcile show|approve|unfreeze`: review what reconciliation proposes (a dry
run), release actions, end a freeze (docs/reconcile.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from titusctl.client import EXIT_OK, EXIT_USAGE, Api, CliError
from titusctl.render import emit, table

__all__ = ["add_parser", "reconcile_text"]


def reconcile_text(doc: dict[str, Any]) -> str:
    lines = []
    if doc["frozen"]:
        lines.append(f"FROZEN: {doc['freezeReason']} — nothing is killed or declared lost")
    else:
        lines.append("not frozen" + (" (start-up grace: nothing is killed yet)" if doc.get("inGrace") else ""))
    counts = " ".join(f"{k}={v}" for k, v in doc["mismatch"].items())
    lines.append(f"mismatch: {counts}   kill tokens: {doc['killTokens']}")
    rows = [[a["id"], a["nodeId"] or "-", ("approved" if a["approved"] else a["outcome"] or "proposed"), a["reason"]]
            for a in doc["proposed"]]
    lines.append(table(rows, ["ACTION", "NODE", "STATUS", "REASON"]) if rows else "no actions proposed")
    return "\n".join(lines)


def cmd_show(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", "/v1/admin/reconcile")
    emit(args, doc, reconcile_text(doc))
    return EXIT_OK


def cmd_approve(api: Api, args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.actions):
        raise CliError("give action ids (from `titusctl admin reconcile show`) or --all", EXIT_USAGE)
    body: dict[str, Any] = {"by": args.by, **({"all": True} if args.all else {"actions": args.actions})}
    doc = api.call("POST", "/v1/admin/reconcile/approve", body)
    emit(args, doc, f"approved {len(doc['approved'])} action(s)"
         + (f"; not proposed now: {', '.join(doc['unknown'])}" if doc["unknown"] else ""))
    return EXIT_OK


def cmd_unfreeze(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("POST", "/v1/admin/reconcile/unfreeze", {"by": args.by})
    emit(args, doc, "unfrozen" if doc["wasFrozen"] else "was not frozen")
    return EXIT_OK


def add_parser(sub: Any) -> Any:
    """The `admin` command and its reconcile verbs; returns the verbs' subparsers for more."""
    admin = sub.add_parser("admin", help="control-plane administration").add_subparsers(dest="verb", required=True)
    rec = admin.add_parser("reconcile", help="reconciliation: the freeze and proposed kills").add_subparsers(
        dest="action", required=True)
    rec.add_parser("show", help="the freeze, the mismatch and the proposed actions (dry run)").set_defaults(fn=cmd_show)
    ap = rec.add_parser("approve", help="release proposed actions through the kill path")
    ap.add_argument("actions", nargs="*", help="action ids from `show`")
    ap.add_argument("--all", action="store_true", help="every proposed action")
    ap.add_argument("--by", default=os.environ.get("USER", "operator"))
    ap.set_defaults(fn=cmd_approve)
    un = rec.add_parser("unfreeze", help="end the freeze (a mass mismatch at the next pass freezes again)")
    un.add_argument("--by", default=os.environ.get("USER", "operator"))
    un.set_defaults(fn=cmd_unfreeze)
    return admin
