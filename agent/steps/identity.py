"""Identity step: the task's workload identity (docs/identity.md).

A key generated on this host, a CSR sent over the node's mTLS channel, the certificate the
scheduler signs for this task (placed on this node) with the identity it derives from the job. The
task's directory is bind-mounted read-only at /run/titus/identity (a directory, not single files,
so the atomic swap at each rotation is visible inside); the paths are in TITUS_IDENTITY_* variables.

Setup is idempotent (a valid certificate is reused); teardown removes the directory; the agent's
IdentityResource rotates it while the task runs (files only: nothing to re-adopt after a restart).
"""

from __future__ import annotations

import asyncio

from agent.host.workload import RESOURCE_KEY, IdentityUnavailable, TaskIdentities
from agent.steps.base import LaunchContext, StepError
from titus_common.workload import cert_spiffe_id

__all__ = ["MOUNT", "IdentityStep"]

MOUNT = "/run/titus/identity"


class IdentityStep:
    name = RESOURCE_KEY

    def __init__(self, identities: TaskIdentities) -> None:
        self.identities = identities

    async def setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        directory = self.identities.dir(ctx.task_id)
        mine["dir"] = str(directory)
        await ctx.commit()  # a trail for teardown and GC before anything is written
        try:
            cert = await self.identities.ensure(ctx.task_id)
        except IdentityUnavailable as e:
            raise StepError(f"no task identity: {e}") from None
        except OSError as e:
            raise StepError(f"cannot write the task identity: {e}") from None
        mine["spiffe_id"] = cert_spiffe_id(cert)
        await ctx.commit()
        ctx.binds.append(f"{directory}:{MOUNT}:ro")
        ctx.environment.update({
            "TITUS_IDENTITY_DIR": MOUNT,
            "TITUS_IDENTITY_CERT": f"{MOUNT}/cert.pem",
            "TITUS_IDENTITY_KEY": f"{MOUNT}/key.pem",
            "TITUS_IDENTITY_BUNDLE": f"{MOUNT}/bundle.pem",
            "TITUS_IDENTITY_SPIFFE_ID": mine["spiffe_id"],
        })

    async def teardown(self, ctx: LaunchContext) -> None:
        if ctx.record.resources.get(self.name):
            await asyncio.to_thread(self.identities.remove, ctx.task_id)
