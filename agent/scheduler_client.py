"""The agent's calls to the scheduler (always agent-initiated)."""

from __future__ import annotations

from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from titus_common.protocol import (
    NodeReport,
    SyncRequest,
    SyncResponse,
    TaskUpdate,
    UpdatesRequest,
    UpdatesResponse,
)

M = TypeVar("M", bound=BaseModel)


class SchedulerUnavailable(RuntimeError):
    pass


class SchedulerClient:
    def __init__(self, base_url: str, node_id: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.node_id = node_id
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        return self._session

    async def _post(self, path: str, body: dict[str, Any], model: type[M], timeout: float) -> M:
        url = f"{self.base_url}/v1/nodes/{self.node_id}/{path}"
        try:
            async with self._http().post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                text = await r.text()
                if r.status != 200:
                    raise SchedulerUnavailable(f"{path}: HTTP {r.status}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SchedulerUnavailable(f"{path}: {e!r}") from None
        try:
            return model.model_validate_json(text)
        except ValidationError as e:
            # A scheduler answer we cannot read is not acted on at all.
            raise SchedulerUnavailable(f"{path}: unreadable answer: {e.errors()[0]['msg']}") from None

    async def sync(self, report: NodeReport, wait_seconds: float) -> SyncResponse:
        req = SyncRequest(node=report, wait_seconds=wait_seconds)
        return await self._post(
            "sync", req.model_dump(mode="json", by_alias=True), SyncResponse, timeout=wait_seconds + 15
        )

    async def updates(self, updates: list[TaskUpdate]) -> UpdatesResponse:
        req = UpdatesRequest(updates=updates)
        return await self._post("updates", req.model_dump(mode="json", by_alias=True), UpdatesResponse, 30)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
