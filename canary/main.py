"""titus-canary entry point: probe every `--interval` seconds, serve the SLIs on `--listen`/metrics.

A bad flag is one line on stderr and exit code 2; an address that cannot be bound, exit code 6.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path
from typing import NoReturn

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from canary.probe import CanaryMetrics, Outcome, ProbeConfig, client_ssl, probe
from titus_common.daemon import parse_listen, refuse_start, serve_http, stop_on_signals
from titus_common.errors import ConfigError, TitusError
from titus_common.logs import setup_logging

__all__ = ["main", "run"]

PROG = "titus-canary"
log = logging.getLogger("titus.canary")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value!r}")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    p.add_argument("--scheduler", default="http://127.0.0.1:7100", help="the scheduler's public API")
    p.add_argument("--image", default="busybox:latest", help="image of the probe job (command `true`)")
    p.add_argument("--interval", type=_positive, default=60.0, help="seconds between probe starts")
    p.add_argument("--timeout", type=_positive, default=120.0, help="seconds for a probe to reach Finished")
    p.add_argument("--window", type=int, default=20, help="probes in the success ratio")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 7180), help="HOST:PORT of /metrics")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--ca", help="the cell CA certificate (a TLS scheduler; docs/trust.md)")
    p.add_argument("--cert", help="client certificate (an operator or submitter's)")
    p.add_argument("--key", help="its key")
    p.add_argument("--token-file", help="a bearer token file instead of a client certificate")
    return p


async def run(
    config: ProbeConfig, interval: float, metrics: CanaryMetrics, stop: asyncio.Event,
    tls: ssl.SSLContext | None = None, token: str | None = None,
) -> None:
    seq = 0
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
    async with aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector) as http:
        while not stop.is_set():
            seq += 1
            result = await probe(http, config, seq)
            metrics.record(result)
            level = logging.INFO if result.outcome is Outcome.SUCCESS else logging.ERROR
            log.log(level, "probe %d: %s %s", seq, result.outcome.value, result.detail)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass


async def _serve(args: argparse.Namespace) -> int:
    metrics = CanaryMetrics(args.window)

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(metrics.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app = web.Application()
    app.router.add_get("/metrics", handler)
    try:
        runner = await serve_http(app, args.listen)
    except TitusError as e:
        return refuse_start(PROG, log, e)
    stop = stop_on_signals()
    config = ProbeConfig(args.scheduler.rstrip("/"), args.image, args.timeout)
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        await run(config, args.interval, metrics, stop, client_ssl(args.ca, args.cert, args.key), token)
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        if args.window < 1:
            raise ConfigError("--window must be at least 1")
    except ConfigError as e:
        setup_logging(PROG)
        sys.exit(refuse_start(PROG, log, e))
    setup_logging(PROG, args.log_level)
    sys.exit(asyncio.run(_serve(args)))


if __name__ == "__main__":
    main()
