"""Exec sessions in the scheduler (docs/exec.md): who opened which session into which task, the orders
waiting for the task's agent to pick them up in its sync answer, and the pairing of the operator's
websocket with the agent's when the agent connects (GET /v1/nodes/<id>/exec/<session>).

The scheduler never dials the agent: an order stays in the node's sync answers (redelivered every
`redeliver_after` seconds) until the agent connects or the session times out. Nothing is persisted;
a scheduler restart ends every session (their websockets close with it)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from titus_common.protocol import ExecOrder

__all__ = ["ExecRelay", "ExecSession", "TooManySessions"]

MAX_SESSIONS = 256


class TooManySessions(Exception):
    pass


@dataclass
class ExecSession:
    id: str
    task_id: str
    job_id: str
    node_id: str
    who: str
    order: ExecOrder
    started_at: float
    # The agent's end of the relay, once it connected (the agent route's websocket).
    agent: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: float | None = None
    exit_code: int | None = None
    end: str = ""

    def audit_detail(self, now: float) -> dict[str, Any]:
        return {"session": self.id, "task": self.task_id, "job": self.job_id, "node": self.node_id,
                "command": self.order.command, "tty": self.order.tty, "startedAt": round(self.started_at, 3),
                "durationSeconds": round(now - self.started_at, 3), "exitCode": self.exit_code,
                "end": self.end or None}


class ExecRelay:
    def __init__(self, wake: Callable[[str], None], clock: Callable[[], float], redeliver_after: float = 3.0) -> None:
        self._wake = wake
        self._clock = clock
        self.redeliver_after = redeliver_after
        self.sessions: dict[str, ExecSession] = {}

    def open(self, *, task_id: str, job_id: str, node_id: str, who: str, command: list[str], tty: bool,
             stdin: bool, rows: int = 0, cols: int = 0) -> ExecSession:
        if len(self.sessions) >= MAX_SESSIONS:
            raise TooManySessions(f"{MAX_SESSIONS} exec sessions are open; try again later")
        session_id = secrets.token_urlsafe(18)
        order = ExecOrder(session_id=session_id, task_id=task_id, command=command, tty=tty, stdin=stdin,
                          rows=rows, cols=cols)
        session = ExecSession(session_id, task_id, job_id, node_id, who, order, self._clock())
        self.sessions[session_id] = session
        self._wake(node_id)
        return session

    def orders_for(self, node_id: str) -> list[ExecOrder]:
        """Orders the node's agent has not connected for, not sent in the last `redeliver_after` s."""
        now = self._clock()
        out = []
        for s in self.sessions.values():
            if s.node_id != node_id or s.agent.done() or s.done.is_set():
                continue
            if s.sent_at is None or now - s.sent_at >= self.redeliver_after:
                s.sent_at = now
                out.append(s.order)
        return out[:64]

    def attach(self, session_id: str, node_id: str, ws: Any) -> ExecSession | None:
        """The agent connected for a session: pair it (None: unknown, another node's, or taken)."""
        s = self.sessions.get(session_id)
        if s is None or s.node_id != node_id or s.agent.done() or s.done.is_set():
            return None
        s.agent.set_result(ws)
        return s

    def close(self, session: ExecSession, end: str, exit_code: int | None = None) -> None:
        if not session.end:
            session.end = end
        if exit_code is not None:
            session.exit_code = exit_code
        session.done.set()
        if not session.agent.done():
            session.agent.cancel()
        self.sessions.pop(session.id, None)

    def for_task(self, task_id: str) -> list[ExecSession]:
        return [s for s in self.sessions.values() if s.task_id == task_id]
