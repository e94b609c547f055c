"""Who is calling, and may they (docs/trust.md). One aiohttp middleware, registered in make_app:

- identity: a verified client certificate (O=titus:nodes → node CN; O=titus:operators:<role> →
  operator CN) or `Authorization: Bearer <token>` (an operator token from the auth store);
- nodes may only call /v1/nodes/<their own id>/{sync,updates,certificate,stats,tasks/<task>/identity},
  with a certificate that is their current one and not on the deny list (checked per request);
- roles: admin (everything), operator (reads; kill jobs/tasks; node cordon/drain), submitter (reads;
  submit and kill jobs of its own owner; a task's stats only for its own owner's tasks);
- exec into a task (docs/exec.md): admin, or the submitter of the task's job's owner; only the task's
  node may open an exec session's agent end (/v1/nodes/<its own id>/exec/<session>);
- every job submit is checked against the IAM role policy (scheduler/iam_policy.py) and against the
  app's owner (scheduler/appgrants.py: an app granted to, or claimed by, another owner is 403);
- every mutating call is written to the audit log and counted.
Refusals: 401 (no or unusable credentials) / 403 (not allowed), the message naming what is missing.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from scheduler.appgrants import AppGrant, AppRefused
from scheduler.authstore import ROLES, AuthStore, TokenRefused
from scheduler.bootstrap_limit import BootstrapLimiter, BootstrapLimits
from scheduler.iid import IidVerifier, instance_of_arn
from titus_common.clientlog import ClientErrorLog
from titus_common.iam_policy import IamPolicy
from titus_common.jobspec import JobSpec, SpecError, parse_job_spec
from titus_common.pki import NODE_ORG, OPERATOR_ORG

__all__ = ["AUTH_KEY", "IDENTITY_KEY", "Auth", "Identity", "auth_middleware"]

log = logging.getLogger("titus.scheduler.auth")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC = {("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/metrics"), ("POST", "/v1/bootstrap")}
NODE_CALL = re.compile(r"^/v1/nodes/(?P<node>[^/]+)/(?P<what>sync|updates|certificate|stats|tasks/[^/]+/identity)$")
TASK_STATS = re.compile(r"^/v1/tasks/(?P<id>[^/]+)/stats$")
KILL = re.compile(r"^/v1/(?P<kind>jobs|tasks)/(?P<id>[^/]+)/kill$")
# Exec (docs/exec.md): an operator's websocket into a task, and the agent's end of the relay.
EXEC = re.compile(r"^/v1/tasks/(?P<id>[^/]+)/exec$")
NODE_EXEC = re.compile(r"^/v1/nodes/(?P<node>[^/]+)/exec/[^/]+$")
NODE_OPS = re.compile(r"^/v1/nodes/[^/]+/(cordon|uncordon|drain|undrain|reconcile)$")


@dataclass(frozen=True)
class Identity:
    kind: str  # "node" | "operator" | "anonymous"
    name: str
    role: str = ""
    owner: str = ""
    serial: str = ""
    instance: str = ""  # a node certificate's EC2 instance id, when bound to one

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"({self.role})" if self.role else "")


class Auth:
    """The trust state the middleware and the trust routes share."""

    def __init__(self, store: AuthStore, iam: IamPolicy, registry: CollectorRegistry, *, insecure: bool = False,
                 node_cert_ttl: float = 86400.0, bootstrap_limits: BootstrapLimits | None = None,
                 iid: IidVerifier | None = None) -> None:
        self.store = store
        self.iid = iid  # --aws-imds-identity: nodes are EC2 instances, attested at bootstrap (scheduler/iid.py)
        self.iam = iam
        self.insecure = insecure
        self.node_cert_ttl = node_cert_ttl
        self.refused = Counter("titus_scheduler_auth_refused", "Calls refused by authentication or authorization",
                               ["reason"], registry=registry)
        self.bootstrap_limiter = BootstrapLimiter(bootstrap_limits or BootstrapLimits())
        # Bootstrap refusals (bad tokens, bad CSRs, 429s) come from callers without credentials:
        # each is counted in `refused`, and logged at most once a minute per (source, reason).
        self.bootstrap_errors = ClientErrorLog(log, count=lambda reason: self.refused.labels(reason).inc(),
                                               what="bootstrap from")
        self.audited = Counter("titus_scheduler_audit_events", "Mutating calls written to the audit log",
                               ["kind", "outcome"], registry=registry)


AUTH_KEY = web.AppKey("auth", Auth)
IDENTITY_KEY = web.RequestKey("identity", Identity)


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class _Peer:
    org: str
    cn: str
    serial: str
    instance: str = ""  # the EC2 instance the certificate is bound to (its SAN URI; scheduler/iid.py)


# The verified peer certificate of each TLS connection, decoded once per connection (kept-alive
# connections carry many requests). Revocation and currency are still checked on every request,
# from the trust store's in-memory sets (updated at once on revoke), never from SQLite.
_PEERS: weakref.WeakKeyDictionary[ssl.SSLObject, _Peer | None] = weakref.WeakKeyDictionary()


def _peer(request: web.Request) -> _Peer | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    try:
        return _PEERS[ssl_object]
    except KeyError:
        pass
    cert = ssl_object.getpeercert() or {}
    peer: _Peer | None = None
    if cert:
        subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        instances = [i for kind, uri in cert.get("subjectAltName", ()) if kind == "URI"
                     for i in [instance_of_arn(str(uri))] if i is not None]
        peer = _Peer(str(subject.get("organizationName", "")), str(subject.get("commonName", "")),
                     format(int(str(cert.get("serialNumber", "0")), 16), "x"), instances[0] if instances else "")
    _PEERS[ssl_object] = peer
    return peer


def identify(request: web.Request, auth: Auth) -> Identity:
    peer = _peer(request)
    header = request.headers.get("Authorization", "")
    if peer is not None and header:
        raise Refused(401, "two_credentials", "give a client certificate or a bearer token, not both")
    if peer is not None:
        org, cn, serial = peer.org, peer.cn, peer.serial
        if auth.store.revoked(serial):
            raise Refused(401, "revoked", f"certificate {serial} ({cn}) is revoked")
        if org == NODE_ORG:
            return Identity("node", cn, serial=serial, instance=peer.instance)
        if org.startswith(OPERATOR_ORG + ":") and org.rsplit(":", 1)[1] in ROLES:
            return Identity("operator", cn, role=org.rsplit(":", 1)[1], serial=serial)
        raise Refused(403, "unknown_subject", f"certificate subject O={org} is neither a node nor an operator")
    if header:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Refused(401, "bad_header", "Authorization must be `Bearer <token>`")
        try:
            token = auth.store.operator(presented.strip())
        except TokenRefused as e:
            raise Refused(401, "bad_token", str(e)) from None
        return Identity("operator", token.name, role=token.role, owner=token.owner)
    if auth.insecure:
        return Identity("operator", "anonymous", role="admin")
    return Identity("anonymous", "anonymous")


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())  # aiohttp caches the body: the handler reads it again
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the handler answers 400 with the parse error


def _job_owner(request: web.Request, kind: str, obj_id: str) -> str | None:
    from scheduler.api import SCHEDULER_KEY  # the app's scheduler; api imports this module

    s = request.app[SCHEDULER_KEY]
    job_id = obj_id if kind == "jobs" else (s.tasks[obj_id].job_id if obj_id in s.tasks else None)
    job = s.jobs.get(job_id) if job_id is not None else None
    return job.spec.owner if job is not None else None


async def authorize(request: web.Request, who: Identity, auth: Auth) -> None:
    method, path = request.method, request.path
    if (method, path) in PUBLIC or method == "HEAD" or auth.insecure:
        return  # --insecure: no identities, so nothing to authorize (agents sync without certificates)
    node_call = NODE_CALL.match(path)
    node_exec = NODE_EXEC.match(path) if method == "GET" else None
    if node_exec is not None and who.kind == "node":
        node_call = node_exec  # the agent's end of an exec session: same scope as its own sync
    elif who.kind == "node" and method != "POST":
        node_call = None
    if who.kind == "node":
        if node_call is None:
            raise Refused(403, "node_scope", f"node {who.name} may only call its own /v1/nodes/{who.name}/…")
        if node_call["node"] != who.name:
            raise Refused(403, "wrong_node", f"certificate is for node {who.name}, not {node_call['node']}")
        if not auth.store.cert_current(who.name, who.serial):
            raise Refused(401, "not_current", f"certificate {who.serial} is not a current certificate of {who.name}")
        if who.instance and node_call["what"] == "sync":
            await _check_instance(request, who)
        return
    if who.kind == "anonymous":
        raise Refused(401, "no_credentials", "credentials required: a client certificate or a bearer token")
    node_call = node_call or NODE_EXEC.match(path)
    if node_call is not None:
        raise Refused(403, "not_a_node", f"only node {node_call['node']}'s certificate may call {path}")
    stats = TASK_STATS.match(path) if method == "GET" else None
    if stats is not None and who.role == "submitter":
        # A task's processes and usage are its owner's (scheduler/taskstats.py).
        owner = _job_owner(request, "tasks", stats["id"])
        if owner is not None and owner != who.owner:
            raise Refused(403, "other_owner", f"submitter {who.name} may read stats only of owner {who.owner!r}'s tasks")
    exec_into = EXEC.match(path)
    if exec_into is not None:
        authorize_exec(request, who, exec_into["id"])
        return
    if who.role == "admin" or method == "GET" and not path.startswith("/v1/admin/"):
        return
    kill = KILL.match(path) if method == "POST" else None
    if who.role == "operator" and (kill is not None or NODE_OPS.match(path)):
        return
    if who.role == "submitter":
        if (method, path) == ("POST", "/v1/jobs"):
            body = await _json_body(request)
            owner = body.get("owner") if isinstance(body, dict) else None
            if owner is not None and owner != who.owner:
                raise Refused(403, "other_owner", f"submitter {who.name} may submit only for owner {who.owner!r}, "
                                                  f"not {owner!r}")
            return
        if kill is not None:
            owner = _job_owner(request, kill["kind"], kill["id"])
            if owner is not None and owner != who.owner:
                raise Refused(403, "other_owner", f"submitter {who.name} may kill only jobs of owner {who.owner!r}")
            return
    raise Refused(403, "role", f"role {who.role!r} may not {method} {path} (needs "
                               f"{'admin' if path.startswith('/v1/admin/') else 'operator or admin'})")


async def _check_instance(request: web.Request, who: Identity) -> None:
    """A node bound to an EC2 instance must keep reporting that instance (its `instanceId` label,
    agent/agent.py): a certificate copied to another host, or an image baked with one, is refused."""
    body = await _json_body(request)
    node = body.get("node") if isinstance(body, dict) else None
    labels = node.get("labels") if isinstance(node, dict) else None
    reported = labels.get("instanceId") if isinstance(labels, dict) else None
    if reported is None:  # else the host's record would name no instance to retire (scheduler/retire.py)
        raise Refused(403, "instance_unreported", f"node {who.name}'s certificate is bound to instance "
                                                  f"{who.instance}, but its report has no instanceId label")
    if reported != who.instance:
        raise Refused(403, "instance_mismatch", f"node {who.name}'s certificate is bound to instance {who.instance}, "
                                                f"but it reports instance {reported}")


def authorize_exec(request: web.Request, who: Identity, task_id: str) -> None:
    """Into a container, never the host: admin, or a submitter whose owner is the task's job's owner
    (the same grant that lets it submit and kill those jobs). The operator role runs hosts, not
    containers. An unknown task passes on to the route's 404."""
    if who.role == "admin":
        return
    owner = _job_owner(request, "tasks", task_id)
    if owner is None:
        return
    if who.role == "submitter" and who.owner == owner:
        return
    raise Refused(403, "exec_grant", f"{who} may not exec into task {task_id}: that needs role admin, or role "
                                     f"submitter with owner {owner!r} (the job's owner)")


async def _submitted_spec(request: web.Request) -> JobSpec | None:
    """The job a `POST /v1/jobs` submits, read by the same model as the handler (camelCase and field
    names alike: a check reading raw keys could be skipped by spelling one the other way); None for
    another route or a body the handler refuses with 400."""
    if (request.method, request.path) != ("POST", "/v1/jobs"):
        return None
    try:
        return parse_job_spec(await _json_body(request))
    except SpecError:
        return None


def check_iam(spec: JobSpec | None, auth: Auth) -> None:
    role = spec.container.iam_role if spec is not None else None
    if spec is not None and role:
        problem = auth.iam.refusal(spec.owner, spec.app_name, role)
        if problem is not None:
            raise Refused(403, "iam_role", problem)


def check_app(spec: JobSpec | None, auth: Auth, who: Identity) -> AppGrant | None:
    """A submit's appName must be its owner's (docs/identity.md): the new claim, if this submit made one."""
    if auth.insecure or spec is None:
        return None  # another route, or the handler's 400 names what is wrong
    try:
        return auth.store.apps.admit(spec.app_name, spec.owner, str(who))
    except AppRefused as e:
        raise Refused(403, "app_grant", str(e)) from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH_KEY]
    who: Identity | str = "unidentified"
    claim: AppGrant | None = None
    try:
        who = identify(request, auth)
        await authorize(request, who, auth)
        spec = await _submitted_spec(request)  # read once for both checks
        check_iam(spec, auth)
        claim = check_app(spec, auth, who)
        request[IDENTITY_KEY] = who
        response = await handler(request)
    except web.HTTPException as e:  # a trust route's 400 (scheduler/trust_api.py)
        response = web.Response(status=e.status, text=e.text, content_type=e.content_type,
                                headers={k: v for k, v in e.headers.items() if k.lower() == "allow"})
    except Refused as e:
        auth.refused.labels(e.reason).inc()
        body: dict[str, Any] = {"message": e.message}
        if e.reason in ("iam_role", "app_grant"):
            field = "container.iamRole" if e.reason == "iam_role" else "appName"
            body["problems"] = [{"field": field, "message": e.message}]
        response = web.json_response({"error": body}, status=e.status)
    # A failed submit leaves the app unclaimed, unless another submit riding on the claim succeeds.
    if claim is not None and auth.store.apps.settle(claim, response.status < 400):
        auth.store.audit(claim.by, "APP-CLAIM", request.path, response.status, detail=claim.view())
    refused_exec = response.status >= 400 and EXEC.match(request.path) is not None  # sessions: exec_api
    if request.method not in ("GET", "HEAD") and not NODE_CALL.match(request.path) or refused_exec:
        outcome = "ok" if response.status < 400 else "refused"
        auth.store.audit(str(who), request.method, request.path, response.status)
        auth.audited.labels(who.kind if isinstance(who, Identity) else "unidentified", outcome).inc()
    return response
