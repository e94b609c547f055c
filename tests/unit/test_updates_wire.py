"""What an agent puts on the wire for task updates: `logTail` only when there is one, so a scheduler
older than log tails (its protocol refuses unknown fields) still takes every other update."""

from __future__ import annotations

from typing import Any

import pytest

from agent.scheduler_client import SchedulerClient
from titus_common.protocol import TaskUpdate, UpdatesResponse
from titus_common.states import FinishReason, TaskState


async def test_log_tail_is_left_out_when_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    async def post(path: str, doc: dict[str, Any], model: Any, timeout: float) -> UpdatesResponse:
        sent.append(doc)
        return UpdatesResponse(accepted=[u["taskId"] for u in doc["updates"]])

    client = SchedulerClient("http://127.0.0.1:1", "n1")
    monkeypatch.setattr(client, "_post", post)
    started = TaskUpdate(task_id="t1", state=TaskState.STARTED, timestamps={TaskState.STARTED: 1.0})
    finished = TaskUpdate(task_id="t2", state=TaskState.FINISHED, timestamps={TaskState.FINISHED: 2.0},
                          reason=FinishReason.NORMAL, exit_code=0, log_tail="done\n")
    resp = await client.updates([started, finished])
    assert resp.accepted == ["t1", "t2"]
    first, second = sent[0]["updates"]
    assert "logTail" not in first and second["logTail"] == "done\n"
    assert TaskUpdate.model_validate(first).log_tail is None  # today's scheduler reads it the same
