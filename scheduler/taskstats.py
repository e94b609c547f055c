"""`GET /v1/tasks/{id}/stats`: a running task's usage from its agent's view, relayed over the
agent-initiated channel (the scheduler never reaches into hosts). The request waits in the relay; the
node's long poll is woken and carries it (`SyncResponse.stats`); the agent reads the task's cgroup
and /proc (agent/taskstats.py) and posts the answer to `POST /v1/nodes/{id}/stats` with its node
certificate; the waiting API call returns it. No answer within `timeout` → 504.

Who may read: any operator role for any task, a submitter only its owner's tasks (scheduler/auth.py);
the document shows process command lines, which are the owner's business.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from titus_common.protocol import StatsReport, StatsReportRequest, StatsRequest
from titus_common.states import TaskState

__all__ = ["StatsRelay", "add_routes"]

MAX_PENDING_PER_NODE = 64


class StatsRelay:
    def __init__(self, wake: Callable[[str], None], timeout: float = 10.0) -> None:
        self.wake = wake
        self.timeout = timeout
        self._queued: dict[str, list[StatsRequest]] = {}  # node → requests not yet delivered
        self._waiting: dict[str, tuple[str, asyncio.Future[StatsReport]]] = {}  # request id → (node, answer)

    def take(self, node_id: str) -> list[StatsRequest]:
        """The requests for a node's sync answer (each delivered once)."""
        return self._queued.pop(node_id, [])

    def has_work(self, node_id: str) -> bool:
        return bool(self._queued.get(node_id))

    async def ask(self, node_id: str, task_id: str) -> StatsReport | None:
        """The agent's answer, or None when none came within the timeout."""
        queued = self._queued.setdefault(node_id, [])
        if len(queued) >= MAX_PENDING_PER_NODE:
            raise web.HTTPTooManyRequests(text="too many stats requests waiting for this host")
        request = StatsRequest(id=uuid.uuid4().hex, task_id=task_id)
        future: asyncio.Future[StatsReport] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (node_id, future)
        queued.append(request)
        self.wake(node_id)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(request.id, None)
            if request in self._queued.get(node_id, []):
                self._queued[node_id].remove(request)

    def answer(self, node_id: str, report: StatsReport) -> bool:
        """An agent's report; only the node the request was sent to may answer it."""
        waiting = self._waiting.get(report.id)
        if waiting is None or waiting[0] != node_id or waiting[1].done():
            return False
        waiting[1].set_result(report)
        return True


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def add_routes(app: web.Application, relay_of: Callable[[web.Request], tuple[Any, StatsRelay]]) -> None:
    """`relay_of(request)` → (the Scheduler, its relay); the scheduler is typed loosely to keep this
    module free of a cycle with scheduler.api."""

    async def task_stats(request: web.Request) -> web.Response:
        s, relay = relay_of(request)
        task_id = request.match_info["task_id"]
        task = s.task(task_id)  # NotFound → 404 (the API's error middleware)
        if task.state is not TaskState.STARTED or task.node_id is None:
            return _error(409, f"task {task_id} is {task.state.value}: stats are read from a running task")
        started = time.time()
        report = await relay.ask(task.node_id, task_id)
        if report is None:
            return _error(504, f"the agent of {task.node_id} did not answer within {relay.timeout:g}s")
        if report.stats is None:
            return _error(502, f"the agent could not read the task's usage: {report.error}")
        # The agent's document, then what the scheduler vouches for (an agent cannot restate those).
        return web.json_response({**report.stats, "taskId": task_id, "nodeId": task.node_id,
                                  "roundTripSeconds": round(time.time() - started, 3)})

    async def node_stats(request: web.Request) -> web.Response:
        _, relay = relay_of(request)
        try:
            body = StatsReportRequest.model_validate_json(await request.read())
        except ValueError as e:
            return _error(400, f"invalid stats report: {str(e).splitlines()[0]}")
        taken = [r.id for r in body.reports if relay.answer(request.match_info["node_id"], r)]
        return web.json_response({"accepted": taken})

    app.router.add_get("/v1/tasks/{task_id}/stats", task_stats)
    app.router.add_post("/v1/nodes/{node_id}/stats", node_stats)
