"""Write transactions that assume rows this process just read or wrote and check them
with their COMMIT (gfs.meta.pg_guess), on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gfs import namespace
from gfs.client import Client
from gfs.errors import ExistsError, NotFoundError
from gfs.meta import WriteTxn
from gfs.meta.pg_engine import PgEngine
from gfs.meta.pg_guess import Guesses
from gfs.testing.postgres import round_trips


def _rename(parent: int, old: str, new: str, noreplace: bool = False
            ) -> Callable[[WriteTxn], None]:
    """What the mount's rename does in its transaction."""
    def fn(txn: WriteTxn) -> None:
        txn.read_ahead([(parent, [old]), (parent, [new])])
        namespace.lookup(txn, parent, old)
        d = namespace.get(txn, parent)
        namespace.rename_in(txn, d, old, d, new, noreplace=noreplace)
    return fn


def _looked_up(eng: PgEngine, parent: int, *names: str) -> None:
    """Each name looked up as the kernel does before a rename (a miss is fine)."""
    for n in names:
        with eng.read_once() as txn:
            txn.lookup(parent, n)


def _with_file(a: Client) -> tuple[int, PgEngine]:
    """Directory /d holding file /d/f (content b"f"), made by `a`: (/d's inode, a's
    engine)."""
    a.mkdir("/d")
    a.write_bytes("/d/f", b"f")
    eng = a.engine
    assert isinstance(eng, PgEngine)
    return a.stat("/d").ino, eng


def _files(fs: Client, n: int) -> tuple[int, PgEngine]:
    """Directory /d holding files /d/f0 ... (content b"file I"): (/d's inode, engine)."""
    fs.mkdir("/d")
    for i in range(n):
        fs.write_bytes(f"/d/f{i}", f"file {i}".encode())
    eng = fs.engine
    assert isinstance(eng, PgEngine)
    return fs.stat("/d").ino, eng


def _trips(run: Callable[[], object]) -> int:
    """Round trips `run` takes."""
    with round_trips() as n:
        run()
    return n[0]


def test_a_rename_after_its_lookups_is_one_round_trip(tmp_path: Path, pg_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's rename right after the kernel looked both names up sends its guard,
    writes and COMMIT in one message (two round trips without the guesses)."""
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        d, eng = _files(fs, 3)
        before = eng._guesses.guarded
        for i in range(3):
            _looked_up(eng, d, f"f{i}", f"g{i}")
            assert _trips(lambda i=i: eng.transact(
                _rename(d, f"f{i}", f"g{i}"))) == 1
        assert eng._guesses.guarded - before == 3 and eng._guesses.stale == 0
        eng._guesses.clear()  # the control: nothing known
        _looked_up(eng, d, "g0")  # (not "h0": its walk is not known whole)
        assert _trips(lambda: eng.transact(_rename(d, "g0", "h0"))) == 2
        assert sorted(s.path for s in fs.ls("/d")) == ["/d/g1", "/d/g2", "/d/h0"]
        assert fs.read_bytes("/d/h0") == b"file 0"
        assert fs.fsck().ok


def test_a_row_changed_by_another_client_fails_the_guard_and_the_rename_reads(
        tmp_path: Path, pg_url: str) -> None:
    """Another client renames the file after this one looked it up: the guard finds
    the entry gone, nothing is changed, and the rename runs again reading, so it
    fails as it would have (ENOENT), and the other client's rename stands."""
    with Client.init(tmp_path / "a", meta=pg_url) as a, \
            Client(tmp_path / "a") as b:
        d, eng = _with_file(a)
        stale = eng._guesses.stale
        _looked_up(eng, d, "f", "g")
        b.mv("/d/f", "/d/x")
        with pytest.raises(NotFoundError):
            eng.transact(_rename(d, "f", "g"))
        assert eng._guesses.stale == stale + 1
        assert sorted(s.path for s in b.ls("/d")) == ["/d/x"]


def test_a_miss_taken_by_another_client_meanwhile_is_not_replaced(tmp_path: Path,
                                                                  pg_url: str) -> None:
    """RENAME_NOREPLACE onto a name this client saw missing but another client created
    since: the guard catches it and the rename fails with EEXIST, both files kept."""
    with Client.init(tmp_path / "a", meta=pg_url) as a, \
            Client(tmp_path / "a") as b:
        d, eng = _with_file(a)
        stale = eng._guesses.stale
        _looked_up(eng, d, "f", "g")
        b.write_bytes("/d/g", b"theirs")
        with pytest.raises(ExistsError):
            eng.transact(_rename(d, "f", "g", noreplace=True))
        assert eng._guesses.stale == stale + 1
        assert b.read_bytes("/d/g") == b"theirs" and b.read_bytes("/d/f") == b"f"


def test_work_that_swallows_a_failed_guard_still_runs_again(tmp_path: Path,
                                                           pg_url: str) -> None:
    """A guard that fails with a read in the middle of the work aborts the transaction
    on the server: work that catches the error and goes on sends nothing more, and the
    transaction runs again from the start (twice in all), reading."""
    with Client.init(tmp_path / "a", meta=pg_url) as a, Client(tmp_path / "a") as b:
        d, eng = _with_file(a)
        _looked_up(eng, d, "f")
        b.mv("/d/f", "/d/x")
        runs: list[bool] = []

        def fn(txn: WriteTxn) -> None:
            txn.read_ahead([(d, ["f"])])
            found = txn.lookup(d, "f") is not None
            with contextlib.suppress(Exception):
                txn.get_meta("store_id")  # a read: the guard goes with it
            runs.append(found)
            txn.put_value("jobs", b"k", b"found" if found else b"gone")

        eng.transact(fn)
        assert runs == [True, False]
        with eng.read() as r:
            assert r.get_value("jobs", b"k") == b"gone"


def test_guesses_keep_the_newest_rows_within_their_age_and_limit() -> None:
    """At most `limit` rows, the oldest noted dropped first (a row noted again counts as
    new); a row older than `age` is not known; forget drops rows."""
    g = Guesses(age=60.0, limit=2)
    g.note("inodes", (1,), b"a")
    g.note("dirents", (1, b"x"), 7)
    g.note("inodes", (1,), b"a2")  # noted again: now the newest
    g.note("inodes", (2,), None)  # (a row known missing)
    g.note("manifests", (1,), b"m")  # not a guessed table
    assert g.get("dirents", (1, b"x")) == (False, None)
    assert g.get("inodes", (1,)) == (True, b"a2") and g.get("inodes", (2,)) == (True, None)
    assert g.get("manifests", (1,)) == (False, None)
    g.forget([("inodes", (1,))])
    assert g.get("inodes", (1,)) == (False, None)
    assert Guesses(age=0.0).get("inodes", (2,)) == (False, None)
    old = Guesses(age=0.0)
    old.note("inodes", (2,), None)
    assert old.get("inodes", (2,)) == (False, None)


def test_a_group_commits_guard_text_is_composed_once_per_shape(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six renames in one transaction (as the mount's group commit sends them) guard
    more than 16 rows; later groups of the same shape reuse the guard's text
    (composing it each time was about 7% of a renaming mount's CPU)."""
    from gfs.meta import pg_engine

    composed: list[tuple[str, ...]] = []
    sent: list[tuple[str, ...]] = []
    real_text, real_params = pg_engine.guard_text, pg_engine.guard_params

    def text(t: Any, keys: list[Any]) -> Any:
        composed.append(tuple(table for table, _ in keys))
        return real_text(t, keys)

    def params(keys: list[Any], values: Any) -> Any:
        sent.append(tuple(table for table, _ in keys))
        return real_params(keys, values)
    monkeypatch.setattr(pg_engine, "guard_text", text)
    monkeypatch.setattr(pg_engine, "guard_params", params)
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        d, eng = _files(fs, 6)
        for old, new in zip("fghj", "ghjk", strict=True):
            for i in range(6):
                _looked_up(eng, d, f"{old}{i}", f"{new}{i}")
            eng.transact(lambda txn, old=old, new=new: [
                _rename(d, f"{old}{i}", f"{new}{i}")(txn) for i in range(6)])
        assert sorted(s.path for s in fs.ls("/d")) == [f"/d/k{i}" for i in range(6)]
    big = [shape for shape in sent if len(shape) > 16]
    assert len(big) >= 3 and len(set(big)) < len(big)  # one shape guarded again
    assert len(composed) == len(set(composed))  # each shape composed once
