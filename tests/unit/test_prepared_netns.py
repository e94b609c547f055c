"""netns.prepared without creating namespaces (that needs the engine lock: tests/integration/
test_network.py), and scripts/titus-runc (with native/titus-runc-create built) with a fake runc: pass-through and refusals."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.host.network import netns_dir
from netns import prepared
from netns.errors import WiringError
from netns.wiring import netns_name

from tests.support.runc_create import built_front


def test_engine_id_map_mirrors_dockerd_default_remapping(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("alice:200000:65536\ndockremap:100000:65536\ndockremap:300000:10\n")
    (tmp_path / "subgid").write_text("dockremap:100000:65536\n")
    ids = prepared.engine_id_map(subuid=tmp_path / "subuid", subgid=tmp_path / "subgid")
    assert ids.uid == "0 100000 65536\n65536 300000 10\n" and ids.gid == "0 100000 65536\n"
    (tmp_path / "subgid").write_text("alice:1:2\n")
    with pytest.raises(WiringError, match="no range for dockremap"):
        prepared.engine_id_map(subuid=tmp_path / "subuid", subgid=tmp_path / "subgid")


def test_collect_unpins_only_titus_names_not_kept(tmp_path: Path) -> None:
    keep, leak = netns_name("kept"), netns_name("leaked")
    for name in (keep, keep + ".user", leak, leak + ".user", "someone-else"):
        (tmp_path / name).touch()
    assert prepared.collect(tmp_path, {keep}) == [leak]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([keep, keep + ".user", "someone-else"])
    assert prepared.collect(tmp_path / "absent", set()) == []
    assert not prepared.is_prepared(tmp_path / keep)  # a plain file is not a pinned namespace
    with pytest.raises(WiringError, match="not a titus namespace name"):
        prepared.remove(tmp_path / "someone-else")
    with pytest.raises(WiringError, match="not a titus namespace name"):
        prepared.prepare(tmp_path / "../etc", None)


def test_netns_dir_is_one_safe_directory_per_node() -> None:
    assert netns_dir("node-1") == prepared.NETNS_ROOT / "node-1"
    assert netns_dir("../x/y") == prepared.NETNS_ROOT / "_x_y"


def run_wrapper(tmp_path: Path, *args: str, env: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    spec = {"process": {"env": ["PATH=/bin", *(env or [])]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "user"}]}}
    (bundle / "config.json").write_text(json.dumps(spec))
    fake = tmp_path / "runc"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\n")
    fake.chmod(0o755)
    argv = [a.replace("BUNDLE", str(bundle)).replace("LOG", str(tmp_path / "log.json")) for a in args]
    done = subprocess.run([str(built_front()), *argv], capture_output=True, text=True,
                          env={**os.environ, "TITUS_RUNC_REAL": str(fake)}, timeout=30)
    return done, json.loads((bundle / "config.json").read_text())


def test_wrapper_passes_everything_but_a_titus_create_through(tmp_path: Path) -> None:
    done, spec = run_wrapper(tmp_path, "--root", "/r", "state", "abc")
    assert done.returncode == 0 and (tmp_path / "argv").read_text().split() == ["--root", "/r", "state", "abc"]
    done, spec = run_wrapper(tmp_path, "--log", "LOG", "create", "--bundle", "BUNDLE", "abc")
    assert done.returncode == 0, done.stderr
    assert all("path" not in n for n in spec["linux"]["namespaces"])  # no TITUS_NETNS: untouched


@pytest.mark.parametrize("netns", ["/tmp/elsewhere", "/run/titus/netns/n1/titus-0123456789abcdef",
                                   "/run/titus/netns/../../proc/1/ns/net"])
def test_wrapper_refuses_a_namespace_titus_did_not_pin(tmp_path: Path, netns: str) -> None:
    done, spec = run_wrapper(tmp_path, "--log", "LOG", "create", "--bundle", "BUNDLE", "abc",
                             env=[f"TITUS_NETNS={netns}"])
    assert done.returncode == 1 and "prepared network namespace" in done.stderr
    assert "prepared network namespace" in json.loads((tmp_path / "log.json").read_text())["msg"]
    assert not (tmp_path / "argv").exists()  # runc never ran: no fresh, unwired namespace instead
    assert all("path" not in n for n in spec["linux"]["namespaces"])
