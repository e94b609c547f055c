"""The "logs collected" contract for finished tasks' containers (docs/health.md).

There is no log shipper on the host; what the platform keeps of a finished task's output is its last
lines, sent with the terminal update. A container is removed only after that:
1. teardown (agent/steps/container.py) stops the container if it still runs, reads its last
   `TAIL_LINES` lines of stdout and stderr (`capture`: clipped at the front to the protocol's
   `MAX_LOG_TAIL` characters) into the task's checkpoint (written before anything else happens), and
   leaves the container in place;
2. the terminal update carries `log_tail`; the scheduler stores it on the task (`logTail`);
3. when the scheduler accepts that update (`UpdatesResponse.accepted`: durably taken), the agent
   removes the container, then forgets the task (agent/agent.py `_report_loop`).
A container whose removal fails then (engine away) is collected by the image GC
(agent/host/imagegc.py) after `container_retention_seconds`, like any exited container of a task the
agent no longer holds: never before its terminal update was accepted. When the engine cannot give
the logs (`log_tail` None) the update still goes: the task's outcome is never held hostage.
"""

from __future__ import annotations

import logging

from agent.docker_api import Docker, DockerError, DockerUnavailable
from titus_common.protocol import MAX_LOG_TAIL

__all__ = ["TAIL_LINES", "capture", "clip"]

log = logging.getLogger("titus.agent.logs")

TAIL_LINES = 50


def clip(raw: bytes, limit: int = MAX_LOG_TAIL) -> str:
    """The end of `raw` as text of at most `limit` characters ("…" marks a cut at the front)."""
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= limit else "…" + text[len(text) - limit + 1:]


async def capture(docker: Docker, container_id: str, lines: int = TAIL_LINES) -> str | None:
    """The container's last output, or None when the engine cannot give it. stdout and stderr lines
    come in the engine's copy order, which across the two streams is not always the program's."""
    try:
        raw = await docker.logs_tail(container_id, lines)
    except (DockerUnavailable, DockerError) as e:
        log.warning("cannot read the log tail of %s: %s", container_id[:12], e)
        return None
    return None if raw is None else clip(raw)
