from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from security.posture import HostPosture
from security.profiles import ProfileCatalog
from tests.security.hosts import ENGINE_HARDENED, ENGINE_PLAIN, fake_posture
from titus_common.jobspec import JobSpec, parse_job_spec

IMAGE = "127.0.0.1:5000/titus/busybox:latest"


def job(security: dict[str, str] | None = None, owner: str = "alice@example.com", app: str = "web") -> JobSpec:
    doc: dict[str, Any] = {
        "appName": app,
        "owner": owner,
        "container": {"image": IMAGE, "securityAttributes": security or {}},
        "batch": {"size": 1},
    }
    return parse_job_spec(doc)


@pytest.fixture(scope="session")
def catalog() -> ProfileCatalog:
    return ProfileCatalog.load()


@pytest.fixture
def plain(tmp_path: Path) -> HostPosture:
    """A host like this machine: no AppArmor in the kernel, no userns-remap, cgroup v1."""
    return fake_posture(ENGINE_PLAIN, tmp_path / "plain", apparmor_on=False)


@pytest.fixture
def hardened(tmp_path: Path) -> HostPosture:
    """AppArmor enforced, dockerd remapping root to dockremap's subordinate range, cgroup v2."""
    return fake_posture(ENGINE_HARDENED, tmp_path / "hard", apparmor_on=True, remap_user="default")
