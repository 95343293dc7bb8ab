"""Leases between entities at the registry (`/v1/leases`, `dataflow.leases.RegistryBoard`):
two entities' planners see each other's flows on links between them; an entity writes,
renews and deletes only its own leases (a real registry process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import Topology
from dataflow.catalog import EmbeddedCatalog
from dataflow.datasets import Stores
from dataflow.leases import Leases, RegistryBoard
from gfs import Client
from gfs.federation.auth import AuthError
from gfs.federation.http import ApiError, BadRequestError
from tests.test_registry import _client, _entity, _site, registry  # noqa: F401


def _leases(url: str) -> list[dict]:
    return list(_client(url).call("GET", "/v1/leases")["leases"])


def test_an_entity_writes_renews_and_deletes_only_its_own_leases(registry: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    _, ha = _entity(tmp_path, "bank-l", registry)
    _, hb = _entity(tmp_path, "telco-l", registry, "TEL")
    _site(ha, "la1", "bank-l", "cn-west", "hot", 10)
    _site(hb, "lb1", "telco-l", "cn-east", "hot", 10)
    body = {"driver": "h:1:x", "ttl": 30, "flows": [["lb1", "la1", 3, 3000]]}
    rec = ha.call("PUT", "/v1/leases/bank-l/j1", body)
    assert rec["entity"] == "bank-l" and rec["expires"] > time.time() + 20
    mine = [x for x in _leases(registry) if x["entity"] == "bank-l"]
    assert [(x["job"], x["flows"]) for x in mine] == [("j1", [["lb1", "la1", 3, 3000]])]

    def unchanged() -> None:
        assert [x for x in _leases(registry) if x["entity"] == "bank-l"] == mine
    # the other entity can neither overwrite nor delete bank-l's lease
    for call in (lambda: hb.call("PUT", "/v1/leases/bank-l/j1", {**body, "flows": []}),
                 lambda: hb.call("DELETE", "/v1/leases/bank-l/j1", {})):
        with pytest.raises(AuthError) as e:
            call()
        assert e.value.status in (401, 403)               # its key is not bank-l's
        unchanged()
    with pytest.raises(AuthError) as e:                    # unsigned
        _client(registry).call("PUT", "/v1/leases/bank-l/j2", body)
    assert e.value.status == 401
    bad = [{**body, "ttl": 1e6}, {**body, "flows": [["lb1", "nowhere", 1, 1]]},
           {**body, "flows": [["lb1", "la1", 1, -5]]}, {"ttl": 5, "flows": []}]
    for b in bad:
        with pytest.raises(BadRequestError):
            ha.call("PUT", "/v1/leases/bank-l/j2", b)
    with pytest.raises(BadRequestError, match="job id"):
        ha.call("PUT", "/v1/leases/bank-l/" + "x" * 65, body)
    unchanged()
    # renewal moves the expiry; the owner deletes it; a short lease expires by itself
    again = ha.call("PUT", "/v1/leases/bank-l/j1", body)
    assert again["expires"] >= rec["expires"]
    assert ha.call("DELETE", "/v1/leases/bank-l/j1", {}) == {"deleted": "j1"}
    with pytest.raises(ApiError) as e2:
        ha.call("DELETE", "/v1/leases/bank-l/j1", {})
    assert e2.value.status == 404
    ha.call("PUT", "/v1/leases/bank-l/j3", {**body, "ttl": 0.5})
    deadline = time.monotonic() + 20
    while any(x["job"] == "j3" for x in _leases(registry)):
        assert time.monotonic() < deadline, "the short lease never expired"
        time.sleep(0.05)


@pytest.fixture
def two_entities(registry: str, tmp_path: Path  # noqa: F811
                 ) -> Iterator[tuple[Topology, Topology, RegistryBoard, RegistryBoard]]:
    """Sites ma1, ma2 of bank-m and mb1 of telco-m; each entity's driver with its own
    store (catalog) and topology, both with the registry as board."""
    ka, _ = _entity(tmp_path, "bank-m", registry)
    kb, _ = _entity(tmp_path, "telco-m", registry, "TEL")
    ha, hb = _client(registry, ka), _client(registry, kb)
    for h, name, ent in ((ha, "ma1", "bank-m"), (ha, "ma2", "bank-m"),
                         (hb, "mb1", "telco-m")):
        _site(h, name, ent, "cn-west", "hot", 10)
    conf = {"sites": {"ma1": {"entity": "bank-m", "state": str(tmp_path / "ma1")},
                      "ma2": {"entity": "bank-m"},
                      "mb1": {"entity": "telco-m", "state": str(tmp_path / "mb1")}}}
    for s in ("ma1", "mb1"):
        Client.init(tmp_path / s).close()
    yield (Topology.from_config(conf), Topology.from_config(conf),
           RegistryBoard(ha, "bank-m"), RegistryBoard(hb, "telco-m"))


def test_planners_of_two_entities_see_each_others_flows_between_them(
        two_entities: tuple[Topology, Topology, RegistryBoard, RegistryBoard]) -> None:
    ta, tb, board_a, board_b = two_entities
    stores_a, stores_b = Stores(ta), Stores(tb)
    a = Leases(EmbeddedCatalog(stores_a, lambda: "ma1"), ta, ttl=30, board=board_a)
    b = Leases(EmbeddedCatalog(stores_b, lambda: "mb1"), tb, ttl=30, board=board_b)
    blind = Leases(EmbeddedCatalog(stores_b, lambda: "mb1"), Topology(dict(tb.sites)),
                   ttl=30)
    try:
        # bank-m's job pulls from telco-m's site (between entities) and inside bank-m
        ta.reserve("j1", [("mb1", "ma1", 3, 3_000_000), ("ma2", "ma1", 2, 2_000_000)])
        a.publish("j1")
        [seen] = b.refresh()
        assert seen.job == "bank-m/j1" and seen.flows == [("mb1", "ma1", 3, 3_000_000)]
        assert tb.pending("mb1", "ma1") == 3_000_000
        assert tb.pending("ma2", "ma1") == 0                # bank-m's own business
        assert tb.queue_seconds("mb1", "ma1", nbytes=1e6) > 0
        assert blind.refresh() == []                        # the catalogs are apart
        assert a.refresh() == []                            # not its own lease twice
        a.drop("j1")
        assert b.refresh() == [] and tb.pending("mb1", "ma1") == 0
    finally:
        for x in (a, b, blind):
            x.close()
        stores_a.close()
        stores_b.close()
