"""A put's walk runs beside its pipeline (gfs.put_walk): the entries reach the put as
they are listed, and yet a conflict, an unreadable file or an interrupt found while the
walk goes on commits nothing (real LMDB, real pools, real local trees)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import put_listings
from gfs import put_walk as walk_mod
from gfs.client import Client
from gfs.errors import IsADirError, NotADirError

Tree = dict[str, "Tree | None"]  # name -> subtree, or None for a file

names = st.sampled_from(["a", "b", "c", "dd", "e0", "é"])
trees: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(names, st.none(), max_size=3),
    lambda kids: st.dictionaries(names, st.one_of(st.none(), kids), max_size=4),
    max_leaves=25)


def _make(root: Path, tree: Tree) -> None:
    root.mkdir()
    for name, sub in tree.items():
        if sub is None:
            (root / name).write_bytes(name.encode())
        else:
            _make(root / name, sub)


def _steps(walk: object) -> list[tuple[bool, tuple[str, ...]]]:
    return [(leaving, e.rel) for leaving, e in walk]  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(trees)
def test_a_walk_goes_on_right_after_any_of_its_steps(tree: Tree) -> None:
    """walk_local(after=step) gives exactly the steps after `step` of a whole walk, for
    every step of it, listing no directory wholly before it."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        _make(src, tree)
        top = os.stat(src)
        whole = _steps(walk_mod.walk_local(src, top))
        assert len({s for s in whole}) == len(whole)  # every step once
        for k, (leaving, rel) in enumerate(whole):
            rest = _steps(walk_mod.walk_local(src, top, after=(rel, leaving)))
            assert rest == whole[k + 1:], (k, rel, leaving)


#: Directories and files a directory: the put's read-ahead takes its first files once
#: three batches of 256 files are gathered, so a tree of 1,024 files is taken while
#: its last directories are still being listed.
BIG = (16, 64)


def _tree(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        sub = root / f"d{d:02d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f:02d}").write_bytes(f"{d}/{f}".encode() * 200)


def _slow_listing(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Each directory listing of a put's walk takes `seconds` longer."""
    real = walk_mod.list_local

    def slow(entry: walk_mod.LocalEntry, *rest: walk_mod.Listings | None,
             ) -> list[walk_mod.LocalEntry]:
        time.sleep(seconds)
        return real(entry, *rest)

    monkeypatch.setattr(walk_mod, "list_local", slow)


def test_files_are_read_while_the_walk_goes_on(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The put takes its first file before the walk has listed the whole tree, and still
    commits nothing before the walk ended (the write session's gate)."""
    src = tmp_path / "src"
    _tree(src, *BIG)
    _slow_listing(monkeypatch, 0.03)
    listed_at_first_file: list[int] = []
    walk_done: list[float] = []
    commits: list[float] = []
    real_wait = walk_mod.PutWalk.wait

    def wait(self: walk_mod.PutWalk) -> None:
        real_wait(self)
        walk_done.append(time.monotonic())

    monkeypatch.setattr(walk_mod.PutWalk, "wait", wait)
    counted = walk_mod.list_local

    def counting(entry: walk_mod.LocalEntry, *rest: walk_mod.Listings | None,
                 ) -> list[walk_mod.LocalEntry]:
        listings.append(entry.path)
        return counted(entry, *rest)

    listings: list[str] = []
    monkeypatch.setattr(walk_mod, "list_local", counting)
    with Client.init(tmp_path / "s", commit_files=2) as fs:
        from gfs import store as store_mod
        real_commit = store_mod.WriteSession._commit_batch

        def commit(self: store_mod.WriteSession, batch: object) -> None:
            real_commit(self, batch)  # type: ignore[arg-type]
            commits.append(time.monotonic())

        monkeypatch.setattr(store_mod.WriteSession, "_commit_batch", commit)
        report = fs.put(src, "/dst", progress=lambda n: listed_at_first_file.append(
            len(listings)))
        assert report.files == BIG[0] * BIG[1]
        assert fs.read_bytes("/dst/d15/f02") == b"15/2" * 200
    # the first file came before the last listing
    assert listed_at_first_file[0] < 1 + BIG[0]
    assert walk_done and commits and min(commits) >= walk_done[0]


def test_a_conflict_found_late_in_the_walk_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file where the namespace has a directory, in the last directory of a tree whose
    first files were already read and sealed into commit batches (2 files a batch):
    the put fails with the conflict and no file of it is visible."""
    src = tmp_path / "src"
    _tree(src, *BIG)
    _slow_listing(monkeypatch, 0.03)
    with Client.init(tmp_path / "s", commit_files=2) as fs:
        fs.mkdir("/dst/d15/f03", parents=True)
        taken: list[int] = []
        with pytest.raises(IsADirError, match="f03"):
            fs.put(src, "/dst", progress=taken.append)
        assert taken  # the put had taken files before the conflict was found
        assert [s.path for s in fs.walk("/dst")] == ["/dst", "/dst/d15", "/dst/d15/f03"]
        assert fs.du("/").files == 0
        assert fs.fsck().ok


def test_a_directory_onto_a_file_found_late_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _tree(src, *BIG)
    _slow_listing(monkeypatch, 0.03)
    with Client.init(tmp_path / "s", commit_files=2) as fs:
        fs.mkdir("/dst")
        fs.write_bytes("/dst/d15", b"a file where the tree has a directory")
        with pytest.raises(NotADirError, match="d15"):
            fs.put(src, "/dst")
        assert fs.du("/").files == 1
        assert [s.path for s in fs.walk("/dst")] == ["/dst", "/dst/d15"]


def test_an_unreadable_file_late_in_the_walk_is_named_and_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk's check comes first even when the put's own read of the file fails
    first; nothing of the tree is committed."""
    if os.geteuid() == 0:  # root reads any file: make faccessat refuse one instead
        real = put_listings.scan_entries

        def refusing(path: str, rel: tuple[str, ...], limit: int) -> list[tuple[str, object,
                                                                            object]]:
            out: list[tuple[str, object, object]] = []
            for p, rows, made in real(path, rel, limit):
                if p.endswith("d15") and made is not None:  # as scan_entries gives it
                    rows = [(e.rel[-1], *e.st, int(e.rel[-1] != "f01")) for e in made]
                    made = None
                out.append((p, rows, made))
            return out

        monkeypatch.setattr(put_listings, "scan_entries", refusing)
    src = tmp_path / "src"
    _tree(src, *BIG)
    if os.geteuid() != 0:
        (src / "d15" / "f01").chmod(0)
    with Client.init(tmp_path / "s", commit_files=2) as fs:
        with pytest.raises(PermissionError, match=r"cannot read local file .*d15/f01"):
            fs.put(src, "/dst")
        assert not fs.exists("/dst") and fs.du("/").files == 0


def test_an_interrupted_put_stops_its_walk_and_commits_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the walk goes on (raised in the put's thread at its second file):
    the walk's thread ends, the batches held for the walk do not commit, and the
    store is consistent."""
    src = tmp_path / "src"
    _tree(src, *BIG)
    _slow_listing(monkeypatch, 0.03)

    def interrupt(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    seen: list[int] = []
    before = {t.ident for t in threading.enumerate()}
    with Client.init(tmp_path / "s", commit_files=1) as fs:
        with pytest.raises(KeyboardInterrupt):
            fs.put(src, "/dst", progress=interrupt)
        assert not [t for t in threading.enumerate()
                    if t.ident not in before and t.name == "hutong-walk"]
        assert not fs.exists("/dst") and fs.du("/").files == 0
        assert fs.fsck().ok
        # the same put again completes
        assert fs.put(src, "/dst").files == BIG[0] * BIG[1]


def test_a_gate_that_raises_fails_the_session_with_nothing_committed(tmp_path: Path) -> None:
    """ChunkStore.writer(gate=...): the gate runs once, on the committing thread, before
    the first commit; its error fails the session and later commits raise it too."""
    with Client.init(tmp_path / "s") as fs:
        fs.mkdir("/d")
        calls: list[str] = []

        def gate() -> None:
            calls.append(threading.current_thread().name)
            raise RuntimeError("not yet")

        with pytest.raises(RuntimeError, match="not yet"), \
                fs.store.writer(overlap=True, gate=gate) as session:
            refs = session.store_buffer(b"x" * 5000)
            session.add_file(refs, lambda txn, r: None)
            session.commit()
        assert calls == ["hutong-commit"]
        calls.clear()
        with fs.store.writer(gate=lambda: calls.append("ok")) as session:
            session.store_buffer(b"y" * 5000)
        assert calls == ["ok"]


# -- the same on PostgreSQL: the walk's checks read the server from their own thread ------


def test_on_postgresql_a_conflict_found_late_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    """On a store whose metadata is on PostgreSQL the walk checks the tree from its own
    thread (its own reads of the server) while the put's first batches are sealed: a
    file where the namespace has a directory, in the last directory listed, fails the
    put with nothing of it committed."""
    from gfs.meta.pg_engine import PgEngine

    src = tmp_path / "src"
    _tree(src, *BIG)
    _slow_listing(monkeypatch, 0.01)
    with Client.init(tmp_path / "s", meta=pg_url, commit_files=2) as fs:
        assert isinstance(fs.engine, PgEngine)
        fs.mkdir("/dst/d15/f03", parents=True)
        taken: list[int] = []
        with pytest.raises(IsADirError, match="f03"):
            fs.put(src, "/dst", progress=taken.append)
        assert taken  # files were taken before the conflict was found
        assert [s.path for s in fs.walk("/dst")] == ["/dst", "/dst/d15", "/dst/d15/f03"]
        assert fs.du("/").files == 0
        report = fs.fsck()
        assert report.ok, report.problems


def test_on_postgresql_a_repeated_put_merges_and_reads_only_what_changed(
        tmp_path: Path, pg_url: str) -> None:
    """A put onto its own earlier copy on PostgreSQL: the walk's reads of the existing
    entries find every unchanged file in place (none read again), a changed one and a
    new one are stored, and the namespace then holds exactly the local tree."""
    src = tmp_path / "src"
    _tree(src, 4, 40)
    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        first = fs.put(src, "/dst")
        assert first.files == 160
        changed = src / "d02" / "f07"
        changed.write_bytes(b"changed" * 50)
        os.utime(changed, ns=(1, 2))
        (src / "d03" / "new").write_bytes(b"new")
        again = fs.put(src, "/dst")
        assert (again.files, again.unchanged) == (2, 159)
        assert fs.read_bytes("/dst/d02/f07") == b"changed" * 50
        assert fs.read_bytes("/dst/d03/new") == b"new"
        assert sorted(s.path for s in fs.walk("/dst") if s.kind == "file") == sorted(
            "/dst/" + p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())


def _tree_of(fs: Client, top: str) -> dict[str, tuple[int, bytes | None]]:
    """path below `top` -> (mode, content of a file)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for e in fs.ls(top):
        path = f"{top}/{e.name}"
        if e.is_dir:
            out[e.name] = (e.mode & 0o7777, None)
            out.update({f"{e.name}/{k}": v for k, v in _tree_of(fs, path).items()})
        else:
            out[e.name] = (e.mode & 0o7777, fs.read_bytes(path))
    return out


def _local_tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """`_tree_of` of a local tree."""
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777,
                                       None if p.is_dir() else p.read_bytes())
            for p in root.rglob("*")}


def _spy_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads each `scan_entries` of a walk's listings ran on."""
    threads: list[str] = []
    real = put_listings.scan_entries

    def spy(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(put_listings, "scan_entries", spy)
    return threads


@pytest.mark.parametrize("ahead_entries", [20_000, 7])
def test_a_put_takes_the_listings_begun_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead_entries: int) -> None:
    """`list_ahead` lists the source before the put (as `hutong put` does beside its
    start-up); the put's walk takes those listings and lists only the directories they
    left out (AHEAD_ENTRIES), and the copy equals that of a put that listed all itself."""
    monkeypatch.setattr(put_listings, "AHEAD_ENTRIES", ahead_entries)
    src = tmp_path / "src"
    _make(src, {"a": {"x": None, "y": {"z": None}}, "b": {"c": {"d": None}}, "f": None,
                "é": {"g": None}})
    with Client.init(tmp_path / "s") as fs:
        threads = _spy_listings(monkeypatch)
        ahead = put_listings.list_ahead(str(src) + "/")  # the walk's top is str(Path(src))
        fs.put(src, "/a", listed_ahead=ahead)
        early, walked = threads.count("hutong-list-ahead"), threads.count("hutong-walk")
        assert early == 1
        assert walked == (0 if ahead_entries == 20_000 else 1)  # d below the bound: listed
        threads.clear()
        fs.put(src, "/b")
        assert threads == ["hutong-walk"]
        assert _tree_of(fs, "/a") == _tree_of(fs, "/b") == _local_tree(src)


def test_listings_of_another_tree_are_not_taken(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings begun for one tree, handed to the put of another (or of a directory
    inside it, whose entries would carry other names below the top), are dropped: the
    put lists its own tree and copies it where it belongs."""
    src = tmp_path / "src"
    _make(src, {"a": {"x": None, "in": {"deep": None}}, "f": None})
    with Client.init(tmp_path / "s") as fs:
        threads = _spy_listings(monkeypatch)
        fs.put(src / "a", "/inner", listed_ahead=put_listings.list_ahead(src))
        fs.put(src, "/whole", listed_ahead=put_listings.list_ahead(src / "a"))
        assert threads.count("hutong-walk") == 2  # each listed its own tree
        assert _tree_of(fs, "/inner") == _local_tree(src / "a")
        assert _tree_of(fs, "/whole") == _local_tree(src)
        # a source that is not there: the listing finds nothing, the put says why
        with pytest.raises(FileNotFoundError):
            fs.put(tmp_path / "gone", "/gone",
                   listed_ahead=put_listings.list_ahead(tmp_path / "gone"))
        assert not fs.exists("/gone")


def test_the_put_command_lists_its_source_beside_its_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gfs import cli

    src = tmp_path / "src"
    _make(src, {"a": {"x": None}, "f": None})
    state = str(tmp_path / "s")
    assert cli.main(["--state", state, "init"]) == 0
    threads = _spy_listings(monkeypatch)
    assert cli.main(["--state", state, "put", "-q", str(src), "/p"]) == 0
    assert threads == ["hutong-list-ahead"]
    with Client(state) as fs:
        assert _tree_of(fs, "/p") == _local_tree(src)
