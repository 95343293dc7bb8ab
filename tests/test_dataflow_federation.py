"""Sites and links from a real federation registry; measured links published back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import Topology
from dataflow.sites import Link, publish_links
from gfs.federation.testing import Federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("dffed"), ttl=3.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("w1", "bank-a", "cn-west", primary=True, mover=False)
        f.site("e1", "telco-b", "cn-east", primary=True, mover=False)
        yield f
    finally:
        f.close()


def test_topology_from_registry_and_published_links(fed: Federation, tmp_path: Path) -> None:
    cfg = tmp_path / "sites.toml"
    cfg.write_text('[defaults]\ninter_price_per_gb = 0.07\n'
                   '[sites.w1]\nregion = "x"\nslots = 3\n')
    topo = Topology.from_registry(fed.registry_url, config=cfg)
    assert {s: (x.region, x.entity, x.status) for s, x in topo.sites.items()} == {
        "w1": ("cn-west", "bank-a", "up"), "e1": ("cn-east", "telco-b", "up")}
    assert topo.sites["w1"].slots == 3                    # from the sites file
    lk = topo.link("w1", "e1")
    assert lk.source == "default" and lk.price_per_gb == 0.07
    topo.set_measured(Link("w1", "e1", 5e6, 0.030, 0.07))
    topo.set_measured(Link("e1", "w1", 6e6, 0.030, 0.07))
    assert publish_links(topo, fed.registry_url, fed.keys("bank-a")) == 1  # only its own
    again = Topology.from_registry(fed.registry_url, config=cfg)
    got = again.link("w1", "e1")
    assert got.source == "measured" and got.bandwidth == pytest.approx(5e6)
    assert got.rtt == pytest.approx(0.030) and got.price_per_gb == 0.07
    assert again.link("e1", "w1").source == "default"
