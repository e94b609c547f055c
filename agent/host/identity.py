"""Start-up, aws provider: who this instance is (IMDSv2) and what EC2 says about it, checked
against the config; the result is the config the agent runs with (docs/ec2-host.md).

Blocking: called once by `agent.main` before the event loop. A configured value that IMDS
contradicts is a ConfigError (exit 2: a config baked into an image must not attach ENIs to another
instance); IMDS or EC2 failing is a ProviderError (exit 5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from netns.providers.aws import AwsConfig, make_client
from netns.providers.ec2_identity import (
    default_security_group,
    imds_hardening_warnings,
    instance_limits,
    read_identity,
)
from titus_common.errors import ConfigError

__all__ = ["resolve_aws_host"]

log = logging.getLogger("titus.agent.identity")
DEFAULT_REGION = AgentConfig.model_fields["aws_region"].default


def _ec2(config: AgentConfig) -> Any:
    return make_client(AwsConfig(
        node_id=config.node_id, instance_id=config.aws_instance_id, instance_type=config.aws_instance_type,
        subnet_id=config.aws_subnet_id, region=config.aws_region, endpoint_url=config.aws_endpoint_url,
    ))


def resolve_aws_host(
    config: AgentConfig, ec2_for: Callable[[AgentConfig], Any] = _ec2
) -> AgentConfig:
    if config.network_provider != "aws":
        return config
    update: dict[str, Any] = {}
    if config.aws_imds_identity:
        me = read_identity(config.aws_imds_endpoint)
        checks = [
            ("aws_instance_id", config.aws_instance_id, me.instance_id),
            ("aws_instance_type", config.aws_instance_type, me.instance_type),
            ("aws_availability_zone", config.aws_availability_zone or "", me.availability_zone),
            ("aws_account_id", config.aws_account_id or "", me.account_id),
        ]
        if config.aws_region != DEFAULT_REGION:
            checks.append(("aws_region", config.aws_region, me.region))
        for key, configured, actual in checks:
            if configured and configured != actual:
                raise ConfigError(
                    f"{key} is {configured!r} but this instance's IMDS says {actual!r}: "
                    "refusing to manage another instance's network"
                )
        update = {
            "aws_instance_id": me.instance_id,
            "aws_instance_type": me.instance_type,
            "aws_region": me.region,
            "aws_availability_zone": me.availability_zone,
            "aws_account_id": me.account_id,
            "aws_subnet_id": config.aws_subnet_id or me.subnet_id,
        }
        for warning in imds_hardening_warnings(ec2_for(config.model_copy(update=update)), me.instance_id):
            log.warning("host pre-flight: %s", warning)
    resolved = config.model_copy(update=update)
    need_limits = resolved.aws_max_enis is None
    need_groups = not resolved.network_default_security_groups
    if need_limits or need_groups:
        client = ec2_for(resolved)
        if need_limits:
            lim = instance_limits(client, resolved.aws_instance_type)
            update |= {"aws_max_enis": lim.max_enis, "aws_ipv4_per_eni": lim.ipv4_per_eni}
        if need_groups:
            update["network_default_security_groups"] = [default_security_group(client, resolved.aws_subnet_id)]
    return config.model_copy(update=update)
