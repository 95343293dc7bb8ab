"""The PostgreSQL metadata engine: the conformance suite on a real server, plus
schema versioning, several writer processes and kill -9 mid-transaction."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import namespace
from gfs.cli import main
from gfs.client import Client
from gfs.errors import ConfigError, StateError
from gfs.gc import collect
from gfs.meta import ROOT_INO, ChunkRef, Manifest, MetaEngine, WriteTxn
from gfs.meta.pg_engine import SCHEMA_VERSION, PgEngine
from gfs.testing.meta_suite import MetaEngineConformance
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
import contextlib, sys
from gfs.errors import MetaConflictError
from gfs.meta.pg_engine import PgEngine
from gfs.tiering.heat import HeatTracker

class Counting(PgEngine):
    conflicts = 0

    @contextlib.contextmanager
    def write(self):
        try:
            with PgEngine.write(self) as txn:
                yield txn
        except MetaConflictError:
            Counting.conflicts += 1
            raise

url, rounds = sys.argv[1], int(sys.argv[2])
engine = Counting(url)
heat = HeatTracker(engine, 3600.0)
sys.stdin.read(1)  # the gate: both workers start together
for _ in range(rounds):
    heat.record([b"a" * 16, b"b" * 16])
    heat.flush()
engine.close()
print(Counting.conflicts)
"""


def test_conflicting_heat_flushes_from_two_processes_are_retried_not_lost(pg_url: str) -> None:
    """Two processes add to the same heat counters at once: PostgreSQL aborts one of
    two conflicting transactions, `transact` runs it again, no read is lost."""
    rounds = 150
    PgEngine(pg_url).close()  # the schema exists before the workers race
    procs = [subprocess.Popen([sys.executable, "-c", HEAT_WORKER, pg_url, str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outs = []
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("g")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]  # no MetaConflictError escaped
        outs.append(int(out))
    assert sum(outs) > 0  # the workers did conflict, and were retried
    engine = PgEngine(pg_url)
    try:
        with engine.read() as txn:
            for cid in (b"a" * 16, b"b" * 16):
                h = chunk_heat(txn, cid)
                assert h is not None and h.reads == 2 * rounds
    finally:
        engine.close()
