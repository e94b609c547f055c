"""The OpenAPI 3.1 document of the scheduler API, generated from the same pydantic models that
validate requests, so the document cannot disagree with the code. `docs/openapi.json` is this
output (`python -m scheduler.openapi > docs/openapi.json`); a test keeps them equal."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from pydantic.json_schema import models_json_schema

from scheduler.apps_api import apps_paths
from scheduler.exec_openapi import exec_paths
from scheduler.pending import PendingReason
from scheduler.records import JobRecord, JobState, NodeRecord, TaskRecord
from titus_common.provenance import PROVENANCE_KEYS
from scheduler.trust_openapi import SECURITY_SCHEMES, secure, trust_paths, trust_schemas
from titus_common.states import TaskState
from titus_common.jobspec import JobSpec
from titus_common.protocol import StatsReportRequest, SyncRequest, SyncResponse, UpdatesRequest, UpdatesResponse

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
    # JSON from the API; text/plain when the HTTP layer refuses the request before it is routed (a
    # request line or header over 8 KiB, malformed HTTP).
    "400": {"description": "Invalid request; `error.problems` names each bad field",
            "content": {"application/json": {"schema": _ref("Error")}, "text/plain": {"schema": {"type": "string"}}}},
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
                      UpdatesResponse, StatsReportRequest)
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
    # Image provenance (scheduler/provenance.py, docs/provenance.md), computed from the job and task.
    schemas["Provenance"] = {
        "type": "object",
        "description": "The image a job runs and where it came from: the pinned manifest digest (every "
        "launch pulls name@digest), who pinned it, the tag's digest at the last registry check, and the "
        "job's source.commit / source.repo / build.id / build.url attributes",
        "properties": {
            "image": {"type": "string"},
            "imageDigest": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "pinnedBy": {"anyOf": [{"type": "string", "enum": ["reference", "submit", "launch"]}, {"type": "null"}]},
            "resolveError": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "tagDigest": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "tagCheckedAt": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "taskImageDigest": {"anyOf": [{"type": "string"}, {"type": "null"}],
                                "description": "tasks only: the digest the agent ran"},
            "tagMoved": {"type": "boolean", "description": "tasks only: the task is live and its job's tag "
                         "now points at another digest than the one it runs"},
            **{k: {"type": "string"} for k in PROVENANCE_KEYS},
        },
    }
    schemas["TaskRecord"]["properties"]["provenance"] = _ref("Provenance")
    schemas["TaskRecord"]["properties"]["tagMoved"] = {"type": "boolean", "description": "= provenance.tagMoved"}
    schemas["TaskRecord"]["properties"]["workloadIdentity"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "The task's SPIFFE identity (spiffe://<cell>/app/<app>/job/<job>/task/<task>, "
        "docs/identity.md); null without a cell CA",
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
                    "409": _reply("Idempotency key reused with another spec, or the job's capacity group "
                                  "would go over its limit", _ref("Error")),
                    "413": _reply("The body is larger than 4 MiB (text/plain from the HTTP layer)"),
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
        "/v1/tasks/{task_id}/stats": {
            "get": {"summary": "A running task's usage from its agent (CPU, throttling, memory, pids, cpuset, "
                               "network, processes; docs/provenance.md), relayed over the agent's sync; a "
                               "submitter only for its own owner's tasks",
                    "parameters": [task_id],
                    "responses": {"200": _reply("The task's usage (agent/taskstats.py's document)", {"type": "object"}),
                                  "409": _reply("The task is not running", _ref("Error")),
                                  "502": _reply("The agent could not read it", _ref("Error")),
                                  "504": _reply("The agent did not answer in time", _ref("Error")), **_ERRORS}},
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
        "/v1/nodes/{node_id}/drain": {
            "post": {
                "summary": "Cordon the host and move its tasks off: service tasks replaced elsewhere first, then "
                           "killed; batch tasks finish until the deadline, then evicted; per-job disruption budgets "
                           "and the kill path's rate (docs/health.md). Uncordon stops it",
                "parameters": [node_id],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"reason": {"type": "string", "maxLength": 256},
                                   "batchDeadlineSeconds": {"type": "number", "minimum": 0, "maximum": 604800}}}}}},
                "responses": {"200": _reply("Drain status", {"type": "object"}), **_ERRORS},
            },
            "get": {"summary": "The host's drain: state, and each remaining task's phase",
                    "parameters": [node_id],
                    "responses": {"200": _reply("Drain status", {"type": "object"}), **_ERRORS}},
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
        "/v1/nodes/{node_id}/stats": {
            "post": {
                "summary": "Agent answers stats requests it got in its sync (SyncResponse.stats)",
                "parameters": [node_id],
                "requestBody": _json_body("StatsReportRequest"),
                "responses": {"200": _reply("Answers taken", _ref("UpdatesResponse")), **_ERRORS},
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
            "get": {"summary": "The placement mode (spread | pack) and the automatic switch's state",
                    "responses": {"200": _reply("The mode", {"type": "object", "properties": {
                        "mode": {"type": "string"}, "auto": {"type": "object"}}})}},
            "put": {
                "summary": "Switch the placement mode live (effective on the next pass; audited)",
                "description": "Body `{\"mode\": \"spread\" | \"pack\" | \"auto\"}`; an `X-Titus-Actor` header "
                "names who switched it in the audit log. `spread`/`pack` pin the mode against the automatic switch; "
                "`auto` hands it back (409 when both `auto_pack_queue_depth` and `auto_pack_arrival_rate` are 0).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["mode"], "additionalProperties": False,
                    "properties": {"mode": {"type": "string", "enum": ["spread", "pack", "auto"]}}}}}},
                "responses": {"200": _reply("The new mode", {"type": "object", "properties": {"mode": {"type": "string"}}}),
                              "409": _reply("`auto` while the automatic switch is off, or a placer without modes",
                                            _ref("Error")),
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
    job["properties"]["provenance"] = _ref("Provenance")
    job["properties"]["workloadIdentity"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "The identity prefix of the job's tasks (each gets + /task/<task id>), derived from "
        "the cell, appName and job id (docs/identity.md); null without a cell CA",
    }
    job["required"] = [*job.get("required", []), "taskCounts", "crashLooping"]
    schemas["Job"] = job
    paths.update(trust_paths())  # docs/trust.md
    paths.update(exec_paths())  # docs/exec.md
    paths.update(apps_paths())  # docs/identity.md: app → owner grants
    secure(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "titus-scheduler", "version": "1"},
        "paths": paths,
        "components": {"schemas": {**schemas, **trust_schemas()}, "securitySchemes": SECURITY_SCHEMES},
    }


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
