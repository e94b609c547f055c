"""titus-agent entry point."""

from __future__ import annotations

import asyncio
import logging
import sys

from agent.agent import Agent
from agent.config import AgentConfig, load_config
from agent.docker_api import Docker
from agent.http import make_app
from agent.metrics import AgentMetrics
from agent.node_credentials import NodeCredentials
from agent.scheduler_client import SchedulerClient
from titus_common.daemon import one_line, refuse_start, serve_http, stop_on_signals
from titus_common.errors import ConfigError, TitusError
from titus_common.logs import setup_logging

log = logging.getLogger("titus.agent")


async def serve(config: AgentConfig) -> int:
    docker = Docker(config.docker_url)
    credentials = None
    if config.scheduler_url.startswith("https://") and config.scheduler_ca_file is not None:
        credentials = NodeCredentials(config.node_id, config.scheduler_ca_file, config.state_dir / "pki",
                                      config.bootstrap_token_file)
    else:
        log.warning("scheduler %s is plain HTTP: no TLS, no node identity (docs/trust.md)", config.scheduler_url)
    client = SchedulerClient(config.scheduler_url, config.node_id, credentials)
    agent = Agent(config, docker, client, AgentMetrics())
    stop = stop_on_signals()
    try:
        runner = await serve_http(make_app(agent), config.listen)
    except TitusError as e:
        return refuse_start("titus-agent", log, e)
    try:
        await agent.start()
    except TitusError as e:  # every refusal: one line, the kind's exit code (titus_common/errors.py)
        await agent.stop()
        await runner.cleanup()
        return refuse_start("titus-agent", log, e)
    host, port = config.listen
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
        print(f"titus-agent: bad configuration: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    setup_logging("titus-agent", config.log_level)
    sys.exit(asyncio.run(serve(config)))


if __name__ == "__main__":
    main()
