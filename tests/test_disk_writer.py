"""Disk-tier admissions written by a background thread (gfs.disk_writer): readers stay
correct while it lags, a full queue is written by the caller, close writes what is
queued and never hangs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from gfs.codec import chunk_id, encode_blob
from gfs.disk_cache import DiskCache
from gfs.disk_writer import QueuedPuts
from gfs.read import DiskTier
from gfs.read.source import PathOf

WRITER = "hutong-disk-writer"


class GatedCache(DiskCache):
    """A disk cache whose writer thread's puts wait for `gate` (a lagging disk)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 64 << 20)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def put(self, cid: bytes, blob: bytes) -> bool:
        if threading.current_thread().name == WRITER:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().put(cid, blob)


class Blobs:
    """A remote-like source of stored blobs, counting how often each chunk is asked."""

    def __init__(self, raws: Iterable[bytes]) -> None:
        self.raw = {chunk_id(r): r for r in raws}
        self.blob = {c: b"".join(bytes(p) for p in encode_blob(r, cid=c))
                     for c, r in self.raw.items()}
        self.asked: dict[bytes, int] = dict.fromkeys(self.raw, 0)
        self._lock = threading.Lock()

    def _ask(self, cid: bytes) -> None:
        with self._lock:
            self.asked[cid] += 1

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        self._ask(cid)
        return self.raw[cid]

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        return {c: self.get(c) for c in cids}

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        self._ask(cid)
        return self.blob[cid]

    def worth_caching(self, cid: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def src() -> Blobs:
    return Blobs(os.urandom(50_000 + i) for i in range(12))


@pytest.fixture
def tier(tmp_path: Path, src: Blobs) -> Iterator[DiskTier]:
    t = DiskTier(src, GatedCache(tmp_path / "c"))
    yield t
    assert isinstance(t.disk, GatedCache)
    t.disk.gate.set()
    t.close()


def test_readers_see_right_bytes_while_the_writer_lags(tier: DiskTier, src: Blobs) -> None:
    assert isinstance(tier.disk, GatedCache)
    ids = list(src.raw)
    assert tier.get_many(ids) == src.raw  # returned at once: the writer holds the blobs
    assert tier.disk.entered.wait(30)
    assert tier.puts.pending() == len(ids) and tier.disk.missing(ids) == ids
    assert tier.missing(ids) == []  # queued: the tier has them, though not on disk yet
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(3):
                assert tier.get_many(ids) == src.raw
                assert all(tier.get(c) == src.raw[c] for c in ids)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert all(n == 1 for n in src.asked.values())  # found in the queue, never read again
    tier.disk.gate.set()
    assert tier.puts.flush(30)
    assert tier.disk.missing(ids) == []
    before = dict(src.asked)
    assert tier.get_many(ids) == src.raw and src.asked == before  # now from disk


def test_a_queued_chunk_is_read_from_the_queue_without_a_second_fetch(
        tier: DiskTier, src: Blobs) -> None:
    """The read paths a reader uses over a lagging writer (whole chunks into buffers,
    single gets, blobs) find queued chunks and ask the source nothing more."""
    assert isinstance(tier.disk, GatedCache)
    ids = list(src.raw)
    tier.get_many(ids)
    assert tier.disk.entered.wait(30)
    bufs = [bytearray(len(src.raw[c])) for c in ids]
    assert tier.read_into([(c, memoryview(b)) for c, b in zip(ids, bufs, strict=True)]) \
        == [True] * len(ids)
    assert [bytes(b) for b in bufs] == [src.raw[c] for c in ids]
    assert tier.get_blob(ids[-1]) == src.blob[ids[-1]]
    assert tier.get(ids[-1]) == src.raw[ids[-1]]
    wrong = bytearray(len(src.raw[ids[0]]) + 1)  # a view of the wrong size: not filled
    assert tier.read_into([(ids[0], memoryview(wrong))]) == [False]
    assert all(n == 1 for n in src.asked.values())
    tier.puts.put(ids[0], src.blob[ids[0]])  # queued already: kept once
    assert tier.puts.pending() == len(ids)


def test_a_full_queue_is_written_by_the_caller(tmp_path: Path, src: Blobs) -> None:
    disk = GatedCache(tmp_path / "c")
    first, second = list(src.blob)[:2]
    puts = QueuedPuts(disk, limit=len(src.blob[first]))
    try:
        puts.put(first, src.blob[first])
        assert disk.entered.wait(30)  # the writer holds the first, the queue is full
        puts.put(second, src.blob[second])
        assert puts.written_inline == 1 and disk.missing([first, second]) == [first]
        assert disk.get(second) == src.raw[second]
    finally:
        disk.gate.set()
        puts.close()
        disk.close()
    assert puts.pending() == 0


def test_close_writes_what_is_queued_and_later_puts_change_nothing(
        tmp_path: Path, src: Blobs) -> None:
    disk = GatedCache(tmp_path / "c")
    tier = DiskTier(src, disk)
    ids = list(src.raw)
    assert tier.get_many(ids) == src.raw
    assert disk.entered.wait(30)
    closer = threading.Thread(target=tier.close)
    closer.start()
    assert closer.is_alive()  # waits for the writer, which waits for the gate
    disk.gate.set()
    closer.join(30)
    assert not closer.is_alive()
    tier.puts.put(ids[0], src.blob[ids[0]])  # after close: written inline, refused
    again = DiskCache(tmp_path / "c", 64 << 20)
    try:
        assert again.missing(ids) == []
        assert all(again.get(c) == src.raw[c] for c in ids)
    finally:
        again.close()



def test_a_fetched_batch_is_queued_with_one_wake_of_the_writer(tmp_path: Path,
                                                                src: Blobs) -> None:
    """The chunks one fetch brought are queued under one lock with one wake of the
    writer, not one each (each wake cost the fetch thread a notify and a context
    switch per 64 KiB chunk)."""
    tier = DiskTier(src, DiskCache(tmp_path / "c", 64 << 20))
    wakes: list[int] = []

    class Counting(threading.Condition):
        def notify(self, n: int = 1) -> None:
            if threading.current_thread().name != WRITER:  # not its "queue empty"
                wakes.append(n)
            super().notify(n)

    tier.puts._cond = Counting()
    try:
        ids = list(src.raw)
        assert tier.get_many(ids) == src.raw
        assert tier.puts.flush(30)
        assert len(wakes) == 1
        assert tier.disk.missing(ids) == []
    finally:
        tier.close()


def test_a_batch_beyond_the_queue_is_written_by_the_caller_in_order(
        tmp_path: Path, src: Blobs) -> None:
    disk = GatedCache(tmp_path / "c")
    items = list(src.blob.items())[:4]
    puts = QueuedPuts(disk, limit=len(items[0][1]) + len(items[1][1]))
    try:
        disk.gate.set()  # the caller's own writes pass the gate (only the writer's wait)
        puts.put_many(items)
        assert puts.written_inline == 2
        assert disk.missing([c for c, _ in items[2:]]) == []
        assert all(puts.blob(c) is not None or disk.get(c) is not None for c, _ in items)
    finally:
        puts.close()
        disk.close()
    assert puts.pending() == 0
