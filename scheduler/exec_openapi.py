"""The exec part of the OpenAPI document (docs/exec.md): both ends of an exec session are websockets;
the document states their parameters and the refusals answered before the upgrade."""

from __future__ import annotations

from typing import Any

from scheduler.trust_openapi import NODE, OPERATOR

__all__ = ["exec_paths"]

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def exec_paths() -> dict[str, Any]:
    flag = {"type": "string", "enum": ["0", "1", "true", "false"], "default": "0"}
    size = {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0}
    return {
        "/v1/tasks/{task_id}/exec": {"get": {
            "summary": "Exec into a running task's container (websocket; admin, or the submitter of the job's owner)",
            "description": "Upgrade to a websocket. Frames: client → binary stdin, text {\"resize\": {\"rows\", "
                           "\"cols\"}} or {\"eof\": true}; server → binary (1 byte stream: 1 stdout, 2 stderr, "
                           "then data), text {\"exit\": code} (last) or {\"error\": \"…\"}. Audited when it opens "
                           "and when it ends.",
            "security": OPERATOR,
            "parameters": [
                _path("task_id"),
                {**_q("cmd", {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 256},
                      "the command, one parameter per argument", True), "style": "form", "explode": True},
                _q("tty", flag, "allocate a terminal"), _q("stdin", flag, "attach stdin"),
                _q("rows", size, "terminal rows"), _q("cols", size, "terminal columns"),
            ],
            "responses": {
                "101": {"description": "Switching to the websocket session"},
                # text/plain: a request line over 8 KiB (a long command) is refused by the HTTP layer.
                "400": {"description": "Bad command or flags, or not a websocket upgrade",
                        "content": {**_ERROR["content"], "text/plain": {"schema": {"type": "string"}}}},
                "404": {"description": "No such task", **_ERROR},
                "409": {"description": "The task is not running, or its host is cordoned or draining", **_ERROR},
                "503": {"description": "The task's host is not Ready, or too many sessions are open", **_ERROR},
            },
        }},
        "/v1/nodes/{node_id}/exec/{session_id}": {"get": {
            "summary": "The agent's end of an exec session it was told of in its sync answer (websocket)",
            "security": NODE,
            "parameters": [_path("node_id"), _path("session_id")],
            "responses": {
                "101": {"description": "Paired with the operator's websocket"},
                "400": {"description": "Not a websocket upgrade", **_ERROR},
                "404": {"description": "No open session for this node", **_ERROR},
            },
        }},
    }
