"""Import directions between the first-party packages, checked from the source (AST, no imports
executed), so a forbidden edge fails here rather than in review.

Every .py file of every package in RULES is parsed; every `import`/`from … import` anywhere in
it (module level, inside functions, under `if TYPE_CHECKING:`) and every
`importlib.import_module("…")` / `__import__("…")` with a literal name is one edge. An edge to a
first-party name (a RULES package, or any other top-level folder of the repository holding
Python: tests, bench, native, …) must be allowed by RULES; stdlib and third-party imports are
not checked. Inside `agent`, two more rules for the host-resource objects and the launch steps
(HOST_FORBIDDEN, STEP_SHARED). docs/architecture.md explains the directions.
"""

from __future__ import annotations

import ast
import functools
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Package → the first-party packages its modules may import (itself included).
_LEAVES = {
    "titus_common": {"titus_common"},
    "security": {"titus_common", "security"},
    "cpuset": {"titus_common", "cpuset"},
    "netns": {"titus_common", "netns"},
    "imds": {"titus_common", "imds"},
    "health": {"titus_common", "health"},
    "scheduler": {"titus_common", "security", "scheduler"},
    "titusctl": {"titus_common", "titusctl"},
    "canary": {"titus_common", "canary"},  # a black-box user of the public API
    "fleetsim": {"titus_common", "fleetsim"},  # simulated agents speak only the protocol
}
RULES: dict[str, frozenset[str]] = {
    **{k: frozenset(v) for k, v in _LEAVES.items()},
    "agent": frozenset(_LEAVES) - {"scheduler", "titusctl", "fleetsim", "canary"} | {"agent"},
}

# Inside agent: agent/host/** (host-resource lifecycle objects) sit below the pipeline.
HOST_PACKAGE = "agent.host"
HOST_FORBIDDEN = ("agent.steps", "agent.agent", "agent.runner")
# Inside agent: agent/steps/** may not import a step; these are shared, not steps.
STEPS_PACKAGE = "agent.steps"
STEP_SHARED = frozenset({"agent.steps.base"})


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    statement: str
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` imports {self.target}: {self.why}"


@functools.cache
def first_party_names() -> frozenset[str]:
    """RULES' packages plus every top-level folder that holds Python (tests, bench, native…)."""
    dirs = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.rglob("*.py"))}
    return frozenset(RULES) | dirs


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, str]]:
    """(line, statement as written, imported module) for every import in the tree. For
    `from M import n`, the target is M.n when that is a module, else M."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, f"import {a.name}", a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: max(0, len(package) - node.level + 1)]
                src = ".".join([*base, *([node.module] if node.module else [])])
            else:
                src = node.module or ""
            names = ", ".join(a.name for a in node.names)
            stmt = f"from {'.' * node.level}{node.module or ''} import {names}"
            sub = [(a.name, f"{src}.{a.name}" if src else a.name) for a in node.names]
            targets = {full if name != "*" and _is_module(full) else src for name, full in sub}
            for t in sorted(targets):
                yield node.lineno, stmt, t
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.lineno, ast.unparse(node), node.args[0].value


def check_source(source: str, module: str, path: str, is_package: bool = False) -> list[Violation]:
    """Every forbidden import in `source`, read as the module `module` (file `path`)."""
    own = module.split(".")[0]
    allowed = RULES[own]
    first_party = first_party_names()
    found: list[Violation] = []
    for line, stmt, target in imports(ast.parse(source, filename=path), module, is_package):
        top = target.split(".")[0]
        if top in first_party and top not in allowed:
            found.append(Violation(path, line, stmt, target, f"{own} may import only {', '.join(sorted(allowed))}"))
        if _under(module, HOST_PACKAGE):
            bad = next((f for f in HOST_FORBIDDEN if _under(target, f)), None)
            if bad:
                found.append(Violation(path, line, stmt, target, f"{HOST_PACKAGE}.* may not import {bad}"))
        if _under(module, STEPS_PACKAGE) and _under(target, STEPS_PACKAGE) and target != module:
            if target not in STEP_SHARED:
                found.append(Violation(
                    path, line, stmt, target,
                    f"a step may not import another step (only {', '.join(sorted(STEP_SHARED))} and non-step modules)",
                ))
    return sorted(found, key=lambda v: v.line)


def source_files() -> dict[str, list[Path]]:
    return {pkg: sorted((REPO / pkg).rglob("*.py")) for pkg in RULES if (REPO / pkg / "__init__.py").is_file()}


def test_import_directions() -> None:
    violations: list[Violation] = []
    for files in source_files().values():
        for f in files:
            violations += check_source(f.read_text(), module_name(f), str(f.relative_to(REPO)), f.name == "__init__.py")
    if violations:
        pytest.fail("forbidden imports (see docs/architecture.md):\n" + "\n".join(map(str, violations)), pytrace=False)


def test_the_scan_covers_every_package() -> None:
    """Not vacuous: each present package has files and imports; every top-level package of the
    repository and every package mypy/setuptools ship has a rule."""
    files = source_files()
    assert {"agent", "scheduler", "titusctl", "titus_common", "security"} <= set(files)
    for pkg, fs in files.items():
        assert fs and any(any(imports(ast.parse(f.read_text()), module_name(f), False)) for f in fs), pkg
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(RULES), f"top-level package(s) without an import rule: {sorted(packages - set(RULES))}"
    shipped = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["packages"])
    assert shipped <= set(RULES), f"mypy packages without an import rule: {sorted(shipped - set(RULES))}"


def test_the_checker_bites() -> None:
    src = "import json\nfrom agent.runner import X\n"
    [v] = check_source(src, "scheduler.fake", "scheduler/fake.py")
    assert (v.path, v.line, v.target) == ("scheduler/fake.py", 2, "agent.runner")
    assert "scheduler/fake.py:2: `from agent.runner import X` imports agent.runner" in str(v)

    # Imports inside functions, plain/relative/dynamic forms, and non-first-party names.
    src = (
        "import requests\n"
        "def f():\n"
        "    import netns.wiring\n"
        "    from ..agent import X\n"
        "    importlib.import_module('cpuset.allocator')\n"
        "from . import core\n"
        "from .core import Y\n"
        "from titus_common.states import TaskState\n"
        "from security import profiles\n"
    )
    got = [(v.line, v.target) for v in check_source(src, "scheduler.sub.x", "scheduler/sub/x.py")]
    assert got == [(3, "netns.wiring"), (5, "cpuset.allocator")]
    assert [v.target for v in check_source("from agent.steps import base\n", "titusctl.x", "titusctl/x.py")] == [
        "agent.steps.base"
    ]
    assert [v.target for v in check_source("import tests.support\n", "agent.x", "agent/x.py")] == ["tests.support"]
    assert check_source("from netns.step import TaskNetworks\n", "agent.x", "agent/x.py") == []
    assert [v.target for v in check_source("import scheduler.core\n", "agent.x", "agent/x.py")] == ["scheduler.core"]


def test_the_intra_agent_rules_bite() -> None:
    host = "from agent.runner import R\nfrom agent.steps.network import HostNetwork\nfrom agent.config import C\n"
    got = [(v.line, v.target) for v in check_source(host, "agent.host.network", "agent/host/network.py")]
    assert got == [(1, "agent.runner"), (2, "agent.steps.network")]
    assert [v.target for v in check_source("from agent import agent\n", "agent.host.x", "agent/host/x.py")] == [
        "agent.agent"
    ]
    assert [v.target for v in check_source("from ..steps import base\n", "agent.host.x", "agent/host/x.py")] == [
        "agent.steps.base"
    ]

    step = (
        "from agent.steps.base import LaunchContext\n"
        "from agent.docker_api import Docker\n"
        "from agent.steps.container import container_name\n"
        "from . import network\n"
    )
    got = [(v.line, v.target) for v in check_source(step, "agent.steps.imds", "agent/steps/imds.py")]
    assert got == [(3, "agent.steps.container"), (4, "agent.steps.network")]
    # The rules are for agent/host/** and agent/steps/** only.
    assert check_source(step, "agent.cpus", "agent/cpus.py") == []
