"""A pack written to its pool's temporary as its blobs come (`LocalPool.stage`), so the
commit making it durable only writes the rest (gfs.store.STAGE_BYTES)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gfs import store
from gfs.client import Client
from gfs.codec import Buffer
from gfs.errors import NoSpaceError, PoolError
from gfs.meta import WriteTxn
from gfs.packs import PACK_HEADER_LEN
from gfs.pools import local
from gfs.pools.local import LocalPool
from tests.conftest import make_tree, tree_digest
from tests.test_faults import kill_put_midway


def _pool(fs: Client) -> LocalPool:
    pool = fs.store.pool(fs.store.write_pool)
    assert isinstance(pool, LocalPool)
    return pool


def _tree(root: Path, n: int, size: int) -> dict[str, bytes]:
    """`n` files of `size` random bytes (they neither compress nor dedup)."""
    root.mkdir()
    out = {}
    for k in range(n):
        data = random.Random(k).randbytes(size)
        (root / f"f{k:02d}").write_bytes(data)
        out[f"f{k:02d}"] = data
    return out


# -- the pool --------------------------------------------------------------------
def test_a_staged_put_is_invisible_until_finished_then_as_put(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    parts = [random.Random(1).randbytes(n) for n in (10, 70_000, 0, 5)]
    staged = pool.stage("ab/cdef")
    staged.write(parts[:2])
    staged.write(parts[2:3])
    assert not pool.exists("ab/cdef") and list(pool.list()) == []
    assert len(pool.temporaries()) == 1 and staged.written == 70_010
    staged.finish(parts[3:])
    assert pool.get("ab/cdef") == b"".join(parts)
    assert pool.temporaries() == []
    pool.put("ab/whole", parts)  # the same bytes as a put in one go
    assert pool.get("ab/whole") == pool.get("ab/cdef")
    with pytest.raises(ValueError, match="already finished"):
        staged.write([b"more"])
    staged.discard()  # after finish: nothing
    assert pool.get("ab/cdef") == b"".join(parts)


def test_a_discarded_staged_put_leaves_nothing(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    staged = pool.stage("ab/cdef")
    staged.write([b"x" * 1000])
    staged.discard()
    staged.discard()
    assert pool.temporaries() == [] and list(pool.list()) == []
    with pytest.raises(ValueError, match="discarded"):
        staged.finish([b"y"])
    assert list(pool.list()) == []


def test_an_unsynced_staged_put_is_synced_with_the_other_puts(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    staged = pool.stage("ab/cdef")
    staged.write([b"x" * 100])
    staged.finish([b"y"], durable=False)
    assert pool.get("ab/cdef") == b"x" * 100 + b"y"
    assert pool._unsynced == {pool.local_path("ab/cdef")}
    pool.sync_puts()
    assert pool._unsynced == set()


def test_a_failed_staged_write_removes_the_temporary(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    staged = pool.stage("ab/cdef")
    staged.write([b"x" * 100])

    def full(fd: int, parts: Sequence[Buffer]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_write_all", full)
    with pytest.raises(NoSpaceError):
        staged.write([b"y"])
    assert pool.temporaries() == [] and list(pool.list()) == []


# -- the write session -----------------------------------------------------------
def test_a_pack_is_written_as_it_fills_and_holds_what_a_whole_write_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-session the pack's first blobs are in a temporary already; the committed
    pack is the one writing it whole at the commit makes (bytes and records)."""
    src = tmp_path / "src"
    want = _tree(src, 12, 100_000)
    got = {}
    for staged in (True, False):
        monkeypatch.setattr(store, "STAGE_BYTES", 256 << 10 if staged else 1 << 40)
        fs = Client.init(tmp_path / f"state-{staged}", pack_size=64 << 20)
        try:
            pool = _pool(fs)
            with fs.store.writer() as session:
                refs = [session.store_buffer(data) for data in want.values()]
                session._drain()
                assert bool(pool.temporaries()) == staged
                assert list(pool.list()) == []
            with fs.engine.read() as txn:
                packs = list(txn.iter_packs())
                chunks = sorted((r.id, txn.get_chunk(r.id)) for rs in refs for r in rs)
            assert len(packs) == 1 and pool.temporaries() == []
            key = next(pool.list())
            data = pool.get(key)
            got[staged] = (data[PACK_HEADER_LEN:],
                           dataclasses.replace(packs[0], id=b"", created_ns=0),
                           [(cid, rec.raw_len, rec.stored_len, rec.codec,
                             [(loc.pool, loc.offset, loc.length) for loc in rec.locations])
                            for cid, rec in chunks if rec is not None])
            assert len(data) == packs[0].size
        finally:
            fs.close()
    assert got[True] == got[False]


def test_the_appending_thread_does_not_wait_for_a_staged_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged writes run on the session's pack writer thread: appending blobs goes on
    while one is held, and the commit waits for it."""
    monkeypatch.setattr(store, "STAGE_BYTES", 256 << 10)
    gate, real = threading.Event(), local.StagedPut.write

    def held(self: local.StagedPut, parts: Sequence[Buffer]) -> None:
        gate.wait(8)
        real(self, parts)

    monkeypatch.setattr(local.StagedPut, "write", held)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        with fs.store.writer() as session:
            for k in range(12):
                session.store_buffer(random.Random(k).randbytes(100_000))
            started = time.monotonic()
            session._drain()  # appends every blob: stages several writes
            assert time.monotonic() - started < 6 and not gate.is_set()
            gate.set()
        assert fs.fsck().ok and len(list(_pool(fs).list())) == 1
    finally:
        gate.set()
        fs.close()


def test_a_put_stages_its_packs_and_reads_back(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STAGE_BYTES", 128 << 10)
    stages = []
    real = LocalPool.stage

    def counted(pool: LocalPool, key: str) -> local.StagedPut:
        stages.append(key)
        return real(pool, key)

    monkeypatch.setattr(LocalPool, "stage", counted)
    src = make_tree(tmp_path / "src", seed=5, files=60, max_size=400_000)
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    try:
        fs.put(src, "/dst")
        assert stages and set(stages) <= set(_pool(fs).list())
        assert _pool(fs).temporaries() == []
        report = fs.fsck()
        assert report.ok and report.orphan_packs == 0, report.problems
        fs.get("/dst", tmp_path / "out")
        assert tree_digest(tmp_path / "out") == tree_digest(src)
    finally:
        fs.close()


def test_no_staging_when_a_pool_has_a_capacity(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool with a capacity is chosen by a pack's final size: written whole."""
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        with fs.engine.write() as txn:
            txn.put_pool(dataclasses.replace(next(txn.iter_pools()), capacity=1 << 40))
        with fs.store.writer() as session:
            for k in range(12):
                session.store_buffer(random.Random(k).randbytes(100_000))
            session._drain()
            assert _pool(fs).temporaries() == []
        assert len(list(_pool(fs).list())) == 1
    finally:
        fs.close()


def test_an_encrypted_pool_gets_whole_packs(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a plain local pool stages: an encrypted one is put whole, as before."""
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    src = tmp_path / "src"
    want = _tree(src, 30, 50_000)
    fs = Client.init(tmp_path / "state", encrypt=True, pack_size=64 << 20)
    try:
        fs.put(src, "/dst")
        assert {n: fs.read_bytes(f"/dst/{n}") for n in want} == want
        assert fs.fsck().ok
    finally:
        fs.close()


def test_a_put_failing_mid_stage_changes_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged write fails (full disk) on the committer: the put fails, no file and
    no temporary is left, and the same put works afterwards."""
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    src = tmp_path / "src"
    want = _tree(src, 30, 50_000)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        fs.write_bytes("/existing", b"kept")
        real, calls = local._write_all, []

        def fill_up(fd: int, parts: Sequence[Buffer]) -> int:
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, parts)

        monkeypatch.setattr(local, "_write_all", fill_up)
        with pytest.raises(NoSpaceError):
            fs.put(src, "/dst")
        monkeypatch.setattr(local, "_write_all", real)
        assert not fs.exists("/dst") and fs.read_bytes("/existing") == b"kept"
        assert _pool(fs).temporaries() == []
        assert fs.fsck().ok
        fs.put(src, "/dst")
        assert {n: fs.read_bytes(f"/dst/{n}") for n in want} == want
    finally:
        fs.close()


def test_a_caller_failing_mid_put_discards_the_staged_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    src = tmp_path / "src"
    _tree(src, 30, 50_000)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        pool, seen = _pool(fs), []

        def stop_once_staged(n: int) -> None:
            seen.append(n)
            if len(seen) < 25:  # 1.2 MB read: a group of 1 MiB went to a worker
                return
            deadline = time.monotonic() + 30
            while not pool.temporaries() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool.temporaries()
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fs.put(src, "/dst", progress=stop_once_staged)
        assert pool.temporaries() == [] and list(pool.list()) == []
        assert not fs.exists("/dst") and fs.fsck().ok
    finally:
        fs.close()


def _held_temporary(tmp: Path) -> Path | None:
    """A temporary in `tmp` that stays unchanged for 0.3 s (within 60 s), if any."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = {p: p.stat().st_size for p in tmp.iterdir()}
        time.sleep(0.3)
        for p, size in before.items():
            if size and p.exists() and p.stat().st_size == size:
                return p
    return None


def test_kill9_while_a_pack_is_half_staged(tmp_path: Path) -> None:
    """kill -9 with a pack half written to its temporary: fsck is clean (the
    temporary counted apart), the files visible are whole, gc removes the
    temporary, and putting again completes the tree."""
    state = tmp_path / "state"
    Client.init(state).close()
    src = tmp_path / "src"
    want = _tree(src, 90, 300_000)  # held at 60: 2 batches of 25 committed, the next staged
    fs = Client(state)
    try:
        tmp = Path(_pool(fs).root) / "tmp"
        half = kill_put_midway(state, src, prelude="store.STAGE_BYTES = 64 << 10",
                               settings="pack_size=64 << 20, commit_files=25",
                               before_kill=lambda: _held_temporary(tmp))
        assert half is not None, "no pack was half staged at the kill"
        assert half.stat().st_size > 64 << 10
        report = fs.fsck()
        assert report.ok and report.temporaries >= 1, report.problems
        visible = [n for n in want if fs.exists(f"/big/{n}")]
        assert len(visible) < len(want)
        for name in visible:
            assert fs.read_bytes(f"/big/{name}") == want[name]
        fs.gc()
        after = fs.fsck()
        assert after.ok and after.orphan_packs == 0 and after.unreferenced_chunks == 0
        assert after.temporaries == 0 and not os.listdir(tmp)
        fs.put(f"{src}/", "/big")
        assert {n: fs.read_bytes(f"/big/{n}") for n in want} == want
    finally:
        fs.close()


def test_a_staged_pack_is_put_beside_the_transaction_and_before_its_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest of a staged pack, its fsyncs and rename run while the commit's
    transaction does its work; the transaction commits only after them."""
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    events: list[str] = []
    real_finish = local.StagedPut.finish

    def slow_finish(self: local.StagedPut, parts: Sequence[Buffer] = (), *,
                    durable: bool = True) -> None:
        events.append("finish")
        time.sleep(0.3)
        real_finish(self, parts, durable=durable)
        events.append("finished")

    monkeypatch.setattr(local.StagedPut, "finish", slow_finish)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        real_write = fs.engine.write

        @contextlib.contextmanager
        def write() -> Iterator[WriteTxn]:
            events.append("transaction")
            with real_write() as txn:
                yield txn
            events.append("transaction committed")

        monkeypatch.setattr(fs.engine, "write", write)
        with fs.store.writer() as session:
            for k in range(12):
                session.store_buffer(random.Random(k).randbytes(100_000))
        assert sorted(events) == sorted(["finish", "finished", "transaction",
                                         "transaction committed"])
        assert events.index("transaction") < events.index("finished") \
            < events.index("transaction committed")
    finally:
        fs.close()


def test_a_staged_pack_failing_at_its_rename_fails_the_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The put of a staged pack fails (its directory's fsync) beside the transaction:
    nothing commits, the pack is an orphan gc removes, and the put works again."""
    monkeypatch.setattr(store, "STAGE_BYTES", 64 << 10)
    src = tmp_path / "src"
    want = _tree(src, 30, 50_000)
    fs = Client.init(tmp_path / "state", pack_size=64 << 20)
    try:
        real = local._fsync_dir

        def broken(path: str) -> None:
            if os.path.basename(os.path.dirname(path)) == "packs":
                raise OSError(errno.EIO, "Input/output error")
            real(path)

        monkeypatch.setattr(local, "_fsync_dir", broken)
        with pytest.raises(PoolError, match="Input/output error"):
            fs.put(src, "/dst")
        monkeypatch.setattr(local, "_fsync_dir", real)
        assert not fs.exists("/dst") and _pool(fs).temporaries() == []
        report = fs.fsck()
        assert report.ok and report.orphan_packs == 1, report.problems
        fs.gc()
        assert fs.fsck().orphan_packs == 0
        fs.put(src, "/dst")
        assert {n: fs.read_bytes(f"/dst/{n}") for n in want} == want
    finally:
        fs.close()
