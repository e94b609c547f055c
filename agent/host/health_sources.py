"""What the network, imds, leaks, clock and credentials checks (health/checks/) read from this
agent: plain facts gathered on the check's own thread (health/blocking.py), never the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from agent.config import AgentConfig
from agent.host.metadata import MetadataResource
from agent.host.network import NetworkResource
from agent.node_credentials import NodeCredentials
from health import Check
from health.checks.clock import ClockCheck
from health.checks.credentials import CredentialFacts, CredentialsCheck
from health.checks.leaks import LeaksCheck
from agent.host.metadata_probe import PROBE_TASK_ID, MetadataProbe
from health.checks.eni import EniCheck, EniLink, TaskRuleFinding
from health.checks.forward import ForwardCheck, ForwardFacts
from health.checks.network import MetadataCheck, MetadataFacts, NetworkCheck, NetworkFacts
from netns import inspect
from netns.errors import NetworkError, ProviderUnavailable
from netns.wiring import HOST_IF_PREFIX
from netns.providers.ec2_identity import read_instance_role

__all__ = ["HostSources", "credential_facts", "eni_link", "eni_links", "forward_facts", "host_checks", "leaks_removed",
           "metadata_facts", "network_facts", "task_rule_findings"]

log = logging.getLogger("titus.agent.health")

LEAKS_METRIC = "titus_agent_network_leaks_removed_total"
TASK_ROLE_FAILURES = 3
# A task rule the agent re-added is reported this long: a deletion repaired within a second still
# reaches the scheduler (heartbeats carry the latest result only) and the operator.
TASK_RULE_REPAIR_HOLD_S = 60.0


@dataclass
class HostSources:
    """The agent's parts the host checks read (None: that part is off on this agent)."""

    leaks: Counter  # titus_agent_network_leaks_removed{kind}
    unknown_containers: Callable[[], int]
    skew: Callable[[], float | None]
    network: NetworkResource | None = None
    metadata: MetadataResource | None = None
    credentials: NodeCredentials | None = None


def _ip_forward(proc: Path = Path("/proc")) -> bool | None:
    try:
        return (proc / "sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return None


def network_facts(config: AgentConfig, network: NetworkResource) -> NetworkFacts:
    """On the event loop: the pool's in-memory state, and one /proc/sys read."""
    snap: dict[str, Any] = network.snapshot()
    enis = snap.get("enis") or []
    counts = snap.get("counts") or {}
    backoff = snap.get("provider_backoff")
    return NetworkFacts(
        provider=config.network_provider, ip_forward=_ip_forward(),
        provider_errors={str(k): str(v) for k, v in (snap.get("errors") or {}).items()},
        provider_backoff_s=float(backoff) if isinstance(backoff, (int, float)) else 0.0,
        enis=len(enis), free_ips=int(counts.get("free", 0)),
    )


def metadata_facts(metadata: MetadataResource, probe: MetadataProbe | None = None) -> MetadataFacts:
    """On the check's thread: pinned, the service's loop answers, then the self-probe (when given)."""
    pinned = metadata.host.path.pinned()
    try:
        served = metadata.host.service.snapshot(timeout=3.0)
    except Exception as e:  # RuntimeError (not started), TimeoutError (its loop is stuck), …
        return MetadataFacts(pinned, False, error=f"{type(e).__name__}: {e}"[:200])
    tasks = len([t for t in served if t != PROBE_TASK_ID])
    if not pinned or probe is None:
        return MetadataFacts(pinned, True, tasks=tasks)
    r = probe.run()
    return MetadataFacts(pinned, True, tasks=tasks, probe_ok=r.ok, probe_step=r.step, probe_error=r.error,
                         probe_ms=r.elapsed_ms)


def forward_facts(config: AgentConfig, network: NetworkResource) -> ForwardFacts:
    """On the check's thread: the host's nftables ruleset and iptables-legacy's filter table
    (netns/inspect.py); either unreadable makes the facts unreadable."""
    host = network.tasks.networks.wiring.host_netns
    try:
        return ForwardFacts(config.network_provider, inspect.nft_ruleset(host),
                            legacy=inspect.iptables_legacy_filter(host))
    except NetworkError as e:
        return ForwardFacts(config.network_provider, None, e.message)


def eni_link(s: inspect.EniLinkState, rules_checked: int = 0) -> EniLink:
    problems = tuple(s.problems())
    mtu_only = bool(problems) and s.present and s.up and s.gateway_route and s.default_route
    return EniLink(s.eni_id, s.ifname, problems, mtu_only, rules_checked)


async def eni_links(network: NetworkResource) -> list[EniLink]:
    """The pool's ENIs' links and tables, read through netns (`TaskNetworks.eni_states`). Drift found
    is first re-asserted as every reconcile does (a network manager's flush the agent repairs in a
    second is no host fault): only what is still broken after that is reported."""
    networks = network.tasks.networks
    states = await networks.eni_states()
    if any(s.problems() for s in states):
        await networks.reassert_eni_tables()
        states = await networks.eni_states()
    rules = networks.wired.rules()
    return [eni_link(s, sum(1 for r in rules if r.table == s.table)) for s in states]


async def task_rule_findings(network: NetworkResource,
                             hold_s: float = TASK_RULE_REPAIR_HOLD_S) -> list[TaskRuleFinding]:
    """The wired tasks' own rules (netns/taskrules.py): missing ones are re-added first (as every
    reconcile does); reported are those still missing and those re-added in the last `hold_s`
    seconds (by the netlink watch, a reconcile, `reassert-network` or here)."""
    networks = network.tasks.networks
    if await networks.missing_task_rules():
        await networks.readd_task_rules()
    still = await networks.missing_task_rules()
    missing = {(m.task_id, m.rule.describe()) for m in still}
    readded = {(m.task_id, m.rule.describe()) for m in networks.recent_rule_repairs(hold_s)} - missing
    return ([TaskRuleFinding(t, r, False) for t, r in sorted(missing)]
            + [TaskRuleFinding(t, r, True) for t, r in sorted(readded)])


def leaks_removed(counter: Counter) -> dict[str, float]:
    """The counter's totals by kind (its own lock: safe from any thread)."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name == LEAKS_METRIC:
                out[sample.labels.get("kind", "?")] = float(sample.value)
    return out


def credential_facts(config: AgentConfig, sources: HostSources) -> CredentialFacts:
    before = after = None
    if sources.credentials is not None:
        cert = sources.credentials.certificate()
        if cert is not None:
            before, after = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    role: str | None = None
    role_error = ""
    aws = config.network_provider == "aws"
    if aws:
        try:
            role = read_instance_role(config.aws_imds_endpoint)
        except ProviderUnavailable as e:
            role_error = str(e)[:200]
    roles = failing = 0
    first = ""
    if sources.metadata is not None:
        try:
            served = sources.metadata.host.service.snapshot(timeout=3.0)
        except Exception:  # the imds check reports a service that does not answer
            served = {}
        for task in served.values():
            creds = task.get("credentials") or {}
            if not task.get("role_arn"):
                continue
            roles += 1
            if int(creds.get("failures") or 0) >= TASK_ROLE_FAILURES:
                failing += 1
                err = creds.get("last_error") or {}
                first = first or f"{err.get('code', '?')}: {err.get('message', '')}"[:160]
    return CredentialFacts(before, after, aws, role, role_error, roles, failing, first)


def host_checks(config: AgentConfig, sources: HostSources) -> list[Check]:
    """The checks of the host's own state beyond the engine, registry, disk and pressure."""
    checks: list[Check] = [
        ClockCheck(sources.skew, period=config.health_clock_seconds),
        LeaksCheck(lambda: leaks_removed(sources.leaks), sources.unknown_containers,
                   period=config.health_leaks_seconds),
        CredentialsCheck(lambda: credential_facts(config, sources), period=config.health_credentials_seconds),
    ]
    network, metadata = sources.network, sources.metadata
    period = config.health_network_seconds
    if network is not None:
        checks += [
            NetworkCheck(lambda: network_facts(config, network), period=period),
            EniCheck(lambda: eni_links(network), period=period, task_rules=lambda: task_rule_findings(network)),
            ForwardCheck(lambda: forward_facts(config, network), prefix=HOST_IF_PREFIX, period=period),
        ]
    if metadata is not None:
        probe = MetadataProbe(metadata.host, config.node_id) if config.health_metadata_probe else None
        checks.append(MetadataCheck(lambda: metadata_facts(metadata, probe), period=period))
    return checks
