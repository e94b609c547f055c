"""Typed network errors. `platform_fault` says whose fault it is: True -> the task ends `crashed`
(costs the user no retry); False -> the user's request cannot run (`failed`), e.g. an unknown
security group. `retryable` -> waiting may help (the pool refills, throttling passes)."""

from __future__ import annotations


class NetworkError(Exception):
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


class ProviderThrottled(NetworkError):
    retryable = True


class ProviderUnavailable(NetworkError):
    retryable = True


class ProviderResponseInvalid(NetworkError):
    """The provider answered something we cannot trust (missing fields, duplicate/out-of-subnet IPs)."""


class UnknownSecurityGroup(NetworkError):
    platform_fault = False


class AddressConflict(NetworkError):
    """An address is already in use elsewhere (on the fabric, or handed out twice)."""


class PoolTimeout(NetworkError):
    retryable = True


class CheckpointError(NetworkError):
    pass


class WiringError(NetworkError):
    pass
