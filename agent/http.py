"""The agent's own small HTTP face: /metrics for Prometheus, /healthz, /v1/tasks (local view) and
/v1/cpus (the host's CPU map, for `titusctl node cpus`), /v1/net (IPs and leaks, `titusctl node net`), /v1/imds (each task's role and credential state), /v1/health (the host health checks' latest results)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.agent import Agent

AGENT_KEY = web.AppKey("agent", Agent)


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest(request.app[AGENT_KEY].metrics.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def healthz(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    docker_ok = await agent.docker.ping()
    last = agent.last_sync_ok
    scheduler_ok = last is not None and time.time() - last < 3 * agent.config.sync_wait_seconds + 15
    posture = agent.security.posture
    body = {
        "docker": docker_ok,
        "scheduler": scheduler_ok,
        "tasks": len(agent.runners),
        # What this agent decides launches with (titusctl node doctor shows it).
        "security": {
            "postureProbed": posture is not None,
            "seccomp": posture.seccomp_enforceable if posture is not None else None,
            "apparmor": ("enforced" if posture.apparmor.enforceable else "unavailable") if posture is not None else None,
            "userns": posture.userns.remapped if posture is not None else None,
            "policy": agent.security.policy.source,
            "apparmorUnavailable": agent.security.policy.apparmor_unavailable,
            "variants": sorted(agent.security.policy.catalog.profiles),
            "brokenProfiles": sorted(agent.security.policy.catalog.broken),
        },
    }
    return web.json_response(body, status=200 if docker_ok else 503)


async def tasks(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.json_response(
        {"tasks": [r.record.model_dump(mode="json", exclude={"assignment"}) | {"taskId": r.task_id}
                   for r in agent.runners.values()],
         "unknownContainers": agent.unknown_containers}
    )


async def steps(request: web.Request) -> web.Response:
    """Launch step durations of the recent launches (agent/step_timings.py)."""
    return web.json_response({"steps": request.app[AGENT_KEY].pipeline.timings.summary()})


async def cpus(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    if agent.cpus is None:
        return web.json_response(
            {"error": {"message": "cpuset placement is off on this agent (--no-cpuset)"}}, status=404
        )
    return web.json_response({"nodeId": agent.config.node_id, **agent.cpus.host.snapshot(agent.cpus.applier.applied)})


async def net(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    if agent.network is None:
        return web.json_response(
            {"error": {"message": "networking is off on this agent (--no-network)"}}, status=404
        )
    return web.json_response({"nodeId": agent.config.node_id, **agent.network.snapshot()})


async def imds(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    if agent.metadata is None:
        return web.json_response({"error": {"message": "the metadata proxy is off on this agent"}}, status=404)
    # Roles, listeners, credential expiry and errors per task: never a secret.
    return web.json_response({"nodeId": agent.config.node_id, "tasks": await agent.metadata.host.service.snapshot_async()})


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    if agent.health is None:
        return web.json_response({"error": {"message": "health checks are off on this agent (--no-health)"}}, status=404)
    conditions = agent.health.conditions()
    return web.json_response({
        "nodeId": agent.config.node_id,
        "status": agent.health.monitor.status().value,
        "conditions": [c.model_dump(mode="json", by_alias=True) for c in conditions],
        "checks": sorted(c.name for c in agent.health.monitor.checks),
    })


def make_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/tasks", tasks)
    app.router.add_get("/v1/steps", steps)
    app.router.add_get("/v1/cpus", cpus)
    app.router.add_get("/v1/net", net)
    app.router.add_get("/v1/imds", imds)
    app.router.add_get("/v1/health", health)
    return app
