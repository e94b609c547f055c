"""The async driver: one `IpPool` (the rules), one `Provider` (the cloud), one checkpoint file.

A single background refiller carries out what `IpPool.plan` asks for, so concurrent launches never
race each other into duplicate EC2 calls: launches that find the pool empty register as waiters and
wake the refiller, which asks for one batch for all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from netns.errors import CheckpointError, EniLimitReached, NetworkError, PoolTimeout
from netns.ipam import (
    Action,
    AssignIps,
    CreateEni,
    DeleteEni,
    EniSnapshot,
    IpPool,
    PoolConfig,
    ReconcileReport,
    SgKey,
    UnassignIps,
    sg_key,
)
from netns.providers.base import EniInfo, Provider
from titus_common.files import atomic_write_json

log = logging.getLogger("titus.netns.pool")


@dataclass(frozen=True)
class Lease:
    """What a task got: enough to wire it and to release it after a restart."""

    task_id: str
    address: str
    eni_id: str
    device_index: int
    subnet_cidr: str
    gateway: str
    security_groups: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["security_groups"] = list(self.security_groups)
        return doc


class NetworkPool:
    def __init__(
        self,
        provider: Provider,
        config: PoolConfig,
        checkpoint_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        acquire_timeout_s: float = 30.0,
        error_backoff_s: float = 2.0,
    ) -> None:
        self.provider = provider
        self.config = config
        self.checkpoint_path = checkpoint_path
        self.clock = clock
        self.acquire_timeout_s = acquire_timeout_s
        self.error_backoff_s = error_backoff_s
        self.pool = IpPool(config)
        self.enis: dict[str, EniInfo] = {}
        self.errors: dict[SgKey, NetworkError] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # replaced on every notify: waiters hold the old one
        self._save_lock = asyncio.Lock()
        self._changes = 0  # bumped by every save() call; _saved: the last count a written file covers
        self._saved = 0
        self._refiller: asyncio.Task[None] | None = None
        self._closing = False

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self, existing: Mapping[str, str] | None = None) -> ReconcileReport:
        """Load the checkpoint, reconcile it with the provider's ENIs and the tasks that still have a
        network (task id -> address), then start refilling. Call once, before any acquire."""
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            try:
                doc = json.loads(self.checkpoint_path.read_text())
                self.pool = IpPool.from_json(self.config, doc)
            except CheckpointError as e:
                raise CheckpointError(f"{self.checkpoint_path}: {e.message}") from None
            except (OSError, ValueError) as e:  # unreadable, not JSON, not UTF-8
                raise CheckpointError(
                    f"{self.checkpoint_path} cannot be read ({e}); move it aside to rebuild the pool from the provider"
                ) from None
        enis = await self.provider.list_enis()
        self.enis = {e.eni_id: e for e in enis}
        snapshots = [
            EniSnapshot(e.eni_id, e.security_groups, e.device_index, e.secondary_ips, e.created_at)
            for e in enis
        ]
        report = self.pool.reconcile(snapshots, existing or {}, self.clock())
        self.pool.foreign_indexes = self.provider.foreign_device_indexes()
        await self.save()
        self._refiller = asyncio.create_task(self._refill_loop(), name="netns-refill")
        self._wake.set()
        return report

    def held_tasks(self) -> list[str]:
        """The tasks that hold an address now."""
        return list(self.pool.by_task)

    async def close(self) -> None:
        """Stop the refiller: it finishes the round it is in (an EC2 call is not cut in half)."""
        task, self._refiller = self._refiller, None
        if task is None:
            return
        self._closing = True
        self._wake.set()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            task.cancel()
            await asyncio.wait({task})

    async def save(self) -> None:
        """Make the pool's state as of this call durable. Group commit: callers change the pool on the
        loop and then call this, so a snapshot taken after their call covers their change; callers
        that queued behind a write whose snapshot was taken after them return without a write of
        their own (a burst of 50 acquires costs a few writes, not 50 in a row)."""
        if self.checkpoint_path is None:
            return
        self._changes += 1
        mine = self._changes
        async with self._save_lock:
            if self._saved >= mine:
                return  # written by a save whose snapshot was taken after our change
            covered = self._changes
            doc = self.pool.to_json()  # taken now, on the loop: the file never mixes two moments
            await asyncio.to_thread(atomic_write_json, self.checkpoint_path, doc)
            self._saved = covered

    # ---- what launches call ----------------------------------------------------------------------

    async def acquire(self, task_id: str, security_groups: list[str] | tuple[str, ...]) -> Lease:
        groups = sg_key(security_groups) or self.config.default_security_groups
        deadline = self.clock() + self.acquire_timeout_s
        while True:
            record = self.pool.allocate(task_id, groups, self.clock())
            if record is not None:
                await self.save()
                eni = self.enis[record.eni_id]
                return Lease(
                    task_id, record.address, eni.eni_id, eni.device_index, eni.subnet_cidr, eni.gateway, groups
                )
            error = self.errors.get(groups)
            if error is not None and not error.retryable:
                self.pool.cancel_wait(task_id)
                raise type(error)(error.message)
            if self.pool.starved(groups, self.clock()):
                self.pool.cancel_wait(task_id)
                raise EniLimitReached(
                    f"no ENI with security groups {','.join(groups)} and no room for another "
                    f"({self.config.max_enis} container ENIs in use)"
                )
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.pool.cancel_wait(task_id)
                cause = f": last error {error.message}" if error is not None else ""
                raise PoolTimeout(f"no IP for task {task_id} within {self.acquire_timeout_s:.0f}s{cause}")
            progress = self._progress
            self._wake.set()
            # A timer instead of wait_for: cancelling wait_for on 3.11 could leave a task hanging.
            timer = asyncio.get_running_loop().call_later(min(remaining, 1.0), self._notify)
            try:
                await progress.wait()
            finally:
                timer.cancel()

    async def release(self, task_id: str) -> None:
        self.pool.cancel_wait(task_id)
        if self.pool.release(task_id, self.clock()) is not None:
            await self.save()
            self._wake.set()

    async def condemn_eni(self, eni_id: str, why: str) -> None:
        """This host cannot use the ENI (e.g. its link never appeared): hand nothing more out from
        it, give it back to EC2 once no task holds an address on it (the refiller does)."""
        if self.pool.condemn(eni_id):
            log.warning("ENI %s condemned: %s; it is deleted once its tasks have released it", eni_id, why)
            await self.save()
            self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        doc = self.pool.snapshot(self.clock())
        doc["provider"] = {"name": self.provider.name, "api_calls": self.provider.api_calls}
        doc["errors"] = {",".join(k): v.message for k, v in self.errors.items()}
        return doc

    # ---- the refiller ----------------------------------------------------------------------------

    async def _refill_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            # Periodic pass even without launches: shrink after the quiet period, cooled IPs return.
            timer = loop.call_later(max(1.0, self.config.quiet_period_s / 4), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            if self._closing:
                return
            try:
                had_error = await self.refill_once()
            except Exception:  # never let the loop die: launches would hang
                log.exception("netns refill failed")
                had_error = True
            self._notify()
            if had_error and not self._closing:
                await asyncio.sleep(self.error_backoff_s)

    def _notify(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def refill_once(self, max_rounds: int = 8) -> bool:
        """Plan and carry out until the pool is content; True if some action failed."""
        had_error = False
        for _ in range(max_rounds):
            actions = self.pool.plan(self.clock())
            if not actions:
                break
            results = await asyncio.gather(*(self._carry_out(a) for a in actions))
            await self.save()
            self._notify()
            if not all(results):
                had_error = True
                break
        return had_error

    async def _carry_out(self, action: Action) -> bool:
        now = self.clock()
        try:
            if isinstance(action, CreateEni):
                info = await self.provider.create_eni(action.security_groups, action.device_index)
                self.enis[info.eni_id] = info
                self.pool.eni_created(action, info.eni_id, now)
                self.errors.pop(action.security_groups, None)
            elif isinstance(action, AssignIps):
                addresses = await self.provider.assign_ips(action.eni_id, action.count)
                refused = self.pool.ips_assigned(action, addresses, self.clock())
                if refused:
                    log.warning("provider handed out addresses already held: %s", refused)
                    await self.provider.unassign_ips(action.eni_id, refused)
                self.errors.pop(self.pool.enis[action.eni_id].security_groups, None)
            elif isinstance(action, UnassignIps):
                await self.provider.unassign_ips(action.eni_id, action.addresses)
                self.pool.ips_unassigned(action)
            elif isinstance(action, DeleteEni):
                await self.provider.delete_eni(action.eni_id)
                self.pool.eni_deleted(action)
                self.enis.pop(action.eni_id, None)
            return True
        except NetworkError as e:
            log.warning("netns action %s failed: %s", action, e.message)
            groups = self._groups_of(action)
            self.pool.action_failed(action)
            if isinstance(action, CreateEni):
                self.pool.foreign_indexes = self.provider.foreign_device_indexes()
            if groups is not None:
                self.errors[groups] = e
            return False

    def _groups_of(self, action: Action) -> SgKey | None:
        if isinstance(action, CreateEni):
            return action.security_groups
        eni = self.pool.enis.get(action.eni_id)
        return eni.security_groups if eni is not None else None

    # ---- leaks -----------------------------------------------------------------------------------

    async def recover_stray_enis(self) -> list[str]:
        """Detach and delete this node's ENIs attached here that the pool does not hold (a create
        whose follow-up and cleanup both failed left one attached, its device index blocked until a
        restart). Not adopted: no task ever got an address from it and its DeleteOnTermination may
        be unset; a new ENI costs two calls. Returns what was deleted; failures wait for the next pass."""
        try:
            strays = await self.provider.stray_enis(set(self.pool.enis) | set(self.enis))
        except NetworkError as e:
            log.warning("cannot list this instance's ENIs for strays: %s", e.message)
            return []
        deleted = []
        for eni in strays:
            if eni.eni_id in self.pool.enis or eni.eni_id in self.enis:
                continue  # created meanwhile through the pool
            try:
                log.warning("ENI %s (device index %d) is attached here but held by no pool: deleting it",
                            eni.eni_id, eni.device_index)
                await self.provider.delete_eni(eni.eni_id)
                deleted.append(eni.eni_id)
            except NetworkError as e:
                log.warning("could not delete stray ENI %s: %s", eni.eni_id, e.message)
        self.pool.foreign_indexes = self.provider.foreign_device_indexes()
        if deleted:
            self._wake.set()  # its device index is free again
        return deleted

    async def collect_leaked_enis(self, older_than_s: float = 300.0) -> list[str]:
        """Delete ENIs this node created that are no longer attached (a crash between create and
        attach, or detach and delete). Returns what was deleted."""
        leaked = await self.provider.find_leaked_enis(older_than_s, self.clock())
        deleted = []
        for eni_id in leaked:
            if eni_id in self.pool.enis:
                continue
            try:
                await self.provider.delete_leaked_eni(eni_id)
                deleted.append(eni_id)
            except NetworkError as e:
                log.warning("could not delete leaked ENI %s: %s", eni_id, e.message)
        return deleted
