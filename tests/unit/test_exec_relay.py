"""Exec sessions through the scheduler (docs/exec.md) on a real TLS listener, with a stand-in agent
that speaks the real protocol (sync long poll → its own websocket) and answers like the engine would:
who may exec (owner / admin, never another owner or the operator role), the relay and exit code, the
refusals before the upgrade, the audit events, and that only the task's node may take a session."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from tests.unit.test_trust import JOB, Cell, cell, report  # noqa: F401  (the TLS cell fixture)
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import TaskUpdate
from titus_common.states import TaskState
from titusctl.client import CliError, Credentials
from titusctl.exec import ExecClient


async def fake_agent(client: SchedulerClient, node: str, stop: asyncio.Event) -> None:
    """Answers every exec order: echoes the command on stdout, `err` on stderr, exits 3."""
    while not stop.is_set():
        resp = await client.sync(report(node), 1)
        for order in resp.exec_orders:
            ws = await client.exec_channel(order.session_id)
            await ws.send_bytes(b"\x01" + " ".join(order.command).encode())
            await ws.send_bytes(b"\x02err")
            await ws.send_str(json.dumps({"exit": 3}))
            await ws.close()


async def started_task(c: Cell, client: SchedulerClient) -> str:
    await client.sync(report("n-a"), 0)
    job, _ = c.scheduler.submit(parse_job_spec(JOB))  # owner alice
    assert c.scheduler.schedule_pass() == 1
    (task,) = c.scheduler.job_tasks(job.id)
    now = time.time()
    await client.updates([TaskUpdate(task_id=task.id, state=TaskState.STARTED, container_id="c1",
                                     timestamps={TaskState.LAUNCHED: now, TaskState.STARTED: now})])
    assert c.scheduler.task(task.id).state is TaskState.STARTED
    return task.id


async def run(c: Cell, token: str, task_id: str, command: list[str]) -> tuple[int, list[tuple[int, bytes]]]:
    out: list[tuple[int, bytes]] = []
    ec = ExecClient(c.url, Credentials(ca=c.pki / "ca.crt", token=token))
    # titusctl's client is blocking (stdlib only, for its start-up): on a thread, the cell runs on this loop
    code = await asyncio.to_thread(ec.run, task_id, command, out=lambda k, d: out.append((k, d)))
    return code, out


async def test_owner_exec_is_relayed_audited_and_others_refused(cell: Cell) -> None:  # noqa: F811
    agent = SchedulerClient(cell.url, "n-a", cell.credentials("n-a", cell.bootstrap_token()))
    other_node = SchedulerClient(cell.url, "n-b", cell.credentials("n-b", cell.bootstrap_token()))
    stop = asyncio.Event()
    try:
        task_id = await started_task(cell, agent)
        loop = asyncio.create_task(fake_agent(agent, "n-a", stop))
        alice = cell.operator_token("submitter", owner="alice")
        code, out = await run(cell, alice, task_id, ["echo", "hi there"])
        assert code == 3 and out == [(1, b"echo hi there"), (2, b"err")]
        assert (await run(cell, cell.operator_token("admin"), task_id, ["id"]))[0] == 3
        for token, needs in ((cell.operator_token("submitter", owner="bob"), "owner 'alice'"),
                             (cell.operator_token("operator"), "owner 'alice'")):
            with pytest.raises(CliError, match=f"may not exec into task {task_id}.*{needs}"):
                await run(cell, token, task_id, ["id"])
        with pytest.raises(CliError, match="no task 'nope'"):
            await run(cell, alice, "nope", ["id"])
        events = cell.auth.store.audit_log()
        end = next(e for e in events if e["method"] == "EXEC-END")
        detail = end["detail"]
        assert isinstance(detail, dict)
        assert end["who"] == "operator:admin-1(admin)" and detail["exitCode"] == 3 and detail["end"] == "exited"
        assert any(e["method"] == "EXEC-END" and isinstance(e["detail"], dict) and e["detail"]["command"] ==
                   ["echo", "hi there"] and e["who"] == "operator:submitter-1(submitter)" for e in events)
        # each refusal is audited once (titusctl reads the message from the refused upgrade's own answer)
        assert sum(e["status"] == 403 and str(e["path"]).endswith("/exec") for e in events) == 2
        # a cordoned (draining) host takes no new session
        cell.scheduler.set_cordon("n-a", True, "maintenance")
        with pytest.raises(CliError, match="cordoned or draining \\(maintenance\\)"):
            await run(cell, alice, task_id, ["id"])
        cell.scheduler.set_cordon("n-a", False)
        # only the task's node may take a session: n-b's certificate cannot open n-a's end
        session = cell.scheduler.execs.open(task_id=task_id, job_id="j", node_id="n-a", who="t", command=["id"],
                                            tty=False, stdin=False)
        await other_node.sync(report("n-b"), 0)
        with pytest.raises(SchedulerUnavailable, match="403"):
            await connect_as(other_node, "n-a", session.id)
        cell.scheduler.execs.close(session, "test")
    finally:
        stop.set()
        await asyncio.sleep(0)
        loop.cancel()
        await agent.close()
        await other_node.close()


async def connect_as(client: SchedulerClient, node: str, session_id: str) -> None:
    """Open `node`'s end of a session with `client`'s own (another node's) certificate."""
    assert client.credentials is not None
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{client.base_url}/v1/nodes/{node}/exec/{session_id}",
                                       ssl=client.credentials.context())
        except aiohttp.WSServerHandshakeError as e:
            raise SchedulerUnavailable(f"HTTP {e.status}") from None
        await ws.close()
