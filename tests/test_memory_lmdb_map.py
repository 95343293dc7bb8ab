"""The LMDB map's resident part stays bounded inside one long write transaction.

A put records each pack's chunks in one transaction: thousands of B-tree writes
at random keys, each faulting in map pages (and, by the kernel's fault-around,
their cached neighbours). The map trimmer must count those writes, not only
lookups, or the whole metadata file becomes resident between two trims.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import gfs.meta.residency as residency
from gfs.meta import LmdbEngine
from gfs.meta.records import ChunkRecord, Location

MIB = 1 << 20


def _map_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mapping of `path` (/proc/self/smaps)."""
    real, inside, rss = str(path.resolve()), False, 0
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):
                inside = line.rstrip("\n").endswith(real)
            elif inside and first == "Rss:":
                rss += int(line.split()[1])
    return rss


def _chunk(i: int) -> ChunkRecord:
    cid = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()
    return ChunkRecord(cid, 200, 200, 0, 1, (Location(1, b"p" * 16, i * 200, 200),))


def _engine_with_chunks(tmp_path: Path, n: int) -> LmdbEngine:
    """An engine in `tmp_path`/meta holding the records of chunks 0 to n - 1."""
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    try:
        with eng.write() as w:
            for i in range(n):
                w.put_chunk(_chunk(i))
    except BaseException:
        eng.close()
        raise
    return eng


def _chunk_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LmdbEngine:
    """An engine at tmp_path/meta holding a chunk table of about 30 MiB (150,000
    records), its map trimmed every 64 ticks and never by the clock."""
    monkeypatch.setattr(residency, "TRIM_TICKS", 64)  # at most ~64 * 64 KiB between trims
    monkeypatch.setattr(residency, "TRIM_INTERVAL", 3600.0)  # only the ticks trim
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    for start in range(0, 150_000, 25_000):
        with eng.write() as w:
            for i in range(start, start + 25_000):
                w.put_chunk(_chunk(i))
    assert (tmp_path / "meta" / "data.mdb").stat().st_size > 24 * MIB
    return eng


def test_writes_in_one_transaction_keep_the_map_trimmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _chunk_table(tmp_path, monkeypatch)
    try:
        data = tmp_path / "meta" / "data.mdb"
        with eng.write() as w:  # one pack's worth of new chunks at random keys
            for i in range(150_000, 155_000):
                w.put_chunk(_chunk(i))
            resident = _map_rss_kib(data)
        # measured: 28 MiB resident when only lookups counted, about 2 MiB now
        assert resident < 8 * 1024, resident
    finally:
        eng.close()


def test_ticks_read_the_clock_rarely_and_a_small_map_is_left_resident(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick (one per lookup or write) reads the clock once every 8 ticks, and a
    metadata file no larger than the bound the trims keep (TRIM_BYTES)
    is not trimmed: a trim would only fault its pages in again (a put of 7,000 small
    files trimmed its 1 MB map 100 times)."""
    clock = [0.0]
    reads: list[float] = []

    class Clock:
        @staticmethod
        def monotonic() -> float:
            reads.append(clock[0])
            return clock[0]

    monkeypatch.setattr(residency, "time", Clock)
    eng = _engine_with_chunks(tmp_path, 200)
    try:
        trimmer = eng._dbs.trimmer
        before, trims = len(reads), trimmer.trims
        for _ in range(160):
            trimmer.tick()
        assert len(reads) - before <= 160 // (residency._CHECK_TICKS + 1) + 1
        clock[0] += 2 * residency.TRIM_INTERVAL  # due by the clock, and by count
        for _ in range(2 * residency.TRIM_TICKS):
            trimmer.tick()
        assert trimmer.trims == trims  # a small file: never trimmed
    finally:
        eng.close()


def test_a_batch_of_chunk_lookups_keeps_the_map_trimmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """present_chunks and add_refcounts look ids up in parts with a tick before each,
    so the map is trimmed between parts (one tick for a whole batch let a put's 2,048
    lookups fault their pages in: put's peak RSS at 10^6 files doubled)."""
    eng = _chunk_table(tmp_path, monkeypatch)
    try:
        data = tmp_path / "meta" / "data.mdb"
        ids = [_chunk(i).id for i in range(0, 150_000, 15)]  # 10,000 across the table
        with eng.read() as r:
            r._d.trimmer.trim()  # type: ignore[attr-defined]  # start from nothing
            assert r.present_chunks(ids) == set(ids)
            resident = _map_rss_kib(data)
        assert resident < 8 * 1024, resident
        with eng.write() as w:
            w._d.trimmer.trim()  # type: ignore[attr-defined]
            w.add_refcounts({cid: 1 for cid in ids})
            resident = _map_rss_kib(data)
        assert resident < 8 * 1024, resident
    finally:
        eng.close()


def test_mapped_bytes_trim_the_map_whatever_the_ticks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault maps a whole large folio of the page cache (up to MiBs), so the trimmer
    also trims once TRIM_BYTES of file pages were mapped since the last trim: with
    neither the tick count nor the clock ever due, random lookups over a 30 MiB table
    keep little more than TRIM_BYTES of it resident (without: 14 MiB after 20,000)."""
    eng = _chunk_table(tmp_path, monkeypatch)
    monkeypatch.setattr(residency, "TRIM_TICKS", 1 << 40)
    try:
        data, most = tmp_path / "meta" / "data.mdb", 0
        order = sorted(range(150_000), key=lambda i: hashlib.blake2b(
            i.to_bytes(8, "little"), digest_size=8).digest()[::-1])
        with eng.read() as r:
            trims = eng._dbs.trimmer.trims
            for k, i in enumerate(order[:40_000]):
                assert r.get_chunk(_chunk(i).id) is not None
                if k % 1000 == 0:
                    most = max(most, _map_rss_kib(data))
        assert eng._dbs.trimmer.trims > trims
        assert most < 1.5 * residency.TRIM_BYTES / 1024, most
    finally:
        eng.close()


def test_batched_lookups_check_the_mapped_bytes_every_few_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batched read or write (present_chunks, get_values, add_refcounts) ticks once per
    part of `residency.PART` keys, and the trimmer reads the mapped bytes whenever the
    ticks pass a multiple of 8, however many came at once. So no more than PART keys are
    looked up between two reads of the mapped bytes (with parts of 128 and the count
    read only when it stood on a multiple of 8, a put of 10^6 files held 22 MiB of the
    map against TRIM_BYTES of 8)."""
    monkeypatch.setattr(residency, "TRIM_TICKS", 1 << 40)  # only the mapped bytes trim
    monkeypatch.setattr(residency, "TRIM_INTERVAL", 3600.0)
    eng = _engine_with_chunks(tmp_path, 3_000)
    try:
        # a file larger than the bound (a small one's mapped bytes are never read)
        monkeypatch.setattr(residency, "TRIM_BYTES", eng._dbs.trimmer._used() // 2)
        eng._dbs.trimmer.trim()  # a trim notes the file's size
        since_check, most = [0], [0]
        real_pages = residency.file_pages

        def pages() -> int:
            most[0] = max(most[0], since_check[0])
            since_check[0] = 0
            return real_pages()

        monkeypatch.setattr(residency, "file_pages", pages)
        real_tick = residency.MapTrimmer.tick

        def tick(self: residency.MapTrimmer, n: int = 1) -> None:  # counts what was
            real_tick(self, n)  # looked up since the last tick
            since_check[0] += n

        monkeypatch.setattr(residency.MapTrimmer, "tick", tick)
        eng._dbs.trimmer.tick(3)  # the count off a multiple of 8, as single lookups leave it
        ids = [_chunk(i).id for i in range(0, 3_000, 2)]
        with eng.read() as r:
            assert r.present_chunks(ids) == set(ids)
            assert r.get_values("heat", ids) == {}
        with eng.write() as w:
            w.add_refcounts({cid: 1 for cid in ids})
        assert 0 < most[0] <= 2 * residency.PART <= 64, most[0]
    finally:
        eng.close()


def test_a_file_within_the_bound_never_reads_the_mapped_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the metadata file is no larger than TRIM_BYTES its map cannot pass the
    bound, so ticks do not read /proc/self/statm (it waits on the address space's lock
    the compression workers' allocations hold: 0.15 s of a put's main thread over
    7,000 files, measured); once a trim finds the file larger, they do."""
    monkeypatch.setattr(residency, "TRIM_INTERVAL", 3600.0)
    reads = [0]
    real_pages = residency.file_pages

    def pages() -> int:
        reads[0] += 1
        return real_pages()

    eng = _engine_with_chunks(tmp_path, 3_000)
    try:
        trimmer = eng._dbs.trimmer
        assert trimmer._used() <= residency.TRIM_BYTES
        monkeypatch.setattr(residency, "file_pages", pages)
        ids = [_chunk(i).id for i in range(3_000)]
        with eng.read() as r:
            for cid in ids[:100]:
                assert r.present_chunks([cid]) == {cid}
            assert r.present_chunks(ids) == set(ids)
        assert reads[0] == 0, reads[0]
        monkeypatch.setattr(residency, "TRIM_BYTES", trimmer._used() // 2)
        before = reads[0]
        for _ in range(residency.TRIM_TICKS):  # the next trim by count finds the file
            trimmer.tick()  # larger than the bound
        assert reads[0] > before  # the floor, and the checks after it
        with eng.read() as r:
            assert r.present_chunks(ids) == set(ids)
        assert reads[0] - before >= 3_000 // residency.PART // (residency._CHECK_TICKS + 1) - 1
    finally:
        eng.close()
