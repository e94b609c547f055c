"""scripts/titus-runc (run next to native/titus-runc-create built with gcc, as installed) finds the real runc: TITUS_RUNC_REAL when set (no fallback when it is wrong),
else the first executable file of its search list in order (Debian's /usr/sbin/runc, docker-ce's
/usr/bin/runc from containerd.io…), else a clear error naming what it looked for, also in runc's
--log file (the shim reports it). The search list is overridden here with TITUS_RUNC_PATHS."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.runc_create import FRONT, built_front

DEFAULT = ["/usr/local/sbin/runc", "/usr/local/bin/runc", "/usr/sbin/runc", "/usr/bin/runc"]


def fake_runc(path: Path, out: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" > {out}\n")
    path.chmod(0o755)
    return path


def run(tmp_path: Path, *args: str, real: str | None = None,
        paths: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITUS_RUNC")}
    if real is not None:
        env["TITUS_RUNC_REAL"] = real
    if paths is not None:
        env["TITUS_RUNC_PATHS"] = " ".join(str(p) for p in paths)
    return subprocess.run([str(built_front()), *args], capture_output=True, text=True, env=env, timeout=30)


def test_the_first_executable_of_the_search_list_in_order(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    sbin, usr_bin = tmp_path / "usr/sbin/runc", tmp_path / "usr/bin/runc"
    missing, not_exec, a_dir = tmp_path / "none/runc", tmp_path / "noexec/runc", tmp_path / "dir/runc"
    not_exec.parent.mkdir()
    not_exec.write_text("#!/bin/sh\n")
    a_dir.mkdir(parents=True)
    fake_runc(usr_bin, out)  # a docker-ce host: containerd.io's /usr/bin/runc only
    done = run(tmp_path, "state", "abc", paths=[missing, not_exec, a_dir, sbin, usr_bin])
    assert done.returncode == 0, done.stderr
    assert out.read_text().split() == [str(usr_bin), "state", "abc"]
    fake_runc(sbin, out)  # both: the earlier one in the list wins
    done = run(tmp_path, "--version", paths=[missing, sbin, usr_bin])
    assert done.returncode == 0 and out.read_text().split() == [str(sbin), "--version"]


def test_a_configured_runc_wins_and_a_wrong_one_fails_without_fallback(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    listed, configured = fake_runc(tmp_path / "listed/runc", out), fake_runc(tmp_path / "mine/runc", out)
    done = run(tmp_path, "kill", "abc", "9", real=str(configured), paths=[listed])
    assert done.returncode == 0 and out.read_text().split() == [str(configured), "kill", "abc", "9"]
    out.unlink()
    done = run(tmp_path, "--log", str(tmp_path / "log.json"), "delete", "abc",
               real=str(tmp_path / "typo/runc"), paths=[listed])
    assert done.returncode == 1 and not out.exists()  # never the listed runc instead
    assert f"TITUS_RUNC_REAL={tmp_path}/typo/runc is not an executable file" in done.stderr
    assert "TITUS_RUNC_REAL" in json.loads((tmp_path / "log.json").read_text())["msg"]


def test_no_runc_anywhere_names_every_path_it_looked_at(tmp_path: Path) -> None:
    paths = [tmp_path / "a/runc", tmp_path / 'we"ird/runc']
    log = tmp_path / "log.json"
    done = run(tmp_path, "--root", "/r", "--log", str(log), "create", "--bundle", str(tmp_path), "abc",
               paths=paths)
    assert done.returncode == 1
    assert "no runc found: TITUS_RUNC_REAL is unset and none of" in done.stderr
    msg = json.loads(log.read_text())["msg"]  # valid JSON even with a quote in a path
    for p in paths:
        assert str(p) in done.stderr and str(p) in msg


def test_create_goes_through_the_c_half_with_the_runc_found(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"env": ["PATH=/bin"]}}))
    runc = fake_runc(tmp_path / "usr/bin/runc", out)
    done = run(tmp_path, "create", "--bundle", str(bundle), "abc", paths=[tmp_path / "usr/sbin/runc", runc])
    assert done.returncode == 0, done.stderr
    assert out.read_text().split() == [str(runc), "create", "--bundle", str(bundle), "abc"]


def test_the_create_half_alone_refuses_without_the_front(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITUS_RUNC")}
    done = subprocess.run([str(built_front().parent / "titus-runc-create"), "--version"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1 and "run titus-runc-create through titus-runc" in done.stderr


def test_the_default_search_list_finds_this_hosts_runc(tmp_path: Path) -> None:
    """systemd's PATH order (what dockerd's own default runtime finds), documented in the script."""
    assert "paths=${TITUS_RUNC_PATHS:-" + " ".join(DEFAULT) + "}" in FRONT.read_text()
    found = next(p for p in DEFAULT if os.access(p, os.X_OK))  # setup-host.sh installs runc
    done = run(tmp_path, "--version")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert done.returncode == 0 and done.stdout == version and version.startswith("runc version")
