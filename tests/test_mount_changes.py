"""The mount's renames and unlinks from the event loop (issue 15, rename at 16
clients): queued to the batcher's committer thread, not one worker thread each, so
concurrent ones share a transaction and its flush beyond the pool's size; each is
committed when it returns (kill -9 of the mount loses none; the kernel's page cache
survives a process kill, so this shows commit before the reply, not the flush)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pyfuse3
import pytest

from gfs.client import Client
from gfs.meta import ROOT_INO
from gfs.mount import HutongOperations, MountOptions
from tests.test_mount_helpers import init_store, needs_fuse, serve_child, wait_for

DEADLINE = 60.0


def ctx() -> pyfuse3.RequestContext:
    return cast(pyfuse3.RequestContext, SimpleNamespace(uid=0, gid=0, pid=os.getpid(),
                                                        umask=0o022))


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[HutongOperations]:
    """Mount operations (no FUSE) on a new LMDB store, 8 worker threads."""
    client = Client.init(tmp_path / "s")
    o = HutongOperations(client, MountOptions(threads=8))
    try:
        yield o
    finally:
        o.close()
        client.close()


def _held_first(ops: HutongOperations, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[threading.Event, threading.Event]:
    """Make the mount's next write transaction wait (inside it) until released."""
    engine = ops.client.engine
    transact = engine.transact
    inside, release = threading.Event(), threading.Event()

    def held(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if not inside.is_set():
            inside.set()
            assert release.wait(DEADLINE)
        return transact(fn, *args, **kw)
    monkeypatch.setattr(engine, "transact", held)
    return inside, release


@pytest.mark.parametrize("change", ["rename", "unlink", "mkdir"])
def test_sixteen_concurrent_changes_share_two_transactions(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """17 renames (unlinks, mkdirs) at once, the first one's transaction held until the others
    are queued: two transactions in all (with a worker thread waiting for each change,
    the pool's 8 threads let at most 8 queue: three or more)."""
    for i in range(17):
        ops.client.write_bytes(f"/f{i}", b"x")
    inside, release = _held_first(ops, monkeypatch)
    txns = ops._txns

    def one(i: int) -> Any:
        if change == "rename":
            return ops.rename(ROOT_INO, f"f{i}".encode(), ROOT_INO, f"g{i}".encode(), 0,
                              ctx())
        if change == "unlink":
            return ops.unlink(ROOT_INO, f"f{i}".encode(), ctx())
        return ops.mkdir(ROOT_INO, f"d{i}".encode(), 0o755, ctx())

    async def main() -> None:
        first = asyncio.ensure_future(one(0))
        while not inside.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(one(i)) for i in range(1, 17)]
        for _ in range(1000):  # 10 s at most (with a thread per change, 7 ever queue)
            if txns.queued() >= 16:
                break
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, *rest)

    before = txns.batches
    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert txns.batches - before == 2
    names = {s.name for s in ops.client.ls("/")}
    assert names == {"rename": {f"g{i}" for i in range(17)}, "unlink": set(),
                     "mkdir": {f"f{i}" for i in range(17)} | {f"d{i}" for i in range(17)}
                     }[change]


def test_a_failed_change_reports_its_errno_and_changes_nothing(
        ops: HutongOperations) -> None:
    ops.client.write_bytes("/a", b"a")
    ops.client.mkdir("/d")
    with pytest.raises(pyfuse3.FUSEError) as e:
        asyncio.run(ops.rename(ROOT_INO, b"missing", ROOT_INO, b"b", 0, ctx()))
    assert e.value.errno == 2  # ENOENT
    with pytest.raises(pyfuse3.FUSEError) as e:
        asyncio.run(ops.rename(ROOT_INO, b"a", ROOT_INO, b"d", 0, ctx()))
    assert e.value.errno == 21  # EISDIR
    with pytest.raises(pyfuse3.FUSEError) as e:
        asyncio.run(ops.mkdir(ROOT_INO, b"a", 0o755, ctx()))
    assert e.value.errno == 17  # EEXIST
    assert sorted(s.name for s in ops.client.ls("/")) == ["a", "d"]
    assert ops.client.read_bytes("/a") == b"a"


@needs_fuse
def test_kill_9_during_renames_loses_no_rename_that_returned(tmp_path: Path) -> None:
    """8 clients rename files on the mount until it is killed with SIGKILL: every
    rename that returned is in the store (committed before it was acknowledged), every
    file is exactly once under its old or its new name."""
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    init_store(state)
    clients, per = 8, 200
    done: list[set[int]] = [set() for _ in range(clients)]
    with Client(state) as c:
        for k in range(clients):
            c.mkdir(f"/c{k}")
            for i in range(per):
                c.write_bytes(f"/c{k}/f{i}", b"x")
    with serve_child([sys.executable, "-m", "gfs.cli", "--state", str(state), "mount",
                      str(mnt)], state, mnt, timeout=DEADLINE) as mm:
        def work(k: int) -> None:
            for i in range(per):
                try:
                    os.rename(mnt / f"c{k}" / f"f{i}", mnt / f"c{k}" / f"g{i}")
                except OSError:
                    return  # the mount is gone
                done[k].add(i)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: sum(map(len, done)) >= 300, "300 renames", timeout=DEADLINE)
            os.kill(mm.proc.pid, signal.SIGKILL)
            mm.proc.wait(DEADLINE)
        finally:
            for t in threads:
                t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    with Client(state) as c:
        for k in range(clients):
            names = {s.name for s in c.ls(f"/c{k}")}
            for i in range(per):
                assert (f"f{i}" in names) != (f"g{i}" in names), (k, i)
            assert all(f"g{i}" in names for i in done[k]), f"a rename in c{k} was lost"
        report = c.fsck()
        assert report.ok, report.problems


