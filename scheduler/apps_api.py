"""The admin's app grants (docs/identity.md, "Who may use an app name"): which owner an app belongs
to, so that only that owner's jobs get the app's workload identity. Role admin only (the auth
middleware: every /v1/admin/ call); each change is audited with what it replaced.

- `GET /v1/admin/apps` → `{"policy": "claim"|"granted", "apps": [{app, owner, how, by, at}…]}`
- `POST /v1/admin/apps/{app}/grant` `{"owner": "…"}` → the grant (and the one it replaced, if any)
- `DELETE /v1/admin/apps/{app}` → the grant removed (404: none); the app is free to claim again"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler.auth import AUTH_KEY, IDENTITY_KEY
from titus_common.jobspec import APP_NAME

__all__ = ["AppGrantRequest", "add_app_routes", "apps_paths"]


class AppGrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    owner: Annotated[str, Field(min_length=1, max_length=256)]


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if field:
        body["problems"] = [{"field": field, "message": message}]
    return web.json_response({"error": body}, status=status)


def _app(request: web.Request) -> str | None:
    app = request.match_info["app"]
    return app if len(app) <= 128 and APP_NAME.match(app) else None


async def list_apps(request: web.Request) -> web.Response:
    apps = request.app[AUTH_KEY].store.apps
    return web.json_response({"policy": apps.policy, "apps": [g.view() for g in apps.list()]})


async def grant_app(request: web.Request) -> web.Response:
    app = _app(request)
    if app is None:
        return _error(400, "app: letters, digits, '_', '.', '-' only, at most 128", "app")
    try:
        req = AppGrantRequest.model_validate(json.loads(await request.read()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"malformed JSON: {e}")
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        return _error(400, f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}", "owner")
    auth, who = request.app[AUTH_KEY], str(request[IDENTITY_KEY])
    previous = auth.store.apps.grant(app, req.owner, who)
    grant = auth.store.apps.get(app)
    assert grant is not None
    detail = {**grant.view(), "previous": previous.view() if previous is not None else None}
    auth.store.audit(who, "APP-GRANT", request.path, 200, detail=detail)
    return web.json_response(detail)


async def revoke_app(request: web.Request) -> web.Response:
    app = _app(request)
    if app is None:
        return _error(400, "app: letters, digits, '_', '.', '-' only, at most 128", "app")
    auth, who = request.app[AUTH_KEY], str(request[IDENTITY_KEY])
    previous = auth.store.apps.revoke(app)
    if previous is None:
        return _error(404, f"app {app!r} has no grant or claim")
    auth.store.audit(who, "APP-REVOKE", request.path, 200, detail=previous.view())
    return web.json_response(previous.view())


def add_app_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/apps", list_apps)
    app.router.add_post("/v1/admin/apps/{app}/grant", grant_app)
    app.router.add_delete("/v1/admin/apps/{app}", revoke_app)


_GRANT: dict[str, Any] = {"type": "object", "required": ["app", "owner", "how", "by", "at"], "properties": {
    "app": {"type": "string"}, "owner": {"type": "string"},
    "how": {"type": "string", "enum": ["grant", "claim"], "description": "an admin's grant, or the first owner's use"},
    "by": {"type": "string"}, "at": {"type": "number"}}}
_ERROR: dict[str, Any] = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def apps_paths() -> dict[str, Any]:
    app = {"name": "app", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
    return {
        "/v1/admin/apps": {"get": {
            "summary": "Which owner each app belongs to (docs/identity.md) and the policy for an app with no grant",
            "responses": {"200": {"description": "The grants and claims", "content": {"application/json": {"schema": {
                "type": "object", "required": ["policy", "apps"], "properties": {
                    "policy": {"type": "string", "enum": ["claim", "granted"]},
                    "apps": {"type": "array", "items": _GRANT}}}}}}}}},
        "/v1/admin/apps/{app}/grant": {"post": {
            "summary": "Give an app to an owner (replaces any earlier grant or claim; audited)",
            "parameters": [app],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/AppGrantRequest"}}}},
            "responses": {"200": {"description": "The grant, and the one it replaced", "content": {
                "application/json": {"schema": {**_GRANT, "properties": {
                    **_GRANT["properties"], "previous": {"anyOf": [_GRANT, {"type": "null"}]}}}}}},
                "400": {"description": "Bad app name or body", **_ERROR}}}},
        "/v1/admin/apps/{app}": {"delete": {
            "summary": "Remove an app's grant or claim (audited); the app may be claimed again",
            "parameters": [app],
            "responses": {"200": {"description": "The grant removed", "content": {"application/json": {
                "schema": _GRANT}}},
                "400": {"description": "Bad app name", **_ERROR},
                "404": {"description": "The app has no grant or claim", **_ERROR}}}},
    }
