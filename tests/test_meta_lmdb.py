"""The LMDB metadata engine: the conformance suite plus LMDB-specific behaviour."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gfs
from gfs.errors import FormatError, StateError
from gfs.meta import ROOT_INO, Inode, Kind, LmdbEngine, MetaEngine, open_engine
from gfs.meta import encoding as enc
from gfs.meta.records import ChunkRef, Manifest
from gfs.testing.meta_suite import MetaEngineConformance, _populate, dump_store

REPO = str(Path(gfs.__file__).resolve().parent.parent)
CHILD_TIMEOUT = 60.0


class TestLmdbConformance(MetaEngineConformance):
    @pytest.fixture
    def engine(self, tmp_path: Path) -> Iterator[MetaEngine]:
        eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
        yield eng
        eng.close()

    def reopen(self, engine: MetaEngine) -> MetaEngine:
        assert isinstance(engine, LmdbEngine)
        engine.close()
        return LmdbEngine(engine.path, sync=False)


# -- helpers ----------------------------------------------------------------------------


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("child did not report in time")
    return proc.stdout.readline().strip()


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=CHILD_TIMEOUT) == -signal.SIGKILL


def _in_thread_with_timeout(fn: object, timeout: float = 20.0) -> None:
    """Run fn() in a thread; fail (instead of hanging) if it does not finish in time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "operation hung (writer lock not recovered?)"
    if errors:
        raise errors[0]


# -- open, reopen, format ------------------------------------------------------------------


def test_reopen_persists_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path)
    _populate(eng)
    with eng.read() as r:
        before = dump_store(r, (ROOT_INO, 2))
        next_ino = r.get_meta("next_ino")
    eng.close()
    eng = LmdbEngine(path)
    try:
        with eng.read() as r:
            assert dump_store(r, (ROOT_INO, 2)) == before
            assert r.get_meta("next_ino") == next_ino
    finally:
        eng.close()


def test_initialisation(tmp_path: Path) -> None:
    eng = LmdbEngine(str(tmp_path / "a"), sync=False)
    other = LmdbEngine(str(tmp_path / "b"), sync=False)
    try:
        with eng.read() as r, other.read() as r2:
            assert r.get_meta("format") == b"4"
            assert r.get_meta("next_ino") == (2).to_bytes(8, "little")
            assert r.get_meta("store_id") != r2.get_meta("store_id")
            root = r.get_inode(ROOT_INO)
            assert root is not None and root.kind is Kind.DIR and root.parent == ROOT_INO
    finally:
        eng.close()
        other.close()
    assert {"data.mdb", "lock.mdb"} <= set(os.listdir(tmp_path / "a"))


def test_open_engine_returns_lmdb(tmp_path: Path) -> None:
    eng = open_engine(str(tmp_path / "m"), sync=False)
    try:
        assert isinstance(eng, LmdbEngine)
    finally:
        eng.close()


def test_format_mismatch_raises_state_error(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path, sync=False)
    with eng.write() as w:
        w.set_meta("format", b"7")
    eng.close()
    with pytest.raises(StateError) as info:
        LmdbEngine(path, sync=False)
    msg = str(info.value)
    assert path in msg and "format version 7" in msg and "formats 1, 2, 3, 4, 5, 6" in msg
    with pytest.raises(StateError):
        LmdbEngine(path, readonly=True)


@pytest.mark.parametrize("fmt", [b"1", b"2", b"3"])
def test_an_older_store_reads_and_becomes_format_4_when_opened_for_writing(
        tmp_path: Path, fmt: bytes) -> None:
    """Format 1 wrote wide inode records and formats 2 and 3 narrow ones (3 wrote
    compact ones too, and no folded members), which format 4 reads as they are; a
    record is rewritten compact when it next changes."""
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path, sync=False)
    old = Inode(9, ROOT_INO, Kind.FILE, 0o644, 0, 0, 5, 1, 2, 3, 1)
    one = Manifest(1, (ChunkRef(b"c" * 16, 5),))
    if fmt == b"1":  # format 3 wrote narrow records before the compact one too
        rec = enc.INODE_HEADER.pack(Kind.FILE, 0o644, 0, 0, ROOT_INO, 5, 1, 2, 3, 1)
    else:
        rec = enc.INODE_NARROW.pack(Kind.FILE | enc.INODE_NARROW_BIT, 0o644, 0, 0, ROOT_INO,
                                    5, 1, 1, 2, 3)
    with eng.write() as w:
        w.set_meta("format", fmt)
    eng.close()
    env = lmdb.open(path, max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(enc.encode_ino(9), rec, db=env.open_db(b"inodes", txn=txn))
        txn.put(enc.dirent_key(ROOT_INO, "f"), enc.encode_ino(9),  # 8-byte value
                db=env.open_db(b"dirents", txn=txn))
        txn.put(enc.encode_ino(9), enc.encode_manifest(one),  # the fixed form
                db=env.open_db(b"manifests", txn=txn))
    env.close()
    for readonly, want in ((True, fmt), (False, b"4")):  # a writable open marks it 4
        eng = LmdbEngine(path, readonly=readonly, sync=False)
        try:
            with eng.read() as r:
                assert r.get_meta("format") == want and r.get_inode(9) == old
                assert r.lookup(ROOT_INO, "f") == 9 and list(r.list_dir(ROOT_INO)) == [("f", 9)]
                assert r.get_manifest(9) == one
        finally:
            eng.close()
    eng = LmdbEngine(path, sync=False)
    try:
        with eng.write() as w:
            w.put_inode(replace(old, size=6))
            w.put_manifest(9, replace(one, version=2))
        with eng.read() as r:
            assert r.get_inode(9) == replace(old, size=6)
            assert r.get_manifest(9) == replace(one, version=2)
    finally:
        eng.close()
    env = lmdb.open(path, max_dbs=64, readonly=True)
    with env.begin() as txn:
        assert txn.get(enc.encode_ino(9), db=env.open_db(b"inodes", txn=txn))[0] & \
            enc.INODE_COMPACT_BIT
        assert txn.get(enc.encode_ino(9), db=env.open_db(b"manifests", txn=txn)) == \
            enc.encode_manifest_compact(replace(one, version=2))
    env.close()


def test_readonly(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    with pytest.raises(StateError, match="metadata"):
        LmdbEngine(path, readonly=True)  # nothing there yet
    eng = LmdbEngine(path, sync=False)
    with eng.write() as w:
        w.link(ROOT_INO, "x", 5)
    eng.close()
    ro = LmdbEngine(path, readonly=True)
    try:
        with ro.read() as r:
            assert r.lookup(ROOT_INO, "x") == 5
        with pytest.raises(StateError, match="read-only"):
            ro.write()
    finally:
        ro.close()


def test_closed_engine_raises(tmp_path: Path) -> None:
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        eng.read()
    with pytest.raises(StateError, match="closed"):
        eng.write()


def test_nested_write_in_one_thread_raises(tmp_path: Path) -> None:
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    try:
        with eng.write() as w:
            w.set_meta("x", b"1")
            with pytest.raises(StateError, match="nested"), eng.write():
                pass
        with eng.read() as r:
            assert r.get_meta("x") == b"1"
        with eng.write() as w:  # lock released
            w.set_meta("x", b"2")
    finally:
        eng.close()


def test_damaged_record_raises_format_error(tmp_path: Path) -> None:
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    try:
        with eng._env.begin(write=True) as txn:  # bypass the engine, as a disk fault would
            txn.put((9).to_bytes(8, "big"), b"\x01\x02", db=eng._dbs.inodes)
            txn.put((9).to_bytes(8, "big"), b"\x00" * 13, db=eng._dbs.manifests)
        with eng.read() as r:
            with pytest.raises(FormatError, match="inode 9"):
                r.get_inode(9)
            with pytest.raises(FormatError, match="manifest of inode 9"):
                r.get_manifest(9)
    finally:
        eng.close()


def test_invalid_records_rejected_on_write(tmp_path: Path) -> None:
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    try:
        with eng.write() as w:
            with pytest.raises(ValueError):
                w.link(ROOT_INO, "", 5)
            with pytest.raises(ValueError):
                w.put_inode(Inode(5, 1, Kind.FILE, 0o644, -1, 0, 0, 0, 0, 0))
            with pytest.raises(ValueError, match="503"):
                w.link(ROOT_INO, "x" * 504, 5)
            w.link(ROOT_INO, "é" * 251, 5)  # 502 bytes: fits
            assert w.lookup(ROOT_INO, "x" * 504) is None
            w.unlink(ROOT_INO, "x" * 504)
            with pytest.raises(ValueError, match="511"):
                w.put_value("xattrs", b"k" * 512, b"v")
            with pytest.raises(ValueError, match="511"):
                w.put_value("xattrs", b"", b"v")
            assert w.get_value("xattrs", b"k" * 512) is None
            assert w.get_value("xattrs", b"") is None
            assert list(w.iter_values("xattrs", b"k" * 512)) == []
            w.delete_value("xattrs", b"")
        with eng.read() as r:
            assert r.get_inode(5) is None
            assert list(r.list_dir(ROOT_INO)) == [("é" * 251, 5)]
    finally:
        eng.close()


# -- several processes ---------------------------------------------------------------------

_WRITER = """
    import sys
    from gfs.meta import LmdbEngine
    eng = LmdbEngine(sys.argv[1], sync=False)
    inos = []
    for _ in range(int(sys.argv[2])):
        with eng.write() as w:
            raw = w.get_value("heat", b"counter")
            n = int.from_bytes(raw, "little") if raw else 0
            w.put_value("heat", b"counter", (n + 1).to_bytes(8, "little"))
            inos.append(w.alloc_ino())
    eng.close()
    print(" ".join(map(str, inos)))
"""


def test_multiprocess_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    nproc, ntxn = 3, 150
    # The children also race to initialise the fresh environment.
    procs = [_child(_WRITER, path, str(ntxn)) for _ in range(nproc)]
    inos: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=CHILD_TIMEOUT)
        assert p.returncode == 0, err
        got = [int(x) for x in out.split()]
        assert got == sorted(got) and len(got) == ntxn
        inos += got
    assert len(set(inos)) == nproc * ntxn
    eng = LmdbEngine(path, sync=False)
    try:
        with eng.read() as r:
            raw = r.get_value("heat", b"counter")
            assert raw is not None and int.from_bytes(raw, "little") == nproc * ntxn
            assert [i.ino for i in r.iter_inodes()] == [ROOT_INO]
            assert r.get_meta("next_ino") == (2 + nproc * ntxn).to_bytes(8, "little")
    finally:
        eng.close()


# -- crash safety ----------------------------------------------------------------------------

_CRASH_AFTER_COMMIT = """
    import sys, time
    from gfs.meta import LmdbEngine
    eng = LmdbEngine(sys.argv[1])
    with eng.write() as w:
        ino = w.alloc_ino()
        w.link(1, "committed", ino)
        w.put_value("heat", b"marker", b"committed")
    print("COMMITTED", flush=True)
    time.sleep(60)
"""


def test_kill_after_commit_keeps_commit(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    LmdbEngine(path).close()
    proc = _child(_CRASH_AFTER_COMMIT, path)
    try:
        assert _read_line(proc) == "COMMITTED"
    finally:
        _kill(proc)
    eng = LmdbEngine(path)
    try:
        with eng.read() as r:
            assert r.get_value("heat", b"marker") == b"committed"
            assert r.lookup(ROOT_INO, "committed") == 2
        with eng.write() as w:
            assert w.alloc_ino() == 3
    finally:
        eng.close()


def test_readonly_open_of_an_environment_without_a_newer_value_table(tmp_path: Path) -> None:
    """A store made before a value table existed opens read-only; the table reads empty."""
    import lmdb

    path = str(tmp_path / "meta")
    eng = LmdbEngine(path)
    with eng.write() as txn:
        txn.put_value("jobs", b"k", b"v")
    eng.close()
    env = lmdb.open(path, max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:  # as an older version left it: no "deltas" table
        txn.drop(env.open_db(b"deltas", txn=txn), delete=True)
    env.close()
    ro = LmdbEngine(path, readonly=True)
    try:
        with ro.read() as txn:
            assert txn.get_value("deltas", b"x") is None
            assert list(txn.iter_values("deltas")) == []
            assert txn.get_value("jobs", b"k") == b"v"
    finally:
        ro.close()
    rw = LmdbEngine(path)  # a writable open creates the table
    with rw.write() as txn:
        txn.put_value("deltas", b"x", b"y")
    rw.close()


def test_a_write_reads_next_ino_once_and_releases_no_manifest_of_a_new_inode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction that makes many files reads `next_ino` once (then counts on) and
    looks up no old manifest for an inode it allocated; a manifest replaced in the same
    transaction, and `next_ino` set meanwhile (a dump's load), are still honoured."""
    from gfs import namespace
    from gfs.meta import blocks
    from gfs.meta import shared_manifests as shm

    eng = LmdbEngine(str(tmp_path / "m"), sync=False)
    reads: list[bytes] = []
    releases: list[bytes] = []
    real_get, real_release = blocks.BlockTxn.get, shm.release

    def get(self: blocks.BlockTxn, key: bytes, db: object) -> bytes | None:
        reads.append(bytes(key))
        return real_get(self, key, db)

    def release(txn: object, manifests: object, bodies: object, key: bytes) -> None:
        releases.append(key)
        real_release(txn, manifests, bodies, key)

    monkeypatch.setattr(blocks.BlockTxn, "get", get)
    monkeypatch.setattr(shm, "release", release)
    two = [ChunkRef(b"a" * 16, 5), ChunkRef(b"b" * 16, 5)]  # shared bodies
    try:
        with eng.write() as w:
            root = w.get_inode(ROOT_INO)
            assert root is not None
            for i in range(50):
                namespace.write_file_in(w, root, f"f{i}", two, touch=False)
            assert reads.count(b"next_ino") == 1 and releases == []
            ino = w.lookup(ROOT_INO, "f0")
            assert ino is not None
            w.put_manifest(ino, Manifest(2, tuple(reversed(two))))  # releases the first
            assert len(releases) == 1
            w.set_meta("next_ino", enc.encode_u64(1000))
            assert w.alloc_ino() == 1000 and w.alloc_ino() == 1001
        with eng.read() as r:
            assert r.get_meta("next_ino") == enc.encode_u64(1002)
            assert r.manifest_problems() == []
            assert r.shared_manifests() == 2
    finally:
        eng.close()


_DIR_OPS = st.lists(st.tuples(st.sampled_from(["mkdir", "link", "unlink"]),
                              st.integers(0, 7), st.sampled_from(["a", "b", "c"])),
                    max_size=30)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_DIR_OPS)
def test_lookups_in_directories_the_transaction_made_answer_as_the_table(
        tmp_path: Path, ops: list[tuple[str, int, str]]) -> None:
    """A write transaction answers lookups in the directories it allocated from the
    entries it linked there (no table read); they equal the table's own answer through
    links, unlinks and relinks, in new and committed directories alike."""
    from gfs.meta import lmdb_engine

    eng = LmdbEngine(str(tmp_path / f"m{os.urandom(4).hex()}"), sync=False)
    table_reads: list[int] = []
    real = lmdb_engine._LmdbRead.lookup

    def counted(self: lmdb_engine._LmdbRead, parent: int, name: str) -> int | None:
        table_reads.append(parent)
        return real(self, parent, name)

    try:
        with eng.write() as w:
            old = w.alloc_ino()
            w.link(ROOT_INO, "old", old)
            w.link(old, "a", w.alloc_ino())
        with pytest.MonkeyPatch.context() as mp, eng.write() as w:
            mp.setattr(lmdb_engine._LmdbRead, "lookup", counted)
            parents = [ROOT_INO, old]
            for op, n, name in ops:
                parent = parents[n % len(parents)]
                if op == "mkdir":
                    parents.append(w.alloc_ino())
                    w.link(parent, f"d{len(parents)}", parents[-1])
                elif op == "link":
                    w.link(parent, name, 1000 + n)
                else:
                    w.unlink(parent, name)
                for p in parents:
                    for nm in ("a", "b", "c"):
                        assert w.lookup(p, nm) == real(w, p, nm)
            assert set(parents[2:]).isdisjoint(table_reads)
            final = {(p, nm): w.lookup(p, nm) for p in parents for nm in ("a", "b", "c")}
        with eng.read() as r:
            assert {(p, nm): r.lookup(p, nm) for p, nm in final} == final
    finally:
        eng.close()


def test_next_ino_is_written_once_per_transaction(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction that allocates many inodes writes the next number once (a meta row
    put per file of a put's commit was saved), yet reads it current mid-transaction, a
    `set_meta` of it wins, and an aborted transaction leaves it as it was."""
    from gfs.meta import blocks

    puts: list[bytes] = []
    real_put = blocks.BlockTxn.put

    def counting_put(self: blocks.BlockTxn, key: bytes, value: bytes, db: object) -> None:
        if key == b"next_ino":
            puts.append(value)
        real_put(self, key, value, db)

    monkeypatch.setattr(blocks.BlockTxn, "put", counting_put)
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    try:
        with eng.write() as w:
            got = [w.alloc_ino() for _ in range(50)]
            assert puts == []
            assert enc.decode_u64("next_ino", w.get_meta("next_ino") or b"") == 52
            got.append(w.alloc_ino())
        assert got == list(range(2, 53))
        assert len(puts) == 2  # the read in the middle, then the commit
        with eng.read() as r:
            assert enc.decode_u64("next_ino", r.get_meta("next_ino") or b"") == 53
        with eng.write() as w:
            w.alloc_ino()
            w.set_meta("next_ino", enc.encode_u64(100))
        with eng.write() as w:
            assert w.alloc_ino() == 100
        with pytest.raises(RuntimeError), eng.write() as w:
            w.alloc_ino()
            raise RuntimeError("abort")
        with eng.write() as w:
            assert w.alloc_ino() == 101
    finally:
        eng.close()
