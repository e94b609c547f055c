"""Simulated agents over HTTP or TLS (fleetsim/trust.py: each bootstraps its node certificate). Each
agent does what titus-agent does on the protocol (agent/agent.py): a long-poll `sync` loop (heartbeat
+ work) and a report loop that sends every transition not yet reported in one `updates` call, one
call in flight at a time (StartInitiated when a launch is accepted, Started, Finished). A launch
takes `LaunchModel` time (scaled by `time_scale` to wall time): base + image pull when the image is
not cached on the host (then it is) + network setup when the host has no task yet (cold network).
Tasks then run until killed (or for `run_seconds`)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass, field

import aiohttp

from fleetsim.trust import FleetTrust, bootstrap_node
from titus_common.gctune import tune_for_server
from titus_common.tlsbuffers import shrink_tls_buffers
from titus_common.protocol import (
    CapacityReport, NodeReport, SyncResponse, TaskAssignment, TaskUpdate, UpdatesRequest, images_digest,
)
from titus_common.states import FinishReason, TaskState

__all__ = ["Fleet", "LaunchModel", "SimAgent"]

log = logging.getLogger("titus.fleetsim")
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class LaunchModel:
    base_s: float = 2.0
    pull_s: float = 30.0
    cold_network_s: float = 10.0
    concurrent: int = 2  # launches at once per host
    run_s: float | None = None  # None: run until killed
    time_scale: float = 1.0  # wall seconds per model second

    def seconds(self, cached: bool, warm: bool) -> float:
        return self.base_s + (0 if cached else self.pull_s) + (0 if warm else self.cold_network_s)


@dataclass
class Stats:
    syncs: int = 0
    updates: int = 0  # `updates` calls taken
    sync_latency: list[float] = field(default_factory=list)  # seconds, sync calls that returned work
    started: int = 0
    errors: int = 0
    first_started_at: float = 0.0
    last_started_at: float = 0.0
    received: dict[str, float] = field(default_factory=dict)  # task id → monotonic time its launch arrived
    started_at: dict[str, float] = field(default_factory=dict)  # task id → monotonic time it was Started
    job_of: dict[str, str] = field(default_factory=dict)  # task id → its job


class SimAgent:
    def __init__(self, fleet: Fleet, node_id: str, cpus: float, zone: str, images: list[str]) -> None:
        self.fleet = fleet
        self.id = node_id
        self.capacity = CapacityReport(cpus=cpus, memory_mib=int(cpus * 4096), disk_mib=1_000_000)
        self.labels = {"zone": zone, "instanceType": "sim"}
        self.images = set(images)
        self._sent_digest = ""
        self.tasks: dict[str, TaskState] = {}
        self.stamps: dict[str, dict[TaskState, float]] = {}
        self._slots = asyncio.Semaphore(fleet.model.concurrent)
        self._jobs: set[asyncio.Task[None]] = set()
        self.ssl: ssl.SSLContext | bool = True  # its node certificate, over TLS
        self.synced = False  # a first sync was answered
        self._unreported: dict[str, TaskUpdate] = {}  # task id → its latest transition, not yet sent
        self._report_wanted = asyncio.Event()
        self._body_key: tuple[object, ...] = ()
        self._body = b""
        self._sent_images = -1  # how many images the last list sent held

    def report(self, want_images: bool) -> NodeReport:
        refs = sorted(self.images)
        digest = images_digest(refs)
        send = want_images or digest != self._sent_digest
        self._sent_digest = digest
        return NodeReport(
            id=self.id, capacity=self.capacity, labels=self.labels, agent_version="fleetsim",
            running=[t for t, s in self.tasks.items() if not s.terminal],
            cached_images_digest=digest, cached_images=refs if send else None,
        )

    def sync_body(self, want_images: bool, wait_seconds: float) -> bytes:
        """The sync request's JSON, `report` as sent; the same bytes again while nothing in it changed
        (most heartbeats: building, validating and encoding the report each time was a good part of
        the simulator's CPU at 7,000 hosts)."""
        running = tuple(t for t, s in self.tasks.items() if not s.terminal)
        key = (running, len(self.images), want_images or len(self.images) != self._sent_images, wait_seconds)
        if key != self._body_key or key[2]:  # the image list goes only when asked or changed
            self._body_key, self._sent_images = key, len(self.images)  # images are only ever added
            node = self.report(want_images).model_dump(mode="json", by_alias=True, exclude_none=True)
            self._body = json.dumps({"node": node, "waitSeconds": wait_seconds}, separators=(",", ":")).encode()
        return self._body

    def _transition(self, task_id: str, u: TaskUpdate) -> None:
        self._unreported[task_id] = u  # the latest state wins, as the agent reports its record
        self._report_wanted.set()

    async def report_loop(self) -> None:
        """As the agent's `_report_loop`: all that is unreported in one call; on failure, again later."""
        while True:
            await self._report_wanted.wait()
            self._report_wanted.clear()
            batch, self._unreported = self._unreported, {}
            if not batch:
                continue
            if not await self.fleet.update(self.id, list(batch.values())):
                for task_id, u in batch.items():
                    self._unreported.setdefault(task_id, u)  # a newer transition meanwhile wins
                self._report_wanted.set()
                await asyncio.sleep(0.5)

    async def run(self, stop: asyncio.Event) -> None:
        reports = asyncio.create_task(self.report_loop())
        try:
            await self._sync_loop(stop)
        finally:
            reports.cancel()
            await asyncio.gather(reports, return_exceptions=True)

    async def _sync_loop(self, stop: asyncio.Event) -> None:
        want_images = True
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = await self.fleet.sync(self, self.sync_body(want_images, self.fleet.wait_seconds))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                self.fleet.stats.errors += 1
                log.debug("sync %s failed: %s", self.id, e)
                await asyncio.sleep(0.5)
                continue
            self.fleet.stats.syncs += 1
            self.synced = True
            want_images = resp.send_cached_images
            if resp.launch or resp.kill:
                self.fleet.stats.sync_latency.append(time.monotonic() - t0)
            for a in resp.launch:
                if a.task_id not in self.tasks:
                    self.tasks[a.task_id] = TaskState.LAUNCHED
                    self.fleet.stats.received[a.task_id] = time.monotonic()
                    self.fleet.stats.job_of[a.task_id] = a.job_id
                    self.stamps[a.task_id] = {TaskState.LAUNCHED: time.time(), TaskState.START_INITIATED: time.time()}
                    self._transition(a.task_id, TaskUpdate(task_id=a.task_id, state=TaskState.START_INITIATED,
                                                           timestamps=dict(self.stamps[a.task_id])))
                    job = asyncio.create_task(self._launch(a))
                    self._jobs.add(job)
                    job.add_done_callback(self._jobs.discard)
            for task_id in resp.kill:
                if task_id in self.tasks and not self.tasks[task_id].terminal:
                    await self._finish(task_id, FinishReason.KILLED, "killed on request")

    async def _launch(self, a: TaskAssignment) -> None:
        m = self.fleet.model
        async with self._slots:
            cached = a.container.image in self.images
            warm = any(s is TaskState.STARTED for s in self.tasks.values())
            await asyncio.sleep(m.seconds(cached, warm) * m.time_scale)
            self.images.add(a.container.image)
        if self.tasks.get(a.task_id) is not TaskState.LAUNCHED:
            return  # killed meanwhile
        self.tasks[a.task_id] = TaskState.STARTED
        now = time.time()
        self.stamps[a.task_id][TaskState.STARTED] = now
        st = self.fleet.stats
        st.started += 1
        st.started_at[a.task_id] = time.monotonic()
        st.first_started_at = st.first_started_at or now
        st.last_started_at = now
        self._transition(a.task_id, TaskUpdate(task_id=a.task_id, state=TaskState.STARTED,
                                               timestamps=dict(self.stamps[a.task_id])))
        if m.run_s is not None:
            await asyncio.sleep(m.run_s * m.time_scale)
            await self._finish(a.task_id, FinishReason.NORMAL, "exited with code 0")

    async def _finish(self, task_id: str, reason: FinishReason, message: str) -> None:
        self.tasks[task_id] = TaskState.FINISHED
        stamps = self.stamps.setdefault(task_id, {})
        stamps[TaskState.FINISHED] = time.time()
        self._transition(task_id, TaskUpdate(task_id=task_id, state=TaskState.FINISHED, timestamps=dict(stamps),
                                             reason=reason, message=message, exit_code=0))


class Fleet:
    """`hosts` simulated agents against the scheduler at `base_url`."""

    def __init__(self, base_url: str, hosts: int, model: LaunchModel, seed: int = 0, cpus: float = 64,
                 wait_seconds: float = 10.0, images: int = 50, trust: FleetTrust | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.model = model
        self.trust = trust
        self.wait_seconds = wait_seconds
        self.stats = Stats()
        rng = random.Random(seed)
        pool = [f"registry.sim/app{i}:1" for i in range(images)]
        self.agents = [SimAgent(self, f"sim-{i:05d}", cpus, "abc"[i % 3], rng.sample(pool, min(8, len(pool))))
                       for i in range(hosts)]
        self._by_id = {a.id: a for a in self.agents}
        self._session: aiohttp.ClientSession | None = None
        self.ready = asyncio.Event()  # every host has its credentials and syncs

    async def _bootstrap(self, session: aiohttp.ClientSession) -> None:
        """Each host its own certificate, a few at a time (as hosts booting together would)."""
        trust = self.trust
        if trust is None or not self.base.startswith("https:"):
            return
        gate = asyncio.Semaphore(8)

        async def one(agent: SimAgent) -> None:
            async with gate:
                agent.ssl = await bootstrap_node(session, self.base, trust, agent.id)
        failed = [e for e in await asyncio.gather(*(one(a) for a in self.agents), return_exceptions=True) if e]
        if failed:
            raise failed[0]

    async def sync(self, agent: SimAgent, body: bytes) -> SyncResponse:
        assert self._session is not None
        async with self._session.post(f"{self.base}/v1/nodes/{agent.id}/sync", data=body, headers=_JSON,
                                      ssl=agent.ssl) as r:
            if r.status != 200:
                raise ValueError(f"sync HTTP {r.status}: {(await r.text())[:200]}")
            return SyncResponse.model_validate(await r.json())

    async def update(self, node_id: str, updates: list[TaskUpdate]) -> bool:
        """One `updates` call; False when it was not taken (the report loop sends it again)."""
        assert self._session is not None
        body = UpdatesRequest(updates=updates).model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            async with self._session.post(f"{self.base}/v1/nodes/{node_id}/updates", json=body,
                                          ssl=self._by_id[node_id].ssl) as r:
                if r.status == 200:
                    self.stats.updates += 1
                    return True
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        self.stats.errors += 1
        return False

    async def run(self, stop: asyncio.Event) -> None:
        # The simulator is this process's main load: as the scheduler, fewer full collections
        # (titus_common/gctune.py); the caller's thresholds are restored afterwards.
        old = tune_for_server()
        old_buffer = shrink_tls_buffers()  # thousands of TLS connections, as the scheduler's
        try:
            await self._run(stop)
        finally:
            gc.set_threshold(*old)
            shrink_tls_buffers(old_buffer)

    async def _run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.wait_seconds + 30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            self._session = session
            await self._bootstrap(session)
            self.ready.set()
            agents = [asyncio.create_task(a.run(stop)) for a in self.agents]
            await stop.wait()
            for t in agents:
                t.cancel()
            await asyncio.gather(*agents, return_exceptions=True)
            self._session = None
