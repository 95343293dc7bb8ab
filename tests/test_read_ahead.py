"""A put reads its next small files ahead, in batches, on a reader thread: the native
batch call on its own (errors in the middle of a batch included), the read-ahead's
order and bounds, and puts that come out as before (real LMDB, real pools)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gfs import chunking, read_ahead
from gfs import client as client_mod
from gfs.client import Client
from gfs.store import Prepared, prepare

PARAMS = chunking.ChunkParams(min_size=1024, avg_size=4096, max_size=16384)


def _files(root: Path, sizes: list[int]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(sizes):
        p = root / f"f{i:03d}"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


def test_the_batch_call_equals_one_call_a_file_and_keeps_errors_in_their_slots(
        tmp_path: Path) -> None:
    ok = _files(tmp_path / "d", [0, 1, 5000, 70_000, 300_000])
    big = _files(tmp_path / "big", [40_000])[0]
    paths = [str(ok[0]), str(tmp_path / "missing"), str(ok[1]), str(tmp_path / "d"),
             str(ok[2]), str(big), str(ok[3]), str(ok[4])]
    got = chunking.load_chunked_many(paths, PARAMS, limit=400_000 - 1)
    assert len(got) == len(paths)
    missing, a_dir = got[1], got[3]
    assert isinstance(missing, FileNotFoundError) and missing.filename == paths[1]
    assert isinstance(a_dir, IsADirectoryError) and a_dir.filename == paths[3]
    for i in (0, 2, 4, 5, 6, 7):
        assert got[i] == chunking.load_chunked(paths[i], PARAMS, 400_000 - 1), paths[i]
        item = got[i]
        assert isinstance(item, tuple) and item[0] == Path(paths[i]).read_bytes()
    small = chunking.load_chunked_many([str(big), str(ok[1])], PARAMS, limit=10)
    assert small[0] is None and small[1] == (ok[1].read_bytes(), [1], small[1][2])  # type: ignore[index]
    assert chunking.load_chunked_many([], PARAMS) == []
    with pytest.raises(TypeError):
        chunking.load_chunked_many([str(ok[0]), 5], PARAMS)  # type: ignore[list-item]


def test_the_batch_call_lets_other_threads_run(tmp_path: Path) -> None:
    """The GIL is released while the batch reads: with a long switch interval a spinning
    thread runs during the call only if the call lets it (a one-file call of a small
    file, which keeps the GIL, shows that the probe can tell)."""
    import sys

    paths = [str(p) for p in _files(tmp_path / "d", [20_000] * 64)]
    ticks = 0
    stop = threading.Event()
    running = threading.Event()

    def spin() -> None:
        nonlocal ticks
        running.set()
        while not stop.is_set():
            ticks += 1

    saved = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    t = threading.Thread(target=spin)
    t.start()
    try:
        running.wait()
        during_one = ticks
        for p in paths[:16]:
            chunking.load_chunked(p, PARAMS)
        during_one = ticks - during_one
        during_many = 0
        for _ in range(200):  # the spinner may miss one short release; not all of them
            before = ticks
            chunking.load_chunked_many(paths, PARAMS)
            during_many = ticks - before
            if during_many:
                break
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(saved)
    assert during_one == 0 and during_many > 0, (during_one, during_many)


class _Recording(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.batches.append(list(args[0]))

        def run() -> Any:
            self.threads.add(threading.current_thread().name)
            return fn(*args, **kwargs)
        return super().submit(run)


def test_read_ahead_keeps_order_and_bounds_batches(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_ahead, "BATCH_FILES", 4)
    files = _files(tmp_path / "d", [100 * i for i in range(1, 12)])
    items: list[tuple[str, bool]] = []
    for i, p in enumerate(files):
        items.append((str(p), True))
        if i % 3 == 0:
            items.append((f"not a file {i}", False))
    items.append((str(tmp_path / "gone"), True))
    consumed = []
    with _Recording() as pool:
        for (name, want), loaded in read_ahead.read_ahead(
                items, lambda it: (it[0], 1) if it[1] else None, PARAMS, pool):
            consumed.append(name)
            if not want:
                assert loaded is None
            elif name.endswith("gone"):
                assert isinstance(loaded, FileNotFoundError)
            else:
                assert isinstance(loaded, Prepared)
                want_p = prepare(Path(name).read_bytes(), PARAMS)
                assert loaded.refs == want_p.refs
            # never more than AHEAD batches beyond the item consumed
            assert len(pool.batches) <= (sum(1 for n, w in items[:len(consumed)] if w)
                                         // 4 + read_ahead.AHEAD + 1)
        assert consumed == [n for n, _ in items]
        assert all(len(b) <= 4 for b in pool.batches)
        assert sum(len(b) for b in pool.batches) == len(files) + 1
        assert threading.current_thread().name not in pool.threads


def _tree(src: Path) -> dict[str, bytes]:
    want = {}
    for d in range(6):
        for f in range(30):
            data = os.urandom(50 + 997 * f) + bytes(3000 * (f % 4))
            p = src / f"d{d}" / f"f{f:02d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            want[f"d{d}/f{f:02d}"] = data
    (src / "huge").write_bytes(os.urandom(9 << 20))  # over WHOLE_READ_LIMIT: streamed
    want["huge"] = (src / "huge").read_bytes()
    return want


def test_a_put_reads_ahead_on_its_reader_thread_and_stores_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    want = _tree(src)
    callers: list[str] = []
    real = chunking.load_chunked_many

    def spying(paths: Any, *rest: Any) -> Any:
        callers.append(threading.current_thread().name)
        return real(paths, *rest)

    monkeypatch.setattr(chunking, "load_chunked_many", spying)
    with Client.init(tmp_path / "s", commit_files=40) as fs:
        report = fs.put(str(src), "/t")
        assert report.files == len(want)
        assert callers and all(c.startswith("hutong-put-read") for c in callers)
        for rel, data in want.items():
            assert fs.read_bytes(f"/t/{rel}") == data
            refs = prepare(data, fs.store.params).refs if len(data) < 8 << 20 else None
            if refs is not None:
                assert list(fs.manifest(f"/t/{rel}").chunks) == refs
        # a repeated put keeps every file (none read again)
        callers.clear()
        assert fs.put(str(src), "/t").unchanged == len(want)
        assert callers == []
        assert fs.fsck().ok


def test_a_file_gone_before_its_read_fails_the_put_at_that_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error is raised where the sequential read raised it: the batches committed
    before stay, and fsck is clean."""
    src = tmp_path / "src"
    want = _tree(src)
    real = Client._check_put_conflicts

    def then_remove(self: Client, *args: Any) -> Any:
        out = real(self, *args)
        (src / "d3" / "f07").unlink()
        return out

    monkeypatch.setattr(Client, "_check_put_conflicts", then_remove)
    with Client.init(tmp_path / "s", commit_files=40) as fs:
        with pytest.raises(FileNotFoundError) as info:
            fs.put(str(src), "/t")
        assert info.value.filename == str(src / "d3" / "f07")
        monkeypatch.undo()
        assert fs.read_bytes("/t/d0/f00") == want["d0/f00"]  # an earlier batch committed
        assert not fs.exists("/t/d3/f07")
        assert fs.fsck().ok
        assert client_mod.read_ahead is read_ahead.read_ahead
