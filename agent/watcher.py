"""Container exits, as the engine announces them: one event stream for the whole host (not a
blocking wait per container) read on its own thread and handed to the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.docker_api import LABEL_AGENT, LABEL_TASK, Docker
from agent.names import LABEL_SANDBOX_AGENT
from titus_common.retry import Backoff


log = logging.getLogger("titus.agent.watcher")

EXIT_ACTIONS = {"die", "destroy", "oom", "kill"}


class ContainerWatcher:
    def __init__(
        self,
        docker: Docker,
        node_id: str,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[str], None],
        on_reconnect: Callable[[], None],
        on_sandbox_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.docker = docker
        self.node_id = node_id
        self.loop = loop
        self.on_exit = on_exit
        self.on_reconnect = on_reconnect
        self.on_sandbox_exit = on_sandbox_exit
        self._stop = threading.Event()
        self._stream: Any = None
        # The stream is open (the engine health check reports a broken stream as degraded).
        self.connected = False
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while not self._stop.is_set():
            try:
                # Labels in one filter are ANDed: task containers (titus.agent) and network
                # sandboxes (titus.sandbox_agent) need two, so the label is checked here.
                self._stream = self.docker.events()
                self.connected = True
                # Anything that happened while we were not listening is found by a reconcile.
                self.loop.call_soon_threadsafe(self.on_reconnect)
                backoff.reset()
                for event in self._stream:
                    if event.get("Action") in EXIT_ACTIONS:
                        attributes = event.get("Actor", {}).get("Attributes", {}) or {}
                        task_id = attributes.get(LABEL_TASK)
                        if not task_id:
                            continue
                        if attributes.get(LABEL_AGENT) == self.node_id:
                            self.loop.call_soon_threadsafe(self.on_exit, task_id)
                        elif attributes.get(LABEL_SANDBOX_AGENT) == self.node_id and self.on_sandbox_exit:
                            self.loop.call_soon_threadsafe(self.on_sandbox_exit, task_id)
            except Exception as e:
                self.connected = False
                if self._stop.is_set():
                    return
                delay = backoff.next_delay()
                log.warning("docker event stream broke: %s; reconnecting in %.1fs", e, delay)
                self._stop.wait(delay)
                continue
            self.connected = False
            self._stop.wait(backoff.next_delay())  # the stream ended: the engine is restarting

