"""A task cannot flood the host's log through its metadata proxy: malformed HTTP is counted in full,
logged at most once per task per kind per interval with a suppressed count, never with a traceback."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from titus_common.clientlog import ClientErrorLog

from .conftest import Env, identity

# The test is 100,000 bad requests from one container; TITUS_FLOOD_REQUESTS can set that here
# (bench-sized), the default keeps the unit suite quick while still far past any log budget.
REQUESTS = int(os.environ.get("TITUS_FLOOD_REQUESTS", "3000"))
OVERSIZED = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"


async def _bad_request(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    await reader.read()  # the server answers 400 and closes
    writer.close()


async def test_oversized_headers_flood(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    imds, _ = await env.add(identity("t1"))
    port = imds.getsockname()[1]
    env.service.client_errors.interval = 3600.0  # one window for the whole flood, however long it takes
    caplog.set_level(logging.DEBUG)
    sem = asyncio.Semaphore(64)

    async def one(payload: bytes) -> None:
        async with sem:
            await _bad_request(port, payload)

    await asyncio.gather(*(one(OVERSIZED if i % 2 else b"\x16\x03\x01garbage\r\n\r\n") for i in range(REQUESTS)))
    kinds = {k: env.metric("titus_imds_client_errors_total", {"kind": k}) for k in ("LineTooLong", "BadHttpMethod")}
    assert sum(kinds.values()) == REQUESTS, kinds
    flood = [r for r in caplog.records if r.name.startswith(("titus", "aiohttp"))]
    assert len(flood) <= 30, [r.getMessage() for r in flood][:40]
    assert not any(r.exc_info for r in flood)
    lines = [r.getMessage() for r in flood if "LineTooLong" in r.getMessage()]
    assert len(lines) == 1 and "task t1" in lines[0]
    # The service still answers the task properly.
    tok = await env.token("t1")
    assert (await env.get("t1", "/latest/meta-data/instance-id", tok))[0] == 200
    await env.service.remove_task("t1")
    assert len(env.service.client_errors) == 0  # its windows go with the task


def test_window_logs_once_then_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    counted: list[str] = []
    errors = ClientErrorLog(logging.getLogger("titus.test"), interval=60, clock=lambda: now[0], count=counted.append)
    caplog.set_level(logging.INFO)
    for _ in range(100_000):
        errors.report("t1", "LineTooLong", "Got more than 8190 bytes")
    errors.report("t2", "LineTooLong", "x")
    errors.report("t1", "BadStatusLine", "x")
    assert len(counted) == 100_002 and len(caplog.records) == 3
    now[0] = 61.0
    errors.report("t1", "LineTooLong", "again")
    assert "99999 more suppressed in the last 60s" in caplog.records[-1].getMessage()
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in caplog.records)


def test_keys_are_bounded() -> None:
    from titus_common import clientlog

    errors = ClientErrorLog(logging.getLogger("titus.test"), clock=lambda: 0.0)
    for i in range(clientlog.MAX_KEYS + 50):
        errors.report(f"t{i}", "Other", "x")
    assert len(errors) <= clientlog.MAX_KEYS


def test_other_errors_keep_their_traceback_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    errors = ClientErrorLog(logging.getLogger("titus.test"), clock=lambda: 0.0)
    logger = errors.http_logger("t1")
    caplog.set_level(logging.INFO)
    for _ in range(5):
        try:
            raise RuntimeError("handler bug")
        except RuntimeError:
            logger.exception("Unhandled exception")
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None

