"""The placement engine: each fitness term and constraint (table-driven), why-pending reasons, and
properties (never over capacity, never a bad host, same result whatever the host order)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.engine import Decision, Engine, HostInput, HostTable, Request, reason_text
from scheduler.fitness import Mode
from titus_common.constraints import ConstraintsSpec


def host(
    id: str, free: float = 8, cpus: float = 8, zone: str = "a", labels: dict[str, str] | None = None, **kw: object
) -> HostInput:
    lb = {"zone": zone, "instanceType": "m5", **(labels or {})}
    return HostInput(id, cpus, cpus * 1024, 100_000, free, free * 1024, 100_000, labels=lb, **kw)  # type: ignore[arg-type]


def req(job: str = "j", cpu: float = 1, i: int = 0, **kw: object) -> Request:
    return Request(f"{job}-{i}", job, cpu, cpu * 1024, 10, **kw)  # type: ignore[arg-type]


def hard(**c: str) -> ConstraintsSpec:
    return ConstraintsSpec(hard=c)


# (name, mode, hosts, request, expected host) — one row per fitness term / constraint.
CASES = [
    ("spread: least allocated", Mode.SPREAD, [host("h1", free=2), host("h2", free=6)], req(), "h2"),
    ("pack: most allocated", Mode.PACK, [host("h1", free=2), host("h2", free=6)], req(), "h1"),
    ("pack: cached image beats utilisation", Mode.PACK,
     [host("h1", free=2), host("h2", free=6, images=frozenset({"app:1"}))], req(image="app:1"), "h2"),
    ("spread: cached image ignored", Mode.SPREAD,
     [host("h1", free=6), host("h2", free=2, images=frozenset({"app:1"}))], req(image="app:1"), "h1"),
    ("pack: warm network", Mode.PACK,
     [host("h1", free=4), host("h2", free=4, warm={"sg-1": 3})], req(sg_key="sg-1"), "h2"),
    ("pack: warm ENI without free IPs is cold", Mode.PACK,
     [host("h1", free=4), host("h2", free=4, warm={"sg-1": 0})], req(sg_key="sg-1"), "h1"),
    ("spread: job spreading", Mode.SPREAD,
     [host("h1", free=6, job_tasks={"j": 2}, tasks=2), host("h2", free=5)], req(), "h2"),
    ("pack: job anti-affinity", Mode.PACK,
     [host("h1", free=4, job_tasks={"j": 7}, tasks=7), host("h2", free=4)], req(), "h2"),
    ("zone balance (soft term)", Mode.SPREAD,
     [host("h1", free=8, zone="a", job_tasks={"j": 1}, tasks=1), host("h2", free=7, zone="b")], req(), "h2"),
    ("unhealthy host excluded", Mode.PACK, [host("h1", free=2, bad=True), host("h2", free=6)], req(), "h2"),
    ("no free IP", Mode.PACK, [host("h1", free=2, free_ips=0), host("h2", free=6, free_ips=5)], req(), "h2"),
    ("hard uniqueHost", Mode.PACK,
     [host("h1", free=4, job_tasks={"j": 1}), host("h2", free=8)], req(constraints=hard(uniqueHost="true")), "h2"),
    ("hard zone", Mode.PACK, [host("h1", zone="a"), host("h2", zone="b")], req(constraints=hard(zone="b")), "h2"),
    ("hard label", Mode.PACK, [host("h1", free=1), host("h2", labels={"gpu": "1"})],
     req(constraints=hard(**{"label.gpu": "1"})), "h2"),
    ("soft instanceType", Mode.PACK,
     [host("h1", free=2), HostInput("h2", 8, 8192, 100_000, 8, 8192, 100_000, labels={"instanceType": "r5"})],
     req(constraints=ConstraintsSpec(soft={"instanceType": "r5"})), "h2"),
    ("hard zoneBalance", Mode.PACK,
     [host("h1", free=2, zone="a", job_tasks={"j": 1}), host("h2", free=8, zone="b")],
     req(constraints=hard(zoneBalance="true")), "h2"),
]


@pytest.mark.parametrize("name,mode,hosts,request_,expected", CASES, ids=[c[0] for c in CASES])
def test_placement_table(name: str, mode: Mode, hosts: list[HostInput], request_: Request, expected: str) -> None:
    d = Engine(mode).place(HostTable(hosts), request_)
    assert d.host == expected, (name, d)


def test_pack_job_cap_keeps_one_job_off_one_host() -> None:
    table = HostTable([host("h1", free=64, cpus=64), host("h2", free=64, cpus=64)])
    decisions = Engine(Mode.PACK, job_cap=8).place_all(table, [req(i=i) for i in range(16)])
    assert [d.host for d in decisions].count("h1") == 8 and [d.host for d in decisions].count("h2") == 8


def test_why_pending_counts_first_failure_per_host() -> None:
    hosts = [host("h1", free=0.5), host("h2", free=0.5), host("h3", bad=True), host("h4", zone="b")]
    d = Engine().place(HostTable(hosts), req(constraints=hard(zone="a")))
    assert d.host is None
    assert d.reasons == [("not enough cpu", 2), ("unhealthy", 1), ("host attribute zone!=a", 1)]
    assert reason_text(d.reasons) == "2 hosts: not enough cpu; 1 hosts: unhealthy; 1 hosts: host attribute zone!=a"


@pytest.mark.parametrize("hosts,request_,reason", [
    ([host("h", free=8)], Request("t", "j", 1, 10**9, 1), "not enough memory"),
    ([HostInput("h", 8, 8192, 5, 8, 8192, 5)], req(), "not enough disk"),
    ([host("h", free_ips=0)], req(), "no free IP"),
    ([host("h", job_tasks={"j": 1})], req(constraints=hard(uniqueHost="true")), "job already has 1 task(s) there"),
    ([host("h", tasks=120)], req(), "host task limit"),
])
def test_why_pending_each_reason(hosts: list[HostInput], request_: Request, reason: str) -> None:
    assert Engine().place(HostTable(hosts), request_).reasons == [(reason, 1)]


def test_caller_masks_are_hard_filters() -> None:
    import numpy as np
    d = Engine().place(HostTable([host("h1")]), req(), [("posture: no AppArmor", np.array([False]))])
    assert d.reasons == [("posture: no AppArmor", 1)]


def test_a_job_that_fits_nowhere_costs_one_scan() -> None:
    engine = Engine()
    calls = 0
    real = engine._place_run

    def counting(*a: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return real(*a, **kw)  # type: ignore[arg-type]

    engine._place_run = counting  # type: ignore[method-assign, assignment]
    out = engine.place_all(HostTable([host("h1", free=1)]), [req(cpu=4, i=i) for i in range(1000)])
    assert calls == 1 and all(d.host is None and d.reasons == [("not enough cpu", 1)] for d in out)


@pytest.mark.parametrize("bad", [
    {"hard": {"nope": "1"}}, {"hard": {"uniqueHost": "yes"}}, {"hard": {"maxPerHost": "0"}},
    {"hard": {"uniqueHost": "true", "maxPerHost": "3"}}, {"hard": {"zoneBalance": "true", "zone": "a"}},
    {"hard": {"zone": "a"}, "soft": {"zone": "b"}},
])
def test_bad_constraints_refused(bad: dict[str, dict[str, str]]) -> None:
    with pytest.raises(ValueError):
        ConstraintsSpec.model_validate(bad)


fleet = st.lists(
    st.tuples(st.floats(0, 16), st.sampled_from("abc"), st.booleans(), st.sampled_from(["", "img1", "img2"])),
    min_size=1, max_size=30,
)
demands = st.lists(st.tuples(st.sampled_from([0.5, 1, 2, 4, 8]), st.sampled_from("xyz")), min_size=1, max_size=60)


def _hosts(spec: list[tuple[float, str, bool, str]]) -> list[HostInput]:
    return [host(f"h{i:02d}", free=f, cpus=16, zone=z, bad=b, images=frozenset({im} - {""}))
            for i, (f, z, b, im) in enumerate(spec)]


@settings(max_examples=60, deadline=None)
@given(fleet, demands, st.sampled_from(list(Mode)), st.randoms(use_true_random=False))
def test_properties(spec: list[tuple[float, str, bool, str]], ds: list[tuple[float, str]], mode: Mode, rnd: object) -> None:
    hosts = _hosts(spec)
    reqs = [Request(f"t{i}", j, c, c * 1024, 10, image="img1") for i, (c, j) in enumerate(ds)]
    table = HostTable(hosts, seed=7)
    a = Engine(mode, seed=7).place_all(table, reqs)
    # never over capacity, never a bad host
    assert (table.free_cpu >= -1e-9).all() and (table.free_mem >= 0).all()
    bad = {h.id for h in hosts if h.bad}
    assert not any(d.host in bad for d in a)
    # determinism under reordering of hosts
    shuffled = list(hosts)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    b = Engine(mode, seed=7).place_all(HostTable(shuffled, seed=7), reqs)
    assert [d.host for d in a] == [d.host for d in b]


constraint_sets = st.sampled_from([
    ConstraintsSpec(),
    ConstraintsSpec(hard={"zoneBalance": "true"}),
    ConstraintsSpec(soft={"zoneBalance": "true", "maxPerHost": "2"}),
    ConstraintsSpec(hard={"uniqueHost": "true"}),
    ConstraintsSpec(hard={"maxPerHost": "3"}, soft={"instanceType": "m6"}),
])


@settings(max_examples=80, deadline=None)
@given(fleet, st.lists(st.tuples(st.sampled_from([0.5, 1, 2, 4]), st.integers(1, 12), constraint_sets),
                       min_size=1, max_size=6),
       st.sampled_from(list(Mode)), st.booleans())
def test_a_run_of_one_job_places_exactly_as_one_task_at_a_time(
    spec: list[tuple[float, str, bool, str]], jobs: list[tuple[float, int, ConstraintsSpec]], mode: Mode, warm: bool,
) -> None:
    """The incremental run (`_place_run` over a job's tasks) against placing each task alone."""
    hosts = _hosts(spec)
    if warm:
        for i, h in enumerate(hosts):
            h.warm = {"sg-a": i % 3}
    reqs = [Request(f"{j}-{k}", f"job{j}", c, c * 1024, 10, image="img1", sg_key="sg-a", constraints=cs, job_tasks=n)
            for j, (c, n, cs) in enumerate(jobs) for k in range(n)]
    together = Engine(mode, seed=3).place_all(HostTable(hosts, seed=3), reqs)
    engine, table = Engine(mode, seed=3), HostTable(hosts, seed=3)
    alone = []
    failed: dict[str, list[tuple[str, int]]] = {}
    for r in reqs:  # what place_all did before runs: one task at a time, a failed job short-cut
        if r.job_id in failed:
            alone.append(Decision(r.task_id, None, failed[r.job_id]))
            continue
        d = engine.place(table, r)
        if d.host is None:
            failed[r.job_id] = d.reasons
        alone.append(d)
    assert [(d.host, d.reasons, d.breakdown) for d in together] == [(d.host, d.reasons, d.breakdown) for d in alone]
