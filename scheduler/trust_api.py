"""The trust routes (docs/trust.md): node bootstrap (with, under --aws-imds-identity, the EC2
instance's attestation: scheduler/iid.py) and certificate rotation, and the admin's tokens,
revocation, re-admission and audit log. Authorization is the middleware's (scheduler/auth.py)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from scheduler.auth import AUTH_KEY, IDENTITY_KEY
from scheduler.authstore import ROLES, Token, TokenRefused
from scheduler.bootstrap_limit import retry_after
from scheduler.iid import IdentityRefused
from scheduler.tls import CA
from titus_common.protocol import ID_PATTERN

__all__ = ["CA_KEY", "add_trust_routes"]

CA_KEY = web.AppKey("ca", CA)
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
MAX_TTL = 30 * 86400.0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


CSR = Annotated[str, Field(min_length=1, max_length=16384, pattern=r"^-----BEGIN CERTIFICATE REQUEST-----")]


class InstanceIdentity(_Body):
    """The EC2 instance identity document exactly as IMDS served it, and its `/signature`."""
    document: Annotated[str, Field(min_length=2, max_length=8192)]
    signature: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9+/=\s]+$")]


class BootstrapRequest(_Body):
    token: Annotated[str, Field(min_length=1, max_length=256)]
    csr: CSR
    # Required when the scheduler runs with --aws-imds-identity (scheduler/iid.py); ignored otherwise.
    instance_identity: Annotated[InstanceIdentity | None, Field(alias="instanceIdentity")] = None


class RotateRequest(_Body):
    csr: CSR


class TokenRequest(_Body):
    kind: Annotated[str, Field(pattern="^(bootstrap|operator)$")]
    ttl_seconds: Annotated[float, Strict(), Field(gt=0, le=MAX_TTL, alias="ttlSeconds")] = 3600.0
    nodes: Annotated[str, Field(max_length=253)] = ""
    uses: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 1
    name: Annotated[str, Field(max_length=128, pattern=r"^$|" + ID_PATTERN[1:])] = ""
    role: Annotated[str, Field(pattern="^$|^(" + "|".join(ROLES) + ")$")] = ""
    owner: Annotated[str, Field(max_length=128)] = ""


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if field:
        body["problems"] = [{"field": field, "message": message}]
    return web.json_response({"error": body}, status=status)


async def _parse(request: web.Request, model: type[_Body]) -> Any:
    try:
        return model.model_validate(json.loads(await request.read()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise web.HTTPBadRequest(text=json.dumps({"error": {"message": f"malformed JSON: {e}"}}),
                                 content_type="application/json") from None
    except ValidationError as e:
        problems = [{"field": ".".join(map(str, err["loc"])), "message": err["msg"]} for err in e.errors(include_url=False)]
        raise web.HTTPBadRequest(text=json.dumps({"error": {"message": "invalid request", "problems": problems}}),
                                 content_type="application/json") from None


Refuse = Callable[[str, str], object]  # (reason, detail): counted (and, for bootstrap, logged)


def _issue(request: web.Request, csr: str, node_id: str | None, refuse: Refuse,
           bind: Callable[[str], Sequence[str] | web.Response] = lambda _: ()) -> tuple[str, dict[str, Any]] | web.Response:
    """Check the CSR and its CN (`node_id`'s when given), `bind` the CN (its SAN URIs, or a
    refusal), then sign."""
    auth, ca = request.app[AUTH_KEY], request.app[CA_KEY]
    try:
        cn, _ = ca.csr_node(csr.encode())
    except ValueError as e:
        refuse("bad_csr", str(e))
        return _error(400, f"csr: {e}", "csr")
    if not NODE_ID.match(cn) or (node_id is not None and cn != node_id):
        refuse("csr_subject", f"CN {cn!r}")
        return _error(403, f"csr: subject CN {cn!r} is not {'node ' + node_id if node_id else 'a valid node id'}", "csr")
    uris = bind(cn)
    if isinstance(uris, web.Response):
        return uris
    _, signed = ca.sign_csr(csr.encode(), auth.node_cert_ttl, uris)
    return cn, {"certificate": signed.pem.decode(), "serial": signed.serial, "notAfter": signed.not_after,
                "_serial": signed.serial}


def _attest(request: web.Request, proof: InstanceIdentity | None, node_id: str, refuse: Refuse) -> Sequence[str] | web.Response:
    """With --aws-imds-identity: the node id must be the verified instance's, the instance never
    bootstrapped before (or re-admitted since: then no age bound); the certificate names it."""
    auth = request.app[AUTH_KEY]
    verifier = auth.iid
    if verifier is None:
        return ()
    if proof is None:
        refuse("iid_missing", f"node {node_id}")
        return _error(401, "this cell admits only EC2 instances: send the instance identity document and its "
                           "signature (agent: --network-provider aws --aws-imds-identity)", "instanceIdentity")
    try:
        binding = verifier.verify(proof.document, proof.signature, node_id, time.time(), check_age=False)
        used = auth.store.instance_use(binding.instance_id)
        if used is not None and not used[1]:
            raise IdentityRefused("iid_replayed", f"instance {binding.instance_id} already bootstrapped (as node "
                                                  f"{used[0]}); an admin must re-admit it "
                                                  f"(titusctl admin node readmit {used[0]})")
        if used is None:  # a first bootstrap: the instance's start must be recent
            verifier.check_fresh(binding, time.time())
    except IdentityRefused as e:
        refuse(e.reason, e.message)
        return _error(409 if e.reason == "iid_replayed" else 403, e.message, "instanceIdentity")
    return (binding.arn,)


async def bootstrap(request: web.Request) -> web.Response:
    """A new node: one use of a bootstrap token + a CSR (its key stays on the host) → its certificate."""
    auth = request.app[AUTH_KEY]
    source = request.remote or "unknown"

    def refuse(reason: str, detail: str) -> None:
        auth.bootstrap_errors.report(source, reason, detail)

    limited = auth.bootstrap_limiter.admit(source)  # before any parsing or signature check
    if limited is not None:
        bucket, wait = limited
        refuse(f"bootstrap_rate_{bucket}", f"over the {bucket}'s bootstrap rate")
        response = _error(429, f"too many bootstraps from {'this address' if bucket == 'source' else 'the cell'}; "
                               f"retry in {retry_after(wait)} s")
        response.headers["Retry-After"] = retry_after(wait)
        return response
    req = await _parse(request, BootstrapRequest)

    def admit(node_id: str) -> Sequence[str] | web.Response:
        """The token, then no takeover, then the instance; nothing is spent unless all pass."""
        try:
            auth.store.use_bootstrap(req.token, node_id, spend=False)
        except TokenRefused as e:
            refuse("bootstrap_token", str(e))
            return _error(401, str(e), "token")
        if auth.store.live_certs(node_id):
            refuse("node_taken", f"node {node_id}")
            return _error(409, f"node {node_id} already has a live certificate; an admin must revoke it first "
                               f"(titusctl admin node revoke {node_id})")
        uris = _attest(request, req.instance_identity, node_id, refuse)
        if isinstance(uris, web.Response):
            return uris
        # No await since the checks above (nothing else ran in between): these cannot fail now.
        auth.store.use_bootstrap(req.token, node_id)
        for arn in uris:
            auth.store.bind_instance(arn.rsplit("/", 1)[1], node_id, arn)
        return uris

    issued = _issue(request, req.csr, None, refuse, admit)
    if isinstance(issued, web.Response):
        return issued
    node_id, doc = issued
    auth.store.record_cert(node_id, doc.pop("_serial"), doc["notAfter"])
    return web.json_response(doc, status=201)


async def rotate(request: web.Request) -> web.Response:
    """A node's new certificate, asked with its current one (the middleware checked it is this node's
    current, unrevoked certificate). The old one stays valid until it expires."""
    auth = request.app[AUTH_KEY]
    node_id = request.match_info["node_id"]
    req = await _parse(request, RotateRequest)

    def refuse(reason: str, _: str) -> None:
        auth.refused.labels(reason).inc()

    def keep_binding(cn: str) -> Sequence[str] | web.Response:
        """Nothing new is checked; the instance binding is kept. Under --aws-imds-identity a node
        bound to no instance (a certificate from before it was turned on) must bootstrap again."""
        arn = auth.store.instance_binding(cn)
        if arn is None and auth.iid is not None:
            refuse("iid_unbound", cn)
            return _error(403, f"node {cn} is bound to no EC2 instance and this cell admits only instances: "
                               "bootstrap again with the instance identity document")
        return (arn,) if arn is not None else ()

    issued = _issue(request, req.csr, node_id, refuse, keep_binding)
    if isinstance(issued, web.Response):
        return issued
    _, doc = issued
    auth.store.record_cert(node_id, doc.pop("_serial"), doc["notAfter"])
    return web.json_response(doc, status=201)


async def create_token(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    req = await _parse(request, TokenRequest)
    if req.kind == "bootstrap" and not req.nodes:
        return _error(400, "a bootstrap token needs `nodes` (a node-id pattern, e.g. 'i-*')", "nodes")
    if req.kind == "operator" and not (req.name and req.role):
        return _error(400, "an operator token needs `name` and `role`", "role")
    if req.role == "submitter" and not req.owner:
        return _error(400, "a submitter token needs `owner`", "owner")
    token = Token(id=uuid.uuid4().hex[:12], kind=req.kind, expires_at=time.time() + req.ttl_seconds, nodes=req.nodes,
                  uses_left=req.uses if req.kind == "bootstrap" else 0, name=req.name, role=req.role, owner=req.owner)
    secret = auth.store.create_token(token)
    who = request[IDENTITY_KEY]
    return web.json_response({"id": token.id, "token": secret, "kind": token.kind, "expiresAt": token.expires_at,
                              "createdBy": str(who)}, status=201)


async def revoke_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    serials = request.app[AUTH_KEY].store.revoke_node(node_id)
    return web.json_response({"node": node_id, "revoked": serials})


async def readmit_node(request: web.Request) -> web.Response:
    """Let the node's EC2 instance bootstrap once more, without the age bound (scheduler/iid.py)."""
    node_id = request.match_info["node_id"]
    instance = request.app[AUTH_KEY].store.readmit(node_id)
    if instance is None:
        return _error(404, f"node {node_id} is bound to no EC2 instance")
    return web.json_response({"node": node_id, "instanceId": instance, "readmitted": True})


async def audit_log(request: web.Request) -> web.Response:
    return web.json_response({"events": request.app[AUTH_KEY].store.audit_log()})


def add_trust_routes(app: web.Application) -> None:
    app.router.add_post("/v1/bootstrap", bootstrap)
    app.router.add_post("/v1/nodes/{node_id}/certificate", rotate)
    app.router.add_post("/v1/admin/tokens", create_token)
    app.router.add_post("/v1/admin/nodes/{node_id}/revoke", revoke_node)
    app.router.add_post("/v1/admin/nodes/{node_id}/readmit", readmit_node)
    app.router.add_get("/v1/admin/audit", audit_log)
