"""Network step: the task's own IP (docs/network.md, docs/launch-netns.md).

The agent prepares the task's network namespace itself (`netns.prepared`: pinned at
`<netns dir>/titus-<hash>`, owned by a user namespace with the engine's remapping), wires it
(`netns.step.TaskNetworks.setup`: veth created straight into it, address, routes), and the task's
container joins it through the `titus` OCI runtime (scripts/titus-runc), which points the spec's
network (and user) namespace at the path the container step passes as TITUS_NETNS. No second
container per task. Teardown unwires, releases the IP (it cools before reuse) and unpins the
namespace; a sandbox container recorded by an older agent is removed too.
"""

from __future__ import annotations

import logging

from agent.checkpoint import NetworkOutput
from agent.host.network import RUNTIME, TaskNetworking
from agent.steps.base import LaunchContext, StepError
from netns.errors import NetworkError
from titus_common.states import FinishReason

log = logging.getLogger("titus.agent.network")

RESOURCE_KEY = "network"

class NetworkStep:
    name = RESOURCE_KEY

    def __init__(self, host: TaskNetworking) -> None:
        self.host = host

    async def setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        netns_path = self.host.netns_path(ctx.task_id)
        # No checkpoint write of its own: the path follows from the task id, so teardown and GC find a
        # namespace prepared just before a kill -9; it is saved with the lease, a moment later.
        mine["netns_path"] = netns_path
        groups = list(ctx.record.assignment.container.security_groups)
        try:
            await self.host.prepare(netns_path)
            await self.host.wire(ctx.task_id, netns_path, groups, mine, ctx.commit)
        except NetworkError as e:
            raise StepError(
                f"no network: {e.message}", FinishReason.CRASHED if e.platform_fault else FinishReason.FAILED
            ) from None
        # Derived from what the wiring just wrote (lease, namespace path): not written on its own. A
        # restart before the next step's write re-runs this step, which derives it again.
        ctx.record.outputs.network = NetworkOutput(address=str(mine["lease"]["address"]), netns_path=netns_path)
        # The container keeps network_mode none (the engine makes it a namespace of its own); the
        # runtime swaps that for the prepared one, found through TITUS_NETNS (set by the container step).
        ctx.host_config_options["runtime"] = RUNTIME
        log.info("network %s", mine["lease"]["address"], extra={"task_id": ctx.task_id})

    async def teardown(self, ctx: LaunchContext) -> None:
        mine = ctx.record.resources.get(self.name)
        if mine:
            await self.host.unwire(ctx.task_id, mine)  # idempotent; IP cools before reuse
        # The task container (torn down before this step) no longer holds the namespace.
        await self.host.release_netns(self.host.netns_path(ctx.task_id))
        if mine and mine.get("sandbox_id"):  # launched by an agent that still used sandboxes
            await ctx.docker.remove(str(mine["sandbox_id"]))
