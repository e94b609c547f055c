"""`titusctl task exec TASK [-i] [-t] -- CMD…` (docs/exec.md): a command inside one of your tasks'
containers — never on the host — through the scheduler, which relays to the task's agent.

The exit code is the command's. A refusal before the command ran (no grant, no such task, the task
not running, its host cordoned or draining) exits 1 with the scheduler's message, like every
titusctl refusal; an unreachable scheduler exits 3.

Start-up matters here (a person waits for it, docs/exec.md "Latency"): this module imports only the
standard library and `titusctl.wsclient`, never aiohttp, asyncio or requests, and `titusctl.main`
imports it only for this verb."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlencode

from titusctl.client import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Api, CliError, Credentials
from titusctl.wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, Handshake, Refused, WebSocket, WsError, wait_readable

__all__ = ["ExecClient", "cmd_task_exec"]

Output = Callable[[int, bytes], None]
CLOSE_WAIT = 2.0  # after the exit frame, how long to wait for the scheduler's close (normally at once)


class ExecClient:
    """One exec session per `run` (blocking, on the calling thread); the TLS context (the cell CA and
    the client certificate) is loaded once per client and reused by every `run`."""

    def __init__(self, base_url: str, credentials: Credentials) -> None:
        self.base = base_url.rstrip("/")
        self.credentials = credentials
        self.headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext | None:
        if self._context is None and self.base.startswith("https://"):
            creds = self.credentials
            try:
                ctx = ssl.create_default_context(cafile=str(creds.ca) if creds.ca else None)
                if creds.cert is not None and creds.key is not None:
                    ctx.load_cert_chain(str(creds.cert), str(creds.key))
            except OSError as e:  # ssl.SSLError too: not a CA, or a key that is not the certificate's
                raise CliError(f"cannot use the CA ({creds.ca}) or client certificate ({creds.cert}): {e}",
                               EXIT_USAGE) from None
            self._context = ctx
        return self._context

    def url(self, task_id: str, command: list[str], *, tty: bool, stdin: bool, rows: int = 0, cols: int = 0) -> str:
        query = urlencode([("cmd", a) for a in command] + [("tty", int(tty)), ("stdin", int(stdin)),
                                                           ("rows", rows), ("cols", cols)])
        return f"{self.base}/v1/tasks/{quote(task_id, safe='')}/exec?{query}"

    def connect(self, url: str) -> WebSocket:
        try:
            return WebSocket.connect(url, self.headers, self.context())
        except Refused as e:
            raise _refusal(e) from None
        except (Handshake, ssl.SSLError) as e:
            raise CliError(f"TLS with the scheduler at {self.base} failed: {e}; is --ca (TITUS_CA) the cell CA, and "
                           "the client certificate valid and not expired?", EXIT_UNREACHABLE) from None
        except (OSError, WsError) as e:
            raise CliError(f"cannot reach the scheduler at {self.base} ({e.__class__.__name__}: {e})",
                           EXIT_UNREACHABLE) from None

    def run(self, task_id: str, command: list[str], *, tty: bool = False, stdin: bool = False,
            out: Output | None = None, stdin_fd: int | None = None) -> int:
        rows, cols = _size() if tty else (0, 0)
        ws = self.connect(self.url(task_id, command, tty=tty, stdin=stdin, rows=rows, cols=cols))
        write = out or _write
        exit_code: int | None = None
        error = ""
        with contextlib.ExitStack() as undo:
            undo.callback(ws.close)
            feed_fd = stdin_fd if stdin else None
            if feed_fd is not None and tty and os.isatty(feed_fd):
                undo.enter_context(_raw(feed_fd))
            wake = undo.enter_context(_winch()) if tty else None
            sock = ws.sock.fileno()
            timeout: float | None = None
            while True:
                fds = [sock] + ([feed_fd] if feed_fd is not None else []) + ([wake] if wake is not None else [])
                ready = [sock] if ws.pending() else wait_readable(fds, timeout)
                if not ready and timeout is not None:
                    break  # the exit code came, the close did not: done anyway
                if feed_fd is not None and feed_fd in ready:
                    try:
                        data = os.read(feed_fd, 65536)
                    except OSError:
                        data = b""
                    if data:
                        ws.send(OP_BINARY, data)
                    else:  # end of input reaches the command as end of its stdin
                        ws.send(OP_TEXT, b'{"eof": true}')
                        feed_fd = None
                if wake is not None and wake in ready:
                    with contextlib.suppress(OSError):
                        os.read(wake, 512)
                    r, c = _size()
                    ws.send(OP_TEXT, json.dumps({"resize": {"rows": r, "cols": c}}).encode())
                if sock not in ready:
                    continue
                try:
                    alive = ws.feed()
                    messages = ws.messages()
                except WsError as e:
                    error = str(e)
                    break
                closed = not alive
                for op, payload in messages:
                    if op == OP_BINARY and payload:
                        write(payload[0], payload[1:])
                    elif op == OP_TEXT:
                        doc = _json(payload)
                        code = doc.get("exit")
                        if isinstance(code, int):
                            exit_code = code
                            timeout = CLOSE_WAIT
                        elif doc.get("error"):
                            error = str(doc["error"])
                    elif op == OP_CLOSE:
                        closed = True
                if closed:
                    break
        if exit_code is None:
            raise CliError(f"exec session ended: {error or 'closed by the scheduler'}", EXIT_REFUSED)
        return exit_code


def _refusal(e: Refused) -> CliError:
    """The scheduler refuses before any upgrade, with its JSON error in the answer's body."""
    message = f"HTTP {e.status}"
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(e.body).get("error", {}).get("message", message)
    hint = "\n  (authenticate with --cert/--key or --token-file; TITUS_CERT/TITUS_KEY, TITUS_TOKEN)" \
        if e.status == 401 else ""
    return CliError(f"error: {message}{hint}", EXIT_REFUSED)


def _json(payload: bytes) -> dict[str, object]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(kind: int, data: bytes) -> None:
    stream = sys.stderr.buffer if kind == 2 else sys.stdout.buffer
    stream.write(data)
    stream.flush()


def _size() -> tuple[int, int]:
    import shutil

    size = shutil.get_terminal_size((80, 24))
    return min(size.lines, 1000), min(size.columns, 1000)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The local terminal in raw mode for the session (the remote terminal does the line discipline)."""
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


@contextlib.contextmanager
def _winch() -> Iterator[int | None]:
    """A pipe that becomes readable on SIGWINCH (the session loop polls it: no timer, no thread).
    None when not on the main thread (signals can only be handled there)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    try:
        old_handler = signal.signal(signal.SIGWINCH, lambda *_: None)
    except ValueError:
        os.close(r)
        os.close(w)
        yield None
        return
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield r
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGWINCH, old_handler)
        os.close(r)
        os.close(w)


def cmd_task_exec(api: Api, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command after the task: titusctl task exec TASK -- CMD [ARG…]", EXIT_USAGE)
    if args.tty and not os.isatty(sys.stdin.fileno()):
        raise CliError("-t needs a terminal on stdin (leave -t out when piping)", EXIT_USAGE)
    client = ExecClient(api.base, api.credentials)
    return client.run(args.id, command, tty=args.tty, stdin=args.interactive,
                      stdin_fd=sys.stdin.fileno() if args.interactive else None)
