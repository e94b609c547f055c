"""Container step: the task's Docker container — created with everything the earlier steps
contributed, then started. It is the last step: once it returns, the user's process runs."""

from __future__ import annotations

import time
from typing import Any

from agent.docker_api import LABEL_AGENT, LABEL_INDEX, LABEL_JOB, LABEL_TASK, DockerError, DockerUnavailable
from security.hardening import audit_host_config
from agent import logtail
from agent.exits import classify_start_refusal
from agent.names import container_name
from agent.steps.base import LaunchContext, StepError
from titus_common.provenance import container_labels

# Titus's value: high enough for any real program, stops a fork bomb. The security step's tighter
# limit (hardening.DEFAULT_PIDS_LIMIT) arrives through ctx.host_config_options and wins.
PIDS_LIMIT = 100_000
NETNS_ENV = "TITUS_NETNS"


class ContainerStep:
    name = "container"

    async def setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        try:
            container_id, fresh = str(mine.get("id") or ""), False
            if not container_id:
                container_id, fresh = await self._create(ctx)
            mine["id"] = container_id
            ctx.record.container_id = container_id
            ctx.release_create_inputs()
            await ctx.commit()
            # Created just now by this call: it has not run, no inspect needed (one engine round trip
            # less per launch). Adopted after a restart (or a create conflict): ask the engine.
            running = False
            if not fresh:
                state = await ctx.docker.inspect(container_id)
                if state is None:
                    raise StepError("container vanished between create and start")
                if not state["State"]["Running"] and not state["State"]["FinishedAt"].startswith("0001"):
                    return  # already ran (and perhaps exited) before an agent restart: do not run it twice
                running = bool(state["State"]["Running"])
            if not running:
                try:
                    await ctx.docker.start(container_id)
                except DockerError as e:
                    # A start refused because of the container's own configuration (its command,
                    # the image's user, a memory limit below its start usage, another architecture)
                    # is the user's error; anything else the platform's (agent/exits.py). A create
                    # refused with 400 is ours (we built the HostConfig), so this is about start alone.
                    reason, message = classify_start_refusal(e.status, str(e), e.client_error)
                    raise StepError(message, reason) from None
            mine["started_at"] = time.time()
            ctx.record.outputs.container_started_at = mine["started_at"]
            await ctx.commit()
        except DockerUnavailable as e:
            raise StepError(str(e)) from None
        except DockerError as e:
            raise StepError(f"Docker refused the container: {e}") from None

    def _options(self, ctx: LaunchContext) -> dict[str, Any]:
        a = ctx.record.assignment
        spec = a.container
        res = spec.resources
        host = {
            "mem_limit": res.memory_mib * 1024 * 1024,
            "memswap_limit": res.memory_mib * 1024 * 1024,  # no swap: an OOM is an OOM
            "nano_cpus": int(res.cpu * 1e9),
            "cpu_shares": max(2, int(res.cpu * 1024)),
            "pids_limit": PIDS_LIMIT,
            # Networking is the network step's job; until it runs, the container has none.
            "network_mode": "none",
            "init": True,  # tini as PID 1: reaps zombies, forwards SIGTERM to the user's process
            "log_config": {"Type": "json-file", "Config": {"max-size": "50m", "max-file": "2"}},
            **ctx.host_config_options,
        }
        if ctx.binds:
            host["binds"] = [*host.get("binds", []), *ctx.binds]
        host_config: dict[str, Any] = dict(ctx.docker.host_config(**host))
        host_config.update(ctx.host_config_raw)
        # The last word before the engine: whatever the steps contributed, the container is hardened
        # (no privileged, no host namespace, caps dropped, no-new-privileges, seccomp, limits, masked
        # paths, no engine socket). Failing here is a platform bug, never the user's.
        problems = audit_host_config(host_config)
        if problems:
            raise StepError(f"container HostConfig fails the hardening audit: {'; '.join(problems)}")
        image = ctx.record.outputs.image
        return {
            # The image step's reference: name@digest for a pinned job (docs/provenance.md).
            "image": image.ref if image is not None else spec.image,
            "command": spec.command,
            "entrypoint": spec.entrypoint,
            "environment": {
                **ctx.environment,
                **spec.env,
                "TITUS_TASK_ID": a.task_id,
                "TITUS_JOB_ID": a.job_id,
                "TITUS_TASK_INDEX": str(a.index),
                # Last, so a job's environment cannot point it elsewhere: where the titus runtime
                # finds the namespace the network step prepared (scripts/titus-runc removes it).
                **({NETNS_ENV: ctx.record.outputs.network.netns_path} if ctx.record.outputs.network else {}),
            },
            "labels": {
                LABEL_TASK: a.task_id,
                LABEL_JOB: a.job_id,
                LABEL_INDEX: str(a.index),
                LABEL_AGENT: ctx.node_id,
                **container_labels(spec.image, image.digest if image is not None else a.image_digest, a.provenance),
            },
            "stop_signal": "SIGTERM",
            "host_config": host_config,
            **ctx.create_options,
        }

    async def _create(self, ctx: LaunchContext) -> tuple[str, bool]:
        """The container's id, and whether this call created it (False: adopted)."""
        name = container_name(ctx.task_id)
        try:
            return await ctx.docker.create(name, **self._options(ctx)), True
        except DockerError as e:
            if not e.conflict:
                raise
        # Created before a crash, not yet checkpointed: adopt it if it really is this task's.
        existing = await ctx.docker.inspect(name)
        if existing is None or existing["Config"]["Labels"].get(LABEL_TASK) != ctx.task_id:
            raise StepError(f"a container named {name} exists and is not this task's")
        return str(existing["Id"]), False

    async def teardown(self, ctx: LaunchContext) -> None:
        """Stop the container, keep its last output in the checkpoint, and leave the container: it is
        removed once the terminal update carrying that output is accepted (agent/logtail.py)."""
        target = ctx.resources(self.name).get("id") or container_name(ctx.task_id)
        await ctx.docker.stop(target, 0)  # a launch that failed after the start; exited: nothing to do
        if ctx.record.log_tail is None:
            ctx.record.log_tail = await logtail.capture(ctx.docker, target)
            await ctx.commit()
