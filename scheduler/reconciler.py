"""The reconciliation component: observes the cell, asks `reconcile.decide` for a plan, and lets
each disruptive action through only if it is neither frozen nor in the start-up grace and the kill
path (`killpath`) has budget for it. docs/reconcile.md is the written policy.

Freeze: a pass whose mismatch is a mass mismatch freezes reconciliation. The freeze is sticky:
nothing is killed or declared lost (everything keeps running) until an operator `approve`s
actions from the dry-run list (they then go through the kill path's budget, frozen or not) or
`unfreeze`s (the next pass freezes again if the mismatch is still a mass one). Entering a freeze
pages: the `titus_scheduler_reconcile_frozen` gauge goes to 1, an error is logged, and
`page_command` (if set) runs with the freeze as JSON on stdin. Every outcome change of an action
(held, deferred, executed, approved) is written to the audit log with its reason.

Orphans (`killOrphanTask`, `killOrphanContainer`, proposed after `orphan_kill_after`) pass the same
path, and one more brake: after a start on an empty store (`orphans_trusted` False) none is killed
without an operator's approval — there every running container looks like an orphan.

A step of the wall clock (`clock_stepped`, detected by `scheduler.clockstep`) moves every age kept
here by the step (first sightings, the tasks' state ages, the kill path's budgets) and restarts the
grace: the step is no evidence that anything happened in the cell.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.audit import AuditLog
from scheduler.config import SchedulerConfig
from scheduler.killpath import KillPath
from scheduler.reconcile import Action, ActionKind, CellView, NodeObs, Plan, TaskObs, decide
from scheduler.records import NodeStatus, TaskRecord
from titus_common.states import TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["Reconciler", "cell_view"]

log = logging.getLogger("titus.scheduler.reconcile")

MISMATCH_KINDS = ("missing", "disconnected", "unknownTask", "unknownContainer", "stuck")


def cell_view(s: Scheduler, reports: dict[str, tuple[frozenset[str], tuple[str, ...]]], now: float) -> CellView:
    nodes = []
    steady = s.reconciler.steady_since  # state ages moved by a clock step (empty unless one happened)
    kept: dict[str, tuple[TaskState, float]] = {}

    def since(t: TaskRecord) -> float:
        o = steady.get(t.id)
        if o is not None and o[0] is t.state:
            kept[t.id] = o
            return o[1]
        return float(t.timestamps.get(t.state.value, now))

    for n in sorted(s.nodes.values(), key=lambda n: n.id):
        report = reports.get(n.id)
        tasks = tuple(TaskObs(t.id, t.job_id, t.state, since(t)) for t in s.node_tasks(n.id))
        nodes.append(NodeObs(
            n.id, n.status is NodeStatus.READY, now - n.last_heartbeat,
            None if report is None else report[0], () if report is None else report[1], tasks,
        ))
    known = frozenset(t.id for t in s.tasks.values() if not t.state.terminal)
    running = sum(len(n.tasks) for n in nodes)
    if steady:
        s.reconciler.steady_since = kept  # a task that moved on has a state age of its own frame
    return CellView(tuple(nodes), known, running)


class Reconciler:
    def __init__(self, config: SchedulerConfig, now: float, audit: AuditLog, registry: CollectorRegistry) -> None:
        self.config = config
        self.audit = audit
        self.started_at = now
        self.grace_until = now + config.reconcile_grace
        self.kill_path = KillPath(config, now)
        self.reports: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}
        self.first_seen: dict[str, float] = {}
        self.frozen: str | None = None
        self.frozen_at: float | None = None
        self.approved: set[str] = set()
        self.orphans_trusted = True  # False after a start on an empty store (core.Scheduler sets it)
        self.orphan_kills: dict[str, dict[str, bool]] = {}  # node → orphan id → is a container; to send
        self.steady_since: dict[str, tuple[TaskState, float]] = {}
        self.plan = Plan()
        self.last_pass: float | None = None
        self._outcome: dict[str, str] = {}
        self.frozen_gauge = Gauge("titus_scheduler_reconcile_frozen",
                                  "1 while reconciliation is frozen (nothing is killed; an operator is paged)",
                                  registry=registry)
        self.mismatch_gauge = Gauge("titus_scheduler_reconcile_mismatch",
                                    "Mismatches between the scheduler and its agents at the last pass",
                                    ["kind"], registry=registry)
        self.orphans_gauge = Gauge("titus_scheduler_orphan_containers",
                                   "Containers or tasks agents run that the scheduler does not know",
                                   registry=registry)
        self.actions = Counter("titus_scheduler_reconcile_actions",
                               "Reconciliation actions by kind and outcome (executed, held, deferred)",
                               ["kind", "outcome"], registry=registry)
        self.stuck = Counter("titus_scheduler_stuck_timeouts",
                             "Tasks found past their stuck-state timeout", ["state"], registry=registry)
        for kind in MISMATCH_KINDS:
            self.mismatch_gauge.labels(kind=kind).set(0)

    # ---- inputs -------------------------------------------------------------------------------

    def observe_report(self, node_id: str, running: Iterable[str], unknown_containers: Iterable[str]) -> None:
        report = self.reports[node_id] = (frozenset(running), tuple(unknown_containers))
        kills = self.orphan_kills.get(node_id)
        if kills:  # an orphan the agent no longer reports is killed: nothing left to send
            held = report[0] | frozenset(report[1])
            self.orphan_kills[node_id] = {k: v for k, v in kills.items() if k in held}

    def queue_orphan_kill(self, action: Action) -> None:
        if action.node_id is not None:
            container = action.kind is ActionKind.KILL_ORPHAN_CONTAINER
            self.orphan_kills.setdefault(action.node_id, {})[action.task_id] = container

    def clock_stepped(self, step: float, now: float, tasks: Iterable[TaskRecord]) -> None:
        """The wall clock stepped by `step` seconds (not time passing): keep every age as it was and
        restart the grace. `tasks`: the scheduler's tasks, whose state ages are kept steady here."""
        self.first_seen = {k: v + step for k, v in self.first_seen.items()}
        old = {k: (st, v + step) for k, (st, v) in self.steady_since.items()}
        for t in tasks:
            if not t.state.terminal:
                o = old.get(t.id)
                at = o[1] if o is not None and o[0] is t.state else float(t.timestamps.get(t.state.value, now)) + step
                self.steady_since[t.id] = (t.state, at)
        self.kill_path.shift(step)
        self.grace_until = max(self.grace_until + step, now + self.config.reconcile_grace)
        if self.last_pass is not None:
            self.last_pass += step
        log.error("the wall clock stepped by %+.0fs: ages kept, nothing killed or declared lost until %.0f "
                  "(grace restarted)", step, self.grace_until)
        self.audit.write(now, "clockStep", step=round(step, 3), graceUntil=self.grace_until)

    def in_grace(self, now: float) -> bool:
        return now < self.grace_until

    # ---- one pass -------------------------------------------------------------------------------

    def run_pass(self, cell: CellView, live_tasks: Callable[[str], int], now: float) -> list[Action]:
        """Plan, freeze if it is a mass mismatch, and return the actions to apply now."""
        plan = decide(cell, self.first_seen, self.config, now)
        self.first_seen = {k: self.first_seen.get(k, now) for k in (*plan.mismatches, *plan.watch)}
        self.plan, self.last_pass = plan, now
        for kind in MISMATCH_KINDS:
            self.mismatch_gauge.labels(kind=kind).set(plan.counts.get(kind, 0))
        self.orphans_gauge.set(plan.counts.get("unknownTask", 0) + plan.counts.get("unknownContainer", 0))
        if plan.freeze is not None and self.frozen is None:
            self._freeze(plan, now)
        current = {a.id for a in plan.actions}
        self.approved &= current
        self._outcome = {k: v for k, v in self._outcome.items() if k in current}
        return [a for a in plan.actions if not self._sending(a)
                and self.admit(a, 0 if a.job_id is None else live_tasks(a.job_id), now)]

    def _sending(self, action: Action) -> bool:
        """An orphan kill already admitted and on its way to the agent: not admitted (nor spent) again."""
        return action.kind.orphan and action.task_id in self.orphan_kills.get(action.node_id or "", {})

    def admit(self, action: Action, live_tasks: int, now: float) -> bool:
        """May this action be applied now? Records the outcome (audit, metric) when it changes."""
        if action.kind is ActionKind.RESEND_KILL:
            self._record(action, "executed", "kill sent again (escalated)", now)
            return True
        approved = action.id in self.approved
        if not approved and self.frozen is not None:
            return self._record(action, "held", f"frozen: {self.frozen}", now)
        if not approved and action.kind.orphan and not self.orphans_trusted:
            return self._record(action, "held", "started on an empty store: orphans are killed only when "
                                "an operator approves", now)
        if not approved and self.in_grace(now):
            return self._record(action, "held", f"start-up grace until {self.grace_until:.0f}", now)
        refusal = self.kill_path.take(action.job_id, live_tasks, now)
        if refusal is not None:
            return self._record(action, "deferred", refusal, now)
        self.approved.discard(action.id)
        return self._record(action, "executed", "approved by an operator" if approved else "within budget", now,
                            final=True)

    def _record(self, action: Action, outcome: str, why: str, now: float, final: bool = False) -> bool:
        previous = self._outcome.get(action.id)
        if previous is None and action.kind is not ActionKind.DECLARE_LOST and action.reason.startswith("stuck"):
            state = {ActionKind.RETRY_STUCK: TaskState.LAUNCHED, ActionKind.KILL_STUCK: TaskState.START_INITIATED,
                     ActionKind.RESEND_KILL: TaskState.KILL_INITIATED}[action.kind]
            self.stuck.labels(state=state.value).inc()
        if previous != outcome or final:
            self.actions.labels(kind=action.kind.value, outcome=outcome).inc()
            self.audit.write(now, f"action.{outcome}", action=action.id, kind=action.kind.value,
                             task=action.task_id, job=action.job_id, node=action.node_id,
                             reason=action.reason, why=why)
            if action.kind is ActionKind.RESEND_KILL:
                log.error("task %s: %s; sending the kill again", action.task_id, action.reason)
        self._outcome[action.id] = outcome
        if final:
            self._outcome.pop(action.id, None)
        return outcome == "executed"

    # ---- freeze and the operator ------------------------------------------------------------------

    def _freeze(self, plan: Plan, now: float) -> None:
        assert plan.freeze is not None
        self.frozen, self.frozen_at = plan.freeze, now
        self.frozen_gauge.set(1)
        log.error("RECONCILIATION FROZEN: %s; nothing will be killed or declared lost until an operator runs "
                  "`titusctl admin reconcile show` and approves or unfreezes", plan.freeze)
        self.audit.write(now, "freeze", reason=plan.freeze, counts=dict(plan.counts))
        if self.config.page_command:
            doc = {"event": "titus_scheduler_reconcile_frozen", "reason": plan.freeze, "at": now,
                   "counts": dict(plan.counts), "proposed": len(plan.actions)}
            threading.Thread(target=_page, args=(self.config.page_command, doc), daemon=True).start()

    def unfreeze(self, now: float, by: str) -> bool:
        was = self.frozen
        self.frozen = self.frozen_at = None
        self.frozen_gauge.set(0)
        self.grace_until = min(self.grace_until, now)
        self.audit.write(now, "unfreeze", by=by, was=was)
        return was is not None

    def approve(self, ids: list[str] | None, now: float, by: str) -> list[str]:
        """Approve proposed actions (all of the current dry-run list when `ids` is None); an id
        that is not proposed now is refused (returned in `unknown` of the API answer)."""
        proposed = {a.id for a in self.plan.actions if a.kind.disruptive}
        chosen = sorted(proposed if ids is None else set(ids) & proposed)
        self.approved.update(chosen)
        self.audit.write(now, "approve", by=by, actions=chosen)
        return chosen

    def show(self, now: float) -> dict[str, Any]:
        return {
            "frozen": self.frozen is not None,
            "freezeReason": self.frozen,
            "frozenAt": self.frozen_at,
            "inGrace": self.in_grace(now),
            "graceUntil": self.grace_until,
            "lastPass": self.last_pass,
            "mismatch": {k: self.plan.counts.get(k, 0) for k in MISMATCH_KINDS},
            "watched": len(self.plan.watch),  # missing for less than missing_after: not counted yet
            "orphansTrusted": self.orphans_trusted,
            "mismatches": [{"key": k, "nodeId": n, "since": self.first_seen.get(k)}
                           for k, n in sorted(self.plan.mismatches.items())],
            "proposed": [{**a.to_api(), "approved": a.id in self.approved, "outcome": self._outcome.get(a.id)}
                         for a in self.plan.actions],
            "killTokens": round(self.kill_path.bucket.tokens, 2),
            "audit": list(self.audit.recent)[-50:],
        }


def _page(command: str, doc: dict[str, Any]) -> None:
    try:
        subprocess.run(shlex.split(command), input=json.dumps(doc).encode(), timeout=30, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (OSError, subprocess.SubprocessError) as e:
        log.error("page command %r failed: %s", command, e)
