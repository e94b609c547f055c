"""Security step: the task's confinement. Resolves the job's security attributes against the agent's
policy (variant allow-list) and the host's posture (what it can enforce) into a decision — seccomp
profile with capability conditions already evaluated, capabilities, AppArmor profile or the written
reason there is none, warnings — records it in the task's checkpoint and hands the container step the
hardened HostConfig options (docs/security.md).

Nothing is acquired (profiles are data; AppArmor profiles are loaded once per host at agent start),
so teardown has nothing to release."""

from __future__ import annotations

import logging

from agent.host.security import HostSecurity
from agent.steps.base import LaunchContext, StepError
from security.hardening import BindRefused, hardening_options
from security.profiles import SecurityRefused, resolve_security
from titus_common.states import FinishReason

log = logging.getLogger("titus.agent.security")

RESOURCE_KEY = "security"


class SecurityStep:
    name = RESOURCE_KEY

    def __init__(self, host: HostSecurity) -> None:
        self.host = host

    async def setup(self, ctx: LaunchContext) -> None:
        posture = self.host.posture
        if posture is None:
            raise StepError("the host's security posture has not been probed yet")  # platform: CRASHED
        a = ctx.record.assignment
        spec = a.container
        try:
            decision = resolve_security(spec, self.host.policy, posture, owner=a.owner, app=a.app_name)
            opts = hardening_options(decision, memory_mib=spec.resources.memory_mib)
        except SecurityRefused as e:
            # What the job asked for cannot be given on this host (or by this policy): the user's
            # request is impossible here, not a platform fault.
            raise StepError(f"refused: {e}", FinishReason.FAILED) from None
        except BindRefused as e:
            raise StepError(f"refused bind mount: {e}", FinishReason.FAILED) from None
        record = decision.to_json()
        mine = ctx.resources(self.name)
        created = ctx.record.container_id is not None
        if created and mine and mine.get("seccompDigest") != record["seccompDigest"]:
            # Set up again after a restart, but the container was already made with the earlier
            # decision: the record must keep describing what the container really has.
            log.warning(
                "security decision changed since the container was created (%s -> %s); keeping the record",
                mine.get("seccompDigest"), record["seccompDigest"], extra={"task_id": ctx.task_id},
            )
        else:
            mine.clear()
            mine.update(record)
            await ctx.commit()
        ctx.host_config_options.update(opts.host_config_kwargs)
        ctx.host_config_raw.update(opts.host_config_raw)
        for w in decision.warnings:
            log.debug("security: %s", w, extra={"task_id": ctx.task_id})

    async def teardown(self, ctx: LaunchContext) -> None:
        return None  # nothing acquired: profiles are data, AppArmor profiles are per host
