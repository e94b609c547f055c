"""The host quality tracker: a host whose launches crash (the platform's fault, `crashed`) markedly
more than its peers' is quarantined even when every health check passes — this catches the problems
no check knows about, so that "a bad host [does not] become a drain for all your work".

Per host, over the last `quality_window` seconds (in memory; a restart starts afresh): launches
that ended `crashed` count as crashes; launches that reached Started and ended otherwise count as
good (kills before a host ran the task, and `lost`, count as neither). A host is quarantined when it
has at least `quality_min_launches` launches and `quality_min_crashes` crashes in the window, and its
crash rate is at least `max(quality_factor × peers' rate, peers' rate + quality_margin)` — peers
being every other host together, with at least `quality_min_launches` launches of their own (no
peers, no comparison). Quarantine is the taint `quality` with the evidence, for
`quality_quarantine_seconds`; then it lifts, and the host starts again with a clean window (decay:
a host that is still bad is quarantined again after a few more crashes). When at least
`remediation_freeze_fraction` of the Ready hosts (and 2) would be quarantined at once it is a
fleet problem (a bad image push, a broken dependency): nobody is quarantined, `Verdict.alert` says so.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.config import SchedulerConfig
from scheduler.records import NodeRecord, NodeStatus

__all__ = ["QualityTracker", "Verdict"]

log = logging.getLogger("titus.scheduler.quality")


@dataclass
class Verdict:
    quarantined: list[str] = field(default_factory=list)
    lifted: list[str] = field(default_factory=list)
    alert: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.quarantined or self.lifted)


class QualityTracker:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._events: dict[str, deque[tuple[float, bool]]] = {}  # host → (at, crashed)
        self.alerting = False

    def record(self, node_id: str, crashed: bool, at: float) -> None:
        q = self._events.setdefault(node_id, deque())
        q.append((at, crashed))
        while len(q) > 10_000:
            q.popleft()

    def counts(self, now: float) -> dict[str, tuple[int, int]]:
        """host → (launches, crashes) in the window."""
        out: dict[str, tuple[int, int]] = {}
        for node_id, q in list(self._events.items()):
            while q and q[0][0] <= now - self.config.quality_window:
                q.popleft()
            if not q:
                del self._events[node_id]
                continue
            out[node_id] = (len(q), sum(1 for _, crashed in q if crashed))
        return out

    def evaluate(self, nodes: Iterable[NodeRecord], now: float) -> Verdict:
        """Quarantine and lift (on the records); the caller refreshes their taints and commits."""
        cfg = self.config
        out = Verdict()
        nodes = sorted(nodes, key=lambda n: n.id)
        for n in nodes:
            if n.quarantined_until is not None and now >= n.quarantined_until:
                n.quarantined_until, n.quarantine_reason = None, ""
                self._events.pop(n.id, None)  # probation: a clean window
                out.lifted.append(n.id)
                log.warning("host %s: quality quarantine lifted", n.id, extra={"node_id": n.id})
        if not cfg.quality_enabled:
            return out
        counts = self.counts(now)
        total_launches = sum(c[0] for c in counts.values())
        total_crashes = sum(c[1] for c in counts.values())
        ready = [n for n in nodes if n.status is NodeStatus.READY]
        bad: list[tuple[NodeRecord, str]] = []
        for n in ready:
            launches, crashes = counts.get(n.id, (0, 0))
            peer_launches = total_launches - launches
            if launches < cfg.quality_min_launches or crashes < cfg.quality_min_crashes:
                continue
            if peer_launches < cfg.quality_min_launches:
                continue
            peer_rate = (total_crashes - crashes) / peer_launches
            rate = crashes / launches
            if rate >= max(cfg.quality_factor * peer_rate, peer_rate + cfg.quality_margin):
                bad.append((n, f"{crashes} of {launches} launches crashed in the last {cfg.quality_window:g}s "
                               f"({rate:.0%}; peers {peer_rate:.0%} of {peer_launches})"))
        already = sum(1 for n in ready if n.quarantined_until is not None)
        fresh = [(n, why) for n, why in bad if n.quarantined_until is None]
        would = already + len(fresh)
        if fresh and would >= 2 and would >= cfg.remediation_freeze_fraction * len(ready):
            out.alert = (f"{would} of {len(ready)} Ready hosts crash launches markedly more than their peers: "
                         "a fleet-wide problem, nobody quarantined (page an operator)")
            if not self.alerting:
                log.error("ALERT: %s", out.alert)
            self.alerting = True
            return out
        self.alerting = False
        for n, why in fresh:
            n.quarantined_until = now + cfg.quality_quarantine_seconds
            n.quarantine_reason = why
            out.quarantined.append(n.id)
            log.warning("host %s quarantined for %gs: %s", n.id, cfg.quality_quarantine_seconds, why,
                        extra={"node_id": n.id})
        return out
