"""The bootstrap rate limit (scheduler/bootstrap_limit.py) and the per-call trust caches that keep a
kept-alive TLS call cheap (docs/trust.md), against a real TLS listener on loopback."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.node_credentials import NodeCredentials
from scheduler import bootstrap_limit
from scheduler.api import make_app
from scheduler.auth import Auth
from scheduler.authstore import AuthStore, Token, TokenRefused
from scheduler.bootstrap_limit import BootstrapLimiter, BootstrapLimits
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca, server_context
from tests.harness import free_port
from tests.unit.test_trust import Cell
from titus_common.iam_policy import IamPolicy
from titus_common.pki import client_context, csr_for, new_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_source_and_cell_buckets() -> None:
    clock = Clock()
    limiter = BootstrapLimiter(BootstrapLimits(rate=1.0, burst=3, source_rate=0.5, source_burst=2), clock)
    assert limiter.admit("a") is None and limiter.admit("a") is None
    refused = limiter.admit("a")
    assert refused is not None and refused[0] == "source" and refused[1] == pytest.approx(2.0)
    assert limiter.admit("b") is None  # the refused call took no token from the cell
    refused = limiter.admit("c")
    assert refused is not None and refused[0] == "cell" and refused[1] == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.admit("c") is None
    clock.now -= 100  # a clock stepping back mints nothing
    assert limiter.admit("d") is not None


def test_sources_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap_limit, "MAX_SOURCES", 3)
    clock = Clock()
    limiter = BootstrapLimiter(BootstrapLimits(rate=100, burst=100, source_rate=1, source_burst=1), clock)
    for source in ("a", "b", "c", "d", "e"):
        assert limiter.admit(source) is None
    assert len(limiter) <= 3
    assert limiter.admit("e") is not None  # the newest is still remembered (and empty)


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Cell]:
    pki = tmp_path / "pki"
    init_ca(pki)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(), s.metrics.registry,
                bootstrap_limits=BootstrapLimits(rate=100, burst=100, source_rate=0.1, source_burst=3))
    runner = web.AppRunner(make_app(s, None, auth, CA.load(pki)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(pki)).start()
    yield Cell(f"https://127.0.0.1:{port}", pki, tmp_path, s, auth, CA.load(pki))
    await runner.cleanup()
    auth.store.close()
    s.store.close()


async def test_bootstrap_is_rate_limited_and_bad_tokens_counted_and_logged_once(
    limited: Cell, caplog: pytest.LogCaptureFixture
) -> None:
    cell = limited
    csr = csr_for(new_key(), "n-1").decode()
    ctx = client_context(cell.pki / "ca.crt")
    answers: list[tuple[int, str | None]] = []
    with caplog.at_level(logging.WARNING, logger="titus.scheduler.auth"):
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.post(f"{cell.url}/v1/bootstrap", json={"token": "x.guess", "csr": csr}, ssl=ctx) as r:
                    answers.append((r.status, r.headers.get("Retry-After")))
    assert [a[0] for a in answers] == [401, 401, 401, 429, 429, 429]
    assert all(a[1] is not None and int(a[1]) >= 1 for a in answers[3:])
    assert cell.refused("bootstrap_token") == 3 and cell.refused("bootstrap_rate_source") == 3
    lines = [r.getMessage() for r in caplog.records]
    # one line per (source, reason) a minute, not one per call
    assert len([m for m in lines if "bootstrap_token" in m]) == 1, lines
    assert len([m for m in lines if "bootstrap_rate_source" in m]) == 1, lines
    assert "n-1" not in cell.scheduler.nodes and not cell.auth.store.live_certs("n-1")

    # Once the bucket refills, a good token works again.
    clock = Clock()
    cell.auth.bootstrap_limiter = BootstrapLimiter(cell.auth.bootstrap_limiter.limits, clock)
    token = cell.bootstrap_token(nodes="n-*")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{cell.url}/v1/bootstrap", json={"token": token.read_text(), "csr": csr}, ssl=ctx) as r:
            assert r.status == 201, await r.text()


def test_operator_tokens_are_cached_but_expiry_is_checked_every_call(tmp_path: Path) -> None:
    store = AuthStore(tmp_path / "s.db.auth")
    try:
        secret = store.create_token(Token(id="op1", kind="operator", expires_at=time.time() + 60, name="bob",
                                          role="admin"))
        assert store.operator(secret).name == "bob"
        store.db.execute("DELETE FROM tokens")  # from memory now: no SQLite read per call
        assert store.operator(secret).name == "bob"
        with pytest.raises(TokenRefused, match="expired"):
            store.operator(secret, now=time.time() + 120)
        with pytest.raises(TokenRefused, match="unknown"):
            store.operator(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    finally:
        store.close()


def test_node_certificate_parsed_once_and_reread_when_replaced(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    ca = CA.load(pki)
    creds = NodeCredentials("n-1", pki / "ca.crt", tmp_path / "node", None)
    assert creds.certificate() is None and not creds.current()
    for _ in range(2):
        key, csr = creds.new_request()
        _, signed = ca.sign_csr(csr, 3600)
        creds.install(key, signed.pem.decode(), rotated=False)
        cert = creds.certificate()
        assert cert is not None and format(cert.serial_number, "x") == signed.serial
        assert creds.certificate() is cert  # not parsed again
        assert creds.current()
