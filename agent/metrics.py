"""Prometheus metrics of the agent."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterator, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from titus_common.protocol import HealthCondition, HealthStatus
from titus_common.states import TaskState

LAUNCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)
PLACEMENT_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025)
MOVE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)
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


class _CpuCollector(Collector):
    """Live view of the host's CPUs, read from the placement state at scrape time."""

    def __init__(self, usage: Callable[[], Mapping[str, int]], smt_shared: Callable[[], int]) -> None:
        self.usage = usage
        self.smt_shared = smt_shared

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cpus = GaugeMetricFamily(
            "titus_agent_cpuset_cpus", "Online CPUs by use (reserved, static, burst minimum, idle)", labels=["use"]
        )
        for use, n in sorted(self.usage().items()):
            cpus.add_metric([use], n)
        yield cpus
        yield GaugeMetricFamily(
            "titus_agent_cpuset_smt_shared_cores",
            "Physical cores whose hardware threads are held by two or more different tasks",
            value=self.smt_shared(),
        )


class _NetworkCollector(Collector):
    """Live view of the host's IP pool (netns/), read from the pool's snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Mapping[str, object]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        doc = self.snapshot()
        counts = doc.get("counts")
        ips = GaugeMetricFamily(
            "titus_agent_network_ips", "Task IPs held on this host, by state (free = warm)", labels=["state"]
        )
        for state in ("free", "assigned", "cooling", "releasing"):
            ips.add_metric([state], float(counts.get(state, 0)) if isinstance(counts, dict) else 0.0)
        yield ips
        enis = doc.get("enis")
        yield GaugeMetricFamily(
            "titus_agent_network_enis", "Container ENIs attached to this host",
            value=len(enis) if isinstance(enis, list) else 0,
        )
        waiting = doc.get("waiting")
        yield GaugeMetricFamily(
            "titus_agent_network_waiting_launches", "Launches waiting for an IP (the pool is refilling)",
            value=sum(waiting.values()) if isinstance(waiting, dict) else 0,
        )
        errors = doc.get("errors")
        yield GaugeMetricFamily(
            "titus_agent_network_provider_errors", "Security-group sets whose last provider call failed",
            value=len(errors) if isinstance(errors, dict) else 0,
        )
        provider = doc.get("provider")
        calls = CounterMetricFamily(
            "titus_agent_network_provider_api_calls", "Calls to the IP provider (EC2 API for aws)", labels=["provider"]
        )
        if isinstance(provider, dict):
            calls.add_metric([str(provider.get("name", "?"))], float(provider.get("api_calls", 0)))
        yield calls


class _HealthCollector(Collector):
    """Each health check's current status: 1 on the status it is in, 0 on the others."""

    def __init__(self, conditions: Callable[[], Iterable[HealthCondition]]) -> None:
        self.conditions = conditions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("titus_agent_health_check", "Current status of each host health check",
                              labels=["check", "status", "reason"])
        for c in self.conditions():
            for status in HealthStatus:
                g.add_metric([c.check, status.value, c.reason if status is c.status else ""],
                             1.0 if status is c.status else 0.0)
        yield g


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
        # cpuset placement (agent/cpus.py)
        self.cpuset_placements = Counter(
            "titus_agent_cpuset_placements", "Exclusive CPU placements made, by class", ["cls"], registry=r
        )
        self.cpuset_cross_placements = Counter(
            "titus_agent_cpuset_cross_placements",
            "Placements whose CPUs span more than one socket / NUMA node / L3 group", ["level"], registry=r,
        )
        self.cpuset_smt_shared_placements = Counter(
            "titus_agent_cpuset_smt_shared_placements",
            "Placements that took a hardware thread whose sibling another task holds", registry=r,
        )
        self.cpuset_placement_seconds = Histogram(
            "titus_agent_cpuset_placement_seconds", "Time to decide one placement (the C core through its API)",
            buckets=PLACEMENT_BUCKETS, registry=r,
        )
        self.cpuset_placement_failures = Counter(
            "titus_agent_cpuset_placement_failures", "Launches refused for want of CPUs to place them on", registry=r
        )
        self.cpuset_rebalance_moves = Histogram(
            "titus_agent_cpuset_rebalance_moved_cpus", "CPUs moved per rebalance", buckets=MOVE_BUCKETS, registry=r
        )
        self.cpuset_updates = Counter(
            "titus_agent_cpuset_updates", "cpusets written to running containers (docker update)", registry=r
        )
        self.cpuset_update_failures = Counter(
            "titus_agent_cpuset_update_failures", "cpuset writes the engine refused or missed (retried)", registry=r
        )
        self.image_gc_images_removed = Counter(
            "titus_agent_image_gc_images_removed", "Images removed by image GC, by trigger (pressure, age, prune)",
            ["trigger"], registry=r)
        self.image_gc_bytes_reclaimed = Counter(
            "titus_agent_image_gc_bytes_reclaimed", "Bytes of images removed by image GC (the engine's Size; "
            "shared layers make it an upper bound)", registry=r)
        self.image_gc_containers_removed = Counter(
            "titus_agent_image_gc_containers_removed", "Exited containers of finished tasks removed", registry=r)
        self.network_leaks_removed = Counter(
            "titus_agent_network_leaks_removed",
            "Leaked objects found by the GC (links, rules, namespaces, ENIs, sandboxes; cgroups, checkpoints)", ["kind"],
            registry=r,
        )
        self.cpuset_drift_corrections = Counter(
            "titus_agent_cpuset_drift_corrections",
            "Containers found on a cpuset other than theirs (engine or cgroup value) and put back", ["source"],
            registry=r,
        )

        self.health_check_seconds = Histogram(
            "titus_agent_health_check_seconds", "Duration of each health check run", ["check"],
            buckets=STEP_BUCKETS, registry=r,
        )
        self.health_transitions = Counter(
            "titus_agent_health_transitions", "Health checks entering a status", ["check", "status"], registry=r,
        )
        self.log_rule_hits = Counter(
            "titus_agent_log_rule_hits", "Kernel/journal log lines matching a health rule", ["rule"], registry=r,
        )

    def bind_health(self, conditions: Callable[[], Iterable[HealthCondition]]) -> None:
        self.registry.register(_HealthCollector(conditions))

    def bind(self, states: Callable[[], Iterable[TaskState]], unknown: Callable[[], int]) -> None:
        self.registry.register(_LiveCollector(states, unknown))

    def bind_network(self, snapshot: Callable[[], Mapping[str, object]]) -> None:
        self.registry.register(_NetworkCollector(snapshot))

    def bind_cpus(self, usage: Callable[[], Mapping[str, int]], smt_shared: Callable[[], int]) -> None:
        self.registry.register(_CpuCollector(usage, smt_shared))
