"""CredentialBroker: ARN/session rules, refresh timing with a fake clock, outage and recovery,
malformed STS answers, single-flight."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import threading
from typing import Any

import pytest

from prometheus_client import CollectorRegistry

from imds.credentials import CredentialBroker, CredentialError, parse_role_arn, session_name
from imds.metrics import ImdsMetrics

from .conftest import Env, FakeClock, FakeSts, client_error, identity, role_arn


def broker(clock: FakeClock, sts: FakeSts, **kw: Any) -> CredentialBroker:
    return CredentialBroker(lambda: sts, clock=clock, tick_s=3600.0, rng=random.Random(7), **kw)


async def drain(b: CredentialBroker) -> None:
    for st in list(b._tasks.values()):
        if st.inflight is not None:
            await asyncio.shield(st.inflight)


async def reach_their_waits() -> None:
    """Let every task just created run up to its first real wait (a few loop turns, no wall time)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("arn,name,path", [
    ("arn:aws:iam::123456789012:role/app", "app", "/"),
    ("arn:aws:iam::123456789012:role/a/b/app+=,.@-_", "app+=,.@-_", "/a/b/"),
    ("arn:aws-cn:iam::123456789012:role/x", "x", "/"),
    ("arn:aws-us-gov:iam::123456789012:role/x", "x", "/"),
])
def test_parse_role_arn(arn: str, name: str, path: str) -> None:
    r = parse_role_arn(arn)
    assert (r.name, r.path, r.account) == (name, path, "123456789012")


@pytest.mark.parametrize("arn", [
    "", "app", "arn:aws:iam::123456789012:role/", "arn:aws:iam::1234567890123:role/x",
    "arn:aws:iam::123456789012:user/x", "arn:aws:sts::123456789012:role/x", "arn:aws:iam:us-east-1:123456789012:role/x",
    "arn:aws:iam::123456789012:role/x y", "arn:aws:iam::123456789012:role/x\n", "arn:evil:iam::123456789012:role/x",
    "arn:aws:iam::123456789012:role//x", "arn:aws:iam::123456789012:role/" + "n" * 65,
    " arn:aws:iam::123456789012:role/x",
])
def test_parse_role_arn_rejects(arn: str) -> None:
    with pytest.raises(ValueError, match="role ARN"):
        parse_role_arn(arn)


def test_session_name() -> None:
    assert session_name("abc-123") == "titus-abc-123"
    assert session_name("a b/c:d") == "titus-a-b-c-d"
    long = session_name("x" * 100)
    assert len(long) == 64 and long.startswith("titus-xxx")
    assert session_name("é") == "titus--"


async def test_refresh_timing() -> None:
    clock = FakeClock()
    sts = FakeSts(clock)
    b = broker(clock, sts)
    registry = CollectorRegistry()
    b.attach_metrics(ImdsMetrics(registry))
    b.add("t", role_arn("r"))
    first = await b.get("t")
    t0 = clock.now
    assert first.expiration == pytest.approx(t0 + 3600)
    st = b._tasks["t"]
    left_at_refresh = first.expiration - st.refresh_at
    assert 1200 <= left_at_refresh <= 1500  # refresh when 20-25 min are left
    # nothing happens before the refresh time
    clock.advance(3600 - 1500 - 1)
    assert b.maintain_once() == 0 and len(sts.calls) == 1
    clock.now = st.refresh_at
    assert b.maintain_once() == 1
    await drain(b)
    assert len(sts.calls) == 2
    second = b.peek("t")
    assert second is not None and second.expiration == pytest.approx(clock.now + 3600)
    assert second.access_key_id != first.access_key_id
    # every credential handed out across a long run had >= 15 min left, with the refresher ticking
    handed = []
    lags = [0.0, 0.0]  # the prefetch and the refresh above ran exactly when due (the clock stood still)
    for _ in range(6 * 3600 // 30):
        clock.advance(30)
        due = st.refresh_at
        if b.maintain_once():
            lags.append(clock.now - due)  # how late the refresher started, on a 30 s tick
        await drain(b)
        c = await b.get("t")
        handed.append(c.expiration - clock.now)
    assert min(handed) >= 1200 - 30
    # 6 h of 1 h credentials refreshed 20-25 min before expiry (every 35-40 min, plus < one 30 s
    # tick): 8 to 10 refreshes after the first two fetches, each started within one tick of when it
    # was due; the refresh-lag histogram saw every fetch, with exactly those lags.
    assert len(sts.calls) == len(lags) and 10 <= len(lags) <= 12
    assert all(0 <= lag < 30 for lag in lags[2:])
    assert registry.get_sample_value("titus_imds_refresh_lag_seconds_count") == len(lags)
    assert registry.get_sample_value("titus_imds_refresh_lag_seconds_sum") == pytest.approx(sum(lags))
    assert registry.get_sample_value("titus_imds_sts_calls_total", {"result": "ok"}) == len(lags)
    await b.close()


async def test_jitter_spreads_refreshes() -> None:
    clock = FakeClock()
    sts = FakeSts(clock)
    b = CredentialBroker(lambda: sts, clock=clock, tick_s=3600.0, rng=random.Random(11))
    for i in range(20):
        b.add(f"t{i}", role_arn("r"))
    await drain(b)
    times = {round(st.refresh_at) for st in b._tasks.values()}
    assert len(times) > 10
    for st in b._tasks.values():
        assert st.creds is not None and 1200 <= st.creds.expiration - st.refresh_at <= 1500
    await b.close()


async def test_outage_serves_cached_then_503_then_recovers(env: Env) -> None:
    await env.add(identity("t1"))
    tok = await env.token("t1")
    path = "/latest/meta-data/iam/security-credentials/app-role"
    status, body = await env.get("t1", path, tok)
    good = json.loads(body)
    fail = True

    def outage(arn: str, session: str) -> Any:
        if fail:
            raise client_error("ServiceUnavailable")
        return None

    env.sts.behaviour = outage
    calls_before = len(env.sts.calls)
    st = env.broker._tasks["t1"]
    # past the refresh point: refresh attempts fail, cached creds still served (>= 15 min left)
    env.clock.now = st.refresh_at + 1
    delays = []
    while True:
        env.broker.maintain_once()
        await drain(env.broker)
        status, body = await env.get("t1", path, tok)
        remaining = good and (st.creds.expiration - env.clock.now if st.creds else 0)
        if remaining < 900:
            break
        assert status == 200 and json.loads(body)["AccessKeyId"] == good["AccessKeyId"]
        delays.append(st.next_attempt_at - env.clock.now)
        env.clock.now = st.next_attempt_at
    # backoff doubles from 1 s and is capped at 30 s (with <= 20 % jitter below)
    assert 0.8 <= delays[0] <= 1.0 and 1.6 <= delays[1] <= 2.0 and 3.2 <= delays[2] <= 4.0
    assert max(delays) <= 30 and delays[-1] >= 24
    # < 15 min left: 503 with a JSON Code/Message, no secrets
    env.clock.now = st.next_attempt_at
    status, body = await env.get("t1", path, tok)
    assert status == 503
    err = json.loads(body)
    assert err["Code"] == "ServiceUnavailable" and err["Message"]
    assert good["SecretAccessKey"] not in body
    ecs_status, ecs_body = await env.ecs("t1")
    assert ecs_status == 503 and json.loads(ecs_body)["Code"]
    # Every attempt failed and was counted: one per back-off step, the one that found < 15 min left,
    # and the one the GET above started (the ECS GET came during its back-off: no call).
    failed = len(env.sts.calls) - calls_before
    assert failed == len(delays) + 2
    assert env.metric("titus_imds_sts_errors_total", {"code": "ServiceUnavailable"}) == failed
    assert env.metric("titus_imds_sts_calls_total", {"result": "error"}) == failed
    # the credentials expire during the outage: never served
    env.clock.now = good_exp = st.refresh_at + 3600
    env.broker.maintain_once()
    await drain(env.broker)
    assert st.creds is None and (await env.get("t1", path, tok))[0] == 503
    # STS recovers: the next retry (no operator action) brings credentials back
    fail = False
    env.clock.now = max(st.next_attempt_at, good_exp)
    env.broker.maintain_once()
    await drain(env.broker)
    status, body = await env.get("t1", path, tok)
    assert status == 200 and json.loads(body)["AccessKeyId"] != good["AccessKeyId"]
    assert env.service.snapshot()["t1"]["credentials"]["last_error"] is None


async def test_get_during_backoff_fails_fast(env: Env) -> None:
    env.sts.behaviour = lambda arn, s: (_ for _ in ()).throw(client_error("Throttling"))
    await env.add(identity("t1"), wait=False)
    await drain(env.broker)
    tok = await env.token("t1")
    calls = len(env.sts.calls)
    for _ in range(5):
        status, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
        assert status == 503 and json.loads(body)["Code"] == "Throttling"
    assert len(env.sts.calls) == calls  # GETs during backoff do not hammer STS
    env.sts.behaviour = None
    env.clock.advance(1.0)  # backoff elapsed: the next GET triggers (and waits for) a retry
    status, _ = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    assert status == 200


@pytest.mark.parametrize("code", ["AccessDenied", "AccessDeniedException", "AuthFailure", "UnauthorizedOperation"])
async def test_access_denied_is_403(env: Env, code: str) -> None:
    env.sts.behaviour = lambda arn, s: (_ for _ in ()).throw(
        client_error(code, "User: arn:aws:sts::999:assumed-role/HOST-ROLE/i-1 is not authorized")
    )
    await env.add(identity("t1"), wait=False)
    await drain(env.broker)
    tok = await env.token("t1")
    status, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    assert status == 403
    assert json.loads(body)["Code"] == code
    assert "HOST-ROLE" not in body  # STS's message (naming the host role) is only logged
    assert (await env.ecs("t1"))[0] == 403


def _answer(sts: FakeSts, **change: Any) -> Any:
    def make(arn: str, session: str) -> Any:
        a = sts.answer(arn, session)
        for key, value in change.items():
            if key in a["Credentials"]:
                if value is None:
                    del a["Credentials"][key]
                else:
                    a["Credentials"][key] = value
            else:
                a[key] = value
        return a

    return make


def now_plus(clock: FakeClock, s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock.now + s, dt.timezone.utc)


@pytest.mark.parametrize("case", [
    "not-a-dict", "no-credentials", "no-key", "empty-secret", "int-token", "no-expiration", "bad-expiration",
    "expired", "short-lived", "other-role", "no-user", "newline-token",
])
async def test_malformed_sts_answers(env: Env, case: str) -> None:
    c, s = env.clock, env.sts
    behaviours = {
        "not-a-dict": lambda a, n: ["nope"],
        "no-credentials": lambda a, n: {"AssumedRoleUser": {}},
        "no-key": _answer(s, AccessKeyId=None),
        "empty-secret": _answer(s, SecretAccessKey=""),
        "int-token": _answer(s, SessionToken=5),
        "no-expiration": _answer(s, Expiration=None),
        "bad-expiration": _answer(s, Expiration="tomorrow"),
        "expired": _answer(s, Expiration=now_plus(c, -10)),
        "short-lived": _answer(s, Expiration=now_plus(c, 600)),
        "other-role": _answer(s, AssumedRoleUser={"Arn": "arn:aws:sts::123456789012:assumed-role/host/x"}),
        "no-user": _answer(s, AssumedRoleUser=None),
        "newline-token": _answer(s, SessionToken="abc\ndef"),
    }
    s.behaviour = behaviours[case]
    await env.add(identity("t1"), wait=False)
    await drain(env.broker)
    tok = await env.token("t1")
    status, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    assert status == 503
    assert json.loads(body)["Code"] in ("MalformedAnswer", "ShortLived")
    # the service is still up and recovers once STS answers properly
    s.behaviour = None
    env.clock.advance(1)
    assert (await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok))[0] == 200


async def test_string_expiration_accepted(env: Env) -> None:
    exp = now_plus(env.clock, 3600).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.sts.behaviour = _answer(env.sts, Expiration=exp)
    await env.add(identity("t1"))
    assert env.broker.peek("t1") is not None


async def test_unexpected_exception_is_503(env: Env) -> None:
    env.sts.behaviour = lambda a, n: (_ for _ in ()).throw(RuntimeError("kaboom"))
    await env.add(identity("t1"), wait=False)
    await drain(env.broker)
    tok = await env.token("t1")
    status, body = await env.get("t1", "/latest/meta-data/iam/security-credentials/app-role", tok)
    assert status == 503 and json.loads(body)["Code"] == "InternalError"


async def test_single_flight() -> None:
    clock = FakeClock()
    sts = FakeSts(clock)
    sts.gate = threading.Event()
    b = broker(clock, sts)
    b.add("t", role_arn("r"))
    getters = [asyncio.ensure_future(b.get("t")) for _ in range(50)]
    await sts.wait_calls(1)  # the prefetch is inside STS, held by the gate
    await reach_their_waits()
    assert not any(g.done() for g in getters)  # all 50 wait for that one call
    assert len(sts.calls) == 1
    sts.gate.set()
    results = await asyncio.gather(*getters)
    assert len(sts.calls) == 1
    assert len({r.access_key_id for r in results}) == 1
    # same during a refresh: concurrent getters after expiry nearing wait for one fetch
    sts.gate = threading.Event()
    clock.advance(3600 - 800)  # < 15 min left: cached creds no longer handed out
    getters = [asyncio.ensure_future(b.get("t")) for _ in range(50)]
    await sts.wait_calls(2)  # the first getter started the refresh; it is held in STS
    await reach_their_waits()
    assert not any(g.done() for g in getters)
    assert b.maintain_once() == 0  # the refresher does not start a second one either
    sts.gate.set()
    results = await asyncio.gather(*getters)
    assert len(sts.calls) == 2 and len({r.access_key_id for r in results}) == 1
    await b.close()


async def test_pending_timeout() -> None:
    clock = FakeClock()
    sts = FakeSts(clock)
    sts.gate = threading.Event()
    b = broker(clock, sts, wait_s=0.05)
    b.add("t", role_arn("r"))
    with pytest.raises(CredentialError) as e:
        await b.get("t")
    assert e.value.status == 503 and e.value.code == "Pending"
    sts.gate.set()
    await drain(b)
    assert (await b.get("t")).role_arn == role_arn("r")
    await b.close()


async def test_remove_during_fetch_discards() -> None:
    clock = FakeClock()
    sts = FakeSts(clock)
    sts.gate = threading.Event()
    b = broker(clock, sts)
    b.add("t", role_arn("r"))
    getter = asyncio.ensure_future(b.get("t"))
    await sts.wait_calls(1)  # the fetch is inside STS
    await reach_their_waits()
    assert not getter.done()
    b.remove("t")
    sts.gate.set()
    with pytest.raises(CredentialError) as e:
        await getter
    assert e.value.status == 404
    assert b.peek("t") is None and b.snapshot() == {}
    await b.close()


def test_broker_config_validation() -> None:
    with pytest.raises(ValueError):
        CredentialBroker(lambda: None, min_remaining_s=1300)
