"""The mount's lifecycle: SIGINT/SIGTERM drain and commit open files, then unmount;
`hutong umount` and `hutong mount` clean a stale mount point (its process died)."""

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
from tests.test_mount_helpers import Mounted, init_store, mount, needs_fuse, wait_for

pytestmark = needs_fuse

DEADLINE = 30.0


@pytest.fixture
def state(tmp_path: Path) -> Path:
    init_store(tmp_path / "state")
    return tmp_path / "state"


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def draining(mm: Mounted) -> bool:
    return "shutting down" in mm.log_text()


def assert_store(state: Path, path: str, data: bytes) -> None:
    with Client(state) as c:
        assert c.read_bytes(path) == data
        report = c.fsck()
        assert report.ok, report


def is_stale(mnt: Path) -> bool:
    try:
        os.stat(mnt)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_commits_a_writer_that_closes_after_it(tmp_path: Path, state: Path,
                                                     sig: int) -> None:
    """A writer mid-file when the signal comes: its data so far is committed at once,
    the rest at its close, and the mount exits 0 as soon as it has closed."""
    rnd = random.Random(sig)
    first, second = rnd.randbytes(3 << 20), rnd.randbytes(1 << 20)
    with mount(state, tmp_path / "mnt") as mm:
        f = open(mm.mnt / "w.bin", "wb")  # noqa: SIM115
        try:
            f.write(first)
            f.flush()
            mm.proc.send_signal(sig)
            wait_for(lambda: draining(mm), "the mount to start shutting down")
            with Client(state) as c:  # committed before the writer closed
                assert c.read_bytes("/w.bin") == first
            f.write(second)
            f.flush()
            assert mm.proc.poll() is None  # still up while the writer has the file open
            assert os.path.ismount(mm.mnt)
        finally:
            f.close()
        assert mm.proc.wait(timeout=DEADLINE) == 0, mm.log_text()
        assert not os.path.ismount(mm.mnt) and not is_stale(mm.mnt)
    assert_store(state, "/w.bin", first + second)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_commits_a_file_held_open_then_unmounts(tmp_path: Path, state: Path,
                                                       sig: int) -> None:
    """A writer that keeps its file open: what it wrote is committed (whole, not torn),
    the mount unmounts after the grace period and exits 0; the writer's later
    operations fail, its close included, and change nothing."""
    data = random.Random(7).randbytes(5 << 20)
    with Client(state) as c:
        c.write_bytes("/old.bin", b"old version")
    extra = ("--drain-timeout", "0.5") if sig == signal.SIGINT else ()  # SIGTERM: default
    with mount(state, tmp_path / "mnt", *extra) as mm:
        f = open(mm.mnt / "held.bin", "wb")  # noqa: SIM115
        g = open(mm.mnt / "old.bin", "r+b")  # noqa: SIM115
        f.write(data)
        f.flush()
        g.write(b"new")
        g.flush()
        mm.proc.send_signal(sig)
        assert mm.proc.wait(timeout=DEADLINE) == 0, mm.log_text()
        assert not os.path.ismount(mm.mnt) and not is_stale(mm.mnt)
        for h in (f, g):
            with pytest.raises(OSError):
                h.write(b"late")
                h.flush()
            with contextlib.suppress(OSError):
                h.close()
    assert_store(state, "/held.bin", data)
    assert_store(state, "/old.bin", b"new version")


def test_new_opens_refused_while_draining(tmp_path: Path, state: Path) -> None:
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "a").write_bytes(b"a")
        f = open(mm.mnt / "b", "wb")  # noqa: SIM115
        try:
            f.write(b"b")
            f.flush()
            mm.proc.send_signal(signal.SIGINT)
            wait_for(lambda: draining(mm), "the mount to start shutting down")
            for op in (lambda: os.open(mm.mnt / "new", os.O_WRONLY | os.O_CREAT),
                       lambda: os.open(mm.mnt / "a", os.O_RDONLY),
                       lambda: os.mkdir(mm.mnt / "d"), lambda: os.chmod(mm.mnt / "a", 0o600),
                       lambda: os.rename(mm.mnt / "a", mm.mnt / "c")):
                with pytest.raises(OSError) as exc:
                    op()
                assert exc.value.errno == errno.ESHUTDOWN
            assert os.listdir(mm.mnt) == ["a", "b"]  # looking still works
            os.utime(f.fileno(), ns=(1, 2_000_000_000))  # a file open here may change
            f.write(b"ee")
        finally:
            f.close()
        assert mm.proc.wait(timeout=DEADLINE) == 0, mm.log_text()
    with Client(state) as c:
        assert sorted(s.name for s in c.ls("/")) == ["a", "b"]
        assert c.read_bytes("/b") == b"bee" and c.stat("/a").mode & 0o777 != 0o600


def test_second_sigint_forces(tmp_path: Path, state: Path) -> None:
    with mount(state, tmp_path / "mnt", "--drain-timeout", "600") as mm:
        f = open(mm.mnt / "f", "wb")  # noqa: SIM115
        f.write(b"so far")
        f.flush()
        mm.proc.send_signal(signal.SIGINT)
        wait_for(lambda: draining(mm), "the mount to start shutting down")
        mm.proc.send_signal(signal.SIGINT)
        assert mm.proc.wait(timeout=DEADLINE) == 0, mm.log_text()
        assert not os.path.ismount(mm.mnt) and not is_stale(mm.mnt)
        with contextlib.suppress(OSError):
            f.close()
    assert_store(state, "/f", b"so far")


@pytest.fixture
def stale(tmp_path: Path, state: Path) -> Iterator[tuple[Path, Path]]:
    """(state, mount point) where the mount point is stale: its process was killed
    after committing /done."""
    with mount(state, tmp_path / "mnt") as mm:
        (mm.mnt / "done").write_bytes(b"committed")
        os.kill(mm.proc.pid, signal.SIGKILL)
        mm.proc.wait()
        assert is_stale(mm.mnt)
        yield state, mm.mnt
    assert_store(state, "/done", b"committed")


def test_umount_cleans_a_stale_mount(stale: tuple[Path, Path]) -> None:
    state, mnt = stale
    r = cli(state, "umount", str(mnt))
    assert r.returncode == 0, r.stderr
    out = (r.stdout + r.stderr).strip()
    assert len(out.splitlines()) == 1 and "stale" in out and str(mnt) in out, out
    assert not is_stale(mnt) and not os.path.ismount(mnt) and os.path.isdir(mnt)


def test_umount_cleans_a_stale_mount_a_program_still_holds(tmp_path: Path,
                                                            state: Path) -> None:
    """A file still open on the dead mount makes `fusermount3 -u` fail (busy): the
    lazy unmount takes over, and says so."""
    with mount(state, tmp_path / "mnt") as mm:
        f = open(mm.mnt / "held", "wb")  # noqa: SIM115
        try:
            f.write(b"never closed")
            f.flush()
            os.kill(mm.proc.pid, signal.SIGKILL)
            mm.proc.wait()
            assert is_stale(mm.mnt)
            r = cli(state, "umount", str(mm.mnt))
            assert r.returncode == 0, r.stderr
            out = (r.stdout + r.stderr).strip()
            assert len(out.splitlines()) == 1 and "stale" in out and "lazily" in out, out
            assert not is_stale(mm.mnt) and os.path.isdir(mm.mnt)
        finally:
            with contextlib.suppress(OSError):
                f.close()
    with Client(state) as c:
        assert not c.exists("/held")
        assert c.fsck().ok


def test_mount_recovers_a_stale_mount_point(stale: tuple[Path, Path]) -> None:
    state, mnt = stale
    with mount(state, mnt) as again:
        assert (again.mnt / "done").read_bytes() == b"committed"
        text = again.log_text()
        assert "stale" in text and str(mnt) in text, text
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=DEADLINE) == 0


def test_background_mount_recovers_a_stale_mount_point(stale: tuple[Path, Path]) -> None:
    state, mnt = stale
    r = cli(state, "mount", "--background", str(mnt))
    try:
        assert r.returncode == 0, r.stderr
        assert "stale" in r.stderr and str(mnt) in r.stderr, r.stderr
        assert (mnt / "done").read_bytes() == b"committed"
    finally:
        u = cli(state, "umount", str(mnt))
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt) and not is_stale(mnt)
