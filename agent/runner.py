"""One task's life on this host: the state machine that drives the launch pipeline, watches the
container, enforces the runtime limit and kills, and checkpoints every transition."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.docker_api import Docker, DockerError, DockerUnavailable
from agent.exits import ExitFacts, classify
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.steps.base import LaunchContext, StepError
from titus_common.retry import Backoff
from titus_common.states import FinishReason, TaskState, can_transition

log = logging.getLogger("titus.agent.task")

DOCKER_RETRY_MAX = 10.0


class TaskRunner:
    def __init__(
        self,
        record: TaskCheckpoint,
        pipeline: Pipeline,
        docker: Docker,
        store: CheckpointStore,
        node_id: str,
        metrics: AgentMetrics,
        on_change: Callable[[TaskCheckpoint], None],
    ) -> None:
        self.record = record
        self.pipeline = pipeline
        self.docker = docker
        self.store = store
        self.metrics = metrics
        self.on_change = on_change
        self.ctx = LaunchContext(record, docker, node_id, save=self.save, save_async=self.save_async)
        self._wake = asyncio.Event()  # the container may have exited, or a kill arrived
        self._kill: asyncio.Task[None] | None = None
        self._log_extra = {"task_id": record.task_id, "job_id": record.job_id}
        self.network_lost_message: str | None = None

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def save(self) -> None:
        self.store.save(self.record)

    async def save_async(self) -> None:
        """The same write, off the loop (steps' `ctx.commit()`); returns once the file is in place."""
        await self.store.save_async(self.record)

    def _transition(self, state: TaskState, at: float | None = None) -> None:
        if self._advance(state, at):
            self.save()
            self.on_change(self.record)

    async def _transition_async(self, state: TaskState, at: float | None = None) -> None:
        """`_transition` with the checkpoint written off the loop (the launch path's transitions)."""
        if self._advance(state, at):
            await self.save_async()
            self.on_change(self.record)

    def _advance(self, state: TaskState, at: float | None) -> bool:
        if not can_transition(self.record.state, state):
            return False
        self.record.state = state
        self.record.timestamps.setdefault(state, at if at is not None else time.time())
        self.record.revision += 1
        return True

    # ---- signals from the agent ---------------------------------------------------------------

    def request_kill(self) -> None:
        if self.record.state.terminal:
            return
        if self.network_lost_message is not None:
            # Already being stopped for a lost network: the scheduler echoes the KillInitiated it was
            # told back as a kill, which must not turn the platform's fault into `killed`.
            self._wake.set()
            return
        if not self.record.kill_requested:
            self.record.kill_requested = True
            self.save()
        self._wake.set()

    def container_may_have_exited(self) -> None:
        self._wake.set()

    def network_lost(self, message: str) -> None:
        """The task's network sandbox died: the task has no network any more. It is stopped and
        ends `crashed` (the platform's fault) with `message`."""
        if self.record.state.terminal or self.record.reason is not None or self.network_lost_message is not None:
            return  # already ending (the sandbox goes at every teardown)
        if self.record.state is not TaskState.STARTED and self.record.state is not TaskState.KILL_INITIATED:
            return  # mid-launch: the network step's own checks fail the launch
        self.network_lost_message = message
        self._wake.set()

    # ---- the life ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the task to Finished. Safe to call on a record loaded after a restart: setup steps
        are idempotent, so a launch interrupted half-way is resumed, and a running container is
        re-adopted without being restarted."""
        try:
            if self.record.state.terminal:
                return  # only its report is outstanding
            if self.record.reason is not None:
                # The outcome was decided before a restart, the teardown may not have finished.
                await self._end(self.record.reason, self.record.message, self.record.exit_code)
                return
            if self.record.state.rank < TaskState.STARTED.rank:
                if not await self._launch():
                    return
            else:  # re-adopted after an agent restart: the container kept running
                await self.pipeline.readopt(self.ctx)
            await self._supervise()
        except asyncio.CancelledError:
            raise  # the agent is stopping: the container keeps running, the checkpoint stays
        except Exception as e:
            log.exception("task runner failed", extra=self._log_extra)
            await self._end(FinishReason.CRASHED, f"agent error: {e!r}")

    async def _launch(self) -> bool:
        await self._transition_async(TaskState.START_INITIATED)
        if self.record.kill_requested:
            await self._end(FinishReason.KILLED, "killed before it started")
            return False
        try:
            await self.pipeline.setup(self.ctx)
        except StepError as e:
            await self._end(e.reason, e.message)
            return False
        started_at = self.record.outputs.container_started_at or time.time()
        await self._transition_async(TaskState.STARTED, at=started_at)
        self.metrics.launch_latency.observe(max(0.0, started_at - self.record.assignment.accepted_at))
        log.info("task started", extra=self._log_extra)
        return True

    async def _supervise(self) -> None:
        container_id = self.record.container_id
        assert container_id is not None
        limit = self.record.assignment.runtime_limit_seconds
        started = self.record.timestamps.get(TaskState.STARTED, time.time())
        backoff = Backoff(0.5, DOCKER_RETRY_MAX)
        while True:
            self._wake.clear()
            try:
                state = await self.docker.inspect(container_id)
            except (DockerUnavailable, DockerError) as e:
                # The engine is away; the container may well be running. Wait, never guess.
                log.warning("cannot inspect container: %s", e, extra=self._log_extra)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if state is None or not state["State"]["Running"]:
                break
            state = None  # the whole inspect document (~35 kB a task) is not kept while it waits
            timeout: float | None = None
            if limit is not None and not self.record.runtime_limit_hit:
                timeout = started + limit - time.time()
                if timeout <= 0:
                    log.info("runtime limit of %gs reached: killing", limit, extra=self._log_extra)
                    self.record.runtime_limit_hit = True
                    self.save()
                    timeout = None
            lost = self.network_lost_message is not None
            if (self.record.kill_requested or self.record.runtime_limit_hit or lost) and self._kill is None:
                self._start_kill(container_id)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
        facts = ExitFacts.from_inspect(
            state,
            kill_requested=self.record.kill_requested,
            runtime_limit_seconds=limit if self.record.runtime_limit_hit else None,
            memory_mib=self.record.assignment.container.resources.memory_mib,
        )
        reason, message = classify(facts)
        if self.network_lost_message is not None and not self.record.kill_requested:
            reason, message = FinishReason.CRASHED, self.network_lost_message
        await self._end(reason, message, facts.exit_code)

    def _start_kill(self, container_id: str) -> None:
        self._transition(TaskState.KILL_INITIATED)
        grace = self.record.assignment.container.kill_grace_seconds

        async def stop() -> None:
            try:
                await self.docker.stop(container_id, grace)
            except (DockerUnavailable, DockerError) as e:
                log.warning("stop failed (will retry on the next wake): %s", e, extra=self._log_extra)
                self._kill = None
            self._wake.set()

        self._kill = asyncio.create_task(stop())

    async def _end(self, reason: FinishReason, message: str, exit_code: int | None = None) -> None:
        # Record the outcome before teardown removes the evidence (the container and its exit state).
        self.record.reason = reason
        self.record.message = message
        self.record.exit_code = exit_code
        self.save()
        problems = await self.pipeline.teardown(self.ctx)
        if problems:
            self.record.message = f"{message} [teardown left: {'; '.join(problems)}]"
        if self._kill is not None:
            self._kill.cancel()
        self._transition(TaskState.FINISHED)
        self.metrics.finished.labels(reason=reason.value).inc()
        log.info("task finished: %s (%s)", reason.value, message, extra=self._log_extra)
