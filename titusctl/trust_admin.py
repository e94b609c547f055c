"""`titusctl admin …`: tokens, node revocation and the audit log (role admin; docs/trust.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from titusctl.client import EXIT_OK, EXIT_USAGE, Api, CliError
from titusctl.render import emit

__all__ = ["add_verbs"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(value: str) -> float:
    number, unit = (value[:-1], value[-1]) if value and value[-1] in _UNITS else (value, "s")
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 1h or 7d, got {value!r}") from None


def cmd_token_create(api: Api, args: argparse.Namespace) -> int:
    if (args.nodes is None) == (args.role is None):
        raise CliError("give either --nodes PATTERN (a bootstrap token) or --role and --name (an operator token)",
                       EXIT_USAGE)
    body: dict[str, Any] = {"ttlSeconds": args.ttl}
    if args.nodes is not None:
        body.update(kind="bootstrap", nodes=args.nodes, uses=args.uses)
    else:
        body.update(kind="operator", role=args.role, name=args.name or "", owner=args.owner or "")
    doc = api.call("POST", "/v1/admin/tokens", body)
    if args.output == "json":
        emit(args, doc, "")
    else:
        print(doc["token"])  # the secret: shown once
    return EXIT_OK


def cmd_node_revoke(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("POST", f"/v1/admin/nodes/{args.node}/revoke")
    emit(args, doc, f"revoked {len(doc['revoked'])} certificate(s) of {doc['node']}")
    return EXIT_OK


def cmd_node_readmit(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("POST", f"/v1/admin/nodes/{args.node}/readmit")
    emit(args, doc, f"{doc['node']}: instance {doc['instanceId']} may bootstrap once more")
    return EXIT_OK


def cmd_audit(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", "/v1/admin/audit")
    lines = [f"{e['at']:.3f} {e['who']} {e['method']} {e['path']} {e['status']}"
             + (f" {json.dumps(e['detail'], separators=(',', ':'))}" if e.get("detail") else "") for e in doc["events"]]
    emit(args, doc, "\n".join(lines))
    return EXIT_OK


def add_verbs(admin: Any) -> None:
    """The trust verbs under `titusctl admin` (its subparsers, from titusctl/admin.py)."""
    tok = admin.add_parser("token", help="tokens").add_subparsers(dest="action", required=True)
    c = tok.add_parser("create", help="a bootstrap token for nodes (--nodes 'i-*') or an operator token (--role)")
    c.add_argument("--nodes", help="node-id pattern the bootstrap token may register")
    c.add_argument("--uses", type=int, default=1)
    c.add_argument("--role", choices=["admin", "operator", "submitter"])
    c.add_argument("--name")
    c.add_argument("--owner", help="a submitter's owner")
    c.add_argument("--ttl", type=_ttl, default=3600.0, help="90s, 30m, 1h, 7d (default 1h)")
    c.set_defaults(fn=cmd_token_create)
    node = admin.add_parser("node", help="nodes' certificates").add_subparsers(dest="action", required=True)
    r = node.add_parser("revoke", help="deny every certificate of a node, at once")
    r.add_argument("node")
    r.set_defaults(fn=cmd_node_revoke)
    a = node.add_parser("readmit", help="let a node's EC2 instance bootstrap once more (--aws-imds-identity cells)")
    a.add_argument("node")
    a.set_defaults(fn=cmd_node_readmit)
    admin.add_parser("audit", help="the audit log of mutating calls and exec sessions").set_defaults(fn=cmd_audit)
