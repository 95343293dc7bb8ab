"""Several site daemons of one entity on one PostgreSQL database serve one namespace:
no single primary process holds the metadata. Real site processes on loopback, a
real PostgreSQL server, a pool directory both sites reach."""

from __future__ import annotations

from pathlib import Path

from gfs import Client
from gfs.federation.testing import Federation
from gfs.tiering.policy import TierPolicy


def _seed(state: Path, meta: str, shared: Path) -> None:
    """The entity's store on `meta`, writing to `shared`, which every site reaches."""
    with Client.init(state, meta=meta) as fs:
        fs.add_pool("shared", str(shared), tier="hot")
        with fs.engine.write() as txn:
            TierPolicy(write_tier="hot").save(txn)


def test_two_sites_of_one_entity_serve_one_namespace(tmp_path: Path, pg_url: str) -> None:
    _seed(tmp_path / "seed", pg_url, tmp_path / "shared")
    with Federation(tmp_path / "fed", heartbeat=0.5) as fed:
        fed.registry()
        fed.site("m1", "bank-m", "cn-west", primary=True, meta=pg_url)
        fed.site("m2", "bank-m", "cn-west", primary=True, meta=pg_url)
        with fed.client("bank-m") as fc:
            one, two = fc.site("m1"), fc.site("m2")
            body = bytes(range(256)) * 300
            one.mkdir("/bank-m/d")
            one.write("/bank-m/d/f", body)
            assert two.read("/bank-m/d/f") == body  # written at m1, read at m2
            assert [s.path for s in two.ls("/bank-m/d")] == ["/bank-m/d/f"]
            two.write("/bank-m/d/g", b"from m2")
            two.rename("/bank-m/d/f", "/bank-m/d/h")
            assert one.read("/bank-m/d/g") == b"from m2"
            assert sorted(s.path for s in one.ls("/bank-m/d")) == ["/bank-m/d/g",
                                                                   "/bank-m/d/h"]
            fed.kill("m1")  # one daemon gone: the other still serves everything
            assert two.read("/bank-m/d/h") == body
    with Client(tmp_path / "seed") as fs:
        assert fs.read_bytes("/bank-m/d/h") == body
        assert fs.read_bytes("/bank-m/d/g") == b"from m2"
        report = fs.fsck()
        assert report.ok, report.problems
