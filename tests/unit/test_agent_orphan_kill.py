"""The agent's side of orphan kills: it kills an unknown container only when the scheduler says so,
and only one that, listed afresh, still carries its label and matches no task it holds."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agent.agent import Agent
from agent.docker_api import LABEL_AGENT, LABEL_TASK, DockerError


class FakeDocker:
    def __init__(self, containers: list[dict[str, Any]], fail: bool = False) -> None:
        self.containers = containers
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    async def list_labelled(self, agent_id: str) -> list[dict[str, Any]]:
        return [c for c in self.containers if c["Labels"].get(LABEL_AGENT) == agent_id]

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        self.calls.append(("stop", container_id))
        if self.fail:
            raise DockerError(500, "boom")

    async def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))


def container(cid: str, task: str, agent: str = "n1") -> dict[str, Any]:
    return {"Id": cid, "State": "running", "Labels": {LABEL_AGENT: agent, LABEL_TASK: task}}


def fake_agent(docker: FakeDocker, held: list[str]) -> Any:
    return SimpleNamespace(docker=docker, config=SimpleNamespace(node_id="n1"), runners={t: object() for t in held},
                           _reconcile_wanted=asyncio.Event())


async def test_kills_only_unknown_containers_it_was_told_to() -> None:
    orphan, other_orphan, mine = "a" * 64, "b" * 64, "c" * 64
    docker = FakeDocker([container(orphan, "gone-1"), container(other_orphan, "gone-2"), container(mine, "t1"),
                         container("d" * 64, "x", agent="n2")])
    agent = fake_agent(docker, held=["t1"])
    await Agent.kill_unknown(agent, [orphan[:12], mine[:12], "d" * 12, "e" * 12])
    assert docker.calls == [("stop", orphan), ("remove", orphan)]  # not its task's, not another agent's
    assert agent._reconcile_wanted.is_set()


async def test_a_failed_kill_is_left_for_the_scheduler_to_ask_again() -> None:
    docker = FakeDocker([container("a" * 64, "gone")], fail=True)
    agent = fake_agent(docker, held=[])
    await Agent.kill_unknown(agent, ["a" * 12])
    assert docker.calls == [("stop", "a" * 64)]
