"""A small blocking websocket client (RFC 6455, client side) on the standard library only, for
`titusctl task exec` (docs/exec.md): one TLS connection, the upgrade, masked frames out, frames in.

Why not aiohttp: a fresh `titusctl` process pays for everything it imports, and aiohttp + asyncio
cost more start-up than the whole exec round trip does (docs/exec.md, "Latency"). This module needs
`socket`, `ssl`, `select` and `hashlib`, all of which Python loads in a few milliseconds.

One thread drives the connection: the socket is non-blocking after the handshake, and `Session.run`
polls it together with stdin and a signal wake-up pipe, so no TLS object is ever used from two threads
(OpenSSL does not allow that) and nothing waits on a timer."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import select
import socket
import ssl
import struct
from urllib.parse import urlsplit

__all__ = ["Handshake", "Refused", "WebSocket", "WsError", "OP_BINARY", "OP_CLOSE", "OP_TEXT"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER = 64 * 1024
MAX_MESSAGE = 1 << 20  # the scheduler's own limit


class WsError(Exception):
    """The connection failed or broke the protocol (transport or framing; not a refusal)."""


class Refused(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Handshake(WsError):
    """The TLS handshake failed (wrong CA, bad or expired client certificate)."""


def _read_head(sock: ssl.SSLSocket | socket.socket) -> tuple[bytes, bytes]:
    """The response head (up to the blank line) and whatever bytes followed it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER:
            raise WsError("the server's response head is too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise WsError("the server closed the connection during the upgrade")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class WebSocket:
    def __init__(self, sock: ssl.SSLSocket | socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._buf = bytearray(buffered)
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.closed = False

    @classmethod
    def connect(cls, url: str, headers: dict[str, str], context: ssl.SSLContext | None,
                timeout: float = 10.0) -> WebSocket:
        """Dial, (TLS for https/wss), upgrade. Raises `Refused` (a status instead of 101), `Handshake`
        (TLS) or `OSError`/`WsError` (unreachable, broken)."""
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: ssl.SSLSocket | socket.socket = raw
        try:
            if secure:
                ctx = context or ssl.create_default_context()
                try:
                    sock = ctx.wrap_socket(raw, server_hostname=host)
                except ssl.SSLError as e:
                    raise Handshake(str(e)) from None
                except ssl.CertificateError as e:
                    raise Handshake(str(e)) from None
            key = base64.b64encode(os.urandom(16))
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                     f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
                     *(f"{k}: {v}" for k, v in headers.items())]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head, rest = _read_head(sock)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            fields = status_line.split(" ", 2)
            if len(fields) < 2 or not fields[1].isdigit():
                raise WsError(f"not an HTTP answer: {status_line[:80]!r}")
            status = int(fields[1])
            got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if status != 101:
                raise Refused(status, _read_body(sock, got, rest))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
            if got.get("sec-websocket-accept") != accept or got.get("upgrade", "").lower() != "websocket":
                raise WsError("the server did not accept the websocket upgrade properly")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        sock.setblocking(False)
        return cls(sock, rest)

    # -- sending (masked, as a client must) -------------------------------------------------------

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        self._send_all(head + mask + _mask(payload, mask))

    def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except ssl.SSLWantWriteError:
                select.select([], [self.sock], [])
            except ssl.SSLWantReadError:
                select.select([self.sock], [], [])
            except BlockingIOError:
                select.select([], [self.sock], [])

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.send(OP_CLOSE, struct.pack("!H", code))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass

    # -- receiving ----------------------------------------------------------------------------------

    def pending(self) -> bool:
        """Bytes already decrypted or buffered: poll would not see them."""
        return bool(self._buf) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def feed(self) -> bool:
        """Read what the socket has (non-blocking). False: the peer closed the connection."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            except ssl.SSLWantWriteError:
                select.select([], [self.sock], [])
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise WsError(f"connection broken: {e}") from None
            if not chunk:
                return False
            self._buf += chunk
            if not isinstance(self.sock, ssl.SSLSocket) or not self.sock.pending():
                return True

    def messages(self) -> list[tuple[int, bytes]]:
        """Whole messages parsed from what was read; pings are answered here, pongs dropped."""
        out: list[tuple[int, bytes]] = []
        while True:
            frame = self._frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CLOSE:
                out.append((OP_CLOSE, payload))
            elif opcode == OP_CONT:
                if not self._fragments:
                    raise WsError("a continuation frame with no message to continue")
                self._fragments.append(payload)
                if fin:
                    out.append((self._fragment_op, b"".join(self._fragments)))
                    self._fragments = []
            elif opcode in (OP_TEXT, OP_BINARY):
                if fin:
                    out.append((opcode, payload))
                else:
                    self._fragment_op, self._fragments = opcode, [payload]
            else:
                raise WsError(f"unknown websocket opcode {opcode}")

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = struct.unpack_from("!Q", buf, 2)[0], 10
        if n > MAX_MESSAGE:
            raise WsError(f"a websocket frame of {n} bytes (limit {MAX_MESSAGE})")
        mask = b""
        if masked:  # servers must not mask, but accept it
            if len(buf) < at + 4:
                return None
            mask, at = bytes(buf[at:at + 4]), at + 4
        if len(buf) < at + n:
            return None
        payload = bytes(buf[at:at + n])
        del buf[:at + n]
        return fin, opcode, _mask(payload, mask) if mask else payload


def _mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _read_body(sock: ssl.SSLSocket | socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    """A refusal's body (Content-Length bounded, at most 64 KiB), best effort."""
    want = int(headers["content-length"]) if headers.get("content-length", "").isdigit() else MAX_HEADER
    want = min(want, MAX_HEADER)
    body = rest
    try:
        while len(body) < want:
            chunk = sock.recv(want - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return body[:want]


def wait_readable(fds: list[int], timeout: float | None = None) -> list[int]:
    """poll(2) the fds, at most `timeout` seconds (None: no limit); regular files count as always
    readable (epoll refuses them)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(None if timeout is None else int(timeout * 1000))]
