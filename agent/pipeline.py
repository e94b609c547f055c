"""Runs launch steps: setup in order, teardown in reverse (see steps/base.py for the contract)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from agent.metrics import AgentMetrics
from agent.step_timings import StepTimings
from agent.steps.base import LaunchContext, LaunchStep, ReadoptStep, StepError

log = logging.getLogger("titus.agent.pipeline")

# Test-only fault point (tests/integration/test_launch_leaks.py): with this set to a step's name, every
# launch logs STALL_MARKER and parks just before that step, so a test can kill -9 the agent at a known
# point of the launch. Never set in production; read once, when the pipeline is built.
STALL_ENV = "TITUS_TEST_STALL_BEFORE_STEP"
STALL_MARKER = "test hook: launch parked before the step"


class Pipeline:
    def __init__(self, steps: Sequence[LaunchStep], metrics: AgentMetrics) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"launch steps must have distinct names: {names}")
        self.steps = list(steps)
        self.metrics = metrics
        self.stall_before = os.environ.get(STALL_ENV) or None
        self.timings = StepTimings()

    async def setup(self, ctx: LaunchContext) -> None:
        """Set every step up, in order. On failure, StepError (with a wrapped message for unexpected
        exceptions); the caller then runs `teardown`, which also covers the failed step."""
        for step in self.steps:
            if step.name == self.stall_before:
                log.warning("%s %s", STALL_MARKER, step.name, extra={"task_id": ctx.task_id})
                await asyncio.Event().wait()  # until the agent is killed
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
                self._observe(step.name, "setup", time.monotonic() - started)

    def _observe(self, step: str, phase: str, seconds: float) -> None:
        self.metrics.step_seconds.labels(step=step, phase=phase).observe(seconds)
        self.timings.record(step, phase, seconds)

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
                self._observe(step.name, "teardown", time.monotonic() - started)
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
