"""The metadata HTTP service: IMDS (IMDSv2 tokens, allow-listed paths, role credentials) and an
ECS-style credentials endpoint, served on listening sockets the agent created inside each task's
network path. The socket that accepted a connection identifies the task (one aiohttp low-level server
per task, bound to that task's state); source addresses are never looked at.

Everything a task can read except its credentials is rendered once when the task is added; a cached
credential GET is a header check, an HMAC, a dict lookup and a pre-rendered body.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import platform
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from imds.credentials import CredentialBroker, CredentialError, Credentials, RoleArn, format_time, parse_role_arn
from imds.identity import TaskIdentity
from imds.metrics import ImdsMetrics
from imds.tokens import TokenSigner, parse_ttl
from titus_common.clientlog import DEFAULT_INTERVAL, ClientErrorLog

log = logging.getLogger("titus.imds")

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ECS_PATH = "/v2/credentials"
META = "/latest/meta-data/"
CREDS_PREFIX = META + "iam/security-credentials/"

DEFAULT_IMDS_HOSTS = ("169.254.169.254", "[fd00:ec2::254]")
DEFAULT_ECS_HOSTS = ("169.254.170.2", "169.254.170.23", "[fd00:ec2::23]")
MIN_ECS_TOKEN_LEN = 16
TOKEN_CACHE = 256  # verified tokens remembered per task (skips the HMAC on repeat use)

# Paths a task must never read from the host, answered 404 like any unknown path (class "denied" in
# the metrics so attempts are visible).
DENIED_PREFIXES = (
    "/latest/user-data",
    META + "identity-credentials",
    META + "public-keys",
    META + "tags",
    META + "network",
    META + "ami-id",
    "/latest/dynamic/instance-identity/pkcs7",
    "/latest/dynamic/instance-identity/signature",
    "/latest/dynamic/instance-identity/rsa2048",
    CREDS_PREFIX,  # any role name but the task's own
)

IMDS = "imds"
ECS = "ecs"
# The task's workload-identity JWT (docs/identity.md): GET with `?audience=` (required), IMDSv2 token
# as for every path. Answered by the agent's `workload_jwt(task id, audience)` for the task that owns the
# socket the request came on, so another task's endpoint can only ever mint that task's own JWT.
JWT_PATH = "/titus/v1/identity/jwt"
# (task id, audience) -> the JWT; None: the task has no identity; ValueError: a bad audience.
WorkloadJwt = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class _Static:
    path_class: str
    body: bytes
    content_type: str = "text/plain"


@dataclass(eq=False)
class _Task:
    identity: TaskIdentity
    role: RoleArn | None
    static: dict[str, _Static]
    cred_path: str | None
    imds_hosts: frozenset[str]
    ecs_hosts: frozenset[str]
    ecs_token: bytes = field(repr=False)
    listeners: list[str] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict, repr=False)  # verified token -> expiry
    servers: list[asyncio.Server] = field(default_factory=list)
    web_servers: list[web.Server] = field(default_factory=list)
    closed: bool = False


def _machine() -> str:
    m = platform.machine()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(m.lower(), m)


def _profile_id(role: RoleArn) -> str:
    digest = base64.b32encode(hashlib.sha256(role.arn.encode()).digest()).decode()
    return "AIPA" + digest[:17]


def render_static(identity: TaskIdentity, role: RoleArn | None, added_at: float) -> dict[str, _Static]:
    """Every allow-listed path but the credentials, pre-rendered for one task."""
    i = identity
    table: dict[str, _Static] = {}

    def put(paths: Iterable[str], cls: str, body: str | dict[str, Any], ctype: str = "text/plain") -> None:
        raw = json.dumps(body, indent=2).encode() if isinstance(body, dict) else body.encode()
        for p in paths:
            table[p] = _Static(cls, raw, ctype)

    put(("/latest", "/latest/"), "listing", "dynamic\nmeta-data")
    listing = ["hostname", "instance-id", "instance-type", "local-hostname", "local-ipv4", "mac", "placement/"]
    if role is not None:
        listing.insert(1, "iam/")
    if i.provenance:
        listing.append("titus/")
        # The task's own image provenance (docs/provenance.md): what it runs, from which build.
        put((META + "titus", META + "titus/"), "listing", "provenance")
        put((META + "titus/provenance",), "provenance", dict(i.provenance), "application/json")
    put((META[:-1], META), "listing", "\n".join(listing))
    put((META + "instance-id",), "meta", i.instance_id)
    put((META + "instance-type",), "meta", i.instance_type)
    put((META + "local-ipv4",), "meta", i.ipv4)
    put((META + "mac",), "meta", i.mac)
    put((META + "hostname", META + "local-hostname"), "meta", i.hostname)
    put((META + "placement", META + "placement/"), "listing", "availability-zone\nregion")
    put((META + "placement/availability-zone",), "meta", i.availability_zone)
    put((META + "placement/region",), "meta", i.region)
    if role is not None:
        put((META + "iam", META + "iam/"), "listing", "info\nsecurity-credentials/")
        info = {
            "Code": "Success",
            "LastUpdated": format_time(added_at),
            "InstanceProfileArn": f"arn:{role.partition}:iam::{role.account}:instance-profile{role.path}{role.name}",
            "InstanceProfileId": _profile_id(role),
        }
        put((META + "iam/info",), "iam_info", info)
        put((CREDS_PREFIX[:-1], CREDS_PREFIX), "cred_list", role.name)  # one line, no newline
    put(("/latest/dynamic", "/latest/dynamic/"), "listing", "instance-identity/")
    put(("/latest/dynamic/instance-identity", "/latest/dynamic/instance-identity/"), "listing", "document")
    document = {
        "accountId": i.account_id,
        "architecture": _machine(),
        "availabilityZone": i.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "instanceId": i.instance_id,
        "instanceType": i.instance_type,
        "kernelId": None,
        "pendingTime": format_time(added_at),
        "privateIp": i.ipv4,
        "ramdiskId": None,
        "region": i.region,
        "version": "2017-09-30",
    }
    put(("/latest/dynamic/instance-identity/document",), "identity_doc", document)
    return table


def _host_values(hosts: Iterable[str], ports: Iterable[int]) -> frozenset[str]:
    out: set[str] = set()
    ports = list(ports)
    for h in hosts:
        h = h.lower()
        out.add(h)
        out.add(f"{h}:80")
        out.update(f"{h}:{p}" for p in ports)
    return frozenset(out)


def _port(sock: socket.socket) -> int:
    try:
        return int(sock.getsockname()[1])
    except (OSError, IndexError, TypeError):
        return 80


class MetadataService:
    def __init__(
        self,
        credentials: CredentialBroker,
        token_key: bytes,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        imds_hosts: Sequence[str] = DEFAULT_IMDS_HOSTS,
        ecs_hosts: Sequence[str] = DEFAULT_ECS_HOSTS,
        keepalive_timeout: float = 75.0,
        client_error_interval: float = DEFAULT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        workload_jwt: WorkloadJwt | None = None,
    ) -> None:
        self._broker = credentials
        self._workload_jwt = workload_jwt
        self._signer = TokenSigner(token_key)
        self._clock = clock
        self.metrics = ImdsMetrics(registry if registry is not None else CollectorRegistry())
        credentials.attach_metrics(self.metrics)
        # Malformed HTTP from a task (oversized headers: LineTooLong, bad request lines, …): counted,
        # logged once per task per kind per interval, no traceback — a task cannot flood the host's log.
        self.client_errors = ClientErrorLog(
            log, interval=client_error_interval, clock=monotonic, count=self.metrics.client_error, what="task",
        )
        self._imds_hosts = tuple(imds_hosts)
        self._ecs_hosts = tuple(ecs_hosts)
        self._keepalive = keepalive_timeout
        self._tasks: dict[str, _Task] = {}

    # ---- lifecycle ----

    async def add_task(
        self,
        identity: TaskIdentity,
        imds_sockets: Sequence[socket.socket],
        ecs_sockets: Sequence[socket.socket] = (),
    ) -> None:
        """Serve `identity` on these bound, listening sockets and start fetching its credentials (not
        waited for). The sockets belong to the service from now on, also when this raises."""
        sockets = [*imds_sockets, *ecs_sockets]
        task: _Task | None = None
        broker_added = False
        try:
            tid = identity.task_id
            if not tid or not isinstance(tid, str):
                raise ValueError("task_id must be a non-empty string")
            if tid in self._tasks:
                raise ValueError(f"task {tid} is already served")
            if not sockets:
                raise ValueError(f"task {tid}: no sockets to serve on")
            if ecs_sockets and len(identity.ecs_token) < MIN_ECS_TOKEN_LEN:
                raise ValueError(f"task {tid}: the ECS endpoint needs an ecs_token of >= {MIN_ECS_TOKEN_LEN} chars")
            if any(c in identity.ecs_token for c in "\r\n"):
                raise ValueError(f"task {tid}: ecs_token must not contain line breaks")
            role = parse_role_arn(identity.role_arn) if identity.role_arn is not None else None
            added_at = self._clock()
            task = _Task(
                identity=identity,
                role=role,
                static=render_static(identity, role, added_at),
                cred_path=CREDS_PREFIX + role.name if role is not None else None,
                imds_hosts=_host_values(self._imds_hosts, map(_port, imds_sockets)),
                ecs_hosts=_host_values(self._ecs_hosts, map(_port, ecs_sockets)),
                ecs_token=identity.ecs_token.encode(),
            )
            if identity.role_arn is not None:
                self._broker.add(tid, identity.role_arn)
                broker_added = True
            loop = asyncio.get_running_loop()
            for kind, socks, handler in (
                (IMDS, imds_sockets, self._handle_imds),
                (ECS, ecs_sockets, self._handle_ecs),
            ):
                if not socks:
                    continue
                ws = web.Server(
                    functools.partial(handler, task), access_log=None, keepalive_timeout=self._keepalive,
                    logger=self.client_errors.http_logger(tid, task_id=tid, job_id=identity.job_id),
                )
                task.web_servers.append(ws)
                for sock in socks:
                    task.listeners.append(f"{kind}:{_describe(sock)}")
                    task.servers.append(await loop.create_server(ws, sock=sock))
            self._tasks[tid] = task
            self.metrics.tasks.set(len(self._tasks))
            log.info(
                "task %s (job %s): serving %s, role %s, imdsv1 %s",
                tid, identity.job_id, ", ".join(task.listeners), role.arn if role else None,
                "allowed" if identity.v1_allowed else "off",
            )
        except BaseException:
            if broker_added:
                self._broker.remove(identity.task_id)
            if task is not None:
                await self._stop(task)
            for sock in sockets:
                sock.close()
            raise

    async def remove_task(self, task_id: str) -> None:
        task = self._tasks.pop(task_id, None)
        self._broker.remove(task_id)
        self.client_errors.forget(task_id)
        if task is None:
            return
        self.metrics.tasks.set(len(self._tasks))
        await self._stop(task)
        log.info("task %s: metadata service stopped", task_id)

    async def _stop(self, task: _Task) -> None:
        task.closed = True
        for srv in task.servers:
            srv.close()  # closes the listening socket
        for ws in task.web_servers:
            ws.pre_shutdown()  # drop this task's open keep-alive connections now
            await ws.shutdown(0.5)
        for srv in task.servers:
            await srv.wait_closed()

    async def close(self) -> None:
        for tid in list(self._tasks):
            await self.remove_task(tid)
        await self._broker.close()

    def forget(self) -> None:
        """Drop every task without touching its servers: their loop is gone or stuck (ServiceThread's
        restart). Leaves the service as new, to run on another loop."""
        self._tasks.clear()
        self._broker.forget()
        self.metrics.tasks.set(0)

    def snapshot(self) -> dict[str, Any]:
        creds = self._broker.snapshot()
        out: dict[str, Any] = {}
        for tid, task in self._tasks.items():
            out[tid] = {
                "job_id": task.identity.job_id,
                "role_arn": task.role.arn if task.role else None,
                "v1_allowed": task.identity.v1_allowed,
                "listeners": list(task.listeners),
                "credentials": creds.get(tid),
            }
        return out

    # ---- request handling ----

    def _reply(self, endpoint: str, cls: str, status: int, body: bytes, ctype: str = "text/plain") -> web.Response:
        self.metrics.request(endpoint, cls, status)
        return web.Response(status=status, body=body, content_type=ctype)

    def _error(self, endpoint: str, cls: str, status: int) -> web.Response:
        return self._reply(endpoint, cls, status, _REASONS[status])

    async def _credentials(self, task: _Task, endpoint: str, cls: str) -> Credentials | web.Response:
        tid = task.identity.task_id
        creds = self._broker.peek(tid)
        if creds is None:
            try:
                creds = await self._broker.get(tid)
            except CredentialError as e:
                self.metrics.unavailable.labels(self.metrics.sts_code(e.code)).inc()
                return self._reply(endpoint, cls, e.status, e.body(), "application/json")
        if task.closed:
            return self._error(endpoint, cls, 404)
        now = self._clock()
        self.metrics.credential_age.observe(now - creds.issued_at)
        self.metrics.credential_remaining.observe(creds.expiration - now)
        return creds

    async def _handle_imds(self, task: _Task, request: web.BaseRequest) -> web.StreamResponse:
        h = request.headers
        host = h.get("Host")
        if host is None or host.lower() not in task.imds_hosts:
            return self._error(IMDS, "bad_host", 403)
        path = request.path
        method = request.method
        now = self._clock()
        tid = task.identity.task_id
        if path == TOKEN_PATH:
            if method != "PUT":
                return self._error(IMDS, "token", 405)
            if "X-Forwarded-For" in h:
                return self._error(IMDS, "token", 403)
            ttl = parse_ttl(h.get(TTL_HEADER))
            if ttl is None:
                return self._error(IMDS, "token", 400)
            token = self._signer.issue(tid, ttl, now)
            self.metrics.request(IMDS, "token", 200)
            return web.Response(body=token.encode(), content_type="text/plain", headers={TTL_HEADER: str(ttl)})
        if method != "GET":
            return self._error(IMDS, "method", 405)
        presented = h.get(TOKEN_HEADER)
        if presented is None:
            if not task.identity.v1_allowed:
                return self._error(IMDS, "no_token", 401)
        else:
            expiry = task.tokens.get(presented)
            if expiry is None or now >= expiry:
                if not self._signer.valid(tid, presented, now):
                    return self._error(IMDS, "bad_token", 401)
                if len(task.tokens) >= TOKEN_CACHE:
                    task.tokens.clear()
                task.tokens[presented] = float(presented.split(".")[1])
        if path == JWT_PATH:
            return self._jwt(task, request)
        entry = task.static.get(path)
        if entry is not None:
            return self._reply(IMDS, entry.path_class, 200, entry.body, entry.content_type)
        if path == task.cred_path:
            creds = await self._credentials(task, IMDS, "cred")
            if isinstance(creds, web.Response):
                return creds
            return self._reply(IMDS, "cred", 200, creds.imds_body)
        cls = "denied" if path.startswith(DENIED_PREFIXES) or path.startswith(META + "iam") else "unknown"
        return self._error(IMDS, cls, 404)

    def _jwt(self, task: _Task, request: web.BaseRequest) -> web.Response:
        audiences = request.query.getall("audience", [])
        if len(audiences) != 1 or not audiences[0]:
            return self._reply(IMDS, "jwt", 400, b"exactly one non-empty audience= is required")
        if self._workload_jwt is None:
            return self._error(IMDS, "jwt", 404)
        try:
            token = self._workload_jwt(task.identity.task_id, audiences[0])
        except ValueError as e:
            return self._reply(IMDS, "jwt", 400, str(e).encode())
        if token is None or task.closed:
            return self._error(IMDS, "jwt", 404)
        return self._reply(IMDS, "jwt", 200, token.encode(), "application/jwt")

    async def _handle_ecs(self, task: _Task, request: web.BaseRequest) -> web.StreamResponse:
        h = request.headers
        host = h.get("Host")
        if host is None or host.lower() not in task.ecs_hosts:
            return self._error(ECS, "bad_host", 403)
        if request.method != "GET":
            return self._error(ECS, "method", 405)
        auth = h.get("Authorization")
        if auth is None:
            return self._error(ECS, "no_token", 401)
        if not hmac.compare_digest(auth.encode("utf-8", "surrogateescape"), task.ecs_token):
            return self._error(ECS, "bad_token", 403)
        if request.path != ECS_PATH:
            return self._error(ECS, "unknown", 404)
        if task.role is None:
            err = CredentialError(404, "NoRole", "this task has no IAM role")
            return self._reply(ECS, "ecs_cred", 404, err.body(), "application/json")
        creds = await self._credentials(task, ECS, "ecs_cred")
        if isinstance(creds, web.Response):
            return creds
        return self._reply(ECS, "ecs_cred", 200, creds.ecs_body, "application/json")


_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
}


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return f"{host}:{name[1]}"
    return str(name)
