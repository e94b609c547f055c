"""The IP pool of one host: pure logic, no I/O, time passed in (wall-clock seconds).

The pool never calls a provider. `plan(now)` returns the actions it wants (create an ENI, assign or
unassign secondary IPs, delete an ENI) and marks them in flight; the driver (`netns.pool`) carries
them out and reports back (`eni_created`, `ips_assigned`, ... or `action_failed`). That keeps every
rule here testable with a fake clock and no cloud.

Rules:
- Warm pool: keep `warm_ip_target` spare IPs for the default security groups (and for any other
  group set while it is active), and at least `minimum_ip_target` IPs in total.
- Burst: when tasks wait for an IP, ask for max(demand, `burst_batch`) IPs at once rather than one
  call per launch; after `quiet_period_s` without launches or releases the excess above the warm
  target is unassigned and empty ENIs are deleted.
- Cooldown and LRU: a released IP is not reused for `cooldown_s` (peers and firewalls still key state
  on it); among usable IPs the least recently released goes first (never-used ones before all).
- Limits: never more than `max_enis` container ENIs nor `ips_per_eni` IPs on one ENI, counting what
  is in flight.
- An ENI carries one security-group set; a task gets an IP only from an ENI with exactly its groups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from netns.errors import AddressConflict, CheckpointError

CHECKPOINT_VERSION = "titus-ipam/1"

SgKey = tuple[str, ...]


def sg_key(groups: Iterable[str]) -> SgKey:
    """Security groups as a canonical key: order and repetition do not make a different set."""
    return tuple(sorted(set(groups)))


class IpState(str, Enum):
    FREE = "free"  # held on an ENI, not in use (may still be cooling: see released_at)
    ASSIGNED = "assigned"
    RELEASING = "releasing"  # being unassigned from the ENI


@dataclass
class IpRecord:
    address: str
    eni_id: str
    state: IpState = IpState.FREE
    task_id: str | None = None
    released_at: float | None = None  # None: never used since it came to this host
    assigned_at: float | None = None


@dataclass
class EniRecord:
    eni_id: str
    security_groups: SgKey
    device_index: int
    created_at: float
    addresses: set[str] = field(default_factory=set)
    assigning: int = 0  # IPs asked for, not yet answered
    deleting: bool = False
    # Unusable on this host (its link never appeared): nothing is handed out from it; its free
    # addresses are given back and it is deleted once the last task on it has released its address.
    condemned: bool = False


@dataclass(frozen=True)
class PoolConfig:
    max_enis: int  # container ENIs on this host (the primary ENI excluded)
    ips_per_eni: int  # container IPs per ENI (the ENI's primary address excluded)
    warm_ip_target: int = 4
    minimum_ip_target: int = 0
    refill_batch: int = 4
    burst_batch: int = 16
    cooldown_s: float = 30.0
    quiet_period_s: float = 60.0
    default_security_groups: SgKey = ()

    def __post_init__(self) -> None:
        for name in ("max_enis", "ips_per_eni", "refill_batch", "burst_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("warm_ip_target", "minimum_ip_target", "cooldown_s", "quiet_period_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.minimum_ip_target > self.max_enis * self.ips_per_eni:
            raise ValueError("minimum_ip_target exceeds what the ENI limits allow")


@dataclass(frozen=True)
class CreateEni:
    security_groups: SgKey
    device_index: int


@dataclass(frozen=True)
class AssignIps:
    eni_id: str
    count: int


@dataclass(frozen=True)
class UnassignIps:
    eni_id: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class DeleteEni:
    eni_id: str


Action = CreateEni | AssignIps | UnassignIps | DeleteEni


@dataclass(frozen=True)
class EniSnapshot:
    """What the provider says exists: used by `reconcile`."""

    eni_id: str
    security_groups: SgKey
    device_index: int
    addresses: tuple[str, ...]
    created_at: float = 0.0


@dataclass
class ReconcileReport:
    kept: dict[str, str] = field(default_factory=dict)  # task -> address, as checkpointed
    adopted: dict[str, str] = field(default_factory=dict)  # task -> address, not in checkpoint
    released: dict[str, str] = field(default_factory=dict)  # checkpointed task gone -> cooling
    orphan_tasks: dict[str, str] = field(default_factory=dict)  # task's address on no ENI
    vanished: list[str] = field(default_factory=list)  # checkpointed addresses the provider lacks
    unknown_cooling: list[str] = field(default_factory=list)  # on the provider, not checkpointed


def _check_ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise AddressConflict(f"not an IPv4 address: {address!r}") from None


class IpPool:
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.enis: dict[str, EniRecord] = {}
        self.ips: dict[str, IpRecord] = {}
        self.by_task: dict[str, str] = {}
        self.waiting: dict[SgKey, set[str]] = {}
        self.creating: dict[SgKey, list[int]] = {}  # device indexes of ENIs being created
        self.last_activity: dict[SgKey, float] = {}
        self.limit_reached: set[SgKey] = set()
        # Device indexes held by ENIs that are not this pool's (the primary's 0, other tools'):
        # from the provider, refreshed at start and after a failed create.
        self.foreign_indexes: frozenset[int] = frozenset({0})

    # ---- queries -------------------------------------------------------------------------------

    def is_cooling(self, record: IpRecord, now: float) -> bool:
        return (
            record.state is IpState.FREE
            and record.released_at is not None
            and now - record.released_at < self.config.cooldown_s
        )

    def usable(self, record: IpRecord, now: float) -> bool:
        eni = self.enis[record.eni_id]
        return (
            record.state is IpState.FREE and not eni.deleting and not eni.condemned
            and not self.is_cooling(record, now)
        )

    def counts(self, now: float, groups: SgKey | None = None) -> dict[str, int]:
        out = {"assigned": 0, "free": 0, "cooling": 0, "releasing": 0}
        for record in self.ips.values():
            eni = self.enis[record.eni_id]
            if groups is not None and eni.security_groups != groups:
                continue
            if eni.condemned and record.state is not IpState.ASSIGNED:
                continue  # being given back: no spare, not cooling for reuse
            if record.state is IpState.ASSIGNED:
                out["assigned"] += 1
            elif record.state is IpState.RELEASING:
                out["releasing"] += 1
            elif self.is_cooling(record, now):
                out["cooling"] += 1
            else:
                out["free"] += 1
        return out

    def placement_facts(self, now: float) -> tuple[int, int, dict[SgKey, int]]:
        """What the scheduler needs to not overcommit the network: (capacity: addresses this host can
        hold for tasks in all, free: not held by a task now, warm: per security-group set, addresses
        its ENIs can hand out without a new ENI — free ones, cooling ones and room to assign more)."""
        capacity = self.config.max_enis * self.config.ips_per_eni
        warm: dict[SgKey, int] = {}
        for eni in self.enis.values():
            if eni.deleting or eni.condemned:
                continue
            spare = sum(1 for a in eni.addresses if self.ips[a].state is IpState.FREE)
            room = self.config.ips_per_eni - len(eni.addresses) - eni.assigning
            warm[eni.security_groups] = warm.get(eni.security_groups, 0) + spare + max(0, room)
        return capacity, capacity - len(self.by_task), warm

    def address_of(self, task_id: str) -> IpRecord | None:
        address = self.by_task.get(task_id)
        return self.ips[address] if address is not None else None

    def eni_count(self) -> int:
        return len(self.enis) + sum(len(v) for v in self.creating.values())

    def _active(self, groups: SgKey, now: float) -> bool:
        last = self.last_activity.get(groups)
        return last is not None and now - last < self.config.quiet_period_s

    def warm_target(self, groups: SgKey, now: float) -> int:
        if groups == self.config.default_security_groups or self._active(groups, now):
            return self.config.warm_ip_target
        return 0

    def starved(self, groups: SgKey, now: float) -> bool:
        """True when waiters for `groups` cannot be served by anything present or in flight."""
        if groups not in self.limit_reached:
            return False
        c = self.counts(now, groups)
        in_flight = sum(e.assigning for e in self.enis.values() if e.security_groups == groups)
        return c["free"] + c["cooling"] + in_flight + len(self.creating.get(groups, [])) == 0

    # ---- allocation ----------------------------------------------------------------------------

    def allocate(self, task_id: str, groups: SgKey, now: float) -> IpRecord | None:
        """The task's IP (idempotent), or None: the task is counted as waiting and `plan` asks for more."""
        existing = self.address_of(task_id)
        if existing is not None:
            return existing
        self.last_activity[groups] = now
        candidates = [
            r
            for r in self.ips.values()
            if self.enis[r.eni_id].security_groups == groups and self.usable(r, now)
        ]
        if not candidates:
            self.waiting.setdefault(groups, set()).add(task_id)
            return None
        # LRU: never-used first, then the one released longest ago; address breaks ties stably.
        chosen = min(
            candidates,
            key=lambda r: (r.released_at is not None, r.released_at or 0.0, r.address),
        )
        chosen.state = IpState.ASSIGNED
        chosen.task_id = task_id
        chosen.assigned_at = now
        self.by_task[task_id] = chosen.address
        self._stop_waiting(task_id)
        return chosen

    def release(self, task_id: str, now: float) -> str | None:
        """Return the task's IP to the pool (it cools first). Idempotent; None if it had none."""
        self._stop_waiting(task_id)
        address = self.by_task.pop(task_id, None)
        if address is None:
            return None
        record = self.ips[address]
        record.state = IpState.FREE
        record.task_id = None
        record.released_at = now
        self.last_activity[self.enis[record.eni_id].security_groups] = now
        return address

    def cancel_wait(self, task_id: str) -> None:
        self._stop_waiting(task_id)

    def _stop_waiting(self, task_id: str) -> None:
        for key in [k for k, tasks in self.waiting.items() if task_id in tasks]:
            self.waiting[key].discard(task_id)
            if not self.waiting[key]:
                del self.waiting[key]

    # ---- planning --------------------------------------------------------------------------------

    def plan(self, now: float) -> list[Action]:
        actions: list[Action] = []
        groups_seen = {e.security_groups for e in self.enis.values()} | set(self.waiting)
        groups_seen.add(self.config.default_security_groups)
        for groups in sorted(groups_seen):
            actions += self._plan_growth(groups, now)
        for groups in sorted(groups_seen):
            actions += self._plan_shrink(groups, now)
        return actions + self._plan_condemned()

    def condemn(self, eni_id: str) -> bool:
        """Stop using an ENI this host cannot use; `plan` then gives it back. False if unknown."""
        eni = self.enis.get(eni_id)
        if eni is None:
            return False
        eni.condemned = True
        return True

    def _plan_condemned(self) -> list[Action]:
        """Free addresses (cooling ones too: no traffic ever used the link) go back at once; the
        ENI is deleted when no task holds an address on it any more."""
        actions: list[Action] = []
        for eni in sorted(self.enis.values(), key=lambda e: e.device_index):
            if not eni.condemned or eni.deleting:
                continue
            free = sorted(a for a in eni.addresses if self.ips[a].state is IpState.FREE)
            for address in free:
                self.ips[address].state = IpState.RELEASING
            if free:
                actions.append(UnassignIps(eni.eni_id, tuple(free)))
            elif not eni.addresses and not eni.assigning:
                eni.deleting = True
                actions.append(DeleteEni(eni.eni_id))
        return actions

    def _need(self, groups: SgKey, now: float) -> tuple[int, int]:
        c = self.counts(now, groups)
        in_flight = sum(e.assigning for e in self.enis.values() if e.security_groups == groups)
        waiters = len(self.waiting.get(groups, ()))
        for_waiters = waiters - c["free"] - in_flight
        spare_after = c["free"] + c["cooling"] + in_flight - waiters
        for_warm = self.warm_target(groups, now) - spare_after
        for_minimum = 0
        if groups == self.config.default_security_groups:
            held = c["assigned"] + c["free"] + c["cooling"] + in_flight
            for_minimum = self.config.minimum_ip_target - held
        return max(for_waiters, for_warm, for_minimum, 0), waiters

    def _plan_growth(self, groups: SgKey, now: float) -> list[Action]:
        need, waiters = self._need(groups, now)
        self.limit_reached.discard(groups)
        if need == 0:
            return []
        batch = max(need, self.config.burst_batch if waiters else self.config.refill_batch)
        actions: list[Action] = []
        for eni in sorted(self.enis.values(), key=lambda e: e.device_index):
            if eni.security_groups != groups or eni.deleting or eni.condemned or batch == 0:
                continue
            room = self.config.ips_per_eni - len(eni.addresses) - eni.assigning
            take = min(room, batch)
            if take > 0:
                eni.assigning += take
                batch -= take
                actions.append(AssignIps(eni.eni_id, take))
        if batch > 0 and not self.creating.get(groups):
            if self.eni_count() < self.config.max_enis:
                index = self._free_device_index()
                self.creating.setdefault(groups, []).append(index)
                actions.append(CreateEni(groups, index))
            elif not actions:
                self.limit_reached.add(groups)
        return actions

    def _free_device_index(self) -> int:
        used = {e.device_index for e in self.enis.values()}
        used.update(i for indexes in self.creating.values() for i in indexes)
        used.update(self.foreign_indexes)
        index = 1  # device 0 is the host's primary ENI
        while index in used:
            index += 1
        return index

    def _plan_shrink(self, groups: SgKey, now: float) -> list[Action]:
        if self._active(groups, now) or self.waiting.get(groups):
            return []
        c = self.counts(now, groups)
        keep = self.warm_target(groups, now)
        excess = c["free"] - keep
        if groups == self.config.default_security_groups:
            held = c["assigned"] + c["free"] + c["cooling"]
            excess = min(excess, held - self.config.minimum_ip_target)
        actions: list[Action] = []
        if excess > 0:
            free = [
                r
                for r in self.ips.values()
                if self.enis[r.eni_id].security_groups == groups and self.usable(r, now)
            ]
            # Give back the most recently used first: LRU reuse wants the coldest ones kept.
            free.sort(key=lambda r: (r.released_at is not None, r.released_at or 0.0, r.address))
            by_eni: dict[str, list[str]] = {}
            for record in free[len(free) - excess :]:
                record.state = IpState.RELEASING
                by_eni.setdefault(record.eni_id, []).append(record.address)
            actions += [UnassignIps(e, tuple(sorted(a))) for e, a in sorted(by_eni.items())]
        for eni in sorted(self.enis.values(), key=lambda e: e.device_index):
            if (
                eni.security_groups == groups
                and not eni.addresses
                and not eni.assigning
                and not eni.deleting
            ):
                eni.deleting = True
                actions.append(DeleteEni(eni.eni_id))
        return actions

    # ---- results from the driver -------------------------------------------------------------

    def eni_created(self, action: CreateEni, eni_id: str, now: float) -> None:
        self._finish_create(action)
        if eni_id in self.enis:
            raise AddressConflict(f"provider returned ENI {eni_id} twice")
        self.enis[eni_id] = EniRecord(eni_id, action.security_groups, action.device_index, now)

    def ips_assigned(self, action: AssignIps, addresses: Sequence[str], now: float) -> list[str]:
        """Record the provider's answer; returns addresses refused as duplicates (the driver gives
        them back). Never more than asked for is accepted."""
        eni = self.enis[action.eni_id]
        eni.assigning = max(0, eni.assigning - action.count)
        refused: list[str] = []
        for raw in addresses:
            address = _check_ipv4(raw)
            if address in self.ips or len(eni.addresses) >= self.config.ips_per_eni:
                refused.append(address)
                continue
            eni.addresses.add(address)
            self.ips[address] = IpRecord(address, eni.eni_id)
        return refused

    def ips_unassigned(self, action: UnassignIps) -> None:
        eni = self.enis.get(action.eni_id)
        for address in action.addresses:
            record = self.ips.get(address)
            if record is not None and record.state is IpState.RELEASING:
                del self.ips[address]
                if eni is not None:
                    eni.addresses.discard(address)

    def eni_deleted(self, action: DeleteEni) -> None:
        eni = self.enis.get(action.eni_id)
        if eni is not None and not eni.addresses:
            del self.enis[action.eni_id]

    def action_failed(self, action: Action) -> None:
        """Undo the in-flight marks of an action the provider could not carry out."""
        if isinstance(action, CreateEni):
            self._finish_create(action)
        elif isinstance(action, AssignIps):
            eni = self.enis.get(action.eni_id)
            if eni is not None:
                eni.assigning = max(0, eni.assigning - action.count)
        elif isinstance(action, UnassignIps):
            for address in action.addresses:
                record = self.ips.get(address)
                if record is not None and record.state is IpState.RELEASING:
                    record.state = IpState.FREE
        else:
            eni = self.enis.get(action.eni_id)
            if eni is not None:
                eni.deleting = False

    def _finish_create(self, action: CreateEni) -> None:
        pending = self.creating.get(action.security_groups, [])
        if action.device_index in pending:
            pending.remove(action.device_index)
        if not pending:
            self.creating.pop(action.security_groups, None)

    # ---- restart ---------------------------------------------------------------------------------

    def reconcile(
        self, enis: Sequence[EniSnapshot], existing: Mapping[str, str], now: float
    ) -> ReconcileReport:
        """Rebuild from what exists: the provider's ENIs and addresses, and the tasks that still have
        a network (task -> address). The checkpoint (already loaded) only adds history: who held
        what and when each IP was released. Anything uncertain is put to cooling, never handed out."""
        report = ReconcileReport()
        old_ips, old_tasks = self.ips, dict(self.by_task)
        condemned = {e.eni_id for e in self.enis.values() if e.condemned}  # survives the restart
        claimed = {_check_ipv4(a): t for t, a in existing.items()}
        self.enis, self.ips, self.by_task = {}, {}, {}
        self.waiting.clear()
        self.creating.clear()
        self.limit_reached.clear()
        for snap in enis:
            eni = EniRecord(snap.eni_id, snap.security_groups, snap.device_index, snap.created_at,
                            condemned=snap.eni_id in condemned)
            self.enis[snap.eni_id] = eni
            for raw in snap.addresses:
                address = _check_ipv4(raw)
                if address in self.ips:
                    raise AddressConflict(f"{address} is on two ENIs ({snap.eni_id})")
                eni.addresses.add(address)
                record = IpRecord(address, snap.eni_id)
                self.ips[address] = record
                old = old_ips.get(address)
                task = claimed.get(address)
                if task is not None:
                    record.state, record.task_id = IpState.ASSIGNED, task
                    record.assigned_at = old.assigned_at if old and old.task_id == task else now
                    self.by_task[task] = address
                    (report.kept if old_tasks.get(task) == address else report.adopted)[task] = address
                elif old is not None and old.state is IpState.FREE:
                    record.released_at = old.released_at
                else:
                    record.released_at = now
                    if old is not None and old.task_id is not None:
                        report.released[old.task_id] = address
                    elif old is None:
                        report.unknown_cooling.append(address)
        for task, address in existing.items():
            if task not in self.by_task:
                report.orphan_tasks[task] = address
        report.vanished = sorted(set(old_ips) - set(self.ips))
        return report

    # ---- checkpoint ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "enis": [
                {
                    "eni_id": e.eni_id,
                    "security_groups": list(e.security_groups),
                    "device_index": e.device_index,
                    "created_at": e.created_at,
                    "condemned": e.condemned,
                }
                for e in sorted(self.enis.values(), key=lambda e: e.device_index)
            ],
            "ips": [
                {
                    "address": r.address,
                    "eni_id": r.eni_id,
                    # An unassign in flight is not known to have happened: keep it as free.
                    "state": (IpState.FREE if r.state is IpState.RELEASING else r.state).value,
                    "task_id": r.task_id,
                    "released_at": r.released_at,
                    "assigned_at": r.assigned_at,
                }
                for r in sorted(self.ips.values(), key=lambda r: r.address)
            ],
        }

    @classmethod
    def from_json(cls, config: PoolConfig, doc: Any) -> IpPool:
        pool = cls(config)
        try:
            if doc.get("version") != CHECKPOINT_VERSION:
                raise CheckpointError(f"unknown IPAM checkpoint version {doc.get('version')!r}")
            for e in doc["enis"]:
                groups = sg_key(str(g) for g in e["security_groups"])
                eni = EniRecord(str(e["eni_id"]), groups, int(e["device_index"]), float(e["created_at"]),
                                condemned=bool(e.get("condemned", False)))
                if eni.eni_id in pool.enis:
                    raise CheckpointError(f"ENI {eni.eni_id} listed twice")
                pool.enis[eni.eni_id] = eni
            for r in doc["ips"]:
                record = IpRecord(
                    address=_check_ipv4(str(r["address"])),
                    eni_id=str(r["eni_id"]),
                    state=IpState(r["state"]),
                    task_id=None if r["task_id"] is None else str(r["task_id"]),
                    released_at=None if r["released_at"] is None else float(r["released_at"]),
                    assigned_at=None if r["assigned_at"] is None else float(r["assigned_at"]),
                )
                if record.address in pool.ips or record.eni_id not in pool.enis:
                    raise CheckpointError(f"address {record.address} duplicated or on unknown ENI")
                if (record.state is IpState.ASSIGNED) != (record.task_id is not None):
                    raise CheckpointError(f"address {record.address}: state and task disagree")
                if record.task_id is not None:
                    if record.task_id in pool.by_task:
                        raise CheckpointError(f"task {record.task_id} holds two addresses")
                    pool.by_task[record.task_id] = record.address
                pool.ips[record.address] = record
                pool.enis[record.eni_id].addresses.add(record.address)
        except CheckpointError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError, AddressConflict) as e:
            raise CheckpointError(f"malformed IPAM checkpoint: {e!r}") from None
        return pool

    def snapshot(self, now: float) -> dict[str, Any]:
        """For `titusctl node net`: ENIs, each IP's state and owner, cooldown left."""
        enis = []
        for eni in sorted(self.enis.values(), key=lambda e: e.device_index):
            ips = []
            for address in sorted(eni.addresses):
                r = self.ips[address]
                state = "cooling" if self.is_cooling(r, now) else r.state.value
                left = 0.0
                if state == "cooling" and r.released_at is not None:
                    left = round(self.config.cooldown_s - (now - r.released_at), 1)
                ips.append({"address": address, "state": state, "task_id": r.task_id, "cooldown_left_s": left})
            enis.append(
                {
                    "eni_id": eni.eni_id,
                    "device_index": eni.device_index,
                    "security_groups": list(eni.security_groups),
                    "assigning": eni.assigning,
                    "deleting": eni.deleting,
                    "condemned": eni.condemned,
                    "ips": ips,
                }
            )
        waiting = {",".join(k): len(v) for k, v in self.waiting.items()}
        return {"enis": enis, "counts": self.counts(now), "waiting": waiting}
