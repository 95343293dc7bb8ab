"""The PostgreSQL metadata engine: the conformance suite on a real server, plus
schema versioning, several writer processes and kill -9 mid-transaction."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gfs import namespace
from gfs.cli import main
from gfs.client import Client
from gfs.errors import ConfigError, MetaConflictError, StateError
from gfs.gc import collect
from gfs.meta import (
    ROOT_INO,
    ChunkRecord,
    ChunkRef,
    Inode,
    Kind,
    Manifest,
    MetaEngine,
    PackRecord,
    ReadTxn,
    WriteTxn,
)
from gfs.meta import encoding as enc
from gfs.meta.pg_engine import SCHEMA_VERSION, PgEngine
from gfs.store import release
from gfs.testing.meta_suite import MetaEngineConformance
from gfs.testing.postgres import round_trips
from gfs.tiering.heat import chunk_heat
from gfs.tiering.policy import TierPolicy
from tests.conftest import make_tree, tree_digest
from tests.test_faults import kill_put_midway

ROOT = Path(__file__).resolve().parent.parent


class TestPgConformance(MetaEngineConformance):
    optimistic = True

    @pytest.fixture
    def engine(self, pg_url: str) -> Iterator[MetaEngine]:
        eng = PgEngine(pg_url)
        yield eng
        eng.close()

    def reopen(self, engine: MetaEngine) -> MetaEngine:
        assert isinstance(engine, PgEngine)
        engine.close()
        return PgEngine(engine.url)


# -- stores on PostgreSQL ------------------------------------------------------------------


def _shared_store(state: Path, meta: str, shared: Path) -> Client:
    """A state directory on the store at `meta`, writing to the pool every host reaches."""
    fs = Client.init(state, meta=meta, pack_size=1 << 18)
    if not any(r.name == "shared" for r in fs.store.pool_records()):
        fs.add_pool("shared", str(shared), tier="hot")
        with fs.engine.write() as txn:
            TierPolicy(write_tier="hot").save(txn)
    return fs


def test_two_clients_share_one_namespace_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    tree = make_tree(tmp_path / "src", seed=4, files=25, max_size=120_000)
    with _shared_store(tmp_path / "a", pg_url, tmp_path / "shared") as a, \
            _shared_store(tmp_path / "b", pg_url, tmp_path / "shared") as b:
        assert isinstance(a.engine, PgEngine)
        a.put(tree, "/t")
        b.get("/t", tmp_path / "out-b")  # close-to-open: b sees what a committed
        assert tree_digest(tmp_path / "out-b") == tree_digest(tree)
        b.write_bytes("/t/from-b", b"written by b" * 1000)
        a.rm("/t/" + sorted(p.name for p in tree.iterdir() if p.is_file())[0])
        assert a.read_bytes("/t/from-b") == b"written by b" * 1000
        a.gc()
        b.gc()
        for fs in (a, b):
            report = fs.fsck()
            assert report.ok, report.problems
        assert a.du("/t") == b.du("/t")


def test_cli_init_meta_url(tmp_path: Path, pg_url: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s"
    assert main(["--state", str(state), "init", "--meta", pg_url]) == 0
    assert "HUTONG_META" not in os.environ
    (tmp_path / "f").write_bytes(b"on postgres" * 100)
    assert main(["--state", str(state), "put", str(tmp_path / "f"), "/f"]) == 0
    with Client(state) as fs:
        assert isinstance(fs.engine, PgEngine) and fs.engine.url == pg_url
        assert fs.read_bytes("/f") == b"on postgres" * 100
    assert not (state / "meta").exists()
    with pytest.raises(ConfigError, match="postgresql://"):
        Client.init(tmp_path / "t", meta="mysql://x")
    assert not (tmp_path / "t").exists() or not (tmp_path / "t" / "config.toml").exists()


def test_schema_version_is_recorded_and_newer_refused(pg_url: str) -> None:
    eng = PgEngine(pg_url)
    try:
        with eng._live().connection() as conn:
            row = conn.execute(f"SELECT version FROM {eng.schema}.schema_version").fetchone()
            assert row == (SCHEMA_VERSION,)
            conn.execute(f"UPDATE {eng.schema}.schema_version SET version = 99")
            conn.commit()
    finally:
        eng.close()
    with pytest.raises(StateError, match="schema version 99"):
        PgEngine(pg_url)


def test_a_schema_2_store_of_format_1_migrates_to_format_4(pg_url: str) -> None:
    """Migrations 3 to 5 mark the records format 4; format 1's wide inode records
    read on."""
    old = Inode(9, ROOT_INO, Kind.FILE, 0o644, 0, 0, 5, 1, 2, 3, 1)
    eng = PgEngine(pg_url)
    try:
        with eng.write() as w:
            w.put_inode(old)
        wide = enc.INODE_HEADER.pack(Kind.FILE, 0o644, 0, 0, ROOT_INO, 5, 1, 2, 3, 1)
        with eng._live().connection() as conn:
            conn.execute(f"UPDATE {eng.schema}.schema_version SET version = 2")
            conn.execute(f"UPDATE {eng.schema}.meta SET value = %s WHERE key = 'format'",
                         (b"1",))
            assert conn.execute(f"UPDATE {eng.schema}.inodes SET rec = %s WHERE rec = %s",
                                (wide, enc.encode_inode(old))).rowcount == 1
            conn.commit()
    finally:
        eng.close()
    eng = PgEngine(pg_url)
    try:
        with eng.read() as r:
            assert r.get_meta("format") == enc.FORMAT_VERSION == b"4"
            assert r.get_inode(9) == old
        with eng._live().connection() as conn:
            row = conn.execute(f"SELECT version FROM {eng.schema}.schema_version").fetchone()
            assert row == (SCHEMA_VERSION,) == (5,)
    finally:
        eng.close()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql:///x?host={tmp_path}&port=1&user=nobody"
    with pytest.raises(StateError, match="cannot connect to the metadata database"):
        PgEngine(url, connect_timeout=1)


def test_kill9_mid_put_on_postgresql_loses_nothing_committed(tmp_path: Path,
                                                             pg_url: str) -> None:
    state = tmp_path / "state"
    Client.init(state, meta=pg_url).close()
    src = make_tree(tmp_path / "src", seed=21, files=200, max_size=200_000)
    kill_put_midway(state, src)
    originals = tree_digest(src)
    with Client(state) as fs:
        report = fs.fsck()
        assert report.ok, report.problems
        visible = [st.path for st in fs.walk("/") if st.kind == "file"]
        for p in visible:  # every visible file is complete and correct
            assert fs.read_bytes(p) == originals[p.removeprefix("/big/")][2]
        assert len(visible) < sum(v[0] == "file" for v in originals.values())
        fs.gc()
        after = fs.fsck()
        assert after.ok and after.orphan_packs == 0, after.problems
        fs.put(f"{src}/", "/big")  # resuming is putting the contents again
        fs.get("/big", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == originals


def test_gc_on_another_host_keeps_a_dead_chunk_a_writer_is_about_to_reuse(
        tmp_path: Path, pg_url: str) -> None:
    data = bytes(range(256)) * 400
    with _shared_store(tmp_path / "a", pg_url, tmp_path / "shared") as a, \
            _shared_store(tmp_path / "b", pg_url, tmp_path / "shared") as b:
        a.write_bytes("/old", data)
        a.rm("/old")  # its chunks are dead now
        with a.store.writer() as session:
            refs = session.store_buffer(data)  # found by id: nothing new to store
            assert session.stats.new_chunks == 0
            report = b.gc()  # another host's gc: a's gc lock does not hold it back
            assert report.chunks_removed == 0 and report.chunks_waiting == len(refs)

            def link(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
                return namespace.write_file_in(txn, namespace.get(txn, ROOT_INO), "new", r)

            session.add_file(refs, link)
        assert a.read_bytes("/new") == data
        assert b.fsck().ok
        a.rm("/new")
        assert collect(b.store).chunks_removed == 0  # the first gc's pin still holds
        with b.engine.write() as txn:  # as if the grace period had passed
            for ref in refs:
                txn.put_value("pins", ref.id, (1).to_bytes(8, "big"))
        assert collect(b.store).chunks_removed == len(refs)  # dead for long enough
        report = a.fsck()
        assert report.ok and report.unreferenced_chunks == 0, report.problems


HEAT_WORKER = r"""
import contextlib, pathlib, sys, time
from gfs.errors import MetaConflictError
from gfs.meta.pg_engine import PgEngine
from gfs.tiering.heat import HeatTracker

class Counting(PgEngine):
    conflicts = 0
    first = True

    @contextlib.contextmanager
    def write(self):
        # The first transactions of the two workers overlap for sure: each says it
        # has begun, and the first to finish its body commits only once the other
        # has begun too (whose update then waits on the row and must be aborted).
        first, Counting.first = Counting.first, False
        try:
            with PgEngine.write(self) as txn:
                if first:
                    (rendezvous / me).touch()
                yield txn
                if first:
                    deadline = time.monotonic() + 30
                    while not (rendezvous / other).exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
        except MetaConflictError:
            Counting.conflicts += 1
            raise

url, rounds = sys.argv[1], int(sys.argv[2])
rendezvous, me = pathlib.Path(sys.argv[3]), sys.argv[4]
other = "1" if me == "0" else "0"
engine = Counting(url)
heat = HeatTracker(engine, 3600.0)
sys.stdin.read(1)  # the gate: both workers start together
for _ in range(rounds):
    heat.record([b"a" * 16, b"b" * 16])
    heat.flush()
engine.close()
print(Counting.conflicts)
"""


def _gated_workers(script: str, args: list[list[str]]) -> list[str]:
    """Run `script` in one process per argument list, let them all start at once (the
    gate on stdin), and return their outputs; each must exit 0 (nothing escaped)."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for a in args]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("g")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


def test_conflicting_heat_flushes_from_two_processes_are_retried_not_lost(
        tmp_path: Path, pg_url: str) -> None:
    """Two processes add to the same heat counters at once: PostgreSQL aborts one of
    two conflicting transactions, `transact` runs it again, no read is lost."""
    rounds = 150
    PgEngine(pg_url).close()  # the schema exists before the workers race
    outs = [int(out) for out in _gated_workers(
        HEAT_WORKER, [[pg_url, str(rounds), str(tmp_path), str(k)] for k in range(2)])]
    assert sum(outs) > 0  # the workers did conflict, and were retried
    engine = PgEngine(pg_url)
    try:
        with engine.read() as txn:
            for cid in (b"a" * 16, b"b" * 16):
                h = chunk_heat(txn, cid)
                assert h is not None and h.reads == 2 * rounds
    finally:
        engine.close()


CREATE_WORKER = r"""
import sys
from gfs import Client

state, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
same = sys.argv[4].encode() if len(sys.argv) > 4 else None  # every file's content
with Client(state) as fs:
    fs.engine.TRANSACT_ATTEMPTS = 1  # a conflict is not retried: it escapes and fails
    sys.stdin.read(1)  # the gate: every worker starts together
    for i in range(n):
        fs.write_bytes(f"/c{k}/f{i}", same or f"client {k} file {i}".encode())
"""


def test_sixteen_clients_creating_in_their_own_directories_never_conflict(
        tmp_path: Path, pg_url: str) -> None:
    """Creates in different directories share no row, so none is aborted: each worker
    runs every transaction once (no retry) and none raises MetaConflictError. Before
    the engine left SERIALIZABLE, index-page read tracking aborted thousands."""
    clients, files = 16, 200
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        for k in range(clients):
            fs.mkdir(f"/c{k}")
    _gated_workers(CREATE_WORKER, [[str(tmp_path / "s"), str(k), str(files)]
                                   for k in range(clients)])
    with Client(tmp_path / "s") as fs:
        for k in range(clients):
            assert sorted(s.path for s in fs.ls(f"/c{k}")) == sorted(
                f"/c{k}/f{i}" for i in range(files))
        assert fs.read_bytes(f"/c{clients - 1}/f{files - 1}") == \
            f"client {clients - 1} file {files - 1}".encode()
        report = fs.fsck()
        assert report.ok, report.problems


def test_crossed_directory_moves_cannot_make_a_loop(pg_url: str) -> None:
    """/p/a into /q/b/c/, and /q/b into /p/a/d/, at once, by inode (as the mount
    does): each check passes on its own snapshot and the two write disjoint rows, so
    without `serialize_on` both would commit a loop cut off from the root. Exactly
    one commits."""
    one, two = PgEngine(pg_url), PgEngine(pg_url)
    try:
        with one.write() as txn:
            for d in ("/p", "/q", "/p/a", "/q/b", "/q/b/c", "/p/a/d"):
                namespace.mkdir(txn, d)
        with one.read() as r:
            ino = {d: namespace.resolve(r, d) for d in ("/p", "/q", "/q/b/c", "/p/a/d")}
        ctxs = [one.write(), two.write()]
        txns = [c.__enter__() for c in ctxs]
        namespace.rename_in(txns[0], ino["/p"], "a", ino["/q/b/c"], "a")
        namespace.rename_in(txns[1], ino["/q"], "b", ino["/p/a/d"], "b")
        outcome: list[str] = []

        def commit(k: int) -> None:  # each may wait for the other's row locks
            try:
                ctxs[k].__exit__(None, None, None)
                outcome.append("committed")
            except MetaConflictError:
                outcome.append("conflict")

        threads = [threading.Thread(target=commit, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(outcome) == ["committed", "conflict"]
        with one.read() as r:  # every directory is still reachable from the root
            assert {namespace.resolve(r, p).kind for p in ("/p", "/q")} == {Kind.DIR}
            moved = [p for p in ("/q/b/c/a", "/p/a/d/b") if _exists(r, p)]
            assert len(moved) == 1
    finally:
        one.close()
        two.close()


def _exists(txn: ReadTxn, path: str) -> bool:
    try:
        namespace.resolve(txn, path)
    except FileNotFoundError:
        return False
    return True


def test_scans_page_by_key_across_many_pages(pg_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import gfs.meta.pg_engine as pg

    monkeypatch.setattr(pg, "FETCH", 3)  # 10 rows: four pages, the last one short
    eng = PgEngine(pg_url)
    try:
        with eng.write() as w:
            for i in range(10):
                w.link(ROOT_INO, f"n{9 - i}", 1000 + i)
                w.put_value("heat", b"p" + bytes([i]), b"v")
            w.put_value("heat", b"q", b"other prefix")
            # read inside the writing transaction: the buffered rows are flushed first
            assert [n for n, _ in w.list_dir(ROOT_INO)] == [f"n{i}" for i in range(10)]
        with eng.read() as r:
            assert [n for n, _ in r.list_dir(ROOT_INO)] == [f"n{i}" for i in range(10)]
            assert [k for k, _ in r.iter_values("heat", b"p")] == [
                b"p" + bytes([i]) for i in range(10)]
            assert list(r.list_dir(12345)) == []
    finally:
        eng.close()


def test_many_values_are_read_a_page_of_keys_per_round_trip(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`get_values` asks for FETCH keys per query (a restore's heat flush: a key per chunk
    read, one round trip each before); rows read before and buffered writes need none."""
    import gfs.meta.pg_engine as pg

    monkeypatch.setattr(pg, "FETCH", 4)
    eng = PgEngine(pg_url)
    try:
        with eng.write() as w:
            for i in range(0, 20, 2):
                w.put_value("heat", b"k%02d" % i, b"v%d" % i)
        keys = [b"k%02d" % i for i in range(20)]
        want = {b"k%02d" % i: b"v%d" % i for i in range(0, 20, 2)}
        with eng.read() as r:
            r.get_value("heat", b"k00")  # the transaction begins
            with round_trips() as trips:
                assert r.get_values("heat", reversed(keys)) == want
            assert trips[0] == 5  # 20 keys, 4 a page
            with round_trips() as trips:  # read already: none
                assert r.get_values("heat", keys) == want
                assert r.get_value("heat", b"k01") is None
            assert trips[0] == 0
        with eng.write() as w:
            w.put_value("heat", b"k01", b"new")
            w.delete_value("heat", b"k02")
            with round_trips() as trips:
                got = w.get_values("heat", [b"k01", b"k02"])
            assert got == {b"k01": b"new"} and trips[0] == 0
    finally:
        eng.close()


# -- round trips -------------------------------------------------------------------------


#: Most round trips to the server each operation may take through the Python API (a
#: create also reads the tiering policy, the lost-chunk list and the dedup index);
#: "lookup" is the mount's (an entry and its inode, in a read transaction of its own),
#: "change" a write transaction reading an entry, then its directory (as the mount's
#: rename and create do), and committing.
#: Before batching and the transaction's read cache: 49, 6, 12, 26 and 27; before a
#: read's ROLLBACK went with the next transaction's first message: 13, 3, 3, 4, 6, and
#: 3 for a lookup, 3 for a change; before the tier policy and the lost-chunk list
#: were cached by version: create 9; before a path's entries were read ahead in one
#: query (`ReadTxn.read_ahead`) and an inode's xattrs were deleted unread
#: (`WriteTxn.delete_values`): create 7, stat 2, rename 4, unlink 6, and the mount's
#: rename 3 ("mount rename": its two entries, then COMMIT) and unlink 6 ("mount
#: unlink": its directory, the entry, the file's manifest, its xattrs, its chunks,
#: COMMIT).
ROUND_TRIPS = {"create": 5, "stat": 1, "ls": 2, "rename": 2, "unlink": 3, "lookup": 1,
               "change": 2, "mount rename": 2, "mount unlink": 3}


def test_each_operation_costs_few_round_trips(tmp_path: Path, pg_url: str) -> None:
    """Every exchange with the server passes through `Connection.wait`: counting its
    calls counts round trips. BEGIN and the writes and COMMIT share one, a lookup
    brings its inode along, a row read once is not read again in one transaction."""
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        fs.mkdir("/d")
        for i in range(4):
            fs.write_bytes(f"/d/f{i}", f"file {i}".encode())
        ops = {"create": lambda: fs.write_bytes("/d/new", b"new"),
               "stat": lambda: fs.stat("/d/f0"), "ls": lambda: fs.ls("/d"),
               "rename": lambda: fs.mv("/d/f1", "/d/g1"), "unlink": lambda: fs.rm("/d/f2"),
               "lookup": lambda: _lookup(fs, d_ino, "f3"),
               "change": lambda: fs.engine.transact(lambda w: _lookup_dir(w, d_ino, "f3")),
               "mount rename": lambda: fs.engine.transact(
                   lambda w: _mount_rename(w, d_ino, "f3", "h3")),
               "mount unlink": lambda: fs.engine.transact(
                   lambda w: _mount_unlink(w, d_ino, "h3"))}
        d_ino = fs.stat("/d").ino
        used = {}
        for op, run in ops.items():
            with round_trips() as trips:
                run()
            used[op] = trips[0]
        assert used == {op: min(used[op], most) for op, most in ROUND_TRIPS.items()}, used
        assert all(n > 0 for n in used.values())  # the counter does see the server
        assert fs.read_bytes("/d/new") == b"new" and fs.read_bytes("/d/g1") == b"file 1"
        assert sorted(s.path for s in fs.ls("/d")) == ["/d/f0", "/d/g1", "/d/new"]
        assert fs.fsck().ok


def _lookup(fs: Client, parent: int, name: str) -> None:
    with fs.engine.read() as txn:
        assert namespace.lookup(txn, parent, name).kind == Kind.FILE


def _lookup_dir(txn: WriteTxn, parent: int, name: str) -> None:
    assert namespace.lookup(txn, parent, name).kind == Kind.FILE
    assert namespace.get(txn, parent).kind == Kind.DIR  # came along with the entry
    txn.put_value("jobs", b"x", b"1")


def _mount_rename(txn: WriteTxn, parent: int, old: str, new: str) -> None:
    """What the mount's rename does in its transaction."""
    txn.read_ahead([(parent, [old]), (parent, [new])])
    namespace.lookup(txn, parent, old)
    d = namespace.get(txn, parent)
    namespace.rename_in(txn, d, old, d, new)


def _mount_unlink(txn: WriteTxn, parent: int, name: str) -> None:
    """What the mount's unlink does in its transaction."""
    txn.read_ahead([(parent, [name])], manifests=True)
    m = namespace.unlink_in(txn, namespace.get(txn, parent), name)
    release(txn, [m] if m is not None else [])


def _open_reads(pg_url: str) -> int:
    """Sessions of the store at `pg_url` idle inside a transaction (a parked read)."""
    import psycopg

    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.rsplit("&schema=", 1)[0], autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = "
                           "'idle in transaction' AND query LIKE %s",
                           (f'%"{schema}"%',)).fetchone()
    return int(row[0]) if row else 0


def test_a_read_ends_with_the_next_message_or_by_itself(pg_url: str) -> None:
    """A read transaction's ROLLBACK waits for the next transaction on its connection:
    that one still sees what another engine committed meanwhile (a new snapshot), and
    a connection left idle is rolled back within PARK_MAX, and by close()."""
    import time

    from gfs.meta.pg_engine import PARK_MAX

    one, two = PgEngine(pg_url), PgEngine(pg_url)
    try:
        with one.read() as r:
            assert r.get_value("jobs", b"k") is None
        assert _open_reads(pg_url) == 1  # parked, its snapshot still open
        with two.write() as w:
            w.put_value("jobs", b"k", b"v")
        with one.read() as r:
            assert r.get_value("jobs", b"k") == b"v"
        with one.write() as w:  # a write on the parked connection: rolls it back first
            w.put_value("jobs", b"k", b"w")
        with two.read() as r:
            assert r.get_value("jobs", b"k") == b"w"
        deadline = time.monotonic() + PARK_MAX + 10
        while _open_reads(pg_url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_reads(pg_url) == 0  # the sweeper rolled back both engines' reads
        with one.read() as r:
            r.get_value("jobs", b"k")
        assert _open_reads(pg_url) == 1
        one.close()
        assert _open_reads(pg_url) == 0
    finally:
        one.close()
        two.close()


def test_a_read_once_is_one_prepared_statement_outside_a_transaction(pg_url: str) -> None:
    """`read_once` (the mount's lookup and getattr): one round trip, no transaction left
    open on the server (nothing parked, nothing to roll back), the newest commit seen;
    on a parked connection its ROLLBACK goes in the same message; a second query in
    it still answers (from a transaction of its own)."""
    import psycopg

    one, two = PgEngine(pg_url), PgEngine(pg_url)
    trips = [0]
    wait = psycopg.Connection.wait

    def counting(self: psycopg.Connection[object], *a: object, **k: object) -> object:
        trips[0] += 1
        return wait(self, *a, **k)  # type: ignore[arg-type]

    try:
        with one.write() as w:
            w.put_value("jobs", b"k", b"v1")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(psycopg.Connection, "wait", counting)
            for value in (b"v2", b"v3"):
                with two.write() as w:
                    w.put_value("jobs", b"k", value)
                trips[0] = 0
                with one.read_once() as r:
                    assert r.get_value("jobs", b"k") == value
                assert trips[0] == 1
                assert _open_reads(pg_url) == 0
            with one.read() as r:  # parks its connection
                r.get_value("jobs", b"k")
            assert _open_reads(pg_url) == 1
            trips[0] = 0
            with one.read_once() as r:
                assert r.get_value("jobs", b"k") == b"v3"
                assert r.get_value("jobs", b"other") is None  # a second query
            assert trips[0] == 2
        one.close()
        assert _open_reads(pg_url) == 0
    finally:
        one.close()
        two.close()


def test_cached_policy_and_lost_chunks_follow_every_writer(pg_url: str) -> None:
    """The tier policy and the lost-chunk list are kept by the engine against the
    version row: a write by this engine is seen at once, one by another engine by
    the next read transaction that has begun (its first query read the version)."""
    from gfs.store import lost_chunks, set_lost_chunks

    one, two = PgEngine(pg_url), PgEngine(pg_url)
    try:
        assert TierPolicy.current(one) == TierPolicy()
        with one.read() as r:
            assert lost_chunks(r) == frozenset()
        with one.write() as w:
            TierPolicy(write_tier="cold").save(w)
        assert TierPolicy.current(one).write_tier == "cold"  # its own write, at once
        with two.write() as w:
            TierPolicy(write_tier="warm").save(w)
            set_lost_chunks(w, [b"l" * 16])
        with one.read() as r:
            assert r.get_inode(ROOT_INO) is not None  # begins: reads the version row
            assert TierPolicy.load(r).write_tier == "warm"
            assert lost_chunks(r) == frozenset({b"l" * 16})
        with one.write() as w:  # a write reads the row itself (read-modify-write)
            assert lost_chunks(w) == frozenset({b"l" * 16})
            set_lost_chunks(w, [])
        with one.read() as r:
            assert lost_chunks(r) == frozenset()
    finally:
        one.close()
        two.close()


def test_pool_records_cached_by_version_see_another_engines_change(pg_url: str) -> None:
    """One engine keeps the pool records; another adds a pool. The first engine's next
    transaction reads the pool version with its first query and drops its stale copy."""
    from gfs.meta import PoolRecord

    one, two = PgEngine(pg_url), PgEngine(pg_url)
    try:
        with one.read() as r:
            r.get_meta("format")
            before = [p.id for p in r.iter_pools()]
        with two.write() as w:
            w.put_pool(PoolRecord(77, "added", "memory://added", "cold", 0))
        with one.read() as r:
            r.get_meta("format")  # begins the snapshot
            assert [p.id for p in r.iter_pools()] == [*before, 77]
            assert r.get_pool(77) is not None and r.get_pool(77).tier == "cold"
    finally:
        one.close()
        two.close()


def test_rows_read_then_written_in_one_transaction_read_back_the_write(pg_url: str) -> None:
    """A row read (kept by the transaction), then written, then the writes sent by a scan:
    reading it again gives what was written, not the first read."""
    from dataclasses import replace

    eng = PgEngine(pg_url)
    try:
        with eng.write() as w:
            root = w.get_inode(ROOT_INO)
            assert root is not None
            w.put_inode(replace(root, mode=0o700))
            w.link(ROOT_INO, "x", 999)
            assert [n for n, _ in w.list_dir(ROOT_INO)] == ["x"]  # sends the writes
            assert w.get_inode(ROOT_INO).mode == 0o700  # type: ignore[union-attr]
            w.unlink(ROOT_INO, "x")
            assert w.lookup(ROOT_INO, "x") is None
        with eng.read() as r:
            assert r.get_inode(ROOT_INO).mode == 0o700  # type: ignore[union-attr]
            assert r.lookup(ROOT_INO, "x") is None
    finally:
        eng.close()


# -- reference counts of identical content -------------------------------------------------


def test_writers_of_identical_content_do_not_conflict_on_its_refcount(
        tmp_path: Path, pg_url: str) -> None:
    """Eight processes write files of one content at once, in their own directories,
    each transaction tried once: every one adds a reference to the same chunk. The
    count changes are rows of their own, so none conflicts, none is lost, and gc
    keeps the chunk until the last file goes."""
    clients, files = 8, 40
    content = b"the same bytes in every file " * 40
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        for k in range(clients):
            fs.mkdir(f"/c{k}")
        fs.write_bytes("/first", content)  # the chunk exists before the race
    _gated_workers(CREATE_WORKER, [[str(tmp_path / "s"), str(k), str(files), content.decode()]
                                   for k in range(clients)])
    with Client(tmp_path / "s") as fs:
        with fs.engine.read() as r:
            recs = list(r.iter_chunks())
        assert [c.refcount for c in recs] == [clients * files + 1]
        assert fs.fsck().ok
        assert isinstance(fs.engine, PgEngine)
        assert fs.engine.fold_refcounts() == 1  # more than FOLD_AT rows: folded
        with fs.engine.read() as r:
            assert [c.refcount for c in r.iter_chunks()] == [clients * files + 1]
        for k in range(clients):
            for i in range(files):
                fs.rm(f"/c{k}/f{i}")
        assert collect(fs.store, grace=0).chunks_removed == 0  # /first still holds it
        assert fs.read_bytes("/first") == content
        assert fs.fsck().ok
        fs.rm("/first")
        assert collect(fs.store, grace=0).chunks_removed == 1
        assert fs.fsck().ok


# -- a refused COMMIT ------------------------------------------------------------------------


def test_a_refused_commit_is_run_again_from_scratch(pg_url: str) -> None:
    """A counter is read, then bumped; before the COMMIT (which carries the buffered
    writes) another engine commits a change to the same row, so the server refuses the
    COMMIT message (a serialisation failure). `transact` runs the work again on a new
    snapshot with nothing kept from the refused attempt: no row it read (the new value
    is read), no write it buffered (only the second attempt's marker is stored), and
    the counter goes up once, on top of the other engine's value."""
    one, two = PgEngine(pg_url), PgEngine(pg_url)
    try:
        with one.write() as w:
            w.put_value("jobs", b"n", b"0")
        seen: list[int] = []

        def bump(w: WriteTxn) -> int:
            n = int(w.get_value("jobs", b"n") or b"")
            seen.append(n)
            w.put_value("jobs", b"n", str(n + 1).encode())
            w.put_value("jobs", f"attempt{len(seen)}".encode(), b"")
            assert w.get_value("jobs", b"n") == str(n + 1).encode()  # its own write
            if len(seen) == 1:  # the other writer gets in between the read and COMMIT
                with two.write() as other:
                    other.put_value("jobs", b"n", b"10")
            return n

        assert one.transact(bump) == 10
        assert seen == [0, 10]
        with one.read() as r:
            assert r.get_value("jobs", b"n") == b"11"
            assert [k for k, _ in r.iter_values("jobs", b"attempt")] == [b"attempt2"]
        with one.write() as w:  # the refused attempt's connection went back clean
            w.put_value("jobs", b"n", b"12")
        with two.read() as r:
            assert r.get_value("jobs", b"n") == b"12"
    finally:
        one.close()
        two.close()


def test_a_pool_written_before_a_scan_is_seen_by_the_next_read(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool record written, then the writes sent early by a scan in the same
    transaction: the engine's copy of the pool records is dropped at COMMIT all the
    same, so its next read (even one served from the copy) sees the new pool."""
    import gfs.meta.pg_engine as pg
    from gfs.meta import PoolRecord

    monkeypatch.setattr(pg, "POOLS_FRESH", 600.0)  # the copy would serve for long
    eng = PgEngine(pg_url)
    try:
        with eng.read() as r:
            r.get_meta("format")
            assert [p.id for p in r.iter_pools()] == []
        with eng.write() as w:
            w.put_pool(PoolRecord(5, "five", "memory://five", "hot", 0))
            assert list(w.iter_values("rules")) == []  # a scan: the writes go now
        with eng.read() as r:
            assert [p.id for p in r.iter_pools()] == [5]
    finally:
        eng.close()


def test_a_message_that_never_left_begins_nothing_and_keeps_the_writes(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first message of a write transaction (BEGIN, a buffered write, a scan) fails
    before it reaches the server, and the caller goes on: the write is still buffered,
    the next message sends BEGIN (nothing runs outside the transaction), and an abort
    leaves nothing behind."""
    import psycopg

    execute = psycopg.ClientCursor.execute
    failures = [1]

    def once(self: psycopg.ClientCursor[object], *a: object, **k: object) -> object:
        if failures[0]:
            failures[0] -= 1
            raise psycopg.InterfaceError("injected: the message was not sent")
        return execute(self, *a, **k)  # type: ignore[arg-type]

    class Abort(Exception):
        pass

    eng = PgEngine(pg_url)
    try:
        monkeypatch.setattr(psycopg.ClientCursor, "execute", once)
        with pytest.raises(Abort), eng.write() as w:
            w.put_value("jobs", b"a", b"1")
            with pytest.raises(psycopg.InterfaceError):
                list(w.iter_values("jobs"))
            w.put_value("jobs", b"b", b"2")
            assert [k for k, _ in w.iter_values("jobs")] == [b"a", b"b"]
            raise Abort
        monkeypatch.undo()
        with eng.read() as r:
            assert list(r.iter_values("jobs")) == []
    finally:
        eng.close()


def test_a_range_of_values_goes_in_one_statement_in_order_with_the_writes(
        pg_url: str) -> None:
    """`delete_values` deletes every key under its prefix, the ones this transaction
    wrote before it too, but not the ones it writes after, nor other prefixes or
    tables; the rows it had read are gone from its view at once; a prefix of 0xff bytes
    reaches the end of the table."""
    eng = PgEngine(pg_url)
    try:
        with eng.write() as w:
            for key in (b"a1", b"a2", b"ab", b"b1", b"\xff\xff1"):
                w.put_value("xattrs", key, b"old")
            w.put_value("jobs", b"a1", b"other table")
        with eng.write() as w:
            assert w.get_value("xattrs", b"a1") == b"old"  # read, then deleted
            w.put_value("xattrs", b"a3", b"written before")
            w.delete_values("xattrs", b"a")
            w.delete_values("xattrs", b"\xff\xff")
            assert w.get_value("xattrs", b"a1") is None
            assert w.get_value("xattrs", b"a3") is None
            assert w.get_value("xattrs", b"a2") is None  # never read: gone all the same
            assert w.get_value("xattrs", b"\xff\xff1") is None
            assert dict(w.iter_values("xattrs")) == {b"b1": b"old"}
            w.put_value("xattrs", b"a4", b"written after")
        with eng.read() as r:
            assert dict(r.iter_values("xattrs")) == {b"a4": b"written after", b"b1": b"old"}
            assert r.get_value("jobs", b"a1") == b"other table"
        with pytest.raises(ValueError, match="prefix to delete must not be empty"), \
                eng.write() as w:
            w.delete_values("xattrs", b"")
        with eng.read() as r:
            assert dict(r.iter_values("xattrs")) == {b"a4": b"written after", b"b1": b"old"}
    finally:
        eng.close()


def test_read_ahead_keeps_what_a_walk_meets_and_locks_it(tmp_path: Path, pg_url: str) -> None:
    """A walk read ahead answers the lookups that follow (a missing name as missing, past
    it nothing), and in a write transaction locks its rows like a lookup: another
    writer's deletion of an entry the walk read waits until the first one ends."""

    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        fs.mkdir("/a/b", parents=True)
        fs.write_bytes("/a/b/f", b"x")
        b_ino = fs.stat("/a/b").ino
        with fs.engine.read() as r:
            r.read_ahead([(ROOT_INO, ["a", "b", "f"]), (ROOT_INO, ["a", "nope", "f"])],
                         manifests=True)
            assert r.lookup(b_ino, "f") is not None
            assert r.lookup(fs.stat("/a").ino, "nope") is None
            m = r.get_manifest(namespace.resolve(r, "/a/b/f").ino)
            assert m is not None and m.size == 1
        other = PgEngine(pg_url)
        done = threading.Event()

        def remove() -> None:
            other.transact(lambda o: namespace.remove(o, "/a/b/f"))
            done.set()
        try:
            fs.engine._guesses.clear()  # read from the server (assumed rows: the guard locks)
            with fs.engine.write() as w:
                w.read_ahead([(b_ino, ["f"])])
                t = _blocked(remove, done, pg_url)
                assert w.lookup(b_ino, "f") is not None
            t.join(timeout=30)
            assert done.is_set()  # once the first ended
        finally:
            other.close()
        assert not fs.exists("/a/b/f")


def _blocked(fn: Callable[[], None], done: threading.Event, pg_url: str) -> threading.Thread:
    """Start `fn` (which sets `done` when through) on a thread and return it once it
    waits for a row lock on the server; fails if it finishes instead."""
    import time

    t = threading.Thread(target=fn)
    t.start()
    deadline = time.monotonic() + 30
    while not _waiting_on_locks(pg_url) and not done.is_set() and \
            time.monotonic() < deadline:
        time.sleep(0.02)  # polling the server, with a deadline
    assert not done.is_set() and _waiting_on_locks(pg_url)
    return t


def _waiting_on_locks(pg_url: str) -> int:
    """Sessions of the store at `pg_url` waiting for a row lock."""
    import psycopg

    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.rsplit("&schema=", 1)[0], autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                           "'Lock' AND query LIKE %s", (f'%"{schema}"%',)).fetchone()
    return int(row[0]) if row else 0


def test_only_a_read_transaction_reads_the_version_row(pg_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool records' version row comes with a read transaction's first message (its
    cached copies are checked against it); a write trusts no copy and does not read it."""
    import psycopg

    sent: list[object] = []
    execute = psycopg.ClientCursor.execute

    def spying(self: psycopg.ClientCursor[object], query: object, params: object = None,
               **k: object) -> object:
        sent.extend(params or ())  # type: ignore[call-overload]
        return execute(self, query, params, **k)  # type: ignore[arg-type]

    eng = PgEngine(pg_url)
    try:
        monkeypatch.setattr(psycopg.ClientCursor, "execute", spying)
        with eng.write() as w:
            assert w.get_value("jobs", b"k") is None
            w.put_value("jobs", b"k", b"v")
        assert sent and "pools.version" not in sent
        with eng.read() as r:
            assert r.get_value("jobs", b"k") == b"v"
        assert "pools.version" in sent
    finally:
        monkeypatch.undo()
        eng.close()


def test_a_write_statement_is_composed_once_per_shape(pg_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits that write the same number of rows to a table reuse one statement text
    (composing it costs more than sending it); the rows each writes still land."""
    from gfs.meta import pg_engine

    composed: list[tuple[str, bool, int]] = []
    write_text = pg_engine._Txn._write_text

    def counting(self: pg_engine._Txn, table: str, delete: bool, n: int) -> object:
        composed.append((table, delete, n))
        return write_text(self, table, delete, n)

    monkeypatch.setattr(pg_engine._Txn, "_write_text", counting)
    eng = PgEngine(pg_url)
    for k in [k for k in pg_engine._QUERIES if k[0] == eng.schema]:
        del pg_engine._QUERIES[k]  # composed by an earlier test
    try:
        for i in range(5):
            with eng.write() as w:
                w.put_value("jobs", f"k{i}".encode(), b"v")
                w.put_value("jobs", f"j{i}".encode(), b"v")
        assert composed.count(("kv", False, 2)) == 1
        with eng.read() as r:
            assert len(dict(r.iter_values("jobs"))) == 10
    finally:
        eng.close()


def test_a_batch_of_mount_renames_reads_its_entries_in_one_round_trip(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's changes committed together (TxnBatcher) have their entries read ahead
    in one query: three renames cost that query and COMMIT (each reading its own took a
    round trip per rename), and all three land."""
    import psycopg

    from gfs.mount_txn_batch import TxnBatcher, _Change

    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        fs.mkdir("/d")
        for i in range(3):
            fs.write_bytes(f"/d/f{i}", b"x")
        d_ino = fs.stat("/d").ino
        batcher = TxnBatcher(fs.engine)
        changes: list[_Change[None]] = [
            _Change(lambda w, i=i: _mount_rename(w, d_ino, f"f{i}", f"g{i}"),
                    [(d_ino, [f"f{i}"]), (d_ino, [f"g{i}"])]) for i in range(3)]
        trips = [0]
        wait = psycopg.Connection.wait

        def counting(self: psycopg.Connection[object], *a: object, **k: object) -> object:
            trips[0] += 1
            return wait(self, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(psycopg.Connection, "wait", counting)
        batcher._commit(changes)
        monkeypatch.undo()
        assert [ch.error for ch in changes] == [None] * 3
        assert trips[0] == 2
        assert sorted(s.path for s in fs.ls("/d")) == ["/d/g0", "/d/g1", "/d/g2"]


def test_a_batch_of_mount_creates_reads_its_entries_in_one_round_trip(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files created through the mount and committed together (one group commit) have
    their names (and their directory) checked in one query with the chunks committed
    meanwhile and the tail pack, not a lookup each: the commit transaction of 8 new
    files costs 2 round trips (that query, COMMIT; 4 with a query each, 13 before),
    and their small contents have their chunks looked up together too (one query, not
    one per file): 8 round trips in all, 25 before. All 8 land with their content."""
    import traceback

    import psycopg

    from gfs.mount_names import NameHints
    from gfs.mount_writeback import WriteBack
    from gfs.read import cached

    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        fs.mkdir("/d")
        d_ino = fs.stat("/d").ino
        cache = cached(fs.store.source, 16 << 20)
        wb = WriteBack(fs, cache, NameHints())
        try:
            dirties = []
            for i in range(8):
                node = wb.create(d_ino, f"f{i}", 0o644, 0, 0)
                d = wb.open_writer(node.ino)
                wb.write(d, wb.reader(node.ino)[0], f"data {i}".encode(), 0)
                dirties.append(d)
            trips, in_txn = [0], [0]
            wait = psycopg.Connection.wait

            def counting(self: psycopg.Connection[object], *a: object, **k: object) -> object:
                trips[0] += 1
                if any(f.name == "transact" for f in traceback.extract_stack()):
                    in_txn[0] += 1
                return wait(self, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(psycopg.Connection, "wait", counting)
            wb._commit_batch(dirties)
            monkeypatch.undo()
            for d in dirties:
                wb.drop_writer(d)
        finally:
            wb.close()
            cache.close()
        assert in_txn[0] <= 2
        assert trips[0] <= 8  # with the writer session's own (25 before)
        assert sorted(s.path for s in fs.ls("/d")) == [f"/d/f{i}" for i in range(8)]
        assert fs.read_bytes("/d/f7") == b"data 7"


def test_chunks_and_packs_read_ahead_answer_without_a_round_trip_and_lock(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_ahead(chunks=, packs=)` (a writer session's commit): which chunks exist and
    the packs' records come in the walk's query, so `present_chunks` and `get_pack`
    then cost nothing; a chunk this transaction writes counts as present once its write
    was sent; in a write transaction the rows are locked like a lookup's (another
    writer's deletion of a chunk read ahead waits)."""

    import psycopg

    eng = PgEngine(pg_url)
    other = PgEngine(pg_url)
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    pack = PackRecord(b"p" * 16, 0, 100, 1, 1, 10, 1)
    try:
        with eng.write() as w:
            w.put_chunk(ChunkRecord(a, 1, 1, 0, 1, ()))
            w.put_pack(pack)
        trips = [0]
        wait = psycopg.Connection.wait

        def counting(self: psycopg.Connection[object], *x: object, **k: object) -> object:
            trips[0] += 1
            return wait(self, *x, **k)  # type: ignore[arg-type]
        done = threading.Event()

        def remove() -> None:
            other.transact(lambda o: o.delete_chunk(a))
            done.set()
        with eng.write() as w:
            monkeypatch.setattr(psycopg.Connection, "wait", counting)
            w.read_ahead([], chunks=[a, b], packs=[pack.id, b"q" * 16])
            assert trips[0] == 1
            assert w.present_chunks([a, b]) == {a}
            assert w.get_pack(pack.id) == pack and w.get_pack(b"q" * 16) is None
            assert trips[0] == 1
            monkeypatch.undo()
            w.put_chunk(ChunkRecord(b, 1, 1, 0, 1, ()))
            list(w.iter_pools())  # a scan: the buffered write is sent
            assert w.present_chunks([a, b, c]) == {a, b}
            t = _blocked(remove, done, pg_url)
        t.join(timeout=30)
        assert done.is_set()  # once the first ended
    finally:
        eng.close()
        other.close()


def test_a_parked_read_wakes_no_thread(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ending a read (parking its connection) notifies nobody: the sweeper looks on its
    own every PARK_MAX (a notify on every read cost the reader a thread switch)."""
    eng = PgEngine(pg_url)
    try:
        with eng.read() as r:
            r.get_value("jobs", b"k")
        wakes = [0]
        notify = eng._park_cv.notify

        def counting(n: int = 1) -> None:
            wakes[0] += 1
            notify(n)
        monkeypatch.setattr(eng._park_cv, "notify", counting)
        for _ in range(20):
            with eng.read() as r:
                r.get_value("jobs", b"k")
        assert wakes[0] == 0  # (20 before)
    finally:
        monkeypatch.undo()
        eng.close()


def test_a_concat_that_removes_its_parts_keeps_every_chunk_on_postgresql(
        tmp_path: Path, pg_url: str) -> None:
    """A concat (an S3 multipart completion) adds the parts' references to the new file
    and then removes the parts, in one transaction; the removal's scan sends the first
    change to the server. The second change used to replace it, so each chunk's count
    ended one too low: gc then deleted the chunks of the joined file."""
    with Client.init(tmp_path / "state", meta=pg_url) as fs:
        parts = [os.urandom(150_000) for _ in range(3)]
        fs.mkdir("/parts")
        for i, data in enumerate(parts):
            fs.write_bytes(f"/parts/{i}", data)
        fs.concat("/whole", [f"/parts/{i}" for i in range(3)], remove=["/parts"])
        with fs.engine.read() as r:
            assert {c.refcount for c in r.iter_chunks()} == {1}
        assert collect(fs.store, grace=0).chunks_removed == 0
        fs.store.source.close()  # no cached blob: the read goes to the pool
        assert fs.read_bytes("/whole") == b"".join(parts)
        assert fs.fsck().ok
