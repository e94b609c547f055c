"""What a check is and what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from titus_common.protocol import EvidenceValue, HealthStatus

__all__ = ["Check", "Observation", "degraded", "failed", "ok"]


@dataclass(frozen=True)
class Observation:
    """One run's verdict. `reason` is CamelCase (e.g. EngineDown); evidence is a small flat map."""

    status: HealthStatus
    reason: str
    message: str = ""
    evidence: Mapping[str, EvidenceValue] = field(default_factory=dict)


def ok(reason: str, message: str = "", /, **evidence: EvidenceValue) -> Observation:
    return Observation(HealthStatus.OK, reason, message, evidence)


def degraded(reason: str, message: str = "", /, **evidence: EvidenceValue) -> Observation:
    return Observation(HealthStatus.DEGRADED, reason, message, evidence)


def failed(reason: str, message: str = "", /, **evidence: EvidenceValue) -> Observation:
    return Observation(HealthStatus.FAILED, reason, message, evidence)


class Check(Protocol):
    """A health check. `run` may take at most `timeout` seconds; it is called every `period`."""

    name: str
    period: float
    timeout: float

    async def run(self) -> Observation: ...
