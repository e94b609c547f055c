"""The trust part of the OpenAPI document (docs/trust.md): the security schemes, which operation
needs which, and the bootstrap / rotation / admin routes."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from scheduler.apps_api import AppGrantRequest
from scheduler.trust_api import BootstrapRequest, RotateRequest, TokenRequest

__all__ = ["PUBLIC_OPERATIONS", "SECURITY_SCHEMES", "secure", "trust_paths", "trust_schemas"]

_REF = "#/components/schemas/{model}"

SECURITY_SCHEMES: dict[str, Any] = {
    "nodeCertificate": {"type": "mutualTLS", "description": "A node certificate (O=titus:nodes, CN=<node id>) "
                        "from POST /v1/bootstrap; valid only for /v1/nodes/<its own id>/…"},
    "operatorCertificate": {"type": "mutualTLS", "description": "An operator certificate "
                            "(O=titus:operators:<admin|operator|submitter>, CN=<name>)"},
    "bearerToken": {"type": "http", "scheme": "bearer", "description": "An operator token "
                    "(POST /v1/admin/tokens, `titus-scheduler token create`) with a role"},
}
OPERATOR: list[dict[str, list[str]]] = [{"operatorCertificate": []}, {"bearerToken": []}]
NODE: list[dict[str, list[str]]] = [{"nodeCertificate": []}]
NODE_CALLS = ("sync", "updates", "certificate", "stats")  # the routes a node certificate may call
PUBLIC_OPERATIONS = {("get", "/healthz"), ("get", "/metrics"), ("get", "/openapi.json"), ("post", "/v1/bootstrap")}
_AUTH_ERRORS = {
    "401": {"description": "No, or no usable, credentials (unknown, expired, revoked)",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}},
    "403": {"description": "Authenticated but not allowed (role, owner, node id, IAM role grant, app owner)",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}},
}


def _issued() -> dict[str, Any]:
    return {"type": "object", "required": ["certificate", "serial", "notAfter"], "properties": {
        "certificate": {"type": "string", "description": "PEM"}, "serial": {"type": "string"},
        "notAfter": {"type": "number"}}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}}


def trust_schemas() -> dict[str, Any]:
    _, schema = models_json_schema([(m, "validation") for m in (BootstrapRequest, RotateRequest, TokenRequest,
                                                                      AppGrantRequest)],
                                   by_alias=True, ref_template=_REF)
    return dict(schema["$defs"])


def trust_paths() -> dict[str, Any]:
    node_id = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
    issued = {"description": "The certificate", "content": {"application/json": {"schema": _issued()}}}
    return {
        "/v1/bootstrap": {"post": {
            "summary": "A new node: a one-time bootstrap token and a CSR (CN=<node id>) → its client certificate; "
                       "with --aws-imds-identity also the EC2 instance identity document and its signature, "
                       "which bind the certificate to the instance (its ARN as SAN URI)",
            "security": [], "requestBody": _body("BootstrapRequest"),
            "responses": {"201": issued, "400": _AUTH_ERRORS["403"] | {"description": "Bad CSR"},
                          "401": _AUTH_ERRORS["401"], "403": _AUTH_ERRORS["403"],
                          "409": {"description": "The node id has a live certificate, or the EC2 instance "
                                                 "already bootstrapped and was not re-admitted"},
                          "429": {"description": "Over the per-address or the cell's bootstrap rate",
                                  "headers": {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}},
                                  "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}}}},
        "/v1/nodes/{node_id}/certificate": {"post": {
            "summary": "Rotate: a new CSR, authenticated by the node's current certificate",
            "security": NODE, "parameters": [node_id], "requestBody": _body("RotateRequest"),
            "responses": {"201": issued, **_AUTH_ERRORS}}},
        "/v1/nodes/{node_id}/tasks/{task_id}/identity": {"post": {
            "summary": "A task's identity certificate (docs/identity.md): a CSR (O=titus:workloads, CN=<task id>, "
                       "no extensions) for a task placed on this node; the scheduler sets the SPIFFE URI SAN",
            "security": NODE, "parameters": [node_id, {"name": "task_id", "in": "path", "required": True,
                                                        "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["csr"], "additionalProperties": False,
                "properties": {"csr": {"type": "string", "minLength": 1, "maxLength": 16384}}}}}},
            "responses": {"201": {"description": "The certificate, the CA bundle and the identity", "content": {
                "application/json": {"schema": {"type": "object",
                                                "required": ["certificate", "bundle", "spiffeId", "serial", "notAfter"],
                                                "properties": {"certificate": {"type": "string"},
                                                               "bundle": {"type": "string"},
                                                               "spiffeId": {"type": "string"},
                                                               "serial": {"type": "string"},
                                                               "notAfter": {"type": "number"}}}}}},
                          "400": {"description": "Bad request or CSR", "content": {"application/json": {
                              "schema": {"$ref": _REF.format(model="Error")}}}},
                          **_AUTH_ERRORS}}},
        "/v1/admin/tokens": {"post": {
            "summary": "Mint a bootstrap token (nodes pattern, uses, TTL) or an operator token (role)",
            "security": OPERATOR, "requestBody": _body("TokenRequest"),
            "responses": {"201": {"description": "The token (its secret is shown once)"},
                          "400": {"description": "Invalid request; `error.problems` names each bad field"},
                          **_AUTH_ERRORS}}},
        "/v1/admin/nodes/{node_id}/revoke": {"post": {
            "summary": "Deny every certificate of a node, at once", "security": OPERATOR, "parameters": [node_id],
            "responses": {"200": {"description": "The revoked serials"}, **_AUTH_ERRORS}}},
        "/v1/admin/nodes/{node_id}/readmit": {"post": {
            "summary": "Let the node's EC2 instance bootstrap once more (no age bound; --aws-imds-identity)",
            "security": OPERATOR, "parameters": [node_id],
            "responses": {"200": {"description": "The node and its instance id"},
                          "404": {"description": "The node is bound to no EC2 instance", "content": {
                              "application/json": {"schema": {"$ref": _REF.format(model="Error")}}}},
                          **_AUTH_ERRORS}}},
        "/v1/admin/audit": {"get": {
            "summary": "The audit log of mutating calls (who, what, when, outcome)", "security": OPERATOR,
            "responses": {"200": {"description": "Events, newest first"}, **_AUTH_ERRORS}}},
    }


def secure(paths: dict[str, Any]) -> None:
    """State on every operation which credentials it takes, and its 401/403."""
    for path, item in paths.items():
        for method, op in item.items():
            if (method, path) in PUBLIC_OPERATIONS:
                op["security"] = []
                continue
            node_call = path.startswith("/v1/nodes/{node_id}/") and path.rsplit("/", 1)[1] in NODE_CALLS
            op.setdefault("security", NODE if node_call else OPERATOR)
            op.setdefault("responses", {}).update({k: v for k, v in _AUTH_ERRORS.items() if k not in op["responses"]})
