"""`titusctl task stats` (scheduler/taskstats.py, agent/taskstats.py): the agent's reading of cgroup
v1 and v2 trees and /proc (written here as files), the relay's one-shot request → answer over the
agent's sync, its timeout and node scoping, the API's refusals, and the human rendering."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.scheduler_client import SchedulerClient
from agent.taskstats import collect
from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.taskstats import StatsRelay
from tests.unit.test_trust import JOB, Cell, cell, post  # noqa: F401  (`cell`: the TLS cell fixture)
from titus_common.pki import client_context
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, StatsReport, TaskUpdate
from titus_common.states import TaskState as S
from titusctl.stats import stats_text

CID = "c" * 64
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def fake_proc(proc: Path) -> None:
    stat = "4242 (sleep) S " + " ".join(["0"] * 10) + f" {3 * TICK} {1 * TICK} " + " ".join(["0"] * 8) + " 25 0"
    write(proc, {
        "4242/stat": stat, "4242/status": "Name:\tsleep\nThreads:\t1\nNSpid:\t4242\t7\n",
        "4242/cmdline": "sleep\x00600\x00",
        "4242/net/dev": "Inter-| Receive\n face |bytes\n    lo: " + " ".join(["9"] * 16) + "\n"
                        "  eth0: 100 2 0 1 0 0 0 0 200 3 0 0 0 0 0 0\n",
    })


def test_cgroup_v1(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cg", tmp_path / "proc"
    write(cg, {
        f"cpu/docker/{CID}/cpu.stat": "nr_periods 100\nnr_throttled 25\nthrottled_time 2000000000\n",
        f"cpu/docker/{CID}/cpu.cfs_quota_us": "50000\n", f"cpu/docker/{CID}/cpu.cfs_period_us": "100000\n",
        f"cpuacct/docker/{CID}/cpuacct.usage": "4500000000\n",
        f"cpuacct/docker/{CID}/cpuacct.stat": f"user {3 * TICK}\nsystem {TICK}\n",
        f"memory/docker/{CID}/memory.usage_in_bytes": "1048576\n",
        f"memory/docker/{CID}/memory.limit_in_bytes": "67108864\n",
        f"memory/docker/{CID}/memory.max_usage_in_bytes": "2097152\n",
        f"memory/docker/{CID}/memory.stat": "rss 10\ncache 20\ntotal_rss 11\ntotal_cache 21\n",
        f"memory/docker/{CID}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        f"memory/docker/{CID}/cgroup.procs": "4242\n",
        f"pids/docker/{CID}/pids.current": "1\n", f"pids/docker/{CID}/pids.max": "max\n",
        f"pids/docker/{CID}/cgroup.procs": "4242\n",
        f"cpuset/docker/{CID}/cpuset.cpus": "0-1\n", f"cpuset/docker/{CID}/cpuset.mems": "0\n",
    })
    fake_proc(proc)
    doc = collect(cg, CID, 4242, proc)
    assert doc["cgroup"] == "v1" and doc["cgroupFound"]
    assert doc["cpu"] == {"usageSeconds": 4.5, "userSeconds": 3.0, "systemSeconds": 1.0, "periods": 100,
                          "throttledPeriods": 25, "throttledSeconds": 2.0, "limitCpus": 0.5}
    assert doc["memory"] == {"usageBytes": 1048576, "limitBytes": 67108864, "peakBytes": 2097152, "anonBytes": 11,
                             "fileBytes": 21, "oomKills": 1}
    assert doc["pids"] == {"current": 1, "limit": None} and doc["cpuset"] == {"cpus": "0-1", "mems": "0"}
    assert doc["network"] == {"eth0": {"rxBytes": 100, "rxPackets": 2, "rxErrors": 0, "rxDropped": 1,
                                       "txBytes": 200, "txPackets": 3, "txErrors": 0, "txDropped": 0}}
    (p,) = doc["processes"]
    assert p == {"pid": 7, "comm": "sleep", "state": "S", "cpuSeconds": 4.0, "rssBytes": 25 * PAGE, "threads": 1,
                 "cmdline": "sleep 600"}  # the PID the container sees, never the host's


def test_cgroup_v2_and_missing_files(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cg", tmp_path / "proc"
    d = f"system.slice/docker-{CID}.scope"
    write(cg, {
        "cgroup.controllers": "cpu memory pids cpuset\n",
        f"{d}/cpu.stat": "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 10\n"
                         "nr_throttled 0\nthrottled_usec 0\n",
        f"{d}/cpu.max": "200000 100000\n", f"{d}/memory.current": "4096\n", f"{d}/memory.max": "max\n",
        f"{d}/memory.events": "oom 0\noom_kill 0\n", f"{d}/cgroup.procs": "",
        f"{d}/cpuset.cpus.effective": "3\n",
    })
    proc.mkdir()
    doc = collect(cg, CID, None, proc)
    assert doc["cgroup"] == "v2"
    assert doc["cpu"]["usageSeconds"] == 3.0 and doc["cpu"]["limitCpus"] == 2.0
    assert doc["memory"]["usageBytes"] == 4096 and doc["memory"]["limitBytes"] is None  # "max": no limit
    assert doc["memory"]["peakBytes"] is None  # an older kernel without memory.peak: null, not a failure
    assert doc["cpuset"] == {"cpus": "3", "mems": None} and doc["processes"] == [] and doc["network"] == {}
    assert collect(tmp_path / "nothing", CID, None, proc)["cgroupFound"] is False


async def test_relay_one_shot_timeout_and_node_scope() -> None:
    woken: list[str] = []
    relay = StatsRelay(woken.append, timeout=0.5)
    asking = asyncio.create_task(relay.ask("n1", "t1"))
    await asyncio.sleep(0)
    assert woken == ["n1"] and relay.has_work("n1")
    (req,) = relay.take("n1")
    assert relay.take("n1") == []  # delivered once
    assert not relay.answer("n2", StatsReport(id=req.id, task_id="t1", stats={"x": 1}))  # not the node asked
    assert relay.answer("n1", StatsReport(id=req.id, task_id="t1", stats={"x": 1}))
    assert (await asking) is not None
    assert await relay.ask("n1", "t1") is None  # nobody answers: None (the API's 504), and nothing left queued
    assert relay.take("n1") == []


async def test_api_relays_to_the_agent_and_refuses_tasks_not_running(tmp_path: Path) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    try:
        report = NodeReport(id="n1", capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=10_000))
        s.heartbeat(report)
        job, _ = s.submit(parse_job_spec({"appName": "a", "owner": "o", "batch": {"size": 1},
                                          "container": {"image": "busybox", "command": ["true"]}}))
        s.schedule_pass()
        (task,) = s.job_tasks(job.id)
        r = await client.get(f"/v1/tasks/{task.id}/stats")
        assert r.status == 409  # Launched, not running
        s.apply_updates("n1", [TaskUpdate(task_id=task.id, state=S.STARTED, timestamps={S.STARTED: 1.0})])

        async def agent() -> None:  # the node's long poll carries the request; it posts the answer
            resp = await s.sync(report, 5.0)
            (req,) = resp.stats
            body = {"reports": [{"id": req.id, "taskId": req.task_id, "stats": {"cpu": {"usageSeconds": 1.5}}}]}
            answered = await client.post("/v1/nodes/n1/stats", json=body)
            assert (await answered.json())["accepted"] == [req.id]

        helper = asyncio.create_task(agent())
        r = await client.get(f"/v1/tasks/{task.id}/stats")
        await helper
        doc: dict[str, Any] = await r.json()
        assert r.status == 200 and doc["cpu"] == {"usageSeconds": 1.5} and doc["nodeId"] == "n1"
        assert (await client.get("/v1/tasks/nope/stats")).status == 404
        bad = await client.post("/v1/nodes/n1/stats", json={"reports": [{"id": "x"}]})
        assert bad.status == 400
    finally:
        await client.close()


def test_human_rendering() -> None:
    text = stats_text({
        "taskId": "t1", "nodeId": "n1", "containerId": "abc", "cgroup": "v1",
        "cpu": {"usageSeconds": 4.5, "periods": 100, "throttledPeriods": 25, "throttledSeconds": 2.0, "limitCpus": 0.5},
        "memory": {"usageBytes": 1048576, "limitBytes": 67108864}, "pids": {"current": 1}, "cpuset": {"cpus": "0-1"},
        "network": {"eth0": {"rxBytes": 1, "rxPackets": 1, "rxDropped": 0, "txBytes": 2, "txPackets": 2, "txDropped": 0}},
        "processes": [{"pid": 7, "state": "S", "cpuSeconds": 4.0, "rssBytes": 4096, "cmdline": "sleep 600"}],
        "processCount": 1,
    })
    assert "25 of 100 periods (25.0% of periods)" in text and "1.0MiB of 64.0MiB" in text
    assert "eth0" in text and "sleep 600" in text


@pytest.mark.parametrize("path", ["/v1/nodes/n1/stats"])
def test_node_route_is_a_node_call(path: str) -> None:
    from scheduler.auth import NODE_CALL

    assert NODE_CALL.match(path)


# ---- who may read and answer (scheduler/auth.py), over the real TLS listener of test_trust ----------

async def test_only_the_owner_reads_and_only_the_tasks_node_answers(cell: Cell) -> None:
    job, _ = cell.scheduler.submit(parse_job_spec(JOB))  # owner alice
    (task,) = cell.scheduler.job_tasks(job.id)
    ctx = client_context(cell.pki / "ca.crt")

    async def get(token: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(
                f"{cell.url}/v1/tasks/{task.id}/stats", ssl=ctx, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()

    status, doc = await get(cell.operator_token("submitter", owner="bob"))
    assert status == 403 and doc["error"]["message"].endswith("only of owner 'bob''s tasks")
    status, _ = await get(cell.operator_token("submitter", owner="alice"))
    assert status == 409  # allowed; the task is not running
    status, _ = await get(cell.operator_token("operator"))
    assert status == 409
    client = SchedulerClient(cell.url, "n-1", cell.credentials("n-1", cell.bootstrap_token()))
    try:
        await client.sync(NodeReport(id="n-1", capacity=CapacityReport(cpus=2, memory_mib=4096, disk_mib=10_000)), 0)
        node_ctx = client_context(cell.pki / "ca.crt", cell.tmp / "n-1/pki/node.crt", cell.tmp / "n-1/pki/node.key")
        status, _ = await post(f"{cell.url}/v1/nodes/n-2/stats", node_ctx, {"reports": []})
        assert status == 403
        assert (await client.stats([])).accepted == []  # its own route: allowed
    finally:
        await client.close()
