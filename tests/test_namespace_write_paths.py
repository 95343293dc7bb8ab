"""`write_file_in` and `mkdir_in` (a put's commit calls them once a file and directory,
written with fewer calls) take the same decisions and write the same metadata as the
plain composition of the module's helpers they replaced, kept here as the reference."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import namespace as ns
from gfs import paths
from gfs.errors import ExistsError, IsADirError, NotADirError
from gfs.meta import ROOT_INO, ChunkRef, Inode, Kind, LmdbEngine, Manifest, WriteTxn
from gfs.meta.records import inode_with


def ref_write_file_in(txn: WriteTxn, parent: Inode, name: str, refs: list[ChunkRef], *,
                      mode: int | None = None, uid: int | None = None, gid: int | None = None,
                      mtime_ns: int | None = None, touch: bool = True,
                      path: str = "") -> Manifest | None:
    existing = ns.child(txn, parent, name)
    if existing is not None and existing.kind == Kind.DIR:
        raise IsADirError(path or name)
    if existing is not None and existing.kind == Kind.FILE:
        return ns.write_content(txn, inode_with(
            existing, mode=existing.mode if mode is None else mode & 0o7777,
            uid=existing.uid if uid is None else uid,
            gid=existing.gid if gid is None else gid), refs, mtime_ns=mtime_ns)
    now = ns.now_ns()
    if existing is not None:
        ns._drop_link(txn, existing, now)
    node = ns._new_inode(txn, parent.ino, Kind.FILE,
                         ns.DEFAULT_FILE_MODE if mode is None else mode, now, uid, gid,
                         mtime_ns=mtime_ns, size=sum(r.length for r in refs), version=1)
    txn.link(parent.ino, name, node.ino)
    if touch:
        ns._touch_dir(txn, parent, now)
    else:
        ns.entries_changed(txn, parent.ino)
    txn.put_inode(node)
    txn.put_manifest(node.ino, Manifest(node.version, tuple(refs)))
    return None


def ref_mkdir_in(txn: WriteTxn, parent: Inode, name: str, mode: int = ns.DEFAULT_DIR_MODE, *,
                 uid: int | None = None, gid: int | None = None, exist_ok: bool = False,
                 touch: bool = True, atime_ns: int | None = None,
                 mtime_ns: int | None = None) -> Inode:
    existing = ns.child(txn, parent, paths.check_name(name))
    if existing is not None:
        if existing.kind == Kind.DIR and exist_ok:
            return existing
        raise ExistsError(name) if existing.kind == Kind.DIR else NotADirError(name)
    now = ns.now_ns()
    new = ns._new_inode(txn, parent.ino, Kind.DIR, mode, now, uid, gid, mtime_ns=mtime_ns,
                        atime_ns=atime_ns)
    deferred = None if touch else ns._DEFERRED.get(id(txn))
    if deferred is not None:
        deferred[new.ino] = new
    else:
        txn.put_inode(new)
    txn.link(parent.ino, name, new.ino)
    if touch:
        ns._touch_dir(txn, parent, now, subdirs=1)
    else:
        ns._count_subdirs(txn, parent.ino, 1)
    return new


NAMES = ["a", "b", "c", "d"]
CHUNKS = [ChunkRef(bytes([i]) * 16, 10 * i + 1) for i in range(4)]
ops = st.tuples(
    st.sampled_from(["file", "mkdir", "symlink"]),
    st.integers(0, 3),  # parent: the n-th directory made so far (0: the root)
    st.sampled_from(NAMES),
    st.one_of(st.none(), st.integers(0, 0o7777 | 0o170000)),  # mode (type bits dropped)
    st.one_of(st.none(), st.integers(0, 70000)),  # uid and gid
    st.one_of(st.none(), st.integers(-(1 << 40), 1 << 62)),  # mtime_ns
    st.booleans(),  # touch / exist_ok
    st.lists(st.sampled_from(CHUNKS), max_size=3),
)
txns = st.lists(st.tuples(st.booleans(), st.lists(ops, min_size=1, max_size=6)),
                min_size=1, max_size=5)


@contextlib.contextmanager
def _clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """time.time_ns counting up from a fixed start: both runs see the same times."""
    now = iter(range(10**18, 10**18 + 10**6))
    with monkeypatch.context() as m:
        m.setattr(time, "time_ns", lambda: next(now))
        yield


def _run(tmp: Path, plan: list[tuple[bool, list[Any]]],
         write_file_in: Callable[..., Manifest | None], mkdir_in: Callable[..., Inode],
         monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], dict[str, Any]]:
    """Apply `plan` (transactions of ops, each maybe `versions_coalesced`); returns what
    each op returned or raised, and everything stored."""
    outcomes: list[Any] = []
    dirs = [ROOT_INO]
    with _clock(monkeypatch):  # the root's times too
        eng = LmdbEngine(str(tmp), sync=False)
    try:
        with _clock(monkeypatch):
            for coalesced, batch in plan:
                made: list[int] = []

                def apply(txn: WriteTxn, batch: list[Any] = batch, coalesced: bool = coalesced,
                          made: list[int] = made) -> None:
                    block = ns.versions_coalesced(txn) if coalesced else contextlib.nullcontext()
                    with block:
                        for kind, at, name, mode, ids, mtime, flag, refs in batch:
                            parent = ns.get(txn, (dirs + made)[at % len(dirs + made)])
                            if kind == "file":
                                outcomes.append(write_file_in(
                                    txn, parent, name, refs, mode=mode, uid=ids, gid=ids,
                                    mtime_ns=mtime, touch=flag))
                            elif kind == "mkdir":
                                node = mkdir_in(txn, parent, name, mode or 0o755, uid=ids,
                                                gid=ids, exist_ok=flag, touch=flag,
                                                atime_ns=mtime, mtime_ns=mtime)
                                outcomes.append(node)
                                made.append(node.ino)
                            elif ns.child(txn, parent, name) is None:
                                ns.symlink_in(txn, parent, name, "t", touch=flag)

                try:
                    eng.transact(apply)
                    dirs.extend(made)
                except (ExistsError, IsADirError, NotADirError) as e:
                    outcomes.append(type(e))  # the transaction aborted
        stored = _stored(eng, sorted(set(dirs)))
    finally:
        eng.close()
    return outcomes, stored


def _stored(eng: LmdbEngine, dirs: list[int]) -> dict[str, Any]:
    """Every inode, manifest and the next inode number, and the entries of `dirs`."""
    with eng.read() as r:
        return {"inodes": sorted(r.iter_inodes(), key=lambda n: n.ino),
                "dirents": {d: list(r.list_dir(d)) for d in dirs},
                "manifests": sorted(r.iter_manifests(), key=lambda m: m[0]),
                "next_ino": r.get_meta("next_ino")}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=txns)
def test_write_paths_match_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         plan: list[tuple[bool, list[Any]]]) -> None:
    import uuid

    run = tmp_path / uuid.uuid4().hex
    got = _run(run / "new", plan, ns.write_file_in, ns.mkdir_in, monkeypatch)
    want = _run(run / "ref", plan, ref_write_file_in, ref_mkdir_in, monkeypatch)
    assert got == want


#: A file for `write_files_in`: (parent index, name, mode, ids, mtime, refs); two
#: parents and names the setup never makes, so that runs of new files are common.
file_ops = st.tuples(st.integers(0, 1), st.sampled_from([*NAMES, "e", "f", "g"]),
                     st.integers(0, 0o7777),
                     st.integers(0, 70000), st.integers(-(1 << 40), 1 << 62),
                     st.lists(st.sampled_from(CHUNKS), max_size=3))
runs = st.lists(st.tuples(st.booleans(), st.lists(file_ops, min_size=1, max_size=6)),
                min_size=1, max_size=4)


def _run_files(tmp: Path, setup: list[tuple[bool, list[Any]]], plan: list[Any],
               together: bool, monkeypatch: pytest.MonkeyPatch,
               ) -> tuple[list[Any], dict[str, Any]]:
    """`setup` applied as `_run` does, then each of `plan`'s transactions of file runs:
    with `together`, each run of files with one parent in one `write_files_in`, else
    `write_file_in(touch=False)` a file. What each returned or raised, and everything
    stored after."""
    outcomes: list[Any] = []
    _run(tmp, setup, ns.write_file_in, ns.mkdir_in, monkeypatch)
    eng = LmdbEngine(str(tmp), sync=False)
    try:
        with eng.read() as r:
            dirs = sorted(n.ino for n in r.iter_inodes() if n.kind == Kind.DIR)
        for k, (coalesced, batch) in enumerate(plan):
            now = 10**18 + k
            done: list[Any] = []  # what the transaction's calls returned, if it commits

            def apply(txn: WriteTxn, batch: list[Any] = batch, coalesced: bool = coalesced,
                      now: int = now, done: list[Any] = done) -> None:
                block = ns.versions_coalesced(txn) if coalesced else contextlib.nullcontext()
                with block:
                    i = 0
                    while i < len(batch):
                        j = i + 1
                        while together and j < len(batch) and batch[j][0] == batch[i][0]:
                            j += 1
                        parent = ns.get(txn, dirs[batch[i][0] % len(dirs)])
                        files = [(name, refs, mode, ids, ids, mtime)
                                 for _, name, mode, ids, mtime, refs in batch[i:j]]
                        if together:
                            done.extend(ns.write_files_in(txn, parent, files, now=now))
                        else:
                            done.extend([ns.write_file_in(
                                txn, parent, name, refs, mode=mode, uid=uid, gid=gid,
                                mtime_ns=mtime, touch=False, now=now)
                                for name, refs, mode, uid, gid, mtime in files])
                        i = j

            try:
                with _clock(monkeypatch):  # a replaced file's ctime: the same in both
                    eng.transact(apply)
                outcomes.extend(done)
            except (IsADirError, NotADirError) as e:
                outcomes.append(type(e))  # the transaction aborted
        stored = _stored(eng, dirs)
    finally:
        eng.close()
    return outcomes, stored


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setup=txns, plan=runs)
def test_files_written_together_match_one_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        setup: list[tuple[bool, list[Any]]], plan: list[Any]) -> None:
    """`write_files_in` (a put's committer: a directory's files in one call, the new
    ones linked by the engine's `add_files`) returns, raises and stores exactly what
    `write_file_in` a file does, over trees holding files, directories and symlinks of
    the same names, names repeated within a run, coalesced or not."""
    import uuid

    run = tmp_path / uuid.uuid4().hex
    got = _run_files(run / "together", setup, plan, True, monkeypatch)
    want = _run_files(run / "single", setup, plan, False, monkeypatch)
    assert got == want


def test_a_name_too_long_in_a_run_aborts_the_whole_run(tmp_path: Path) -> None:
    """A name longer than an LMDB key can hold, among new files written together, raises
    the ValueError `link` raises, and its transaction leaves nothing behind."""
    eng = LmdbEngine(str(tmp_path), sync=False)
    try:
        files = [(name, [CHUNKS[1]], 0o644, 0, 0, 1) for name in ("a", "é" * 300, "b")]

        def apply(txn: WriteTxn) -> None:
            ns.write_files_in(txn, ns.get(txn, ROOT_INO), files, now=5)

        with pytest.raises(ValueError, match="600 bytes in UTF-8, at most 503"):
            eng.transact(apply)
        with eng.read() as r:
            assert list(r.list_dir(ROOT_INO)) == []
            assert [n.ino for n in r.iter_inodes()] == [ROOT_INO]
            assert list(r.iter_manifests()) == []
    finally:
        eng.close()
