"""titusctl's stdlib websocket client (titusctl/wsclient.py) and the exec session loop on it: frames
split across reads, 16- and 64-bit lengths, fragmented messages, pings answered (masked, as a client
must), a refusal's body, stdin forwarded with its end, and a session closed with no exit code."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from scheduler.tls import init_ca
from tests.harness import free_port
from titusctl.client import CliError, Credentials
from titusctl.exec import ExecClient
from titusctl.wsclient import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, WebSocket


def frame(op: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | op
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def unmask(data: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one masked client frame."""
    assert data[1] & 0x80, "a client frame must be masked"
    n, at = data[1] & 0x7F, 2
    if n == 126:
        n, at = struct.unpack_from("!H", data, 2)[0], 4
    mask = data[at:at + 4]
    return data[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data[at + 4:at + 4 + n]))


def pair() -> tuple[WebSocket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return WebSocket(a, b""), b


def drain(ws: WebSocket) -> list[tuple[int, bytes]]:
    assert ws.feed()
    return ws.messages()


def test_frames_split_across_reads_and_every_length_encoding() -> None:
    ws, peer = pair()
    big = os.urandom(70_000)
    wire = frame(OP_BINARY, b"\x01hi") + frame(OP_BINARY, b"x" * 300) + frame(OP_BINARY, big)
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(wire), 997):  # arbitrary cuts, also inside headers
        peer.sendall(wire[i:i + 997])
        got += drain(ws)
    assert got == [(OP_BINARY, b"\x01hi"), (OP_BINARY, b"x" * 300), (OP_BINARY, big)]
    ws.close()
    peer.close()


def test_fragments_pings_and_close() -> None:
    ws, peer = pair()
    peer.sendall(frame(OP_TEXT, b'{"ex', fin=False) + frame(OP_PING, b"p1") + frame(0, b'it": 0}'))
    assert drain(ws) == [(OP_TEXT, b'{"exit": 0}')]
    op, payload = unmask(peer.recv(100))
    assert (op, payload) == (0xA, b"p1")  # the pong, masked
    peer.sendall(frame(OP_CLOSE, struct.pack("!H", 1000)))
    assert drain(ws) == [(OP_CLOSE, struct.pack("!H", 1000))]
    peer.close()
    assert not ws.feed()  # the peer closed the connection
    ws.close()


# ---- the exec loop against a stand-in scheduler -----------------------------------------------------


async def stand_in(request: web.Request) -> web.StreamResponse:
    """Refuses task `no`; echoes stdin upper-cased until end of input, then exits 7; task `drop`
    closes without an exit code."""
    if request.match_info["task_id"] == "no":
        return web.json_response({"error": {"message": "no task 'no'"}}, status=404)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if request.match_info["task_id"] == "drop":
        await ws.send_bytes(b"\x02bye")
        await ws.close()
        return ws
    assert request.query.getall("cmd") == ["tr", "a-z", "A-Z"] and request.query["stdin"] == "1"
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(b"\x01" + msg.data.upper())
        elif msg.type is WSMsgType.TEXT and json.loads(msg.data).get("eof"):
            await ws.send_str(json.dumps({"exit": 7}))
            await ws.close()
    return ws


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/tasks/{task_id}/exec", stand_in)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_stdin_is_forwarded_with_its_end(url: str) -> None:
    r, w = os.pipe()
    os.write(w, b"hello " * 10_000)  # 60 kB: within the pipe's buffer
    os.close(w)
    out: list[tuple[int, bytes]] = []
    client = ExecClient(url, Credentials())
    code = await asyncio.to_thread(client.run, "t1", ["tr", "a-z", "A-Z"], stdin=True, stdin_fd=r,
                                   out=lambda k, d: out.append((k, d)))
    os.close(r)
    assert code == 7
    assert {k for k, _ in out} == {1} and b"".join(d for _, d in out) == b"HELLO " * 10_000


async def test_a_refusal_carries_the_schedulers_message_and_a_drop_is_an_error(url: str) -> None:
    client = ExecClient(url, Credentials())
    with pytest.raises(CliError, match="error: no task 'no'") as e:
        await asyncio.to_thread(client.run, "no", ["id"])
    assert e.value.code == 1
    out: list[tuple[int, bytes]] = []
    with pytest.raises(CliError, match="exec session ended: closed by the scheduler"):
        await asyncio.to_thread(client.run, "drop", ["id"], out=lambda k, d: out.append((k, d)))
    assert out == [(2, b"bye")]
    with pytest.raises(CliError, match="cannot reach the scheduler") as e:
        await asyncio.to_thread(ExecClient(f"http://127.0.0.1:{free_port()}", Credentials()).run, "t", ["id"])
    assert e.value.code == 3


def test_a_task_exec_run_imports_no_heavy_module(tmp_path: Path) -> None:
    """Start-up is part of the exec's latency (docs/exec.md): the whole `task exec` run, up to the
    refusal of an unreachable scheduler, loads no aiohttp, asyncio, requests, pydantic or numpy."""
    init_ca(tmp_path / "pki")
    script = ("import sys\nfrom titusctl.main import main\ntry:\n    main(['task', 'exec', 't1', '--', 'true'])\n"
              "except SystemExit as e:\n    code = e.code\n"
              "heavy = {'aiohttp', 'asyncio', 'requests', 'urllib3', 'pydantic', 'numpy', 'titusctl.commands',"
              " 'titusctl.render'}\n"
              "print(code, sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))")
    env = {**os.environ, "TITUS_SCHEDULER": f"https://127.0.0.1:{free_port()}",
           "TITUS_CA": str(tmp_path / "pki" / "ca.crt"), "TITUS_TOKEN": "x.y", "TITUS_PKI": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "3 []", (done.stdout, done.stderr)
