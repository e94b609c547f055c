"""The systemd units: `systemd-analyze verify` finds nothing (the venv's binaries are stood in for
by executables in a temp dir: the package installs the real ones), both are Type=notify with a
watchdog and a reload, and the agent keeps out of mount namespaces (its netns bind mounts must be
the host's)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ["titus-agent.service", "titus-scheduler.service"]


def service(name: str) -> dict[str, str]:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(UNITS / name)
    return dict(p["Service"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for exe in ("titus-agent", "titus-scheduler"):
        (bindir / exe).write_text("#!/bin/sh\n")
        (bindir / exe).chmod(0o755)
    paths = []
    for name in NAMES:
        text = (UNITS / name).read_text().replace("/opt/titus-node/venv/bin/", f"{bindir}/")
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    proc = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_notify_watchdog_reload(name: str) -> None:
    s = service(name)
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert int(s["WatchdogSec"]) > 0 and "HUP" in s["ExecReload"]


def test_agent_shares_the_host_mount_namespace_and_leaves_containers_on_stop() -> None:
    s = service("titus-agent.service")
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelModules",
                "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "PrivateMounts"):
        assert key not in s, key
    assert s["KillMode"] == "process"


def test_scheduler_is_locked_down() -> None:
    s = service("titus-scheduler.service")
    assert s["ProtectSystem"] == "strict" and s["CapabilityBoundingSet"] == "" and s["NoNewPrivileges"] == "yes"
    assert "--config /etc/titus/scheduler.toml" in s["ExecStart"]
