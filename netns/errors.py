"""Typed network errors. `platform_fault` says whose fault it is: True -> the task ends `crashed`
(costs the user no retry); False -> the user's request cannot run (`failed`), e.g. an unknown
security group. `retryable` -> waiting may help (the pool refills, throttling passes)."""

from __future__ import annotations

from titus_common.errors import HostRefused, ProviderError, StateCorrupt, TitusError


class NetworkError(TitusError):
    # At start-up a network error the agent cannot classify better means the host cannot give
    # tasks the network the policy says; subclasses below are more precise.
    exit_code = HostRefused.exit_code
    platform_fault = True
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SubnetExhausted(NetworkError):
    retryable = True


class EniLimitReached(NetworkError):
    pass


class IpLimitReached(NetworkError):
    pass


class ProviderThrottled(NetworkError, ProviderError):
    retryable = True
    exit_code = ProviderError.exit_code


class ProviderUnavailable(NetworkError, ProviderError):
    retryable = True
    exit_code = ProviderError.exit_code


class ProviderResponseInvalid(NetworkError, ProviderError):
    """The provider answered something we cannot trust (missing fields, duplicate/out-of-subnet IPs)."""

    exit_code = ProviderError.exit_code


class UnknownSecurityGroup(NetworkError):
    platform_fault = False


class AddressConflict(NetworkError):
    """An address is already in use elsewhere (on the fabric, or handed out twice)."""


class PoolTimeout(NetworkError):
    retryable = True


class CheckpointError(NetworkError, StateCorrupt):
    """ipam.json (the pool's checkpoint) cannot be read as written."""

    exit_code = StateCorrupt.exit_code


class WiringError(NetworkError):
    pass
