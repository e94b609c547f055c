"""The one error root of every titus process, and the exit codes a start-up refusal maps to.

Every error a titus package raises on purpose derives from `TitusError`, through one of the kinds
below, so a caller can catch a kind (`StateCorrupt`, `ProviderError`, …) whatever package raised it,
and a daemon's `main` can turn any start-up refusal into one line and a documented exit code
(`exit_code_for`), never a traceback.

Exit codes of `titus-agent` and `titus-scheduler` (docs/architecture.md, "Exit codes"):
  0  stopped normally
  1  an unexpected error (a bug: the traceback is logged)
  2  bad configuration or usage (a config key, a flag, the security policy file)
  3  persisted state cannot be read (a task checkpoint, ipam.json, the scheduler's store)
  4  the host cannot do what the policy says (userns-remap missing, AppArmor profile not loadable,
     isolation not applicable, CPU topology or grants that do not fit)
  5  an outside system refused or failed at start (EC2 or STS during restore, the provider)
  6  cannot listen on the configured address

May import: the standard library only.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_CANNOT_LISTEN",
    "EXIT_HOST_REFUSED",
    "EXIT_OK",
    "EXIT_PROVIDER",
    "EXIT_STATE_CORRUPT",
    "EXIT_UNEXPECTED",
    "CannotListen",
    "ConfigError",
    "HostRefused",
    "ProviderError",
    "StateCorrupt",
    "TitusError",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_CONFIG = 2
EXIT_STATE_CORRUPT = 3
EXIT_HOST_REFUSED = 4
EXIT_PROVIDER = 5
EXIT_CANNOT_LISTEN = 6


class TitusError(Exception):
    """Root of every deliberate titus error. `exit_code` is what a daemon exits with when this
    error refuses its start."""

    exit_code: int = EXIT_UNEXPECTED


class ConfigError(TitusError, ValueError):
    """A configuration value, flag or data file is wrong; the message names the key or field."""

    exit_code = EXIT_BAD_CONFIG


class StateCorrupt(TitusError):
    """Persisted state cannot be read as written: never guess, never start on part of it."""

    exit_code = EXIT_STATE_CORRUPT


class HostRefused(TitusError):
    """This host cannot enforce what the policy requires: running work anyway would be unsafe."""

    exit_code = EXIT_HOST_REFUSED


class ProviderError(TitusError):
    """An outside system (EC2, STS, the IP provider) refused or failed."""

    exit_code = EXIT_PROVIDER


class CannotListen(TitusError):
    """The configured listen address cannot be bound."""

    exit_code = EXIT_CANNOT_LISTEN


def exit_code_for(error: BaseException) -> int:
    return error.exit_code if isinstance(error, TitusError) else EXIT_UNEXPECTED
