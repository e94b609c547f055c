"""What placement knows about each host beyond its capacity: cached images, free IPs, warm ENIs by
security-group set. Kept in memory (agents re-send after a scheduler restart: an unknown digest makes
the scheduler ask for the list), fed by heartbeats; `update` says whether anything placement uses
changed, so an unchanged heartbeat does not wake the scheduling loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from titus_common.protocol import NodeReport

__all__ = ["HostFacts", "HostFactsTable", "sg_key"]


def sg_key(groups: list[str] | tuple[str, ...]) -> str:
    return ",".join(sorted(set(groups)))


@dataclass
class HostFacts:
    images_digest: str = ""
    images: frozenset[str] = frozenset()
    free_ips: int | None = None
    ip_capacity: int | None = None
    warm: dict[str, int] = field(default_factory=dict)  # sg_key → free IPs on that ENI


class HostFactsTable:
    def __init__(self) -> None:
        self.facts: dict[str, HostFacts] = {}

    def get(self, node_id: str) -> HostFacts:
        return self.facts.get(node_id) or HostFacts()

    def update(self, report: NodeReport) -> tuple[bool, bool]:
        """Apply a heartbeat. Returns (changed: something placement uses changed,
        want_images: the digest is new and no list came with it)."""
        f = self.facts.setdefault(report.id, HostFacts())
        changed = False
        if report.cached_images is not None:
            images = frozenset(report.cached_images)
            changed = images != f.images
            f.images, f.images_digest = images, report.cached_images_digest
        want = bool(report.cached_images_digest) and report.cached_images_digest != f.images_digest
        warm = {sg_key(w.security_groups): w.free_ips for w in report.warm_networks}
        if report.free_ips != f.free_ips or warm != f.warm or report.ip_capacity != f.ip_capacity:
            changed = True
            f.free_ips, f.warm, f.ip_capacity = report.free_ips, warm, report.ip_capacity
        return changed, want
