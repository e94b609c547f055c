"""The cached-image part of the heartbeat (docs/scheduling.md): the engine's image references,
refreshed by the reconcile loop, sent compactly — every heartbeat carries a digest of the list, the
list itself only when it changed since it was last sent or the scheduler asks for it
(`SyncResponse.send_cached_images`, e.g. after a scheduler restart)."""

from __future__ import annotations

from titus_common.protocol import images_digest

__all__ = ["ImageCacheReport"]


class ImageCacheReport:
    def __init__(self) -> None:
        self.refs: list[str] = []
        self.digest = ""
        self._sent = ""

    def update(self, refs: list[str]) -> None:
        self.refs = sorted(set(refs))
        self.digest = images_digest(self.refs)

    def resend(self) -> None:
        """The scheduler does not know our list: send it with the next heartbeat."""
        self._sent = ""

    def fields(self) -> tuple[str, list[str] | None]:
        """(digest, the list or None) for the next heartbeat."""
        if not self.digest:
            return "", None
        if self.digest == self._sent:
            return self.digest, None
        self._sent = self.digest
        return self.digest, list(self.refs)
