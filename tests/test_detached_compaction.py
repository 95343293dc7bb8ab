"""The metadata compaction a `hutong` command leaves to a detached child (gfs.detach):
the command's caller gets its end at once, a later command waits for the child and
never races it, a kill -9 of the child loses nothing, and HUTONG_DETACH=0 or a
library caller compacts before returning."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gfs
from gfs import cli, detach
from gfs.meta import compact as compaction

REPO = str(Path(gfs.__file__).resolve().parent.parent)
DEADLINE = 60.0

#: `hutong` with compaction at every write's close (MIN_BYTES 0); with $GATE_DIR set,
#: the compaction's copy first writes its pid to GATE_DIR/pid and waits (at most
#: DEADLINE) for GATE_DIR/go: the test holds the child at a known point.
_DRIVER = textwrap.dedent(f"""
    import os, sys, time
    from pathlib import Path
    from gfs.meta import compact
    compact.MIN_BYTES = 0
    gate = os.environ.get("GATE_DIR")
    if gate:
        real = compact._copy_packed
        def gated(src, dst):
            Path(gate, "pid.tmp").write_text(str(os.getpid()))
            os.replace(Path(gate, "pid.tmp"), Path(gate, "pid"))
            end = time.monotonic() + {DEADLINE}
            while not Path(gate, "go").exists() and time.monotonic() < end:
                time.sleep(0.01)
            return real(src, dst)
        compact._copy_packed = gated
    from gfs import cli
    cli.run()
""")


def _hutong(state: Path, *argv: str, gate: Path | None = None, detached: bool = True,
            ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO, HUTONG_DETACH="1" if detached else "0")
    env.pop("GATE_DIR", None)
    if gate is not None:
        env["GATE_DIR"] = str(gate)
    return subprocess.run([sys.executable, "-c", _DRIVER, "--state", str(state), *argv],
                          capture_output=True, text=True, env=env, timeout=DEADLINE)


def _wait_for(cond: object, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _locked_exclusive(meta: Path) -> bool:
    """Whether another process holds open.lock exclusive (a shared try fails)."""
    fd = os.open(meta / compaction.OPEN_LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _packed(meta: Path) -> bool:
    """Whether the packed tables hold no hot row: a compaction has merged them into
    blocks since the last write."""
    import lmdb

    from gfs.meta import blocks

    env = lmdb.open(str(meta), readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            return not any(txn.stat(env.open_db(t.encode(), txn=txn, create=False))["entries"]
                           for t in blocks.PACKED_TABLES)
    finally:
        env.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for d in range(12):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(25):
            (src / f"d{d}" / f"f{i}.txt").write_bytes(b"row %d of %d\n" % (i, d) * (i + 1))
    return src


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    r = _hutong(state, "init", detached=False)
    assert r.returncode == 0, r.stderr
    yield state


def _same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def _gated_put(tmp_path: Path, store: Path, tree: Path) -> int:
    """A put of `tree` to /t whose compaction child waits at the gate: its pid, once
    the command has returned and the child holds the gate."""
    gate = tmp_path / "gate"
    gate.mkdir()
    put = _hutong(store, "put", "--quiet", str(tree), "/t", gate=gate)
    assert put.returncode == 0, put.stderr
    _wait_for((gate / "pid").exists, "the compaction child")
    child = int((gate / "pid").read_text())
    assert child != os.getpid() and not _gone(child)
    return child


def test_the_command_ends_before_its_compaction_and_the_next_waits_for_it(
        tmp_path: Path, store: Path, tree: Path) -> None:
    meta = store / "meta"
    # the caller reads the command's output to its end while the child still compacts:
    # run() would wait out the gate (and then fail the test) if the child held the pipes
    child = _gated_put(tmp_path, store, tree)
    assert _locked_exclusive(meta)  # taken before the command exited: nothing races it
    assert not _packed(meta)
    ls = subprocess.Popen([sys.executable, "-m", "gfs.cli", "--state", str(store), "ls", "/t"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # it waits while the child holds
            ls.wait(timeout=2)  # (an ls of a free store ends in ~0.2 s)
        (tmp_path / "gate" / "go").touch()
        out, err = ls.communicate(timeout=DEADLINE)
    finally:
        if ls.poll() is None:
            ls.kill()
            ls.wait(timeout=DEADLINE)
    assert ls.returncode == 0, err
    assert sorted(out.split()) == sorted(f"d{d}/" for d in range(12))
    _wait_for(lambda: _gone(child), "the child's end")
    assert _packed(meta) and not (meta / "compact.tmp").exists()
    assert not _locked_exclusive(meta)
    got = _hutong(store, "get", "--quiet", "/t", str(tmp_path / "back"))
    assert got.returncode == 0, got.stderr
    _same_tree(tree, tmp_path / "back")
    fsck = _hutong(store, "fsck")
    assert fsck.returncode == 0 and "fsck: ok" in fsck.stdout, fsck.stdout + fsck.stderr


def test_a_kill_9_of_the_compaction_child_loses_nothing(tmp_path: Path, store: Path,
                                                        tree: Path) -> None:
    meta = store / "meta"
    child = _gated_put(tmp_path, store, tree)
    assert (meta / "compact.tmp").is_dir()  # its copy begun
    os.kill(child, signal.SIGKILL)  # the child this test's command started, by its id
    _wait_for(lambda: _gone(child), "the killed child's end")
    assert not _locked_exclusive(meta)  # the kernel dropped its lock
    assert not _packed(meta)
    # the next write's compaction (here before it returns) clears the left copy
    more = _hutong(store, "put", "--quiet", str(tree), "/u", detached=False)
    assert more.returncode == 0, more.stderr
    assert _packed(meta) and not (meta / "compact.tmp").exists()
    for name in ("t", "u"):
        got = _hutong(store, "get", "--quiet", f"/{name}", str(tmp_path / name))
        assert got.returncode == 0, got.stderr
        _same_tree(tree, tmp_path / name)
    fsck = _hutong(store, "fsck")
    assert fsck.returncode == 0 and "fsck: ok" in fsck.stdout, fsck.stdout + fsck.stderr


def test_a_store_moved_and_copied_back_meanwhile_is_left_to_its_own_copy(
        tmp_path: Path, store: Path, tree: Path) -> None:
    """The child compacts the directory it locked, wherever that went: a store moved
    away while its compaction runs, and a copy of it put at the old path (with the
    child's half-written copy in it, as `cp -a` takes it), keep both stores whole;
    the child swaps its copy in the moved store, never in the copy at the path."""
    import hashlib
    import shutil

    child = _gated_put(tmp_path, store, tree)
    moved = tmp_path / "moved"
    store.rename(moved)
    shutil.copytree(moved, store, symlinks=True)
    assert (store / "meta" / "compact.tmp").is_dir()  # the copy took the half-written one
    data = store / "meta" / "data.mdb"
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    (tmp_path / "gate" / "go").touch()
    _wait_for(lambda: _gone(child), "the child's end")
    assert hashlib.sha256(data.read_bytes()).hexdigest() == digest
    assert _packed(moved / "meta") and not (moved / "meta" / "compact.tmp").exists()
    for name, state in (("from-copy", store), ("from-moved", moved)):
        got = _hutong(state, "get", "--quiet", "/t", str(tmp_path / name))
        assert got.returncode == 0, got.stderr
        _same_tree(tree, tmp_path / name)
        fsck = _hutong(state, "fsck")
        assert fsck.returncode == 0 and "fsck: ok" in fsck.stdout, fsck.stdout + fsck.stderr


def test_hutong_detach_0_compacts_before_the_command_returns(store: Path,
                                                             tree: Path) -> None:
    meta = store / "meta"
    put = _hutong(store, "put", "--quiet", str(tree), "/t", detached=False)
    assert put.returncode == 0, put.stderr
    assert _packed(meta) and not _locked_exclusive(meta)
    assert not (meta / "compact.tmp").exists()


def test_library_closes_compact_themselves(tmp_path: Path, tree: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gfs.client import Client

    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("a library close forked"))
    with Client.init(tmp_path / "state") as fs:
        fs.put(str(tree), "/t")
    assert _packed(tmp_path / "state" / "meta")


def test_leave_queues_only_where_allowed_and_finish_runs_what_was_prepared(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detach, "_queued", None)
    assert detach.leave(lambda: pytest.fail("prepared without being allowed")) is False
    ran: list[str] = []
    detach.allow()
    assert detach.leave(lambda: None)  # nothing to do: no child either
    assert detach.leave(lambda: lambda: ran.append("a"))
    assert detach.leave(lambda: lambda: ran.append("b"))

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    detach.finish(fork=True)  # the fork fails: the work runs here, in order
    assert ran == ["a", "b"]
    assert detach.leave(lambda: lambda: ran.append("c")) is False  # finished: not allowed
    detach.allow()
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked with nothing to do"))
    assert detach.leave(lambda: None)
    detach.finish(fork=True)
    assert ran == ["a", "b"]


def test_an_exit_beside_another_thread_does_the_upkeep_before_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork beside other threads is unsafe: exit_now runs the upkeep in this process."""
    forks: list[bool] = []
    monkeypatch.setattr(detach, "finish", lambda *, fork: forks.append(fork))
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(DEADLINE,))
    other.start()
    try:
        with pytest.raises(SystemExit) as ended:
            cli.exit_now(3)
    finally:
        release.set()
        other.join(DEADLINE)
    assert ended.value.code == 3 and forks == [False]


def test_a_process_that_closes_a_store_again_and_again_leaves_one_compaction(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running command closing the same store many times queues one compaction,
    with the growth of all its sessions, and runs it once at its exit."""
    from gfs.client import Client

    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    monkeypatch.setattr(detach, "_queued", None)
    monkeypatch.setattr(compaction, "_left", {})
    Client.init(tmp_path / "state").close()
    meta = str(tmp_path / "state" / "meta")
    copies: list[tuple[str, int]] = []
    real = compaction._compact_locked

    def counted(path: str, before: int, min_free: float, grown: int) -> object:
        copies.append((os.path.realpath(path), grown))  # it names the directory by its fd
        return real(path, before, min_free, grown)
    monkeypatch.setattr(compaction, "_compact_locked", counted)
    detach.allow()
    for i in range(3):
        with Client(tmp_path / "state") as fs:
            fs.put(str(tree), f"/t{i}")
    assert copies == [] and list(compaction._left) == [meta]
    assert compaction._left[meta] > 0
    grown = compaction._left[meta]
    detach.finish(fork=False)
    assert copies == [(os.path.realpath(meta), grown)] and compaction._left == {}
    assert _packed(tmp_path / "state" / "meta")


@pytest.mark.parametrize("left", [False, True])
def test_a_failed_compaction_is_logged_and_changes_nothing(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, left: bool) -> None:
    """Done at the close or left to the exit, a copy that fails (a full disk) is one
    warning; the store reads as before and compacts at a later close."""
    from gfs.client import Client

    monkeypatch.setattr(compaction, "MIN_BYTES", 0)
    monkeypatch.setattr(detach, "_queued", None)
    monkeypatch.setattr(compaction, "_left", {})
    Client.init(tmp_path / "state").close()
    real = compaction._copy_packed

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(compaction, "_copy_packed", full)
    if left:
        detach.allow()
    with Client(tmp_path / "state") as fs:
        fs.put(str(tree), "/t")
    if left:
        detach.finish(fork=False)
    assert "compaction skipped" in caplog.text and "No space left" in caplog.text
    meta = tmp_path / "state" / "meta"
    assert not _packed(meta) and not _locked_exclusive(meta)
    monkeypatch.setattr(compaction, "_copy_packed", real)
    with Client(tmp_path / "state") as fs:
        got = {p.relative_to(tree).as_posix(): p.read_bytes()
               for p in tree.rglob("*") if p.is_file()}
        for rel, data in got.items():
            assert fs.read_bytes(f"/t/{rel}") == data
        fs.mkdir("/after")  # a write: its close compacts
    assert _packed(meta)
