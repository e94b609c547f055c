"""Names and labels of what the agent creates in the engine, in one place: host resources and
launch steps both need them, and neither should import the other to get a name."""

from __future__ import annotations

__all__ = [
    "LABEL_ROLE",
    "LABEL_SANDBOX_AGENT",
    "ROLE_SANDBOX",
    "container_name",
    "sandbox_name",
]

# A sandbox's owner: not `titus.agent`, since sandboxes are not tasks and everything that counts a
# node's task containers must not see them.
LABEL_SANDBOX_AGENT = "titus.sandbox_agent"
LABEL_ROLE = "titus.role"
ROLE_SANDBOX = "sandbox"


def container_name(task_id: str) -> str:
    return f"titus-{task_id}"


def sandbox_name(task_id: str) -> str:
    return f"titus-sandbox-{task_id}"
