"""The API the agent's network launch step calls (see docs/network.md for the step itself).

    networks = TaskNetworks(pool, Wiring())                  # once, at agent start
    await networks.restore({task_id: record, ...})           # records from the task checkpoints
    record = ctx.resources("network")
    await networks.setup(task_id, netns_path, security_groups, record, ctx.save)
    ...
    await networks.teardown(task_id, record)                 # idempotent, after partial setup too
    await networks.collect_leaks(live_task_ids)              # periodically

Errors leave as `netns.errors.NetworkError`: `platform_fault` True -> the task ends `crashed`,
False (unknown security group) -> `failed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import unmanaged
from netns.errors import NetworkError
from netns.ipam import ReconcileReport
from netns.pool import NetworkPool
from netns.providers.base import EniInfo
from netns.eniwatch import Owned
from netns.inspect import EniLinkState, inspect_eni
from netns.taskrules import MissingRule, WiredTask, WiredTasks, find_missing_in, readd_in
from netns.wiring import ContainerNetSpec, GcReport, HostEni, Wiring, eni_table, host_ifname, iproute_in

RECORD_VERSION = 1
MAX_RULE_REPAIRS = 256  # re-added task rules remembered for the health check (oldest dropped)
log = logging.getLogger("titus.netns.step")



async def _saved(save: Callable[[], Awaitable[None] | None]) -> None:
    """The caller's checkpoint write: a plain function, or one that returns what to await."""
    pending = save()
    if pending is not None:
        await pending

class HostEniByMac:
    """Finds an ENI's link on the host by its MAC (EC2 names them eth1, ens6… unpredictably). A
    newly attached ENI's link appears seconds after the attach: wait for it, bounded. Blocking."""

    def __init__(
        self, host_netns: str | None = None, timeout_s: float = 30.0, mtu: int | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.host_netns = host_netns
        self.timeout_s = timeout_s
        self.mtu = mtu
        self.poll_s = poll_s

    def find(self, eni: EniInfo) -> HostEni | None:
        """The ENI's link if it is on the host now, else None: no wait."""
        if not eni.mac:
            return None  # the local provider's ENIs have no link: host routing only
        with iproute_in(self.host_netns) as ipr:
            for link in ipr.link("dump"):
                if str(link.get("IFLA_ADDRESS", "")).lower() == eni.mac.lower():
                    return HostEni(
                        eni.device_index, str(link.get("IFLA_IFNAME")), eni.gateway, self.mtu, eni.mac.lower(),
                        eni.primary_ip,
                    )
        return None

    def __call__(self, eni: EniInfo) -> HostEni | None:
        if not eni.mac:
            return None
        deadline = time.monotonic() + self.timeout_s
        while True:
            found = self.find(eni)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise NetworkError(
                    f"ENI {eni.eni_id} ({eni.mac}) attached but its link did not appear on this host "
                    f"within {self.timeout_s:g}s"
                )
            time.sleep(self.poll_s)


def no_host_eni(eni: EniInfo) -> HostEni | None:
    return None


@dataclass
class LeakReport:
    wiring: GcReport = field(default_factory=GcReport)
    enis: list[str] = field(default_factory=list)  # deleted: leaked (`available`) and strays
    strays: list[str] = field(default_factory=list)  # attached here, held by no pool (pool.recover_stray_enis)


class TaskNetworks:
    def __init__(
        self,
        pool: NetworkPool,
        wiring: Wiring,
        host_eni_for: Callable[[EniInfo], HostEni | None] = no_host_eni,
        mtu: int = 1500,
        unmanaged_dir: Path | None = None,
    ) -> None:
        # Where per-ENI networkd `Unmanaged=yes` files go (netns/unmanaged.py); None: not written.
        self.unmanaged_dir = unmanaged_dir
        self.pool = pool
        self.wiring = wiring
        self.host_eni_for = host_eni_for
        self.mtu = mtu
        self._eni_tables: dict[str, HostEni] = {}
        # What `netns.eniwatch` compares events with; replaced whole on each change (read by its thread).
        self.owned = Owned({}, frozenset())
        self.eni_drift: dict[str, list[str]] = {}  # last re-assertion: what had drifted, per ENI
        self.last_leaks = LeakReport()
        # The wired tasks: their own rules are re-added when deleted from outside (netns/taskrules.py).
        self.wired = WiredTasks(on_change=self._refresh_owned)
        self.rule_repairs: list[tuple[float, MissingRule]] = []  # (when, what) re-added, time.monotonic()

    async def restore(self, records: Mapping[str, Mapping[str, Any]]) -> ReconcileReport:
        """At agent start, before any setup: the task checkpoints' network records of tasks whose
        containers still exist. Their addresses stay theirs; everything else is reconciled."""
        existing = {
            task: str(r["lease"]["address"])
            for task, r in records.items()
            if isinstance(r.get("lease"), dict) and "address" in r["lease"]
        }
        for task, r in records.items():
            self._remember_wiring(task, r.get("wiring"))
        report = await self.pool.start(existing)
        await self.own_present_links()
        return report

    async def own_present_links(self) -> list[str]:
        """The pool's ENIs whose link is on the host but that this process does not own yet (after
        a restart: the kept tasks' ENIs, the warm ones; a link that came after its launch gave up is
        not taken: condemned ENIs are skipped): owned now as a launch owns them, so they are
        re-asserted and watched. Without this a restarted agent left its ENIs to any network manager
        until a new task landed on each. Returns their ids."""
        finder = self.host_eni_for
        if not isinstance(finder, HostEniByMac):
            return []
        owned: list[str] = []
        for eni_id, eni in list(self.pool.enis.items()):
            record = self.pool.pool.enis.get(eni_id)
            if eni_id in self._eni_tables or record is None or record.condemned or record.deleting:
                continue
            try:
                host_eni = await asyncio.to_thread(finder.find, eni)
                if host_eni is not None:
                    await self._own(eni, host_eni)
                    owned.append(eni_id)
            except NetworkError as e:  # e.g. unplugged meanwhile: a launch or the next round retries
                log.warning("cannot own ENI %s's link yet: %s", eni_id, e.message)
        return owned

    async def _own(self, eni: EniInfo, host_eni: HostEni) -> None:
        if self.unmanaged_dir is not None:
            await asyncio.to_thread(unmanaged.mark_unmanaged, self.unmanaged_dir, eni.mac, eni.eni_id)
        await asyncio.to_thread(self.wiring.ensure_eni_table, host_eni)
        self._eni_tables[eni.eni_id] = host_eni
        self._refresh_owned()

    async def setup(
        self,
        task_id: str,
        netns_path: str,
        security_groups: list[str] | tuple[str, ...],
        record: dict[str, Any],
        save: Callable[[], Awaitable[None] | None],
    ) -> dict[str, Any]:
        """Give the task an IP and wire it into `netns_path`. Fills `record` (the step's resources
        in the task checkpoint) and calls `save` as soon as the IP is held, so teardown and GC find
        it after a kill -9 at any point."""
        record["version"] = RECORD_VERSION
        lease = await self.pool.acquire(task_id, security_groups)
        record["lease"] = lease.to_json()
        await _saved(save)
        eni = self.pool.enis.get(lease.eni_id)
        host_eni = self._eni_tables.get(lease.eni_id)
        if host_eni is None and eni is not None:
            try:
                host_eni = await asyncio.to_thread(self.host_eni_for, eni)  # may wait for the hot-plug
            except NetworkError as e:
                # An ENI whose link never appeared is of no use here: give it back, not keep it.
                await self.pool.condemn_eni(lease.eni_id, e.message)
                raise
            if host_eni is not None:
                await self._own(eni, host_eni)
        spec = ContainerNetSpec(task_id, netns_path, lease.address, host_eni, self.mtu)
        record["wiring"] = await asyncio.to_thread(self.wiring.setup, spec)
        self._remember_wiring(task_id, record["wiring"])
        await _saved(save)
        return record

    def _remember_wiring(self, task_id: str, wired: Any) -> None:
        if isinstance(wired, Mapping) and isinstance(wired.get("address"), str):
            table = wired.get("table")
            name = wired.get("host_ifname")
            self.wired.wired(WiredTask(task_id, str(wired["address"]), table if isinstance(table, int) else None,
                                       name if isinstance(name, str) else host_ifname(task_id)))

    async def teardown(self, task_id: str, record: Mapping[str, Any]) -> None:
        """Unwire, then give the IP back (it cools before reuse). Safe when repeated."""
        wired = record.get("wiring")
        # Marked before anything is deleted, synchronously: a re-add running meanwhile on a thread
        # does not put this task's rules back (the argument: netns/taskrules.py `readd_missing`).
        self.wired.teardown_begins(task_id)
        try:
            if isinstance(wired, dict):
                await asyncio.to_thread(self.wiring.teardown, wired)
        finally:
            self.wired.teardown_done(task_id)
        await self.pool.release(task_id)

    async def reassert_eni_tables(self) -> dict[str, list[str]]:
        """Re-apply every known ENI's link settings and table (a network manager may have flushed
        them); returns and remembers what had drifted. ENIs no longer in the pool are forgotten."""
        drift: dict[str, list[str]] = {}
        await self.own_present_links()  # a link that appeared since (e.g. after a restart)
        for eni_id, host_eni in list(self._eni_tables.items()):
            eni = self.pool.enis.get(eni_id)
            if eni is None:  # the pool deleted it: forget it, and its networkd file
                del self._eni_tables[eni_id]
                self._refresh_owned()
                if self.unmanaged_dir is not None and host_eni.mac:
                    await asyncio.to_thread(unmanaged.unmark, self.unmanaged_dir, host_eni.mac)
                continue
            if self.unmanaged_dir is not None and await asyncio.to_thread(
                unmanaged.mark_unmanaged, self.unmanaged_dir, eni.mac, eni_id
            ):
                drift.setdefault(eni_id, []).append("networkd Unmanaged file was missing")
            try:
                found = await asyncio.to_thread(self.wiring.ensure_eni_table, host_eni)
            except NetworkError as e:
                found = [e.message]
            if found:
                drift.setdefault(eni_id, []).extend(found)
        for eni_id, found in (await self.readd_task_rules()).items():
            drift.setdefault(eni_id, []).extend(found)
        self.eni_drift = drift
        return drift

    async def readd_task_rules(self) -> dict[str, list[str]]:
        """The wired tasks' own rules deleted from outside, put back (never those of a task whose
        teardown has begun); returns what was missing, by ENI id (the `to` rules: "tasks")."""
        readded = await asyncio.to_thread(readd_in, self.wiring.host_netns, self.wired)
        now = time.monotonic()
        self.rule_repairs = (self.rule_repairs + [(now, m) for m in readded])[-MAX_RULE_REPAIRS:]
        by_table = {eni_table(h.device_index): eni_id for eni_id, h in self._eni_tables.items()}
        out: dict[str, list[str]] = {}
        for m in readded:
            out.setdefault(by_table.get(m.rule.table, "tasks"), []).append(
                f"task {m.task_id}: {m.rule.describe()} was missing (re-added)")
        return out

    async def missing_task_rules(self) -> list[MissingRule]:
        """Read-only, for the health check: the wired tasks' own rules missing now."""
        return await asyncio.to_thread(find_missing_in, self.wiring.host_netns, self.wired)

    def recent_rule_repairs(self, within_s: float) -> list[MissingRule]:
        """The task rules re-added in the last `within_s` seconds (older ones are forgotten)."""
        since = time.monotonic() - within_s
        self.rule_repairs = [(t, m) for t, m in self.rule_repairs if t >= since]
        return [m for _, m in self.rule_repairs]

    async def eni_states(self, unowned_grace_s: float = 120.0) -> list[EniLinkState]:
        """Read-only, for the `eni` health check: every owned ENI's link and table (the tasks' own
        rules: `missing_task_rules`); and pool ENIs with a link to own (a MAC) that no link was found for
        `unowned_grace_s` after their creation (absent). Netlink on a thread."""
        states: list[EniLinkState] = []
        for eni_id, host_eni in list(self._eni_tables.items()):
            states.append(await asyncio.to_thread(inspect_eni, eni_id, host_eni, self.wiring.host_netns))
        now = self.pool.clock()
        for eni_id, eni in list(self.pool.enis.items()):
            record = self.pool.pool.enis.get(eni_id)
            if (eni_id in self._eni_tables or not eni.mac or record is None or record.condemned or record.deleting
                    or now - record.created_at < unowned_grace_s):
                continue
            states.append(EniLinkState(eni_id, f"mac {eni.mac}", eni_table(eni.device_index), False))
        return states

    def _refresh_owned(self) -> None:
        enis = list(self._eni_tables.values())
        self.owned = Owned({e.ifname: e.mtu for e in enis}, frozenset(eni_table(e.device_index) for e in enis),
                           self.wired.rules())

    async def close(self) -> None:
        """Stop the pool's refiller (the host's links and addresses stay: tasks keep running)."""
        await self.pool.close()

    async def collect_leaks(self, live_task_ids: set[str], eni_min_age_s: float = 300.0) -> LeakReport:
        report = LeakReport()
        report.wiring = await asyncio.to_thread(self.wiring.gc, live_task_ids)
        for task_id in self.pool.held_tasks():
            if task_id not in live_task_ids:
                await self.pool.release(task_id)
        report.enis = await self.pool.collect_leaked_enis(eni_min_age_s)
        report.strays = await self.pool.recover_stray_enis()
        report.enis += report.strays
        self.last_leaks = report
        return report

    def snapshot(self) -> dict[str, Any]:
        """For `titusctl node net`."""
        doc = self.pool.snapshot()
        doc["leaks"] = {
            "links": self.last_leaks.wiring.links,
            "rules": self.last_leaks.wiring.rules,
            "namespaces": self.last_leaks.wiring.namespaces,
            "enis": self.last_leaks.enis,
            "stray_enis": self.last_leaks.strays,
        }
        doc["eni_drift"] = self.eni_drift
        backoff = getattr(self.pool.provider, "backoff", None)
        if callable(backoff):
            doc["provider_backoff"] = backoff()
        return doc
