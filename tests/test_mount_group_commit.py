"""Group commit of small files (issue 16 item 4): closes of files written at the same
time share one pack write, one set of fsyncs and one metadata transaction, while
each close still returns only once its own file is committed; kill -9 of the mount
in the middle loses no closed file and leaves no partial one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.errors import NotFoundError
from gfs.group_commit import GroupCommitter
from gfs.testing.threads import run_threads
from tests.test_mount_helpers import init_store, needs_fuse, serve_child, wait_for

DEADLINE = 60.0
WRITERS = 16
PER_WRITER = 25

pytestmark = needs_fuse


def content(name: str) -> bytes:
    """The bytes file `name` holds: distinct per file (nothing deduplicates), 4-12 KiB."""
    seed = hashlib.sha256(name.encode()).digest()
    return seed * (128 + seed[0] % 256)


# -- the committer alone -------------------------------------------------------
def test_a_commit_waits_for_the_closes_it_expects() -> None:
    """With another writer expected, the first close waits (up to the window) and both
    commit in one batch; a lone close never waits for the window."""
    batches: list[list[str]] = []
    coming = threading.Event()

    def expected(batch: list[str]) -> int:
        return 1 if coming.is_set() and "second" not in batch else 0

    gc: GroupCommitter[str] = GroupCommitter(batches.append, expected=expected,
                                             window=DEADLINE)
    try:
        coming.set()
        first = threading.Thread(target=gc.submit, args=("first",))
        first.start()
        wait_for(lambda: gc._queue.qsize() == 0, "the first close taken by the committer")
        assert first.is_alive() and not batches  # waiting for the second
        second = threading.Thread(target=gc.submit, args=("second",))
        second.start()
        for t in (first, second):
            t.join(DEADLINE)
            assert not t.is_alive()
        assert batches == [["first", "second"]]
        coming.clear()
        started = time.monotonic()
        gc.submit("alone")  # nothing expected: committed at once, not after the window
        assert time.monotonic() - started < DEADLINE / 2
        assert batches[-1] == ["alone"]
    finally:
        gc.close()


# -- through the kernel --------------------------------------------------------
def _write_concurrently(mnt: Path, state: Path) -> list[str]:
    """WRITERS threads, each in its own directory, create PER_WRITER files; after each
    close, another client of the store must see the whole file (close-to-open).
    Returns the paths written."""
    written: list[str] = []
    lock = threading.Lock()
    for k in range(WRITERS):
        (mnt / f"w{k}").mkdir()

    with Client(state) as c:
        def work(k: int) -> None:
            for i in range(PER_WRITER):
                path = f"/w{k}/f{i:03d}"
                with open(mnt / path.lstrip("/"), "wb") as f:
                    f.write(content(path))
                assert c.read_bytes(path) == content(path), f"{path} not committed at close"
                with lock:
                    written.append(path)

        run_threads(work, WRITERS, deadline=DEADLINE)
    return written


def _syncs(strace_out: Path) -> int:
    """fsync + fdatasync calls counted by `strace -c`."""
    total = 0
    for line in strace_out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", line)
        if m:
            total += int(m.group(1))
    return total


def _flushes(trace: Path) -> int:
    """Durable flushes in a full `strace -f` log: fsync and fdatasync calls, and writes
    to a descriptor opened with O_DSYNC (LMDB writes its meta page so unless the
    environment leaves that flush to `sync`)."""
    dsync: set[str] = set()  # descriptors (the mount's threads share them)
    total = 0
    for line in trace.read_text().splitlines():
        m = re.search(r"openat\(.*O_DSYNC.*\) = (\d+)$", line)
        if m:
            dsync.add(m.group(1))
            continue
        if re.search(r"\b(fsync|fdatasync)\(\d+\) += 0", line):
            total += 1
            continue
        m = re.search(r"\bpwrite64\((\d+),", line)
        if m and m.group(1) in dsync:
            total += 1
    return total


def _traced_mount(state: Path, mnt: Path, trace: Path, *extra: str) -> list[str]:
    """argv of a mount run under `strace -f` logging what `_flushes` counts."""
    return ["strace", "--seccomp-bpf", "-f", "-o", str(trace), "-e",
            "trace=fsync,fdatasync,openat,pwrite64", sys.executable, "-m", "gfs.cli",
            "--state", str(state), "mount", str(mnt), *extra]


def _counted_run(tmp_path: Path, window: str) -> tuple[int, int, dict[str, int]]:
    """(fsyncs, files, commit stats) of `_write_concurrently` on a fresh store, the
    mount run under strace with commit window `window`."""
    state, mnt, out = tmp_path / f"state-{window}", tmp_path / f"mnt-{window}", \
        tmp_path / f"strace-{window}.txt"
    init_store(state)
    argv = ["strace", "--seccomp-bpf", "-f", "-c", "-o", str(out), "-e",
            "trace=fsync,fdatasync", sys.executable, "-m", "gfs.cli", "--state", str(state),
            "mount", str(mnt), "--commit-window", window]
    with serve_child(argv, state, mnt, timeout=DEADLINE) as mm:
        written = _write_concurrently(mnt, state)
        stats = json.loads(os.getxattr(mnt, "user.hutong.commits"))
    mm.proc.wait(DEADLINE)  # unmounted: strace writes its summary as the mount exits
    assert out.exists() and "total" in out.read_text(), "strace wrote no summary"
    with Client(state) as c:
        for path in written:
            assert c.read_bytes(path) == content(path)
    return _syncs(out), len(written), stats


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_concurrent_small_files_share_fsyncs(tmp_path: Path) -> None:
    """16 writers creating 400 small files cost far fewer than two fsyncs per file
    (before group commits held no pool thread while waiting, this run cost about one
    per file, a lone writer three: a pack write fsynced with its directory, one
    metadata transaction); every close had committed its file (checked by another
    client right after each close)."""
    syncs, files, stats = _counted_run(tmp_path, "10ms")
    assert files == WRITERS * PER_WRITER
    assert stats["files"] >= files and stats["batches"] <= files / 5, stats
    assert syncs / files < 0.75, (syncs, files, stats)


def test_kill_9_during_group_commits_loses_no_closed_file(tmp_path: Path) -> None:
    """kill -9 of the mount while many writers close files: every file whose close
    returned is there whole; a file whose close had not returned is absent or whole,
    never partial; an open overwrite leaves the old content; fsck is clean."""
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    init_store(state)
    closed: set[str] = set()
    attempted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    with serve_child([sys.executable, "-m", "gfs.cli", "--state", str(state), "mount",
                      str(mnt)], state, mnt, timeout=DEADLINE) as mm:
        (mnt / "old.txt").write_bytes(b"old content")
        overwrite = open(mnt / "old.txt", "r+b")  # noqa: SIM115 (left open: spooled only)
        overwrite.write(b"NEW CONTENT, never closed")
        overwrite.flush()
        for k in range(8):
            (mnt / f"w{k}").mkdir()

        def work(k: int) -> None:
            i = 0
            while not stop.is_set():
                path = f"/w{k}/f{i:04d}"
                with lock:
                    attempted.add(path)
                try:
                    with open(mnt / path.lstrip("/"), "wb") as f:
                        f.write(content(path))
                except OSError:
                    return  # the mount is gone
                with lock:
                    closed.add(path)
                i += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(closed) >= 150, "150 closed files", timeout=DEADLINE)
            os.kill(mm.proc.pid, signal.SIGKILL)
            mm.proc.wait(DEADLINE)
        finally:
            stop.set()
            for t in threads:
                t.join(DEADLINE)
            with contextlib.suppress(OSError):
                overwrite.close()
    assert not any(t.is_alive() for t in threads)
    assert mm.proc.returncode == -signal.SIGKILL
    with Client(state) as c:
        for path in sorted(closed):
            assert c.read_bytes(path) == content(path), f"closed file {path} lost"
        for path in sorted(attempted - closed):
            with contextlib.suppress(NotFoundError):
                assert c.read_bytes(path) == content(path), f"{path} is partial"
        assert c.read_bytes("/old.txt") == b"old content"
        report = c.fsck()
        assert report.ok, report.problems


# -- --sync-interval: committed at close, durable in batches ----------------------
def _commits(mnt: Path) -> dict[str, int]:
    stats: dict[str, int] = json.loads(os.getxattr(mnt, "user.hutong.commits"))
    return stats


def test_sync_interval_commits_at_close_and_syncs_at_fsync_and_in_time(
        tmp_path: Path) -> None:
    """With --sync-interval, a close still commits (another client reads the file
    right after it) but leaves the pack unsynced; fsync(2) syncs every pack written so
    far; left alone, the packs are synced within the interval."""
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    init_store(state)
    argv = [sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt),
            "--sync-interval", "1h"]
    with serve_child(argv, state, mnt, timeout=DEADLINE), Client(state) as c:
        for i in range(20):
            path = f"/f{i:02d}"
            (mnt / path.lstrip("/")).write_bytes(content(path))
            assert c.read_bytes(path) == content(path)
        before = _commits(mnt)
        assert before["unsynced"] >= 1 and before["syncs"] == 0, before
        with open(mnt / "f00", "rb+") as f:
            os.fsync(f.fileno())
        after = _commits(mnt)
        assert after["unsynced"] == 0 and after["syncs"] == 1, after
        os.unlink(mnt / "f01")  # a metadata change: its flush is left to the syncs too
        assert _commits(mnt)["unsynced"] == 1
        with open(mnt / "f00", "rb") as f:
            os.fsync(f.fileno())
        assert _commits(mnt) == {**after, "syncs": 2}
    mnt2 = tmp_path / "mnt2"
    argv = [sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt2),
            "--sync-interval", "0.2"]
    with serve_child(argv, state, mnt2, timeout=DEADLINE):
        (mnt2 / "late").write_bytes(content("/late"))
        wait_for(lambda: _commits(mnt2)["unsynced"] == 0 and _commits(mnt2)["syncs"] >= 1,
                 "the packs synced within the interval", timeout=DEADLINE)


def test_kill_9_with_unsynced_packs_loses_no_closed_file(tmp_path: Path) -> None:
    """kill -9 of a mount whose packs are not synced yet: the page cache keeps them,
    so every closed file is whole and fsck (reading every chunk) is clean."""
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    init_store(state)
    argv = [sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt),
            "--sync-interval", "1h"]
    with serve_child(argv, state, mnt, timeout=DEADLINE) as mm:
        for i in range(30):
            (mnt / f"f{i:02d}").write_bytes(content(f"/f{i:02d}"))
        assert _commits(mnt)["unsynced"] >= 1
        os.kill(mm.proc.pid, signal.SIGKILL)
        mm.proc.wait(DEADLINE)
    with Client(state) as c:
        for i in range(30):
            assert c.read_bytes(f"/f{i:02d}") == content(f"/f{i:02d}")
        report = c.fsck()
        assert report.ok, report.problems


def test_metasync_off_keeps_commits_and_syncs_on_demand(tmp_path: Path) -> None:
    """The engine a --sync-interval mount opens: commits are visible at once (to other
    processes too) and `sync` flushes them."""
    from gfs.meta import LmdbEngine

    state = tmp_path / "state"
    init_store(state)
    engine = LmdbEngine(str(state / "meta"), metasync=False)
    try:
        assert engine._env.flags()["metasync"] is False
        with Client(state) as c:  # shares the environment opened above
            c.write_bytes("/a", b"a")
            engine.sync()
        probe = subprocess.run([sys.executable, "-c", "import sys; from gfs.client import "
                                "Client; c = Client(sys.argv[1]); "
                                "print(c.read_bytes('/a').decode())", str(state)],
                               capture_output=True, text=True, timeout=DEADLINE, check=True)
        assert probe.stdout.strip() == "a"
    finally:
        engine.close()


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_lone_writer_appends_its_small_files_to_one_pack(tmp_path: Path) -> None:
    """One writer creating small files one after another (each close commits its file
    alone) fills one pack object instead of one per file, and pays three flushes per
    file, all needed in this order: the pack's fdatasync, the metadata's data pages,
    its meta page. No fsync of a new pack, of its directory, no rename (the old code:
    200 packs, about 3.7 fsync calls per file besides the meta page's)."""
    state, mnt, out = tmp_path / "state", tmp_path / "mnt", tmp_path / "strace.txt"
    init_store(state)
    files = 60
    with serve_child(_traced_mount(state, mnt, out), state, mnt, timeout=DEADLINE) as mm:
        for i in range(files):
            with open(mnt / f"f{i}", "wb") as f:
                f.write(content(f"/f{i}"))
            with Client(state) as c:  # committed when close returned
                assert c.read_bytes(f"/f{i}") == content(f"/f{i}")
            assert _commits(mnt)["unsynced"] == 0  # and durable
        stats = json.loads(os.getxattr(mnt, "user.hutong.commits"))
    mm.proc.wait(DEADLINE)
    assert stats["batches"] >= files, stats  # each file committed alone
    packs = list(state.glob("pools/**/packs/*/*.pack"))
    assert len(packs) == 1, packs
    flushes = _flushes(out)
    assert flushes <= 3 * files + 10, (flushes, files)
    with Client(state) as c:
        report = c.fsck()
        assert report.ok, report.problems


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_metadata_changes_cost_one_flush_and_are_durable_at_the_next_sync(
        tmp_path: Path) -> None:
    """In the durable mode, mkdir and chmod are committed when they return (another
    client sees them) with one flush each, not two: their meta page is flushed by the
    next sync, which fsyncdir(2), a close or the mount's timer (METADATA_SYNC) makes.
    The old code wrote each meta page with O_DSYNC: two flushes per change."""
    state, mnt, out = tmp_path / "state", tmp_path / "mnt", tmp_path / "strace.txt"
    init_store(state)
    dirs = 40
    with serve_child(_traced_mount(state, mnt, out), state, mnt, timeout=DEADLINE) as mm:
        (mnt / "top").mkdir()
        wait_for(lambda: _commits(mnt)["unsynced"] == 0, "the timer's sync",
                 timeout=DEADLINE)
        for i in range(dirs):
            (mnt / "top" / f"d{i}").mkdir()
            os.chmod(mnt / "top" / f"d{i}", 0o700)
        with Client(state) as c:
            assert c.stat(f"/top/d{dirs - 1}").mode & 0o777 == 0o700
        fd = os.open(mnt / "top", os.O_RDONLY | os.O_DIRECTORY)
        try:
            before = _commits(mnt)
            os.fsync(fd)  # fsyncdir: makes them durable now
            after = _commits(mnt)
        finally:
            os.close(fd)
        assert before["unsynced"] == 0 or after["syncs"] > before["syncs"], (before, after)
        assert after["unsynced"] == 0, after
        (mnt / "top" / "d0" / "f").write_bytes(b"x")  # a close: durable with the rest
        assert _commits(mnt)["unsynced"] == 0
    mm.proc.wait(DEADLINE)
    flushes = _flushes(out)
    changes = 2 * dirs + 2
    assert flushes <= 1.25 * changes + 10, (flushes, changes)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_concurrent_metadata_changes_share_transactions(tmp_path: Path) -> None:
    """8 threads making directories and chmodding them at once (each in a directory
    of its own: the kernel serialises changes in one directory) share transactions
    and their flushes: well under one flush per change (without the batching, one
    each); every change is committed when it returns (another client sees it)."""
    state, mnt, out = tmp_path / "state", tmp_path / "mnt", tmp_path / "strace.txt"
    init_store(state)
    threads, per = 8, 25
    with serve_child(_traced_mount(state, mnt, out), state, mnt, timeout=DEADLINE) as mm:
        for t in range(threads):
            (mnt / f"t{t}").mkdir()

        def work(t: int) -> None:
            with Client(state) as c:
                for i in range(per):
                    d = mnt / f"t{t}" / f"d{i}"
                    d.mkdir()
                    os.chmod(d, 0o750)
                    assert c.stat(f"/t{t}/d{i}").mode & 0o777 == 0o750

        run_threads(work, threads, deadline=DEADLINE, together=True)
    mm.proc.wait(DEADLINE)
    changes = threads * per * 2
    flushes = _flushes(out)
    assert flushes <= 0.7 * changes, (flushes, changes)
