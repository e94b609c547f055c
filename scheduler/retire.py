"""Retiring a host that remediation gave up on (issue 12; the seed: "reschedule the work and
terminate the instance").

Only a host whose drain was started by remediation and has finished (no task left on it) is
retired, once, and never while remediation is frozen (many hosts bad at once is a fleet problem:
page, do not terminate). Providers:
- `local` (default): the node is marked retired (`DrainState.retired_at`; it stays cordoned, so
  it gets no work even if it keeps heartbeating);
- `aws`: EC2 `TerminateInstances` on the host's instance id (the `instanceId` label an aws agent
  reports), then marked retired; a failure is recorded on the drain and retried after a back-off;
- `none`: drained hosts are left for an operator.
Every attempt goes to the audit log. The blocking EC2 call runs on a thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from scheduler.records import NodeRecord

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["Retirer", "make_ec2"]

log = logging.getLogger("titus.scheduler.retire")

INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
RETRY_AFTER = 300.0

Provider = Literal["none", "local", "aws"]


def make_ec2(region: str, endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    # Short timeouts, few retries: a retirement waits for the next round rather than for EC2.
    config = Config(connect_timeout=5, read_timeout=20, retries={"total_max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client("ec2", region_name=region, endpoint_url=endpoint_url or None,
                                          config=config)


class Retirer:
    def __init__(self, sched: Scheduler, provider: Provider, ec2: Callable[[], Any] | None = None) -> None:
        self._s = sched
        self.provider = provider
        self._ec2_factory = ec2
        self._ec2: Any = None
        self._busy = False
        self._task: asyncio.Task[int] | None = None

    def kick(self) -> None:
        """Run a pass in the background unless one is running: the control loop never waits on EC2."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name="retire")

    async def _guarded(self) -> int:
        try:
            return await self.run_pass()
        except Exception:
            log.exception("retirement pass failed")
            return 0

    def due(self, now: float) -> list[NodeRecord]:
        """Hosts to retire now (pure over the records)."""
        if self.provider == "none" or self._s.remediation_frozen:
            return []
        out = []
        for n in self._s.nodes.values():
            d = n.drain
            if d is None or d.by != "remediation" or d.finished_at is None or d.retired_at is not None:
                continue
            if d.retire_error_at is not None and now - d.retire_error_at < RETRY_AFTER:
                continue
            out.append(n)
        return out

    async def run_pass(self) -> int:
        if self._busy:
            return 0
        self._busy = True
        try:
            now = self._s.clock()
            done = 0
            for node in self.due(now):
                if await self._retire(node, now):
                    done += 1
            return done
        finally:
            self._busy = False

    async def _retire(self, node: NodeRecord, now: float) -> bool:
        d = node.drain
        assert d is not None
        instance = node.labels.get("instanceId", node.id if INSTANCE_ID.match(node.id) else "")
        error = ""
        if self.provider == "aws":
            others = [n.id for n in self._s.nodes.values() if n.id != node.id
                      and n.labels.get("instanceId", n.id) == instance]
            if not INSTANCE_ID.match(instance):
                error = f"no EC2 instance id known for {node.id} (no instanceId label)"
            elif others:
                error = f"{instance} is also reported by {', '.join(sorted(others))}: not terminating an ambiguous instance"
            else:
                try:
                    await asyncio.to_thread(self._terminate, instance)
                except Exception as e:  # botocore's errors, a timeout: recorded, retried later
                    error = f"TerminateInstances {instance}: {e}"
        s = self._s
        if error:
            d.retire_error, d.retire_error_at = error[:500], now
            log.error("retiring host %s failed: %s", node.id, error, extra={"node_id": node.id})
        else:
            d.retired_at, d.retire_error, d.retire_error_at = now, "", None
            log.warning("host %s retired (%s%s)", node.id, self.provider,
                        f" {instance}" if self.provider == "aws" else "", extra={"node_id": node.id})
        s.reconciler.audit.write(now, "host.retire", node=node.id, provider=self.provider,
                                 instance=instance, outcome="error" if error else "retired", error=error)
        s.metrics.retirements.labels(outcome="error" if error else "retired").inc()
        s.store.commit(nodes=[node])
        return not error

    def _terminate(self, instance: str) -> None:
        if self._ec2 is None:
            assert self._ec2_factory is not None
            self._ec2 = self._ec2_factory()
        answer = self._ec2.terminate_instances(InstanceIds=[instance])
        states = [str(i.get("InstanceId")) for i in answer.get("TerminatingInstances", []) if isinstance(i, dict)]
        if instance not in states:
            raise RuntimeError(f"EC2 did not confirm terminating {instance}: {answer.get('TerminatingInstances')!r}")
