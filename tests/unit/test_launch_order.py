"""The launch order is declared once (agent/launch.py); every place the docs write it must agree."""

from __future__ import annotations

import re
from pathlib import Path

from agent.host.security import HostSecurity
from agent.launch import LAUNCH_ORDER, launch_pipeline
from agent.metrics import AgentMetrics
from security.profiles import default_policy

REPO = Path(__file__).resolve().parents[2]
WRITTEN = re.compile(r"`(image(?: → [a-z]+)+)`")


def test_the_docs_write_the_declared_order() -> None:
    declared = " → ".join(LAUNCH_ORDER)
    found = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for match in WRITTEN.finditer(path.read_text()):
            found.setdefault(match.group(1), []).append(path.name)
    assert found, "no launch order written in README.md or docs/"
    assert set(found) == {declared}, f"declared {declared!r}; written {found}"


def test_the_pipeline_follows_the_declaration() -> None:
    class Stub:  # any object: the steps only keep it until a launch
        host = None

    pipeline = launch_pipeline(AgentMetrics(), HostSecurity(default_policy()), cpus=Stub(), network=Stub(),  # type: ignore[arg-type]
                               metadata=Stub(), identity=Stub())  # type: ignore[arg-type]
    assert tuple(s.name for s in pipeline.steps) == LAUNCH_ORDER
    bare = launch_pipeline(AgentMetrics(), HostSecurity(default_policy()))
    assert tuple(s.name for s in bare.steps) == ("image", "security", "container")
