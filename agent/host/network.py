"""The host's networking as one resource (docs/network.md, docs/launch-netns.md): the IP provider
(local or aws), the pool and the wiring shared by every task, control-plane isolation, restore at
start, the check that every running task still has its prepared network namespace, and the GC of
links, rules, ENIs, namespaces and (older agents') sandboxes that no task holds.

Launch steps use `TaskNetworking` (the per-task face: prepare a namespace, wire, unwire); the agent
drives `NetworkResource` through the lifecycle of `agent/host/base.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.checkpoint import TaskCheckpoint
from agent.config import AgentConfig
from agent.host import preflight
from agent.host.base import LiveTasks, launching
from agent.docker_api import LABEL_TASK, Docker, DockerError, DockerUnavailable
from agent.metrics import AgentMetrics
from agent.names import LABEL_ROLE, LABEL_SANDBOX_AGENT, ROLE_SANDBOX, container_name, sandbox_name
from netns import isolation, prepared
from netns.errors import NetworkError
from netns.ipam import PoolConfig, sg_key
from netns.limits import InstanceLimits
from netns.pool import NetworkPool
from netns.providers.aws import AwsConfig, AwsProvider
from netns.providers.base import Provider
from netns.providers.local import LocalProvider, LocalVpc
from netns.eniwatch import EniWatch
from netns.step import HostEniByMac, TaskNetworks, no_host_eni
from netns.wiring import Wiring, netns_name
from titus_common.errors import ConfigError, HostRefused
from titus_common.states import TaskState
from titus_common.protocol import WarmNetwork

__all__ = ["NetworkResource", "TaskNetworking", "isolation_policy", "make_provider", "scheduler_addresses"]

log = logging.getLogger("titus.agent.network")

RUNTIME = "titus"  # the OCI runtime scripts/setup-host.sh registers (scripts/titus-runc)
# Any node's sandbox whose task container is gone is removed once it is this old.
SANDBOX_ORPHAN_AGE = 600.0
MIN_REASSERT_INTERVAL_S = 1.0
MAX_WARM_NETWORKS = 64  # the protocol's bound on warm_networks  # ENI re-assertions on netlink events: at most one per second


@dataclass
class TaskNetworking:
    """What the network launch step needs of the host: prepare a task's namespace, wire it, unwire
    it. `id_map`: the engine's user-namespace remapping (set by NetworkResource.start; None: off)."""

    networks: TaskNetworks
    sandbox_image: str
    netns_dir: Path = prepared.NETNS_ROOT / "default"
    id_map: prepared.IdMap | None = None

    def netns_path(self, task_id: str) -> str:
        return str(self.netns_dir / netns_name(task_id))

    async def prepare(self, netns_path: str) -> None:
        await asyncio.to_thread(prepared.prepare, Path(netns_path), self.id_map)

    async def release_netns(self, netns_path: str) -> None:
        await asyncio.to_thread(prepared.remove, Path(netns_path))

    async def wire(
        self, task_id: str, netns_path: str, groups: list[str], record: dict[str, Any],
        save: Callable[[], Awaitable[None] | None]
    ) -> None:
        await self.networks.setup(task_id, netns_path, groups, record, save)

    async def unwire(self, task_id: str, record: Mapping[str, Any]) -> None:
        await self.networks.teardown(task_id, record)  # idempotent; the IP cools before reuse


def local_vpc_state(config: AgentConfig) -> Path:
    if config.network_local_vpc_state is not None:
        return config.network_local_vpc_state
    return Path("/var/lib/titus/netns") / f"local-vpc-{config.network_cidr.replace('/', '_')}.json"


def make_provider(config: AgentConfig) -> Provider:
    if config.network_provider == "aws":
        return AwsProvider(
            AwsConfig(
                node_id=config.node_id,
                instance_id=config.aws_instance_id,
                instance_type=config.aws_instance_type,
                subnet_id=config.aws_subnet_id,
                region=config.aws_region,
                endpoint_url=config.aws_endpoint_url,
                limits=aws_limits(config),
                sweep_cell=True,
            )
        )
    return LocalProvider(config.node_id, LocalVpc(config.network_cidr, state_path=local_vpc_state(config)))


def aws_limits(config: AgentConfig) -> InstanceLimits | None:
    """Limits resolved at start (agent/host/identity.py) or given; None: the built-in table."""
    if config.aws_max_enis is None or config.aws_ipv4_per_eni is None:
        return None
    return InstanceLimits(config.aws_max_enis, config.aws_ipv4_per_eni)


def default_security_groups(config: AgentConfig) -> tuple[str, ...]:
    """Groups of jobs that name none. aws: configured or resolved at start to the VPC's `default`
    group (agent/host/identity.py), never a placeholder EC2 would reject; local: a pretend name."""
    if config.network_default_security_groups:
        return sg_key(config.network_default_security_groups)
    if config.network_provider == "aws":
        raise ConfigError("network_provider aws needs network_default_security_groups "
                          "(resolved at start from the subnet's VPC, or set it)")
    return ("sg-default",)


def task_networking(config: AgentConfig) -> TaskNetworking:
    """One IP pool and one wiring for the host. With aws, each ENI's host link (found by MAC) gets its
    own routing table; the local provider's ENIs have no link (host routing only)."""
    provider = make_provider(config)
    lim = provider.limits
    pool = NetworkPool(
        provider,
        PoolConfig(
            max_enis=lim.container_enis,
            ips_per_eni=lim.container_ips_per_eni,
            default_security_groups=default_security_groups(config),
        ),
        checkpoint_path=config.state_dir / "ipam.json",
        acquire_timeout_s=config.network_acquire_timeout_seconds,
    )
    host_eni_for = (
        HostEniByMac(timeout_s=config.network_eni_link_timeout_seconds, mtu=config.network_eni_mtu)
        if config.network_provider == "aws" else no_host_eni
    )
    networks = TaskNetworks(
        pool, Wiring(owner=config.node_id), host_eni_for=host_eni_for,
        unmanaged_dir=config.network_unmanaged_dir if config.network_provider == "aws" else None,
    )
    return TaskNetworking(networks, config.sandbox_image, netns_dir(config.node_id))


def netns_dir(node_id: str) -> Path:
    """This agent's prepared namespaces: one directory per node id (several agents share test hosts)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in node_id).lstrip(".") or "_"
    return prepared.NETNS_ROOT / safe


def scheduler_addresses(scheduler_url: str) -> list[str]:
    """The scheduler's IPv4 addresses, resolved (blocking: call from a thread). Loopback is left out:
    a task has its own loopback and cannot reach the host's."""
    host = urlsplit(scheduler_url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        log.warning("cannot resolve the scheduler host %r for control-plane isolation: %s", host, e)
        return []
    found = {str(info[4][0]) for info in infos}
    return sorted(a for a in found if not ipaddress.IPv4Address(a).is_loopback)


def isolation_policy(config: AgentConfig) -> isolation.IsolationPolicy:
    """Tasks reach neither the host's own ports (but the allowed ones) nor the scheduler nor the
    operator's control-plane CIDRs; with isolation off, only the metadata drop stays (a task must
    never reach the host's real IMDS). Blocking (resolves the scheduler's name)."""
    cidrs = [f"{a}/32" for a in scheduler_addresses(config.scheduler_url)]
    cidrs += [str(ipaddress.IPv4Network(c)) for c in config.network_control_plane_cidrs]
    return isolation.IsolationPolicy(
        allowed_host_tcp_ports=tuple(config.network_allowed_host_tcp_ports),
        allowed_host_udp_ports=tuple(config.network_allowed_host_udp_ports),
        control_plane_cidrs=tuple(dict.fromkeys(cidrs)),
        isolate=config.network_isolation,
    )


class NetworkResource:
    """The lifecycle of the host's networking (agent/host/base.py). `on_lost(task_id, message)` is
    called for a running task whose sandbox died (the agent ends that task `crashed`)."""

    name = "network"

    def __init__(
        self,
        config: AgentConfig,
        docker: Docker,
        metrics: AgentMetrics,
        on_lost: Callable[[str, str], None],
        tasks: TaskNetworking | None = None,
    ) -> None:
        self.config = config
        self.docker = docker
        self.metrics = metrics
        self.on_lost = on_lost
        self.tasks = tasks or task_networking(config)
        self.preflight_findings: list[preflight.Finding] = []
        self._watch: EniWatch | None = None
        self._watch_repairs = 0
        self._watcher: asyncio.Task[None] | None = None

    def placement_facts(self) -> tuple[int, int, list[WarmNetwork]]:
        """(ip capacity, free IPs, warm ENIs by security-group set) for the heartbeat."""
        pool = self.tasks.networks.pool
        capacity, free, warm = pool.pool.placement_facts(pool.clock())
        default = pool.config.default_security_groups
        if default in warm:  # a job that names no groups gets the default ones: report them as "none" too
            warm[()] = warm[default]
        ranked = sorted(warm.items(), key=lambda kv: -kv[1])[:MAX_WARM_NETWORKS]
        return capacity, max(0, free), [WarmNetwork(security_groups=list(g), free_ips=min(n, 4096)) for g, n in ranked]

    def snapshot(self) -> dict[str, Any]:
        doc = self.tasks.networks.snapshot()
        doc["preflight"] = [{"check": f.check, "refuse": f.refuse, "message": f.message}
                            for f in self.preflight_findings]
        if self._watch is not None:  # aws: the netlink watch of the ENIs (netns/eniwatch.py)
            doc["eni_watch"] = {"alive": self._watch.alive(), "events": self._watch.events_seen,
                                "drift_events": self._watch.drift_events, "repairs": self._watch_repairs}
        return doc

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        await self._preflight()
        # Tasks not finished keep their addresses; the rest is reconciled. A corrupt ipam.json is a
        # StateCorrupt, an EC2 error a ProviderError: both refuse the start with their message.
        report = await self.tasks.networks.restore(
            {r.task_id: r.resources["network"] for r in records
             if not r.state.terminal and isinstance(r.resources.get("network"), dict)}
        )
        log.info("network pool restored: kept %d, adopted %d, released %d, orphans %s",
                 len(report.kept), len(report.adopted), len(report.released), sorted(report.orphan_tasks))
        await self._mirror_engine_userns()
        try:
            policy = await asyncio.to_thread(isolation_policy, self.config)
            await asyncio.to_thread(isolation.apply, policy)
        except NetworkError as e:  # not enforceable: do not run tasks without it
            raise HostRefused(f"control-plane isolation: {e.message}") from None
        log.info("network isolation applied (nftables table inet %s): host ports %s, host ports allowed %s, "
                 "control plane dropped %s, metadata addresses dropped", isolation.TABLE,
                 "closed" if policy.isolate else "OPEN (--no-network-isolation)",
                 list(policy.allowed_host_tcp_ports), list(policy.control_plane_cidrs))
        with contextlib.suppress(Exception):
            await self._collect_sandboxes({r.task_id for r in records})
        if self.config.network_provider == "aws":
            self._start_watch()

    def _start_watch(self) -> None:
        """Re-assert the ENIs within about a second of a network manager undoing them (netns/eniwatch.py)."""
        loop = asyncio.get_running_loop()
        drifted = asyncio.Event()
        networks = self.tasks.networks

        def on_drift() -> None:  # called from the watch thread
            loop.call_soon_threadsafe(drifted.set)

        self._watch = EniWatch(None, lambda: networks.owned, on_drift)
        self._watch.start()

        async def repair() -> None:
            while True:
                await drifted.wait()
                drifted.clear()
                self._watch_repairs += 1
                await self._reassert_enis()
                await asyncio.sleep(MIN_REASSERT_INTERVAL_S)  # a flapping manager costs one repair a second

        self._watcher = asyncio.create_task(repair(), name="eni-reassert")

    async def _mirror_engine_userns(self) -> None:
        """Prepared namespaces are owned by a user namespace with the engine's remapping (the
        container joins it): read that mapping once. Without remapping, plain network namespaces."""
        try:
            info = await self.docker.info()
        except (DockerUnavailable, DockerError) as e:
            raise HostRefused(f"cannot ask the engine whether it remaps user namespaces: {e}") from None
        runtimes = info.get("Runtimes") or {}
        if RUNTIME not in runtimes:
            raise HostRefused(f"the engine has no {RUNTIME!r} OCI runtime (run scripts/setup-host.sh): "
                              "tasks could not join their prepared network namespaces")
        if any("name=userns" in str(o) for o in info.get("SecurityOptions") or []):
            try:
                self.tasks.id_map = await asyncio.to_thread(prepared.engine_id_map)
            except NetworkError as e:
                raise HostRefused(f"user-namespace remapping: {e.message}") from None

    async def reconcile(self, tasks: LiveTasks) -> None:
        """A running task whose prepared namespace was unpinned (deleted from outside) or whose
        older-style sandbox is gone has lost its network; each ENI's link and table re-asserted."""
        await self._reassert_enis()
        legacy = [t for t, r in tasks.items() if r.outputs.network is not None and r.outputs.network.sandbox_id]
        alive: set[Any] = set()
        if legacy:
            try:
                sandboxes = await self._list_sandboxes()
            except (DockerUnavailable, DockerError) as e:
                log.warning("reconcile: cannot list network sandboxes: %s", e)
                return
            alive = {(c.get("Labels") or {}).get(LABEL_TASK) for c in sandboxes if c.get("State") == "running"}
        for task_id, record in tasks.items():
            net = record.outputs.network
            if record.state is TaskState.STARTED and net is not None and net.sandbox_id and task_id not in alive:
                self.on_lost(task_id, lost_message(task_id))
        self._check_namespaces(tasks)

    def _check_namespaces(self, tasks: LiveTasks) -> None:
        """A running task whose prepared namespace was unpinned (`ip netns delete`-style, from
        outside) has lost its network: teardown, GC and re-adoption could no longer reach it. One
        stat per task: run at every reconcile and every GC round (docs/launch-netns.md)."""
        for task_id, record in tasks.items():
            net = record.outputs.network
            if record.state is not TaskState.STARTED or net is None or net.sandbox_id:
                continue
            if not prepared.is_prepared(Path(net.netns_path)):
                self.on_lost(task_id, f"the task's network namespace {net.netns_path} was removed: "
                                      "the task lost its network")

    async def gc(self, tasks: LiveTasks) -> None:
        """Leaks: this agent's links and rules of tasks it no longer holds, IPs held for no task, and
        sandboxes nobody needs. Never under a launch's feet: skipped while one is wiring."""
        self._check_namespaces(tasks)
        if launching(tasks):
            return
        try:
            report = await self.tasks.networks.collect_leaks(set(tasks))
            for kind, found in (("link", report.wiring.links), ("rule", report.wiring.rules),
                                ("namespace", report.wiring.namespaces), ("eni", report.enis)):
                if found:
                    self.metrics.network_leaks_removed.labels(kind).inc(len(found))
            if report.wiring.links or report.wiring.rules or report.enis:
                log.warning("network leaks removed: links %s, rules %s, ENIs %s",
                            report.wiring.links, report.wiring.rules, report.enis)
            namespaces = await asyncio.to_thread(
                prepared.collect, self.tasks.netns_dir, {netns_name(t) for t in tasks})
            if namespaces:
                self.metrics.network_leaks_removed.labels("namespace").inc(len(namespaces))
                log.warning("leaked network namespaces removed: %s", namespaces)
            await self._collect_sandboxes(set(tasks))
        except Exception as e:  # never let the agent's loop die
            log.warning("network GC failed: %s", e)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._watch is not None:
            await asyncio.to_thread(self._watch.stop)
        await self.tasks.networks.close()

    async def _preflight(self) -> None:
        """agent/host/preflight.py: refuse (aws) or warn (local) on a host that cannot forward."""
        if not self.config.network_preflight:
            return
        try:
            info = await self.docker.info()
        except (DockerUnavailable, DockerError):
            info = None
        facts = await asyncio.to_thread(preflight.gather, Path("/proc"), info)
        self.preflight_findings = preflight.judge(facts)
        refusals = [f for f in self.preflight_findings if f.refuse and self.config.network_provider == "aws"]
        for f in self.preflight_findings:
            if f not in refusals:
                log.warning("host pre-flight %s: %s", f.check, f.message)
        if refusals:
            raise HostRefused("host pre-flight: " + "; ".join(f"{f.check}: {f.message}" for f in refusals))

    async def _reassert_enis(self) -> None:
        """Every reconcile: the ENI links and tables the agent owns and the wired tasks' own rules,
        re-applied (networkd, ec2-net-utils or cloud-init may flush them, an operator may delete a
        rule); drift is logged and shown in `titusctl node net`."""
        try:
            drift = await self.tasks.networks.reassert_eni_tables()
        except Exception as e:  # never let the agent's loop die
            log.warning("re-asserting ENI tables failed: %s", e)
            return
        for eni_id, found in drift.items():  # "tasks": the tasks' `to` rules (netns/taskrules.py)
            log.warning("%s had drifted (restored): %s", "task rules" if eni_id == "tasks" else f"ENI {eni_id}",
                        "; ".join(found))

    async def _list_sandboxes(self) -> list[dict[str, Any]]:
        return await self.docker.list_containers(f"{LABEL_SANDBOX_AGENT}={self.config.node_id}", f"{LABEL_ROLE}={ROLE_SANDBOX}")

    async def _collect_sandboxes(self, held: set[str]) -> None:
        """Remove this node's sandboxes of tasks it does not hold, and any node's sandbox whose task
        container does not exist and that is older than SANDBOX_ORPHAN_AGE (its agent is gone or the
        task was removed behind its back: the namespace serves nobody)."""
        containers = await self.docker.list_containers(LABEL_TASK)
        names = {n.lstrip("/") for c in containers for n in c.get("Names") or []}
        now = time.time()
        for c in containers:
            labels = c.get("Labels") or {}
            if labels.get(LABEL_ROLE) != ROLE_SANDBOX:
                continue
            task_id = str(labels.get(LABEL_TASK))
            if labels.get(LABEL_SANDBOX_AGENT) == self.config.node_id:
                leaked = task_id not in held
            else:
                leaked = container_name(task_id) not in names and now - float(c.get("Created", now)) > SANDBOX_ORPHAN_AGE
            if leaked:
                log.warning("removing the leaked network sandbox %s of task %s", str(c["Id"])[:12], task_id)
                await self.docker.remove(str(c["Id"]))
                self.metrics.network_leaks_removed.labels("sandbox").inc()


def lost_message(task_id: str) -> str:
    return f"the task's network sandbox {sandbox_name(task_id)} died: the task lost its network"
