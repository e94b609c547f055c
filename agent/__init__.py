"""titus-agent: runs tasks as Docker containers on one host, for the titus scheduler.

Owns: the composition (`agent`), host-wide resources (`host/`), the per-task state machine
(`runner`), launch steps (`steps/`, ordered by `launch`), checkpoints, the Docker door
(`docker_api`), the event watcher, exit classification, config, metrics and the local HTTP API.

May import: every library package (`titus_common`, `security`, `cpuset`, `netns`, `imds`); never
`scheduler` or `titusctl` (it talks to the scheduler over HTTP). Inside: `host/` never imports
`steps/`, `runner` or `agent` (tests/unit/test_layering.py).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
