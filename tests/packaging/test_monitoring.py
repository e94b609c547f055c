"""packaging/monitoring: the rules parse (promtool check rules) and their unit tests pass
(promtool test rules: series in, alerts out); every metric the rules name is one the daemons export
(or node_exporter's systemd collector)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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


# --- the Grafana dashboard (packaging/monitoring/dashboard.py → titus-node.json) ---
DASHBOARD = MON / "titus-node.json"


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())  # parses
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_json_is_the_generators_output() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    proc = subprocess.run([sys.executable, str(MON / "dashboard.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dashboard_panels_are_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        if p["type"] == "row":
            continue
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_series_is_a_rule_or_exported() -> None:
    rules = set(re.findall(r"record: (\S+)", (MON / "rules.yml").read_text()))
    sources = "".join(p.read_text() for p in ROOT.glob("*/metrics.py"))
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        for name in re.findall(r"\b(titus:[a-z0-9_:]+)", expr):
            assert name in rules, f"{name} is not a recording rule of rules.yml"
        for name in re.findall(r"\b(titus_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert f'"{base}"' in sources, f"{name} is not exported by any */metrics.py"
    for rule in rules:  # every SLO recording rule is on the dashboard
        assert any(rule in e for e in exprs), f"{rule} has no panel"


@needs_promtool
def test_promtool_accepts_every_dashboard_expression(tmp_path: Path) -> None:
    """promtool has no single-expression check: each expression becomes a recording rule."""
    groups = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(groups))  # JSON is YAML
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
