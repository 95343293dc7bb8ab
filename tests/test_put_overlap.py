"""A put's overlapping write session: batch k commits on the session's committer
thread while batch k+1 is gathered and compressed (gfs.store.WriteSession)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs import groups, store
from gfs.client import Client
from gfs.store import SEALED_BATCHES, WriteSession


class Injected(RuntimeError):
    """The fault a test injects."""


def _tree(root: Path, n: int) -> dict[str, bytes]:
    """`n` files of a few chunks each, part random and part repeated (some compress,
    some dedup, some resemble each other)."""
    out = {}
    common = random.Random(0).randbytes(40_000)
    for k in range(n):
        rnd = random.Random(k)
        data = rnd.randbytes(rnd.randrange(1_000, 30_000)) + common[:rnd.randrange(40_000)] \
            + f"file {k} ".encode() * 200
        (root / f"f{k:03d}").write_bytes(data)
        out[f"f{k:03d}"] = data
    return out


def _committed_prefix(fs: Client, want: dict[str, bytes]) -> list[str]:
    """The files the failed put left: a prefix of the walk, each whole."""
    names = sorted(e.name for e in fs.ls("/dst")) if fs.exists("/dst") else []
    assert names == sorted(want)[:len(names)]
    for name in names:
        assert fs.read_bytes(f"/dst/{name}") == want[name]
    return names


def _put_again(fs: Client, src: Path, want: dict[str, bytes], kept: int) -> None:
    """After a failure: the store checks clean and a second put completes the tree."""
    assert fs.fsck().ok
    report = fs.put(src, "/dst")
    assert report.unchanged == kept and report.files == len(want) - kept
    for name, data in want.items():
        assert fs.read_bytes(f"/dst/{name}") == data
    assert fs.fsck().ok


@pytest.fixture
def src(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes]]]:
    root = tmp_path / "src"
    root.mkdir()
    yield root, _tree(root, 40)


@pytest.mark.parametrize("use_delta", [False, True])
def test_overlap_commits_in_order_with_a_bounded_number_of_batches(
        tmp_path: Path, src: tuple[Path, dict[str, bytes]], use_delta: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches commit in the order they were sealed; the caller seals the next ones
    while a commit waits, but never more than SEALED_BATCHES wait or commit, and hands
    over chunks only while fewer than OVERLAP_BYTES wait; every file reads back and
    the store checks clean."""
    root, want = src
    sealed: list[int] = []
    committed: list[int] = []
    waiting: list[int] = []
    enough = threading.Event()
    real_hand_over, real_commit = WriteSession._hand_over, WriteSession._commit_batch

    def hand_over(self: WriteSession, batch: Any) -> None:
        real_hand_over(self, batch)
        sealed.append(id(batch))
        waiting.append(sum(not b.done.done() for b in self._unseen))
        if waiting[-1] >= SEALED_BATCHES:
            enough.set()

    def commit_batch(self: WriteSession, batch: Any) -> None:
        assert threading.current_thread().name == "hutong-commit"
        if not committed:  # the first commit waits until the caller sealed the bound
            enough.wait(30)
        committed.append(id(batch))
        real_commit(self, batch)

    def emit(self: WriteSession, item: Any) -> None:
        real_emit(self, item)
        queued.append(self._queued - item[3])  # before this one, which waited for room

    queued: list[int] = []
    real_emit = WriteSession._emit
    monkeypatch.setattr(store, "OVERLAP_BYTES", 100_000)
    monkeypatch.setattr(WriteSession, "_hand_over", hand_over)
    monkeypatch.setattr(WriteSession, "_commit_batch", commit_batch)
    monkeypatch.setattr(WriteSession, "_emit", emit)
    with Client.init(tmp_path / "s", commit_files=3, delta=use_delta) as fs:
        report = fs.put(root, "/dst")
        assert report.files == len(want) and report.write.commits >= 10
        assert committed == sealed
        assert max(waiting) == SEALED_BATCHES  # overlapped, and bounded
        assert 0 < max(queued) < 100_000
        for name, data in want.items():
            assert fs.read_bytes(f"/dst/{name}") == data
        assert fs.fsck().ok


def _fail_at(n: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, raising Injected at its `n`th call (counted across threads)."""
    calls = [0]
    lock = threading.Lock()

    def faulty(*args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[0] += 1
            k = calls[0]
        if k == n:
            raise Injected(f"call {k}")
        return real(*args, **kwargs)
    return faulty


@pytest.mark.parametrize("use_delta", [False, True])
def test_a_worker_fault_loses_nothing_committed(
        tmp_path: Path, src: tuple[Path, dict[str, bytes]], use_delta: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoding that fails on a worker fails the put: the batches committed before
    stay whole, none after commits, no record names an unwritten pack."""
    root, want = src
    if use_delta:  # this tree's small chunks are encoded in groups
        monkeypatch.setattr(groups, "encode_group", _fail_at(6, groups.encode_group))
    else:
        monkeypatch.setattr(store, "encode_blobs", _fail_at(6, store.encode_blobs))
    with Client.init(tmp_path / "s", commit_files=3, delta=use_delta) as fs:
        with pytest.raises(Injected):
            fs.put(root, "/dst")
        names = _committed_prefix(fs, want)
        assert len(names) < len(want)
        monkeypatch.undo()
        _put_again(fs, root, want, len(names))


def test_a_commit_fault_loses_nothing_committed(
        tmp_path: Path, src: tuple[Path, dict[str, bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that fails inside its transaction fails the put: the two batches
    before it stay whole, the batches sealed after it never commit."""
    root, want = src
    files_per_commit: list[int] = []
    real_commit = WriteSession._commit_batch

    def commit_batch(self: WriteSession, batch: Any) -> None:
        files_per_commit.append(len(batch.files))
        if len(files_per_commit) == 3:
            transact = self.store.engine.transact

            def failing(apply: Callable[[Any], None]) -> None:
                def then_fail(txn: Any) -> None:
                    apply(txn)  # every row written, then the transaction aborts
                    raise Injected("commit 3")
                transact(then_fail)
            monkeypatch.setattr(self.store.engine, "transact", failing)
        real_commit(self, batch)

    monkeypatch.setattr(WriteSession, "_commit_batch", commit_batch)
    with Client.init(tmp_path / "s", commit_files=3) as fs:
        with pytest.raises(Injected):
            fs.put(root, "/dst")
        names = _committed_prefix(fs, want)
        assert len(names) == 6  # two commits of 3 files (the third aborted)
        assert len(files_per_commit) == 3  # nothing sealed after it was committed
        monkeypatch.undo()
        _put_again(fs, root, want, len(names))


def test_overlap_refuses_a_tail(tmp_path: Path) -> None:
    """A session continuing a tail pack commits on the calling thread only."""
    from gfs.pack_tail import TailPack

    with Client.init(tmp_path / "s") as fs, pytest.raises(ValueError, match="tail"), \
            fs.store.writer(overlap=True, tail=TailPack()):
        pass


def test_only_a_tree_put_overlaps(tmp_path: Path, src: tuple[Path, dict[str, bytes]],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-file put commits on the calling thread (a committer thread would only
    add a hand-over); a tree put overlaps."""
    root, want = src
    overlaps: list[bool] = []
    real_init = WriteSession.__init__

    def init(self: WriteSession, *args: Any, **kwargs: Any) -> None:
        overlaps.append(kwargs.get("overlap", False))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(WriteSession, "__init__", init)
    with Client.init(tmp_path / "s") as fs:
        fs.put(root / "f007", "/one")
        fs.put(root, "/dst")
        assert overlaps == [False, True]
        assert fs.read_bytes("/one") == want["f007"]


def test_committed_batches_are_not_held_by_a_put_of_many_empty_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches that stored no new chunk (empty or repeated files) leave the session's
    list of batches its snapshot may not show once committed: a put held every one
    of them, with its files, until it ended (review: ~0.8 GB at 10^6 empty files)."""
    root = tmp_path / "src"
    root.mkdir()
    for k in range(300):
        (root / f"e{k:03d}").write_bytes(b"" if k % 2 else b"same bytes")
    held: list[int] = []
    real = WriteSession._hand_over

    def hand_over(self: WriteSession, batch: Any) -> None:
        real(self, batch)
        held.append(len(self._unseen))

    monkeypatch.setattr(WriteSession, "_hand_over", hand_over)
    with Client.init(tmp_path / "s", commit_files=3) as fs:
        fs.put(root, "/dst")
        assert len(held) >= 90  # the walk was cut into many batches
        assert max(held) <= SEALED_BATCHES + 1, held
        assert sorted(e.name for e in fs.ls("/dst")) == sorted(p.name for p in root.iterdir())
        assert fs.read_bytes("/dst/e000") == b"same bytes" and fs.read_bytes("/dst/e001") == b""
        assert fs.fsck().ok


@pytest.mark.parametrize("fault", [Injected, KeyboardInterrupt])
def test_the_callers_failure_mid_put_keeps_the_sealed_batches(
        tmp_path: Path, src: tuple[Path, dict[str, bytes]], fault: type[BaseException],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The put's own loop fails (a read error, Ctrl-C) at its 23rd file: the batches
    sealed before it still commit on the committer thread, the one being gathered does
    not; the store checks clean and a second put completes the tree."""
    root, want = src
    real = WriteSession.add_file
    calls = [0]

    def add_file(self: WriteSession, *a: Any, **k: Any) -> None:
        calls[0] += 1
        if calls[0] == 23:
            raise fault("injected")
        real(self, *a, **k)

    with Client.init(tmp_path / "s", commit_files=5) as fs:
        monkeypatch.setattr(WriteSession, "add_file", add_file)
        with pytest.raises(fault):
            fs.put(root, "/dst")
        monkeypatch.undo()
        kept = _committed_prefix(fs, want)
        assert len(kept) == 20  # four sealed batches of 5; the 2 files gathered after: not
        _put_again(fs, root, want, len(kept))


def test_a_failed_batch_lookup_loses_nothing_committed(
        tmp_path: Path, src: tuple[Path, dict[str, bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read batch's dedup lookup (`WriteSession.look_ahead`, again after each commit
    renews the snapshot) that fails mid-put fails the put: the batches committed before
    stay whole, and a second put completes the tree."""
    from gfs.meta.lmdb_engine import _LmdbRead

    root, want = src
    real = _LmdbRead.present_chunks
    batch_lookups: list[int] = []

    def present_chunks(self: _LmdbRead, cids: Any) -> set[bytes]:
        ids = set(cids)
        if threading.current_thread() is threading.main_thread() and len(ids) > 10:
            batch_lookups.append(len(ids))
            if len(batch_lookups) == 4:
                raise Injected("batch lookup 4")
        return real(self, ids)

    monkeypatch.setattr(_LmdbRead, "present_chunks", present_chunks)
    with Client.init(tmp_path / "s", commit_files=3) as fs:
        with pytest.raises(Injected):
            fs.put(root, "/dst")
        names = _committed_prefix(fs, want)
        assert 0 < len(names) < len(want)
        monkeypatch.undo()
        _put_again(fs, root, want, len(names))
