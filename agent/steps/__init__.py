"""Launch steps: one module per resource a task holds on the host; the contract is `base.py`, the
order `agent/launch.py`.

May import: `agent.steps.base`, the agent's non-step modules (`agent.host`, `agent.checkpoint`,
`agent.docker_api`, `agent.names`, …) and the libraries. Never another step module: what one step
needs of another is a typed output on the checkpoint (`TaskCheckpoint.outputs`).
"""

__all__ = ["base", "container", "cpuset", "image", "imds", "network", "security"]
