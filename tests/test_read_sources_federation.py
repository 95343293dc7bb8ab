"""The chunk-source conformance suite run by the federation's `SiteSource` and by a
memory tier over it, and damaged or lost copies at the nearest site: a registry and two
sites of one entity as real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.codec import chunk_id, decode_blob
from gfs.federation.client import FederationClient
from gfs.federation.inflight import DEFAULT_CHUNK, LEAST_CHUNKS, REQUEST_CHUNKS, RequestSizer
from gfs.federation.site_handlers import STREAM_IDS
from gfs.federation.source import SiteSource
from gfs.federation.testing import Federation
from gfs.read import MemoryTier
from gfs.testing import source_suite as suite

DATA = os.urandom(300_000)
PATH = "/lab/d/x.bin"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("fedsrc"), ttl=2.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("p1", "lab", "cn-west", primary=True)
        f.site("p2", "lab", "cn-east")
        with f.client("lab") as fc:
            fc.mkdir("/lab/d", parents=True, exist_ok=True)
            fc.write_bytes(PATH, DATA)
            fc.rule_add("/lab/d/**", 2, "region=cn-west | region=cn-east")
            [rule] = fc.reconcile("lab")
            assert rule["state"] == "ok"
        yield f
    finally:
        f.close()


def _chunks(fc: FederationClient, path: str = PATH, data: bytes = DATA) -> dict[bytes, bytes]:
    """The chunks of file `path` (content `data`) in file order, noted for the reader."""
    m = fc.manifest(path)
    fc.source.note(path, m.sites)
    out, pos = {}, 0
    for cid, n in m.chunks:
        out[cid] = data[pos:pos + n]
        pos += n
    assert all(chunk_id(v) == k for k, v in out.items())
    return out


@pytest.fixture(params=["site", "memory"])
def case(request: pytest.FixtureRequest, fed: Federation) -> Iterator[suite.SourceCase]:
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc)
        bottom = suite.CountingSource(SiteSource(fc))
        source = bottom if request.param == "site" else MemoryTier(bottom, 16 << 20)
        yield suite.SourceCase(source, chunks, bottom=bottom, path=PATH)


class TestSiteStacks(suite.SourceConformance):
    """The shared conformance tests, on every stack of this module."""


def test_single_flight_over_the_network(fed: Federation) -> None:
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc)
        bottom = suite.CountingSource(SiteSource(fc))
        suite.check_single_flight(suite.SourceCase(MemoryTier(bottom, 16 << 20), chunks,
                                                   bottom=bottom, path=PATH))


def test_chunk_answers_are_measured_and_loopback_asks_the_least_request(
        fed: Federation) -> None:
    """Every /v1/chunks/get answer feeds the client's link meter (time to first byte,
    bytes, chunks); on loopback the sized request is the least, REQUEST_CHUNKS."""
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc)
        assert fc.link.estimate() == (0.0, 0.0, DEFAULT_CHUNK)
        got = fc.source.get_many(list(chunks), path_of=lambda _: PATH)
        assert got == chunks
        rate, rtt, chunk = fc.link.estimate()
        assert rate > 0 and 0 < rtt < 1.0
        blobs = sum(len(fc.source.get_blob(c, path=PATH)) for c in chunks)
        assert 0 < chunk <= blobs // len(chunks) + 4096  # frames add a little
        sizer = RequestSizer(fc.link, requests=8, window=32 << 20)
        assert sizer() == REQUEST_CHUNKS and sizer.last_depth == 8 * LEAST_CHUNKS * chunk


def _damage_packs(fed: Federation, site: str, at: int) -> None:
    """Flip the byte at offset `at` of every pack in `site`'s default pool."""
    for p in (fed.sites[site]["state"] / "pools" / "default" / "packs").glob("??/*.pack"):
        b = bytearray(p.read_bytes())
        b[at] ^= 0xFF
        p.write_bytes(bytes(b))


def test_corrupt_copy_skipped_and_counted(fed: Federation, tmp_path: Path) -> None:
    """The nearest site's copy is damaged: the other site's copy is read and the bad
    one counted once; a second read is served by the memory tier."""
    _damage_packs(fed, "p1", -3)
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc)
        last = list(chunks)[-1]
        assert fc.cache.get(last, path=PATH) == chunks[last]
        assert fc.bad_copies == 1 and fc.chunks_from.get("p2") == 1
        assert fc.cache.get(last, path=PATH) == chunks[last]
        assert fc.bad_copies == 1 and fc.cache.stats().hits == 1
        assert fc.read_bytes(PATH) == DATA


def test_a_corrupt_copy_is_refused_where_blobs_are_kept(fed: Federation) -> None:
    """The blob path (what a disk tier keeps: verified, not decoded) refuses the nearest
    site's damaged copy too and hands out the other site's, which decodes to the chunk."""
    _damage_packs(fed, "p1", -7)
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc)
        last = list(chunks)[-1]
        blobs = fc.source.get_blob_many([last], path_of=lambda _: PATH)
        assert decode_blob(blobs[last], expect_id=last) == chunks[last]
        assert fc.bad_copies == 1 and fc.chunks_from.get("p2") == 1


# -- a chunk answer of many parts (its length announced) with copies that read otherwise --

def _write_replicated(fed: Federation, path: str, data: bytes) -> None:
    with fed.client("lab") as fc:
        fc.write_bytes(path, data)
        assert all(r["state"] == "ok" for r in fc.reconcile("lab"))


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
    """All chunks of `path` in one request per site (many parts); each as written."""
    assert len(chunks) > STREAM_IDS + 4
    assert fc.source.get_many(list(chunks), path_of=lambda _: path) == chunks


def test_a_damaged_copy_in_a_later_part_comes_from_the_other_replica(
        fed: Federation) -> None:
    """The nearest site's copy that ends its pack is cut short, its record unchanged:
    that chunk alone comes from the other site; the nearest serves the rest and stays
    usable (before: its whole answer was cut, and the site counted unavailable)."""
    data = os.urandom(2 << 20)
    _write_replicated(fed, "/lab/d/cut.bin", data)
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc, "/lab/d/cut.bin", data)
        ids = list(chunks)
        copies = _copies(fed, "p1", ids)
        bad = max(ids[STREAM_IDS:], key=lambda c: copies[c][1])
        pack, end = copies[bad]
        assert end == pack.stat().st_size and all(
            copies[c][1] < end for c in ids if c != bad and copies[c][0] == pack)
        os.truncate(pack, end - 10)
        _read_all(fc, "/lab/d/cut.bin", chunks)
        assert fc.chunks_from == {"p1": len(ids) - 1, "p2": 1}
        assert fc.site("p1").health().status == "ok"


def test_the_chunks_of_a_deleted_pack_come_from_the_other_replica(fed: Federation) -> None:
    """A file whose later chunks sit in their own pack (written after its first ones),
    deleted at the nearest site: those come from the other site, the rest from the
    nearest."""
    base = os.urandom(2 << 20)
    _write_replicated(fed, "/lab/d/base.bin", base)
    data = base + os.urandom(1 << 20)
    _write_replicated(fed, "/lab/d/grown.bin", data)
    with fed.client("lab", near="p1") as fc:
        chunks = _chunks(fc, "/lab/d/grown.bin", data)
        ids = list(chunks)
        copies = _copies(fed, "p1", ids)
        pack = copies[ids[-1]][0]
        lost = {c for c in ids if copies[c][0] == pack}
        assert lost and lost.isdisjoint(ids[:STREAM_IDS]) and len(lost) < len(ids) / 2
        pack.unlink()
        _read_all(fc, "/lab/d/grown.bin", chunks)
        assert fc.chunks_from == {"p1": len(ids) - len(lost), "p2": len(lost)}
