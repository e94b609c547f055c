"""Cpuset step: the task's CPUs on this host. Places the task (agent/cpus.py decides), records the
grant in the task's checkpoint, hands the container its cpuset at create time, and makes the
other containers give up what this one now holds before it starts."""

from __future__ import annotations

import logging

from agent.host.cpus import RESOURCE_KEY, PlacementFailed
from agent.host.cpuset_apply import CpusetApplier
from agent.steps.base import LaunchContext, StepError

log = logging.getLogger("titus.agent.cpuset")


class CpusetStep:
    name = RESOURCE_KEY

    def __init__(self, applier: CpusetApplier) -> None:
        self.applier = applier
        self.host = applier.host

    async def setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        spec = ctx.record.assignment.container
        try:
            grant = self.host.grant_of(ctx.task_id)
            if grant is None and "class" in mine and not mine.get("released"):
                grant = self.host.adopt(ctx.record, ctx.save, mine)  # recorded by an earlier setup
            if grant is None:
                grant = self.host.place(ctx.record, ctx.save, spec.effective_cpu_class, spec.resources.cpu)
        except PlacementFailed as e:
            # The scheduler places by CPU count only; the layout is the agent's problem, not the user's.
            raise StepError(str(e)) from None
        mine.clear()
        mine.update(grant.to_record())
        await ctx.commit()
        cpus = self.host.cpuset_of(ctx.task_id)
        ctx.host_config_options["cpuset_cpus"] = cpus
        self.applier.created_with(ctx.task_id, cpus)
        # Burst containers shrink off this task's CPUs before it starts. A write that fails now is
        # retried by the cpuset loop; it is no reason to fail this task.
        await self.applier.apply()
        log.info("cpuset %s (%s, exclusive %s)", cpus, grant.cls, mine["cpus"] or "-", extra={"task_id": ctx.task_id})

    async def teardown(self, ctx: LaunchContext) -> None:
        mine = ctx.record.resources.get(self.name)
        if mine and not mine.get("released"):
            # Checkpointed first: after a kill -9 here, a restart must not hand these CPUs back to
            # this task while a new one may already hold them.
            mine["released"] = True
            await ctx.commit()
        self.host.release(ctx.task_id)  # idempotent; burst containers grow back through the loop
