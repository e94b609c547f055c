"""DRF by runs (scheduler/capacity.py `Groups.order`, `tolerance`): a group keeps the turn while its
dominant share stays within the tolerance of the next group's, so its tasks reach the engine as one
run. With tolerance 0 the order is exactly task-at-a-time DRF; otherwise every task goes to a group
at most `tolerance` above every other waiting group of its tier, and at every point of the order
each group's share is within `tolerance` + two tasks of what task-at-a-time gives it there."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.capacity import CapacityGroup, Groups
from scheduler.records import JobRecord, TaskRecord
from tests.unit.test_capacity import job_spec, record, tasks_of

CELL = (1000.0, 1_024_000.0)


def task_at_a_time(g: Groups, pending: Sequence[TaskRecord], jobs: Mapping[str, JobRecord],
                   placed: Mapping[str, tuple[float, float]], cell: tuple[float, float]) -> list[TaskRecord]:
    """The reference: progressive filling one task per heap pop (the order before runs)."""
    queues: dict[str, list[TaskRecord]] = {}
    for t in pending:
        queues.setdefault(g.group_of(jobs[t.job_id].spec).name, []).append(t)
    out: list[TaskRecord] = []
    for tier in ("critical", "flex"):
        heap: list[tuple[float, str]] = []
        used: dict[str, list[float]] = {}
        for name in queues:
            if g.by_name[name].tier == tier:
                used[name] = list(placed.get(name, (0.0, 0.0)))
                heapq.heappush(heap, (g._share(name, used[name], cell), name))
        pos = dict.fromkeys(used, 0)
        while heap:
            _, name = heapq.heappop(heap)
            t = queues[name][pos[name]]
            pos[name] += 1
            out.append(t)
            r = jobs[t.job_id].spec.container.resources
            used[name][0] += r.cpu
            used[name][1] += r.memory_mib
            if pos[name] < len(queues[name]):
                heapq.heappush(heap, (g._share(name, used[name], cell), name))
    return out


def runs(order: Sequence[TaskRecord]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for t in order:
        if out and out[-1][0] == t.job_id:
            out[-1] = (t.job_id, out[-1][1] + 1)
        else:
            out.append((t.job_id, 1))
    return out


TWO = Groups([CapacityGroup(name="a", reserved_cpu=100), CapacityGroup(name="b", reserved_cpu=100)])


def two_groups(n: int) -> tuple[list[TaskRecord], dict[str, JobRecord]]:
    a, b = record(job_spec(capacityGroup="a", cpu=1, n=n), "a"), record(job_spec(capacityGroup="b", cpu=1, n=n), "b")
    return tasks_of(a, n, 0) + tasks_of(b, n, 0), {"a": a, "b": b}


@pytest.mark.parametrize("tolerance, expected", [
    # Equal groups, 1-cpu tasks of a 100-cpu reservation (0.01 of its share each).
    (0.0, [("a", 1), ("b", 1)] * 6),  # exact DRF: strict alternation, runs of one
    # Half a task's share: runs of two once the groups are a task apart (the first starts tied).
    (0.005, [("a", 1), ("b", 2), ("a", 2), ("b", 2), ("a", 2), ("b", 2), ("a", 1)]),
    # Two tasks' share: a runs to 0.03 (0.02 past b, ties to the name first), b then to 0.05 (0.02
    # past a), a takes its last 3 (it would run to 0.07), b its last.
    (0.02, [("a", 3), ("b", 5), ("a", 3), ("b", 1)]),
    (0.05, [("a", 6), ("b", 6)]),  # the tolerance is wider than the backlog: each group in one run
])
def test_runs_grow_with_the_tolerance(tolerance: float, expected: list[tuple[str, int]]) -> None:
    pending, jobs = two_groups(6)
    assert runs(TWO.order(pending, jobs, {}, CELL, tolerance)) == expected


def test_a_group_far_behind_catches_up_in_one_run() -> None:
    pending, jobs = two_groups(10)
    # b already holds 20 cpu: a is 0.2 behind and gets 20 tasks' worth at once (it has 10), exact or not.
    assert runs(TWO.order(pending, jobs, {"b": (20.0, 0.0)}, CELL, 0.0)) == [("a", 10), ("b", 10)]


def test_tiers_stay_strict_whatever_the_tolerance() -> None:
    g = Groups([CapacityGroup(name="prod", tier="critical", reserved_cpu=10), CapacityGroup(name="flex", reserved_cpu=10)])
    prod, flex = record(job_spec(capacityGroup="prod", n=3), "prod"), record(job_spec(capacityGroup="flex", n=3), "flex")
    pending = tasks_of(flex, 3, 0) + tasks_of(prod, 3, 10)
    assert runs(g.order(pending, {"prod": prod, "flex": flex}, {}, CELL, 1.0)) == [("prod", 3), ("flex", 3)]


# ---- properties over random groups, jobs and prior usage ----------------------------------------

group_st = st.tuples(st.sampled_from(["critical", "flex", "flex"]), st.sampled_from([0.0, 16.0, 64.0, 200.0]),
                     st.sampled_from([0, 65_536, 262_144]))
job_st = st.tuples(st.integers(0, 4), st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]), st.sampled_from([128, 1024, 4096, 16384]),
                   st.integers(1, 12))


def world(groups: list[tuple[str, float, int]], specs: list[tuple[int, float, int, int]],
          prior: list[float]) -> tuple[Groups, list[TaskRecord], dict[str, JobRecord], dict[str, tuple[float, float]]]:
    g = Groups([CapacityGroup(name=f"g{i}", tier=tier, reserved_cpu=cpu, reserved_memory_mib=mem)  # type: ignore[arg-type]
                for i, (tier, cpu, mem) in enumerate(groups)])
    jobs: dict[str, JobRecord] = {}
    pending: list[TaskRecord] = []
    for k, (gi, cpu, mem, n) in enumerate(specs):
        job = record(job_spec(capacityGroup=f"g{gi % len(groups)}", cpu=cpu, mem=mem, n=n), f"j{k:02d}")
        jobs[job.id] = job
        pending += tasks_of(job, n, k)
    pending.sort(key=lambda t: (t.timestamps["Accepted"], t.job_id, t.index))
    placed = {f"g{i}": (p * 50, p * 50 * 4096) for i, p in enumerate(prior)}
    return g, pending, jobs, placed


def shares_along(g: Groups, order: Sequence[TaskRecord], jobs: Mapping[str, JobRecord],
                 placed: Mapping[str, tuple[float, float]]) -> list[dict[str, float]]:
    used = {name: list(placed.get(name, (0.0, 0.0))) for name in g.by_name}
    out = []
    for t in order:
        r = jobs[t.job_id].spec.container.resources
        u = used[g.group_of(jobs[t.job_id].spec).name]
        u[0] += r.cpu
        u[1] += r.memory_mib
        out.append({name: g._share(name, u2, CELL) for name, u2 in used.items()})
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(group_st, min_size=2, max_size=4), st.lists(job_st, min_size=1, max_size=10),
       st.lists(st.floats(0, 1), min_size=4, max_size=4), st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2]))
def test_drf_by_runs_stays_within_the_tolerance_of_task_at_a_time(
    groups: list[tuple[str, float, int]], specs: list[tuple[int, float, int, int]], prior: list[float], tolerance: float,
) -> None:
    g, pending, jobs, placed = world(groups, specs, prior)
    exact = task_at_a_time(g, pending, jobs, placed, CELL)
    ours = g.order(pending, jobs, placed, CELL, tolerance)
    assert sorted(t.id for t in ours) == sorted(t.id for t in pending)  # a permutation: nothing lost or doubled
    if tolerance == 0.0:
        assert [t.id for t in ours] == [t.id for t in exact]
        return
    group_of = {t.id: g.group_of(jobs[t.job_id].spec).name for t in pending}
    tier = {name: grp.tier for name, grp in g.by_name.items()}
    # Within a group the age order is kept, and the tiers do not mix.
    for name in set(group_of.values()):
        assert [t.id for t in ours if group_of[t.id] == name] == [t.id for t in pending if group_of[t.id] == name]
    assert [tier[group_of[t.id]] for t in ours] == sorted((tier[group_of[t.id]] for t in ours), key=lambda x: x != "critical")
    # Every task went to a group at most `tolerance` above every other group still waiting in its tier.
    left = {name: sum(1 for v in group_of.values() if v == name) for name in set(group_of.values())}
    before = {name: g._share(name, list(placed.get(name, (0.0, 0.0))), CELL) for name in g.by_name}
    after = shares_along(g, ours, jobs, placed)
    for k, t in enumerate(ours):
        mine = group_of[t.id]
        waiting = [h for h, n in left.items() if n > 0 and h != mine and tier[h] == tier[mine]]
        assert all(before[mine] <= before[h] + tolerance + 1e-12 for h in waiting), (k, mine, before)
        left[mine] -= 1
        before = after[k]
    # At every point, each group's share is within the tolerance plus two tasks of task-at-a-time's.
    reference = shares_along(g, exact, jobs, placed)
    step = {name: max((g._share(name, [jobs[t.job_id].spec.container.resources.cpu,
                                       jobs[t.job_id].spec.container.resources.memory_mib], CELL)
                       for t in pending if group_of[t.id] == name), default=0.0) for name in g.by_name}
    for k in range(len(ours)):
        for name in g.by_name:
            assert abs(after[k][name] - reference[k][name]) <= tolerance + 2 * step[name] + 1e-9, (k, name)
