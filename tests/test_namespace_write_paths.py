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
        with eng.read() as r:
            stored = {"inodes": sorted(r.iter_inodes(), key=lambda n: n.ino),
                      "dirents": {d: list(r.list_dir(d)) for d in sorted(set(dirs))},
                      "manifests": sorted(r.iter_manifests(), key=lambda m: m[0]),
                      "next_ino": r.get_meta("next_ino")}
    finally:
        eng.close()
    return outcomes, stored


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
