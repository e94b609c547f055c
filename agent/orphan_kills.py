"""Containers labelled for this agent that match no task it holds: reported to the scheduler, and
killed only when the scheduler orders it through its kill path (freeze, budget; docs/reconcile.md).
The agent never kills an unknown container on its own."""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

from agent.docker_api import LABEL_TASK, Docker, DockerError, DockerUnavailable

log = logging.getLogger("titus.agent")


async def kill_ordered(docker: Docker, node_id: str, held: Container[str], container_ids: list[str],
                       grace_seconds: float) -> None:
    """Kill (stop, then remove) the ordered containers — each only if, listed afresh from the engine,
    it carries this agent's label and still matches no task in `held`."""
    try:
        containers = await docker.list_labelled(node_id)
    except (DockerUnavailable, DockerError) as e:
        log.warning("cannot list containers to kill orphans (the scheduler will ask again): %s", e)
        return
    unknown = {str(c.get("Id", ""))[:12]: c for c in containers
               if (c.get("Labels") or {}).get(LABEL_TASK) not in held}
    for cid in container_ids:
        c = unknown.get(cid[:12])
        if c is None:
            log.warning("refusing to kill container %s: not an unknown container of this agent", cid)
            continue
        log.warning("killing orphan container %s (task label %s) on the scheduler's order", cid,
                    (c.get("Labels") or {}).get(LABEL_TASK))
        try:
            await docker.stop(str(c["Id"]), grace_seconds)
            await docker.remove(str(c["Id"]))
        except (DockerUnavailable, DockerError) as e:
            log.warning("killing orphan container %s failed (the scheduler will ask again): %s", cid, e)


def note_unknown(containers: list[dict[str, Any]], held: Container[str], before: list[str]) -> list[str]:
    """The short ids of the containers matching no task in `held`, sorted; logged when they changed."""
    unknown = sorted(str(c.get("Id", ""))[:12] for c in containers
                     if (c.get("Labels") or {}).get(LABEL_TASK) not in held)
    if unknown and unknown != sorted(before):
        log.warning("%d container(s) labelled for this agent match no task it holds: %s (reported, not killed)",
                    len(unknown), ", ".join(unknown))
    return unknown
