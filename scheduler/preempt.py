"""Guarding the critical tier's reservations (Titus's capacity-group model): pure decisions over
plain values; `preempting.Preemptor` and `placing.PlacementLoop` apply them (docs/scheduling.md).

A critical group's `reserved_cpu` / `reserved_memory_mib` is a guarantee. Two mechanisms keep it:

- **hold-back** (`Headroom`): capacity that critical groups have reserved but do not use is held
  back from every task that does not draw on its own group's reservation (a flex task, or a task
  of a group already at its reservation). Such a task is placed only while the cell's free capacity
  (Ready, untainted hosts) stays above the sum of the critical groups' idle reservations. The check
  is cell-wide, on cpu and memory; it cannot say *which host* keeps the room free, so fragmentation
  (free capacity split across hosts, none big enough) and reservations broken after the fact (hosts
  lost, a group's reservation raised) are left to preemption.
- **preemption** (`plan`): a task of a critical group that no host can take, while its group holds
  less than its reservation with that task counted, may have tasks of other groups killed to make
  room. Victims only ever come from a group running above its own reservation, and only as far as
  the group stays at or above it after the kill (so a critical task within its reservation is
  never a victim, nor a flex one within its own). Among the candidates on a host: flex tier first,
  then the youngest (most recently started) first (jobs carry no priority in this model; the tier
  is the priority). A job loses at most its disruption budget (`drain.job_budget`, minus what it
  already has in flight) per pass; the wiring adds the kill path's token bucket, per-job window and
  freeze. For each claim the host needing the fewest victims wins (then the fewest critical
  victims, then the youngest oldest victim, the least freed capacity, the host id), and only a host the caller's `fits` accepts
  with those victims gone (the engine's own filters: posture, taints, constraints, IPs, task cap).
  Capacity already being freed (a kill in flight) counts as free, so a claim waiting for its
  victims to end is satisfied again at the next pass without new victims.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Claim", "GroupUse", "Headroom", "HostRoom", "Plan", "Running", "Victim", "by_host", "plan", "within_reservation"]

EPS = 1e-9
FITS_TRIES = 32  # hosts the caller's `fits` may refuse per claim, at most (each may build a table)
Key = tuple[int, int, float, float, str]  # victims, critical victims, -youngest... (lower is better)


@dataclass
class GroupUse:
    """A capacity group's tier, reservation, and what its placed tasks hold now (kills in flight
    not counted: that capacity is on its way back)."""

    tier: str  # "critical" | "flex"
    reserved_cpu: float
    reserved_memory_mib: float
    used_cpu: float = 0.0
    used_memory_mib: float = 0.0

    @property
    def reserves(self) -> bool:
        return self.reserved_cpu > 0 or self.reserved_memory_mib > 0

    def idle(self) -> tuple[float, float]:
        """Reserved and not used (what the hold-back keeps for a critical group)."""
        return max(0.0, self.reserved_cpu - self.used_cpu), max(0.0, self.reserved_memory_mib - self.used_memory_mib)


def within_reservation(g: GroupUse, cpu: float, memory_mib: float) -> bool:
    """Would the group still be within its reservation with this much more? (on every resource it
    reserves; a group reserving nothing is never within)."""
    if not g.reserves:
        return False
    if g.reserved_cpu > 0 and g.used_cpu + cpu > g.reserved_cpu + EPS:
        return False
    if g.reserved_memory_mib > 0 and g.used_memory_mib + memory_mib > g.reserved_memory_mib + EPS:
        return False
    return True


def _stays_at_reservation(g: GroupUse, cpu: float, memory_mib: float) -> bool:
    """Would the group still hold at least its reservation with this much less? (a victim comes
    only from usage above the group's own reservation)."""
    return g.used_cpu - cpu >= g.reserved_cpu - EPS and g.used_memory_mib - memory_mib >= g.reserved_memory_mib - EPS


class Headroom:
    """The hold-back within one placement pass: `admit` says whether a task may be placed, and
    counts what it takes (an admitted task that no host then takes only makes the pass stricter)."""

    def __init__(self, groups: Mapping[str, GroupUse], free_cpu: float, free_memory_mib: float) -> None:
        self.groups = {name: GroupUse(g.tier, g.reserved_cpu, g.reserved_memory_mib, g.used_cpu, g.used_memory_mib)
                       for name, g in groups.items()}
        held = [g.idle() for g in self.groups.values() if g.tier == "critical"]
        self.held_cpu = sum(c for c, _ in held)
        self.held_memory_mib = sum(m for _, m in held)
        self.free_cpu, self.free_memory_mib = free_cpu, free_memory_mib

    @property
    def active(self) -> bool:
        return self.held_cpu > EPS or self.held_memory_mib > EPS

    def admit(self, group: str, cpu: float, memory_mib: float) -> bool:
        g = self.groups.get(group)
        if g is not None and g.tier == "critical" and within_reservation(g, cpu, memory_mib):
            # Drawn from its own reservation: the held-back amount shrinks as the free one does.
            self.held_cpu -= min(cpu, max(0.0, g.reserved_cpu - g.used_cpu))
            self.held_memory_mib -= min(memory_mib, max(0.0, g.reserved_memory_mib - g.used_memory_mib))
        elif cpu > self.free_cpu - self.held_cpu + EPS or memory_mib > self.free_memory_mib - self.held_memory_mib + EPS:
            return False
        self.free_cpu -= cpu
        self.free_memory_mib -= memory_mib
        if g is not None:
            g.used_cpu += cpu
            g.used_memory_mib += memory_mib
        return True

    def why(self) -> str:
        return (f"waiting: capacity held back for critical groups' idle reservations "
                f"({self.held_cpu:g} cpu, {self.held_memory_mib:g} MiB)")


@dataclass(frozen=True)
class Claim:
    """A due task of a critical group that the last pass could not place."""

    task_id: str
    job_id: str
    group: str
    cpu: float
    memory_mib: float
    disk_mib: float


@dataclass(frozen=True)
class Running:
    """A task holding resources on a host: a candidate victim."""

    task_id: str
    job_id: str
    group: str
    node_id: str
    cpu: float
    memory_mib: float
    disk_mib: float
    started_at: float  # when it started (or was placed): the youngest goes first


@dataclass
class HostRoom:
    """What a host has free, counting capacity that kills in flight are freeing."""

    node_id: str
    free_cpu: float
    free_memory_mib: float
    free_disk_mib: float

    def fits(self, c: Claim, cpu: float = 0.0, memory_mib: float = 0.0, disk_mib: float = 0.0) -> bool:
        return (c.cpu <= self.free_cpu + cpu + EPS and c.memory_mib <= self.free_memory_mib + memory_mib + EPS
                and c.disk_mib <= self.free_disk_mib + disk_mib + EPS)


@dataclass(frozen=True)
class Victim:
    task: Running
    for_task: str
    for_group: str


@dataclass
class Plan:
    victims: list[Victim] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # claim → the host its room is being freed on
    blocked: dict[str, str] = field(default_factory=dict)  # claim → why nothing can be done for it


# (claim, host id, the victims that would be gone from it, the claims this plan already sends
# there) → could the claim be placed there then?
Fits = Callable[[Claim, str, Sequence[Running], Sequence[Claim]], bool]


def _pick(c: Claim, room: HostRoom, candidates: Sequence[Running], groups: Mapping[str, GroupUse],
          budget: Mapping[str, int]) -> list[Running] | None:
    """The fewest candidates, in preference order, that make room for `c` on this host (never of
    the claim's own group); None if no admissible set does."""
    chosen: list[Running] = []
    freed = [0.0, 0.0, 0.0]
    taken_by_group: dict[str, list[float]] = {}
    taken_by_job: dict[str, int] = {}
    for v in candidates:
        if v.group == c.group:
            continue
        if room.fits(c, *freed):
            break
        short_cpu = c.cpu > room.free_cpu + freed[0] + EPS
        short_mem = c.memory_mib > room.free_memory_mib + freed[1] + EPS
        short_disk = c.disk_mib > room.free_disk_mib + freed[2] + EPS
        if not ((short_cpu and v.cpu > 0) or (short_mem and v.memory_mib > 0) or (short_disk and v.disk_mib > 0)):
            continue  # frees nothing the claim is short of
        if taken_by_job.get(v.job_id, 0) >= budget.get(v.job_id, 0):
            continue
        g = groups[v.group]
        t = taken_by_group.get(v.group, [0.0, 0.0])
        if not _stays_at_reservation(g, t[0] + v.cpu, t[1] + v.memory_mib):
            continue
        taken_by_group[v.group] = [t[0] + v.cpu, t[1] + v.memory_mib]
        taken_by_job[v.job_id] = taken_by_job.get(v.job_id, 0) + 1
        chosen.append(v)
        freed = [freed[0] + v.cpu, freed[1] + v.memory_mib, freed[2] + v.disk_mib]
    if not room.fits(c, *freed):
        return None
    # Drop what turned out not to be needed (the most protected first: kept in preference order).
    for v in reversed(list(chosen)):
        rest = [freed[0] - v.cpu, freed[1] - v.memory_mib, freed[2] - v.disk_mib]
        if room.fits(c, *rest):
            chosen.remove(v)
            freed = rest
    return chosen


def by_host(running: Iterable[Running], groups: Mapping[str, GroupUse]) -> dict[str, list[Running]]:
    """Each host's candidates in victim preference order: flex first, then the youngest; the id
    for a stable order (what `groupuse.host_use` keeps per host)."""
    on: dict[str, list[Running]] = {}
    for r in running:
        on.setdefault(r.node_id, []).append(r)
    for tasks in on.values():
        tasks.sort(key=lambda r: (groups[r.group].tier == "critical", -r.started_at, r.task_id))
    return on


def plan(
    claims: Sequence[Claim],
    running: Sequence[Running] | Mapping[str, Sequence[Running]],
    hosts: Sequence[HostRoom],
    groups: Mapping[str, GroupUse],
    budget: Mapping[str, int],
    fits: Fits,
    max_victims: int = 100,
) -> Plan:
    """Victims for `claims` (in the order given: the placement pass's), at most `max_victims`.
    `running`: tasks holding resources, kills in flight left out (or per host, already in the
    order of `by_host`); `hosts`: the hosts the claims' jobs may use at all, with kills in flight
    counted free; `budget`: per job, how many of its tasks may still be disrupted now. Nothing is
    mutated; the caller kills the victims."""
    out = Plan()
    use = {n: GroupUse(g.tier, g.reserved_cpu, g.reserved_memory_mib, g.used_cpu, g.used_memory_mib)
           for n, g in groups.items()}
    left = dict(budget)
    rooms = {h.node_id: h for h in hosts}  # the caller's: copied before this plan changes one
    copied: set[str] = set()

    def room(h: str) -> HostRoom:
        r = rooms[h]
        if h not in copied:
            r = rooms[h] = HostRoom(r.node_id, r.free_cpu, r.free_memory_mib, r.free_disk_mib)
            copied.add(h)
        return r

    # Hosts with some room on every resource (a full cell has few): where a claim may fit as is.
    roomy = {h for h, r in rooms.items() if r.free_cpu > EPS and r.free_memory_mib > EPS}
    per_host = running if isinstance(running, Mapping) else by_host(running, use)
    # (copied lazily: the caller's lists are never changed)
    on: dict[str, Sequence[Running]] = {h: rs for h, rs in per_host.items() if h in rooms and rs}
    # Per job of the claims: a heap of (key, host), evaluated lazily. A host's set only gets worse
    # as other hosts give up victims (their groups near their reservations, budgets shrink), so a
    # key is recomputed when it reaches the top and pushed back if it is no longer the best; the
    # host that gave victims is pushed again for every job (its room changed).
    heaps: dict[str, list[tuple[Key, str]]] = {}
    gone: dict[str, list[Running]] = {}  # host → the victims this plan takes from it
    routed: dict[str, list[Claim]] = {}  # host → the claims this plan makes room for there

    def entry(c: Claim, h: str) -> tuple[Key, str] | None:
        chosen = _pick(c, rooms[h], on[h], use, left)
        if not chosen:
            return None
        return (len(chosen), sum(use[r.group].tier == "critical" for r in chosen),
                -min(r.started_at for r in chosen), sum(r.cpu for r in chosen), h), h

    for c in claims:
        g = use.get(c.group)
        if g is None or g.tier != "critical":
            out.blocked[c.task_id] = "not a critical group"
            continue
        if not within_reservation(g, c.cpu, c.memory_mib):
            out.blocked[c.task_id] = f"capacity group {c.group} is at its reservation"
            continue
        ready = None
        for h in sorted(h for h in roomy if rooms[h].fits(c))[:FITS_TRIES]:
            if fits(c, h, gone.get(h, []), routed.get(h, [])):
                ready = h
                break
        if ready is not None:  # room there already (kills in flight): wait for them, kill nothing more
            _claim(room(ready), c, g)
            routed.setdefault(ready, []).append(c)
            out.waiting[c.task_id] = ready
            continue
        if len(out.victims) >= max_victims:
            out.blocked[c.task_id] = f"at most {max_victims} preemptions per pass"
            continue
        if c.job_id not in heaps:  # every host's best set for this job's tasks, once
            heaps[c.job_id] = [e for e in (entry(c, h) for h in sorted(on)) if e is not None]
            heapq.heapify(heaps[c.job_id])
        heap = heaps[c.job_id]
        best: tuple[Key, list[Running]] | None = None
        tries, capped = 0, False
        while heap and tries < FITS_TRIES:
            _, h = heapq.heappop(heap)
            fresh = entry(c, h)  # others' kills since may have made this host's set worse
            if fresh is None:
                continue
            if heap and fresh[0] > heap[0][0]:
                heapq.heappush(heap, fresh)
                continue
            chosen = _pick(c, rooms[h], on[h], use, left) or []
            if len(out.victims) + len(chosen) > max_victims:
                heapq.heappush(heap, fresh)
                capped = True
                break
            if not fits(c, h, [*gone.get(h, []), *chosen], routed.get(h, [])):  # the placer would not take this job there: not for its other tasks either
                tries += 1
                continue
            best = (fresh[0], chosen)
            break
        if best is None:
            out.blocked[c.task_id] = (f"at most {max_victims} preemptions per pass" if capped
                                      else "no host where tasks above their groups' reservations make room")
            continue
        chosen = best[1]
        host = room(best[0][4])
        routed.setdefault(host.node_id, []).append(c)
        on[host.node_id] = [r for r in on[host.node_id] if r not in chosen]
        for r in chosen:
            gone.setdefault(host.node_id, []).append(r)
            out.victims.append(Victim(r, c.task_id, c.group))
            v = use[r.group]
            v.used_cpu -= r.cpu
            v.used_memory_mib -= r.memory_mib
            left[r.job_id] = left.get(r.job_id, 0) - 1
            host.free_cpu += r.cpu
            host.free_memory_mib += r.memory_mib
            host.free_disk_mib += r.disk_mib
        _claim(host, c, g)
        if host.free_cpu > EPS and host.free_memory_mib > EPS:
            roomy.add(host.node_id)
        else:
            roomy.discard(host.node_id)
        out.waiting[c.task_id] = host.node_id
        for job_id, other in heaps.items():
            e = entry(next(x for x in claims if x.job_id == job_id), host.node_id)
            if e is not None:
                heapq.heappush(other, e)
    return out


def _claim(room: HostRoom, c: Claim, g: GroupUse) -> None:
    room.free_cpu -= c.cpu
    room.free_memory_mib -= c.memory_mib
    room.free_disk_mib -= c.disk_mib
    g.used_cpu += c.cpu
    g.used_memory_mib += c.memory_mib
