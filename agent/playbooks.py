"""The remediation playbooks the agent runs when the scheduler orders them (agent/remediation.py
runs them one at a time with their results; scheduler/remediation.py decides which, under budgets).

Each action returns a one-line result for the host's remediation history, raises `Unsupported`
when this agent cannot do it, and is safe to repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.docker_api import LABEL_TASK
from agent.remediation import Unsupported

if TYPE_CHECKING:
    from agent.agent import Agent


class Playbooks:
    def __init__(self, agent: Agent) -> None:
        self._a = agent

    def actions(self) -> dict[str, Callable[[], Awaitable[str]]]:
        return {"prune": self._prune, "network-gc": self._network_gc, "restart-engine": self._restart_engine,
                "reassert-network": self._reassert_network, "restart-metadata": self._restart_metadata}

    async def _prune(self) -> str:
        """Exited containers of tasks this agent no longer holds, and leftover scratch containers."""
        containers = await self._a.docker.list_labelled(self._a.config.node_id)
        gone = [c for c in containers
                if c.get("State") in ("exited", "dead", "created") and (c.get("Labels") or {}).get(LABEL_TASK) not in self._a.runners]
        for c in gone:
            await self._a.docker.remove(str(c["Id"]))
        if self._a.health is not None:
            await self._a.health.gc(self._a.tasks())
        images = ""
        if self._a.image_gc is not None:  # every image no task uses or is about to (agent/imagegc.py)
            p = await self._a.image_gc.run(self._a.tasks(), force=True)
            images = f", {len(p.images)} unused image(s) ({sum(i.size for i in p.images) / 2**20:.0f} MiB)"
        return f"removed {len(gone)} exited container(s) of finished tasks{images}"

    async def _network_gc(self) -> str:
        if self._a.network is None:
            raise Unsupported("networking is off on this agent")
        await self._a.network.gc(self._a.tasks())
        return "network GC ran"

    async def _reassert_network(self) -> str:
        if self._a.network is None:
            raise Unsupported("networking is off on this agent")
        # Every owned ENI's link and table, and the wired tasks' own rules (missing ones re-added).
        await self._a.network.reconcile(self._a.tasks())
        return "ENI links, tables and tasks' rules re-asserted"

    async def _restart_metadata(self) -> str:
        if self._a.metadata is None:
            raise Unsupported("the metadata proxy is off on this agent")
        # Namespace, service, every task's link and listeners (agent/host/metadata.py).
        return await self._a.metadata.restart(self._a.tasks)

    async def _restart_engine(self) -> str:
        cmd = self._a.config.health_engine_restart_command
        if not cmd:
            raise Unsupported("no health_engine_restart_command configured")
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.decode(errors='replace')[-200:]}")
        return f"{' '.join(cmd)} done"
