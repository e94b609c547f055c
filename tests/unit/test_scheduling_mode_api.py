"""The live spread ⇄ pack switch over the API and the CLI; constraints refused at submit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.engine import Engine
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titusctl.main import build_parser

JOB = {
    "appName": "web", "owner": "me", "batch": {"size": 1},
    "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["true"]},
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Scheduler]]:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics())
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    yield client, s
    await client.close()


async def test_switch_is_applied_audited_and_in_metrics(
    api: tuple[TestClient[Any, Any], Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    client, s = api
    doc = await (await client.get("/v1/admin/scheduling-mode")).json()
    assert doc["mode"] == "spread" and doc["auto"]["enabled"] is False
    with caplog.at_level(logging.INFO, logger="titus.scheduler.audit"):
        r = await client.put("/v1/admin/scheduling-mode", json={"mode": "pack"}, headers={"X-Titus-Actor": "alice"})
    assert r.status == 200 and (await r.json())["mode"] == "pack"
    assert s.scheduling_mode is not None and s.scheduling_mode.value == "pack"
    assert any(r.name == "titus.scheduler.audit" and "spread -> pack by alice" in r.getMessage() for r in caplog.records)
    text = await (await client.get("/metrics")).text()
    assert 'titus_scheduler_scheduling_mode{mode="pack"} 1.0' in text
    assert 'titus_scheduler_scheduling_mode_switches_total{mode="pack"} 1.0' in text


@pytest.mark.parametrize("body,words", [
    ({"mode": "binpack"}, "unknown scheduling mode 'binpack'; one of spread, pack, auto"),
    ({"mode": 1}, "invalid request"),
    ({"mode": "pack", "x": 1}, "invalid request"),
    ([], "invalid request"),
])
async def test_bad_switches_are_400(api: tuple[TestClient[Any, Any], Scheduler], body: Any, words: str) -> None:
    client, s = api
    r = await client.put("/v1/admin/scheduling-mode", json=body)
    assert r.status == 400 and words in (await r.json())["error"]["message"]
    assert s.scheduling_mode is not None and s.scheduling_mode.value == "spread"


async def test_first_fit_has_no_modes(tmp_path: Path) -> None:
    client = TestClient(TestServer(make_app(Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics()))))
    await client.start_server()
    try:
        r = await client.put("/v1/admin/scheduling-mode", json={"mode": "pack"})
        assert r.status == 409
    finally:
        await client.close()


@pytest.mark.parametrize("constraints,field", [
    ({"hard": {"colour": "red"}}, "unknown constraint"),
    ({"hard": {"uniqueHost": "true", "maxPerHost": "4"}}, "hard.maxPerHost: contradicts hard.uniqueHost"),
])
async def test_bad_constraints_refused_at_submit(
    api: tuple[TestClient[Any, Any], Scheduler], constraints: dict[str, Any], field: str
) -> None:
    client, _ = api
    r = await client.post("/v1/jobs", json={**JOB, "constraints": constraints})
    assert r.status == 400
    problems = (await r.json())["error"]["problems"]
    assert problems[0]["field"] == "constraints" and field in problems[0]["message"]


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        self.calls.append((method, path, body))
        return {"mode": body["mode"] if body else "spread"}


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeApi()
    args = build_parser().parse_args(["admin", "scheduling-mode", "pack"])
    assert args.fn(fake, args) == 0
    assert fake.calls == [("PUT", "/v1/admin/scheduling-mode", {"mode": "pack"})]
    args = build_parser().parse_args(["admin", "scheduling-mode"])
    args.fn(fake, args)
    assert fake.calls[-1][:2] == ("GET", "/v1/admin/scheduling-mode")
    assert "scheduling mode: spread" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["admin", "scheduling-mode", "binpack"])
