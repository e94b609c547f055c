"""`titusctl admin …`: tokens, node revocation, the audit log (role admin; docs/trust.md) and which
owner each app belongs to (`admin app grant|revoke|list`, docs/identity.md)."""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote
from typing import Any

from titusctl.client import EXIT_OK, EXIT_USAGE, Api, CliError
from titusctl.render import emit, table

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


def cmd_app_list(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", "/v1/admin/apps")
    rows = [[g["app"], g["owner"], g["how"], g["by"]] for g in doc["apps"]]
    policy = {"claim": "claimed by the first owner that uses it", "granted": "refused"}.get(doc["policy"], doc["policy"])
    text = (table(rows, ["APP", "OWNER", "HOW", "BY"]) if rows else "no app grants") + \
        f"\nan app with no grant is {policy} (policy {doc['policy']})"
    emit(args, doc, text)
    return EXIT_OK


def cmd_app_grant(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("POST", f"/v1/admin/apps/{quote(args.app, safe='')}/grant", {"owner": args.owner})
    previous = doc.get("previous")
    was = f" (was {previous['owner']}'s, by {previous['how']})" if previous and previous["owner"] != doc["owner"] else ""
    emit(args, doc, f"app {doc['app']} belongs to owner {doc['owner']}{was}")
    return EXIT_OK


def cmd_app_revoke(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("DELETE", f"/v1/admin/apps/{quote(args.app, safe='')}")
    emit(args, doc, f"app {doc['app']} no longer belongs to {doc['owner']}")
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
    app = admin.add_parser("app", help="which owner an app belongs to (its tasks' identity; docs/identity.md)")
    app_verbs = app.add_subparsers(dest="action", required=True)
    app_verbs.add_parser("list", help="every app's owner, by grant or first-use claim").set_defaults(fn=cmd_app_list)
    g = app_verbs.add_parser("grant", help="give an app to an owner (replaces an earlier grant or claim)")
    g.add_argument("app")
    g.add_argument("--owner", required=True)
    g.set_defaults(fn=cmd_app_grant)
    rv = app_verbs.add_parser("revoke", help="remove an app's grant or claim (it may be claimed again)")
    rv.add_argument("app")
    rv.set_defaults(fn=cmd_app_revoke)
