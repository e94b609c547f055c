"""A restarted agent owns the links of the ENIs it already had (netns/step.py: own_present_links):
found by the e2e run on a simulated EC2 host (tests/integration/test_ec2sim_agent.py), where a kept
task's ENI was neither re-asserted nor watched after a restart until a new task landed on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netns.ipam import PoolConfig
from netns.pool import NetworkPool
from netns.providers.base import EniInfo
from netns.providers.local import LocalProvider, LocalVpc
from netns.step import HostEniByMac, TaskNetworks
from netns.wiring import HostEni, Wiring


class PluggedLinks(HostEniByMac):
    """Every ENI's link is on the host as eth<device index>, except those in `missing`."""

    def __init__(self) -> None:
        super().__init__(timeout_s=0.0)
        self.missing: set[str] = set()

    def find(self, eni: EniInfo) -> HostEni | None:
        if eni.eni_id in self.missing:
            return None
        return HostEni(eni.device_index, f"eth{eni.device_index}", eni.gateway, 9001, "02:00:00:00:00:01")


class RecordingWiring(Wiring):
    def __init__(self) -> None:
        super().__init__(owner="unit")
        self.owned: list[str] = []

    def ensure_eni_table(self, eni: HostEni) -> list[str]:
        self.owned.append(eni.ifname)
        return []

    def setup(self, spec: Any) -> dict[str, Any]:
        return {}


def networks(tmp_path: Path, links: PluggedLinks, wiring: RecordingWiring) -> TaskNetworks:
    provider = LocalProvider("unit", LocalVpc("100.64.0.0/24", state_path=tmp_path / "vpc.json"))
    pool = NetworkPool(provider, PoolConfig(max_enis=3, ips_per_eni=4, default_security_groups=("sg-1",)),
                       checkpoint_path=tmp_path / "ipam.json")
    return TaskNetworks(pool, wiring, host_eni_for=links)


async def test_a_restarted_agent_owns_the_links_of_the_enis_it_kept(tmp_path: Path) -> None:
    links = PluggedLinks()
    first = networks(tmp_path, links, RecordingWiring())
    await first.restore({})
    record: dict[str, Any] = {}
    await first.setup("t1", "/nonexistent", ["sg-1"], record, lambda: None)
    eni_id = record["lease"]["eni_id"]
    link = f"eth{first.pool.enis[eni_id].device_index}"
    all_enis = set(first.pool.enis)
    await first.close()

    wiring = RecordingWiring()
    links.missing = all_enis  # not plugged at the restart: nothing to own yet, and no waiting
    again = networks(tmp_path, links, wiring)
    await again.restore({"t1": record})
    assert wiring.owned == [] and again.owned.links == {}
    links.missing = set()  # the links are there: the next re-assertion owns (and watches) them
    assert await again.reassert_eni_tables() == {}
    assert wiring.owned.count(link) == 2  # owned, then re-asserted
    assert again.owned.links[link] == 9001
    await again.close()

    # And at restore when the links are already there (the usual restart).
    wiring = RecordingWiring()
    third = networks(tmp_path, links, wiring)
    await third.restore({"t1": record})
    assert wiring.owned.count(link) == 1 and third.owned.links[link] == 9001
    await third.close()


async def test_a_condemned_eni_is_not_owned(tmp_path: Path) -> None:
    links = PluggedLinks()
    nets = networks(tmp_path, links, RecordingWiring())
    await nets.restore({})
    record: dict[str, Any] = {}
    await nets.setup("t1", "/nonexistent", ["sg-1"], record, lambda: None)
    eni_id = record["lease"]["eni_id"]
    nets._eni_tables.clear()
    await nets.pool.condemn_eni(eni_id, "test")
    assert eni_id not in await nets.own_present_links()
    assert eni_id not in nets._eni_tables
    await nets.close()
