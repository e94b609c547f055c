"""Which rtnetlink events undo what the agent owns on its ENIs (netns/eniwatch.py: is_drift)."""

from __future__ import annotations

from typing import Any

import pytest

from netns.eniwatch import Owned, is_drift

OWNED = Owned({"eth1": 9001, "ens7": None}, frozenset({101, 102}))


class Msg:
    def __init__(self, event: str, flags: int = 0, **attrs: Any) -> None:
        self.fields = {"event": event, "flags": flags}
        self.attrs = attrs

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


@pytest.mark.parametrize("msg, drift", [
    (Msg("RTM_DELROUTE", RTA_TABLE=101), True),  # a manager flushed an ENI table
    (Msg("RTM_DELROUTE", RTA_TABLE=254), False),  # the main table is not ours
    (Msg("RTM_NEWROUTE", RTA_TABLE=101), False),  # our own repair
    (Msg("RTM_NEWADDR", IFA_LABEL="eth1"), True),  # ec2-net-utils added an alias
    (Msg("RTM_NEWADDR", IFA_LABEL="eth0"), False),  # the primary ENI is the host's
    (Msg("RTM_DELADDR", IFA_LABEL="eth1"), False),  # our own alias removal
    (Msg("RTM_NEWLINK", flags=0, IFLA_IFNAME="eth1", IFLA_MTU=9001), True),  # downed
    (Msg("RTM_NEWLINK", flags=1, IFLA_IFNAME="eth1", IFLA_MTU=1500), True),  # MTU reset
    (Msg("RTM_NEWLINK", flags=1, IFLA_IFNAME="eth1", IFLA_MTU=9001), False),  # as we set it
    (Msg("RTM_NEWLINK", flags=1, IFLA_IFNAME="ens7", IFLA_MTU=1500), False),  # no MTU wanted
    (Msg("RTM_NEWLINK", flags=0, IFLA_IFNAME="tn0123", IFLA_MTU=1500), False),  # a task link
    (Msg("RTM_NEWNEIGH"), False),
])
def test_is_drift(msg: Msg, drift: bool) -> None:
    assert is_drift(msg, OWNED) is drift
