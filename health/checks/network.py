"""The host's networking as the datapath needs it (`network`), and the metadata namespace (`imds`).

`network` reads `NetworkFacts` the agent gathers on its event loop (in-memory pool state and one
`/proc/sys` read; agent/host/health_sources.py):
- `net.ipv4.ip_forward` off: tasks' traffic cannot leave → failed `IpForwardOff` where the
  provider needs forwarding to work at all (aws; the agent's pre-flight refuses to start there
  too), degraded on the local provider (as the pre-flight warns);
- the provider's standing errors (the ENI/IP pool's last error per security-group set, e.g. EC2
  throttling or an ENI limit): degraded `ProviderErrors` with the first message;
- the provider backing off (EC2 throttled): degraded `ProviderBackoff`.

`imds` reads `MetadataFacts` on the check's own thread: the metadata namespace is pinned (`/run/netns/titusmd-…`) and the
metadata service's loop answers a snapshot within its timeout; either missing → failed
(`MetadataNamespaceGone`, `MetadataServiceDown`: tasks' credentials stop); then the self-probe
(agent/host/metadata_probe.py): a throw-away namespace attached like a task, IMDSv2 token and
`instance-id` asked from inside it; a wrong or missing answer → failed `MetadataProbeFailed` with the
step it stopped at (remediation `restart-metadata`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from health.blocking import Worker
from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["MetadataCheck", "MetadataFacts", "NetworkCheck", "NetworkFacts"]


@dataclass(frozen=True)
class NetworkFacts:
    provider: str  # "local" | "aws"
    ip_forward: bool | None  # None: unreadable
    provider_errors: Mapping[str, str] = field(default_factory=dict)  # security-group set → message
    provider_backoff_s: float = 0.0  # > 0 while the provider waits after throttling
    enis: int = 0
    free_ips: int = 0


@dataclass(frozen=True)
class MetadataFacts:
    namespace_pinned: bool
    service_answers: bool
    tasks: int = 0  # tasks the metadata service serves
    error: str = ""
    probe_ok: bool | None = None  # None: no self-probe ran
    probe_step: str = ""
    probe_error: str = ""
    probe_ms: float = 0.0


class NetworkCheck:
    name = "network"

    def __init__(self, facts: Callable[[], NetworkFacts], *, period: float = 30.0, timeout: float = 10.0) -> None:
        self.facts = facts
        self.period = period
        self.timeout = timeout

    async def run(self) -> Observation:
        f = self.facts()
        evidence: dict[str, EvidenceValue] = {
            "provider": f.provider, "enis": f.enis, "freeIps": f.free_ips, "providerErrors": len(f.provider_errors),
        }
        if f.ip_forward is not None:
            evidence["ipForward"] = f.ip_forward
        if f.ip_forward is False:
            message = "net.ipv4.ip_forward is 0: tasks' traffic is not forwarded"
            return (failed if f.provider == "aws" else degraded)("IpForwardOff", message, **evidence)
        if f.provider_errors:
            groups, message = sorted(f.provider_errors.items())[0]
            evidence["firstError.groups"] = groups
            return degraded("ProviderErrors", f"{f.provider} provider: {message}", **evidence)
        if f.provider_backoff_s > 0:
            evidence["backoffS"] = round(f.provider_backoff_s, 1)
            return degraded("ProviderBackoff", f"{f.provider} provider backing off {f.provider_backoff_s:.0f}s",
                            **evidence)
        return ok("NetworkOk", **evidence)


class MetadataCheck:
    name = "imds"

    def __init__(self, facts: Callable[[], MetadataFacts], *, period: float = 30.0, timeout: float = 10.0) -> None:
        self.facts = facts
        self.period = period
        self.timeout = timeout
        self._worker = Worker(self.name)

    async def run(self) -> Observation:
        f = await self._worker.call(self.facts)
        evidence: dict[str, EvidenceValue] = {"namespacePinned": f.namespace_pinned,
                                              "serviceAnswers": f.service_answers, "tasks": f.tasks}
        if not f.namespace_pinned:
            return failed("MetadataNamespaceGone", "the metadata namespace is not pinned: tasks' metadata "
                                                   "links have nowhere to go", **evidence)
        if not f.service_answers:
            return failed("MetadataServiceDown", f"the metadata service does not answer{': ' + f.error if f.error else ''}",
                          **evidence)
        if f.probe_ok is not None:
            evidence |= {"probeOk": f.probe_ok, "probeStep": f.probe_step, "probeMs": f.probe_ms}
            if not f.probe_ok:
                evidence["probeError"] = f.probe_error[:200]
                return failed("MetadataProbeFailed", f"a task-side request to the metadata service failed at "
                                                     f"{f.probe_step}: {f.probe_error}", **evidence)
        return ok("MetadataOk", **evidence)
