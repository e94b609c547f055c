"""Runs launch steps: setup in order, teardown in reverse (see steps/base.py for the contract)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from agent.metrics import AgentMetrics
from agent.steps.base import LaunchContext, LaunchStep, ReadoptStep, StepError

log = logging.getLogger("titus.agent.pipeline")


class Pipeline:
    def __init__(self, steps: Sequence[LaunchStep], metrics: AgentMetrics) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"launch steps must have distinct names: {names}")
        self.steps = list(steps)
        self.metrics = metrics

    async def setup(self, ctx: LaunchContext) -> None:
        """Set every step up, in order. On failure, StepError (with a wrapped message for unexpected
        exceptions); the caller then runs `teardown`, which also covers the failed step."""
        for step in self.steps:
            started = time.monotonic()
            try:
                await step.setup(ctx)
            except StepError as e:
                self.metrics.step_failures.labels(step=step.name).inc()
                raise StepError(f"{step.name} step: {e.message}", e.reason) from None
            except Exception as e:
                self.metrics.step_failures.labels(step=step.name).inc()
                log.exception("%s step failed unexpectedly", step.name, extra={"task_id": ctx.task_id})
                raise StepError(f"{step.name} step: unexpected error: {e!r}") from None
            finally:
                self.metrics.step_seconds.labels(step=step.name, phase="setup").observe(time.monotonic() - started)

    async def teardown(self, ctx: LaunchContext) -> list[str]:
        """Tear every step down in reverse; never raises. Returns the problems (logged; what could
        not be released is left for GC)."""
        problems = []
        for step in reversed(self.steps):
            started = time.monotonic()
            try:
                await step.teardown(ctx)
            except Exception as e:
                problems.append(f"{step.name}: {e}")
                log.warning("teardown of %s failed: %s", step.name, e, extra={"task_id": ctx.task_id})
            finally:
                self.metrics.step_seconds.labels(step=step.name, phase="teardown").observe(
                    time.monotonic() - started
                )
        return problems

    async def readopt(self, ctx: LaunchContext) -> list[str]:
        """After an agent restart, for a task still running: let each step rebuild what it holds in
        this process. Never raises; returns the problems (logged; the task keeps running)."""
        problems = []
        for step in self.steps:
            if not isinstance(step, ReadoptStep):
                continue
            try:
                await step.readopt(ctx)
            except Exception as e:
                problems.append(f"{step.name}: {e}")
                self.metrics.step_failures.labels(step=step.name).inc()
                log.warning("re-adoption of %s failed: %s", step.name, e, extra={"task_id": ctx.task_id})
        return problems
