"""The host's security as one resource (docs/security.md): the policy (read once), the posture
(probed at start, re-probed on every reconcile: a dockerd restart may change it) and the AppArmor
profiles (loaded where the kernel enforces AppArmor). Launch steps read `HostSecurity`; the agent
drives `SecurityResource` through the lifecycle of `agent/host/base.py`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.checkpoint import TaskCheckpoint
from agent.host.base import LiveTasks
from agent.docker_api import Docker, DockerError, DockerUnavailable
from security import apparmor
from security.posture import HostPosture, posture_from, userns_start_problem
from security.profiles import SecurityPolicy, default_policy, load_policy
from titus_common.errors import HostRefused
from titus_common.retry import Backoff, retry_forever

__all__ = ["HostSecurity", "SecurityResource", "load_security_policy"]

log = logging.getLogger("titus.agent.security")


def load_security_policy(path: Path | None) -> SecurityPolicy:
    """The policy file, or the built-in one. PolicyError (a ConfigError) names file and field."""
    return load_policy(path) if path is not None else default_policy()


@dataclass
class HostSecurity:
    """The host-wide inputs of every task's decision: the policy (loaded once at start) and the
    posture (probed at agent start, refreshed by the agent; None until the first probe)."""

    policy: SecurityPolicy
    posture: HostPosture | None = None


class SecurityResource:
    name = "security"

    def __init__(self, host: HostSecurity, docker: Docker, require_userns: bool) -> None:
        self.host = host
        self.docker = docker
        self.require_userns = require_userns

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        """Before any runner runs: every launch is decided against what this host can enforce."""
        self.host.posture = await retry_forever(
            self._probe, (DockerUnavailable, DockerError), Backoff(0.5, 10.0),
            lambda e, delay: log.warning("cannot probe the host's security posture (%s); retrying in %.1fs", e, delay),
        )
        log_posture(self.host.posture)
        problem = userns_start_problem(self.host.posture.userns, self.require_userns)
        if problem is not None:
            raise HostRefused(problem)
        await self._load_apparmor_profiles()

    async def reconcile(self, tasks: LiveTasks) -> None:
        """After a dockerd restart the engine may have changed (seccomp, userns-remap): re-probe."""
        try:
            posture = await self._probe()
        except (DockerUnavailable, DockerError) as e:
            log.warning("reconcile: cannot probe the security posture: %s", e)
            return
        if posture == self.host.posture:
            return
        log_posture(posture)
        was_enforced = self.host.posture is not None and self.host.posture.apparmor.enforceable
        self.host.posture = posture
        if posture.apparmor.enforceable and not was_enforced:
            try:
                await self._load_apparmor_profiles()
            except HostRefused as e:
                log.error("%s", e)

    async def gc(self, tasks: LiveTasks) -> None:
        return None  # nothing per task to leak: profiles are data, AppArmor profiles are per host

    async def stop(self) -> None:
        return None  # loaded AppArmor profiles stay: running containers are confined by them

    async def _probe(self) -> HostPosture:
        return await asyncio.to_thread(posture_from, await self.docker.info())

    async def _load_apparmor_profiles(self) -> None:
        """Where the kernel enforces AppArmor, load (or replace) one profile per seccomp variant, so
        `apparmor=titus-<variant>` names a profile the kernel has. Not loadable = do not start."""
        posture = self.host.posture
        if posture is None or not posture.apparmor.enforceable:
            return
        for variant in sorted(self.host.policy.catalog.profiles):
            text = apparmor.render_profile(variant)
            result = await asyncio.to_thread(apparmor.load_profile, text)
            if not result.ok:
                raise HostRefused(f"AppArmor profile {apparmor.profile_name(variant)} does not load: {result.output}")
            log.info("AppArmor profile %s loaded", apparmor.profile_name(variant))


def log_posture(posture: HostPosture) -> None:
    log.info(
        "security posture: kernel %s, cgroup v%s, seccomp %s, AppArmor %s (%s), userns-remap %s",
        posture.kernel_version, posture.cgroup_version,
        "yes" if posture.seccomp_enforceable else "NO",
        "enforced" if posture.apparmor.enforceable else "NOT enforced", posture.apparmor.reason,
        "yes" if posture.userns.remapped else "no (container root is host root)",
    )
