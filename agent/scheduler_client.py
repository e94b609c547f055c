"""The agent's calls to the scheduler (always agent-initiated). Over https, with the node's
credentials (agent/node_credentials.py): bootstrap when it has no valid certificate, rotation
before expiry, both before the call that needs them."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from agent.node_credentials import NodeCredentials
from titus_common.errors import TitusError
from titus_common.protocol import (
    MAX_WAIT_SECONDS,
    NodeReport,
    SyncRequest,
    SyncResponse,
    StatsReport,
    StatsReportRequest,
    TaskUpdate,
    UpdatesRequest,
    UpdatesResponse,
)

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("titus.agent.scheduler_client")


class SchedulerUnavailable(RuntimeError):
    pass


class _Issued(BaseModel):
    certificate: str


class _TaskIssued(BaseModel):
    certificate: str
    bundle: str


class SchedulerClient:
    def __init__(self, base_url: str, node_id: str, credentials: NodeCredentials | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.node_id = node_id
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], aiohttp.ClientSession] = {}
        # How far this host's clock is ahead of the scheduler's, from the last answer's HTTP Date
        # (whole seconds: ±0.5 s plus the network's latency); None until one is seen. The clock check.
        self.skew: float | None = None
        # Exec sessions' websockets (docs/exec.md), on their own session: a long interactive session
        # never holds one of the sync's connections. A rotation starts a new one; old ones (and
        # their open sessions) are closed only at close().
        self._ws: aiohttp.ClientSession | None = None
        self._old_ws: list[aiohttp.ClientSession] = []

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_context = self.credentials.context() if self.credentials is not None else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=8, ssl=ssl_context if ssl_context is not None else True)
            )
        return self._session

    def _renew_session(self) -> None:
        """New connections with the new certificate; the old session finishes its in-flight calls."""
        old, self._session = self._session, None
        if self._ws is not None:
            self._old_ws.append(self._ws)
            self._ws = None
        if old is not None:
            task = asyncio.create_task(self._close_later(old))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))

    @staticmethod
    async def _close_later(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(MAX_WAIT_SECONDS + 15)
        await session.close()

    async def _credentials(self) -> None:
        creds = self.credentials
        if creds is None or creds.current():
            return  # the common case: no lock, no file read
        async with self._lock:
            if not creds.valid():
                try:
                    token = creds.bootstrap_token()
                except RuntimeError as e:
                    raise SchedulerUnavailable(f"bootstrap: {e}") from None
                body: dict[str, Any] = {"token": token}
                if creds.instance_proof is not None:
                    try:
                        body["instanceIdentity"] = await asyncio.to_thread(creds.instance_proof)
                    except TitusError as e:
                        raise SchedulerUnavailable(f"bootstrap: {e}") from None
                key, csr = creds.new_request()
                body["csr"] = csr.decode()
                self._renew_session()  # no client certificate: the token is the credential
                issued = await self._call("/v1/bootstrap", body, _Issued, 30, 201)
                creds.install(key, issued.certificate, rotated=False)
                self._renew_session()
            elif creds.should_rotate():
                key, csr = creds.new_request()
                try:
                    issued = await self._call(f"/v1/nodes/{self.node_id}/certificate", {"csr": csr.decode()},
                                              _Issued, 30, 201)
                except SchedulerUnavailable as e:
                    log.warning("certificate rotation failed, retried at the next call: %s", e)
                    return
                creds.install(key, issued.certificate, rotated=True)
                self._renew_session()

    async def _call(self, path: str, body: dict[str, Any], model: type[M], timeout: float, ok: int = 200) -> M:
        url = f"{self.base_url}{path}"
        try:
            async with self._http().post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                text = await r.text()
                self._note_date(r.headers.get("Date"), time.time())
                if r.status != ok:
                    raise SchedulerUnavailable(f"{path}: HTTP {r.status}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SchedulerUnavailable(f"{path}: {e!r}") from None
        try:
            return model.model_validate_json(text)
        except ValidationError as e:
            # A scheduler answer we cannot read is not acted on at all.
            raise SchedulerUnavailable(f"{path}: unreadable answer: {e.errors()[0]['msg']}") from None

    def _note_date(self, header: str | None, received: float) -> None:
        if not header:
            return
        try:
            sent = email.utils.parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            return
        self.skew = received - (sent + 0.5)  # Date truncates to the second: the middle of it

    async def _post(self, path: str, body: dict[str, Any], model: type[M], timeout: float) -> M:
        await self._credentials()
        return await self._call(f"/v1/nodes/{self.node_id}/{path}", body, model, timeout)

    async def sync(self, report: NodeReport, wait_seconds: float) -> SyncResponse:
        req = SyncRequest(node=report, wait_seconds=wait_seconds)
        return await self._post(
            "sync", req.model_dump(mode="json", by_alias=True), SyncResponse, timeout=wait_seconds + 15
        )

    async def updates(self, updates: list[TaskUpdate]) -> UpdatesResponse:
        doc = UpdatesRequest(updates=updates).model_dump(mode="json", by_alias=True)
        for u in doc["updates"]:
            if u["logTail"] is None:
                del u["logTail"]  # a scheduler older than log tails refuses a field it does not know
        return await self._post("updates", doc, UpdatesResponse, 30)

    async def stats(self, reports: list[StatsReport]) -> UpdatesResponse:
        """Answers to `SyncResponse.stats` (`titusctl task stats`); `accepted`: the request ids taken."""
        req = StatsReportRequest(reports=reports)
        return await self._post("stats", req.model_dump(mode="json", by_alias=True), UpdatesResponse, 15)

    async def task_identity(self, task_id: str, csr: str) -> tuple[str, str]:
        """A task's identity certificate and the CA bundle, for a CSR of a key kept on this host
        (docs/identity.md); SchedulerUnavailable when refused or unreachable."""
        await self._credentials()
        issued = await self._call(f"/v1/nodes/{self.node_id}/tasks/{task_id}/identity", {"csr": csr}, _TaskIssued,
                                  30, 201)
        return issued.certificate, issued.bundle

    async def exec_channel(self, session_id: str) -> aiohttp.ClientWebSocketResponse:
        """The agent's end of an exec session: a websocket to the scheduler, with the node's certificate."""
        await self._credentials()
        if self._ws is None:
            ssl_context = self.credentials.context() if self.credentials is not None else None
            self._ws = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context if ssl_context is not None else True)
            )
        url = f"{self.base_url}/v1/nodes/{self.node_id}/exec/{session_id}"
        try:
            return await self._ws.ws_connect(url, heartbeat=30.0, max_msg_size=1 << 20,
                                             timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SchedulerUnavailable(f"exec session {session_id}: {e!r}") from None

    async def close(self) -> None:
        for ws_session in [*self._old_ws, *([self._ws] if self._ws is not None else [])]:
            await ws_session.close()
        for task, session in list(self._retiring.items()):
            task.cancel()
            await session.close()
        if self._session is not None:
            await self._session.close()
