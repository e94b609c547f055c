"""One canary probe: submit a tiny batch job through the public API, follow it to Finished.

Outcomes: `success` (Finished with every task `normal`), `failed` (Finished otherwise),
`timeout` (not Finished within the probe timeout: killed then, so probes never pile up),
`unreachable` (the scheduler did not answer the submit). Latencies are measured by the canary's own
clock, from the submit to the first poll that sees the task Started and Finished.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import ssl

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CanaryMetrics", "Outcome", "ProbeConfig", "ProbeResult", "probe"]

BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class Outcome(str, enum.Enum):
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ProbeConfig:
    scheduler: str  # base URL
    image: str
    timeout: float = 120.0  # submit → Finished
    poll: float = 0.5


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    job_id: str | None = None
    to_started: float | None = None
    to_finished: float | None = None
    detail: str = ""


class CanaryMetrics:
    def __init__(self, window: int = 20) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.probes = Counter("titus_canary_probes", "Probes by outcome", ["outcome"], registry=r)
        self.ratio = Gauge("titus_canary_success_ratio", "Successful probes among the last `window`", registry=r)
        self.unreachable = Gauge("titus_canary_scheduler_unreachable",
                                 "1 if the last probe could not reach the scheduler", registry=r)
        self.to_started = Histogram("titus_canary_submit_to_started_seconds", "Submit → Started", buckets=BUCKETS,
                                    registry=r)
        self.to_finished = Histogram("titus_canary_submit_to_finished_seconds", "Submit → Finished",
                                     buckets=BUCKETS, registry=r)
        self.last_success = Gauge("titus_canary_last_success_timestamp_seconds", "When a probe last succeeded",
                                  registry=r)
        self._recent: deque[bool] = deque(maxlen=window)
        for o in Outcome:
            self.probes.labels(outcome=o.value)

    def record(self, result: ProbeResult) -> None:
        self.probes.labels(outcome=result.outcome.value).inc()
        self._recent.append(result.outcome is Outcome.SUCCESS)
        self.ratio.set(sum(self._recent) / len(self._recent))
        self.unreachable.set(1 if result.outcome is Outcome.UNREACHABLE else 0)
        if result.to_started is not None:
            self.to_started.observe(result.to_started)
        if result.to_finished is not None:
            self.to_finished.observe(result.to_finished)
        if result.outcome is Outcome.SUCCESS:
            self.last_success.set(time.time())


def _spec(image: str, seq: int) -> dict[str, Any]:
    return {
        "appName": "titus-canary", "owner": "titus-canary",
        "idempotencyKey": f"canary-{seq}-{time.time_ns()}",
        "container": {"image": image, "command": ["true"], "resources": {"cpu": 0.1, "memoryMiB": 16, "diskMiB": 16},
                      "killGraceSeconds": 1},
        "batch": {"size": 1},
    }


async def probe(http: aiohttp.ClientSession, config: ProbeConfig, seq: int = 0) -> ProbeResult:
    start = time.monotonic()
    try:
        async with http.post(f"{config.scheduler}/v1/jobs", json=_spec(config.image, seq)) as resp:
            if resp.status >= 500:
                return ProbeResult(Outcome.UNREACHABLE, detail=f"submit answered {resp.status}")
            doc = await resp.json()
            if resp.status not in (200, 201):
                return ProbeResult(Outcome.FAILED, detail=f"submit refused ({resp.status}): {doc}")
    except (aiohttp.ClientError, TimeoutError) as e:
        return ProbeResult(Outcome.UNREACHABLE, detail=f"submit: {e or type(e).__name__}")
    job_id = str(doc["id"])
    started: float | None = None
    while time.monotonic() - start < config.timeout:
        try:
            async with http.get(f"{config.scheduler}/v1/tasks", params={"jobId": job_id}) as resp:
                tasks = (await resp.json())["tasks"] if resp.status == 200 else []
            async with http.get(f"{config.scheduler}/v1/jobs/{job_id}") as resp:
                job = await resp.json() if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError):
            tasks, job = [], {}
        now = time.monotonic() - start
        if started is None and any("Started" in t.get("timestamps", {}) for t in tasks):
            started = now
        if job.get("state") == "Finished":
            ok = all(t.get("reason") == "normal" for t in tasks) and bool(tasks)
            reasons = sorted({str(t.get("reason")) for t in tasks})
            return ProbeResult(Outcome.SUCCESS if ok else Outcome.FAILED, job_id, started, now,
                               "" if ok else f"finished {reasons}")
        await asyncio.sleep(config.poll)
    try:  # do not leave the probe behind
        async with http.post(f"{config.scheduler}/v1/jobs/{job_id}/kill"):
            pass
    except (aiohttp.ClientError, TimeoutError):
        pass
    return ProbeResult(Outcome.TIMEOUT, job_id, started, None, f"not Finished within {config.timeout:.0f}s")


def client_ssl(ca: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext | None:
    """The TLS context of a canary that talks to a TLS scheduler (docs/trust.md): the cell CA to
    verify it, and an operator's client certificate (role submitter is enough). None: plain HTTP."""
    if ca is None:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
