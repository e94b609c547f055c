"""Owners' exec sessions on the agent (docs/exec.md). The scheduler names a pending session in the
agent's sync answer (`execOrders`); the agent opens the session's websocket itself (the scheduler
never dials the host), checks that it holds the task and that the task runs, then runs the command
through the engine's exec (agent/docker_exec.py: the container's user, capabilities, seccomp,
AppArmor, cgroup and namespaces; never privileged) and relays its stdio.

A session ends when the command exits (its exit code is the last frame), when the scheduler or the
operator closes it (the command is then killed, by its host PID, if still running), or when the
task ends: the task's kill closes its sessions, and the container's end kills every process in its
PID namespace anyway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable

import aiohttp

from agent.docker_api import DockerError, DockerUnavailable
from agent.docker_exec import EngineExec, ExecStream
from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from titus_common.protocol import ExecOrder

__all__ = ["ExecSessions"]

log = logging.getLogger("titus.agent.exec")
SEEN_KEEP = 1024


class ExecSessions:
    def __init__(self, engine: EngineExec, client: SchedulerClient,
                 running_container: Callable[[str], str | None]) -> None:
        """`running_container(task_id)`: the container of a task this agent holds in Started, else None."""
        self.engine = engine
        self.client = client
        self.running_container = running_container
        self._active: dict[str, tuple[str, asyncio.Task[None]]] = {}  # session → (task, its coroutine)
        self._seen: dict[str, None] = {}  # sessions already taken (orders are redelivered until connected)

    def open(self, order: ExecOrder) -> None:
        if order.session_id in self._seen:
            return
        self._seen[order.session_id] = None
        while len(self._seen) > SEEN_KEEP:
            self._seen.pop(next(iter(self._seen)))
        task = asyncio.create_task(self._run(order), name=f"exec-{order.session_id[:8]}")
        self._active[order.session_id] = (order.task_id, task)
        task.add_done_callback(lambda _: self._active.pop(order.session_id, None))

    def close_task(self, task_id: str) -> None:
        """The task is ending: its sessions end now."""
        for sid, (tid, task) in list(self._active.items()):
            if tid == task_id:
                log.info("exec session %s closed: task %s is ending", sid, task_id)
                task.cancel()

    async def stop(self) -> None:
        tasks = [t for _, t in self._active.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.engine.close()

    async def _run(self, order: ExecOrder) -> None:
        try:
            ws = await self.client.exec_channel(order.session_id)
        except SchedulerUnavailable as e:
            log.warning("exec session %s: cannot connect to the scheduler: %s", order.session_id, e)
            return
        try:
            await self._serve(order, ws)
        finally:
            await ws.close()

    async def _serve(self, order: ExecOrder, ws: aiohttp.ClientWebSocketResponse) -> None:
        extra = {"task_id": order.task_id}
        container = self.running_container(order.task_id)
        if container is None:
            await ws.send_str(json.dumps({"error": f"task {order.task_id} is not running on this host"}))
            return
        try:
            exec_id = await self.engine.create(container, order.command, tty=order.tty, stdin=order.stdin)
            stream = await self.engine.start(exec_id, order.tty)
        except (DockerError, DockerUnavailable) as e:
            log.warning("exec session %s: the engine refused: %s", order.session_id, e, extra=extra)
            await ws.send_str(json.dumps({"error": f"exec failed: {e}"}))
            return
        log.info("exec session %s: %s", order.session_id, " ".join(order.command)[:200], extra=extra)
        if order.tty:
            await self._resize(exec_id, order.rows, order.cols)
        pump_out = asyncio.create_task(self._stdout(ws, stream))
        pump_in = asyncio.create_task(self._stdin(ws, stream, exec_id))
        try:
            await asyncio.wait((pump_out, pump_in), return_when=asyncio.FIRST_COMPLETED)
            if pump_out.done() and pump_out.exception() is None:  # the command's output ended: it exited
                code = await self.engine.exit_code(exec_id)
                await ws.send_str(json.dumps({"exit": code if code is not None else -1}))
            else:  # the session was closed (scheduler, operator, task ending) with the command running
                await self._kill(exec_id, order.session_id)
        finally:
            for t in (pump_in, pump_out):
                t.cancel()
            for t in (pump_in, pump_out):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            stream.close()
            if not pump_out.done() or pump_out.cancelled():
                await self._kill(exec_id, order.session_id)

    @staticmethod
    async def _stdout(ws: aiohttp.ClientWebSocketResponse, stream: ExecStream) -> None:
        while True:
            kind, data = await stream.read()
            if not data:
                return
            await ws.send_bytes(bytes((kind if kind in (1, 2) else 1,)) + data)

    async def _stdin(self, ws: aiohttp.ClientWebSocketResponse, stream: ExecStream, exec_id: str) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                await stream.write(msg.data)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    doc = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(doc, dict):
                    continue
                if doc.get("eof"):
                    stream.close_stdin()
                size = doc.get("resize")
                if isinstance(size, dict):
                    await self._resize(exec_id, size.get("rows"), size.get("cols"))

    async def _resize(self, exec_id: str, rows: object, cols: object) -> None:
        if isinstance(rows, int) and isinstance(cols, int) and 0 < rows <= 1000 and 0 < cols <= 1000:
            with contextlib.suppress(DockerError, DockerUnavailable):
                await self.engine.resize(exec_id, rows, cols)

    async def _kill(self, exec_id: str, session_id: str) -> None:
        """The session ended before its command: kill the command (the engine has no exec kill)."""
        try:
            doc = await self.engine.inspect(exec_id)
        except (DockerError, DockerUnavailable):
            return
        pid = doc.get("Pid")
        if doc.get("Running") and isinstance(pid, int) and pid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                log.info("exec session %s ended before its command: killed host pid %d", session_id, pid)
