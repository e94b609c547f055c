"""titus-canary's SLIs move when the cell breaks: a real scheduler, agent and engine."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from canary.probe import CanaryMetrics, Outcome, ProbeConfig, client_ssl, probe
from tests.harness import IMAGE, Platform


async def _probe(p: Platform, metrics: CanaryMetrics, timeout: float) -> Outcome:
    tls = client_ssl(str(p.pki / "ca.crt"), str(p.pki / "admin.crt"), str(p.pki / "admin.key"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5),
                                     connector=aiohttp.TCPConnector(ssl=tls)) as http:
        result = await probe(http, ProbeConfig(p.url, IMAGE, timeout=timeout, poll=0.2))
    metrics.record(result)
    return result.outcome


def test_slis_move_when_the_agent_stops(platform: Platform) -> None:
    p, m = platform, CanaryMetrics(window=10)
    assert asyncio.run(_probe(p, m, 60)) is Outcome.SUCCESS
    assert m.registry.get_sample_value("titus_canary_success_ratio") == 1
    assert m.registry.get_sample_value("titus_canary_submit_to_started_seconds_count") == 1
    assert m.registry.get_sample_value("titus_canary_submit_to_finished_seconds_count") == 1
    assert p.agent is not None
    p.agent.p.send_signal(signal.SIGSTOP)  # the host stops working; the scheduler still answers
    try:
        assert asyncio.run(_probe(p, m, 5)) is Outcome.TIMEOUT
    finally:
        p.agent.p.send_signal(signal.SIGCONT)
    assert m.registry.get_sample_value("titus_canary_success_ratio") == 0.5
    assert m.registry.get_sample_value("titus_canary_probes_total", {"outcome": "timeout"}) == 1
    assert p.scheduler is not None
    p.scheduler.stop()
    assert asyncio.run(_probe(p, m, 5)) is Outcome.UNREACHABLE
    assert m.registry.get_sample_value("titus_canary_scheduler_unreachable") == 1
    assert abs((m.registry.get_sample_value("titus_canary_success_ratio") or 0) - 1 / 3) < 1e-9
