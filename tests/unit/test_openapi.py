import json
from pathlib import Path

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.openapi import openapi_document
from scheduler.placement import FirstFit
from scheduler.auth import Auth
from scheduler.authstore import AuthStore
from titus_common.iam_policy import IamPolicy
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca
from scheduler.workload import WorkloadIssuer

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_docs_copy_is_current() -> None:
    """docs/openapi.json is generated: `python -m scheduler.openapi > docs/openapi.json`."""
    assert json.loads(DOC.read_text()) == openapi_document()


def test_every_route_is_documented(tmp_path: Path) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    init_ca(tmp_path / "pki")
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(enforce=False), s.metrics.registry)
    ca = CA.load(tmp_path / "pki")
    app = make_app(s, None, auth, ca, WorkloadIssuer(ca, "local", 3600, s.metrics.registry))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    documented = set(openapi_document()["paths"])
    assert routes - {"/openapi.json"} == documented
