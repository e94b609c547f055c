"""Network step: the task's own IP (docs/network.md).

Docker cannot join a namespace by path, so each task gets a sandbox: a tiny container
`titus-sandbox-<task>` (`sleep`, network_mode none, the same hardening as tasks) whose namespace is
wired by `netns.step.TaskNetworks.setup` (veth created straight into it, address, routes); the task's
container then joins it with `network_mode=container:<sandbox id>`. Teardown unwires, releases the IP
(it cools before reuse) and removes the sandbox.

Sandboxes are labelled `titus.sandbox_agent=<node>` (not `titus.agent`: they are not tasks, and
everything that counts a node's task containers must not see them), `titus.task_id` and
`titus.role=sandbox`.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.checkpoint import NetworkOutput
from agent.docker_api import LABEL_TASK, DockerError, DockerUnavailable
from agent.host.network import TaskNetworking
from agent.names import LABEL_ROLE, LABEL_SANDBOX_AGENT, ROLE_SANDBOX, sandbox_name
from agent.steps.base import LaunchContext, StepError
from netns.errors import NetworkError
from security.hardening import audit_host_config
from titus_common.states import FinishReason

log = logging.getLogger("titus.agent.network")

RESOURCE_KEY = "network"
SANDBOX_COMMAND = ["sleep", "2147483647"]
SANDBOX_MEMORY = 8 * 1024 * 1024
SANDBOX_PIDS = 4


class NetworkStep:
    name = RESOURCE_KEY

    def __init__(self, host: TaskNetworking) -> None:
        self.host = host

    async def setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        try:
            sandbox_id = await self._sandbox(ctx, mine)
            state = await ctx.docker.inspect(sandbox_id)
            if state is not None and not state["State"]["Running"] and state["State"]["FinishedAt"].startswith("0001"):
                try:
                    await ctx.docker.start(sandbox_id)
                except DockerError as e:
                    # Under load the engine may report a start it did carry out as failed
                    # ("cannot start an already running container"): what counts is the state.
                    log.warning("sandbox start answered %s; checking its state", e, extra={"task_id": ctx.task_id})
                state = await ctx.docker.inspect(sandbox_id)
            if state is None or not state["State"]["Running"] or not state["State"].get("Pid"):
                raise StepError(f"the network sandbox {sandbox_name(ctx.task_id)} is not running")
        except DockerUnavailable as e:
            raise StepError(str(e)) from None
        except DockerError as e:
            raise StepError(f"Docker refused the network sandbox: {e}") from None
        netns_path = f"/proc/{int(state['State']['Pid'])}/ns/net"
        groups = list(ctx.record.assignment.container.security_groups)
        try:
            await self.host.wire(ctx.task_id, netns_path, groups, mine, ctx.save)
        except NetworkError as e:
            raise StepError(
                f"no network: {e.message}", FinishReason.CRASHED if e.platform_fault else FinishReason.FAILED
            ) from None
        ctx.record.outputs.network = NetworkOutput(
            address=str(mine["lease"]["address"]), netns_path=netns_path, sandbox_id=sandbox_id
        )
        ctx.save()
        ctx.host_config_options["network_mode"] = f"container:{sandbox_id}"
        log.info("network %s", mine["lease"]["address"], extra={"task_id": ctx.task_id})

    async def _sandbox(self, ctx: LaunchContext, mine: dict[str, Any]) -> str:
        if mine.get("sandbox_id"):
            return str(mine["sandbox_id"])
        name = sandbox_name(ctx.task_id)
        try:
            sandbox_id = await ctx.docker.create(name, **self._options(ctx))
        except DockerError as e:
            if not e.conflict:
                raise
            # Created before a crash, not yet checkpointed: adopt it if it really is this task's.
            existing = await ctx.docker.inspect(name)
            labels = (existing or {}).get("Config", {}).get("Labels") or {}
            if labels.get(LABEL_TASK) != ctx.task_id or labels.get(LABEL_ROLE) != ROLE_SANDBOX:
                raise StepError(f"a container named {name} exists and is not this task's sandbox") from None
            sandbox_id = str(existing["Id"]) if existing else name
        mine["sandbox_id"] = sandbox_id
        ctx.save()
        return sandbox_id

    def _options(self, ctx: LaunchContext) -> dict[str, Any]:
        # The security step's options (no-new-privileges, seccomp, AppArmor…), then the sandbox's
        # own: no capability at all, a read-only root, tiny limits, no network of its own.
        kwargs: dict[str, Any] = {
            k: v for k, v in ctx.host_config_options.items() if k in ("security_opt", "oom_kill_disable")
        }
        kwargs.update(
            network_mode="none",
            mem_limit=SANDBOX_MEMORY,
            memswap_limit=SANDBOX_MEMORY,
            pids_limit=SANDBOX_PIDS,
            # A weight, not a quota: a CFS quota of 0.01 CPU throttled runc's own start of the
            # sandbox to ~2 s per launch (measured); `sleep` uses no CPU once running.
            cpu_shares=2,
            cap_drop=["ALL"],
            read_only=True,
            log_config={"Type": "none", "Config": {}},
        )
        host_config: dict[str, Any] = dict(ctx.docker.host_config(**kwargs))
        host_config.update(ctx.host_config_raw)
        problems = audit_host_config(host_config)
        if problems:
            raise StepError(f"network sandbox HostConfig fails the hardening audit: {'; '.join(problems)}")
        return {
            "image": self.host.sandbox_image,
            "command": SANDBOX_COMMAND,
            "labels": {
                LABEL_TASK: ctx.task_id,
                LABEL_SANDBOX_AGENT: ctx.node_id,
                LABEL_ROLE: ROLE_SANDBOX,
            },
            "host_config": host_config,
        }

    async def teardown(self, ctx: LaunchContext) -> None:
        mine = ctx.record.resources.get(self.name)
        if mine:
            await self.host.unwire(ctx.task_id, mine)  # idempotent; IP cools before reuse
        # The task container (torn down before this step) no longer holds the namespace.
        target = (mine or {}).get("sandbox_id") or sandbox_name(ctx.task_id)
        await ctx.docker.remove(target)
