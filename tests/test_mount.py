"""The FUSE mount: POSIX operations, errnos, xattrs, close-to-open, faults, unmounting."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from tests.test_mount_helpers import (
    Mounted,
    assert_edits,
    assert_posix_errnos,
    errno_of,
    init_store,
    mount,
    needs_fuse,
)

pytestmark = needs_fuse


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Mounted]:
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as mounted:
        yield mounted


def test_files_dirs_and_rename(m: Mounted) -> None:
    d = m.mnt / "dir"
    d.mkdir()
    assert_edits(d)
    (d / "sub").mkdir()
    os.rename(d / "sub", m.mnt / "moved")
    assert sorted(os.listdir(m.mnt)) == ["dir", "moved"]
    os.rename(d, m.mnt / "moved" / "inner")
    assert (m.mnt / "moved" / "inner" / "a.txt").read_bytes() == b"other"
    os.unlink(m.mnt / "moved" / "inner" / "a.txt")
    os.rmdir(m.mnt / "moved" / "inner")
    assert os.listdir(m.mnt / "moved") == []
    with Client(m.state) as c:
        assert [s.name for s in c.ls("/")] == ["moved"]


def test_errnos(m: Mounted) -> None:
    assert_posix_errnos(m.mnt)
    assert errno_of(os.link, m.mnt / "d", m.mnt / "h") == errno.EPERM
    assert (m.mnt / "f").read_bytes() == b"x"  # the mount is still up


def test_attributes_symlinks_truncate(m: Mounted) -> None:
    p = m.mnt / "f"
    p.write_bytes(b"0123456789")
    os.chmod(p, 0o600)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))
    st = os.stat(p)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000_000_000_000
    os.truncate(p, 4)
    assert p.read_bytes() == b"0123"
    os.truncate(p, 6)
    assert p.read_bytes() == b"0123\0\0"
    assert os.stat(p).st_mode & 0o7777 == 0o600
    with open(p, "r+b") as f:
        f.truncate(2)
        os.fsync(f.fileno())
        with Client(m.state) as c:
            assert c.read_bytes("/f") == b"01"  # fsync commits
    os.symlink("f", m.mnt / "link")
    assert os.readlink(m.mnt / "link") == "f"
    assert (m.mnt / "link").read_bytes() == b"01"
    assert os.lstat(m.mnt / "link").st_size == 1
    sv = os.statvfs(m.mnt)
    assert sv.f_bsize > 0 and sv.f_blocks > 0 and sv.f_namemax == 255


def test_mtime_kept_when_set_before_close(m: Mounted) -> None:
    p = m.mnt / "t"
    with open(p, "wb") as f:
        f.write(b"data")
        f.flush()
        os.utime(f.fileno(), ns=(1, 1_000_000_000))  # like cp -p: before close
    assert os.stat(p).st_mtime_ns == 1_000_000_000


def test_xattrs(m: Mounted) -> None:
    p = m.mnt / "x"
    p.write_bytes(os.urandom(300_000))
    assert int(os.getxattr(p, "user.hutong.chunks")) >= 2
    assert os.getxattr(p, "user.hutong.pools").startswith(b"default:")
    assert int(os.getxattr(p, "user.hutong.replicas")) == 1
    assert len(os.getxattr(p, "user.hutong.chunk_ids").splitlines()) >= 2
    assert os.listxattr(p) == []
    os.setxattr(p, "user.color", b"blue")
    assert os.listxattr(p) == ["user.color"]
    assert os.getxattr(p, "user.color") == b"blue"
    os.removexattr(p, "user.color")
    assert errno_of(os.getxattr, p, "user.color") == errno.ENODATA
    assert errno_of(os.setxattr, p, "user.hutong.chunks", b"1") == errno.EPERM


def test_large_file_reads(m: Mounted) -> None:
    data = random.Random(3).randbytes(12 << 20)
    (m.mnt / "big").write_bytes(data)
    assert (m.mnt / "big").read_bytes() == data
    rnd = random.Random(4)
    fd = os.open(m.mnt / "big", os.O_RDONLY)
    try:
        for _ in range(50):
            off = rnd.randrange(len(data))
            n = rnd.randrange(1, 1 << 20)
            assert os.pread(fd, n, off) == data[off:off + n]
    finally:
        os.close(fd)
    stats = os.getxattr(m.mnt, "user.hutong.cache")
    assert b"hits" in stats


def test_close_to_open(m: Mounted) -> None:
    with Client(m.state) as c:
        c.write_bytes("/shared", b"version one")
        assert (m.mnt / "shared").read_bytes() == b"version one"
        c.write_bytes("/shared", b"version two, longer")
        assert (m.mnt / "shared").read_bytes() == b"version two, longer"
        with open(m.mnt / "shared", "wb") as f:
            f.write(b"from the mount")
            f.flush()
            assert c.read_bytes("/shared") == b"version two, longer"  # not closed yet
        assert c.read_bytes("/shared") == b"from the mount"


def test_corrupt_chunk_gives_eio_and_mount_stays_up(m: Mounted) -> None:
    with Client(m.state) as c:
        c.write_bytes("/bad.bin", random.Random(5).randbytes(200_000))
    packs = list((m.state / "pools").rglob("*.pack"))
    assert packs
    for pack in packs:
        raw = bytearray(pack.read_bytes())
        for i in range(2000, len(raw), 5000):
            raw[i] ^= 0xFF
        pack.write_bytes(bytes(raw))
    assert errno_of((m.mnt / "bad.bin").read_bytes) == errno.EIO
    assert "/bad.bin" in m.log_text()
    (m.mnt / "ok").write_bytes(b"still up")
    assert (m.mnt / "ok").read_bytes() == b"still up"


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "a").write_bytes(b"kept")
        mm.proc.send_signal(signal.SIGTERM)
        assert mm.proc.wait(timeout=20) == 0
        assert not os.path.ismount(mm.mnt)
    with Client(state) as c:
        assert c.read_bytes("/a") == b"kept"


def test_background_and_umount_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = [sys.executable, "-m", "gfs.cli", "--state", str(state)]
    r = subprocess.run([*cli, "mount", "--background", str(mnt)], capture_output=True,
                       text=True, timeout=60, check=False)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        (mnt / "f").write_bytes(b"bg")
        r2 = subprocess.run([*cli, "cache", "stats", str(mnt)], capture_output=True,
                            text=True, check=False)
        assert r2.returncode == 0 and "memory tier" in r2.stdout
        r3 = subprocess.run([*cli, "warmup", str(mnt)], capture_output=True, text=True,
                            check=False)
        assert r3.returncode == 0 and "warmed 1 files" in r3.stdout
    finally:
        u = subprocess.run([*cli, "umount", str(mnt)], capture_output=True, text=True,
                           check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt)
    bad = subprocess.run([*cli, "umount", str(mnt)], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "not a mount point" in bad.stderr


def test_kill_9_leaves_a_consistent_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "done").write_bytes(b"committed")
        f = open(mm.mnt / "half", "wb")  # noqa: SIM115
        f.write(os.urandom(3 << 20))
        f.flush()
        os.kill(mm.proc.pid, signal.SIGKILL)
        mm.proc.wait()
        with contextlib.suppress(OSError):
            f.close()
    with Client(state) as c:
        assert c.read_bytes("/done") == b"committed"
        report = c.fsck()
        assert report.ok, report


def test_hard_links_keep_data_through_gc_and_fsck(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    data = os.urandom(300_000)
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "d").mkdir()
        (mm.mnt / "a").write_bytes(data)
        os.link(mm.mnt / "a", mm.mnt / "d" / "b")
        os.link(mm.mnt / "a", mm.mnt / "c")
        os.mkfifo(mm.mnt / "d" / "fifo")
        os.unlink(mm.mnt / "a")
        os.rename(mm.mnt / "c", mm.mnt / "d" / "c")
    with Client(state) as c:
        report = c.fsck()
        assert report.ok, report.problems
        c.gc()
        assert c.read_bytes("/d/b") == data and c.read_bytes("/d/c") == data
        assert c.fsck().ok
    with mount(state, tmp_path / "mnt") as mm:
        assert os.stat(mm.mnt / "d" / "b").st_nlink == 2
        assert os.stat(mm.mnt / "d").st_nlink == 2
        os.unlink(mm.mnt / "d" / "b")
        assert (mm.mnt / "d" / "c").read_bytes() == data
        os.unlink(mm.mnt / "d" / "c")
    with Client(state) as c:
        assert c.fsck().ok
        c.gc()
        with c.engine.read() as txn:
            assert not list(txn.iter_manifests())  # the last link took the data


def test_fsck_finds_wrong_link_counts(tmp_path: Path) -> None:
    from dataclasses import replace

    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "a").write_bytes(b"x")
        os.link(mm.mnt / "a", mm.mnt / "b")
        (mm.mnt / "d").mkdir()
    with Client(state) as c:
        with c.engine.write() as txn:
            for name, nlink in (("a", 3), ("d", 4)):
                node = txn.get_inode(txn.lookup(1, name) or 0)
                assert node is not None
                txn.put_inode(replace(node, nlink=nlink))
        problems = " | ".join(c.fsck().problems)
    assert "link count 3, but 2 directory entries" in problems
    assert "link count 4, but 0 subdirectories" in problems
