"""Sites and links from a real federation registry; measured links published back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import ConfigError, Dataflow, Topology
from dataflow.sites import Link, publish_links
from gfs.federation.testing import Federation, SiteDef, started


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    sites = [SiteDef("w1", "bank-a", "cn-west", True), SiteDef("w2", "bank-a", "cn-west"),
             SiteDef("e1", "telco-b", "cn-east", True)]
    with started(tmp_path_factory.mktemp("dffed"), sites, ttl=3.0, heartbeat=0.3) as f:
        yield f


def test_topology_from_registry_and_published_links(fed: Federation, tmp_path: Path) -> None:
    cfg = tmp_path / "sites.toml"
    cfg.write_text('[defaults]\ninter_price_per_gb = 0.07\n'
                   '[sites.w1]\nregion = "x"\nslots = 3\n')
    topo = Topology.from_registry(fed.registry_url, config=cfg, tls=fed.trust)
    assert {s: (x.region, x.entity, x.status) for s, x in topo.sites.items()} == {
        "w1": ("cn-west", "bank-a", "up"), "w2": ("cn-west", "bank-a", "up"),
        "e1": ("cn-east", "telco-b", "up")}
    assert topo.sites["w1"].slots == 3                    # from the sites file
    lk = topo.link("w1", "e1")
    assert lk.source == "default" and lk.price_per_gb == 0.07
    topo.set_measured(Link("w1", "e1", 5e6, 0.030, 0.07))
    topo.set_measured(Link("e1", "w1", 6e6, 0.030, 0.07))
    assert publish_links(topo, fed.registry_url, fed.keys("bank-a")) == 1  # only its own
    again = Topology.from_registry(fed.registry_url, config=cfg, tls=fed.trust)
    got = again.link("w1", "e1")
    assert got.source == "measured" and got.bandwidth == pytest.approx(5e6)
    assert got.rtt == pytest.approx(0.030) and got.price_per_gb == 0.07
    assert again.link("e1", "w1").source == "default"


def test_replicate_adds_a_federation_rule(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/ds", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/ds/x.bin", b"replicate me " * 50_000)
        topo = Topology.from_registry(fed.registry_url, tls=fed.trust)
        with Dataflow(topo, federation=fc, progress=False) as df:
            [rule] = df.replicate("/bank-a/ds/**", copies=2, where="region=cn-west",
                                  lifetime=3600)
        assert isinstance(rule, dict) and rule["copies"] == 2
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok" and sorted(r["sites"]) == ["w1", "w2"]
        with Dataflow(topo, federation=fc, progress=False) as df, \
                pytest.raises(ConfigError, match="copies"):
            df.replicate("/bank-a/ds/**", 0)


def test_granted_entries_get_dedup_credit() -> None:
    """Granted files (read by chunk through the owner's primary): chunks shared by two
    files are charged once, chunks the grantee's site holds not at all; only the
    grantee's sites run them."""
    from dataflow.cost import CostModel, Task
    from dataflow.datasets import FileEntry
    from dataflow.sites import Site
    from gfs.meta import ChunkRef, Manifest

    topo = Topology({"a1": Site("a1", "west", "bank-a"), "b1": Site("b1", "east", "lab-b")})
    topo.owners = {"bank-a": "entity=lab-b", "lab-b": "entity=lab-b"}
    topo.grants = {"bank-a": [("/bank-a/s/**", "lab-b")]}
    x, y, z = b"x" * 16, b"y" * 16, b"z" * 16
    m1 = Manifest(3, (ChunkRef(x, 1000), ChunkRef(y, 500)))
    m2 = Manifest(3, (ChunkRef(x, 1000), ChunkRef(z, 700)))
    f1 = FileEntry("/bank-a/s/a", m1, "a1", ("a1",), granted=True)
    f2 = FileEntry("/bank-a/s/b", m2, "a1", ("a1",), granted=True)
    where = {x: {"a1": "warm"}, y: {"a1": "warm", "b1": "warm"}, z: {"a1": "warm"}}
    model = CostModel(topo, where)
    tasks = [Task("t0", (f1,)), Task("t1", (f2,))]
    est = model.estimate({"t0": "b1", "t1": "b1"}, tasks)
    assert est.wan_bytes == 1700 and [(f.src, f.chunks) for f in est.flows] == [("a1", 2)]
    assert model.allowed_sites(tasks[0]) == ["b1"]
    other = FileEntry("/bank-a/x", m1, "a1", ("a1",), granted=True)
    assert "granted" in str(model.refusal(Task("t2", (other,)), "b1"))
