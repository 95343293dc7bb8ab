"""A put's read-ahead (gfs.put_reads): files read, cut and hashed in C batches on a
thread, in order, a bounded number of batches ahead; faults met at the file's turn."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import chunking
from gfs import client as client_mod
from gfs.client import Client
from gfs.put_reads import read_ahead


def _whole(path: str) -> tuple[bytes, list[int], bytes]:
    """(data, cuts, ids) of a file by the in-memory chunker: what a batch read gives."""
    data = Path(path).read_bytes()
    cuts = chunking.cut_points(data)
    return data, cuts, chunking.chunk_ids(data, cuts)


def test_load_chunked_many_matches_the_chunker_file_by_file(tmp_path: Path) -> None:
    """Each result is what the in-memory chunker makes of the file's bytes; an
    unreadable file gives its OSError (naming it) in its place, a file over the limit
    None, and the batch goes on after both."""
    files = []
    for k, size in enumerate([0, 1, 5000, 300_000, 70_000]):
        p = tmp_path / f"f{k}"
        p.write_bytes(bytes((i * 7 + k) % 251 for i in range(size)))
        files.append(str(p))
    missing = str(tmp_path / "gone")
    paths = [files[0], missing, *files[1:]]
    out = chunking.load_chunked_many(paths, limit=100_000)
    assert len(out) == len(paths)
    err = out[1]
    assert isinstance(err, FileNotFoundError)
    assert err.filename in (missing, missing.encode())
    assert out[4] is None  # 300,000 bytes > limit
    for p, got in zip(paths, out, strict=True):
        if p not in (missing, files[3]):
            assert got == _whole(p)


def test_load_chunked_many_reads_whole_only_within_its_budget(tmp_path: Path) -> None:
    """Files that grew after the walk sized the batch cannot make it hold more than
    `budget + limit`: once the batch has read `budget` bytes whole, the rest give None
    (streamed by the put, as a file over the limit is)."""
    paths = []
    for k in range(6):
        p = tmp_path / f"g{k}"
        p.write_bytes(bytes([k]) * 40_000)
        paths.append(str(p))
    out = chunking.load_chunked_many(paths, limit=100_000, budget=100_000)
    assert [o is not None for o in out] == [True, True, True, False, False, False]
    for p, got in zip(paths[:3], out[:3], strict=True):
        assert got == _whole(p)
    whole = chunking.load_chunked_many(paths, limit=100_000)  # no budget: all whole
    assert all(o is not None for o in whole)


def test_load_chunked_many_refuses_what_is_not_a_list_of_paths(tmp_path: Path) -> None:
    """A string is not read as a list of one-letter paths, and a path-like object that
    empties the list while the paths are converted cannot make the C code read past
    its end (it reads a copy)."""
    from gfs import _native

    with pytest.raises(TypeError, match="list or tuple"):
        _native.load_chunked_many("abc", 256, 1024, 4096, 1 << 20, 1 << 20)
    (tmp_path / "a").write_bytes(b"x" * 10)
    paths: list[object] = []

    class Shrinking:
        def __fspath__(self) -> str:
            paths.clear()
            return str(tmp_path / "a")

    paths += [Shrinking(), str(tmp_path / "a"), str(tmp_path / "a")]
    out = _native.load_chunked_many(paths, 256, 1024, 4096, 1 << 20, 1 << 20)
    assert len(out) == 3 and all(o is not None and o[0] == b"x" * 10 for o in out)


def _record(calls: list[list[str]], threads: set[str]):
    def read_many(paths: list[str]) -> list[str]:
        calls.append(list(paths))
        threads.add(threading.current_thread().name)
        return [p.upper() for p in paths]
    return read_many


def test_read_ahead_keeps_order_and_reads_batches_ahead_on_a_thread() -> None:
    """Every entry comes out once, in order, with its own read; the reads run on the
    read thread, `depth` batches ahead of the entry yielded and never more."""
    entries = [f"e{k}" if k % 3 else f"d{k}" for k in range(100)]  # d*: not read
    calls: list[list[str]] = []
    threads: set[str] = set()
    out = []
    gen = read_ahead(entries, lambda e: (e, 10) if e[0] == "e" else None,
                     _record(calls, threads), depth=2, batch_files=5)
    for k, item in enumerate(gen):
        out.append(item)
        if k == 0:  # the first batch is handed out once two more were asked for
            for _ in range(500):  # the read thread takes them in turn
                if len(calls) == 3:
                    break
                time.sleep(0.01)
            assert len(calls) == 3
        # never more than depth + 1 batches asked for beyond those handed out
        assert sum(len(c) for c in calls) <= sum(1 for _, r, _ in out if r) + 3 * 5
    assert [e for e, _, _ in out] == entries
    for e, read, got in out:
        assert read == (e[0] == "e")
        assert got == (e.upper() if read else None)
    assert all(len(c) <= 5 for c in calls)
    assert threads and threading.current_thread().name not in threads


def test_read_ahead_bounds_bytes_and_held_entries() -> None:
    """A batch closes at `batch_bytes` of wanted files and at `batch_entries` entries
    of any kind (a tree of directories alone is not held back whole)."""
    calls: list[list[str]] = []
    list(read_ahead([f"e{k}" for k in range(10)], lambda e: (e, 400), _record(calls, set()),
                    batch_bytes=1000))
    assert [len(c) for c in calls] == [3, 3, 3, 1]
    pulled = 0

    def walk():
        nonlocal pulled
        for k in range(10_000):
            pulled += 1
            yield k

    gen = read_ahead(walk(), lambda e: None, _record([], set()), depth=1, batch_entries=100)
    assert next(gen) == (0, False, None)
    assert pulled <= 2 * 100  # the walk is held back at most depth + 1 batches
    assert sum(1 for _ in gen) == 9_999


def test_a_failed_batch_is_raised_at_its_first_entry_and_close_stops_reading() -> None:
    """Entries before the failed batch come out; the error comes at its turn; closing
    the iterator early asks for no further batch."""
    calls: list[list[str]] = []

    def read_many(paths: list[str]) -> list[str]:
        calls.append(paths)
        if "e7" in paths:
            raise MemoryError("injected")
        return paths

    got = []
    with pytest.raises(MemoryError, match="injected"):
        for e, _, _ in read_ahead([f"e{k}" for k in range(20)], lambda e: (e, 1), read_many,
                                  depth=1, batch_files=4):
            got.append(e)
    assert got == [f"e{k}" for k in range(4)]
    calls.clear()
    gen = read_ahead([f"e{k}" for k in range(100)], lambda e: (e, 1), read_many, depth=2,
                     batch_files=4)
    next(gen)
    gen.close()
    assert len(calls) <= 3


def _tree(root: Path, n: int) -> dict[str, bytes]:
    out = {}
    for k in range(n):
        data = f"file {k} ".encode() * (k + 1)
        (root / f"f{k:03d}").write_bytes(data)
        out[f"f{k:03d}"] = data
    return out


def test_put_meets_a_read_fault_at_that_file_and_keeps_what_it_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the read thread cannot read fails the put at that file: the batches
    committed before it stay, in order and whole, the store checks clean, and putting
    again completes the tree."""
    src = tmp_path / "src"
    src.mkdir()
    want = _tree(src, 40)
    real = client_mod.read_many
    bad = str(src / "f025")

    def faulty(ps: list[str], params: chunking.ChunkParams, budget: int) -> list[object]:
        out: list[object] = list(real(ps, params, budget))
        return [FileNotFoundError(2, "injected", p) if p == bad else r
                for p, r in zip(ps, out, strict=True)]

    monkeypatch.setattr(client_mod, "read_many", faulty)
    monkeypatch.setattr("gfs.put_reads.READ_BATCH_FILES", 8)
    with Client.init(tmp_path / "s", commit_files=5) as fs:
        with pytest.raises(FileNotFoundError) as info:
            fs.put(src, "/dst")
        assert info.value.filename == bad
        names = sorted(e.name for e in fs.ls("/dst"))
        assert names == sorted(want)[:len(names)] and 20 <= len(names) <= 25
        for name in names:
            assert fs.read_bytes(f"/dst/{name}") == want[name]
        assert fs.fsck().ok
        monkeypatch.setattr(client_mod, "read_many", real)
        report = fs.put(src, "/dst")
        assert report.unchanged == len(names) and report.files == len(want) - len(names)
        for name, data in want.items():
            assert fs.read_bytes(f"/dst/{name}") == data
        assert fs.fsck().ok


def test_on_batch_sees_each_batch_before_its_first_entry() -> None:
    """`on_batch` gets each batch's reads, in order, before the batch's first entry is
    yielded (a batch with nothing read is not announced)."""
    events: list[object] = []
    entries = [f"e{k}" for k in range(10)]
    wanted = {"e0", "e1", "e2", "e6", "e7"}
    for entry, read, loaded in read_ahead(
            entries, lambda e: (e, 1) if e in wanted else None,
            lambda ps: [p.upper() for p in ps], batch_files=2, batch_entries=3,
            on_batch=lambda reads: events.append(list(reads))):
        events.append((entry, read, loaded))
    assert events == [["E0", "E1"], ("e0", True, "E0"), ("e1", True, "E1"),
                      ["E2"], ("e2", True, "E2"), ("e3", False, None), ("e4", False, None),
                      ["E6", "E7"], ("e5", False, None), ("e6", True, "E6"),
                      ("e7", True, "E7"), ("e8", False, None), ("e9", False, None)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=0), st.integers(0, 200_000)),
                max_size=6),
       st.integers(0, 40))
def test_read_pieces_are_the_prepared_chunks_of_at_least_least_bytes(
        files: list[int | bytes | None], pick: int) -> None:
    """`read_pieces(loads, least)`: exactly the (id, bytes) of `prepared_of` of each
    read file, in order, less the chunks under `least` bytes; `read_ids` all the ids.
    A file not read (None: streamed) or unreadable (an OSError) gives none."""
    from gfs.store import prepared_of, read_ids, read_pieces

    loads: list[tuple[bytes, list[int], bytes] | OSError | None] = [OSError("gone")]
    for k, f in enumerate(files):
        if f is None or isinstance(f, bytes):
            loads.append(None)
            continue
        data = bytes((i * 13 + k * 7 + (i >> 9)) % 251 for i in range(f))
        cuts = chunking.cut_points(data)
        loads.append((data, cuts, chunking.chunk_ids(data, cuts)))
    want = []
    for load in loads:
        prepared = prepared_of(load) if isinstance(load, tuple) else None
        if prepared is not None:
            want += [(r.id, bytes(p)) for r, p in zip(prepared.refs, prepared.pieces,
                                                      strict=True)]
    lengths = sorted({len(p) for _, p in want})
    # the least length: none, or one of the chunks' own (the edge), or past them all
    least = 0 if not pick else lengths[pick % len(lengths)] if lengths and pick < 35 \
        else 1 << 20
    assert [(cid, bytes(p)) for cid, p in read_pieces(loads, least)] == [
        (cid, p) for cid, p in want if len(p) >= least]
    assert read_ids(loads) == [cid for cid, _ in want]
