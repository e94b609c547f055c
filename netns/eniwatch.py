"""Re-assert the ENI links and tables the agent owns as soon as something else changes them.

Network managers (systemd-networkd, ec2-net-utils, cloud-init) flush custom tables or add the
secondary IPs as host aliases at any time; the periodic re-assertion repairs it within a reconcile
interval, this watcher within about a second. A thread reads the host namespace's rtnetlink events
(links, IPv4 addresses, IPv4 routes, IPv4 rules) and calls `on_drift` — from that thread — when one
concerns what the agent owns: a route deleted from an ENI table, an address added to an ENI link,
an ENI link down or its MTU changed, a wired task's own rule deleted (netns/taskrules.py). The
agent's own repairs (route replace, alias delete, link up, rule add) are not drift, so they do not
trigger it again; nor is a teardown's deletion of its task's rules (the task has left the wired set
before its teardown deletes anything).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netns.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK, MarshalRtnl
from netns.taskrules import TaskRule, present_rules
from netns.wiring import enter_netns_fd

__all__ = ["EniWatch", "Owned", "is_drift"]

log = logging.getLogger("titus.netns.eniwatch")

IFF_UP = 1


@dataclass(frozen=True)
class Owned:
    """What the agent owns now: ENI link names → wanted MTU (None: any), the ENI tables, and the
    wired tasks' own rules."""

    links: dict[str, int | None]
    tables: frozenset[int]
    task_rules: frozenset[TaskRule] = frozenset()


def is_drift(msg: Any, owned: Owned) -> bool:
    """Pure: does this rtnetlink message undo something the agent set up?"""
    event = msg.get("event", "")
    if event == "RTM_DELROUTE":
        return msg.get_attr("RTA_TABLE") in owned.tables
    if event == "RTM_DELRULE":
        return bool(present_rules([msg]) & owned.task_rules)
    if event == "RTM_NEWADDR":
        return msg.get_attr("IFA_LABEL") in owned.links
    if event == "RTM_NEWLINK":
        name = msg.get_attr("IFLA_IFNAME")
        if name not in owned.links:
            return False
        mtu = owned.links[name]
        return not msg.get("flags", 0) & IFF_UP or (mtu is not None and msg.get_attr("IFLA_MTU") != mtu)
    return False


class EniWatch:
    def __init__(self, host_netns: str | None, owned: Callable[[], Owned], on_drift: Callable[[], None]) -> None:
        self.host_netns = host_netns
        self.owned = owned
        self.on_drift = on_drift
        self.events_seen = 0
        self.drift_events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="titus-eniwatch", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        # A raw netlink socket parsed with pyroute2's marshal, not `IPRoute.get()`: with pyroute2 0.9
        # a select() on an IPRoute never became readable again after its first get(), so the watch went
        # deaf after its first repair (found by tests/integration/test_ec2sim_agent.py).
        try:
            sock = event_socket(self.host_netns, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE)
        except OSError as e:
            log.warning("ENI netlink watch not started: %s; drift is repaired at the next reconcile only", e)
            return
        marshal = MarshalRtnl()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock], [], [], 0.5)  # wakes to notice stop()
                if not ready:
                    continue
                try:
                    data = sock.recv(1 << 20)
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    drift = True  # events were lost: re-assert to be sure
                else:
                    owned = self.owned()
                    drift = False
                    for msg in marshal.parse(data):
                        self.events_seen += 1
                        drift = drift or is_drift(msg, owned)
                if drift:
                    self.drift_events += 1
                    self.on_drift()
        except Exception as e:  # the periodic re-assertion still runs: degrade, do not crash the agent
            log.warning("ENI netlink watch stopped: %s; drift is repaired at the next reconcile only", e)
        finally:
            sock.close()


def event_socket(netns_path: str | None, groups: int) -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to `groups`, opened in `netns_path` (None: this thread's)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY) if netns_path is not None else -1
    try:
        if netns_path is not None:
            target = os.open(netns_path, os.O_RDONLY)
            try:
                enter_netns_fd(target)
            finally:
                os.close(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        finally:
            if netns_path is not None:
                enter_netns_fd(own)
    finally:
        if own >= 0:
            os.close(own)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, groups))
    return sock
