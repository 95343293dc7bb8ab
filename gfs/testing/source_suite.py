"""Conformance checks every chunk source and every wrapper stack passes (gfs.read).

Each check takes a `SourceCase`: the stack under test, the ids and raw bytes of
the chunks it serves, and hooks the backend provides (damage one copy of a
chunk that has a good copy elsewhere; damage every copy). Test modules build
cases for each implementation, subclass `SourceConformance` and call the
checks that need their hooks (tests/test_read_sources*.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gfs.codec import chunk_id, decode_blob
from gfs.errors import ChunkMissingError, CorruptChunkError
from gfs.read.source import ChunkSource, PathOf


class CountingSource:
    """Passes every call to `inner`, counting them; `gate` (if set) holds `get` and
    `get_many` until it is set, after `entered` is set."""

    def __init__(self, inner: ChunkSource) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def _enter(self, what: str, ids: tuple[bytes, ...]) -> None:
        with self._lock:
            self.calls.append((what, ids))
        self.entered.set()
        if self.gate is not None and not self.gate.wait(30):
            raise TimeoutError("CountingSource gate was never opened")

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        self._enter("get", (cid,))
        return self.inner.get(cid, path=path)

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        ids = tuple(cids)
        self._enter("get_many", ids)
        return self.inner.get_many(ids, path_of=path_of)

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        self._enter("get_blob", (cid,))
        return self.inner.get_blob(cid, path=path)

    def worth_caching(self, cid: bytes) -> bool:
        return self.inner.worth_caching(cid)

    def close(self) -> None:
        self.inner.close()

    def reads_of(self, cid: bytes) -> int:
        """How many calls asked for chunk `cid`."""
        with self._lock:
            return sum(1 for _, ids in self.calls if cid in ids)


@dataclass
class SourceCase:
    """A stack under test and what it serves."""

    source: ChunkSource
    chunks: dict[bytes, bytes]
    """Chunk id -> raw bytes, every one readable."""
    damage_one_copy: Callable[[bytes], None] | None = None
    """Corrupt one copy of a chunk that keeps a good copy elsewhere (None: one copy only)."""
    damage_all: Callable[[bytes], None] | None = None
    """Corrupt every copy of a chunk."""
    bottom: CountingSource | None = None
    """The counted source under the tiers (for single flight)."""
    path: str = "/f"
    """The file the chunks belong to (remote sources find their holders by it)."""


def check_verified_reads(case: SourceCase) -> None:
    """`get` and `get_blob` return bytes that match the chunk id."""
    for cid, raw in case.chunks.items():
        got = case.source.get(cid, path=case.path)
        assert got == raw and chunk_id(got) == cid
        assert decode_blob(case.source.get_blob(cid, path=case.path), expect_id=cid) == raw


def check_get_many_equals_get(case: SourceCase) -> None:
    """`get_many` of every chunk (twice over, with duplicates) equals `get` of each."""
    ids = list(case.chunks)
    many = case.source.get_many(ids + ids[::2], path_of=lambda _: case.path)
    assert set(many) == set(ids)
    assert all(many[cid] == case.source.get(cid, path=case.path) for cid in ids)


def check_missing_chunk_named(case: SourceCase) -> None:
    """A chunk no copy holds raises ChunkMissingError naming the file."""
    ghost = chunk_id(b"no such chunk " + time.time_ns().to_bytes(8, "big"))
    for call in (lambda: case.source.get(ghost, path="/data/x.bin"),
                 lambda: case.source.get_many([*list(case.chunks)[:1], ghost],
                                              path_of=lambda _: "/data/x.bin")):
        try:
            call()
        except ChunkMissingError as e:
            assert e.filename == "/data/x.bin" and ghost.hex() in str(e)
        else:
            raise AssertionError("a missing chunk was not reported")


def check_corrupt_copy_skipped(case: SourceCase, reports: Callable[[bytes], int]) -> None:
    """A corrupt copy is skipped (the good one is served) and reported exactly once;
    `reports(cid)` counts the reports naming chunk `cid` so far."""
    assert case.damage_one_copy is not None
    cid, raw = next(iter(case.chunks.items()))
    case.damage_one_copy(cid)
    before = reports(cid)
    assert case.source.get(cid, path=case.path) == raw
    assert case.source.get(cid, path=case.path) == raw
    assert reports(cid) - before in (0, 1)  # 0 when a cache tier held it already


def check_all_copies_corrupt(case: SourceCase, cid: bytes) -> None:
    """A chunk whose every copy is damaged raises CorruptChunkError naming the file."""
    assert case.damage_all is not None
    case.damage_all(cid)
    try:
        case.source.get(cid, path="/bad/file")
    except CorruptChunkError as e:
        assert e.filename == "/bad/file"
    else:
        raise AssertionError("a chunk without a valid copy was served")


def check_single_flight(case: SourceCase, threads: int = 8) -> None:
    """Concurrent `get`s of one chunk cause one read below the tiers."""
    bottom = case.bottom
    assert bottom is not None
    cid, raw = next(iter(case.chunks.items()))
    bottom.gate = threading.Event()
    bottom.entered.clear()
    try:
        with ThreadPoolExecutor(threads) as pool:
            futs = [pool.submit(case.source.get, cid, path=case.path) for _ in range(threads)]
            assert bottom.entered.wait(30), "no read reached the source"
            deadline = time.monotonic() + 30
            stats = getattr(case.source, "stats", None)
            while callable(stats) and stats().misses < threads:  # every thread has asked
                assert time.monotonic() < deadline, "threads never asked"
                time.sleep(0.001)
            bottom.gate.set()
            assert all(f.result(timeout=30) == raw for f in futs)
    finally:
        bottom.gate.set()
        bottom.gate = None
    assert bottom.reads_of(cid) == 1, bottom.calls


class SourceConformance:
    """Tests every chunk source runs: subclass it in a test module that defines a
    `case` fixture yielding a `SourceCase` (as fsspec's abstract test classes)."""

    def test_verified_reads(self, case: SourceCase) -> None:
        check_verified_reads(case)

    def test_get_many_equals_get(self, case: SourceCase) -> None:
        check_get_many_equals_get(case)

    def test_missing_chunk_is_named(self, case: SourceCase) -> None:
        check_missing_chunk_named(case)


__all__ = [
    "CountingSource",
    "SourceCase",
    "SourceConformance",
    "check_all_copies_corrupt",
    "check_corrupt_copy_skipped",
    "check_get_many_equals_get",
    "check_missing_chunk_named",
    "check_single_flight",
    "check_verified_reads",
]
