"""Automated remediation (the seed's Winston): which failed host conditions get a playbook action,
under budgets the scheduler enforces for the whole cell. Pure decisions over node records; the
caller (`core.Scheduler`) commits the records it is handed back and delivers the orders in the
hosts' sync responses (the agent initiates every exchange, as for launches).

Rules, in order, every pass:
- an order without a result after `remediation_timeout` counts as failed (`timeout`);
- **freeze**: when at least `remediation_freeze_fraction` of the Ready hosts (and at least 2) have
  a failed condition at once, it is a fleet problem (a registry outage, a bad push), not a host
  problem: no new order and no drain; `Plan.alert` says so for an operator;
- **budget**: at most `remediation_max_hosts` hosts, and `remediation_max_fraction` of the cell
  (at least one), remediating at once — counting the orders in flight;
- per host: nothing within `remediation_cooldown` of its last action (the checks re-run and show
  whether it helped: a drain re-checks first); at most `remediation_actions_per_hour` actions per
  hour; a host whose last `remediation_failures_before_drain` actions failed, or that is still
  failing after its hourly actions, is **drained** (cordoned with the reason; `titusctl node
  uncordon` lifts it);
- an action the agent reports unsupported (not configured there) is not a failure of the host: it
  is not ordered again on that host for an hour and counts toward no drain;
- only conditions with a playbook are remediated (a registry condition has none: not a host fault);
  cordoned hosts are left to the operator.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler import liveness
from scheduler.config import SchedulerConfig
from scheduler.records import DrainState, NodeRecord, NodeStatus, RemediationEntry
from titus_common.protocol import HealthCondition, HealthStatus, RemediationOrder, RemediationResult

__all__ = ["PLAYBOOKS", "Plan", "apply_results", "order_for", "plan"]

log = logging.getLogger("titus.scheduler.remediation")

# Failed check → the agent's action (agent/remediation.py names the same actions).
PLAYBOOKS: dict[str, str] = {
    "engine": "restart-engine",
    "disk": "prune",
    "network": "network-gc",
    "eni": "reassert-network",
    "imds": "restart-metadata",
    "leaks": "network-gc",
}
HISTORY_MAX = 50
HOUR = 3600.0
FAILED_OUTCOMES = ("failed", "timeout")
RAN_OUTCOMES = ("ok", "failed", "timeout")


@dataclass
class Plan:
    changed: list[NodeRecord] = field(default_factory=list)
    ordered: list[str] = field(default_factory=list)  # hosts given a new order (wake their sync)
    drained: list[str] = field(default_factory=list)
    frozen: bool = False
    alert: str = ""


def _remediable(node: NodeRecord) -> HealthCondition | None:
    for c in node.health or []:
        if c.status is HealthStatus.FAILED and c.check in PLAYBOOKS:
            return c
    return None


def _log(node: NodeRecord, entry: RemediationEntry) -> None:
    node.remediation_history.append(entry)
    del node.remediation_history[:-HISTORY_MAX]
    log.warning("remediation %s: host %s, condition %s/%s, action %s%s", entry.outcome, node.id, entry.check,
                entry.reason, entry.action, f" ({entry.message})" if entry.message else "",
                extra={"node_id": node.id})


def _finish(node: NodeRecord, outcome: str, message: str, now: float) -> None:
    cur = node.remediation
    assert cur is not None
    _log(node, cur.model_copy(update={"at": now, "outcome": outcome, "message": message[:256]}))
    node.remediation = None


def _failures_in_a_row(node: NodeRecord) -> int:
    n = 0
    for e in reversed(node.remediation_history):
        if e.outcome in FAILED_OUTCOMES:
            n += 1
        elif e.outcome in ("ok", "drained"):
            break
    return n


def _actions_last_hour(node: NodeRecord, now: float) -> int:
    """Actions the host actually ran in the last hour (unsupported ones are not counted)."""
    return sum(1 for e in node.remediation_history if e.outcome in RAN_OUTCOMES and now - e.at < HOUR)


def _unsupported_recently(node: NodeRecord, action: str, now: float) -> bool:
    return any(e.outcome == "unsupported" and e.action == action and now - e.at < HOUR
               for e in node.remediation_history)


def _cooling(node: NodeRecord, config: SchedulerConfig, now: float) -> bool:
    return any(e.outcome in RAN_OUTCOMES and now - e.at < config.remediation_cooldown
               for e in node.remediation_history[-3:])


def _drain(node: NodeRecord, cond: HealthCondition, why: str, config: SchedulerConfig, now: float) -> None:
    """Cordon, and move the host's tasks off (`draining.Drainer` runs the drain it records)."""
    action = PLAYBOOKS[cond.check]
    _log(node, RemediationEntry(at=now, check=cond.check, reason=cond.reason, action=action,
                                outcome="drained", message=why))
    reason = f"drained by remediation: {cond.check} {cond.reason} ({why})"
    liveness.set_cordon(node, True, reason, now)
    node.drain = DrainState(started_at=now, by="remediation", reason=reason,
                            batch_deadline=now + config.drain_batch_deadline)


def plan(nodes: Iterable[NodeRecord], config: SchedulerConfig, now: float) -> Plan:
    out = Plan()
    if not config.remediation_enabled:
        return out
    nodes = sorted(nodes, key=lambda n: n.id)
    for n in nodes:
        if n.remediation is not None and now - n.remediation.at > config.remediation_timeout:
            _finish(n, "timeout", f"no result within {config.remediation_timeout:g}s", now)
            out.changed.append(n)
    ready = [n for n in nodes if n.status is NodeStatus.READY]
    failing = [n for n in ready if any(c.status is HealthStatus.FAILED for c in n.health or [])]
    if len(failing) >= 2 and len(failing) >= config.remediation_freeze_fraction * len(ready):
        out.frozen = True
        out.alert = (f"{len(failing)} of {len(ready)} Ready hosts have a failed condition: a fleet-wide problem; "
                     "remediation and drains frozen (page an operator)")
        return out
    limit = min(config.remediation_max_hosts, max(1, int(config.remediation_max_fraction * len(nodes))))
    budget = limit - sum(1 for n in nodes if n.remediation is not None)
    for n in failing:
        cond = _remediable(n)
        if cond is None or n.remediation is not None or n.cordoned or _cooling(n, config, now):
            continue
        if _failures_in_a_row(n) >= config.remediation_failures_before_drain:
            _drain(n, cond, f"{_failures_in_a_row(n)} failed actions in a row", config, now)
        elif _actions_last_hour(n, now) >= config.remediation_actions_per_hour:
            _drain(n, cond, f"still failing after {config.remediation_actions_per_hour} actions this hour", config,
                   now)
        elif _unsupported_recently(n, PLAYBOOKS[cond.check], now):
            continue
        elif budget > 0:
            budget -= 1
            entry = RemediationEntry(at=now, check=cond.check, reason=cond.reason, action=PLAYBOOKS[cond.check],
                                     outcome="ordered", order_id=secrets.token_hex(6))
            _log(n, entry)
            n.remediation = entry
            out.ordered.append(n.id)
        else:
            continue
        if n.cordoned:
            out.drained.append(n.id)
        out.changed.append(n)
    return out


def order_for(node: NodeRecord) -> RemediationOrder | None:
    cur = node.remediation
    if cur is None:
        return None
    return RemediationOrder(id=cur.order_id, action=cur.action, check=cur.check, reason=cur.reason)


def apply_results(node: NodeRecord, results: Iterable[RemediationResult], now: float) -> bool:
    """The agent's outcome of the host's current order, if reported. True when the node changed."""
    cur = node.remediation
    if cur is None:
        return False
    for r in results:
        if r.id == cur.order_id:
            _finish(node, "ok" if r.ok else ("failed" if r.supported else "unsupported"), r.message, now)
            return True
    return False
