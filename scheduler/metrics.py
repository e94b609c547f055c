"""Prometheus metrics of the scheduler. Counts by state are computed at scrape time from the live
model (a collector), so they can never drift from the truth."""

from __future__ import annotations

import logging
from collections import Counter as _Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.pending import AGE_BUCKETS, PendingReason, age_buckets
from scheduler.provenance import tag_moved
from titus_common.states import TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler
    from scheduler.records import TaskRecord
    from scheduler.remediation import Plan

log = logging.getLogger("titus.scheduler.remediation")

QUEUE_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, *AGE_BUCKETS, 1800, 3600)
PASS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
LAUNCH_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300)


class _StateCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.scheduler
        tasks = GaugeMetricFamily("titus_scheduler_tasks", "Tasks by state", labels=["state"])
        by_state = _Tally(t.state.value for t in s.tasks.values())
        for state in TaskState:
            tasks.add_metric([state.value], by_state.get(state.value, 0))
        yield tasks
        jobs = GaugeMetricFamily("titus_scheduler_jobs", "Jobs by state", labels=["state"])
        for job_state, n in sorted(_Tally(j.state.value for j in s.jobs.values()).items()):
            jobs.add_metric([job_state], n)
        yield jobs
        nodes = GaugeMetricFamily("titus_scheduler_nodes", "Agents by status", labels=["status"])
        for status, count in sorted(_Tally(n.status.value for n in s.nodes.values()).items()):
            nodes.add_metric([status], count)
        yield nodes
        now = s.clock()
        queue = s.pending_tasks()
        by_age = GaugeMetricFamily(
            "titus_scheduler_pending_tasks_older_than", "Accepted tasks waiting longer than `seconds` (cumulative)",
            labels=["seconds"],
        )
        for bucket, n in age_buckets(queue, now).items():
            by_age.add_metric([f"{bucket:.0f}"], n)
        yield by_age
        reasons = GaugeMetricFamily("titus_scheduler_pending_tasks", "Accepted tasks by why they wait", labels=["reason"])
        counts = s.pending.counts(queue, now)
        for reason in PendingReason:
            reasons.add_metric([reason.value], counts.get(reason, 0))
        yield reasons
        tainted = GaugeMetricFamily("titus_scheduler_nodes_tainted",
                                    "Ready agents that take no new work, by taint (cordoned, health.<check>)",
                                    labels=["taint"])
        for taint, count in sorted(_Tally(k for n in s.nodes.values() for k in n.taints).items()):
            tainted.add_metric([taint], count)
        yield tainted
        if len(s.capacity.by_name) > 1:
            usage = s.capacity.usage(s.jobs.values())
            cap = GaugeMetricFamily("titus_scheduler_capacity_group_cpu",
                                    "CPUs a capacity group's live jobs ask for, and its limit", labels=["group", "kind"])
            for name, g in sorted(s.capacity.by_name.items()):
                cap.add_metric([name, "used"], usage.cpu.get(name, 0.0))
                if g.limit_cpu is not None:
                    cap.add_metric([name, "limit"], g.limit_cpu)
            yield cap
        moved = GaugeMetricFamily("titus_scheduler_tasks_tag_moved",
                                  "Live tasks whose job's image tag now points at another digest (docs/provenance.md)")
        moved.add_metric([], sum(1 for t in s.tasks.values() if t.job_id in s.jobs and tag_moved(s.jobs[t.job_id], t)))
        yield moved
        looping = sum(1 for j in s.jobs.values() if not j.state.value == "Finished" and s.crash_looping(j))
        mode = s.scheduling_mode
        if mode is not None:
            modes = GaugeMetricFamily("titus_scheduler_scheduling_mode", "1 for the current placement mode", labels=["mode"])
            for m in type(mode):
                modes.add_metric([m.value], 1 if m is mode else 0)
            yield modes
        yield GaugeMetricFamily(
            "titus_scheduler_crash_looping_jobs", "Jobs with a task index failing on the platform repeatedly",
            value=looping,
        )


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "titus_scheduler_jobs_submitted", "Jobs accepted", ["kind"], registry=self.registry
        )
        self.tasks_finished = Counter(
            "titus_scheduler_tasks_finished",
            "Tasks finished by reason (crashed/lost are platform faults, failed is the user's)",
            ["reason"],
            registry=self.registry,
        )
        self.agent_protocol_errors = Counter(
            "titus_scheduler_agent_protocol_errors",
            "Requests refused on the node protocol (sync/updates) or malformed HTTP, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.loop_errors = Counter(
            "titus_scheduler_control_loop_errors", "Control-loop passes that raised (a bug: see the log)",
            registry=self.registry,
        )
        self.retirements = Counter(
            "titus_scheduler_host_retirements", "Hosts retired after remediation's drain, by outcome",
            ["outcome"], registry=self.registry,
        )
        self.rejected_updates = Counter(
            "titus_scheduler_rejected_updates",
            "Task updates refused, not applied: for a task unknown or placed on another node",
            ["reason"],
            registry=self.registry,
        )
        self.launch_latency = Histogram(
            "titus_scheduler_launch_latency_seconds",
            "Accepted → Started, per task",
            buckets=LAUNCH_BUCKETS,
            registry=self.registry,
        )

        self.queue_latency = Histogram(
            "titus_scheduler_accepted_to_launched_seconds",
            "Accepted → Launched (placed on a host), per task: the queue's latency",
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.remediations = Counter(
            "titus_scheduler_remediations", "Remediation orders and their outcomes (ordered, ok, failed, timeout)",
            ["outcome"], registry=self.registry,
        )
        self.remediation_drains = Counter(
            "titus_scheduler_remediation_drains", "Hosts drained by remediation", registry=self.registry
        )
        self.quality_quarantines = Counter(
            "titus_scheduler_quality_quarantines", "Hosts quarantined by the quality tracker", registry=self.registry,
        )
        self.drain_kills = Counter(
            "titus_scheduler_drain_kills", "Tasks a drain killed: kill (service, after its replacement started) "
            "or evict (batch, past the deadline)", ["kind"], registry=self.registry,
        )
        self.remediation_frozen = Gauge(
            "titus_scheduler_remediation_frozen",
            "1 while remediation is frozen because many hosts fail at once (an operator alert)",
            registry=self.registry,
        )
        self.registry_lookups = Counter(
            "titus_scheduler_registry_lookups", "Periodic image tag lookups in the registry, by outcome (ok, error)",
            ["outcome"], registry=self.registry,
        )
        self.mode_switches = Counter(
            "titus_scheduler_scheduling_mode_switches", "Live switches of the placement mode, by new mode", ["mode"],
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "titus_scheduler_placement_pass_seconds",
            "Wall time of a placement pass that evaluated at least one task (table, placement, commit)",
            buckets=PASS_BUCKETS, registry=self.registry,
        )
        self.pass_tasks = Counter(
            "titus_scheduler_placement_pass_tasks", "Tasks evaluated by placement passes, by outcome (placed, waiting)",
            ["outcome"], registry=self.registry,
        )
        self.preemptions = Counter(
            "titus_scheduler_preemptions", "Tasks killed to make room for a critical capacity group's reservation, "
            "by the victim's group and the group it made room for (by)", ["group", "by"], registry=self.registry,
        )
        self._frozen = False

    def note_remediation_plan(self, plan: Plan) -> None:
        """Count a remediation pass; log the freeze alert when it starts and ends."""
        was = self._frozen
        self._frozen = plan.frozen
        if plan.frozen and not was:
            log.error("ALERT: %s", plan.alert)
        elif was and not plan.frozen:
            log.warning("remediation unfrozen: fewer hosts failing")
        self.remediation_frozen.set(1 if plan.frozen else 0)
        if plan.ordered:
            self.remediations.labels(outcome="ordered").inc(len(plan.ordered))
        if plan.drained:
            self.remediation_drains.inc(len(plan.drained))
        for n in plan.changed:
            if n.remediation_history and n.remediation_history[-1].outcome == "timeout":
                self.remediations.labels(outcome="timeout").inc()

    def bind(self, scheduler: Scheduler) -> None:
        self.registry.register(_StateCollector(scheduler))

    def observe_started(self, task: TaskRecord) -> None:
        accepted = task.timestamps.get(TaskState.ACCEPTED.value)
        started = task.timestamps.get(TaskState.STARTED.value)
        if accepted is not None and started is not None:
            self.launch_latency.observe(max(0.0, started - accepted))

    def observe_launched(self, task: TaskRecord) -> None:
        accepted = task.timestamps.get(TaskState.ACCEPTED.value)
        launched = task.timestamps.get(TaskState.LAUNCHED.value)
        if accepted is not None and launched is not None:
            self.queue_latency.observe(max(0.0, launched - accepted))
