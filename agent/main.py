"""titus-agent entry point."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time

from agent.agent import Agent
from agent.config import AgentConfig, load_config
from agent.docker_api import POOL_IDLE_SECONDS, Docker
from agent.http import make_app
from agent.metrics import AgentMetrics
from agent.node_credentials import NodeCredentials
from agent.scheduler_client import SchedulerClient
from agent.host.identity import resolve_aws_host
from agent.host.instance_proof import read_instance_proof
from titus_common.daemon import apply_log_level, one_line, refuse_start, reload_on_sighup, serve_http, stop_on_signals
from titus_common.errors import ConfigError, TitusError
from titus_common.logs import setup_logging
from titus_common.memory import freeze_imported, limit_arenas
from titus_common.tlsbuffers import shrink_tls_buffers
from titus_common.sdnotify import Notifier
from titus_common.threads import ElasticThreadPool

log = logging.getLogger("titus.agent")

BLOCKING_WORKERS = 32


def status_line(agent: Agent, now: float | None = None) -> str:
    """What `systemctl status titus-agent` shows: tasks, unknown containers, the last sync, and
    `degraded:` when the scheduler has not answered for three long-polls and more."""
    now = time.time() if now is None else now
    running = sum(1 for r in agent.runners.values() if not r.record.state.terminal)
    parts = [f"{running} tasks", f"{len(agent.unknown_containers)} unknown containers"]
    if agent.last_sync_ok is None:
        parts.append(f"waiting for the first sync with {agent.config.scheduler_url}")
    else:
        age = now - agent.last_sync_ok
        parts.append(f"last sync {age:.0f}s ago")
        if age > 3 * agent.config.sync_wait_seconds + 10:
            parts.append("degraded: scheduler not answering")
    return ", ".join(parts)


async def serve(config: AgentConfig, argv: list[str] | None = None, notifier: Notifier | None = None) -> int:
    # A full collection scanned every imported object: ~0.5 s on the loop here per give-back after
    # a burst (py-spy, bench/launch.py). Only the agent's own state is scanned now.
    freeze_imported()
    # asyncio.to_thread's pool (netlink, namespace preparation, pool and token files, metadata links):
    # the default, cores + 4, queues a burst of launches behind each other on a small host although
    # those calls mostly wait on the kernel. Threads are made on demand and reused.
    # Threads a burst made leave after 10 s idle (titus_common/threads.py: ~110 kB of RSS each).
    asyncio.get_running_loop().set_default_executor(
        ElasticThreadPool(BLOCKING_WORKERS, "blocking", idle_seconds=POOL_IDLE_SECONDS)
    )
    docker = Docker(config.docker_url)
    credentials = None
    if config.scheduler_url.startswith("https://") and config.scheduler_ca_file is not None:
        proof = None
        if config.network_provider == "aws" and config.aws_imds_identity:  # bound to this instance (docs/trust.md)
            proof = functools.partial(read_instance_proof, config.aws_imds_endpoint)
        credentials = NodeCredentials(config.node_id, config.scheduler_ca_file, config.state_dir / "pki",
                                      config.bootstrap_token_file, instance_proof=proof)
    else:
        log.warning("scheduler %s is plain HTTP: no TLS, no node identity (docs/trust.md)", config.scheduler_url)
    client = SchedulerClient(config.scheduler_url, config.node_id, credentials)
    agent = Agent(config, docker, client, AgentMetrics())
    stop = stop_on_signals()
    notifier = notifier if notifier is not None else Notifier()
    # Pings start now, from this loop: a start that waits for the engine is alive, a hung loop is not.
    watchdog = asyncio.create_task(notifier.watchdog(lambda: status_line(agent)), name="watchdog")
    notifier.status("starting: restoring state, waiting for the Docker engine")
    try:
        try:
            runner = await serve_http(make_app(agent), config.listen)
        except TitusError as e:
            return refuse_start("titus-agent", log, e)
        try:
            await agent.start()
        except TitusError as e:  # every refusal: one line, the kind's exit code (titus_common/errors.py)
            notifier.status(f"cannot start: {one_line(e)}")
            await agent.stop()
            await runner.cleanup()
            return refuse_start("titus-agent", log, e)
        host, port = config.listen
        log.info("agent %s serving on http://%s:%d, scheduler %s", config.node_id, host, port, config.scheduler_url)
        # READY: engine answered, checkpoints restored and re-adopted, host resources started, API up.
        # Not the first sync: a scheduler outage must not fail agents' start jobs (STATUS says it).
        notifier.ready(status_line(agent))
        current = [config]

        def reload() -> str:
            new = load_config(argv)
            line = apply_log_level(current[0], new)
            current[0] = new
            return line

        reload_on_sighup(notifier, reload)
        await stop.wait()
        notifier.stopping()
        log.info("stopping (containers keep running)")
        await agent.stop()
        await runner.cleanup()
        docker.pool.shutdown(wait=False, cancel_futures=True)
        return 0
    finally:
        watchdog.cancel()


def main(argv: list[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"titus-agent: bad configuration: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    setup_logging("titus-agent", config.log_level)
    limit_arenas()  # before the thread pools exist (issue 17: footprint at 100+ tasks)
    shrink_tls_buffers()  # 256 KiB per TLS connection to the scheduler otherwise (titus_common/tlsbuffers.py)
    try:  # aws: this instance's identity (IMDSv2), limits and default groups, checked (blocking)
        config = resolve_aws_host(config)
    except TitusError as e:
        sys.exit(refuse_start("titus-agent", log, e))
    sys.exit(asyncio.run(serve(config, argv)))


if __name__ == "__main__":
    main()
