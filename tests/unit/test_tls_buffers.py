"""asyncio's per-connection TLS read buffer, shrunk (titus_common/tlsbuffers.py): every new
connection gets the smaller buffer, and bodies far larger than it cross a real TLS connection
intact, both ways."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import os
import ssl
from pathlib import Path

import pytest

from titus_common.tlsbuffers import TLS_READ_BUFFER, shrink_tls_buffers
from scheduler.tls import init_ca, server_context


async def test_a_shrunk_buffer_carries_large_bodies_intact(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    old = shrink_tls_buffers()
    buffers: list[int] = []
    real_init = asyncio.sslproto.SSLProtocol.__init__

    def counting_init(self: asyncio.sslproto.SSLProtocol, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        buffers.append(len(self._ssl_buffer))  # type: ignore[attr-defined]

    asyncio.sslproto.SSLProtocol.__init__ = counting_init  # type: ignore[method-assign]
    try:
        body = os.urandom(3 * 2**20)  # 3 MiB: ~100 buffers' worth

        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.readexactly(len(body))
            w.write(hashlib.sha256(data).digest() + data)
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context(pki))
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        w.write(body)
        await w.drain()
        digest = await r.readexactly(32)
        back = await r.readexactly(len(body))
        w.close()
        server.close()
        await server.wait_closed()
        assert digest == hashlib.sha256(body).digest() and back == body
        assert buffers and set(buffers) == {TLS_READ_BUFFER}  # the client's and the server's connection
    finally:
        asyncio.sslproto.SSLProtocol.__init__ = real_init  # type: ignore[method-assign]
        shrink_tls_buffers(old)
    assert asyncio.sslproto.SSLProtocol.max_size == old


def test_a_buffer_below_one_record_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold a full record"):
        shrink_tls_buffers(8 * 1024)
