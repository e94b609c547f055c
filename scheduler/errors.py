"""The scheduler's request errors, each mapped to one HTTP status by `scheduler/api.py`."""

from __future__ import annotations

from titus_common.errors import TitusError

__all__ = ["BadMode", "BadRequest", "Conflict", "NotFound"]


class NotFound(TitusError, LookupError):
    """No job or task with that id (the API answers 404)."""


class BadRequest(TitusError, ValueError):
    """A request the scheduler refuses as invalid: an unknown capacity group, a malformed job
    attribute (the API answers 400)."""


class BadMode(BadRequest):
    """An unknown scheduling mode (the API answers 400)."""


class Conflict(TitusError, ValueError):
    """The request contradicts what exists, e.g. a reused idempotency key (the API answers 409)."""

