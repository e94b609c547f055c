"""Prometheus metrics of the scheduler. Counts by state are computed at scrape time from the live
model (a collector), so they can never drift from the truth."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from titus_common.states import TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler
    from scheduler.records import TaskRecord

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
        looping = sum(1 for j in s.jobs.values() if not j.state.value == "Finished" and s.crash_looping(j))
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

    def bind(self, scheduler: Scheduler) -> None:
        self.registry.register(_StateCollector(scheduler))

    def observe_started(self, task: TaskRecord) -> None:
        accepted = task.timestamps.get(TaskState.ACCEPTED.value)
        started = task.timestamps.get(TaskState.STARTED.value)
        if accepted is not None and started is not None:
            self.launch_latency.observe(max(0.0, started - accepted))
