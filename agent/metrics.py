"""Prometheus metrics of the agent."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterator, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from titus_common.states import TaskState

LAUNCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _LiveCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[TaskState]], unknown: Callable[[], int]) -> None:
        self.states = states
        self.unknown = unknown

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("titus_agent_tasks", "Tasks held by this agent, by state", labels=["state"])
        tally = _Tally(s.value for s in self.states())
        for state in TaskState:
            tasks.add_metric([state.value], tally.get(state.value, 0))
        yield tasks
        yield GaugeMetricFamily(
            "titus_agent_unknown_containers",
            "Containers labelled for this agent that no task record explains (reported, not killed)",
            value=self.unknown(),
        )


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.launches = Counter("titus_agent_launches", "Tasks received for launch", registry=r)
        self.launch_latency = Histogram(
            "titus_agent_launch_latency_seconds", "Accepted (at the scheduler) → Started", buckets=LAUNCH_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "titus_agent_tasks_finished", "Tasks finished, by reason (crashed = platform, failed = user)",
            ["reason"], registry=r,
        )
        self.step_seconds = Histogram(
            "titus_agent_step_seconds", "Time in each launch step", ["step", "phase"], buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_failures = Counter("titus_agent_step_failures", "Launch step failures", ["step"], registry=r)
        self.adopted = Counter("titus_agent_adopted", "Tasks re-adopted after an agent restart", registry=r)
        self.sync_errors = Counter("titus_agent_sync_errors", "Failed calls to the scheduler", ["call"], registry=r)

    def bind(self, states: Callable[[], Iterable[TaskState]], unknown: Callable[[], int]) -> None:
        self.registry.register(_LiveCollector(states, unknown))
