"""What the host owns, one object per resource, each with the same small lifecycle (`base.py`).

- `security.HostSecurity`  the policy, the probed posture and the AppArmor profiles
- `cpus.HostCpus` + `cpuset_apply.CpusetApplier` (composed in `cpus.CpuResource`)  the CPUs
- `network.HostNetwork`    the IP pool, the wiring, control-plane isolation and network GC
- `metadata.HostMetadata`  the metadata namespace, its listeners and the credential service

May import: `agent.checkpoint`, `agent.config`, `agent.docker_api`, `agent.metrics`, `agent.names`,
the libraries (`cpuset`, `netns`, `imds`, `security`, `titus_common`). Never `agent.steps`,
`agent.runner` or `agent.agent`: launch steps use host resources, not the other way round
(tests/unit/test_layering.py).
"""

from agent.host.base import HostResource, LiveTasks

__all__ = ["HostResource", "LiveTasks"]
