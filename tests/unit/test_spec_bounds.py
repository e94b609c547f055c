"""Bounded job specs and node messages: every limit is stated in the OpenAPI document, enforced by
the same models, and a submission over it is a 400 naming the field with nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.openapi import openapi_document
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titus_common import jobspec as js
from titus_common.jobspec import SpecError, exec_bytes, parse_job_spec
from titus_common.protocol import MAX_MESSAGE, MAX_TASKS_PER_NODE, NodeReport, TaskUpdate, UpdatesRequest

IMAGE = "127.0.0.1:5000/titus/busybox:latest"


def job(**container: Any) -> dict[str, Any]:
    return {"appName": "web", "owner": "me", "container": {"image": IMAGE, "command": ["true"], **container},
            "batch": {"size": 1}}


def problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        parse_job_spec(doc)
    return dict(e.value.problems)


def test_the_budget_is_half_of_linux_arg_max() -> None:
    assert js.LINUX_ARG_MAX == 2_097_152 and js.ARGV_ENV_BUDGET == 1_048_576
    assert exec_bytes(["ab", ""]) == (2 + 9) + (0 + 9)


@pytest.mark.parametrize(
    "container,field,words",
    [
        # The hostile job: 100,000 variables (1.5 MB of JSON) was accepted.
        ({"env": {f"V{i}": "x" * 8 for i in range(100_000)}}, "container.env", "at most 4096"),
        # Under the count, over the exec budget.
        ({"env": {f"V{i}": "x" * 1000 for i in range(2000)}}, "container", "at most 1048576"),
        # A 1 MB command line: one argument over MAX_ARG_STRLEN is what execve refuses (E2BIG).
        ({"command": ["sh", "-c", "x" * 1_000_000]}, "container.command", "at most 131071"),
        ({"command": ["x" * 100_000] * 11}, "container", "at most 1048576"),
        ({"entrypoint": ["é" * 70_000]}, "container.entrypoint", "140000 bytes"),
        ({"env": {"BIG": "v" * 131_070}}, "container.env", "at most 131071"),
        ({"env": {"N" * 300: "v"}}, "container.env", "longer than 256"),
        ({"securityGroups": [f"sg-{i:08x}" for i in range(17)]}, "container.securityGroups", "at most 16"),
        ({"securityAttributes": {f"k{i}": "v" for i in range(65)}}, "container.securityAttributes", "at most 64"),
        ({"securityAttributes": {"seccomp": "v" * 1025}}, "container.securityAttributes", "at most 1024"),
        ({"resources": {"memoryMiB": 5}}, "container.resources.memoryMiB", "greater than or equal to 6"),
    ],
)
def test_container_limits(container: dict[str, Any], field: str, words: str) -> None:
    found = problems(job(**container))
    assert field in found, found
    assert words in found[field], found


@pytest.mark.parametrize("key", ["labels", "attributes"])
def test_label_and_attribute_limits(key: str) -> None:
    assert "at most 64" in problems({**job(), key: {f"k{i}": "v" for i in range(65)}})[key]
    assert "longer than 1024" in problems({**job(), key: {"k": "v" * 1025}})[key]
    assert "invalid" in problems({**job(), key: {"k" * 254: "v"}})[key]


def test_just_under_the_budget_is_accepted() -> None:
    env = {f"V{i:04d}": "x" * 240 for i in range(4096)}  # 4096 × (5+1+240+9) = 1,044,480 bytes
    assert exec_bytes([f"{k}={v}" for k, v in env.items()]) + exec_bytes(["true"]) <= js.ARGV_ENV_BUDGET
    parse_job_spec(job(env=env))


def test_limits_are_stated_in_the_openapi_document() -> None:
    schemas = openapi_document()["components"]["schemas"]
    c = schemas["ContainerSpec"]["properties"]
    assert c["env"]["maxProperties"] == js.MAX_ENV_VARS
    assert c["env"]["propertyNames"]["maxLength"] == js.MAX_ENV_NAME
    assert str(js.ARGV_ENV_BUDGET) in c["env"]["description"] and str(js.LINUX_ARG_MAX) in c["command"]["description"]
    assert c["securityGroups"]["maxItems"] == 16 and c["securityAttributes"]["maxProperties"] == 64
    j = schemas["JobSpec"]["properties"]
    for key in ("labels", "attributes"):
        assert j[key]["maxProperties"] == 64
        assert j[key]["propertyNames"]["maxLength"] == 253 and j[key]["additionalProperties"]["maxLength"] == 1024
    n = schemas["NodeReport"]["properties"]
    assert n["running"]["maxItems"] == MAX_TASKS_PER_NODE and n["unknownContainers"]["maxItems"] == MAX_TASKS_PER_NODE
    assert schemas["TaskUpdate"]["properties"]["message"]["maxLength"] == MAX_MESSAGE


def _node(**over: Any) -> dict[str, Any]:
    return {"id": "n1", "capacity": {"cpus": 4, "memoryMiB": 8192, "diskMiB": 100000}, **over}


@pytest.mark.parametrize(
    "over,field",
    [
        ({"running": ["t"] * (MAX_TASKS_PER_NODE + 1)}, "running"),
        ({"unknownContainers": ["c" * 129]}, "unknownContainers"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"agentVersion": "v" * 129}, "agentVersion"),
        ({"posture": {"blob": "x" * 70_000}}, "posture"),
    ],
)
def test_node_report_bounds(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        NodeReport.model_validate(_node(**over))
    assert field in {str(err["loc"][0]) for err in e.value.errors()}


def test_update_bounds() -> None:
    with pytest.raises(ValidationError):
        TaskUpdate.model_validate({"taskId": "t", "state": "Finished", "timestamps": {}, "message": "m" * 5000})
    with pytest.raises(ValidationError):
        UpdatesRequest.model_validate({"updates": [{"taskId": "t" * 129, "state": "Finished", "timestamps": {}}]})


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Scheduler]]:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    yield client, s
    await client.close()


async def test_api_refuses_the_hostile_env_and_stores_nothing(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    r = await client.post("/v1/jobs", json=job(env={f"V{i}": "x" * 8 for i in range(100_000)}))
    assert r.status == 400
    assert "container.env" in [p["field"] for p in (await r.json())["error"]["problems"]]
    assert s.jobs == {} and s.store.load().jobs == []
    r = await client.post("/v1/nodes/n1/sync", json={"node": _node(running=["t"] * (MAX_TASKS_PER_NODE + 1))})
    assert r.status == 400
