"""The shipped checks, table-driven, against fakes (engine probe, statvfs, a /proc tree) and a
loopback registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from health.checks.disk import DiskCheck, DiskUsage
from health.checks.engine import EngineCheck
from health.checks.pressure import PressureCheck, parse_psi
from health.checks.registry import RegistryCheck, split_image
from titus_common.errors import ConfigError
from titus_common.protocol import HealthStatus as S


class FakeMono:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    def __init__(self, mono: FakeMono, *, ping: bool = True, scratch_s: float = 1.0,
                 scratch_error: str | None = None, stream: bool | None = True) -> None:
        self.mono, self._ping, self.scratch_s, self.scratch_error, self.stream = mono, ping, scratch_s, scratch_error, stream

    async def ping(self) -> bool:
        return self._ping

    async def scratch_cycle(self) -> None:
        self.mono.now += self.scratch_s
        if self.scratch_error:
            raise RuntimeError(self.scratch_error)

    def event_stream_connected(self) -> bool | None:
        return self.stream


@pytest.mark.parametrize(
    ("kw", "status", "reason"),
    [
        ({}, S.OK, "EngineHealthy"),
        ({"ping": False}, S.FAILED, "EngineDown"),
        ({"scratch_error": "no space left"}, S.FAILED, "ScratchContainerFailed"),
        ({"scratch_s": 12.0}, S.DEGRADED, "EngineSlow"),
        ({"stream": False}, S.DEGRADED, "EventStreamDown"),
        ({"stream": None}, S.OK, "EngineHealthy"),
    ],
)
async def test_engine(kw: dict[str, object], status: S, reason: str) -> None:
    mono = FakeMono()
    obs = await EngineCheck(FakeEngine(mono, **kw), scratch_budget=10.0, monotonic=mono).run()  # type: ignore[arg-type]
    assert (obs.status, obs.reason) == (status, reason)


@pytest.mark.parametrize(
    ("usage", "status", "reason"),
    [
        ({"root": (10, 5), "state": (50, 1)}, S.OK, "DiskOk"),
        ({"root": (86, 5), "state": (50, 1)}, S.DEGRADED, "DiskPressure"),
        ({"root": (86, 5), "state": (96, 1)}, S.FAILED, "DiskPressure"),
        ({"root": (10, 90), "state": (50, 1)}, S.DEGRADED, "InodePressure"),
        ({"root": (10, 99.5), "state": (90, 1)}, S.FAILED, "InodePressure"),
    ],
)
async def test_disk(usage: dict[str, tuple[float, float]], status: S, reason: str) -> None:
    paths = {k: Path("/" + k) for k in usage}
    check = DiskCheck(paths, usage=lambda p: DiskUsage(*usage[p.name], free_bytes=1))
    obs = await check.run()
    assert (obs.status, obs.reason) == (status, reason)
    assert obs.evidence["root.usedPct"] == usage["root"][0]


async def test_disk_unreadable_path_fails(tmp_path: Path) -> None:
    obs = await DiskCheck({"logs": tmp_path / "missing"}).run()
    assert (obs.status, obs.reason) == (S.FAILED, "DiskUnreadable")


async def test_disk_real_statvfs(tmp_path: Path) -> None:
    obs = await DiskCheck({"tmp": tmp_path}, degraded_pct=100, failed_pct=100).run()
    assert obs.status is S.OK and isinstance(obs.evidence["tmp.usedPct"], float)


def test_disk_thresholds_validated() -> None:
    with pytest.raises(ConfigError):
        DiskCheck({}, degraded_pct=90, failed_pct=80)


def _psi(some: float, full: float | None = None) -> str:
    lines = [f"some avg10=0.00 avg60={some:.2f} avg300=0.00 total=1"]
    if full is not None:
        lines.append(f"full avg10=0.00 avg60={full:.2f} avg300=0.00 total=1")
    return "\n".join(lines) + "\n"


def test_parse_psi() -> None:
    assert parse_psi(_psi(1.5, 0.25)) == {
        "some": {"avg10": 0.0, "avg60": 1.5, "avg300": 0.0, "total": 1.0},
        "full": {"avg10": 0.0, "avg60": 0.25, "avg300": 0.0, "total": 1.0},
    }


@pytest.mark.parametrize(
    ("mem", "cpu", "status", "reason"),
    [
        ((1, 0), 5, S.OK, "NoPressure"),
        ((30, 5), 5, S.DEGRADED, "MemoryPressure"),
        ((60, 25), 5, S.FAILED, "MemoryThrashing"),
        ((1, 0), 85, S.DEGRADED, "CpuPressure"),
    ],
)
async def test_pressure_psi(tmp_path: Path, mem: tuple[float, float], cpu: float, status: S, reason: str) -> None:
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(_psi(*mem))
    (tmp_path / "pressure" / "cpu").write_text(_psi(cpu))
    obs = await PressureCheck(proc=tmp_path).run()
    assert (obs.status, obs.reason, obs.evidence["source"]) == (status, reason, "psi")


@pytest.mark.parametrize(
    ("avail_kb", "load", "status", "reason"),
    [
        (50_000, "0.5", S.OK, "NoPressure"),
        (8_000, "0.5", S.DEGRADED, "MemoryPressure"),
        (2_000, "0.5", S.FAILED, "MemoryExhausted"),
        (50_000, "9.0", S.DEGRADED, "CpuPressure"),
    ],
)
async def test_pressure_without_psi(tmp_path: Path, avail_kb: int, load: str, status: S, reason: str) -> None:
    (tmp_path / "meminfo").write_text(f"MemTotal:  100000 kB\nMemFree: 1 kB\nMemAvailable: {avail_kb} kB\n")
    (tmp_path / "loadavg").write_text(f"{load} 0.1 0.1 1/100 42\n")
    obs = await PressureCheck(proc=tmp_path, cpu_count=2).run()
    assert (obs.status, obs.reason, obs.evidence["source"]) == (status, reason, "meminfo+loadavg")


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("127.0.0.1:5000/titus/busybox:latest", ("127.0.0.1:5000", "titus/busybox", "latest")),
        ("registry.example.com/app", ("registry.example.com", "app", "latest")),
        ("localhost/a/b@sha256:abc", ("localhost", "a/b", "sha256:abc")),
    ],
)
def test_split_image(ref: str, parts: tuple[str, str, str]) -> None:
    assert split_image(ref) == parts


def test_split_image_needs_a_registry_host() -> None:
    with pytest.raises(ConfigError):
        split_image("busybox:latest")


@pytest.fixture
async def registry() -> AsyncIterator[tuple[TestServer, dict[str, int]]]:
    answers = {"v2": 200, "manifest": 200}

    async def v2(_: web.Request) -> web.Response:
        return web.Response(status=answers["v2"])

    async def manifest(_: web.Request) -> web.Response:
        return web.Response(status=answers["manifest"])

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_route("HEAD", "/v2/titus/busybox/manifests/latest", manifest)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, answers
    await server.close()


@pytest.mark.parametrize(
    ("v2", "manifest", "status", "reason"),
    [
        (200, 200, S.OK, "RegistryAnswers"),
        (401, 401, S.OK, "RegistryAnswers"),
        (200, 404, S.DEGRADED, "ManifestMissing"),
        (503, 200, S.FAILED, "RegistryError"),
        (200, 500, S.FAILED, "RegistryError"),
    ],
)
async def test_registry(registry: tuple[TestServer, dict[str, int]], v2: int, manifest: int,
                        status: S, reason: str) -> None:
    server, answers = registry
    answers.update(v2=v2, manifest=manifest)
    obs = await RegistryCheck(f"127.0.0.1:{server.port}/titus/busybox:latest").run()
    assert (obs.status, obs.reason) == (status, reason)


async def test_registry_down(unused_tcp_port: int) -> None:
    obs = await RegistryCheck(f"127.0.0.1:{unused_tcp_port}/titus/busybox:latest", timeout=2).run()
    assert (obs.status, obs.reason) == (S.FAILED, "RegistryUnreachable")
