"""The exec routes (docs/exec.md): an owner's websocket into a running task, relayed through the
scheduler to the task's agent over the agent's own outbound connection.

- `GET /v1/tasks/{task_id}/exec?cmd=…&cmd=…&tty=0|1&stdin=0|1&rows=&cols=` (websocket): who may is
  the auth middleware's (`scheduler/auth.py` authorize_exec); refused here, before the upgrade, with
  404 (no task), 409 (task not running, host cordoned/draining), 503 (host not Ready), 400 (bad command).
- `GET /v1/nodes/{node_id}/exec/{session}` (websocket): the agent's end, opened by the agent after its
  sync answer named the session (only that node's certificate may).

Frames, relayed verbatim: client → agent binary = stdin, text `{"resize": {"rows": r, "cols": c}}` or
`{"eof": true}`; agent → client binary = one stream byte (1 stdout, 2 stderr) + data, text
`{"exit": code}` (last) or `{"error": "…"}`. Every session is audited twice in the trust store's audit
log: when it opens and when it ends (who, task, command, start, duration, exit code, how it ended)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from scheduler.auth import AUTH_KEY, IDENTITY_KEY
from scheduler.core import Scheduler
from scheduler.exec_relay import ExecSession, TooManySessions
from scheduler.records import NodeStatus
from titus_common.protocol import MAX_EXEC_ARGS, MAX_EXEC_BYTES
from titus_common.states import TaskState

__all__ = ["add_exec_routes"]

log = logging.getLogger("titus.scheduler.exec")
EXEC_SCHEDULER_KEY = web.AppKey("exec_scheduler", Scheduler)
CONNECT_TIMEOUT = 10.0  # for the agent to pick the session up and connect
WATCH_EVERY = 0.25  # how often a session checks that its task still runs
# How a session ended → the status its closing audit event carries.
END_STATUS = {"exited": 200, "client closed": 499, "task ended": 410, "agent closed": 502,
              "agent did not connect": 504, "scheduler stopping": 503}


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise _Refusal(400, f"{name}: expected 0 or 1, got {value[:20]!r}")
    return value in ("1", "true")


def _size(request: web.Request, name: str) -> int:
    value = request.query.get(name, "0")
    if not value.isdigit() or int(value) > 1000:
        raise _Refusal(400, f"{name}: expected an integer 0..1000, got {value[:20]!r}")
    return int(value)


def _command(request: web.Request) -> list[str]:
    cmd = request.query.getall("cmd", [])
    if not cmd:
        raise _Refusal(400, "cmd: give the command, one `cmd` parameter per argument")
    if len(cmd) > MAX_EXEC_ARGS or sum(len(a) for a in cmd) > MAX_EXEC_BYTES:
        raise _Refusal(400, f"cmd: at most {MAX_EXEC_ARGS} arguments and {MAX_EXEC_BYTES} bytes")
    if any("\x00" in a for a in cmd) or not cmd[0]:
        raise _Refusal(400, "cmd: arguments may not contain NUL, and the program may not be empty")
    return list(cmd)


def _check_task(s: Scheduler, task_id: str) -> tuple[str, str]:
    """(job id, node id) of a task one may exec into now."""
    task = s.tasks.get(task_id)
    if task is None:
        raise _Refusal(404, f"no task {task_id!r}")
    if task.state is not TaskState.STARTED or task.kill_requested or task.node_id is None:
        what = "being killed" if task.kill_requested and not task.state.terminal else task.state.value
        raise _Refusal(409, f"task {task_id} is {what}: exec needs a running (Started) task")
    node = s.nodes.get(task.node_id)
    if node is None:
        raise _Refusal(409, f"task {task_id}'s host {task.node_id} is unknown")
    if node.cordoned:
        raise _Refusal(409, f"host {node.id} is cordoned or draining ({node.cordon_reason or 'no reason given'}): "
                            "no new exec sessions on it")
    if node.status is not NodeStatus.READY:
        raise _Refusal(503, f"host {node.id} is {node.status.value}: its agent cannot take an exec session now")
    return task.job_id, task.node_id


def _audit(request: web.Request, session: ExecSession, status: int, now: float | None = None) -> None:
    """The session's opening (now None) or closing event in the trust store's audit log."""
    auth = request.app.get(AUTH_KEY)
    detail = session.audit_detail(session.started_at if now is None else now)
    if now is None:
        for key in ("durationSeconds", "exitCode", "end"):
            detail.pop(key)
    log.info("exec %s %s: %s", "opened" if now is None else "ended", session.id, json.dumps(detail))
    if auth is not None:
        auth.store.audit(session.who, "EXEC" if now is None else "EXEC-END", request.path, status, detail=detail)
        auth.audited.labels("operator", "ok" if status < 400 else "refused").inc()


async def task_exec(request: web.Request) -> web.StreamResponse:
    s = request.app[EXEC_SCHEDULER_KEY]
    task_id = request.match_info["task_id"]
    try:
        job_id, node_id = _check_task(s, task_id)
        command, tty, stdin = _command(request), _flag(request, "tty"), _flag(request, "stdin")
        rows, cols = _size(request, "rows"), _size(request, "cols")
    except _Refusal as e:
        return _error(e.status, str(e))
    client = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    if not client.can_prepare(request).ok:
        return _error(400, "exec is a websocket: connect with `titusctl task exec` (or a websocket client)")
    try:
        session = s.execs.open(task_id=task_id, job_id=job_id, node_id=node_id,
                               who=str(request.get(IDENTITY_KEY, "anonymous")), command=command, tty=tty,
                               stdin=stdin, rows=rows, cols=cols)
    except TooManySessions as e:
        return _error(503, str(e))
    await client.prepare(request)
    _audit(request, session, 101)
    agent: web.WebSocketResponse | None = None
    end = "agent did not connect"
    try:
        try:
            agent_ws: web.WebSocketResponse = await asyncio.wait_for(session.agent, CONNECT_TIMEOUT)
            agent = agent_ws
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ConnectionError):
                await client.send_str(json.dumps({"error": f"the agent of host {node_id} did not take the session "
                                                           f"within {CONNECT_TIMEOUT:.0f}s"}))
        else:
            end = await _relay(s, session, client, agent_ws)
    except asyncio.CancelledError:
        end = "scheduler stopping"
        raise
    finally:
        if agent is not None:
            await agent.close()
        s.execs.close(session, end)
        await client.close()
        _audit(request, session, END_STATUS.get(session.end, 500), now=s.clock())
    return client


async def _relay(s: Scheduler, session: ExecSession, client: web.WebSocketResponse,
                 agent: web.WebSocketResponse) -> str:
    async def up() -> str:
        async for msg in client:
            if msg.type is WSMsgType.BINARY:
                await agent.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await agent.send_str(msg.data)
        return "client closed"

    async def down() -> str:
        async for msg in agent:
            if msg.type is WSMsgType.BINARY:
                await client.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    code = json.loads(msg.data).get("exit")
                    if isinstance(code, int) and not isinstance(code, bool):
                        session.exit_code = code
                await client.send_str(msg.data)
        return "exited" if session.exit_code is not None else "agent closed"

    async def watch() -> str:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            task = s.tasks.get(session.task_id)
            if task is None or task.state is not TaskState.STARTED or task.kill_requested:
                await asyncio.sleep(WATCH_EVERY)  # the agent's exit frame, if the command ended with the task
                if session.exit_code is None:
                    with contextlib.suppress(ConnectionError):
                        await client.send_str(json.dumps({"error": f"task {session.task_id} ended: session closed"}))
                return "task ended"

    parts = [asyncio.create_task(f()) for f in (up, down, watch)]
    try:
        done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        if first is parts[0] and not agent.closed:
            # The client went away (or half-closed): give the agent a moment to send the exit code.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(parts[1]), 1.0)
        if parts[1].done() and not parts[1].cancelled() and parts[1].exception() is None:
            return parts[1].result()
        return first.result() if first.exception() is None else "agent closed"
    finally:
        for p in parts:
            p.cancel()
        for p in parts:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await p


async def node_exec(request: web.Request) -> web.StreamResponse:
    """The agent's end: paired with the operator's websocket, which does the relaying."""
    s = request.app[EXEC_SCHEDULER_KEY]
    node_id, session_id = request.match_info["node_id"], request.match_info["session_id"]
    session = s.execs.sessions.get(session_id)
    if session is None or session.node_id != node_id:
        return _error(404, f"no open exec session {session_id[:64]!r} for node {node_id[:64]}")
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        return _error(400, "the agent's end of an exec session is a websocket")
    await ws.prepare(request)
    if s.execs.attach(session_id, node_id, ws) is None:
        await ws.close(message=b"session taken or closed")
        return ws
    await session.done.wait()
    return ws


def add_exec_routes(app: web.Application, scheduler: Scheduler) -> None:
    app[EXEC_SCHEDULER_KEY] = scheduler
    app.router.add_get("/v1/tasks/{task_id}/exec", task_exec)
    app.router.add_get("/v1/nodes/{node_id}/exec/{session_id}", node_exec)
