"""packaging/monitoring: the rules parse (promtool check rules) and their unit tests pass
(promtool test rules: series in, alerts out); every metric the rules name is one the daemons export
(or node_exporter's systemd collector)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "packaging" / "monitoring"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool (apt: prometheus) not installed")


@needs_promtool
def test_rules_check() -> None:
    proc = subprocess.run([str(promtool), "check", "rules", str(MON / "rules.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_rules_unit_tests() -> None:
    proc = subprocess.run([str(promtool), "test", "rules", "tests.yml"], cwd=MON, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_series_in_the_rules_is_exported() -> None:
    text = (MON / "rules.yml").read_text()
    names = set(re.findall(r"\b(titus_[a-z_]+)", text))
    sources = "".join(p.read_text() for p in ROOT.glob("*/metrics.py"))
    for name in sorted(names):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in sources, f"{name} is not exported by any */metrics.py"
