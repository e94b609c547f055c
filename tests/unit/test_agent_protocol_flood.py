"""A broken or hostile agent cannot flood the scheduler's log: refused node-protocol requests and
malformed HTTP are counted in full and logged at most once per node per kind per interval."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import aiohttp
import pytest

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titus_common.daemon import serve_http

N = 1000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_flood_of_bad_syncs_is_counted_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    port = _port()
    runner = await serve_http(make_app(s), ("127.0.0.1", port))
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="aiohttp.access")  # as titus_common.logs.setup_logging has it
    node = {"id": "n1", "capacity": {"cpus": 4, "memoryMiB": 8192, "diskMiB": 100000}}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            sem = asyncio.Semaphore(32)

            async def bad(i: int) -> None:
                async with sem:
                    if i % 3 == 0:
                        body: object = {"node": {**node, "running": ["x" * 200]}}
                        r = await http.post("/v1/nodes/n1/sync", json=body)
                    elif i % 3 == 1:
                        r = await http.post("/v1/nodes/n1/updates", data=b"{not json")
                    else:
                        r = await http.post("/v1/nodes/n1/sync", data=b"x", headers={"X-Pad": "a" * 20_000})
                    assert r.status in (400, 431)
                    r.release()

            await asyncio.gather(*(bad(i) for i in range(N)))
    finally:
        await runner.cleanup()
    sample = s.metrics.registry.get_sample_value
    assert sample("titus_scheduler_agent_protocol_errors_total", {"kind": "sync:invalid"}) == len(range(0, N, 3))
    assert sample("titus_scheduler_agent_protocol_errors_total", {"kind": "updates:invalid"}) == len(range(1, N, 3))
    assert sample("titus_scheduler_agent_protocol_errors_total", {"kind": "LineTooLong"}) == len(range(2, N, 3))
    lines = [r for r in caplog.records if r.name.startswith(("titus", "aiohttp"))]
    assert len(lines) <= 6, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in lines)
    assert any("agent n1: sync:invalid" in r.getMessage() and "node.running.0" in r.getMessage() for r in lines)
