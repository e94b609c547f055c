"""The engine's exec API for owners' exec sessions (docs/exec.md), async over the engine's unix
socket: create, start (the hijacked stream), resize, inspect. Kept beside `docker_api.Docker` (the
SDK's door for everything else) because an exec stream is a long-lived, bidirectional raw socket
the SDK only offers as a blocking one, and because an exec is latency-bound (no thread hop).

What an exec gets is the engine's: the container's user (no `User` given), its capability sets,
seccomp filter, AppArmor profile, no-new-privileges, cgroup and namespaces, and `Privileged` is
always false, so an exec'd process never has more than the task's own (tests/integration/test_exec.py
compares /proc/self/status with the task's PID 1)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from agent.docker_api import DockerError, DockerUnavailable

__all__ = ["EngineExec", "ExecStream"]

DEFAULT_SOCKET = "/var/run/docker.sock"


def socket_path(base_url: str | None) -> str:
    if not base_url:
        return DEFAULT_SOCKET
    for prefix in ("unix://", "http+unix://"):
        if base_url.startswith(prefix):
            return base_url[len(prefix):]
    raise DockerUnavailable(f"exec needs the engine on a unix socket, not {base_url}")


class ExecStream:
    """The hijacked connection of a started exec: `read` gives (stream, data) — 1 stdout, 2 stderr;
    with a TTY everything is stdout — and (0, b"") at the end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tty: bool) -> None:
        self.reader, self.writer, self.tty = reader, writer, tty

    async def read(self) -> tuple[int, bytes]:
        if self.tty:
            data = await self.reader.read(65536)
            return (1, data) if data else (0, b"")
        try:
            header = await self.reader.readexactly(8)
            return header[0], await self.reader.readexactly(int.from_bytes(header[4:8], "big"))
        except asyncio.IncompleteReadError:
            return 0, b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close_stdin(self) -> None:
        if self.writer.can_write_eof():
            self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


class EngineExec:
    def __init__(self, base_url: str | None, api_version: str = "1.41") -> None:
        self.base_url = base_url
        self.version = api_version
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path(self.base_url)))
        return self._session

    async def _request(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        url = f"http://docker/v{self.version}{path}"
        try:
            async with self._http().request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=30)) as r:
                text = await r.text()
                if r.status not in ok:
                    message = text
                    try:
                        message = str(json.loads(text).get("message", text))
                    except (ValueError, AttributeError):
                        pass
                    raise DockerError(r.status, message.strip())
                return json.loads(text) if text.strip() else None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise DockerUnavailable(f"Docker engine unreachable: {e!r}") from None

    async def create(self, container_id: str, command: list[str], *, tty: bool, stdin: bool) -> str:
        """An exec in the container as the container's own user, never privileged."""
        doc = await self._request("POST", f"/containers/{container_id}/exec", {
            "AttachStdin": stdin, "AttachStdout": True, "AttachStderr": True, "Tty": tty, "Cmd": command,
            "Privileged": False,
        }, ok=(201,))
        return str(doc["Id"])

    async def start(self, exec_id: str, tty: bool) -> ExecStream:
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path(self.base_url), limit=1 << 20)
        except OSError as e:
            raise DockerUnavailable(f"Docker engine unreachable: {e}") from None
        body = json.dumps({"Detach": False, "Tty": tty}).encode()
        writer.write(
            f"POST /v{self.version}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            writer.close()
            raise DockerUnavailable(f"exec start: the engine closed the connection ({e!r})") from None
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status not in (101, 200):
            rest = await reader.read(4096)
            writer.close()
            raise DockerError(status or None, f"exec start: {status_line}: {rest.decode(errors='replace')[:300]}")
        return ExecStream(reader, writer, tty)

    async def resize(self, exec_id: str, rows: int, cols: int) -> None:
        if rows > 0 and cols > 0:
            await self._request("POST", f"/exec/{exec_id}/resize?h={rows}&w={cols}", ok=(200, 201))

    async def inspect(self, exec_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/exec/{exec_id}/json"))

    async def exit_code(self, exec_id: str, wait: float = 2.0) -> int | None:
        """The exec's exit code once the engine recorded it (the stream can end a moment before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.002
        while True:
            doc = await self.inspect(exec_id)
            if not doc.get("Running") and doc.get("ExitCode") is not None:
                return int(doc["ExitCode"])
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
