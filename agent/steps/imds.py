"""Metadata step: the task's own EC2 metadata and IAM credentials (docs/imds.md).

After the network step, the task's namespace gets a link into the agent's metadata namespace
(netns/metadata.py) with routes to 169.254.169.254 and 169.254.170.2; the agent's metadata service
(imds/) listens on sockets bound to that link, so the socket a request arrives on names the task:
no source-IP lookup, nothing to race. The credentials of the job's role are fetched from STS as the
task launches (not waited for: the container starts while STS answers). The ECS-style endpoint's
bearer token is a file bind-mounted read-only into the task (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE);
the task opts in to that endpoint by setting AWS_CONTAINER_CREDENTIALS_FULL_URI itself, because an
SDK that reads the URI but not the token file would otherwise fail instead of using IMDS.

The listening sockets live in the agent's process: after a restart `readopt` opens them again.
The `restart-metadata` remediation (agent/host/metadata.py) re-wires tasks outside the pipeline;
the host's `wiring` gate keeps it and this step apart.
"""

from __future__ import annotations

import asyncio
import logging

from agent.host.metadata import HostMetadata
from agent.steps.base import LaunchContext, StepError
from imds.identity import TaskIdentity
from imds.service import ECS_PATH
from netns.errors import NetworkError
from netns.providers.ec2_identity import region_hostname_suffix
from netns.wiring import CONTAINER_IFNAME, iproute_in
from titus_common.provenance import PROVENANCE_KEYS
from titus_common.states import FinishReason

log = logging.getLogger("titus.agent.imds")

RESOURCE_KEY = "imds"
TOKEN_PATH_IN_TASK = "/run/titus/aws-container-token"
ECS_URI = f"http://169.254.170.2{ECS_PATH}"


def role_arn(role: str, account: str) -> str:
    """A job's role as an ARN (a bare name is this account's role)."""
    return role if role.startswith("arn:") else f"arn:aws:iam::{account}:role/{role}"


def task_mac(netns_path: str) -> str:
    """The MAC of the task's data link (what `meta-data/mac` answers)."""
    with iproute_in(netns_path) as ipr:
        links = ipr.link("get", ifname=CONTAINER_IFNAME)
    return str(links[0].get("IFLA_ADDRESS") or "00:00:00:00:00:00")


def _provenance(ctx: LaunchContext) -> tuple[tuple[str, str], ...]:
    """What the task may read of its own image provenance (the image step ran before this one)."""
    a, image = ctx.record.assignment, ctx.record.outputs.image
    doc = {"image": a.container.image}
    digest = image.digest if image is not None else a.image_digest
    if digest:
        doc["imageDigest"] = digest
    doc.update({k: v for k, v in a.provenance.items() if k in PROVENANCE_KEYS})
    return tuple(doc.items())


class ImdsStep:
    name = RESOURCE_KEY

    def __init__(self, host: HostMetadata) -> None:
        self.host = host

    async def setup(self, ctx: LaunchContext) -> None:
        async with self.host.wiring.shared():  # never while `restart-metadata` re-wires (agent/host/metadata.py)
            await self._setup(ctx)

    async def _setup(self, ctx: LaunchContext) -> None:
        mine = ctx.resources(self.name)
        address, netns_path = self._network(ctx)
        try:
            mine["mac"] = await asyncio.to_thread(task_mac, netns_path)
        except Exception as e:  # netlink: the namespace or its link is gone
            raise StepError(f"cannot read the task's network link: {e}") from None
        try:
            mine["link"] = await asyncio.to_thread(self.host.path.attach, ctx.task_id, netns_path, address)
        except NetworkError as e:
            raise StepError(f"no metadata link: {e.message}") from None
        await ctx.commit()
        identity = await self._identity(ctx, address)
        mine["role_arn"] = identity.role_arn  # for the record's readers: written with the token file
        if identity.role_arn is not None:
            token_file = await asyncio.to_thread(self.host.write_token_file, ctx.task_id)
            mine["token_file"] = str(token_file)
            await ctx.commit()
            ctx.binds.append(f"{token_file}:{TOKEN_PATH_IN_TASK}:ro")
            ctx.environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = TOKEN_PATH_IN_TASK
        ctx.environment.setdefault("AWS_REGION", self.host.region)
        ctx.environment.setdefault("AWS_DEFAULT_REGION", self.host.region)
        # No write after serving: nothing acquired since the last one (the listeners live in this
        # process, readopt re-opens them); without a role, the next step's write carries role_arn.
        await self._serve(ctx, identity)

    async def readopt(self, ctx: LaunchContext) -> None:
        mine = ctx.record.resources.get(self.name) or {}
        if not mine.get("link"):
            return  # this task never had a metadata link
        address, _ = self._network(ctx)
        async with self.host.wiring.shared():
            await self._serve(ctx, await self._identity(ctx, address))
        log.info("metadata service re-opened", extra={"task_id": ctx.task_id})

    async def _serve(self, ctx: LaunchContext, identity: TaskIdentity) -> None:
        await self.host.service.remove_task(ctx.task_id)  # a setup re-run after a partial one
        try:
            # No role, no credentials: nothing listens on the ECS address for the task.
            imds_sockets, ecs_sockets = await asyncio.to_thread(
                self.host.path.listeners, ctx.task_id, identity.role_arn is not None
            )
        except NetworkError as e:
            raise StepError(f"cannot listen for the task's metadata: {e.message}") from None
        try:
            await self.host.service.add_task(identity, imds_sockets, ecs_sockets)
        except ValueError as e:  # a role ARN the service refuses: the job's fault
            raise StepError(f"metadata service refused the task: {e}", FinishReason.FAILED) from None

    def _network(self, ctx: LaunchContext) -> tuple[str, str]:
        net = ctx.record.outputs.network
        if net is None:
            raise StepError("the task has no network (the metadata step needs the network step before it)")
        return net.address, net.netns_path

    async def _identity(self, ctx: LaunchContext, address: str) -> TaskIdentity:
        a = ctx.record.assignment
        arn: str | None = None
        account = self.host.account_id or "000000000000"
        if a.container.iam_role:
            if not a.container.iam_role.startswith("arn:"):
                try:
                    account = await self.host.account()
                except Exception as e:
                    raise StepError(f"cannot tell the account of role {a.container.iam_role!r}: {e}") from None
            arn = role_arn(a.container.iam_role, account)
            account = arn.split(":")[4]
            # Defence in depth: the scheduler admitted this role at submit; a forged or stale
            # assignment asking for a role outside the grants gets no credentials.
            refusal = self.host.iam_policy.refusal(a.owner or "", a.app_name or "", arn)
            if refusal is not None:
                raise StepError(f"metadata proxy refused the role: {refusal}", FinishReason.FAILED)
        return TaskIdentity(
            task_id=a.task_id,
            job_id=a.job_id,
            role_arn=arn,
            ipv4=address,
            mac=str((ctx.record.resources.get(self.name) or {}).get("mac") or "00:00:00:00:00:00"),
            hostname=f"ip-{address.replace('.', '-')}.{region_hostname_suffix(self.host.region)}",
            instance_id=a.task_id,
            instance_type=self.host.instance_type,
            availability_zone=self.host.availability_zone,
            region=self.host.region,
            account_id=account,
            v1_allowed=a.container.imds_v1_allowed,
            ecs_token=self.host.ecs_token(a.task_id),
            provenance=_provenance(ctx),
        )

    async def teardown(self, ctx: LaunchContext) -> None:
        mine = ctx.record.resources.get(self.name)
        async with self.host.wiring.shared():  # a restart re-wiring the task meanwhile would leave its link
            await self.host.service.remove_task(ctx.task_id)  # idempotent
            if mine:
                await asyncio.to_thread(self.host.path.detach, ctx.task_id, mine.get("link"))
        if not mine:
            return
        if mine.get("token_file"):
            self.host.token_file(ctx.task_id).unlink(missing_ok=True)
