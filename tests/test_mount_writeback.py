"""The mount's write-back, driven directly (no FUSE, no kernel): spools, pending
creates, close-to-open commits, group commit, and a crash between spool and commit."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.errors import ExistsError, NotADirError
from gfs.group_commit import GroupCommitter
from gfs.meta import ROOT_INO, Manifest, ReadTxn, WriteTxn
from gfs.mount_names import NameHints
from gfs.mount_writeback import SPOOL_MEMORY, Spool, WriteBack
from gfs.pack_tail import TailPack, TailPackGoneError
from gfs.packs import PackBuilder
from gfs.read import cached
from tests.test_mount_helpers import init_store, wait_for

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 30.0


@pytest.fixture
def state(tmp_path: Path) -> Path:
    init_store(tmp_path / "state")
    return tmp_path / "state"


@pytest.fixture
def wb(state: Path) -> Iterator[WriteBack]:
    with Client(state) as c:
        cache = cached(c.store.source, 16 << 20)
        w = WriteBack(c, cache, NameHints())
        try:
            yield w
        finally:
            w.close()
            cache.close()


def other(state: Path) -> Client:
    """Another client of the same store (what the rest of the world sees)."""
    return Client(state)


# -- Spool -------------------------------------------------------------------
ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 3 * SPOOL_MEMORY // 2), st.binary(max_size=4096)),
    st.tuples(st.just("t"), st.integers(0, 3 * SPOOL_MEMORY // 2), st.just(b""))),
    max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_spool_matches_a_bytearray(steps: list[tuple[str, int, bytes]]) -> None:
    """Writes with gaps and truncates, in memory and after spilling to a file, read
    back as the same operations on a bytearray."""
    spool, model = Spool(), bytearray()
    try:
        for kind, off, data in steps:
            if kind == "w":
                assert spool.pwrite(data, off) == len(data)
                if data and off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
            else:
                spool.truncate(off)
                del model[off:]
                model.extend(bytes(off - len(model)))
            assert (spool.mem is None) == (spool.file is not None)
        assert spool.pread(len(model) + 10, 0) == bytes(model)
        if len(model) > SPOOL_MEMORY:
            assert spool.file is not None  # spilled
    finally:
        spool.close()


# -- GroupCommitter ----------------------------------------------------------
def test_group_committer_batches_what_queues_during_a_commit() -> None:
    batches: list[list[str]] = []
    entered, gate = threading.Event(), threading.Event()

    def commit(items: list[str]) -> None:
        batches.append(items)
        if items == ["first"]:
            entered.set()
            assert gate.wait(DEADLINE)

    gc: GroupCommitter[str] = GroupCommitter(commit)
    try:
        t1 = threading.Thread(target=gc.submit, args=("first",))
        t1.start()
        assert entered.wait(DEADLINE)
        rest = [threading.Thread(target=gc.submit, args=(n,)) for n in ("b", "c", "d")]
        for t in rest:
            t.start()
        wait_for(lambda: gc._queue.qsize() == 3, "three commits queued behind the first")
        gate.set()
        for t in [t1, *rest]:
            t.join(DEADLINE)
            assert not t.is_alive()
    finally:
        gc.close()
    assert batches[0] == ["first"]
    assert sorted(batches[1]) == ["b", "c", "d"] and len(batches) == 2


def test_group_committer_gives_each_error_to_its_own_item() -> None:
    entered, gate = threading.Event(), threading.Event()
    committed: list[str] = []

    def commit(items: list[str]) -> None:
        if items == ["hold"]:
            entered.set()
            assert gate.wait(DEADLINE)
        if "bad" in items:
            raise ExistsError("/bad")
        committed.extend(items)

    gc: GroupCommitter[str] = GroupCommitter(commit)
    results: dict[str, BaseException | None] = {}

    def submit(item: str) -> None:
        try:
            gc.submit(item)
            results[item] = None
        except BaseException as e:
            results[item] = e

    try:
        hold = threading.Thread(target=submit, args=("hold",))
        hold.start()
        assert entered.wait(DEADLINE)
        ts = [threading.Thread(target=submit, args=(n,)) for n in ("good1", "bad", "good2")]
        for t in ts:
            t.start()
        wait_for(lambda: gc._queue.qsize() == 3, "three commits queued behind the first")
        gate.set()
        for t in [hold, *ts]:
            t.join(DEADLINE)
    finally:
        gc.close()
    assert isinstance(results["bad"], ExistsError)
    assert results["good1"] is None and results["good2"] is None
    assert sorted(committed) == ["good1", "good2", "hold"]


# -- WriteBack -----------------------------------------------------------------
def test_create_is_invisible_until_committed(wb: WriteBack, state: Path) -> None:
    data = random.Random(1).randbytes(3 * SPOOL_MEMORY)  # spills to a file
    node = wb.create(ROOT_INO, "new.bin", 0o640, 1000, 1000)
    assert wb.node(node.ino) == node and wb.pending.find(ROOT_INO, "new.bin") == node
    with pytest.raises(ExistsError):
        wb.create(ROOT_INO, "new.bin", 0o640, 0, 0)
    d = wb.open_writer(node.ino)
    reader, _ = wb.reader(node.ino)
    for off in range(0, len(data), 100_000):
        assert wb.write(d, reader, data[off:off + 100_000], off) == len(data[off:off + 100_000])
    assert wb.read(node.ino, 10, 5) == data[5:15]  # this mount sees the bytes
    assert wb.apparent(node)[0] == len(data)
    with other(state) as c:
        assert not c.exists("/new.bin")  # nobody else does
    wb.commit(d)
    wb.drop_writer(d)
    assert node.ino not in wb.pending
    with other(state) as c:
        st_ = c.stat("/new.bin")
        assert (st_.ino, st_.size, st_.mode & 0o7777) == (node.ino, len(data), 0o640)
        assert c.read_bytes("/new.bin") == data
        assert c.fsck().ok


def test_update_of_a_committed_file(wb: WriteBack, state: Path) -> None:
    with other(state) as c:
        c.write_bytes("/f", b"0123456789")
        ino = c.stat("/f").ino
    d = wb.open_writer(ino)
    reader, _ = wb.reader(ino)
    assert wb.write_nowait(d, reader, b"AB", 2) is None  # no spool yet: must copy first
    wb.write(d, reader, b"AB", 2)
    assert wb.write_nowait(d, reader, b"Z", 12) == 1  # memory only now
    wb.set_mtime(ino, 7_000_000_000)
    with other(state) as c:
        assert c.read_bytes("/f") == b"0123456789"
    wb.commit(d)
    wb.drop_writer(d)
    assert wb.read(ino, 100, 0) is None  # nothing uncommitted left
    with other(state) as c:
        assert c.read_bytes("/f") == b"01AB456789\0\0Z"
        assert c.stat("/f").mtime_ns == 7_000_000_000
    wb.truncate(ino, 4)  # not open for writing: a new version at once
    with other(state) as c:
        assert c.read_bytes("/f") == b"01AB"


def _commit_new(wb: WriteBack, name: str, data: bytes) -> None:
    """Create `name` in the root, write `data`, and commit it alone (as a close does)."""
    node = wb.create(ROOT_INO, name, 0o644, 0, 0)
    d = wb.open_writer(node.ino)
    wb.write(d, wb.reader(node.ino)[0], data, 0)
    wb.commit(d)
    wb.drop_writer(d)


def _pack_objects(state: Path) -> list[Path]:
    return sorted(state.glob("pools/**/packs/*/*.pack"))


def test_successive_small_commits_append_to_one_pack(wb: WriteBack, state: Path) -> None:
    """A lone writer's small files, each committed alone, share one pack object (not
    one each); the pack's record grows with each commit and fsck finds it whole."""
    files = {f"f{i}": random.Random(i).randbytes(3000 + i) for i in range(40)}
    for name, data in files.items():
        _commit_new(wb, name, data)
    assert wb.stats.batches == 40
    packs = _pack_objects(state)
    assert len(packs) == 1, packs
    with other(state) as c:
        for name, data in files.items():
            assert c.read_bytes(f"/{name}") == data
        with c.engine.read() as txn:
            (rec,) = list(txn.iter_packs())
        assert (rec.size, rec.nchunks, rec.live_chunks) == (packs[0].stat().st_size, 40, 40)
        report = c.fsck()
        assert report.ok and report.uncommitted_tails == 0, report.problems


def test_a_pack_gc_removed_between_commits_is_not_appended_to(wb: WriteBack,
                                                               state: Path) -> None:
    """gc runs between two commits and deletes the appended pack (all its files were
    removed): the next commit starts a new pack instead of writing into a deleted one."""
    _commit_new(wb, "a", random.Random(1).randbytes(5000))
    (first,) = _pack_objects(state)
    with other(state) as c:
        c.rm("/a")
        c.gc()
    assert not first.exists()
    data = random.Random(2).randbytes(5000)
    _commit_new(wb, "b", data)
    (second,) = _pack_objects(state)
    assert second != first
    with other(state) as c:
        assert c.read_bytes("/b") == data
        assert c.fsck().ok


def test_an_append_whose_commit_fails_is_an_uncommitted_tail(state: Path) -> None:
    """A session appends to the tail pack, then its metadata transaction fails: the
    bytes past the record are reported apart from damage, and the next session
    starts a new pack rather than resume one whose end it does not know."""
    with Client(state) as c:
        tail = TailPack()
        with c.store.writer(tail=tail) as session:
            refs = session.store_buffer(random.Random(1).randbytes(5000))
            # a file removed at once: its chunk stays, unreferenced, in a committed pack
            session.add_file(refs, lambda txn, r: Manifest(0, tuple(r)))
        (pack,) = _pack_objects(state)
        kept = pack.stat().st_size

        def fail(txn: object, refs: object) -> None:
            raise OSError("the transaction fails")
        with pytest.raises(OSError, match="the transaction fails"), \
                c.store.writer(tail=tail) as session:
            session.add_file(session.store_buffer(random.Random(2).randbytes(5000)), fail)
        assert pack.stat().st_size > kept and tail.builder is None
        report = c.fsck()
        assert report.ok and report.uncommitted_tails == 1, report.problems
        with c.store.writer(tail=tail) as session:
            session.store_buffer(random.Random(3).randbytes(5000))
        assert len(_pack_objects(state)) == 2 and pack.stat().st_size > kept


def test_settle_commits_pending_files_empty_unless_written(wb: WriteBack, state: Path) -> None:
    a = wb.create(ROOT_INO, "a", 0o600, 0, 0)
    b = wb.create(ROOT_INO, "b", 0o600, 0, 0)
    d = wb.open_writer(b.ino)
    wb.write(d, wb.reader(b.ino)[0], b"bee", 0)
    assert wb.commit_open() == 2
    assert wb.pending.inos() == []
    with pytest.raises(NotADirError):
        wb.create(a.ino, "x", 0o600, 0, 0)  # a file is no directory
    with other(state) as c:
        assert c.read_bytes("/a") == b"" and c.read_bytes("/b") == b"bee"
    wb.drop_writer(d)


CRASHER = textwrap.dedent("""
    import random, sys
    from gfs.client import Client
    from gfs.meta import ROOT_INO, Manifest, ReadTxn, WriteTxn
    from gfs.mount_names import NameHints
    from gfs.mount_writeback import WriteBack
    from gfs.read import cached

    c = Client(sys.argv[1])
    wb = WriteBack(c, cached(c.store.source, 1 << 20), NameHints())
    node = wb.create(ROOT_INO, "new.bin", 0o644, 0, 0)
    d = wb.open_writer(node.ino)
    wb.write(d, wb.reader(node.ino)[0], random.Random(2).randbytes(3 << 20), 0)
    old = c.stat("/old").ino
    e = wb.open_writer(old)
    wb.write(e, wb.reader(old)[0], random.Random(3).randbytes(2 << 20), 0)
    engine = c.store.engine
    real_write = engine.write

    def gate():  # the metadata transaction of the commit: stop here
        print("committing", flush=True)
        sys.stdin.read()
        return real_write()

    engine.write = gate
    wb.commit_open()
    print("committed", flush=True)
""")


def test_crash_between_spool_and_commit(state: Path) -> None:
    """kill -9 after the packs of a group commit are written, before its metadata
    transaction: no file half visible, fsck clean, gc reclaims the packs."""
    with other(state) as c:
        c.write_bytes("/old", b"old content")
    packs_before = set((state / "pools").rglob("*.pack"))
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(state)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "committing", line
        new_packs = set((state / "pools").rglob("*.pack")) - packs_before
        assert new_packs, "the spooled content reached no pack before the commit"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL
    with other(state) as c:
        assert not c.exists("/new.bin")
        assert c.read_bytes("/old") == b"old content"
        report = c.fsck()
        assert report.ok, report.problems
        assert report.orphan_packs >= 1
        c.gc()
        after = c.fsck()
        assert after.ok and after.orphan_packs == 0 and after.unreferenced_chunks == 0
        assert not any(p.exists() for p in new_packs)


def test_no_fuse_in_the_write_back_and_xattr_modules() -> None:
    code = ("import sys, gfs.mount_writeback, gfs.mount_xattr, gfs.mount_shutdown, "
            "gfs.mount_points; sys.exit('pyfuse3' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


@pytest.mark.parametrize("object_gone", [True, False])
def test_a_pack_emptied_by_a_tier_move_while_appending_is_not_committed_to(
        wb: WriteBack, state: Path, object_gone: bool) -> None:
    """The tierer (which runs beside writers) empties the appended pack after a
    commit resumed it, dropping its record, then its object (`object_gone`: before
    the append; else the append lands in it first): that commit changes nothing
    and the file is committed again into a new pack, so no chunk points into a
    pack without a record."""
    _commit_new(wb, "a", random.Random(1).randbytes(5000))
    with other(state) as c:
        c.rm("/a")  # its chunk is dead: the tierer would not move it, the pack empties
    (first,) = _pack_objects(state)
    tail, resume = wb._tail, wb._tail.resume
    raced: list[bytes] = []

    def tier_move_meanwhile(txn: ReadTxn) -> PackBuilder | None:
        b = resume(txn)
        if b is not None and not raced:  # the tierer's switch: the pack and its chunks go
            raced.append(b.pack_id)

            def drop(w: WriteTxn) -> None:
                for rec in list(w.iter_chunks()):
                    w.delete_chunk(rec.id)
                w.delete_pack(b.pack_id)
            wb.client.engine.transact(drop)
            if object_gone:
                first.unlink()
        return b
    tail.resume = tier_move_meanwhile  # type: ignore[method-assign]
    data = random.Random(2).randbytes(5000)
    _commit_new(wb, "b", data)
    assert raced and first.exists() != object_gone
    assert len(_pack_objects(state)) == 2 - object_gone
    with other(state) as c:
        assert c.read_bytes("/b") == data
        report = c.fsck()
        assert report.ok and report.orphan_packs == 1 - object_gone, report.problems


def test_a_batch_retried_after_its_pack_went_commits_no_file_twice(
        wb: WriteBack, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's last commit finds its appended pack gone (TailPackGoneError: nothing
    committed) after a commit midway already committed its first files: the retry
    commits only the rest. It used to store the whole batch again, so the files
    committed midway got a second version (a create's own name looked taken)."""
    _commit_new(wb, "old", b"version 1")
    store = wb.client.store
    monkeypatch.setattr(store, "config", dataclasses.replace(store.config, commit_files=2))
    old = wb.client.stat("/old")
    files = []
    for name, data in (("old", b"version 2"), ("new1", b"one"), ("new2", b"two")):
        ino = old.ino if name == "old" else wb.create(ROOT_INO, name, 0o644, 0, 0).ino
        d = wb.open_writer(ino)
        wb.write(d, wb.reader(ino)[0], data, 0)
        files.append(d)
    real_writer, commits = store.writer, []

    @contextlib.contextmanager
    def writer(**kw: Any) -> Iterator[Any]:
        with real_writer(**kw) as session:
            real_commit = session.commit

            def commit(walks: Any = ()) -> None:
                commits.append(len(session._files))
                if len(commits) == 2:  # the batch's last commit, after one midway
                    raise TailPackGoneError(b"\0" * 16)
                real_commit(walks)
            session.commit = commit
            yield session
    monkeypatch.setattr(store, "writer", writer)
    wb._commit_batch(files)
    for d in files:
        wb.drop_writer(d)
    assert commits[:2] == [2, 1], commits  # old and new1 midway, new2 failed, then retried
    with other(state) as c:
        got = {s.name: (c.read_bytes(f"/{s.name}"), c.stat(f"/{s.name}").version)
               for s in c.ls("/")}
        assert c.fsck().ok
    assert got == {"old": (b"version 2", 2), "new1": (b"one", 1), "new2": (b"two", 1)}
