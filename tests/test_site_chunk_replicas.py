"""A chunk answer of many parts (more than site_handlers.STREAM_IDS chunks, its length
announced) from a site whose copy of some chunks is damaged or gone costs those chunks
only: the reader takes the others from that site and those from the other replica, and
the site stays usable. A registry and two sites of one entity as real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.federation.client import FederationClient
from gfs.federation.site_handlers import STREAM_IDS
from gfs.federation.testing import Federation

BASE = os.urandom(2 << 20)
"""~32 chunks (64 KiB average): one request of many parts."""
GROWN = BASE + os.urandom(1 << 20)
"""BASE's chunks (in BASE's pack) and ~16 more, written later into another pack."""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("fedrep"), ttl=2.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("p1", "lab", "cn-west", primary=True)
        f.site("p2", "lab", "cn-east")
        with f.client("lab") as fc:
            fc.mkdir("/lab/d", parents=True, exist_ok=True)
            fc.write_bytes("/lab/d/base", BASE)
            fc.write_bytes("/lab/d/grown", GROWN)
            fc.rule_add("/lab/d/**", 2, "region=cn-west | region=cn-east")
            [rule] = fc.reconcile("lab")
            assert rule["state"] == "ok"
        yield f
    finally:
        f.close()


def _chunks(fc: FederationClient, path: str, data: bytes) -> dict[bytes, bytes]:
    """The chunks of file `path` (content `data`) in file order, noted for the reader."""
    m = fc.manifest(path)
    fc.source.note(path, m.sites)
    out, pos = {}, 0
    for cid, n in m.chunks:
        out[cid] = data[pos:pos + n]
        pos += n
    assert len(out) > STREAM_IDS + 4
    return out


def _copies(fed: Federation, site: str, cids: list[bytes]) -> dict[bytes, tuple[Path, int]]:
    """Each chunk's first copy at `site`: its pack file and where the copy ends."""
    state = Path(fed.sites[site]["state"])
    with Client(state) as local, local.engine.read() as txn:
        recs = {c: txn.get_chunk(c) for c in cids}
    packs = {p.stem: p for p in (state / "pools").rglob("*.pack")}
    out = {}
    for c, rec in recs.items():
        assert rec is not None
        loc = rec.locations[0]
        out[c] = (packs[loc.pack.hex()], loc.offset + loc.length)
    return out


def _read_all(fc: FederationClient, path: str, chunks: dict[bytes, bytes]) -> None:
    """All chunks of `path` in one request per site; each as written."""
    got = fc.source.get_many(list(chunks), path_of=lambda _: path)
    assert got == chunks


def test_a_damaged_copy_comes_from_the_other_replica(fed: Federation) -> None:
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc, "/lab/d/base", BASE)
        ids = list(chunks)
        copies = _copies(fed, "p1", ids)
        # the copy that ends its pack, in a later part than the first, is cut short
        bad = max(ids[STREAM_IDS:], key=lambda c: copies[c][1])
        pack, end = copies[bad]
        assert end == pack.stat().st_size and all(
            copies[c][1] < end for c in ids if c != bad and copies[c][0] == pack)
        os.truncate(pack, end - 10)
        _read_all(fc, "/lab/d/base", chunks)
        assert fc.chunks_from == {"p1": len(ids) - 1, "p2": 1}
        assert fc.site("p1").health().status == "ok"


def test_the_chunks_of_a_deleted_pack_come_from_the_other_replica(fed: Federation) -> None:
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc, "/lab/d/grown", GROWN)
        ids = list(chunks)
        copies = _copies(fed, "p1", ids)
        pack = copies[ids[-1]][0]  # the pack of the chunks written after BASE's
        lost = {c for c in ids if copies[c][0] == pack}
        assert lost and lost.isdisjoint(ids[:STREAM_IDS]) and len(lost) < len(ids) / 2
        cut = {c for c, (p, end) in copies.items() if end > p.stat().st_size}  # if shared
        pack.unlink()
        _read_all(fc, "/lab/d/grown", chunks)
        assert fc.chunks_from == {"p1": len(ids) - len(lost | cut), "p2": len(lost | cut)}
