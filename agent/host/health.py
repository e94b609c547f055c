"""The host's health checks (health/) as a host resource: started before any runner, stopped with
the agent; the latest results go with every heartbeat (`conditions`), to /v1/health and metrics.

The engine check's scratch container runs `true` from the sandbox image with no network, labelled
`titus.health=<node>` (not `titus.agent`, so it is never an "unknown container"); gc removes any
left behind by a crash mid-check.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.checkpoint import TaskCheckpoint
from agent.config import AgentConfig
from agent.docker_api import Docker, DockerError, DockerUnavailable
from agent.host.base import LiveTasks
from agent.metrics import AgentMetrics
from health import Check, HealthMonitor
from health.checks.disk import DiskCheck
from health.checks.engine import EngineCheck
from health.checks.pressure import PressureCheck
from health.checks.registry import RegistryCheck
from health.journal import JournalReader
from health.kmsg import KmsgReader
from health.logsignal import SHIPPED_JOURNAL_RULES, SHIPPED_RULES, LogSignals, load_rules
from titus_common.errors import ConfigError
from titus_common.protocol import HealthCondition, HealthStatus

__all__ = ["DockerProbe", "HealthResource", "LABEL_HEALTH", "default_checks", "journal_log_signals",
           "kernel_log_signals"]

log = logging.getLogger("titus.agent.health")

LABEL_HEALTH = "titus.health"


class DockerProbe:
    """What the engine check needs, through the agent's one door to the engine."""

    def __init__(self, docker: Docker, node_id: str, image: str, stream: Callable[[], bool | None]) -> None:
        self.docker = docker
        self.node_id = node_id
        self.image = image
        self._stream = stream

    async def ping(self) -> bool:
        return await self.docker.ping()

    async def scratch_cycle(self) -> None:
        name = f"titus-health-{secrets.token_hex(4)}"
        cid = await self.docker.create(
            name, image=self.image, command=["true"], labels={LABEL_HEALTH: self.node_id},
            host_config=self.docker.host_config(network_mode="none"),
        )
        try:
            await self.docker.start(cid)
        finally:
            await self.docker.remove(cid)

    def event_stream_connected(self) -> bool | None:
        return self._stream()


def default_checks(config: AgentConfig, docker: Docker, stream: Callable[[], bool | None]) -> list[Check]:
    checks: list[Check] = [
        EngineCheck(DockerProbe(docker, config.node_id, config.sandbox_image, stream),
                    period=config.health_engine_seconds,
                    timeout=max(config.health_scratch_budget_seconds * 2, 5.0),
                    scratch_budget=config.health_scratch_budget_seconds),
        PressureCheck(period=config.health_pressure_seconds),
    ]
    paths: dict[str, Path] = {"state": config.state_dir}
    if config.docker_root.exists():
        paths["engine"] = config.docker_root
    for i, d in enumerate(config.health_data_dirs):
        paths[f"data{i}"] = d
    checks.append(DiskCheck(paths, degraded_pct=config.health_disk_degraded_pct,
                            failed_pct=config.health_disk_failed_pct, period=config.health_disk_seconds))
    image = config.sandbox_image if config.health_registry_image is None else config.health_registry_image
    if image:
        try:
            checks.append(RegistryCheck(image, period=config.health_registry_seconds))
        except ConfigError as e:
            log.warning("no registry check: %s", e)
    return checks


def kernel_log_signals(config: AgentConfig, metrics: AgentMetrics) -> LogSignals | None:
    """The kernel log check, or None when off. A bad rules file refuses the start (ConfigError)."""
    if not config.health_kmsg_enabled:
        return None
    rules = load_rules(config.health_log_rules or SHIPPED_RULES)
    return LogSignals(rules, on_hit=lambda reason: metrics.log_rule_hits.labels(rule=reason).inc())


def journal_log_signals(config: AgentConfig, metrics: AgentMetrics) -> LogSignals | None:
    """The journal log check (`journal-log`), or None when off. A bad rules file refuses the start."""
    if not config.health_journal_enabled:
        return None
    rules = load_rules(config.health_journal_rules or SHIPPED_JOURNAL_RULES)
    return LogSignals(rules, name="journal-log",
                      on_hit=lambda reason: metrics.log_rule_hits.labels(rule=reason).inc())


class HealthResource:
    name = "health"

    def __init__(self, config: AgentConfig, docker: Docker, metrics: AgentMetrics,
                 checks: Sequence[Check], signals: LogSignals | None = None,
                 journal: LogSignals | None = None, journal_path: Path | None = None) -> None:
        self.config = config
        self.docker = docker
        self.metrics = metrics
        self.signals = signals
        self.journal = journal
        self.journal_path = journal_path  # None: the system journal
        self._reader: KmsgReader | None = None
        self._journal_reader: JournalReader | None = None
        logs = [s for s in (signals, journal) if s is not None]
        self.monitor = HealthMonitor([*checks, *logs], on_result=self._observed)
        metrics.bind_health(self.monitor.conditions)

    def _observed(self, cond: HealthCondition, prev: HealthCondition | None) -> None:
        self.metrics.health_check_seconds.labels(check=cond.check).observe(cond.duration_ms / 1000)
        if prev is None or prev.status is not cond.status:
            self.metrics.health_transitions.labels(check=cond.check, status=cond.status.value).inc()

    def conditions(self) -> list[HealthCondition]:
        return self.monitor.conditions()

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        if self.signals is not None:
            reader = KmsgReader(self.signals.feed)
            try:
                reader.start()
                self._reader = reader
            except OSError as e:
                self.signals.source_error = f"cannot read {reader.path}: {e.strerror or e}"
                log.warning("kernel log signals off: %s", self.signals.source_error)
        if self.journal is not None:
            jreader = JournalReader(self.journal.feed, self.journal.rules.identifiers, self.journal_path)
            try:
                jreader.start()
                self._journal_reader = jreader
            except OSError as e:
                self.journal.source_error = f"journal: {e}"
                log.warning("journal log signals off: %s", self.journal.source_error)
        self.monitor.start()

    async def reconcile(self, tasks: LiveTasks) -> None:
        """Called after every reconnect of the engine's event stream too: a failing engine check
        re-runs at once, so a recovered engine is seen without waiting a whole period."""
        engine = self.monitor.result("engine")
        if engine is not None and engine.status is not HealthStatus.OK:
            await self.monitor.run_now("engine")

    async def gc(self, tasks: LiveTasks) -> None:
        try:
            left = await self.docker.list_containers(f"{LABEL_HEALTH}={self.config.node_id}")
            for c in left:
                await self.docker.remove(str(c["Id"]))
            if left:
                log.info("removed %d scratch container(s) left by the engine check", len(left))
        except (DockerUnavailable, DockerError) as e:
            log.warning("health gc: %s", e)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._journal_reader is not None:
            self._journal_reader.stop()
            self._journal_reader = None
        await self.monitor.stop()
