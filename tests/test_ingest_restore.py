"""The get path of a tree: small files written on several threads (real LMDB, real pools)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from gfs import client as client_mod
from gfs import local_write
from gfs.client import Client
from gfs.meta import Inode, Kind


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for d in range(3):
        for f in range(8):
            rel = f"d{d}/f{f}.txt"
            data = f"{d}-{f} ".encode() * (50 + f)
            (root / f"d{d}").mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            out[rel] = data
    for d in range(3):
        os.utime(root / f"d{d}", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000 + d))
    return out


def test_small_files_are_written_on_writer_threads_and_dirs_get_their_times(
        fs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    want = _tree(src)
    for f in range(8):  # modes and times (to the nanosecond) come back as put
        os.chmod(src / "d2" / f"f{f}.txt", 0o600 + f)
        os.utime(src / "d2" / f"f{f}.txt", ns=(1_500_000_000_000_000_007 + f,
                                               1_500_000_000_123_456_789 + f))
    fs.put(src, "/t")
    threads: set[str] = set()
    slices: list[int] = []
    real = local_write.write_files

    def spy(files: Sequence[tuple[str, Inode, Sequence[bytes]]]) -> tuple[int, int]:
        threads.add(threading.current_thread().name)
        slices.append(len(files))
        return real(files)

    monkeypatch.setattr(local_write, "write_files", spy)
    monkeypatch.setattr(client_mod, "RESTORE_SLICE_FILES", 5)
    out = tmp_path / "out"
    report = fs.get("/t", out)
    assert report.files == len(want) and report.bytes == sum(map(len, want.values()))
    assert threads and all(t.startswith("hutong-restore") for t in threads)
    assert slices == [5, 5, 5, 5, 4]  # several files a native call
    for rel, data in want.items():
        assert (out / rel).read_bytes() == data
        a, b = os.stat(src / rel), os.stat(out / rel)
        assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns)
    for d in range(3):  # set after the files inside were written
        assert os.stat(out / f"d{d}").st_mtime_ns == os.stat(src / f"d{d}").st_mtime_ns
    assert list(out.rglob(".*hutong-*")) == []


def test_a_failed_write_fails_the_get_after_the_other_writes_end(
        fs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    want = _tree(src)
    fs.put(src, "/t")
    out = tmp_path / "out"
    blocker = out / "d1" / "f3.txt"
    real = local_write.write_files
    ended: list[str] = []

    def failing(files: Sequence[tuple[str, Inode, Sequence[bytes]]]) -> tuple[int, int]:
        if any(p == str(blocker) for p, _, _ in files):
            blocker.mkdir()  # a directory in the way: the real rename fails
        done = real(files)
        ended.extend(p for p, _, _ in files)
        return done

    monkeypatch.setattr(local_write, "write_files", failing)
    monkeypatch.setattr(client_mod, "RESTORE_SLICE_FILES", 5)  # d1/f2..f6 is one slice
    with pytest.raises(OSError, match="Is a directory") as info:
        fs.get("/t", out)
    assert info.value.filename == str(blocker)
    assert len(ended) == 19  # the batch's other slices ended, complete
    for rel, data in want.items():
        if rel == "d1/f2.txt":  # before it in its slice
            assert (out / rel).read_bytes() == data
        elif rel in ("d1/f4.txt", "d1/f5.txt", "d1/f6.txt"):  # after it: untouched
            assert not (out / rel).exists()
        elif rel != "d1/f3.txt":
            assert (out / rel).read_bytes() == data
    assert blocker.is_dir() and list(blocker.iterdir()) == []
    assert list(out.rglob(".*hutong-*")) == []


def test_write_files_stops_at_the_first_failure_and_leaves_no_temporary(
        tmp_path: Path) -> None:
    from gfs import _native

    good = (str(tmp_path / ".a.tmp"), str(tmp_path / "a"), [b"ab", b"", memoryview(b"cd")],
            0o640, 1_000_000_001, 2_000_000_002)
    bad = (str(tmp_path / "missing" / ".b.tmp"), str(tmp_path / "b"), [b"x"], 0o644, 0, 0)
    after = (str(tmp_path / ".c.tmp"), str(tmp_path / "c"), [b"y"], 0o644, 0, 0)
    assert _native.write_files([good, bad, after]) == (1, errno.ENOENT)
    st = os.stat(tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == b"abcd"
    assert (st.st_mode & 0o7777, st.st_atime_ns, st.st_mtime_ns) == (0o640, 1_000_000_001,
                                                                     2_000_000_002)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(TypeError):
        _native.write_files([("t", "p", [3], 0o644, 0, 0)])  # type: ignore[list-item]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_write_files_restores_times_before_1970(tmp_path: Path) -> None:
    """A file of 1969 (negative nanoseconds) gets its times back exactly."""
    from gfs import _native

    when = (-1, -1_500_000_001)  # 1 ns and 1.5 s before the epoch
    assert _native.write_files([(str(tmp_path / ".d"), str(tmp_path / "d"), [b"z"], 0o644,
                                 *when)]) == (1, 0)
    st = os.stat(tmp_path / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == when


def test_make_dirs_keeps_a_directory_there_and_stops_at_the_first_failure(
        tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    local_write.make_dirs([str(tmp_path / "a"), str(tmp_path / "a" / "b"),
                           str(tmp_path / "old")])
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "old").is_dir()
    with pytest.raises(FileExistsError) as e:  # a file in the way: named, nothing after it
        local_write.make_dirs([str(tmp_path / "c"), str(tmp_path / "file"),
                               str(tmp_path / "d")])
    assert e.value.filename == str(tmp_path / "file")
    assert (tmp_path / "c").is_dir() and not (tmp_path / "d").exists()
    with pytest.raises(FileNotFoundError):
        local_write.make_dirs([str(tmp_path / "no" / "parent")])
    with pytest.raises(TypeError):
        local_write.make_dirs([3])  # type: ignore[list-item]


def test_set_dir_attrs_sets_modes_and_times_in_order(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    nodes = [Inode(10 + i, 1, Kind.DIR, 0o40700 | (i << 3), 0, 0, 0, -1_500_000_000 + i,
                   1_600_000_000_123_456_789 + i, 0) for i in range(3)]
    local_write.set_dir_attrs([(str(d), n) for d, n in zip(dirs, nodes, strict=True)])
    for i, d in enumerate(dirs):
        st = os.stat(d)
        assert (st.st_mode & 0o7777, st.st_atime_ns, st.st_mtime_ns) == (
            0o700 | (i << 3), -1_500_000_000 + i, 1_600_000_000_123_456_789 + i)
    with pytest.raises(FileNotFoundError) as e:
        local_write.set_dir_attrs([(str(tmp_path / "gone"), nodes[0]), (str(dirs[1]),
                                                                       nodes[0])])
    assert e.value.filename == str(tmp_path / "gone")
    assert os.stat(dirs[1]).st_mode & 0o7777 == 0o710  # untouched after the failure


def test_tmp_names_make_no_system_call_and_a_forked_child_has_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.getpid
    calls = []

    def getpid() -> int:
        calls.append(1)
        return real()

    monkeypatch.setattr(os, "getpid", getpid)
    names = {local_write.tmp_name(str(tmp_path / "f")) for _ in range(100)}
    assert len(names) == 100 and calls == []
    assert all(f".f.hutong-{real()}-" in n for n in names)
    monkeypatch.undo()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own pid in its names; never back into pytest
        try:
            os.write(w, local_write.tmp_name("x").encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read().decode().startswith(f".x.hutong-{pid}-")


def _name_events(fd: int) -> list[tuple[str, str]]:
    """The (event, name) pairs waiting on inotify descriptor `fd`."""
    kinds = {0x100: "create", 0x40: "moved_from", 0x80: "moved_to"}
    out, buf = [], b""
    with contextlib.suppress(BlockingIOError):
        while True:
            buf += os.read(fd, 65536)
    while buf:
        _, mask, _, n = struct.unpack_from("iIII", buf)
        name = buf[16:16 + n].rstrip(b"\0").decode()
        out.append((kinds.get(mask & 0x1C0, hex(mask)), name))
        buf = buf[16 + n:]
    return out


def test_write_files_names_a_new_file_only_once_it_is_complete(tmp_path: Path) -> None:
    """A new file is written unnamed and linked into place (a rename made ext4 flush
    its data first): no temporary name appears; a file already there is still
    replaced by a rename."""
    from gfs import _native

    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert ino >= 0
    try:
        (tmp_path / "c").write_bytes(b"old")
        assert libc.inotify_add_watch(ino, os.fsencode(tmp_path), 0x100 | 0x40 | 0x80) >= 0
        items = [(str(tmp_path / f".{n}.tmp"), str(tmp_path / n), [b"ab", memoryview(b"c")],
                  0o444, 1_000_000_001, 2_000_000_002) for n in ("a", "b", "c")]
        assert _native.write_files(items) == (3, 0)
        events = _name_events(ino)
    finally:
        os.close(ino)
    assert events == [("create", "a"), ("create", "b"), ("create", ".c.tmp"),
                      ("moved_from", ".c.tmp"), ("moved_to", "c")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    for n in ("a", "b", "c"):
        st = os.stat(tmp_path / n)
        assert (tmp_path / n).read_bytes() == b"abc"
        assert (st.st_mode & 0o7777, st.st_nlink, st.st_mtime_ns) == (0o444, 1, 2_000_000_002)
