"""Credentials the host needs: its own client certificate, the instance role (aws), task roles.

- the agent's client certificate (docs/trust.md): expired → failed `CertificateExpired` (the agent
  can no longer sync once the scheduler checks it); less than `cert_degraded_fraction` (15 %) of
  its lifetime left → degraded `CertificateNotRotating` (rotation starts at a third: it has been
  failing for a while);
- the instance role (aws provider only): the host's IMDS must answer and name a role whose
  credentials it serves → failed `HostImdsUnreachable` / `InstanceRoleMissing`; task roles are
  assumed with these;
- task roles (the metadata service's credential broker): tasks whose role credentials failed
  `task_failures` (3) times in a row → degraded `TaskCredentialsFailing` (never failed: one job's
  misconfigured role is not a host fault; STS down shows on every such task at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from health.blocking import Worker
from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["CredentialFacts", "CredentialsCheck"]


@dataclass(frozen=True)
class CredentialFacts:
    cert_not_before: float | None = None  # epoch seconds; None: no client certificate (http)
    cert_not_after: float | None = None
    aws: bool = False
    instance_role: str | None = None  # aws: the role IMDS names ("" none); None: not asked
    instance_role_error: str = ""  # aws: why IMDS could not be asked
    task_roles: int = 0  # tasks with a role at the metadata service
    task_roles_failing: int = 0
    first_failure: str = ""


class CredentialsCheck:
    name = "credentials"

    def __init__(
        self,
        facts: Callable[[], CredentialFacts],
        *,
        period: float = 300.0,
        timeout: float = 10.0,
        cert_degraded_fraction: float = 0.15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.facts = facts
        self.period = period
        self.timeout = timeout
        self.cert_degraded_fraction = cert_degraded_fraction
        self.clock = clock
        self._worker = Worker(self.name)

    async def run(self) -> Observation:
        f = await self._worker.call(self.facts)
        now = self.clock()
        evidence: dict[str, EvidenceValue] = {"taskRoles": f.task_roles, "taskRolesFailing": f.task_roles_failing}
        if f.cert_not_after is not None and f.cert_not_before is not None:
            left = f.cert_not_after - now
            lifetime = max(1.0, f.cert_not_after - f.cert_not_before)
            evidence["certRemainingS"] = round(left)
            evidence["certLifetimeS"] = round(lifetime)
            if left <= 0:
                return failed("CertificateExpired", f"the agent's client certificate expired {-left:.0f}s ago",
                              **evidence)
            if left < lifetime * self.cert_degraded_fraction:
                return degraded("CertificateNotRotating",
                                f"the agent's client certificate expires in {left:.0f}s and was not rotated", **evidence)
        if f.aws:
            if f.instance_role_error:
                return failed("HostImdsUnreachable", f.instance_role_error, **evidence)
            evidence["instanceRole"] = f.instance_role or ""
            if not f.instance_role:
                return failed("InstanceRoleMissing", "the instance has no IAM role: task roles cannot be assumed",
                              **evidence)
        if f.task_roles_failing:
            return degraded("TaskCredentialsFailing",
                            f"{f.task_roles_failing} of {f.task_roles} tasks' role credentials keep failing: "
                            f"{f.first_failure}", **evidence)
        return ok("CredentialsOk", **evidence)
