"""fsck names a damaged `deltas` entry or heat record, on both engines.

gc releases a delta's base through the chunk's `deltas` entry, so an entry that is
missing, cut, or names the wrong chunk would let gc keep a base for ever or delete
one still needed; the tierer decodes every heat record. Each damage below is
written straight into the metadata, and fsck must name the record, not only the
reference count that follows from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gfs import delta
from gfs.client import Client
from gfs.codec import BASED_CODECS
from gfs.errors import MetadataDamagedError
from gfs.meta import WriteTxn
from gfs.packs import pack_key
from gfs.testing.faults import flip_byte
from gfs.tiering import heat
from tests.similar_data import two_versions


@pytest.fixture(params=["lmdb", "postgresql"])
def dfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """A delta store holding two similar versions (some chunks stored as deltas)."""
    meta = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    kw = {"meta": meta} if meta else {}
    fs = Client.init(tmp_path / "s", pack_size=1 << 20, workers=2, delta=True, **kw)
    try:
        two_versions(fs, 6, 600_000, 20)
        yield fs
    finally:
        fs.close()


def _a_delta(fs: Client) -> tuple[bytes, bytes]:
    with fs.engine.read() as txn:
        cid, base = next(iter(txn.iter_values(delta.DELTAS)))
        rec = txn.get_chunk(cid)
    assert rec is not None and rec.codec in BASED_CODECS
    return cid, base


def _a_whole_chunk(fs: Client) -> bytes:
    with fs.engine.read() as txn:
        based = dict(txn.iter_values(delta.DELTAS))
        return next(r.id for r in txn.iter_chunks() if r.id not in based and r.locations)


def _damage(fs: Client, change: Callable[[WriteTxn], None]) -> list[str]:
    assert fs.fsck().ok
    fs.engine.transact(change)
    report = fs.fsck()
    assert not report.ok
    return report.problems


def test_a_healthy_delta_store_has_no_deltas_problem(dfs: Client) -> None:
    report = dfs.fsck()
    assert report.ok, report.problems
    with dfs.engine.read() as txn:
        assert sum(1 for _ in txn.iter_values(delta.DELTAS)) > 0


def test_a_cut_entry_is_named(dfs: Client) -> None:
    cid, base = _a_delta(dfs)
    problems = _damage(dfs, lambda t: t.put_value(delta.DELTAS, cid, base[:-1]))
    assert f"deltas entry of chunk {cid.hex()} is damaged: 15 bytes, a chunk id has 16" \
        in problems


def test_an_entry_naming_an_unknown_base_is_named(dfs: Client) -> None:
    cid, _ = _a_delta(dfs)
    ghost = bytes(range(16))
    problems = _damage(dfs, lambda t: t.put_value(delta.DELTAS, cid, ghost))
    assert f"deltas entry of chunk {cid.hex()} names base {ghost.hex()}, which is not in " \
        f"the index" in problems


def test_an_entry_naming_its_own_chunk_is_named(dfs: Client) -> None:
    cid, _ = _a_delta(dfs)
    problems = _damage(dfs, lambda t: t.put_value(delta.DELTAS, cid, cid))
    assert f"deltas entry of chunk {cid.hex()} names the chunk itself as its base" in problems


def test_a_delta_without_its_entry_is_named(dfs: Client) -> None:
    cid, _ = _a_delta(dfs)
    problems = _damage(dfs, lambda t: t.delete_value(delta.DELTAS, cid))
    assert f"chunk {cid.hex()} is stored against a base but the deltas table has no " \
        f"entry for it" in problems


def test_an_entry_of_a_whole_chunk_or_of_no_chunk_is_named(dfs: Client) -> None:
    whole = _a_whole_chunk(dfs)
    _, base = _a_delta(dfs)
    ghost = bytes(16)

    def add(t: WriteTxn) -> None:
        t.put_value(delta.DELTAS, whole, base)
        t.put_value(delta.DELTAS, ghost, base)

    problems = _damage(dfs, add)
    assert f"deltas entry of chunk {whole.hex()}, which is not stored against a base" \
        in problems
    assert f"deltas entry of chunk {ghost.hex()}, which is not in the index" in problems


def test_a_damaged_heat_record_is_named(dfs: Client) -> None:
    cid = _a_whole_chunk(dfs)
    good = heat.encode(heat.Heat(1.0, 1, 1))
    dfs.engine.transact(lambda t: t.put_value("heat", heat.CHUNK_PREFIX + cid, good))
    problems = _damage(dfs, lambda t: t.put_value("heat", heat.CHUNK_PREFIX + cid, good[:7]))
    assert problems == [f"heat record of chunk {cid.hex()} is damaged: 7 bytes, not "
                        f"{heat.VALUE_LEN}"]
    with dfs.engine.read() as txn, pytest.raises(MetadataDamagedError, match="hutong fsck"):
        list(heat.iter_chunk_heat(txn))


def test_a_flush_over_a_damaged_heat_record_counts_afresh(dfs: Client) -> None:
    """Heat is a hint: a damaged record must not stop the store from closing."""
    cid = _a_whole_chunk(dfs)
    dfs.engine.transact(lambda t: t.put_value("heat", heat.CHUNK_PREFIX + cid, b"short"))
    tracker = heat.HeatTracker(dfs.engine, half_life=3600.0)
    tracker.record([cid, cid])
    tracker.flush()
    with dfs.engine.read() as txn:
        h = heat.chunk_heat(txn, cid)
    assert h is not None and h.reads == 2
    assert dfs.fsck().ok


def test_a_lost_delta_healed_whole_leaves_no_entry_and_frees_its_base(
        tmp_path: Path) -> None:
    """fsck --repair marks a damaged delta lost; putting its bytes again stores it
    whole: its `deltas` entry and its reference on the base must go (they stayed:
    fsck then failed for ever, and the base stayed pinned)."""
    fs = Client.init(tmp_path / "s", pack_size=1 << 20, workers=2, delta=True)
    try:
        _, b = two_versions(fs, 6, 600_000, 20)
        cid, base = _a_delta(fs)
        with fs.engine.read() as txn:
            rec, before = txn.get_chunk(cid), txn.get_chunk(base)
        assert rec is not None and before is not None
        loc = rec.locations[0]
        # a byte of the zstd frame near its end (not of the base id in front of it)
        flip_byte(fs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length - 3)
        assert fs.repair().lost == [cid.hex()]
        with fs.engine.read() as txn:
            lost = txn.get_chunk(cid)
        assert lost is not None and not lost.locations  # marked lost, entry kept
        report = fs.fsck()
        assert not any("deltas entry" in p for p in report.problems), report.problems
        fs.write_bytes("/again", b)  # the lost chunk's bytes, put again: healed whole
        with fs.engine.read() as txn:
            healed, after = txn.get_chunk(cid), txn.get_chunk(base)
            assert txn.get_value(delta.DELTAS, cid) is None
        assert healed is not None and healed.locations and healed.codec not in BASED_CODECS
        assert after is not None and after.refcount == before.refcount - 1
        assert fs.fsck().ok
        assert fs.read_bytes("/again") == b
    finally:
        fs.close()
