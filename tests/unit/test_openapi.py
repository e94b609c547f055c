import json
from pathlib import Path

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.openapi import openapi_document
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_docs_copy_is_current() -> None:
    """docs/openapi.json is generated: `python -m scheduler.openapi > docs/openapi.json`."""
    assert json.loads(DOC.read_text()) == openapi_document()


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = make_app(Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics()))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    documented = set(openapi_document()["paths"])
    assert routes - {"/openapi.json"} == documented
