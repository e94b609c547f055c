"""The host-wide half of the metadata/credential proxy (docs/imds.md), built once at agent start: the
metadata namespace and its per-task links (netns/metadata.py), the HTTP service with the STS
credential broker on its own thread (imds/), the IMDSv2 token key and the ECS-endpoint token files.

The metadata launch step uses `HostMetadata`; the agent drives `MetadataResource` through the
lifecycle of agent/host/base.py, and the `restart-metadata` remediation through its `restart`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.checkpoint import TaskCheckpoint
from agent.config import AgentConfig
from agent.host.base import LiveTasks, launching
from agent.host.gate import Gate
from agent.metrics import AgentMetrics
from imds.credentials import CredentialBroker
from imds.service import MetadataService, WorkloadJwt
from imds.thread import ServiceThread
from netns.errors import NetworkError
from netns.metadata import MetadataNetwork
from titus_common.errors import ConfigError, HostRefused, TitusError
from titus_common.files import atomic_write_bytes
from titus_common.iam_policy import IamPolicy, load_iam_policy
from titus_common.states import TaskState

__all__ = ["HostMetadata", "MetadataResource", "RestartIncomplete", "load_or_create_key", "restart_summary"]

log = logging.getLogger("titus.agent.imds")

KEY_FILE = "imds-token.key"
PROBE_TASK_ID = "titus-health-probe"  # the metadata self-probe's task id (agent/host/metadata_probe.py)


def load_or_create_key(state_dir: Path) -> bytes:
    """The key that signs IMDSv2 tokens and derives ECS tokens: kept across restarts, so a token a
    task holds stays valid when the agent restarts. Root-only."""
    path = state_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, key, mode=0o600)
        return key
    if len(key) < 32:
        raise ValueError(f"{path}: a token key must be at least 32 bytes, found {len(key)}; delete it to make a new one")
    return key


@dataclass
class HostMetadata:
    service: ServiceThread
    path: MetadataNetwork
    token_dir: Path
    key: bytes
    region: str
    availability_zone: str
    instance_type: str
    sts_endpoint_url: str | None
    account_id: str | None = None
    # The IAM role grants (titus_common/iam_policy.py), re-checked before a role is handed out.
    iam_policy: IamPolicy = field(default_factory=lambda: IamPolicy(enforce=False))
    _account_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Shared by the metadata step around a task's wiring and teardown, exclusive for all of
    # `MetadataResource.restart`: a launch never attaches to a namespace the restart is replacing,
    # and the restart sees every task whose metadata step is done.
    wiring: Gate = field(default_factory=Gate)

    def ecs_token(self, task_id: str) -> str:
        return hmac.new(self.key, b"ecs-endpoint:" + task_id.encode(), hashlib.sha256).hexdigest()

    def token_file(self, task_id: str) -> Path:
        return self.token_dir / f"{task_id}.token"

    def write_token_file(self, task_id: str) -> Path:
        # World-readable on purpose: the task's user is a remapped uid; the directory is root-only
        # and the file is reachable only through the task's own read-only bind.
        self.token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.token_file(task_id)
        atomic_write_bytes(path, self.ecs_token(task_id).encode(), mode=0o444)
        return path

    async def account(self) -> str:
        """The account of bare role names: configured, else asked of STS once."""
        async with self._account_lock:
            if self.account_id is None:
                self.account_id = await asyncio.to_thread(self._caller_account)
            return self.account_id

    def _caller_account(self) -> str:
        import boto3

        sts = boto3.session.Session().client("sts", endpoint_url=self.sts_endpoint_url, region_name=self.region)
        account = str(sts.get_caller_identity().get("Account", ""))
        if not (len(account) == 12 and account.isdigit()):
            raise ValueError(f"STS GetCallerIdentity gave no usable account id ({account!r})")
        return account


def host_metadata(
    config: AgentConfig, registry: CollectorRegistry, workload_jwt: WorkloadJwt | None = None
) -> HostMetadata:
    """Refuses the start (ConfigError) on an unreadable token key or IAM role policy."""
    try:
        key = load_or_create_key(config.state_dir)
    except (OSError, ValueError) as e:  # the token key file: refuse the start, with the cause
        raise ConfigError(f"metadata proxy: {e}") from None
    broker = CredentialBroker(endpoint_url=config.aws_sts_endpoint_url, region=config.aws_region)
    service = MetadataService(broker, key, registry=registry, workload_jwt=workload_jwt)
    return HostMetadata(
        service=ServiceThread(service),
        path=MetadataNetwork(owner=config.node_id),
        token_dir=config.imds_token_dir,
        key=key,
        region=config.aws_region,
        availability_zone=config.aws_availability_zone or f"{config.aws_region}a",
        instance_type=config.aws_instance_type or config.labels.get("instanceType", "local"),
        sts_endpoint_url=config.aws_sts_endpoint_url,
        account_id=config.aws_account_id,
        iam_policy=load_iam_policy(config.iam_policy),
    )



class MetadataResource:
    """The metadata namespace and service. Tasks' metadata links outlive the agent (its restart must
    not cut a task's credentials); listeners re-open through the step's `readopt`."""

    name = "imds"

    def __init__(self, config: AgentConfig, metrics: AgentMetrics, workload_jwt: WorkloadJwt | None = None) -> None:
        self.metrics = metrics
        self.host = host_metadata(config, metrics.registry, workload_jwt)
        # task → the `tm…` ifindex its listeners were last opened for by `restart` (else its record's).
        self._bound_ifindex: dict[str, object] = {}

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        try:
            await asyncio.to_thread(self.host.path.ensure)
        except NetworkError as e:
            raise HostRefused(f"metadata namespace: {e.message}") from None
        self.host.service.start()

    async def reconcile(self, tasks: LiveTasks) -> None:
        return None

    async def gc(self, tasks: LiveTasks) -> None:
        """Metadata links of tasks the agent no longer holds. Skipped while a launch is wiring."""
        for gone in set(self._bound_ifindex) - set(tasks):
            del self._bound_ifindex[gone]
        if launching(tasks):
            return
        try:
            # The imds check's self-probe (agent/host/metadata_probe.py) plays a task: its link stays.
            leaked = await asyncio.to_thread(self.host.path.gc, set(tasks) | {PROBE_TASK_ID})
        except Exception as e:  # never let the agent's loop die
            log.warning("metadata link GC failed: %s", e)
            return
        if leaked:
            self.metrics.network_leaks_removed.labels("metadata_link").inc(len(leaked))
            log.warning("leaked metadata links removed: %s", leaked)

    async def stop(self) -> None:
        await asyncio.to_thread(self.host.service.stop)

    async def restart(self, tasks: Callable[[], LiveTasks]) -> str:
        """The `restart-metadata` remediation; returns its one-line result. Safe to repeat.

        1. the namespace: adopted when pinned, else created (its old one, if listeners still hold it,
           goes when they close below);
        2. the service: restarted only when it does not answer (a restart drops every task's open
           connections and cached credentials: not worth it for a service that answers);
        3. every started task with a metadata link: attached again (a stale `imds0` whose `tm…` is in
           a replaced namespace is re-made) and, when its link is new or the service is, served on
           new listeners with the identity it had. A task's failure goes in the result, never stops
           the others; any failure raises `RestartIncomplete` with that result. Serialised with launches' metadata steps by the `wiring` gate."""
        async with self.host.wiring.exclusive():
            was_pinned = await asyncio.to_thread(self.host.path.pinned)
            try:
                await asyncio.to_thread(self.host.path.ensure)
            except NetworkError as e:
                raise RuntimeError(f"metadata namespace: {e.message}") from None
            restarted = await asyncio.to_thread(self.host.service.restart_unless_answering)
            served = set(await self.host.service.snapshot_async())
            rewired, kept, failures = 0, 0, []
            for task_id, record in sorted(tasks().items()):
                try:
                    done = await self._rewire(task_id, record, served, fresh=restarted or not was_pinned)
                except Exception as e:  # netlink, sockets, the service: this task only
                    failures.append(f"{task_id}: {getattr(e, 'message', None) or e}")
                    continue
                if done is not None:
                    rewired, kept = rewired + done, kept + (not done)
        result = restart_summary(not was_pinned, restarted, rewired, kept, failures)
        log.warning("restart-metadata: %s", result)
        if failures:  # the action's outcome is `failed` (counts toward a drain), with the same line
            raise RestartIncomplete(result)
        return result

    async def _rewire(self, task_id: str, record: TaskCheckpoint, served: set[str], fresh: bool) -> bool | None:
        """True: re-wired and served again; False: link and listeners kept; None: not a task to re-wire."""
        net, link = record.outputs.network, (record.resources.get("imds") or {}).get("link")
        ending = record.reason is not None or record.state not in (TaskState.START_INITIATED, TaskState.STARTED)
        if not link or net is None or ending:
            return None  # no metadata link, or its outcome decided: its teardown removes the link
        if self.host.service.served(task_id) is None:
            if record.state is TaskState.STARTED:
                raise RuntimeError("never served by this agent: no identity to serve it again with")
            return None  # a launch whose metadata step failed: its teardown comes
        new = await asyncio.to_thread(self.host.path.attach, task_id, net.netns_path, net.address,
                                      replace_stale_peer=True)
        # SO_BINDTODEVICE holds an ifindex: listeners opened for another `tm…` no longer match.
        bound = self._bound_ifindex.get(task_id, link.get("meta_ifindex"))
        if not fresh and task_id in served and new.get("meta_ifindex") == bound:
            return False
        identity = self.host.service.served(task_id)
        assert identity is not None
        imds, ecs = await asyncio.to_thread(self.host.path.listeners, task_id, identity.role_arn is not None)
        await self.host.service.serve_again(task_id, imds, ecs)
        self._bound_ifindex[task_id] = new.get("meta_ifindex")
        return True


class RestartIncomplete(TitusError):
    """`restart-metadata` ran to the end, but some task could not be re-wired (the message says which)."""


def restart_summary(namespace_created: bool, service_restarted: bool, rewired: int, kept: int,
                    failures: Sequence[str]) -> str:
    """The one line `restart-metadata` reports (the host's remediation history keeps 256 chars)."""
    parts = [
        "metadata namespace re-created" if namespace_created else "metadata namespace adopted",
        "service restarted (it did not answer)" if service_restarted else "service answered (kept)",
        f"{rewired} task(s) re-wired, {kept} unchanged",
    ]
    if failures:
        parts.append(f"{len(failures)} failed: " + "; ".join(failures))
    return ", ".join(parts)
