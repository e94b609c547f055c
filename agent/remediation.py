"""Playbook actions the scheduler orders for a failed health condition (scheduler/remediation.py
decides and budgets; the agent only executes). Each order id runs once, on its own task, under a
time limit; its result goes with the following heartbeats, then the host's checks re-run so the
scheduler sees whether the action helped.

Actions: `prune` (remove exited containers of tasks this agent no longer holds, and scratch
containers); `network-gc` (the network resource's leak GC); `reassert-network` (every owned ENI's link and
table re-applied); `restart-metadata` (the metadata namespace, service and every task's metadata
link and listeners: agent/host/metadata.py); `restart-engine` (the configured
`health_engine_restart_command`, e.g. `systemctl restart docker`, safe with live-restore). An action
this agent does not know or has not configured is reported unsupported — not a failure of the host.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from titus_common.protocol import RemediationOrder, RemediationResult

__all__ = ["Action", "Remediator", "Unsupported"]

log = logging.getLogger("titus.agent.remediation")

class Unsupported(Exception):
    """This agent cannot run the action here (e.g. not configured): reported, not a host failure."""


# An action returns a short message on success and raises on failure (Unsupported: cannot run).
Action = Callable[[], Awaitable[str]]
KEEP_RESULTS = 16


class Remediator:
    def __init__(self, actions: Mapping[str, Action], after: Callable[[], Awaitable[None]] | None = None,
                 timeout: float = 120.0) -> None:
        self.actions = dict(actions)
        self.after = after
        self.timeout = timeout
        self._seen: deque[str] = deque(maxlen=64)
        self._results: deque[RemediationResult] = deque(maxlen=KEEP_RESULTS)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, order: RemediationOrder) -> None:
        if order.id in self._seen:
            return  # a redelivery: running or done already
        self._seen.append(order.id)
        task = asyncio.create_task(self._run(order), name=f"remediate-{order.action}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, order: RemediationOrder) -> None:
        action = self.actions.get(order.action)
        log.warning("remediation: running %s for %s/%s (order %s)", order.action, order.check, order.reason, order.id)
        supported = True
        try:
            if action is None:
                raise Unsupported(f"this agent has no action {order.action!r}")
            message = await asyncio.wait_for(action(), timeout=self.timeout)
            ok = True
        except Unsupported as e:
            ok, supported, message = False, False, str(e)
        except TimeoutError:
            ok, message = False, f"{order.action} did not finish within {self.timeout:g}s"
        except Exception as e:
            ok, message = False, f"{type(e).__name__}: {e}"
        log.log(logging.INFO if ok else logging.WARNING, "remediation %s %s: %s", order.action,
                "done" if ok else "failed", message)
        self._results.append(RemediationResult(id=order.id, action=order.action, ok=ok, supported=supported,
                                               message=message[:256],
                                               finished_at=time.time()))
        if self.after is not None:
            await self.after()

    def results(self) -> list[RemediationResult]:
        return list(self._results)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
