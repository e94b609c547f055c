"""The scheduler's HTTP API: status codes, field-naming errors, nothing half-created."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from security.profiles import load_policy
from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore

JOB: dict[str, Any] = {
    "appName": "web",
    "owner": "me",
    "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["true"]},
    "batch": {"size": 2},
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Scheduler]]:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    yield client, s
    await client.close()


async def test_submit_list_describe_kill(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    r = await client.post("/v1/jobs", json=JOB)
    assert r.status == 201
    job = await r.json()
    assert job["state"] == "Accepted" and job["taskCounts"] == {"Accepted": 2}
    r = await client.get(f"/v1/jobs/{job['id']}")
    assert (await r.json())["id"] == job["id"]
    tasks = (await (await client.get(f"/v1/tasks?jobId={job['id']}")).json())["tasks"]
    assert len(tasks) == 2
    r = await client.post(f"/v1/tasks/{tasks[0]['id']}/kill")
    assert r.status == 202 and (await r.json())["reason"] == "killed"
    r = await client.post(f"/v1/jobs/{job['id']}/kill")
    assert r.status == 202
    assert (await (await client.get(f"/v1/jobs/{job['id']}")).json())["state"] == "Finished"


@pytest.mark.parametrize(
    "body,field",
    [
        ({**JOB, "container": {**JOB["container"], "resources": {"cpu": 0}}}, "container.resources.cpu"),
        ({**JOB, "container": {**JOB["container"], "resources": {"cpu": 1e9}}}, "container.resources.cpu"),
        ({**JOB, "container": {**JOB["container"], "image": "Not/An Image"}}, "container.image"),
        ({**JOB, "container": {**JOB["container"], "env": {"X=Y": "1"}}}, "container.env"),
        ({**JOB, "batch": {"size": 0}}, "batch.size"),
        ({**JOB, "color": "blue"}, "color"),
    ],
)
async def test_bad_jobs_are_400_naming_the_field(
    api: tuple[TestClient[Any, Any], Scheduler], body: dict[str, Any], field: str
) -> None:
    client, s = api
    r = await client.post("/v1/jobs", json=body)
    assert r.status == 400
    doc = await r.json()
    assert field in [p["field"] for p in doc["error"]["problems"]]
    assert s.jobs == {} and s.tasks == {}
    assert s.store.load().jobs == []


def _secure(**attributes: str) -> dict[str, Any]:
    return {**JOB, "container": {**JOB["container"], "securityAttributes": attributes}}


@pytest.mark.parametrize(
    "body,field,words",
    [
        (_secure(privileged="true"), "container.securityAttributes.privileged", "privileged"),
        (_secure(hostNetwork="true"), "container.securityAttributes.hostNetwork", "host"),
        (_secure(seccomp="no-such-profile"), "container.securityAttributes.seccomp", "unknown seccomp profile"),
        (_secure(seccomp="unconfined"), "container.securityAttributes.seccomp", "without a seccomp profile"),
        # A variant that exists but is not granted to this owner/app by the (default) policy.
        (_secure(seccomp="perf"), "container.securityAttributes.seccomp", "not allowed"),
        (_secure(apparmor="sometimes"), "container.securityAttributes.apparmor", "sometimes"),
    ],
)
async def test_security_requests_are_refused_at_submit(
    api: tuple[TestClient[Any, Any], Scheduler], body: dict[str, Any], field: str, words: str
) -> None:
    client, s = api
    r = await client.post("/v1/jobs", json=body)
    assert r.status == 400, await r.text()
    doc = await r.json()
    problems = {p["field"]: p["message"] for p in doc["error"]["problems"]}
    assert field in problems, problems
    assert words.lower() in problems[field].lower()
    assert s.jobs == {} and s.tasks == {}
    assert s.store.load().jobs == []


async def test_security_policy_grants_a_variant(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"version": 1, "variants": {"perf": [{"owner": "me", "app": "web"}]}}')
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    client = TestClient(TestServer(make_app(s, load_policy(policy_file))))
    await client.start_server()
    try:
        r = await client.post("/v1/jobs", json=_secure(seccomp="perf"))
        assert r.status == 201, await r.text()
        r = await client.post("/v1/jobs", json={**_secure(seccomp="perf"), "owner": "someone-else"})
        assert r.status == 400
        assert [p["field"] for p in (await r.json())["error"]["problems"]] == ["container.securityAttributes.seccomp"]
        assert len(s.jobs) == 1
    finally:
        await client.close()


async def test_malformed_json(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    r = await client.post("/v1/jobs", data=b'{"appName": ', headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert "malformed JSON" in (await r.json())["error"]["message"]
    assert s.jobs == {}


async def test_idempotency_header(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    r1 = await client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "abc"})
    r2 = await client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "abc"})
    assert (r1.status, r2.status) == (201, 200)
    assert (await r1.json())["id"] == (await r2.json())["id"]
    r3 = await client.post("/v1/jobs", json={**JOB, "batch": {"size": 5}}, headers={"Idempotency-Key": "abc"})
    assert r3.status == 409
    assert len(s.tasks) == 2


async def test_not_found_and_bad_filters(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, _ = api
    assert (await client.get("/v1/jobs/nope")).status == 404
    assert (await client.post("/v1/tasks/nope/kill")).status == 404
    assert (await client.get("/v1/tasks?jobId=nope")).status == 404
    r = await client.get("/v1/tasks?state=Running")
    assert r.status == 400 and "unknown state" in (await r.json())["error"]["message"]


async def test_sync_delivers_work_and_validates(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    node = {"id": "n1", "capacity": {"cpus": 4, "memoryMiB": 8192, "diskMiB": 100000}}
    r = await client.post("/v1/nodes/n1/sync", json={"node": node, "waitSeconds": 0})
    assert r.status == 200 and (await r.json())["launch"] == []
    await client.post("/v1/jobs", json=JOB)
    s.schedule_pass()
    r = await client.post("/v1/nodes/n1/sync", json={"node": node, "waitSeconds": 1})
    assert len((await r.json())["launch"]) == 2
    r = await client.post("/v1/nodes/n2/sync", json={"node": node})
    assert r.status == 400
    r = await client.post("/v1/nodes/n1/sync", json={"node": {**node, "capacity": {"cpus": -1}}})
    assert r.status == 400
    nodes = (await (await client.get("/v1/nodes")).json())["nodes"]
    assert [n["id"] for n in nodes] == ["n1"]


async def test_metrics_exposition(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, _ = api
    await client.post("/v1/jobs", json=JOB)
    text = await (await client.get("/metrics")).text()
    assert 'titus_scheduler_tasks{state="Accepted"} 2.0' in text
    assert 'titus_scheduler_jobs_submitted_total{kind="batch"} 1.0' in text
    assert "titus_scheduler_launch_latency_seconds_bucket" in text
