"""The OpenAPI 3.1 document of the scheduler API, generated from the same pydantic models that
validate requests, so the document cannot disagree with the code. `docs/openapi.json` is this
output (`python -m scheduler.openapi > docs/openapi.json`); a test keeps them equal."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from pydantic.json_schema import models_json_schema

from scheduler.exec_openapi import exec_paths
from scheduler.pending import PendingReason
from scheduler.records import JobRecord, JobState, NodeRecord, TaskRecord
from scheduler.trust_openapi import SECURITY_SCHEMES, secure, trust_paths, trust_schemas
from titus_common.states import TaskState
from titus_common.jobspec import JobSpec
from titus_common.protocol import SyncRequest, SyncResponse, UpdatesRequest, UpdatesResponse

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _reply(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {
    "400": _reply("Invalid request; `error.problems` names each bad field", _ref("Error")),
    "404": _reply("No such object", _ref("Error")),
}


def _list_of(key: str, name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "array", "items": _ref(name)}}}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, schema = models_json_schema(
        [
            (m, "validation")
            for m in (JobSpec, JobRecord, TaskRecord, NodeRecord, SyncRequest, SyncResponse, UpdatesRequest,
                      UpdatesResponse)
        ],
        by_alias=True,
        ref_template=_REF,
    )
    schemas: dict[str, Any] = schema["$defs"]
    # Computed by the API, not stored: why an Accepted task waits (scheduler/pending.py).
    schemas["TaskRecord"]["properties"]["pendingReason"] = {
        "anyOf": [{"type": "string", "enum": [r.value for r in PendingReason]}, {"type": "null"}],
        "description": "Why the task is still Accepted (no host fits, none Ready, posture, back-off); "
        "null once placed",
    }
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "problems": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            }
        },
    }
    job_id, task_id, node_id = _id_param("job_id"), _id_param("task_id"), _id_param("node_id")
    paths: dict[str, Any] = {
        "/v1/jobs": {
            "post": {
                "summary": "Submit a batch or service job",
                "description": "An `Idempotency-Key` header (or `idempotencyKey` field) makes a retried "
                "submission return the first job (200) instead of creating another; the same key with "
                "a different spec is 409.",
                "requestBody": _json_body("JobSpec"),
                "responses": {
                    "201": _reply("Created", _ref("Job")),
                    "200": _reply("Already submitted with this idempotency key", _ref("Job")),
                    "409": _reply("Idempotency key reused with another spec", _ref("Error")),
                    **_ERRORS,
                },
            },
            "get": {
                "summary": "List jobs",
                "parameters": [{"name": "state", "in": "query",
                                "schema": {"type": "string", "enum": [e.value for e in JobState]}}],
                "responses": {"200": _reply("Jobs", _list_of("jobs", "Job")), **_ERRORS},
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {"summary": "Describe a job", "parameters": [job_id],
                    "responses": {"200": _reply("The job", _ref("Job")), **_ERRORS}},
        },
        "/v1/jobs/{job_id}/kill": {
            "post": {"summary": "Kill a job and all its tasks", "parameters": [job_id],
                     "responses": {"202": _reply("Kill initiated", _ref("Job")), **_ERRORS}},
        },
        "/v1/tasks": {
            "get": {
                "summary": "List tasks",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": [e.value for e in TaskState]}},
                    *({"name": n, "in": "query", "schema": {"type": "string"}} for n in ("jobId", "nodeId")),
                ],
                "responses": {"200": _reply("Tasks", _list_of("tasks", "TaskRecord")), **_ERRORS},
            }
        },
        "/v1/tasks/{task_id}": {
            "get": {"summary": "Describe a task", "parameters": [task_id],
                    "responses": {"200": _reply("The task", _ref("TaskRecord")), **_ERRORS}},
        },
        "/v1/tasks/{task_id}/kill": {
            "post": {"summary": "Kill one task (a service job replaces it)", "parameters": [task_id],
                     "responses": {"202": _reply("Kill initiated", _ref("TaskRecord")), **_ERRORS}},
        },
        "/v1/nodes": {
            "get": {"summary": "List agents",
                    "responses": {"200": _reply("Nodes", _list_of("nodes", "NodeRecord"))}},
        },
        "/v1/nodes/{node_id}": {
            "get": {"summary": "One agent: status, health conditions, taints",
                    "parameters": [node_id],
                    "responses": {"200": _reply("Node", _ref("NodeRecord")), **_ERRORS}},
        },
        "/v1/nodes/{node_id}/cordon": {
            "post": {
                "summary": "No new work on the host (a taint `cordoned` with the reason); its tasks stay",
                "parameters": [node_id],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"reason": {"type": "string", "maxLength": 256}}}}}},
                "responses": {"200": _reply("Node", _ref("NodeRecord")), **_ERRORS},
            }
        },
        "/v1/nodes/{node_id}/uncordon": {
            "post": {"summary": "The host takes new work again (health taints still apply)",
                     "parameters": [node_id],
                     "responses": {"200": _reply("Node", _ref("NodeRecord")), **_ERRORS}},
        },
        "/v1/nodes/{node_id}/sync": {
            "post": {
                "summary": "Agent heartbeat and long-poll for work (agent-initiated)",
                "parameters": [node_id],
                "requestBody": _json_body("SyncRequest"),
                "responses": {"200": _reply("Work for the agent", _ref("SyncResponse")), **_ERRORS},
            }
        },
        "/v1/nodes/{node_id}/updates": {
            "post": {
                "summary": "Agent reports task transitions",
                "parameters": [node_id],
                "requestBody": _json_body("UpdatesRequest"),
                "responses": {"200": _reply("Updates taken", _ref("UpdatesResponse")), **_ERRORS},
            }
        },
        "/v1/admin/reconcile": {
            "get": {"summary": "Reconciliation: the freeze, the mismatch, the proposed actions (dry run), "
                    "recent audit entries (docs/reconcile.md)", "responses": {"200": _reply("The state")}},
        },
        "/v1/admin/reconcile/approve": {
            "post": {"summary": 'Release proposed actions: {"actions": [ids]} or {"all": true}',
                     "responses": {"200": _reply("Approved"), **_ERRORS}},
        },
        "/v1/admin/reconcile/unfreeze": {
            "post": {"summary": "End the freeze (a mass mismatch at the next pass freezes again)",
                     "responses": {"200": _reply("Unfrozen"), **_ERRORS}},
        },
        "/v1/admin/scheduling-mode": {
            "get": {"summary": "The placement mode (spread | pack)",
                    "responses": {"200": _reply("The mode", {"type": "object", "properties": {"mode": {"type": "string"}}})}},
            "put": {
                "summary": "Switch the placement mode live (effective on the next pass; audited)",
                "description": "Body `{\"mode\": \"spread\" | \"pack\"}`; an `X-Titus-Actor` header names who "
                "switched it in the audit log.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["mode"], "additionalProperties": False,
                    "properties": {"mode": {"type": "string", "enum": ["spread", "pack"]}}}}}},
                "responses": {"200": _reply("The new mode", {"type": "object", "properties": {"mode": {"type": "string"}}}),
                              **_ERRORS},
            },
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _reply("text exposition")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _reply("ok")}}},
    }
    # What the API answers for a job: the record plus computed fields (scheduler/api.py job_view).
    job = copy.deepcopy(schemas["JobRecord"])
    job["title"] = "Job"
    job["properties"]["taskCounts"] = {"type": "object", "additionalProperties": {"type": "integer"}}
    job["properties"]["crashLooping"] = {"type": "boolean"}
    job["properties"]["startFailure"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "When every finished task failed the same way before starting: that reason "
                       "(scheduler/startfailure.py); null otherwise",
    }
    job["required"] = [*job.get("required", []), "taskCounts", "crashLooping"]
    schemas["Job"] = job
    paths.update(trust_paths())  # docs/trust.md
    paths.update(exec_paths())  # docs/exec.md
    secure(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "titus-scheduler", "version": "1"},
        "paths": paths,
        "components": {"schemas": {**schemas, **trust_schemas()}, "securitySchemes": SECURITY_SCHEMES},
    }


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
