"""IMDSv2 session tokens bound to one task.

A token is `1.<expiry>.<nonce>.<mac>`: expiry in whole Unix seconds, a random nonce (so two tokens
issued in the same second differ) and HMAC-SHA256(key, task_id | expiry | nonce), base64url. Nothing
is stored: a token is valid on a task's sockets while it has not expired and the MAC recomputed with
*that* task's id matches, so a token issued to task A is refused on task B's sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

MIN_TTL = 1
MAX_TTL = 21600
MAX_TOKEN_LEN = 128
_DIGITS = frozenset("0123456789")


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("token_key must be at least 16 random bytes")
        self._key = key

    def _mac(self, task_id: str, expiry: int, nonce: str) -> str:
        msg = f"{task_id}\x00{expiry}\x00{nonce}".encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, task_id: str, ttl: int, now: float) -> str:
        expiry = int(now) + ttl
        nonce = os.urandom(9).hex()
        return f"1.{expiry}.{nonce}.{self._mac(task_id, expiry, nonce)}"

    def valid(self, task_id: str, token: str, now: float) -> bool:
        if len(token) > MAX_TOKEN_LEN:
            return False
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "1" or not parts[1] or not set(parts[1]) <= _DIGITS:
            return False
        expiry = int(parts[1])
        if not now < expiry <= now + MAX_TTL + 1:
            return False
        return hmac.compare_digest(self._mac(task_id, expiry, parts[2]), parts[3])


def parse_ttl(value: str | None) -> int | None:
    """The TTL header as IMDS accepts it: decimal digits only, 1..21600; None if invalid."""
    if value is None or not 0 < len(value) <= 5 or not set(value) <= _DIGITS:
        return None
    ttl = int(value)
    return ttl if MIN_TTL <= ttl <= MAX_TTL else None
