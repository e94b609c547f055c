"""An app belongs to one owner (docs/identity.md, "Who may use an app name"): the grant store (claim on
first use, an admin's grant replacing it, policy `granted`, a failed submit releasing its claim,
persistence), and through the real TLS API: a submit naming another owner's app is 403 naming the
app, the admin routes and titusctl's verbs, the audit events, and that the identity issuer refuses a
task whose job's owner does not hold the app."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from scheduler.api import make_app
from scheduler.appgrants import AppGrants, AppRefused
from scheduler.auth import Auth
from scheduler.authstore import AuthStore
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from scheduler.tls import CA, init_ca, server_context
from scheduler.workload import WorkloadIssuer
from tests.harness import free_port
from tests.unit.test_trust import JOB, Cell, report
from titus_common.iam_policy import IamPolicy
from titus_common.jobspec import parse_job_spec
from titus_common.pki import new_key
from titus_common.workload import task_csr
from titusctl.client import Api, Credentials
from titusctl.main import build_parser

# ---- the store ------------------------------------------------------------------------------------


def test_first_use_claims_then_only_that_owner(tmp_path: Path) -> None:
    store = AuthStore(tmp_path / "a.auth")
    apps = store.apps
    claim = apps.admit("web", "alice", "op:alice")
    assert claim is not None and (claim.owner, claim.how) == ("alice", "claim")
    assert apps.settle(claim, True)  # the submit succeeded: the claim is final
    assert apps.admit("web", "alice", "op:alice") is None  # already hers: no new claim
    with pytest.raises(AppRefused, match="app 'web' belongs to owner 'alice', not 'bob'"):
        apps.admit("web", "bob", "op:bob")
    # an admin's grant moves it; the claim it replaced is returned
    previous = apps.grant("web", "bob", "op:admin")
    assert previous == claim and apps.owner_of("web") == "bob"
    with pytest.raises(AppRefused, match="belongs to owner 'bob'"):
        apps.admit("web", "alice", "op:alice")
    store.close()
    reopened = AuthStore(tmp_path / "a.auth")  # kept in the trust store's file
    grant = reopened.apps.get("web")
    assert grant is not None and (grant.owner, grant.how, grant.by) == ("bob", "grant", "op:admin")
    assert reopened.apps.revoke("web") == grant and reopened.apps.owner_of("web") is None
    assert reopened.apps.revoke("web") is None
    reopened.close()


def test_policy_granted_refuses_an_app_without_a_grant(tmp_path: Path) -> None:
    store = AuthStore(tmp_path / "a.auth")
    store.apps.policy = "granted"
    with pytest.raises(AppRefused, match="app 'web' is granted to no owner.*admin app grant web --owner alice"):
        store.apps.admit("web", "alice", "op:alice")
    assert store.apps.owner_of("web") is None
    store.apps.grant("web", "alice", "op:admin")
    assert store.apps.admit("web", "alice", "op:alice") is None
    store.close()


def test_release_undoes_only_that_claim(tmp_path: Path) -> None:
    store = AuthStore(tmp_path / "a.auth")
    apps: AppGrants = store.apps
    claim = apps.admit("web", "alice", "x")
    assert claim is not None
    apps.grant("web", "bob", "admin")  # meanwhile an admin granted it
    assert not apps.settle(claim, False)
    assert apps.owner_of("web") == "bob"  # the grant stays
    second = apps.admit("etl", "alice", "x")
    assert second is not None
    assert not apps.settle(second, False)
    assert apps.owner_of("etl") is None
    store.close()


def test_a_use_riding_on_a_claim_in_flight_keeps_it_when_the_claimant_fails(tmp_path: Path) -> None:
    """Two submits of one owner race on a new app: the first claims it, the second admits on that
    claim; the first then fails. The second's job is stored, so the app must stay the owner's."""
    store = AuthStore(tmp_path / "a.auth")
    apps: AppGrants = store.apps
    first = apps.admit("web", "alice", "op:a1")
    rider = apps.admit("web", "alice", "op:a2")
    assert first is not None and rider == first
    assert not apps.settle(first, False)  # the claimant failed: the rider is still in flight
    assert apps.owner_of("web") == "alice"
    assert apps.settle(rider, True)  # the rider's submit succeeded: final (audited once, here)
    assert apps.admit("web", "alice", "op:a3") is None
    with pytest.raises(AppRefused):
        apps.admit("web", "bob", "op:bob")
    # both uses fail: undone
    a, b = apps.admit("etl", "alice", "x"), apps.admit("etl", "alice", "y")
    assert a is not None and b is a
    assert not apps.settle(b, False) and apps.owner_of("etl") == "alice"
    assert not apps.settle(a, False) and apps.owner_of("etl") is None
    # settled once, a late settle changes nothing
    c = apps.admit("ml", "alice", "x")
    assert c is not None and apps.settle(c, True) and not apps.settle(c, False)
    assert apps.owner_of("ml") == "alice"
    store.close()


# ---- through the API ------------------------------------------------------------------------------


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    pki = tmp_path / "pki"
    init_ca(pki)
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    auth = Auth(AuthStore(tmp_path / "s.db.auth"), IamPolicy(enforce=False), s.metrics.registry)
    ca = CA.load(pki)
    workload = WorkloadIssuer(ca, "cell-1", 600, s.metrics.registry, auth.store)
    runner = web.AppRunner(make_app(s, None, auth, ca, workload))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(pki)).start()
    yield Cell(f"https://127.0.0.1:{port}", pki, tmp_path, s, auth, ca)
    await runner.cleanup()
    auth.store.close()
    s.store.close()


async def call(cell: Cell, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(cell.pki / "ca.crt"))
    async with aiohttp.ClientSession() as http, http.request(
            method, cell.url + path, json=body, ssl=ctx, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, json.loads(await r.text())


def job(app: str, owner: str) -> dict[str, Any]:
    return {**JOB, "appName": app, "owner": owner}


async def test_a_submit_naming_another_owners_app_is_403(cell: Cell) -> None:
    alice = cell.operator_token("submitter", owner="alice")
    bob = cell.operator_token("submitter", owner="bob")
    admin = cell.operator_token("admin")
    assert (await call(cell, "POST", "/v1/jobs", alice, job("web", "alice")))[0] == 201  # claims web
    status, doc = await call(cell, "POST", "/v1/jobs", bob, job("web", "bob"))
    assert status == 403 and "app 'web' belongs to owner 'alice', not 'bob'" in doc["error"]["message"]
    assert doc["error"]["problems"][0]["field"] == "appName"
    assert len(cell.scheduler.jobs) == 1 and cell.refused("app_grant") == 1
    # an admin submitting for bob is refused too: the pair (owner, app) is what the identity names
    assert (await call(cell, "POST", "/v1/jobs", admin, job("web", "bob")))[0] == 403
    # a submit refused after the check (a bad spec) claims nothing
    bad = {**job("etl", "bob"), "batch": {"size": 0}}
    assert (await call(cell, "POST", "/v1/jobs", bob, bad))[0] == 400
    assert cell.auth.store.apps.owner_of("etl") is None
    # the admin moves web to bob: now bob may, alice may not
    status, doc = await call(cell, "POST", "/v1/admin/apps/web/grant", admin, {"owner": "bob"})
    assert status == 200 and doc["owner"] == "bob" and doc["how"] == "grant" and doc["previous"]["owner"] == "alice"
    assert (await call(cell, "POST", "/v1/jobs", bob, job("web", "bob")))[0] == 201
    assert (await call(cell, "POST", "/v1/jobs", alice, job("web", "alice")))[0] == 403
    # only an admin manages grants
    assert (await call(cell, "POST", "/v1/admin/apps/web/grant", alice, {"owner": "alice"}))[0] == 403
    assert (await call(cell, "GET", "/v1/admin/apps", alice))[0] == 403
    status, doc = await call(cell, "GET", "/v1/admin/apps", admin)
    assert status == 200 and doc["policy"] == "claim"
    assert [(g["app"], g["owner"], g["how"]) for g in doc["apps"]] == [("web", "bob", "grant")]
    # validation of the admin routes
    assert (await call(cell, "POST", "/v1/admin/apps/web/grant", admin, {"owner": ""}))[0] == 400
    assert (await call(cell, "POST", "/v1/admin/apps/web/grant", admin, {"owner": "x", "more": 1}))[0] == 400
    assert (await call(cell, "POST", "/v1/admin/apps/..bad/grant", admin, {"owner": "x"}))[0] == 400
    assert (await call(cell, "DELETE", "/v1/admin/apps/nope", admin))[0] == 404
    assert (await call(cell, "DELETE", "/v1/admin/apps/web", admin))[0] == 200
    assert cell.auth.store.apps.owner_of("web") is None
    # audited: the claim, the grant with what it replaced, the revocation
    events = {e["method"]: e for e in cell.auth.store.audit_log()}
    assert events["APP-CLAIM"]["detail"]["app"] == "web" and events["APP-CLAIM"]["who"] == "operator:submitter-1(submitter)"
    assert events["APP-GRANT"]["detail"]["previous"]["owner"] == "alice" and events["APP-GRANT"]["who"].endswith("(admin)")
    assert events["APP-REVOKE"]["detail"]["owner"] == "bob"


async def test_field_names_instead_of_camel_case_do_not_skip_the_checks(cell: Cell) -> None:
    """The model takes `app_name` as well as `appName`: the check reads the parsed spec, so spelling
    the key the other way is checked the same (a review found the bypass)."""
    alice = cell.operator_token("submitter", owner="alice")
    bob = cell.operator_token("submitter", owner="bob")
    assert (await call(cell, "POST", "/v1/jobs", alice, job("web", "alice")))[0] == 201  # claims web
    snake = {k: v for k, v in job("web", "bob").items() if k != "appName"} | {"app_name": "web"}
    status, doc = await call(cell, "POST", "/v1/jobs", bob, snake)
    assert status == 403 and "app 'web' belongs to owner 'alice'" in doc["error"]["message"]
    assert len(cell.scheduler.jobs) == 1  # (the IAM role spelled `iam_role`: tests/unit/test_trust.py)


async def test_policy_granted_through_the_api(cell: Cell) -> None:
    cell.auth.store.apps.policy = "granted"
    alice = cell.operator_token("submitter", owner="alice")
    status, doc = await call(cell, "POST", "/v1/jobs", alice, job("web", "alice"))
    assert status == 403 and "app 'web' is granted to no owner" in doc["error"]["message"]
    assert (await call(cell, "POST", "/v1/admin/apps/web/grant", cell.operator_token("admin"), {"owner": "alice"}))[0] == 200
    assert (await call(cell, "POST", "/v1/jobs", alice, job("web", "alice")))[0] == 201


async def test_no_identity_of_an_app_the_jobs_owner_does_not_hold(cell: Cell) -> None:
    node = SchedulerClient(cell.url, "n-a", cell.credentials("n-a", cell.bootstrap_token()))
    try:
        await node.sync(report("n-a"), 0)
        # jobs stored before app grants existed (straight into the scheduler, no submit check)
        first, _ = cell.scheduler.submit(parse_job_spec(job("web", "alice")))
        second, _ = cell.scheduler.submit(parse_job_spec(job("web", "mallory")))
        assert cell.scheduler.schedule_pass() == 2
        (t1,) = cell.scheduler.job_tasks(first.id)
        (t2,) = cell.scheduler.job_tasks(second.id)
        key = new_key()
        await node.task_identity(t1.id, task_csr(key, t1.id).decode())  # first use: alice claims web
        assert cell.auth.store.apps.owner_of("web") == "alice"
        assert any(e["method"] == "APP-CLAIM" for e in cell.auth.store.audit_log())
        with pytest.raises(SchedulerUnavailable, match="403.*app 'web' belongs to owner 'alice', not 'mallory'"):
            await node.task_identity(t2.id, task_csr(key, t2.id).decode())
        # an admin gives web to mallory: alice's task gets no more (rotation) certificates of it
        cell.auth.store.apps.grant("web", "mallory", "admin")
        with pytest.raises(SchedulerUnavailable, match="403.*belongs to owner 'mallory'"):
            await node.task_identity(t1.id, task_csr(key, t1.id).decode())
        await node.task_identity(t2.id, task_csr(key, t2.id).decode())
    finally:
        await node.close()


async def test_titusctl_admin_app_verbs(cell: Cell, capsys: pytest.CaptureFixture[str]) -> None:
    admin = Api(cell.url, credentials=Credentials(ca=cell.pki / "ca.crt", token=cell.operator_token("admin")))

    def run(*argv: str) -> str:
        args: argparse.Namespace = build_parser().parse_args(["admin", "app", *argv])
        assert args.fn(admin, args) == 0
        return capsys.readouterr().out

    assert "no app grants" in await asyncio.to_thread(run, "list")
    assert "app web belongs to owner alice" in await asyncio.to_thread(run, "grant", "web", "--owner", "alice")
    assert "(was alice's, by grant)" in await asyncio.to_thread(run, "grant", "web", "--owner", "bob")
    listed = await asyncio.to_thread(run, "list")
    assert "web" in listed and "bob" in listed and "policy claim" in listed
    assert "no longer belongs to bob" in await asyncio.to_thread(run, "revoke", "web")


def test_titusctl_submit_defaults_to_the_owners_own_app() -> None:
    from titusctl.commands import job_spec_from_args

    args = build_parser().parse_args(["job", "submit", "--image", "busybox", "--cmd", "true", "--owner", "alice"])
    assert job_spec_from_args(args)["appName"] == "adhoc-alice"  # never a name shared by every owner



def test_the_policy_is_a_scheduler_flag(tmp_path: Path) -> None:
    from scheduler.main import UsageError, load_config

    db = str(tmp_path / "s.db")
    assert load_config(["--insecure", "--db", db]).app_ownership == "claim"
    assert load_config(["--insecure", "--db", db, "--app-ownership", "granted"]).app_ownership == "granted"
    with pytest.raises(UsageError, match="app-ownership"):
        load_config(["--insecure", "--db", db, "--app-ownership", "anyone"])


async def test_a_tasks_last_output_is_read_only_by_its_owner_and_operators(cell: Cell) -> None:
    alice = cell.operator_token("submitter", owner="alice")
    bob = cell.operator_token("submitter", owner="bob")
    admin = cell.operator_token("admin")
    status, doc = await call(cell, "POST", "/v1/jobs", alice, job("web", "alice"))
    assert status == 201
    task = cell.scheduler.job_tasks(doc["id"])[0]
    task.log_tail = "token=hunter2\n"  # what the agent's terminal update would have carried
    for token, expect in ((alice, "token=hunter2\n"), (admin, "token=hunter2\n"), (bob, None)):
        status, seen = await call(cell, "GET", f"/v1/tasks/{task.id}", token)
        assert status == 200 and seen["logTail"] == expect
        status, listed = await call(cell, "GET", f"/v1/tasks?jobId={doc['id']}", token)
        assert status == 200 and [t["logTail"] for t in listed["tasks"]] == [expect]
