"""titus-agent entry point."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from agent.agent import Agent
from agent.checkpoint import CheckpointCorrupt
from agent.config import AgentConfig, ConfigError, load_config
from agent.docker_api import Docker
from agent.http import make_app
from agent.metrics import AgentMetrics
from agent.scheduler_client import SchedulerClient
from titus_common.logs import setup_logging

log = logging.getLogger("titus.agent")


async def serve(config: AgentConfig) -> int:
    docker = Docker(config.docker_url)
    agent = Agent(config, docker, SchedulerClient(config.scheduler_url, config.node_id), AgentMetrics())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(agent), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = config.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        print(f"titus-agent: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        await runner.cleanup()
        return 2
    try:
        await agent.start()
    except CheckpointCorrupt as e:
        print(f"titus-agent: cannot start: {e}", file=sys.stderr)
        log.critical("cannot start: %s", e)
        await runner.cleanup()
        return 2
    log.info("agent %s serving on http://%s:%d, scheduler %s", config.node_id, host, port, config.scheduler_url)
    await stop.wait()
    log.info("stopping (containers keep running)")
    await agent.stop()
    await runner.cleanup()
    docker.pool.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"titus-agent: bad configuration: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging("titus-agent", config.log_level)
    sys.exit(asyncio.run(serve(config)))


if __name__ == "__main__":
    main()
