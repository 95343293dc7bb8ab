"""Compaction of the LMDB metadata environment (gfs.meta.compact): smaller, same
records, never while open elsewhere, and a kill -9 at any point loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest

import gfs
from gfs.errors import StateError
from gfs.meta import ROOT_INO, Inode, Kind, LmdbEngine
from gfs.meta import compact as compaction
from gfs.meta.records import ChunkRecord, ChunkRef, Location, Manifest
from gfs.testing.meta_suite import dump_store

REPO = str(Path(gfs.__file__).resolve().parent.parent)
DEADLINE = 60.0


def _churned_store(path: str, files: int) -> None:
    """A store whose file holds free pages and part-full pages: files in many
    directories, written, then half of them rewritten and a quarter removed."""
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        for rnd in range(2):
            with eng.write() as w:
                for i in range(files):
                    d = 2 + i % 50
                    if rnd == 0 and i < 50:
                        w.put_inode(Inode(d, ROOT_INO, Kind.DIR, 0o755, 0, 0, 0, 1, 1, 1))
                        w.link(ROOT_INO, f"d{d}", d)
                    ino = 100 + i
                    w.put_inode(Inode(ino, d, Kind.FILE, 0o644, 0, 0, 1000 + rnd * i,
                                      5, 4, 5, rnd + 1))
                    if rnd == 0:
                        w.link(d, f"file-{i * 7919 % files:06d}", ino)
                    cid = (i * 2654435761 % (1 << 64)).to_bytes(16, "big")
                    w.put_manifest(ino, Manifest(rnd + 1, (ChunkRef(cid, 100 + rnd),)))
                    if rnd == 0:
                        w.put_chunk(ChunkRecord(cid, 100, 60, 1, 1,
                                                (Location(0, b"p" * 16, i * 60, 60),)))
            with eng.write() as w:
                for i in range(0, files, 4 + rnd):
                    w.delete_manifest(100 + i)
                    w.put_value("heat", i.to_bytes(4, "big"), b"h" * 20)
    finally:
        eng.close()


def _dump(path: str) -> dict[str, Any]:
    """Every record of the store, but its `format` (3 plain, 5 once packed)."""
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            got = dump_store(r, tuple(range(1, 52)))
            got["meta"].pop("format")
            return got
    finally:
        eng.close()


def test_compaction_shrinks_the_file_and_keeps_every_record(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 6000)
    before, size = _dump(path), os.path.getsize(f"{path}/data.mdb")
    done = compaction.compact(path)
    assert done is not None and done.before == size
    assert done.after < 0.8 * size, done
    assert os.path.getsize(f"{path}/data.mdb") == done.after
    assert _dump(path) == before
    assert not (Path(path) / "compact.tmp").exists()
    eng = LmdbEngine(path, sync=False)  # writable after the swap
    try:
        with eng.read() as r:
            assert r.get_meta("format") == b"6"  # packed: older code refuses it
        with eng.write() as w:
            w.put_value("heat", b"after", b"1")
        with eng.read() as r:
            assert r.get_value("heat", b"after") == b"1"
    finally:
        eng.close()


def test_compaction_waits_for_no_one_and_skips_an_open_store(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 2000)
    size = os.path.getsize(f"{path}/data.mdb")
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        assert compaction.compact(path) is None  # the open engine holds open.lock shared
        assert os.path.getsize(f"{path}/data.mdb") == size
    finally:
        eng.close()
    assert compaction.compact(path, min_bytes=size + 1) is None  # too small to bother
    assert compaction.compact(path, min_free=0.99) is None  # not enough free pages
    assert os.path.getsize(f"{path}/data.mdb") == size
    assert compaction.compact(path) is not None


def test_a_writer_s_last_close_compacts_when_that_pays(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 3000)
    size = os.path.getsize(f"{path}/data.mdb")
    LmdbEngine(path, sync=False).close()  # no write: nothing to compact
    assert os.path.getsize(f"{path}/data.mdb") == size
    monkeypatch.setattr(compaction, "MIN_BYTES", size + 1)
    eng = LmdbEngine(path, sync=False)
    with eng.write() as w:
        w.put_value("heat", b"k", b"v")
    eng.close()
    assert os.path.getsize(f"{path}/data.mdb") == size  # under MIN_BYTES
    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    first, second = LmdbEngine(path, sync=False), LmdbEngine(path, sync=False)
    with first.write() as w:
        w.put_value("heat", b"k", b"w")
    first.close()
    assert os.path.getsize(f"{path}/data.mdb") == size  # `second` still has it open
    second.close()
    assert os.path.getsize(f"{path}/data.mdb") < 0.8 * size
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            assert r.get_value("heat", b"k") == b"w"
    finally:
        eng.close()


_COMPACT = """
import sys
from gfs.meta import compact
print("START", flush=True)
compact.compact(sys.argv[1])
print("DONE", flush=True)
"""


def _kill_while(path: str, when: str, delay: float) -> str:
    """Run a compaction in a child and kill -9 it: once its copy exists (`copy`), or
    `delay` seconds after it started (`delay`). Returns its last line."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_COMPACT), path],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "START"
        end = time.monotonic() + DEADLINE
        tmp = Path(path) / "compact.tmp" / "data.mdb"
        if when == "copy":
            while not tmp.exists() and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.0005)  # polling the child's progress, with a deadline
        else:
            time.sleep(delay)  # a random instant of the compaction, not a synchronisation
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    return proc.stdout.read().strip()


@pytest.mark.parametrize(("when", "delay"), [("copy", 0.0), ("delay", 0.05),
                                             ("delay", 0.15), ("delay", 0.4)])
def test_kill_9_during_compaction_loses_nothing(tmp_path: Path, when: str,
                                                delay: float) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 20000)
    before = _dump(path)
    _kill_while(path, when, delay)
    assert _dump(path) == before  # the old file, or the complete new one
    done = compaction.compact(path)  # the next compaction clears a left copy
    assert done is not None and not (Path(path) / "compact.tmp").exists()
    assert _dump(path) == before


def test_a_session_that_grew_the_file_with_unordered_keys_is_compacted_at_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few free pages, but a session added part-full pages (a restore recording the heat
    of every chunk, keyed by chunk id): its close compacts the file."""
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    with eng.write() as w:
        for i in range(20000):
            w.put_inode(Inode(100 + i, ROOT_INO, Kind.FILE, 0o644, 0, 0, i, 1, 1, 1))
    eng.close()
    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    eng = LmdbEngine(path, sync=False)
    with eng.write() as w:
        for i in range(8000):
            w.put_value("heat", (i * 2654435761 % (1 << 32)).to_bytes(4, "big") * 4, b"h" * 24)
    grown = os.path.getsize(f"{path}/data.mdb")
    eng.close()
    assert os.path.getsize(f"{path}/data.mdb") < 0.9 * grown
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            assert len(list(r.iter_values("heat"))) == 8000
    finally:
        eng.close()


def test_a_close_leaves_a_file_over_the_automatic_limit_to_compact_on_demand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file larger than AUTO_MAX_BYTES is not copied at a writer's close (the copy would
    stall that command); `compact_now` compacts it, and refuses while it is open."""
    path = str(tmp_path / "meta")
    _churned_store(path, 3000)
    size = os.path.getsize(f"{path}/data.mdb")
    before = _dump(path)
    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    monkeypatch.setattr(compaction, "AUTO_MAX_BYTES", size - 1)
    eng = LmdbEngine(path, sync=False)
    with eng.write() as w:
        w.put_value("heat", b"k", b"v")
    with pytest.raises(StateError, match="open in another process"):
        compaction.compact_now(path)
    eng.close()
    assert os.path.getsize(f"{path}/data.mdb") == size  # over the limit: left alone
    assert compaction.compact_now(path, min_free=0.99) is None  # not that much free
    assert os.path.getsize(f"{path}/data.mdb") == size
    done = compaction.compact_now(path)
    assert done is not None and done.after < 0.8 * size
    after = _dump(path)
    assert after.pop("values") != before.pop("values")  # the one value written
    assert after == before
    with pytest.raises(StateError, match="no LMDB metadata environment"):
        compaction.compact_now(str(tmp_path / "nowhere"))


def test_hutong_meta_compact_shrinks_a_store_and_keeps_its_files(tmp_path: Path) -> None:
    from gfs.client import Client

    state = tmp_path / "state"
    fs = Client.init(state)
    try:
        for d in range(7):
            fs.mkdir(f"/d{d}")
        for i in range(600):
            fs.write_bytes(f"/d{i % 7}/f{i}", b"x%d" % i)
        for i in range(0, 600, 2):
            fs.rm(f"/d{i % 7}/f{i}")
        fs.engine.compact_at_close = False  # type: ignore[attr-defined]
    finally:
        fs.close()
    size = os.path.getsize(state / "meta" / "data.mdb")
    env = dict(os.environ, PYTHONPATH=REPO)
    cli = [sys.executable, "-m", "gfs.cli", "--state", str(state), "meta", "compact"]
    holder = Client(state)  # open elsewhere: refused, nothing changed
    try:
        busy = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=DEADLINE)
    finally:
        holder.close()
    assert busy.returncode == 2 and "open in another process" in busy.stderr, busy.stderr
    assert os.path.getsize(state / "meta" / "data.mdb") == size
    out = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"compacted {state / 'meta'}: ")
    assert os.path.getsize(state / "meta" / "data.mdb") < size
    fs = Client(state)
    try:
        assert fs.fsck().ok
        kept = sorted(f"f{i}" for i in range(1, 600, 2) if i % 7 == 3)
        assert sorted(s.name for s in fs.ls("/d3")) == kept
        assert fs.read_bytes("/d1/f1") == b"x1"
    finally:
        fs.close()


def test_hutong_meta_compact_refuses_a_store_on_postgresql(tmp_path: Path) -> None:
    """A store whose config names a PostgreSQL URL is refused before any connection,
    naming the remedy; its embedded leftovers are not touched."""
    from gfs.state import write_config

    state = tmp_path / "state"
    (state / "meta").mkdir(parents=True)
    write_config(state, "", "postgresql://nobody@127.0.0.1:9/none?schema=s")
    out = subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), "meta",
                          "compact"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=DEADLINE)
    assert out.returncode == 2 and "VACUUM FULL" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
    assert list((state / "meta").iterdir()) == []


def test_a_packed_file_compacts_again(tmp_path: Path) -> None:
    """The copy has room for its own churn: compacting a file that compaction just
    packed (so it sits at its map size) used to fail with MDB_MAP_FULL."""
    path = tmp_path / "meta"
    eng = LmdbEngine(str(path), sync=False, compact_at_close=False)
    for start in range(0, 20_000, 4_000):
        with eng.write() as w:
            for i in range(start, start + 4_000):
                w.put_value("xattrs", i.to_bytes(8, "big") + b"u", b"v" * 900)
    eng.close()
    first = compaction.compact(str(path))
    assert first is not None and first.after < first.before
    again = compaction.compact(str(path))
    assert again is not None and again.after <= first.after
    eng = LmdbEngine(str(path), sync=False, compact_at_close=False)
    try:
        with eng.read() as r:
            assert sum(1 for _ in r.iter_values("xattrs")) == 20_000
    finally:
        eng.close()


def test_kill_9_while_repacking_hot_rows_over_blocks_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 20000)
    assert compaction.compact_now(path) is not None  # packed
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.write() as w:  # hot rows over the blocks: overwrites, deletes, new rows
            for i in range(0, 20000, 3):
                w.put_inode(Inode(100 + i, 2 + i % 50, Kind.FILE, 0o600, 0, 0, 7, 5, 4, 5, 9))
                w.delete_manifest(100 + i + 1)
                w.put_value("heat", b"new%06d" % i, b"x")
    finally:
        eng.close()
    before = _dump(path)
    assert _kill_while(path, "copy", 0.0) != "DONE"  # killed while writing the blocks
    assert _dump(path) == before
    assert compaction.compact_now(path) is not None
    assert _dump(path) == before


def test_a_store_smaller_than_a_batch_is_copied_in_one_transaction(tmp_path: Path) -> None:
    """Each commit of the copy frees the pages it copied on write: a transaction per
    table left 6 free pages in a packed smallfiles file; one leaves none."""
    path = str(tmp_path / "meta")
    _churned_store(path, 1500)  # ~7,000 rows: under one batch (20,000)
    compaction.compact_now(path)
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64)
    try:
        assert compaction.free_share(env) == 0.0
    finally:
        env.close()


def test_a_copy_in_many_transactions_keeps_every_record(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "meta")
    _churned_store(path, 1500)
    before = _dump(path)
    monkeypatch.setattr(compaction, "_BATCH", 97)  # commits inside tables and blocks
    compaction.compact_now(path)
    assert _dump(path) == before
