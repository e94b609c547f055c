"""postinst's daemon.json edit (packaging/debian/titus-docker-config): adds the agent's keys, keeps
the operator's, refuses a conflicting key by name and malformed JSON untouched, is idempotent, and
purge removes only what it added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "packaging" / "debian" / "titus-docker-config"
RUNTIME = {"titus": {"path": "/usr/lib/titus-node/titus-runc"}}
OURS = {"userns-remap": "default", "live-restore": True, "iptables": False, "ip-masq": False, "bridge": "none",
        "runtimes": RUNTIME}
# how the tool records what it added: one entry of a nested object under a dotted key
FLAT = {**{k: v for k, v in OURS.items() if k != "runtimes"}, "runtimes.titus": RUNTIME["titus"]}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        TITUS_DAEMON_JSON=str(tmp_path / "docker" / "daemon.json"),
        TITUS_DOCKER_CONFIG_STATE=str(tmp_path / "state" / "docker-config.json"),
        TITUS_DOCKER_CONFIG_SKIP=str(tmp_path / "skip"),
    )


def run(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), action], env=env, capture_output=True, text=True, timeout=30)


def test_fresh_host_gets_the_file_and_purge_removes_it(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    assert run(env, "apply").returncode == 0
    assert json.loads(path.read_text()) == OURS
    assert run(env, "purge").returncode == 0
    assert not path.exists() and not Path(env["TITUS_DOCKER_CONFIG_STATE"]).exists()


def test_operator_keys_kept_apply_idempotent_purge_leaves_them(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    path.parent.mkdir()
    path.write_text(json.dumps({"log-driver": "journald", "live-restore": True}))
    assert run(env, "apply").returncode == 0
    assert json.loads(path.read_text()) == {**OURS, "log-driver": "journald"}
    before = path.stat().st_mtime_ns, path.read_bytes()
    second = run(env, "apply")
    assert second.returncode == 0 and "already" in second.stdout
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before  # not rewritten
    assert run(env, "purge").returncode == 0
    # live-restore was the operator's before us: it stays
    assert json.loads(path.read_text()) == {"log-driver": "journald", "live-restore": True}


def test_conflicting_key_is_refused_by_name_and_untouched(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    path.parent.mkdir()
    original = json.dumps({"userns-remap": "someone", "debug": True})
    path.write_text(original)
    proc = run(env, "apply")
    assert proc.returncode == 1
    assert "'userns-remap'" in proc.stderr and "docker-config.skip" in proc.stderr.replace(env["TITUS_DOCKER_CONFIG_SKIP"], "docker-config.skip")
    assert path.read_text() == original


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_malformed_json_is_refused_untouched(env: dict[str, str], text: str) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    path.parent.mkdir()
    path.write_text(text)
    proc = run(env, "apply")
    assert proc.returncode == 1 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_text() == text
    assert list(path.parent.iterdir()) == [path]  # no temp file left


def test_skip_file_leaves_docker_alone(env: dict[str, str]) -> None:
    Path(env["TITUS_DOCKER_CONFIG_SKIP"]).write_text("")
    assert run(env, "apply").returncode == 0
    assert not Path(env["TITUS_DAEMON_JSON"]).exists()


def test_purge_keeps_a_value_the_operator_changed_since(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    assert run(env, "apply").returncode == 0
    path.write_text(json.dumps({**OURS, "bridge": "docker0"}))
    assert run(env, "purge").returncode == 0
    assert json.loads(path.read_text()) == {"bridge": "docker0"}


def test_usage() -> None:
    proc = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_upgrade_keeps_what_the_operator_changed_or_deleted_since(env: dict[str, str]) -> None:
    """The configure of N+1 after N: a key N added and the operator changed or removed since is not
    put back or refused (the upgrade would fail half-configured); the file is not rewritten."""
    path = Path(env["TITUS_DAEMON_JSON"])
    assert run(env, "apply").returncode == 0
    edited = {k: v for k, v in OURS.items() if k != "bridge"} | {"live-restore": False, "debug": True}
    path.write_text(json.dumps(edited))
    before = path.stat().st_mtime_ns
    proc = run(env, "apply")
    assert proc.returncode == 0, proc.stderr
    assert "kept: bridge, live-restore" in proc.stdout
    assert json.loads(path.read_text()) == edited and path.stat().st_mtime_ns == before


def test_upgrade_adds_only_a_key_new_in_this_version(env: dict[str, str]) -> None:
    """N added every key but bridge (simulated by the state N left); N+1 adds bridge, nothing else."""
    path = Path(env["TITUS_DAEMON_JSON"])
    state = Path(env["TITUS_DOCKER_CONFIG_STATE"])
    older = {k: v for k, v in OURS.items() if k != "bridge"}
    path.parent.mkdir()
    state.parent.mkdir()
    path.write_text(json.dumps({**older, "live-restore": False}))  # the operator turned it off since
    state.write_text(json.dumps({"created": True, "added": {k: v for k, v in FLAT.items() if k != "bridge"}}))
    assert run(env, "apply").returncode == 0
    assert json.loads(path.read_text()) == {**OURS, "live-restore": False}
    assert json.loads(state.read_text())["added"] == FLAT
    assert run(env, "purge").returncode == 0
    assert json.loads(path.read_text()) == {"live-restore": False}


def test_a_new_key_conflicting_on_upgrade_is_refused(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    state = Path(env["TITUS_DOCKER_CONFIG_STATE"])
    older = {k: v for k, v in OURS.items() if k != "bridge"}
    path.parent.mkdir()
    state.parent.mkdir()
    path.write_text(json.dumps({**older, "bridge": "docker0"}))
    state.write_text(json.dumps({"created": True, "added": {k: v for k, v in FLAT.items() if k != "bridge"}}))
    proc = run(env, "apply")
    assert proc.returncode == 1 and "'bridge'" in proc.stderr


def test_runtime_entry_beside_the_operators_runtimes(env: dict[str, str]) -> None:
    """runtimes.titus is added next to other runtimes; purge removes only it."""
    path = Path(env["TITUS_DAEMON_JSON"])
    path.parent.mkdir()
    nvidia = {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}}
    path.write_text(json.dumps({"runtimes": nvidia}))
    assert run(env, "apply").returncode == 0
    assert json.loads(path.read_text())["runtimes"] == {**nvidia, **RUNTIME}
    assert run(env, "purge").returncode == 0
    assert json.loads(path.read_text()) == {"runtimes": nvidia}


def test_upgrade_from_a_version_without_the_runtime_adds_it_and_purge_removes_it(env: dict[str, str]) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    state = Path(env["TITUS_DOCKER_CONFIG_STATE"])
    older = {k: v for k, v in FLAT.items() if k != "runtimes.titus"}
    path.parent.mkdir()
    state.parent.mkdir()
    path.write_text(json.dumps(older))
    state.write_text(json.dumps({"created": True, "added": older}))
    proc = run(env, "apply")
    assert proc.returncode == 0 and "added runtimes.titus;" in proc.stdout
    assert json.loads(path.read_text()) == OURS
    assert run(env, "purge").returncode == 0
    assert not path.exists()  # created by the tool, nothing else left: runtimes {} went too


@pytest.mark.parametrize("runtimes, message", [
    ({"titus": {"path": "/usr/local/lib/titus/titus-runc"}}, "'runtimes.titus'"),
    ("runc", "'runtimes' is not a JSON object"),
])
def test_a_conflicting_runtime_is_refused_untouched(env: dict[str, str], runtimes: object, message: str) -> None:
    path = Path(env["TITUS_DAEMON_JSON"])
    path.parent.mkdir()
    original = json.dumps({"runtimes": runtimes})
    path.write_text(original)
    proc = run(env, "apply")
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert path.read_text() == original
