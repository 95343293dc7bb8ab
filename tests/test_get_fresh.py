"""A get walks the namespace tree once (into a new local directory it stats no local
path: nothing can exist below a missing destination); into an existing one the same
walk refuses conflicts before anything is written."""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs import client as client_module
from gfs import get_plan, local_write
from gfs.client import Client, TransferReport
from gfs.errors import IsADirError
from gfs.read.local import LocalSource


def test_a_get_into_a_new_directory_walks_the_tree_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(b"z" * (i + 1))
    walks: list[str] = []
    real = get_plan.walk_ns

    def counted(txn: Any, top: Any, dest: str) -> Iterator[Any]:
        walks.append(dest)
        return real(txn, top, dest)

    monkeypatch.setattr(get_plan, "walk_ns", counted)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        fs.get("/t", str(tmp_path / "new"))
        assert len(walks) == 1
        assert sorted(p.name for p in (tmp_path / "new" / "d").iterdir()) == \
            sorted(f"f{i}" for i in range(30))
        assert (tmp_path / "new" / "d" / "f29").read_bytes() == b"z" * 30
        # an existing destination: conflicts are looked for first, and refused
        walks.clear()
        clash = tmp_path / "old"
        (clash / "t" / "d" / "f3").mkdir(parents=True)
        with pytest.raises(IsADirError):
            fs.get("/t", str(clash))
        assert len(walks) == 1  # refused during the one walk; the restore never started
        assert sorted(p.name for p in (clash / "t" / "d").iterdir()) == ["f3"]


def test_a_get_makes_each_directory_with_one_mkdir_and_no_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}" / "e").mkdir(parents=True)
        (src / f"d{d}" / "e" / "f").write_bytes(b"x" * d)
        os.chmod(src / f"d{d}", 0o750)
        os.utime(src / f"d{d}", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000 + d))
    calls: list[tuple[str, str]] = []
    real_stat, real_make = os.stat, local_write.make_dirs

    def stat(p: Any, *a: Any, **k: Any) -> os.stat_result:
        calls.append(("stat", os.fspath(p) if not isinstance(p, int) else ""))
        return real_stat(p, *a, **k)

    def make_dirs(dirs: list[str]) -> None:
        calls.extend(("mkdir", p) for p in dirs)
        real_make(dirs)

    def py_mkdir(p: Any, *a: Any, **k: Any) -> None:
        calls.append(("os.mkdir", os.fspath(p)))

    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        out = tmp_path / "out"
        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "mkdir", py_mkdir)
        monkeypatch.setattr(local_write, "make_dirs", make_dirs)
        fs.get("/t", str(out))
        monkeypatch.undo()
    # every directory by the native make_dirs (no GIL handed over per mkdir)
    assert [p for op, p in calls if op == "os.mkdir"] == []
    made = [p for op, p in calls if op == "mkdir"]
    assert sorted(made) == sorted({os.path.join(str(out), f"d{d}", *e)
                                   for d in range(20) for e in ([], ["e"])} | {str(out)})
    # only the destination itself is looked at (does it exist?) before the walk
    assert [p for op, p in calls if op == "stat" and p in made and p != str(out)] == []
    for d in range(20):  # modes, times and contents as put
        st = os.stat(out / f"d{d}")
        assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o750, 1_600_000_000_000_000_000 + d)
        assert (out / f"d{d}" / "e" / "f").read_bytes() == b"x" * d


@pytest.mark.parametrize("slash", ["", "/"])
def test_many_directories_are_made_on_the_writer_threads_parents_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slash: str) -> None:
    src = tmp_path / "src"
    for a in range(6):
        for b in range(6):
            (src / f"a{a}" / f"b{b}" / "c").mkdir(parents=True)
            (src / f"a{a}" / f"b{b}" / "c" / "f").write_bytes(f"{a}{b}".encode())
    made: list[tuple[str, str]] = []
    calls = 0
    real = local_write.make_dirs

    def spy(dirs: list[str]) -> None:
        nonlocal calls
        calls += 1
        for p in dirs:
            assert os.path.isdir(os.path.dirname(os.path.normpath(p)))  # parent made first
            made.append((threading.current_thread().name, p))
        real(dirs)

    monkeypatch.setattr(client_module, "RESTORE_DIRS_PER_CALL", 32)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        monkeypatch.setattr(local_write, "make_dirs", spy)
        report = fs.get("/t", str(tmp_path / "out") + slash)
    assert report.dirs == 1 + 6 + 36 + 36 and len(made) == report.dirs
    # levels of 1, 6, 36 and 36 directories: a call for each RESTORE_DIRS_PER_CALL
    assert calls == 1 + 1 + 2 + 2, calls
    assert any(t.startswith("hutong-restore") for t, _ in made)
    for a in range(6):
        for b in range(6):
            assert (tmp_path / "out" / f"a{a}" / f"b{b}" / "c" / "f").read_bytes() == \
                f"{a}{b}".encode()


def _spied_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path,
               settings: dict[str, int], spies: dict[tuple[Any, str], Any],
               ) -> TransferReport:
    """`src` put in a new store at /t and got into tmp_path/out, with the client's
    `settings` and, for the get only, each (object, name) of `spies` replaced."""
    for name, value in settings.items():
        monkeypatch.setattr(client_module, name, value)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        for (obj, name), spy in spies.items():
            monkeypatch.setattr(obj, name, spy)
        return fs.get("/t", str(tmp_path / "out"))


def test_a_batch_makes_all_its_directories_before_any_file_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Directories made slice by slice queued behind the writes already handed to the
    writer threads (and the get waited for them); a batch makes them all first."""
    src = tmp_path / "src"
    for d in range(40):  # a directory, then files inside: dirs and files interleave
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(3):
            (src / f"d{d:02}" / f"f{f}").write_bytes(f"{d}/{f}".encode())
    events: list[str] = []
    real_make, real_write = local_write.make_dirs, local_write.write_files

    def make_dirs(dirs: list[str]) -> None:
        events.append("mkdir")
        real_make(dirs)

    def write_files(files: Any) -> tuple[int, int]:
        events.append("write")
        return real_write(files)

    report = _spied_get(tmp_path, monkeypatch, src,
                        {"RESTORE_SLICE_FILES": 4, "RESTORE_DIRS_INLINE": 2},
                        {(local_write, "make_dirs"): make_dirs,
                         (local_write, "write_files"): write_files})
    assert (report.dirs, report.files) == (41, 120)
    assert events.count("write") == 30  # slices of 4 files
    assert "mkdir" not in events[events.index("write"):], events
    for d in range(40):
        for f in range(3):
            assert (tmp_path / "out" / f"d{d:02}" / f"f{f}").read_bytes() == f"{d}/{f}".encode()


def test_the_plan_is_read_back_on_a_thread_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's next entries are decoded neither on the thread that hands the files
    over nor on the one that fetches their chunks (it waits on the store's workers)."""
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(6):
            (src / f"d{d}" / f"f{f}").write_bytes(f"{d}-{f}".encode() * 9)
    threads: list[str] = []
    fetching: set[str] = set()
    real = get_plan._entry
    real_many = LocalSource.get_many

    def entry(ino: int, fields: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(ino, fields)

    def get_many(self: LocalSource, cids: Any, **k: Any) -> dict[bytes, bytes]:
        fetching.add(threading.current_thread().name)
        return real_many(self, cids, **k)

    report = _spied_get(tmp_path, monkeypatch, src, {"RESTORE_BATCH_FILES": 4},  # 8 batches
                        {(get_plan, "_entry"): entry, (LocalSource, "get_many"): get_many})
    assert (report.dirs, report.files) == (6, 30)
    assert len(threads) == 1 + 2 * 5 + 30 + 1  # each entry, directories twice
    assert all(t.startswith("hutong-plan") for t in threads), set(threads)
    assert len(fetching) == 1 and fetching.isdisjoint(threads), fetching
    for d in range(5):
        for f in range(6):
            assert (tmp_path / "out" / f"d{d}" / f"f{f}").read_bytes() == f"{d}-{f}".encode() * 9


def test_a_batch_is_handed_to_the_writers_before_the_one_before_has_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The main thread hands batch N+1 over while batch N is written (waiting for N
    first left the writers idle while it read and cut N+1); a big file streams on a
    writer thread, not the main one."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for f in range(12):
        (src / "a" / f"f{f:02}").write_bytes(f"{f}".encode() * 20)
    big = os.urandom(6000)
    (src / "a" / "zbig").write_bytes(big)
    second = threading.Event()
    overlapped: list[bool] = []
    streamed: list[str] = []
    real_write, real_local = local_write.write_files, client_module._write_local

    calls = itertools.count()

    def write_files(files: Any) -> tuple[int, int]:
        if next(calls) == 0:
            overlapped.append(second.wait(10))  # the first slice waits for the next batch's
        else:
            second.set()
        return real_write(files)

    def write_local(path: str, node: Any, data: Any) -> int:
        streamed.append(threading.current_thread().name)
        return real_local(path, node, data)

    report = _spied_get(tmp_path, monkeypatch, src,
                        {"RESTORE_BATCH_FILES": 4, "RESTORE_SLICE_FILES": 4,
                         "RESTORE_BATCH_BYTES": 8000},  # zbig streams alone
                        {(local_write, "write_files"): write_files,
                         (client_module, "_write_local"): write_local})
    assert overlapped == [True]
    assert len(streamed) == 1 and streamed[0].startswith("hutong-restore"), streamed
    assert (report.files, report.bytes) == (13, sum(len(f"{f}".encode() * 20)
                                                    for f in range(12)) + len(big))
    assert (tmp_path / "out" / "a" / "zbig").read_bytes() == big
    for f in range(12):
        assert (tmp_path / "out" / "a" / f"f{f:02}").read_bytes() == f"{f}".encode() * 20


def test_a_batchs_directories_are_not_made_behind_the_writes_of_the_one_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one writer thread busy on batch N, batch N+1's directories are still made
    (on threads of their own), so the get is not held until batch N is written."""
    src = tmp_path / "src"
    for d in range(12):
        (src / f"d{d:02}").mkdir(parents=True)
        (src / f"d{d:02}" / "f").write_bytes(f"{d}".encode())
    made_later = threading.Event()
    waited: list[bool] = []
    calls = itertools.count()
    real_write, real_make = local_write.write_files, local_write.make_dirs

    def write_files(files: Any) -> tuple[int, int]:
        if next(calls) == 0:  # batch 1's only slice waits for batch 2's directories
            waited.append(made_later.wait(10))
        return real_write(files)

    def make_dirs(dirs: list[str]) -> None:
        real_make(dirs)
        if any(p.endswith("d11") for p in dirs):
            made_later.set()

    report = _spied_get(tmp_path, monkeypatch, src,
                        {"RESTORE_WRITERS": 1, "RESTORE_DIRS_INLINE": 1,  # not the main thread
                         "RESTORE_BATCH_FILES": 6, "RESTORE_SLICE_FILES": 6},
                        {(local_write, "write_files"): write_files,
                         (local_write, "make_dirs"): make_dirs})
    assert waited == [True]
    assert (report.dirs, report.files) == (13, 12)
    for d in range(12):
        assert (tmp_path / "out" / f"d{d:02}" / "f").read_bytes() == f"{d}".encode()


def test_directories_are_made_ahead_off_the_thread_that_hands_the_files_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread cutting the plan into batches makes each batch's directories (a few
    itself, many on the directory threads); the main thread never waits on a mkdir."""
    src = tmp_path / "src"
    for d in range(30):
        (src / f"d{d:02}" / "e").mkdir(parents=True)
        (src / f"d{d:02}" / "e" / "f").write_bytes(f"{d}".encode())
    threads: list[str] = []
    real = local_write.make_dirs

    def make_dirs(dirs: list[str]) -> None:
        threads.append(threading.current_thread().name)
        real(dirs)

    report = _spied_get(tmp_path, monkeypatch, src, {"RESTORE_BATCH_FILES": 5},  # 10 dirs each
                        {(local_write, "make_dirs"): make_dirs})
    assert (report.dirs, report.files) == (61, 30)
    assert len(threads) == 6 and all(t.startswith("hutong-plan") for t in threads), threads
    for d in range(30):
        assert (tmp_path / "out" / f"d{d:02}" / "e" / "f").read_bytes() == f"{d}".encode()


def test_a_failed_get_makes_no_directories_of_batches_not_yet_begun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are cut from the plan, and their directories made, ahead of the writes;
    once the get has failed, the batches queued but not yet begun make nothing (the one
    being cut at that instant finishes). Here the first write fails; the get learns it
    once it has handed over the second batch; the third is being cut then (held until
    the get has failed): no fourth batch is cut, no directory of it made."""
    src = tmp_path / "src"
    for d in range(40):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(4):
            (src / f"d{d:02}" / f"f{f}").write_bytes(f"{d}/{f}".encode())
    cut: list[int] = []
    failed = threading.Event()

    def write_files(files: Any) -> tuple[int, int]:
        raise OSError(errno.EIO, "injected", files[0][0])

    def held_batches(*args: Any, **kwargs: Any) -> Any:
        for n, b in enumerate(real_batches(*args, **kwargs), 1):
            if n >= 3:  # cut after the get has failed (or after 5 s)
                failed.wait(5)
            cut.append(n)
            yield b

    real_batches, real_finish = client_module._restore_batches, client_module._finish

    def finish(*args: Any) -> None:
        try:
            real_finish(*args)
        except BaseException:  # the cut goes on a moment after the get has failed
            threading.Timer(0.2, failed.set).start()
            raise

    with pytest.raises(OSError, match="injected"):
        _spied_get(tmp_path, monkeypatch, src,
                   {"RESTORE_BATCH_FILES": 4, "RESTORE_SLICE_FILES": 4},
                   {(local_write, "write_files"): write_files,
                    (client_module, "_restore_batches"): held_batches,
                    (client_module, "_finish"): finish})
    assert cut == [1, 2, 3], cut
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d00", "d01", "d02"]
