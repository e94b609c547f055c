"""The task's workload-identity JWT through the metadata service (docs/identity.md): the socket a
request arrives on names the task, so a task's endpoint only ever mints that task's own JWT; an
audience is required; the IMDSv2 token rules apply as for every path."""

from __future__ import annotations

from urllib.parse import quote

from prometheus_client import CollectorRegistry

from imds.service import JWT_PATH, MetadataService

from .conftest import KEY, Env, identity

MINTED: list[tuple[str, str]] = []


def minter(task_id: str, audience: str) -> str | None:
    if task_id == "no-identity":
        return None
    if audience == "bad aud":
        raise ValueError("audience must be printable characters without spaces")
    MINTED.append((task_id, audience))
    return f"jwt.{task_id}.{audience}"


def with_jwt(env: Env) -> None:
    env.service = MetadataService(env.broker, KEY, registry=CollectorRegistry(), clock=env.clock,
                                  imds_hosts=("169.254.169.254", "127.0.0.1"), workload_jwt=minter)


async def test_each_task_gets_only_its_own_jwt(env: Env) -> None:
    with_jwt(env)
    await env.add(identity("task-a", None))
    await env.add(identity("task-b", None))
    tok_a, tok_b = await env.token("task-a"), await env.token("task-b")
    assert await env.get("task-a", f"{JWT_PATH}?audience=payments", tok_a) == (200, "jwt.task-a.payments")
    # task B's endpoint, whatever it asks, mints for task B; task A's token does not work there at all
    assert await env.get("task-b", f"{JWT_PATH}?audience=payments&task=task-a", tok_b) == (200, "jwt.task-b.payments")
    assert (await env.get("task-b", f"{JWT_PATH}?audience=payments", tok_a))[0] == 401
    assert ("task-a", "payments") in MINTED and all(t != "task-a" or a == "payments" for t, a in MINTED)


async def test_audience_is_required_and_checked(env: Env) -> None:
    with_jwt(env)
    await env.add(identity("t1", None))
    tok = await env.token("t1")
    assert (await env.get("t1", JWT_PATH, tok))[0] == 400
    assert (await env.get("t1", f"{JWT_PATH}?audience=", tok))[0] == 400
    assert (await env.get("t1", f"{JWT_PATH}?audience=a&audience=b", tok))[0] == 400
    assert (await env.get("t1", f"{JWT_PATH}?audience={quote('bad aud')}", tok))[0] == 400
    assert (await env.get("t1", f"{JWT_PATH}?audience=x"))[0] == 401  # IMDSv2 token as for every path


async def test_no_identity_no_jwt(env: Env) -> None:
    await env.add(identity("t1", None))  # a service without identities (e.g. a plain-HTTP scheduler)
    assert (await env.get("t1", f"{JWT_PATH}?audience=x", await env.token("t1")))[0] == 404
    await env.service.remove_task("t1")
    with_jwt(env)
    await env.add(identity("no-identity", None))
    assert (await env.get("no-identity", f"{JWT_PATH}?audience=x", await env.token("no-identity")))[0] == 404
