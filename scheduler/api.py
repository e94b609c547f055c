"""The scheduler's REST API (JSON over HTTP). The OpenAPI document is `scheduler/openapi.py`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from scheduler import admin_api, taskstats
from scheduler.exec_api import add_exec_routes
from security.profiles import SecurityPolicy, default_policy, validate_security_request
from scheduler.auth import AUTH_KEY, IDENTITY_KEY, Auth, auth_middleware
from scheduler.core import BadRequest, Conflict, NotFound, Scheduler
from scheduler.openapi import openapi_document
from scheduler.tls import CA
from scheduler.apps_api import add_app_routes
from scheduler.trust_api import CA_KEY, add_trust_routes
from scheduler.provenance import provenance_view
from scheduler.workload import WORKLOAD_KEY, WorkloadIssuer, add_workload_routes
from scheduler.records import JobRecord, JobState, TaskRecord
from scheduler.startfailure import start_failure
from titus_common.clientlog import ClientErrorLog
from titus_common.daemon import HTTP_LOGGER_KEY
from titus_common.errors import TitusError
from titus_common.jobspec import SpecError, parse_job_spec
from titus_common.protocol import SyncRequest, UpdatesRequest, UpdatesResponse
from titus_common.states import TaskState

log = logging.getLogger("titus.scheduler.api")

SCHEDULER_KEY = web.AppKey("scheduler", Scheduler)
SECURITY_POLICY_KEY = web.AppKey("security_policy", SecurityPolicy)
CLIENT_ERRORS_KEY = web.AppKey("client_errors", ClientErrorLog)
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", TaskState, JobState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(TitusError):
    """A request the API refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        body: dict[str, Any] = {"message": e.message}
        if e.problems:
            body["problems"] = [{"field": f, "message": m} for f, m in e.problems]
        return _json({"error": body}, status=e.status)
    except NotFound as e:
        return _json({"error": {"message": str(e)}}, status=404)
    except Conflict as e:
        return _json({"error": {"message": str(e)}}, status=409)
    except BadRequest as e:  # an unknown scheduling mode or capacity group, a malformed attribute
        return _json({"error": {"message": str(e)}}, status=400)


def _body_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}") from None


async def _body(request: web.Request) -> Any:
    return _body_json(await request.read())


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [
            (".".join(str(p) for p in err["loc"]), err["msg"]) for err in e.errors(include_url=False)
        ]
        raise ApiError(400, "invalid request", problems) from None


def job_view(s: Scheduler, job: JobRecord, workload: WorkloadIssuer | None = None) -> dict[str, Any]:
    doc = job.to_api()
    # The identity the job's tasks may have (docs/identity.md): this + /task/<task id>; None without a CA.
    doc["workloadIdentity"] = workload.job_identity(job) if workload is not None else None
    if job.id in s.jobs:
        tasks = s.job_tasks(job.id)
        counts: dict[str, int] = {}
        for t in tasks:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        doc["taskCounts"] = counts
        doc["crashLooping"] = s.crash_looping(job)
        doc["startFailure"] = start_failure(tasks)
    else:  # evicted (past its retention): the same answer from SQL, without loading its tasks
        summary = s.retention.summary(s, job.id)
        doc["taskCounts"] = summary.counts
        doc["crashLooping"] = summary.crash_looping
        doc["startFailure"] = summary.start_failure
    doc["provenance"] = provenance_view(job)
    return doc


def task_view(task: TaskRecord, s: Scheduler | None = None, workload: WorkloadIssuer | None = None) -> dict[str, Any]:
    doc = task.to_api()
    job = s.jobs.get(task.job_id) if s is not None else None
    prefix = workload.job_identity(job) if workload is not None and job is not None else None
    doc["workloadIdentity"] = f"{prefix}/task/{task.id}" if prefix is not None else None
    if s is not None:  # why an Accepted task waits (scheduler/pending.py); null once placed
        doc["pendingReason"] = s.pending_reason(task)
        job = s.jobs.get(task.job_id)  # a job past retention (finished) shows its provenance on the job
        if job is not None:
            doc["provenance"] = provenance_view(job, task)
            doc["tagMoved"] = doc["provenance"]["tagMoved"]
    return doc


def _query_state(request: web.Request, enum: type[E]) -> E | None:
    value = request.query.get("state")
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        raise ApiError(400, f"unknown state {value!r}; one of {', '.join(e.value for e in enum)}") from None


async def submit_job(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    data = await _body(request)
    if isinstance(data, dict) and "Idempotency-Key" in request.headers:
        data.setdefault("idempotencyKey", request.headers["Idempotency-Key"])
    try:
        spec = parse_job_spec(data)
    except SpecError as e:
        raise ApiError(400, "invalid job", e.problems) from None
    # Security attributes (seccomp variant and its owner allow-list, AppArmor/userns requests,
    # privileged / host namespaces refused): refused here, at submit, not at launch.
    problems = validate_security_request(spec, request.app[SECURITY_POLICY_KEY])
    if problems:
        raise ApiError(400, "invalid job", problems)
    # The tag's digest, asked of the registry on a thread with a timeout; no answer: the agent's
    # first launch pins it (scheduler/provenance.py). A burst's jobs share one lookup per tag.
    image = await s.registry.lookup(spec.container.image, reuse=True) if s.registry is not None else None
    job, created = s.submit(spec, image)
    return _json(job_view(s, job, request.app.get(WORKLOAD_KEY)), status=201 if created else 200)


async def list_jobs(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    state = _query_state(request, JobState)
    jobs = [j for j in s.jobs.values() if state is None or j.state is state]
    workload = request.app.get(WORKLOAD_KEY)
    return _json({"jobs": [job_view(s, j, workload) for j in sorted(jobs, key=lambda j: j.created_at)]})


async def get_job(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    return _json(job_view(s, s.job(request.match_info["job_id"]), request.app.get(WORKLOAD_KEY)))


async def kill_job(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    return _json(job_view(s, s.kill_job(request.match_info["job_id"]), request.app.get(WORKLOAD_KEY)), status=202)


async def list_tasks(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    state = _query_state(request, TaskState)
    job_id = request.query.get("jobId")
    node_id = request.query.get("nodeId")
    # 404 for a job that does not exist, not an empty list.
    candidates = s.job_tasks(s.job(job_id).id) if job_id is not None else s.tasks.values()
    tasks = [
        t
        for t in candidates
        if (state is None or t.state is state) and (node_id is None or t.node_id == node_id)
    ]
    tasks.sort(key=lambda t: t.timestamps.get(TaskState.ACCEPTED.value, 0.0))
    return _json({"tasks": [_output_for(request, s, t, task_view(t, s, request.app.get(WORKLOAD_KEY))) for t in tasks]})


async def get_task(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    task = s.task(request.match_info["task_id"])
    return _json(_output_for(request, s, task, task_view(task, s, request.app.get(WORKLOAD_KEY))))


async def kill_task(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    task = s.kill_task(request.match_info["task_id"])
    return _json(_output_for(request, s, task, task_view(task, s, request.app.get(WORKLOAD_KEY))), status=202)


def _output_for(request: web.Request, s: Scheduler, task: TaskRecord, doc: dict[str, Any]) -> dict[str, Any]:
    """A task's last output is its owner's, like its stats: a submitter of another owner reads
    `logTail` as null (operators and admins read it; the output may hold what only the owner should see)."""
    who = request.get(IDENTITY_KEY)
    if who is None or who.role != "submitter" or doc.get("logTail") is None:
        return doc
    try:
        owner: str | None = s.job(task.job_id).spec.owner
    except NotFound:
        owner = None
    if owner != who.owner:
        doc["logTail"] = None
    return doc


async def list_nodes(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    return _json({"nodes": [n.to_api() for n in sorted(s.nodes.values(), key=lambda n: n.id)]})


async def get_node(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    node = s.nodes.get(request.match_info["node_id"])
    if node is None:
        raise ApiError(404, f"no node {request.match_info['node_id']!r}")
    return _json(node.to_api())


async def _cordon_body(request: web.Request) -> str:
    raw = await request.read()
    doc = _body_json(raw) if raw.strip() else {}
    if not isinstance(doc, dict) or set(doc) - {"reason"} or not isinstance(doc.get("reason", ""), str):
        raise ApiError(400, 'expected {"reason": "…"} (optional)')
    reason = str(doc.get("reason", ""))
    if len(reason) > 256:
        raise ApiError(400, "reason: at most 256 characters")
    return reason


async def cordon_node(request: web.Request) -> web.Response:
    """No new work on the host; what runs there stays (`titusctl node cordon|drain`)."""
    s = request.app[SCHEDULER_KEY]
    reason = await _cordon_body(request)
    return _json(s.set_cordon(request.match_info["node_id"], True, reason).to_api())


async def drain_node(request: web.Request) -> web.Response:
    """Cordon the host and move its tasks off under the disruption budgets (scheduler/drain.py)."""
    s = request.app[SCHEDULER_KEY]
    raw = await request.read()
    doc = _body_json(raw) if raw.strip() else {}
    if not isinstance(doc, dict) or set(doc) - {"reason", "batchDeadlineSeconds"}:
        raise ApiError(400, 'expected {"reason": "…", "batchDeadlineSeconds": N} (both optional)')
    reason, deadline = doc.get("reason", ""), doc.get("batchDeadlineSeconds")
    if not isinstance(reason, str) or len(reason) > 256:
        raise ApiError(400, "reason: a string of at most 256 characters")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not 0 <= deadline <= 7 * 86400):
        raise ApiError(400, "batchDeadlineSeconds: a number of seconds between 0 and 604800")
    # The authenticated identity when there is one (the audit's "by"), else what the client says.
    who = request.get(IDENTITY_KEY)
    known = str(who) if who is not None and who.kind != "anonymous" else ""
    claimed = request.headers.get("X-Titus-Actor", "")
    actor = f"{known} ({claimed})" if known and claimed else (known or claimed or "operator")
    s.draining.start(request.match_info["node_id"], reason, actor, None if deadline is None else float(deadline))
    return _json(s.draining.status(request.match_info["node_id"]))


async def drain_status(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    return _json(s.draining.status(request.match_info["node_id"]))


async def uncordon_node(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    return _json(s.set_cordon(request.match_info["node_id"], False).to_api())


async def node_sync(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    req = _parse(SyncRequest, await _body(request))
    if req.node.id != request.match_info["node_id"]:
        raise ApiError(400, "node.id does not match the URL")
    resp = await s.sync(req.node, req.wait_seconds)
    doc = resp.model_dump(mode="json", by_alias=True)
    if not doc["killContainers"]:
        del doc["killContainers"]  # an agent older than orphan kills refuses a field it does not know
    return _json(doc)


async def node_updates(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    req = _parse(UpdatesRequest, await _body(request))
    accepted = s.apply_updates(request.match_info["node_id"], req.updates)
    return _json(UpdatesResponse(accepted=accepted).model_dump(mode="json", by_alias=True))


def _mode_doc(s: Scheduler) -> dict[str, Any]:
    mode = s.scheduling_mode
    return {"mode": mode.value if mode is not None else None, "auto": s.placing.auto.describe(s.placing.tick())}


async def get_scheduling_mode(request: web.Request) -> web.Response:
    return _json(_mode_doc(request.app[SCHEDULER_KEY]))


async def set_scheduling_mode(request: web.Request) -> web.Response:
    """The live spread ⇄ pack switch (docs/scheduling.md): effective on the next pass, audited."""
    s = request.app[SCHEDULER_KEY]
    data = await _body(request)
    if not isinstance(data, dict) or not isinstance(data.get("mode"), str) or set(data) != {"mode"}:
        raise ApiError(400, "invalid request", [("mode", "expected {\"mode\": \"spread\" | \"pack\" | \"auto\"}")])
    # The caller's identity once the API authenticates (issue 13); until then the client's own word.
    actor = request.headers.get("X-Titus-Actor") or request.remote or "unknown"
    s.set_scheduling_mode(data["mode"], actor=actor)
    return _json(_mode_doc(s))


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER_KEY]
    resp = web.Response(body=generate_latest(s.metrics.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


@web.middleware
async def _agent_protocol_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A node-protocol request refused (malformed, over a size bound): counted, and logged at most
    once per node per kind per interval — a broken or hostile agent cannot flood the log."""
    node_id = request.match_info.get("node_id")
    if node_id is None:
        return await handler(request)
    call = request.path.rsplit("/", 1)[-1]
    try:
        return await handler(request)
    except ApiError as e:
        kind = f"{call}:{'too_large' if e.status == 413 else 'invalid'}"
        fields = ", ".join(f for f, _ in e.problems[:5])
        request.app[CLIENT_ERRORS_KEY].report(node_id[:64], kind, f"{e.message} {fields}".strip())
        raise
    except web.HTTPRequestEntityTooLarge as e:
        request.app[CLIENT_ERRORS_KEY].report(node_id[:64], f"{call}:too_large", e.text or "body too large")
        raise


def make_app(
    scheduler: Scheduler, security_policy: SecurityPolicy | None = None, auth: Auth | None = None, ca: CA | None = None,
    workload: WorkloadIssuer | None = None,
) -> web.Application:
    """`security_policy`: the submit-time security check's policy (loaded once at start-up);
    None = the built-in default policy. `auth` (and `ca`, to sign node certificates): authentication,
    authorization, the IAM role policy and the audit log (scheduler/auth.py); None = none (unit tests)."""
    base = [_errors, _agent_protocol_errors]
    middlewares = [auth_middleware, *base] if auth is not None else base
    app = web.Application(middlewares=middlewares, client_max_size=4 * 1024 * 1024)
    errors = ClientErrorLog(
        log, count=lambda kind: scheduler.metrics.agent_protocol_errors.labels(kind).inc(), what="agent"
    )
    app[CLIENT_ERRORS_KEY] = errors
    app[HTTP_LOGGER_KEY] = errors.http_logger("http")
    if auth is not None:
        app[AUTH_KEY] = auth
        add_app_routes(app)  # app → owner grants (docs/identity.md)
        if ca is not None:
            app[CA_KEY] = ca
            add_trust_routes(app)
        if workload is not None:  # task identities (docs/identity.md)
            app[WORKLOAD_KEY] = workload
            add_workload_routes(app, workload, scheduler)
    app[SCHEDULER_KEY] = scheduler
    app[SECURITY_POLICY_KEY] = security_policy or default_policy()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/jobs", submit_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_post("/v1/jobs/{job_id}/kill", kill_job)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_post("/v1/tasks/{task_id}/kill", kill_task)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/nodes/{node_id}", get_node)
    app.router.add_post("/v1/nodes/{node_id}/cordon", cordon_node)
    app.router.add_post("/v1/nodes/{node_id}/uncordon", uncordon_node)
    app.router.add_post("/v1/nodes/{node_id}/drain", drain_node)
    app.router.add_get("/v1/nodes/{node_id}/drain", drain_status)
    app.router.add_post("/v1/nodes/{node_id}/sync", node_sync)
    app.router.add_post("/v1/nodes/{node_id}/updates", node_updates)
    admin_api.add_routes(app, scheduler.reconciler, scheduler.clock)
    taskstats.add_routes(app, lambda r: (r.app[SCHEDULER_KEY], r.app[SCHEDULER_KEY].stats))
    add_exec_routes(app, scheduler)  # owners' exec into their tasks (docs/exec.md)
    app.router.add_get("/v1/admin/scheduling-mode", get_scheduling_mode)
    app.router.add_put("/v1/admin/scheduling-mode", set_scheduling_mode)
    return app
