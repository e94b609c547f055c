"""Pool rules with a fake clock: warm/minimum targets, burst, cooldown, LRU, limits, checkpoint,
reconcile after a restart; hypothesis drives random operation sequences against the invariants."""

from __future__ import annotations

import ipaddress
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netns.errors import CheckpointError
from netns.ipam import (
    AssignIps,
    CreateEni,
    DeleteEni,
    EniSnapshot,
    IpPool,
    IpState,
    PoolConfig,
    UnassignIps,
    sg_key,
)
from netns.limits import INSTANCE_LIMITS, UnknownInstanceType, limits_for

DEFAULT = sg_key(["sg-default"])
OTHER = sg_key(["sg-other"])


class FakeCloud:
    """Carries out a pool's actions instantly with unique addresses."""

    def __init__(self) -> None:
        self.addresses = (str(ipaddress.IPv4Address("10.0.0.0") + i) for i in itertools.count(10))
        self.eni_ids = (f"eni-{i}" for i in itertools.count(1))
        self.calls = 0

    def run(self, pool: IpPool, now: float) -> list[object]:
        actions = pool.plan(now)
        for a in actions:
            self.calls += 1
            if isinstance(a, CreateEni):
                pool.eni_created(a, next(self.eni_ids), now)
            elif isinstance(a, AssignIps):
                assert pool.ips_assigned(a, [next(self.addresses) for _ in range(a.count)], now) == []
            elif isinstance(a, UnassignIps):
                pool.ips_unassigned(a)
            else:
                pool.eni_deleted(a)
        return list(actions)

    def settle(self, pool: IpPool, now: float) -> None:
        for _ in range(10):
            if not self.run(pool, now):
                return
        raise AssertionError("pool never settled")


def config(**kw: object) -> PoolConfig:
    base: dict[str, object] = dict(
        max_enis=3, ips_per_eni=10, warm_ip_target=4, minimum_ip_target=0, refill_batch=4,
        burst_batch=8, cooldown_s=30.0, quiet_period_s=60.0, default_security_groups=DEFAULT,
    )
    base.update(kw)
    return PoolConfig(**base)  # type: ignore[arg-type]


def test_limits_table() -> None:
    assert limits_for("m5.24xlarge").container_capacity == 14 * 49
    assert limits_for("m5.8xlarge").max_enis == 8 and limits_for("m5.8xlarge").ipv4_per_eni == 30
    assert limits_for("t3.small").container_capacity == 2 * 3
    for family in ("m5", "m6i", "c5", "r5"):
        assert f"{family}.metal" in INSTANCE_LIMITS
    with pytest.raises(UnknownInstanceType):
        limits_for("z9.huge")


@pytest.mark.parametrize(
    "kw, expect_free",
    [
        (dict(warm_ip_target=4), 4),
        (dict(warm_ip_target=0, minimum_ip_target=7), 7),
        (dict(warm_ip_target=2, minimum_ip_target=1, refill_batch=1), 2),
        (dict(warm_ip_target=12, ips_per_eni=5), 12),  # spans three ENIs
    ],
)
def test_warm_and_minimum_targets(kw: dict[str, int], expect_free: int) -> None:
    pool, cloud = IpPool(config(**kw)), FakeCloud()
    cloud.settle(pool, 0.0)
    assert pool.counts(0.0)["free"] >= expect_free
    assert pool.counts(0.0)["free"] <= max(expect_free, pool.config.refill_batch) + pool.config.ips_per_eni


def test_burst_asks_in_batches_and_shrinks_after_quiet_period() -> None:
    pool, cloud = IpPool(config(max_enis=4, ips_per_eni=30, burst_batch=16)), FakeCloud()
    cloud.settle(pool, 0.0)
    cloud.calls = 0
    got = {}
    for i in range(50):
        task = f"t{i}"
        if pool.allocate(task, DEFAULT, 1.0) is None:
            cloud.settle(pool, 1.0)
            record = pool.allocate(task, DEFAULT, 1.0)
            assert record is not None
        got[task] = pool.by_task[task]
    assert len(set(got.values())) == 50
    assert cloud.calls <= 6, cloud.calls  # batches, not one call per launch
    for task in got:
        pool.release(task, 2.0)
    cloud.settle(pool, 2.0 + 30)  # cooled but not quiet: nothing given back yet
    assert pool.counts(32.0)["free"] >= 50
    cloud.settle(pool, 2.0 + 61)
    assert pool.counts(63.0)["free"] == 4
    assert len(pool.enis) == 1


def test_cooldown_and_lru() -> None:
    pool, cloud = IpPool(config(warm_ip_target=3, refill_batch=3)), FakeCloud()
    cloud.settle(pool, 0.0)
    a = pool.allocate("a", DEFAULT, 0.0)
    assert a is not None
    first = a.address
    pool.release("a", 1.0)
    # The released address is cooling: the next tasks get the never-used ones.
    b, c = pool.allocate("b", DEFAULT, 2.0), pool.allocate("c", DEFAULT, 2.0)
    assert b and c and first not in (b.address, c.address)
    assert pool.allocate("d", DEFAULT, 2.0) is None  # only the cooling one left
    assert pool.allocate("d", DEFAULT, 31.0) is not None  # ...until it has cooled
    assert pool.by_task["d"] == first
    pool.release("b", 40.0)
    pool.release("c", 41.0)
    pool.release("d", 42.0)
    e = pool.allocate("e", DEFAULT, 100.0)
    assert e is not None and e.address == b.address  # least recently released first


def test_a_condemned_eni_hands_nothing_out_and_is_given_back_when_its_tasks_are_gone() -> None:
    pool, cloud = IpPool(config(warm_ip_target=3, refill_batch=3)), FakeCloud()
    cloud.settle(pool, 0.0)
    (eni_id,) = pool.enis
    a = pool.allocate("a", DEFAULT, 1.0)
    assert a is not None and a.eni_id == eni_id
    assert pool.condemn(eni_id) and not pool.condemn("eni-unknown")
    assert pool.counts(1.0)["free"] == 0 and pool.counts(1.0)["assigned"] == 1  # no spares on it any more
    actions = pool.plan(1.0)
    # Free addresses go back at once; a new ENI is planned for the warm target; no delete while "a" holds one.
    assert any(isinstance(x, UnassignIps) and x.eni_id == eni_id and a.address not in x.addresses for x in actions)
    assert not any(isinstance(x, DeleteEni) for x in actions)
    assert any(isinstance(x, CreateEni) for x in actions)
    for x in actions:  # carry them out
        if isinstance(x, CreateEni):
            pool.eni_created(x, "eni-new", 1.0)
        elif isinstance(x, UnassignIps):
            pool.ips_unassigned(x)
    cloud.settle(pool, 1.0)
    b = pool.allocate("b", DEFAULT, 2.0)
    assert b is not None and b.eni_id == "eni-new"  # never from the condemned one
    pool.release("a", 3.0)  # the task that was on it ended (its cooling address is not waited for)
    doc = pool.to_json()
    restored = IpPool.from_json(pool.config, doc)
    assert restored.enis[eni_id].condemned  # survives a restart: the checkpoint...
    snaps = [EniSnapshot(e.eni_id, e.security_groups, e.device_index, tuple(sorted(e.addresses)))
             for e in pool.enis.values()]
    restored.reconcile(snaps, {"a": a.address}, 3.0)
    assert restored.enis[eni_id].condemned  # ...and the reconcile with the provider after it
    assert all(r.eni_id != eni_id for r in (restored.allocate(f"x{i}", DEFAULT, 100.0) for i in range(3)) if r)
    cloud.settle(pool, 3.0)
    assert eni_id not in pool.enis and set(pool.enis) == {"eni-new"}


def test_security_groups_get_their_own_eni_and_eni_limit() -> None:
    pool, cloud = IpPool(config(max_enis=2)), FakeCloud()
    cloud.settle(pool, 0.0)
    assert pool.allocate("x", OTHER, 1.0) is None
    cloud.settle(pool, 1.0)
    x = pool.allocate("x", OTHER, 1.0)
    assert x is not None and pool.enis[x.eni_id].security_groups == OTHER
    third = sg_key(["sg-third"])
    assert pool.allocate("y", third, 1.0) is None
    cloud.settle(pool, 1.0)
    assert pool.starved(third, 1.0)  # 2 ENIs in use, none with these groups
    # After the quiet period the OTHER ENI is emptied and deleted, then the third group gets one.
    pool.release("x", 2.0)
    pool.cancel_wait("y")
    cloud.settle(pool, 100.0)
    assert all(e.security_groups != OTHER for e in pool.enis.values())
    assert pool.allocate("y", third, 101.0) is None
    cloud.settle(pool, 101.0)
    assert pool.allocate("y", third, 101.0) is not None


def test_duplicate_addresses_from_provider_are_refused() -> None:
    pool, cloud = IpPool(config(warm_ip_target=1, refill_batch=1)), FakeCloud()
    create = pool.plan(0.0)[0]
    assert isinstance(create, CreateEni)
    pool.eni_created(create, "eni-a", 0.0)
    assign = pool.plan(0.0)[0]
    assert isinstance(assign, AssignIps)
    assert pool.ips_assigned(assign, ["10.0.0.5"], 0.0) == []
    pool.warm_target = lambda groups, now: 2  # type: ignore[method-assign]
    again = pool.plan(0.0)[0]
    assert isinstance(again, AssignIps)
    assert pool.ips_assigned(again, ["10.0.0.5"], 0.0) == ["10.0.0.5"]
    del cloud


def test_failed_actions_are_undone() -> None:
    pool = IpPool(config())
    (create,) = pool.plan(0.0)
    pool.action_failed(create)
    assert pool.eni_count() == 0
    (create,) = pool.plan(0.0)
    assert isinstance(create, CreateEni)
    pool.eni_created(create, "eni-a", 0.0)
    (assign,) = pool.plan(0.0)
    pool.action_failed(assign)
    assert pool.enis["eni-a"].assigning == 0


def test_checkpoint_roundtrip_and_rejects_garbage() -> None:
    pool, cloud = IpPool(config()), FakeCloud()
    cloud.settle(pool, 0.0)
    pool.allocate("a", DEFAULT, 1.0)
    pool.allocate("b", DEFAULT, 1.0)
    pool.release("b", 2.0)
    doc = json.loads(json.dumps(pool.to_json()))
    back = IpPool.from_json(pool.config, doc)
    assert back.by_task == pool.by_task
    assert back.counts(3.0) == pool.counts(3.0)
    bad: object
    for bad in (
        {"version": "titus-ipam/9", "enis": [], "ips": []},
        {"version": "titus-ipam/1", "enis": [], "ips": [{"address": "10.0.0.1"}]},
        {**doc, "ips": doc["ips"] + doc["ips"][:1]},
        {**doc, "ips": [{**doc["ips"][0], "address": "not-an-ip"}]},
        [],
    ):
        with pytest.raises(CheckpointError):
            IpPool.from_json(pool.config, bad)


def test_reconcile_after_restart() -> None:
    pool, cloud = IpPool(config(warm_ip_target=6, refill_batch=6)), FakeCloud()
    cloud.settle(pool, 0.0)
    a, b = pool.allocate("a", DEFAULT, 1.0), pool.allocate("b", DEFAULT, 1.0)
    assert a and b
    doc = pool.to_json()
    eni = next(iter(pool.enis.values()))
    # The provider also holds an address assigned mid-burst before the checkpoint was written.
    snaps = [EniSnapshot(eni.eni_id, DEFAULT, 1, tuple(sorted(eni.addresses)) + ("10.0.9.9",))]
    restarted = IpPool.from_json(pool.config, doc)
    # Task a still runs; b is gone; c runs with an address the checkpoint never saw on an ENI.
    report = restarted.reconcile(snaps, {"a": a.address, "c": "10.0.9.9", "z": "10.7.7.7"}, 50.0)
    assert report.kept == {"a": a.address}
    assert report.adopted == {"c": "10.0.9.9"}
    assert report.released == {"b": b.address}
    assert report.orphan_tasks == {"z": "10.7.7.7"}
    assert restarted.ips[b.address].released_at == 50.0  # cooling, not handed out at once
    assert restarted.allocate("new", DEFAULT, 51.0).address not in (a.address, b.address, "10.0.9.9")  # type: ignore[union-attr]


# ---- properties --------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "release", "plan", "fail", "tick", "restart"]),
        st.integers(0, 30),
        st.sampled_from([DEFAULT, OTHER]),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(1, 3), st.integers(1, 6), st.integers(0, 5), st.integers(0, 8))
def test_invariants(
    steps: list[tuple[str, int, tuple[str, ...]]], max_enis: int, per_eni: int, warm: int, minimum: int
) -> None:
    cfg = config(
        max_enis=max_enis, ips_per_eni=per_eni, warm_ip_target=warm,
        minimum_ip_target=min(minimum, max_enis * per_eni), refill_batch=2, burst_batch=3,
        cooldown_s=5.0, quiet_period_s=10.0,
    )
    pool, cloud = IpPool(cfg), FakeCloud()
    now = 0.0
    pending: list[object] = []
    for op, n, groups in steps:
        task = f"t{n}"
        if op == "alloc":
            fresh = task not in pool.by_task
            got = pool.allocate(task, groups, now)
            if got is not None and fresh:  # a cooling address is never handed out
                assert got.released_at is None or now - got.released_at >= cfg.cooldown_s
                assert pool.enis[got.eni_id].security_groups == groups
        elif op == "release":
            pool.release(task, now)
        elif op == "plan":
            pending += pool.plan(now)
            # carry out all but the newest, which stays in flight
            while len(pending) > 1:
                a = pending.pop(0)
                if isinstance(a, CreateEni):
                    pool.eni_created(a, next(cloud.eni_ids), now)
                elif isinstance(a, AssignIps):
                    pool.ips_assigned(a, [next(cloud.addresses) for _ in range(a.count)], now)
                elif isinstance(a, UnassignIps):
                    pool.ips_unassigned(a)
                elif isinstance(a, DeleteEni):
                    pool.eni_deleted(a)
        elif op == "fail" and pending:
            pool.action_failed(pending.pop())  # type: ignore[arg-type]
        elif op == "tick":
            now += n
        elif op == "restart":
            pending.clear()
            snaps = [
                EniSnapshot(e.eni_id, e.security_groups, e.device_index, tuple(e.addresses))
                for e in pool.enis.values()
            ]
            running = {t: a for t, a in pool.by_task.items() if hash(t) % 2 == 0}
            pool = IpPool.from_json(cfg, json.loads(json.dumps(pool.to_json())))
            pool.reconcile(snaps, running, now)
        # no address assigned twice; a task has at most one
        assigned = [r for r in pool.ips.values() if r.state is IpState.ASSIGNED]
        assert len({r.task_id for r in assigned}) == len(assigned) == len(pool.by_task)
        assert all(pool.ips[a].task_id == t for t, a in pool.by_task.items())
        # every known address is in exactly one state; ENIs agree with the address table
        c = pool.counts(now)
        assert sum(c.values()) == len(pool.ips)
        assert sum(len(e.addresses) for e in pool.enis.values()) == len(pool.ips)
        # limits hold, counting what is in flight
        assert pool.eni_count() <= cfg.max_enis
        for e in pool.enis.values():
            assert len(e.addresses) + e.assigning <= cfg.ips_per_eni
            assert all(pool.ips[a].eni_id == e.eni_id for a in e.addresses)
