"""asyncio's TLS read buffer, per connection: CPython's `asyncio.sslproto.SSLProtocol` allocates a
256 KiB `bytearray` for every TLS connection it opens or accepts, and fills it with zeros, so each
one is resident (python/cpython#109534). A scheduler holding 7,000 hosts' sync and update
connections kept ~3 GB in those buffers alone (docs/fleet-burst.md, "Over mTLS").

A TLS record carries at most 16 KiB of data (plus its header and MAC): 32 KiB takes a full record
per socket read with room to spare, so throughput is unchanged where it matters here (small JSON
bodies, many connections). Applied once, before any connection, by each daemon's main."""

from __future__ import annotations

import asyncio.sslproto

__all__ = ["TLS_READ_BUFFER", "shrink_tls_buffers"]

TLS_READ_BUFFER = 32 * 1024


def shrink_tls_buffers(size: int = TLS_READ_BUFFER) -> int:
    """Set the per-connection TLS read buffer of asyncio's SSL protocol; returns the size replaced."""
    if size < 17 * 1024:
        raise ValueError(f"a TLS read buffer of {size} bytes cannot hold a full record (16 KiB + overhead)")
    old = int(asyncio.sslproto.SSLProtocol.max_size)
    asyncio.sslproto.SSLProtocol.max_size = size  # a class attribute: read by every new connection
    return old
