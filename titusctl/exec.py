"""`titusctl task exec TASK [-i] [-t] -- CMD…` (docs/exec.md): a command inside one of your tasks'
containers — never on the host — through the scheduler, which relays to the task's agent.

The exit code is the command's. A refusal before the command ran (no grant, no such task, the task
not running, its host cordoned or draining) exits 1 with the scheduler's message, like every
titusctl refusal; an unreachable scheduler exits 3."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Callable
from urllib.parse import quote, urlencode

import aiohttp

from titusctl.client import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Api, CliError, Credentials

__all__ = ["ExecClient", "add_verb", "cmd_task_exec"]

Output = Callable[[int, bytes], None]


class ExecClient:
    """One exec session per `run`; `session` may be shared between runs (bench/exec.py does)."""

    def __init__(self, base_url: str, credentials: Credentials) -> None:
        self.base = base_url.rstrip("/")
        self.credentials = credentials
        self.headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        self.ssl: ssl.SSLContext | bool = True
        if self.base.startswith("https://"):
            ctx = ssl.create_default_context(cafile=str(credentials.ca) if credentials.ca else None)
            if credentials.cert is not None and credentials.key is not None:
                ctx.load_cert_chain(str(credentials.cert), str(credentials.key))
            self.ssl = ctx

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl, limit=0), headers=self.headers)

    def url(self, task_id: str, command: list[str], *, tty: bool, stdin: bool, rows: int = 0, cols: int = 0) -> str:
        query = urlencode([("cmd", a) for a in command] + [("tty", int(tty)), ("stdin", int(stdin)),
                                                           ("rows", rows), ("cols", cols)])
        return f"{self.base}/v1/tasks/{quote(task_id, safe='')}/exec?{query}"

    async def _refusal(self, http: aiohttp.ClientSession, url: str, status: int) -> CliError:
        """The scheduler refuses before any upgrade: ask the same URL plainly for its message."""
        message = f"HTTP {status}"
        with contextlib.suppress(aiohttp.ClientError, ValueError, TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                message = (await r.json()).get("error", {}).get("message", message)
        hint = "\n  (authenticate with --cert/--key or --token-file; TITUS_CERT/TITUS_KEY, TITUS_TOKEN)" \
            if status == 401 else ""
        return CliError(f"error: {message}{hint}", EXIT_REFUSED)

    async def run(self, http: aiohttp.ClientSession, task_id: str, command: list[str], *, tty: bool = False,
                  stdin: bool = False, out: Output | None = None, stdin_fd: int | None = None) -> int:
        rows, cols = _size() if tty else (0, 0)
        url = self.url(task_id, command, tty=tty, stdin=stdin, rows=rows, cols=cols)
        try:
            ws = await http.ws_connect(url, heartbeat=30.0, max_msg_size=1 << 20)
        except aiohttp.WSServerHandshakeError as e:
            raise await self._refusal(http, url, e.status) from None
        except aiohttp.ClientSSLError as e:
            raise CliError(f"TLS with the scheduler at {self.base} failed: {e}", EXIT_UNREACHABLE) from None
        except (aiohttp.ClientError, OSError) as e:
            raise CliError(f"cannot reach the scheduler at {self.base} ({e.__class__.__name__})",
                           EXIT_UNREACHABLE) from None
        write = out or _write
        loop = asyncio.get_running_loop()
        cleanup: list[Callable[[], None]] = []
        if stdin and stdin_fd is not None:
            cleanup.append(_attach_stdin(loop, ws, stdin_fd, tty))
        if tty:
            loop.add_signal_handler(signal.SIGWINCH, lambda: _send_resize(loop, ws))
            cleanup.append(lambda: None if loop.remove_signal_handler(signal.SIGWINCH) else None)
        exit_code: int | None = None
        error = ""
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY and msg.data:
                    write(msg.data[0], msg.data[1:])
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    doc = json.loads(msg.data)
                    if isinstance(doc.get("exit"), int):
                        exit_code = doc["exit"]
                    elif doc.get("error"):
                        error = str(doc["error"])
        finally:
            for undo in reversed(cleanup):
                undo()
            await ws.close()
        if exit_code is None:
            raise CliError(f"exec session ended: {error or 'closed by the scheduler'}", EXIT_REFUSED)
        return exit_code


def _write(kind: int, data: bytes) -> None:
    stream = sys.stderr.buffer if kind == 2 else sys.stdout.buffer
    stream.write(data)
    stream.flush()


def _size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return min(size.lines, 1000), min(size.columns, 1000)


def _send_resize(loop: asyncio.AbstractEventLoop, ws: aiohttp.ClientWebSocketResponse) -> None:
    rows, cols = _size()
    loop.create_task(ws.send_str(json.dumps({"resize": {"rows": rows, "cols": cols}})))


def _attach_stdin(loop: asyncio.AbstractEventLoop, ws: aiohttp.ClientWebSocketResponse, fd: int,
                  tty: bool) -> Callable[[], None]:
    """Forward stdin (raw mode on a terminal) from a reader thread — stdin may be a file, a pipe or a
    terminal, and epoll takes no regular files; end of input is sent as `{"eof": true}`."""
    saved = termios.tcgetattr(fd) if tty and os.isatty(fd) else None
    if saved is not None:
        ttymod.setraw(fd)
    stopped = threading.Event()

    def send(data: bytes) -> None:
        if not ws.closed:
            loop.create_task(ws.send_bytes(data) if data else ws.send_str(json.dumps({"eof": True})))

    def pump() -> None:
        while not stopped.is_set():
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if stopped.is_set():
                return
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(send, data)
            if not data:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()

    def undo() -> None:
        stopped.set()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSANOW, saved)  # not DRAIN: never wait on the reader

    return undo


def cmd_task_exec(api: Api, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command after the task: titusctl task exec TASK -- CMD [ARG…]", EXIT_USAGE)
    if args.tty and not os.isatty(sys.stdin.fileno()):
        raise CliError("-t needs a terminal on stdin (leave -t out when piping)", EXIT_USAGE)
    client = ExecClient(api.base, api.credentials)

    async def go() -> int:
        async with client.session() as http:
            return await client.run(http, args.id, command, tty=args.tty, stdin=args.interactive,
                                    stdin_fd=sys.stdin.fileno() if args.interactive else None)

    return asyncio.run(go())


def add_verb(task: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = task.add_parser("exec", help="run a command inside one of your task's containers (not on the host)")
    e.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    e.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (with -i for a shell)")
    e.add_argument("id", help="task id")
    e.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG…]")
    e.set_defaults(fn=cmd_task_exec)
