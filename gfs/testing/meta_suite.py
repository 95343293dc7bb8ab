"""Conformance suite for metadata engines (`gfs.meta.engine.MetaEngine`).

Every engine runs it. In a test module::

    class TestMyEngine(MetaEngineConformance):
        @pytest.fixture
        def engine(self, tmp_path) -> Iterator[MetaEngine]:
            eng = MyEngine(...)
            yield eng
            eng.close()

        def reopen(self, engine: MetaEngine) -> MetaEngine:  # optional
            engine.close()
            return MyEngine(...same store...)

The fixture must yield a freshly initialised, empty store and close the
engine afterwards (close() must be idempotent). `reopen` closes an
engine and opens the same store again; engines that cannot do so leave the
default, which skips the tests that need it. Tests with several processes open
the store in children with `open_engine(engine_location(engine))`.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gfs.errors import FormatError, StateError
from gfs.meta import engine_location
from gfs.meta.encoding import FORMAT_VERSION
from gfs.meta.engine import VALUE_TABLES, MetaEngine, ReadTxn, WriteTxn
from gfs.meta.records import (
    CHUNK_ID_LEN,
    PACK_ID_LEN,
    ROOT_INO,
    ChunkRecord,
    ChunkRef,
    Inode,
    Kind,
    Location,
    Manifest,
    PackRecord,
    PendingPack,
    PoolRecord,
)
from gfs.testing.threads import run_threads

__all__ = ["MetaEngineConformance", "dump_store"]

CHILD_TIMEOUT = 120.0
_REPO = str(Path(__file__).resolve().parent.parent.parent)

#: A writer process: argv = location, transactions; prints the inode numbers it got.
_WRITER = """
    import sys
    from gfs.meta import open_engine
    eng = open_engine(sys.argv[1])
    inos = []
    tries = [0]
    def bump(w):
        tries[0] += 1
        raw = w.get_value("heat", b"counter")
        n = int.from_bytes(raw, "little") if raw else 0
        w.put_value("heat", b"counter", (n + 1).to_bytes(8, "little"))
        w.put_value("jobs", b"w%d" % n, b"x")
        return w.alloc_ino()
    for _ in range(int(sys.argv[2])):
        inos.append(eng.transact(bump))
    eng.close()
    print(" ".join(map(str, inos)), "|", tries[0])
"""

#: Dies (kill -9 by the test) inside a write transaction whose changes reached the engine.
_CRASH_MID_TXN = """
    import sys, time
    from gfs.meta import open_engine, Inode, Kind
    eng = open_engine(sys.argv[1])
    with eng.write() as w:
        for i in range(2000):
            ino = w.alloc_ino()
            w.put_inode(Inode(ino, 1, Kind.FILE, 0o644, 0, 0, i, 1, 2, 3))
            w.link(1, f"crash-{i}", ino)
            w.put_value("jobs", b"crash-%d" % i, b"x" * 200)
        w.put_value("heat", b"marker", b"uncommitted")
        w.set_meta("suite_fact", b"uncommitted")
        list(w.iter_pools())  # engines that buffer writes send them now
        print("MID", flush=True)
        time.sleep(60)
"""


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=_REPO)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], CHILD_TIMEOUT)
    if not ready:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("child did not report in time")
    return proc.stdout.readline().strip()


def _inode(ino: int, parent: int = ROOT_INO, kind: Kind = Kind.FILE, **kw: Any) -> Inode:
    base: dict[str, Any] = dict(
        ino=ino,
        parent=parent,
        kind=kind,
        mode=0o644,
        uid=1000,
        gid=1000,
        size=0,
        atime_ns=1,
        mtime_ns=2,
        ctime_ns=3,
    )
    base.update(kw)
    return Inode(**base)


def _cid(i: int) -> bytes:
    return i.to_bytes(CHUNK_ID_LEN, "big")


def _pid(i: int) -> bytes:
    return (0xA0 << 120 | i).to_bytes(PACK_ID_LEN, "big")


def _chunk(i: int, nloc: int = 1, refcount: int = 1) -> ChunkRecord:
    locs = tuple(
        Location(pool=k, pack=_pid(k), offset=32 + 100 * i, length=50) for k in range(nloc)
    )
    return ChunkRecord(
        id=_cid(i), raw_len=100, stored_len=50, codec=1, refcount=refcount, locations=locs
    )


def _pack(i: int) -> PackRecord:
    return PackRecord(
        id=_pid(i),
        pool=0,
        size=1 << 24,
        nchunks=7,
        live_chunks=5,
        live_bytes=12345,
        created_ns=1_700_000_000_000_000_000 + i,
    )


def _manifest(n: int, version: int = 1) -> Manifest:
    return Manifest(version, tuple(ChunkRef(_cid(i), 1000 + i) for i in range(n)))


def dump_store(r: ReadTxn, parents: tuple[int, ...] = (ROOT_INO,)) -> dict[str, Any]:
    """Everything a read transaction can see (dirents of `parents` only), for comparisons."""
    return {
        "inodes": list(r.iter_inodes()),
        "dirents": {p: list(r.list_dir(p)) for p in parents},
        "manifests": list(r.iter_manifests()),
        "chunks": list(r.iter_chunks()),
        "packs": list(r.iter_packs()),
        "pending": list(r.iter_pending()),
        "pools": list(r.iter_pools()),
        "values": {t: list(r.iter_values(t)) for t in sorted(VALUE_TABLES)},
        "meta": {k: r.get_meta(k) for k in ("format", "store_id", "suite_fact")},
    }


def _populate(engine: MetaEngine) -> None:
    """One of everything."""
    with engine.write() as w:
        d = w.alloc_ino()
        f = w.alloc_ino()
        w.put_inode(_inode(d, kind=Kind.DIR, mode=0o755))
        w.put_inode(_inode(f, parent=d, size=3000))
        w.put_inode(_inode(w.alloc_ino(), kind=Kind.SYMLINK, target="../ziel/ü"))
        w.link(ROOT_INO, "dir", d)
        w.link(d, "file", f)
        w.put_manifest(f, _manifest(3))
        for i in range(3):
            w.put_chunk(_chunk(i, nloc=i))
        w.put_pack(_pack(0))
        w.put_pending(PendingPack(id=_pid(9), pool=0, writer="host:1234", created_ns=5))
        w.put_pool(PoolRecord(id=0, name="default", url="file:///tmp/p", tier="warm"))
        for t in VALUE_TABLES:
            w.put_value(t, b"k1", b"v1")
        w.set_meta("suite_fact", b"x")


class MetaEngineConformance:
    """Tests every MetaEngine must pass; subclasses provide the `engine` fixture."""

    #: The engine resolves conflicts by aborting a writer (MetaConflictError).
    optimistic = False

    def reopen(self, engine: MetaEngine) -> MetaEngine:
        """Close `engine` and open the same store again; the default skips."""
        pytest.skip("this engine's test class does not implement reopen()")

    # -- store set-up ---------------------------------------------------------------
    def test_root_exists_after_open(self, engine: MetaEngine) -> None:
        with engine.read() as r:
            root = r.get_inode(ROOT_INO)
            assert root is not None
            assert root.ino == ROOT_INO and root.parent == ROOT_INO
            assert root.kind is Kind.DIR
            assert root.mode == 0o755
            assert root.uid == os.getuid() and root.gid == os.getgid()
            assert root.mtime_ns > 0
            assert list(r.list_dir(ROOT_INO)) == []
            assert [i.ino for i in r.iter_inodes()] == [ROOT_INO]
            assert r.get_meta("format") == FORMAT_VERSION
            sid = r.get_meta("store_id")
            assert sid is not None and len(sid) == 16
            assert r.get_meta("no such fact") is None

    # -- inodes ---------------------------------------------------------------------
    def test_inode_put_get_delete(self, engine: MetaEngine) -> None:
        big = _inode(
            (1 << 64) - 1,
            size=(1 << 64) - 1,
            atime_ns=-(1 << 63),
            mtime_ns=(1 << 63) - 1,
            version=(1 << 64) - 1,
            uid=(1 << 32) - 1,
            mode=0o7777,
        )
        link = _inode(7, kind=Kind.SYMLINK, target="ziel/é/🙂")
        with engine.write() as w:
            w.put_inode(_inode(5))
            w.put_inode(big)
            w.put_inode(link)
            assert w.get_inode(5) == _inode(5)  # a write txn reads its own writes
        with engine.read() as r:
            assert r.get_inode(5) == _inode(5)
            assert r.get_inode(big.ino) == big
            assert r.get_inode(7) == link
            assert r.get_inode(6) is None
            assert [i.ino for i in r.iter_inodes()] == [1, 5, 7, big.ino]
        with engine.write() as w:
            w.put_inode(_inode(5, size=10, version=2))
            w.delete_inode(7)
            w.delete_inode(12345)  # absent: no-op
        with engine.read() as r:
            i5 = r.get_inode(5)
            assert i5 is not None and i5.size == 10 and i5.version == 2
            assert r.get_inode(7) is None
            assert [i.ino for i in r.iter_inodes()] == [1, 5, big.ino]

    def test_inode_link_counts_and_device_numbers(self, engine: MetaEngine) -> None:
        nodes = [
            _inode(20, parent=0, nlink=(1 << 32) - 1),  # a hard-linked file: no parent
            _inode(21, kind=Kind.CHARDEV, mode=0o620, rdev=(1 << 64) - 1),
            _inode(22, kind=Kind.BLOCKDEV, nlink=2, rdev=0x0807),
            _inode(23, kind=Kind.FIFO),
            _inode(24, kind=Kind.SOCKET, nlink=3),
            _inode(25, kind=Kind.SYMLINK, nlink=2, target="t"),
            _inode(26, kind=Kind.DIR, nlink=5),
        ]
        with engine.write() as w:
            for n in nodes:
                w.put_inode(n)
        with engine.read() as r:
            assert [r.get_inode(n.ino) for n in nodes] == nodes
            root = r.get_inode(ROOT_INO)
            assert root is not None and root.nlink == 2  # a new store counts links

    # -- directory entries ----------------------------------------------------------
    def test_link_lookup_unlink(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            w.link(ROOT_INO, "a", 10)
            w.link(ROOT_INO, "b", 11)
            assert w.lookup(ROOT_INO, "a") == 10
        with engine.read() as r:
            assert r.lookup(ROOT_INO, "a") == 10
            assert r.lookup(ROOT_INO, "b") == 11
            assert r.lookup(ROOT_INO, "c") is None
            assert r.lookup(10, "a") is None
        with engine.write() as w:
            w.link(ROOT_INO, "a", 12)  # replace
            w.unlink(ROOT_INO, "b")
            w.unlink(ROOT_INO, "nope")  # absent: no-op
        with engine.read() as r:
            assert r.lookup(ROOT_INO, "a") == 12
            assert r.lookup(ROOT_INO, "b") is None
            assert list(r.list_dir(ROOT_INO)) == [("a", 12)]

    def test_list_dir_utf8_byte_order(self, engine: MetaEngine) -> None:
        names = ["a", "a b", "ab", "é", "B", "a\u00e9", "z", "日本", "🙂", "a.", "aa", "a" * 255]
        rng = random.Random(7)
        names += [
            "".join(rng.choice("aé😀b ~") for _ in range(rng.randint(1, 6))) for _ in range(40)
        ]
        inos = {n: 100 + i for i, n in enumerate(dict.fromkeys(names))}
        with engine.write() as w:
            for n in rng.sample(sorted(inos), len(inos)):
                w.link(ROOT_INO, n, inos[n])
        want = sorted(inos.items(), key=lambda e: e[0].encode("utf-8"))
        with engine.read() as r:
            assert list(r.list_dir(ROOT_INO)) == want
            for n, ino in inos.items():
                assert r.lookup(ROOT_INO, n) == ino
            assert r.lookup(ROOT_INO, "a b ") is None
            assert r.lookup(ROOT_INO, "A") is None

    def test_list_dir_does_not_leak_between_directories(self, engine: MetaEngine) -> None:
        # 1 = 00..01, 256 = 00..0100, 257 = 00..0101: keys that share byte prefixes.
        parents = (1, 256, 257, 2, (1 << 64) - 1, 1 << 56)
        with engine.write() as w:
            for k, p in enumerate(parents):
                for n in ("a", "ab", f"only-{p}"):
                    w.link(p, n, 1000 * k + len(n))
        with engine.read() as r:
            for k, p in enumerate(parents):
                got = [(n, i - 1000 * k) for n, i in r.list_dir(p)]
                assert got == [("a", 1), ("ab", 2), (f"only-{p}", len(f"only-{p}"))]
            assert list(r.list_dir(3)) == []
            assert list(r.list_dir(255)) == []
            assert list(r.list_dir(258)) == []
            assert list(r.list_dir(0)) == []

    # -- manifests ------------------------------------------------------------------
    def test_manifest_put_get_delete(self, engine: MetaEngine) -> None:
        empty = Manifest(0, ())
        small = _manifest(3, version=4)
        with engine.write() as w:
            w.put_manifest(20, empty)
            w.put_manifest(21, small)
            assert w.get_manifest(21) == small
        with engine.read() as r:
            assert r.get_manifest(20) == empty
            assert r.get_manifest(21) == small
            assert r.get_manifest(22) is None
            assert list(r.iter_manifests()) == [(20, empty), (21, small)]
        with engine.write() as w:
            w.put_manifest(21, _manifest(1, version=5))
            w.delete_manifest(20)
            w.delete_manifest(999)  # absent: no-op
        with engine.read() as r:
            assert r.get_manifest(20) is None
            assert r.get_manifest(21) == _manifest(1, version=5)

    def test_scan_manifest_is_get_manifest_as_plain_values(self, engine: MetaEngine) -> None:
        """`scan_manifest` (a get's plan) answers what `get_manifest` answers, for empty,
        one-chunk, shared (identical contents) and large manifests, and absent ones."""
        ms = {40: Manifest(0, ()), 41: _manifest(1, version=2), 42: _manifest(3, version=4),
              43: _manifest(3, version=4), 44: _manifest(300, version=(1 << 64) - 1)}
        with engine.write() as w:
            for ino, m in ms.items():
                w.put_manifest(ino, m)
            assert w.scan_manifest(41) == (2, tuple((c.id, c.length) for c in ms[41].chunks))
        with engine.read() as r:
            for ino in (*ms, 45):
                got = r.get_manifest(ino)
                assert r.scan_manifest(ino) == (None if got is None else (
                    got.version, tuple((c.id, c.length) for c in got.chunks)))
            assert r.scan_manifest(42) == r.scan_manifest(43)

    def test_large_manifest(self, engine: MetaEngine) -> None:
        rng = random.Random(1)
        chunks = tuple(
            ChunkRef(rng.randbytes(CHUNK_ID_LEN), rng.randrange(1 << 32)) for _ in range(100_000)
        )
        m = Manifest((1 << 64) - 1, chunks)
        with engine.write() as w:
            w.put_manifest(30, m)
        with engine.read() as r:
            got = r.get_manifest(30)
            assert got is not None
            assert got.version == m.version
            assert got.chunks == chunks
            assert got.size == m.size

    # -- chunks, packs, pending, pools --------------------------------------------------
    def test_add_refcounts(self, engine: MetaEngine) -> None:
        a, b = b"\x01" * 16, b"\x02" * 16
        loc = Location(0, b"\x09" * 16, 32, 100)
        with engine.write() as w:
            w.put_chunk(ChunkRecord(a, 10, 8, 1, 0, (loc,)))
            w.put_chunk(ChunkRecord(b, 20, 20, 0, 5, ()))
            assert w.has_chunk(a) and not w.has_chunk(b"\x03" * 16)
            w.add_refcounts({a: 3, b: -2})
        with engine.read() as r:
            ra, rb = r.get_chunk(a), r.get_chunk(b)
        assert ra == ChunkRecord(a, 10, 8, 1, 3, (loc,))
        assert rb == ChunkRecord(b, 20, 20, 0, 3, ())
        for bad in ({a: -4}, {b"\x03" * 16: 1}):
            with pytest.raises(FormatError), engine.write() as w:
                w.add_refcounts(bad)
        with engine.read() as r:
            assert r.get_chunk(a) == ra  # the failed transactions changed nothing

    def test_refcount_changes_in_one_transaction_add_up(self, engine: MetaEngine) -> None:
        """Changes of one chunk's count in one transaction add up, also when a scan in
        between sends the first to the server (gc's base release did: a group's count
        fell by 1 instead of 147, so it was never re-grouped)."""
        a, b = b"\x01" * 16, b"\x02" * 16

        def count(txn: ReadTxn, cid: bytes) -> int:
            rec = txn.get_chunk(cid)
            assert rec is not None
            return rec.refcount

        with engine.write() as w:
            w.put_chunk(ChunkRecord(a, 10, 8, 1, 10, ()))
            w.put_chunk(ChunkRecord(b, 10, 8, 1, 0, ()))
        with engine.write() as w:
            w.add_refcounts({a: -3})
            assert count(w, a) == 7
            assert [c.refcount for c in w.iter_chunks() if c.id == a] == [7]  # a scan
            w.add_refcounts({a: -2, b: 1})
            assert count(w, a) == 5
            assert [c.refcount for c in w.iter_chunks() if c.id == a] == [5]
            w.add_refcounts({a: 4})
        with engine.read() as r:
            assert (count(r, a), count(r, b)) == (9, 1)

    def test_chunk_records(self, engine: MetaEngine) -> None:
        recs = [_chunk(i, nloc=i, refcount=i * 1000) for i in range(4)]
        edge = ChunkRecord(
            id=b"\xff" * CHUNK_ID_LEN,
            raw_len=(1 << 32) - 1,
            stored_len=(1 << 32) - 1,
            codec=255,
            refcount=(1 << 64) - 1,
            locations=(Location(0xFFFF, b"\xee" * PACK_ID_LEN, (1 << 64) - 1, (1 << 32) - 1),),
        )
        with engine.write() as w:
            for rec in reversed(recs):
                w.put_chunk(rec)
            w.put_chunk(edge)
        with engine.read() as r:
            for rec in recs:
                assert r.get_chunk(rec.id) == rec
            assert r.get_chunk(edge.id) == edge
            assert r.get_chunk(_cid(99)) is None
            assert list(r.iter_chunks()) == [*recs, edge]
        with engine.write() as w:
            w.put_chunk(_chunk(1, nloc=3, refcount=0))
            w.delete_chunk(_cid(2))
            w.delete_chunk(_cid(99))
        with engine.read() as r:
            assert r.get_chunk(_cid(1)) == _chunk(1, nloc=3, refcount=0)
            assert r.get_chunk(_cid(2)) is None
            assert [c.id for c in r.iter_chunks()] == [_cid(0), _cid(1), _cid(3), edge.id]

    def test_packs(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            for i in (3, 1, 2):
                w.put_pack(_pack(i))
        with engine.read() as r:
            assert r.get_pack(_pid(1)) == _pack(1)
            assert r.get_pack(_pid(9)) is None
            assert sorted(p.id for p in r.iter_packs()) == [_pid(1), _pid(2), _pid(3)]
        changed = PackRecord(_pid(2), 3, 10, 1, 0, 0, -5)
        with engine.write() as w:
            w.put_pack(changed)
            w.delete_pack(_pid(3))
            w.delete_pack(_pid(9))
        with engine.read() as r:
            assert r.get_pack(_pid(2)) == changed
            assert sorted(p.id for p in r.iter_packs()) == [_pid(1), _pid(2)]

    def test_pending(self, engine: MetaEngine) -> None:
        a = PendingPack(id=_pid(1), pool=0, writer="host-a:17:ü", created_ns=10)
        b = PendingPack(id=_pid(2), pool=65535, writer="", created_ns=-1)
        with engine.write() as w:
            w.put_pending(a)
            w.put_pending(b)
        with engine.read() as r:
            assert sorted(r.iter_pending(), key=lambda p: p.id) == [a, b]
        with engine.write() as w:
            w.delete_pending(_pid(1))
            w.delete_pending(_pid(7))
        with engine.read() as r:
            assert list(r.iter_pending()) == [b]

    def test_pools(self, engine: MetaEngine) -> None:
        p0 = PoolRecord(id=0, name="default", url="file:///state/pools/default")
        p1 = PoolRecord(id=1, name="冷", url="s3://bucket/x?a=1", tier="cold", capacity=1 << 50)
        p256 = PoolRecord(id=256, name="n", url="memory://", tier="hot", capacity=1)
        with engine.write() as w:
            for p in (p256, p1, p0):
                w.put_pool(p)
        with engine.read() as r:
            assert r.get_pool(0) == p0
            assert r.get_pool(1) == p1
            assert r.get_pool(2) is None
            assert list(r.iter_pools()) == [p0, p1, p256]
        with engine.write() as w:
            w.put_pool(PoolRecord(id=1, name="cold", url="s3://b", tier="cold", capacity=5))
        with engine.read() as r:
            assert r.get_pool(1) == PoolRecord(1, "cold", "s3://b", "cold", 5)

    # -- value tables and meta --------------------------------------------------------
    def test_value_tables(self, engine: MetaEngine) -> None:
        keys = [b"a", b"a\x00", b"a\xff", b"ab", b"abc", b"b", b"\x00", b"\xff\xff"]
        with engine.write() as w:
            for t in sorted(VALUE_TABLES):
                for k in reversed(keys):
                    w.put_value(t, k, t.encode() + b":" + k)
        with engine.read() as r:
            for t in sorted(VALUE_TABLES):
                assert r.get_value(t, b"ab") == t.encode() + b":ab"
                assert r.get_value(t, b"zz") is None
                assert [k for k, _ in r.iter_values(t)] == sorted(keys)
                assert [k for k, _ in r.iter_values(t, b"a")] == [
                    b"a",
                    b"a\x00",
                    b"ab",
                    b"abc",
                    b"a\xff",
                ]
                assert list(r.iter_values(t, b"ab")) == [
                    (b"ab", t.encode() + b":ab"),
                    (b"abc", t.encode() + b":abc"),
                ]
                assert list(r.iter_values(t, b"c")) == []
                assert list(r.iter_values(t, b"\xff\xff\xff")) == []
                probe = [b"zz", *keys, b"ab", b""]
                assert r.get_values(t, probe) == {k: t.encode() + b":" + k for k in keys}
        with engine.write() as w:
            w.delete_value("heat", b"ab")
            w.delete_value("heat", b"nope")
            w.put_value("heat", b"a", b"")
            assert w.get_values("heat", [b"ab", b"a", b"b"]) == {b"a": b"", b"b": b"heat:b"}
        with engine.read() as r:
            assert r.get_value("heat", b"ab") is None
            assert r.get_value("heat", b"a") == b""
            assert r.get_values("heat", iter([b"b", b"ab", b"a"])) == {b"a": b"",
                                                                      b"b": b"heat:b"}
            assert r.get_value("rules", b"ab") == b"rules:ab"  # tables are separate

    def test_a_prefix_deleted_is_gone_from_the_same_transaction(self, engine: MetaEngine
                                                                ) -> None:
        """Every key under a deleted prefix reads as absent at once in the transaction
        that deleted it (read before, never read, or written before); a key written
        after the deletion stays; another table's keys are untouched."""
        with engine.write() as w:
            for key in (b"p1", b"p2", b"p3", b"q1"):
                w.put_value("xattrs", key, b"old")
            w.put_value("jobs", b"p1", b"other table")
        with engine.write() as w:
            assert w.get_value("xattrs", b"p1") == b"old"
            w.put_value("xattrs", b"p4", b"written before")
            w.delete_values("xattrs", b"p")
            w.put_value("xattrs", b"p5", b"written after")
            for key in (b"p1", b"p2", b"p3", b"p4"):
                assert w.get_value("xattrs", key) is None, key
            assert w.get_value("xattrs", b"p5") == b"written after"
            assert w.get_values("xattrs", [b"p1", b"p2", b"p4", b"p5", b"q1"]) == {
                b"p5": b"written after", b"q1": b"old"}
            assert w.get_value("jobs", b"p1") == b"other table"
            assert dict(w.iter_values("xattrs")) == {b"p5": b"written after",
                                                    b"q1": b"old"}
        with engine.read() as r:
            assert dict(r.iter_values("xattrs")) == {b"p5": b"written after", b"q1": b"old"}

    def test_unknown_value_table_rejected(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            with pytest.raises(ValueError, match="nope"):
                w.put_value("nope", b"k", b"v")
            with pytest.raises(ValueError):
                w.get_value("inodes", b"k")
            with pytest.raises(ValueError):
                list(w.iter_values("chunks"))
            with pytest.raises(ValueError):
                w.delete_value("nope", b"k")

    def test_meta(self, engine: MetaEngine) -> None:
        with engine.read() as r:
            sid = r.get_meta("store_id")
        with engine.write() as w:
            w.set_meta("suite_fact", b"\x00\x01")
            w.set_meta("suite_fact", b"\x02")
        with engine.read() as r:
            assert r.get_meta("suite_fact") == b"\x02"
            assert r.get_meta("store_id") == sid

    # -- inode numbers ----------------------------------------------------------------
    def test_alloc_ino_unique_and_monotonic(self, engine: MetaEngine) -> None:
        got: list[int] = []
        for _ in range(5):
            with engine.write() as w:
                got += [w.alloc_ino() for _ in range(3)]
        assert got[0] > ROOT_INO
        assert got == sorted(set(got))

    def test_alloc_ino_survives_reopen(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            first = [w.alloc_ino() for _ in range(4)]
        with engine.read() as r:
            sid = r.get_meta("store_id")
        engine = self.reopen(engine)
        try:
            with engine.write() as w:
                nxt = w.alloc_ino()
            assert nxt > max(first)
            with engine.read() as r:
                assert r.get_meta("store_id") == sid
                assert r.get_inode(ROOT_INO) is not None
        finally:
            engine.close()

    # -- transactions -----------------------------------------------------------------
    def test_calls_after_close_raise(self, engine: MetaEngine) -> None:
        engine.close()  # the fixture's teardown closes again: close() must be idempotent
        with pytest.raises(StateError), engine.read():
            pass
        with pytest.raises(StateError), engine.write():
            pass

    def test_abort_on_exception_changes_nothing(self, engine: MetaEngine) -> None:
        _populate(engine)
        parents = (ROOT_INO, 2, 50)
        with engine.read() as r:
            before = dump_store(r, parents)
            dir_ino = r.lookup(ROOT_INO, "dir")
            assert dir_ino is not None

        class Boom(Exception):
            pass

        with pytest.raises(Boom), engine.write() as w:
            w.alloc_ino()
            w.put_inode(_inode(50, kind=Kind.DIR))
            w.delete_inode(dir_ino)
            w.link(50, "x", 51)
            w.unlink(ROOT_INO, "dir")
            w.put_manifest(51, _manifest(2))
            w.delete_manifest(dir_ino + 1)
            w.put_chunk(_chunk(7))
            w.delete_chunk(_cid(1))
            w.put_pack(_pack(7))
            w.delete_pack(_pid(0))
            w.put_pending(PendingPack(_pid(8), 0, "w", 1))
            w.delete_pending(_pid(9))
            w.put_pool(PoolRecord(id=5, name="p5", url="memory://"))
            w.put_pool(PoolRecord(id=0, name="changed", url="memory://"))
            for t in VALUE_TABLES:
                w.put_value(t, b"k2", b"v2")
                w.delete_value(t, b"k1")
            w.set_meta("suite_fact", b"changed")
            raise Boom
        with engine.read() as r:
            assert dump_store(r, parents) == before
        with engine.write() as w:  # the engine is still usable
            w.set_meta("suite_fact", b"after")
        with engine.read() as r:
            assert r.get_meta("suite_fact") == b"after"

    def test_read_snapshot_isolation(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            w.put_inode(_inode(40, size=1))
            w.link(ROOT_INO, "old", 40)
            w.put_value("jobs", b"j", b"1")
        with engine.read() as r:
            assert r.get_inode(40) == _inode(40, size=1)
            with engine.write() as w:
                w.put_inode(_inode(40, size=2))
                w.link(ROOT_INO, "new", 41)
                w.put_value("jobs", b"j", b"2")
                w.put_chunk(_chunk(1))
            # The snapshot still shows the state before the write.
            assert r.get_inode(40) == _inode(40, size=1)
            assert list(r.list_dir(ROOT_INO)) == [("old", 40)]
            assert r.get_value("jobs", b"j") == b"1"
            assert r.get_chunk(_cid(1)) is None
            with engine.read() as r2:
                assert r2.get_inode(40) == _inode(40, size=2)
                assert r2.lookup(ROOT_INO, "new") == 41
                assert r2.get_value("jobs", b"j") == b"2"

    def test_concurrent_writers_from_threads(self, engine: MetaEngine) -> None:
        nthreads, ntxns = 4, 200
        allocated: list[list[int]] = [[] for _ in range(nthreads)]

        def worker(k: int) -> None:
            for i in range(ntxns):
                with engine.write() as w:
                    raw = w.get_value("heat", b"counter")
                    n = int.from_bytes(raw, "little") if raw else 0
                    w.put_value("heat", b"counter", (n + 1).to_bytes(8, "little"))
                    if i % 20 == 0:
                        allocated[k].append(w.alloc_ino())
                with engine.read() as r:
                    assert r.get_value("heat", b"counter") is not None

        run_threads(worker, nthreads, deadline=120, together=True)
        with engine.read() as r:
            raw = r.get_value("heat", b"counter")
        assert raw is not None and int.from_bytes(raw, "little") == nthreads * ntxns
        inos = [i for a in allocated for i in a]
        assert len(inos) == len(set(inos)) == nthreads * (ntxns // 20)
        for a in allocated:
            assert a == sorted(a)

    # -- several processes ---------------------------------------------------------------
    def test_concurrent_writer_processes(self, engine: MetaEngine) -> None:
        nproc, ntxn = 6, 60
        procs = [_child(_WRITER, engine_location(engine), str(ntxn)) for _ in range(nproc)]
        inos: list[int] = []
        tries = 0
        for p in procs:
            out, err = p.communicate(timeout=CHILD_TIMEOUT)
            assert p.returncode == 0, err
            text, _, n = out.partition("|")
            tries += int(n)
            got = [int(x) for x in text.split()]
            assert got == sorted(got) and len(got) == ntxn
            inos += got
        assert len(set(inos)) == nproc * ntxn
        if self.optimistic:  # the writers did conflict, and transact ran them again
            assert tries > nproc * ntxn
        with engine.read() as r:
            raw = r.get_value("heat", b"counter")
            assert raw is not None and int.from_bytes(raw, "little") == nproc * ntxn
            # every increment saw the one before it: no lost update
            assert [k for k, _ in r.iter_values("jobs", b"w")] == sorted(
                b"w%d" % i for i in range(nproc * ntxn))

    def test_kill_during_write_txn_leaves_previous_state(self, engine: MetaEngine) -> None:
        _populate(engine)
        with engine.write() as w:
            w.put_value("heat", b"marker", b"before")
        with engine.read() as r:
            before = dump_store(r, (ROOT_INO, 2))
        proc = _child(_CRASH_MID_TXN, engine_location(engine))
        try:
            assert _read_line(proc) == "MID"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=CHILD_TIMEOUT) == -signal.SIGKILL
        with engine.read() as r:
            assert dump_store(r, (ROOT_INO, 2)) == before

        def after(w: WriteTxn) -> None:  # needs whatever the dead writer held
            w.put_value("heat", b"marker", b"after")
            w.link(ROOT_INO, "crash-0", w.alloc_ino())

        engine.transact(after)
        with engine.read() as r:
            assert r.get_value("heat", b"marker") == b"after"
            assert r.get_value("jobs", b"crash-1") is None
            assert r.get_meta("suite_fact") == b"x"

    def test_transact_returns_the_result(self, engine: MetaEngine) -> None:
        assert engine.transact(lambda w: w.alloc_ino()) > ROOT_INO

    def test_present_chunks_sees_the_transactions_own_writes(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            w.put_chunk(_chunk(1))
            w.put_chunk(_chunk(2))
        with engine.read() as r:
            assert r.present_chunks([_cid(i) for i in range(4)]) == {_cid(1), _cid(2)}
            assert r.present_chunks([]) == set()
        with engine.write() as w:
            w.delete_chunk(_cid(1))
            w.put_chunk(_chunk(3))
            assert w.present_chunks([_cid(i) for i in range(5)]) == {_cid(2), _cid(3)}

    def test_get_chunks_in_one_call(self, engine: MetaEngine) -> None:
        with engine.write() as w:
            for i in (1, 2, 3):
                w.put_chunk(_chunk(i, nloc=2))
        with engine.write() as w:
            w.delete_chunk(_cid(2))
            w.put_chunk(_chunk(4))
            assert w.get_chunks([_cid(i) for i in range(6)]) == {
                _cid(1): _chunk(1, nloc=2), _cid(3): _chunk(3, nloc=2), _cid(4): _chunk(4)}
        with engine.read() as r:
            assert r.get_chunks([_cid(4), _cid(2)]) == {_cid(4): _chunk(4)}
