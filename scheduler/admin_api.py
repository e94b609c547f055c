"""The operator's reconciliation endpoints (`titusctl admin reconcile show|approve|unfreeze`):

- `GET  /v1/admin/reconcile`          the freeze, the mismatch, the proposed actions (a dry run), recent audit
- `POST /v1/admin/reconcile/approve`  `{"actions": [ids]}` (or `{"all": true}`): release those actions
- `POST /v1/admin/reconcile/unfreeze` `{"by": "name"}`: end the freeze (a mass mismatch freezes again)

Kept apart from `api` so the job API's module stays the job API's; `make_app` adds these routes.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from scheduler.reconciler import Reconciler

__all__ = ["add_routes"]

RECONCILER_KEY = web.AppKey("reconciler", Reconciler)
CLOCK_KEY = web.AppKey("admin_clock", object)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message}}, status=status)


async def _doc(request: web.Request) -> dict[str, Any] | web.Response:
    raw = await request.read()
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"malformed JSON: {e}")
    if not isinstance(doc, dict):
        return _error(400, "the body must be a JSON object")
    by = doc.get("by", "operator")
    if not isinstance(by, str) or not by:
        return _error(400, "by: expected a non-empty string")
    return doc


def _now(request: web.Request) -> float:
    clock = request.app[CLOCK_KEY]
    assert callable(clock)
    value = clock()
    assert isinstance(value, float | int)
    return float(value)


async def show(request: web.Request) -> web.Response:
    return _json(request.app[RECONCILER_KEY].show(_now(request)))


async def approve(request: web.Request) -> web.Response:
    doc = await _doc(request)
    if isinstance(doc, web.Response):
        return doc
    ids = doc.get("actions")
    if doc.get("all") is True:
        ids = None
    elif not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return _error(400, 'give "actions": [action ids from show] or "all": true')
    r = request.app[RECONCILER_KEY]
    chosen = r.approve(ids, _now(request), str(doc.get("by", "operator")))
    unknown = sorted(set(ids or ()) - set(chosen))
    return _json({"approved": chosen, "unknown": unknown}, status=200 if chosen or not unknown else 404)


async def unfreeze(request: web.Request) -> web.Response:
    doc = await _doc(request)
    if isinstance(doc, web.Response):
        return doc
    r = request.app[RECONCILER_KEY]
    was = r.unfreeze(_now(request), str(doc.get("by", "operator")))
    return _json({"wasFrozen": was, "frozen": False})


def add_routes(app: web.Application, reconciler: Reconciler, clock: object) -> None:
    app[RECONCILER_KEY] = reconciler
    app[CLOCK_KEY] = clock
    app.router.add_get("/v1/admin/reconcile", show)
    app.router.add_post("/v1/admin/reconcile/approve", approve)
    app.router.add_post("/v1/admin/reconcile/unfreeze", unfreeze)
