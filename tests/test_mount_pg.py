"""The mount's request path on PostgreSQL: round trips per request and what they may
skip without showing a stale or wrong answer (the handlers driven directly on a real
server; the FUSE side is tested in tests/test_mount*.py)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import psycopg
import pyfuse3
import pytest

from gfs.client import Client
from gfs.meta import ROOT_INO, Inode, Kind
from gfs.mount import HutongOperations, MountOptions
from gfs.mount_recent import RecentDirs

T = TypeVar("T")


def ctx() -> pyfuse3.RequestContext:
    return cast(pyfuse3.RequestContext, SimpleNamespace(uid=0, gid=0, pid=os.getpid(),
                                                        umask=0o022))


@pytest.fixture
def ops(tmp_path: Path, pg_url: str) -> Iterator[HutongOperations]:
    client = Client.init(tmp_path / "s", meta=pg_url)
    o = HutongOperations(client, MountOptions(attr_timeout=0.5, entry_timeout=0.5))
    try:
        yield o
    finally:
        o.close()
        client.close()


def trips(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], Coroutine[Any, Any, T]]
          ) -> tuple[T, int]:
    """Run the handler coroutine `fn()` and count its round trips to the server."""
    count = [0]
    wait = psycopg.Connection.wait

    def counting(self: psycopg.Connection[object], *a: object, **k: object) -> object:
        count[0] += 1
        return wait(self, *a, **k)  # type: ignore[arg-type]

    with monkeypatch.context() as mp:
        mp.setattr(psycopg.Connection, "wait", counting)
        out = asyncio.run(fn())
    return out, count[0]


def _file(ops: HutongOperations, parent: int, name: bytes, data: bytes = b"x") -> int:
    async def go() -> int:
        fi, attr = await ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                    ctx())
        await ops.write(fi.fh, 0, data)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        return attr.st_ino
    return asyncio.run(go())


def test_a_directory_changed_here_is_stat_without_a_round_trip(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a change of its entries here (which makes the kernel drop its attributes),
    the directory's GETATTR is answered from what the change committed: no round trip
    (1 before), with the mtime and link count the server holds."""
    d = asyncio.run(ops.mkdir(ROOT_INO, b"d", 0o755, ctx())).st_ino
    _file(ops, d, b"f")
    for change in (lambda: ops.unlink(d, b"f", ctx()),
                   lambda: ops.mkdir(d, b"sub", 0o755, ctx()),
                   lambda: ops.rename(d, b"sub", d, b"sub2", 0, ctx())):
        asyncio.run(change())
        attr, n = trips(monkeypatch, lambda: ops.getattr(d, ctx()))
        assert n == 0
        with ops.client.engine.read() as txn:
            on_server = txn.get_inode(d)
        assert on_server is not None
        assert (attr.st_mtime_ns, attr.st_nlink) == (on_server.mtime_ns, on_server.nlink)


def test_a_directory_read_elsewhere_still_asks_the_server(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only directories this mount's transactions wrote are served from memory: the
    root, never changed here, costs its round trip."""
    _, n = trips(monkeypatch, lambda: ops.getattr(ROOT_INO, ctx()))
    assert n == 1


def test_an_own_chmod_is_never_hidden_and_another_clients_shows_within_the_timeout(
        ops: HutongOperations, pg_url: str, tmp_path: Path) -> None:
    """Every write of the mount passes the watcher, so a GETATTR after this mount's own
    chmod of a directory shows it at once; another client's chmod of it shows within
    the attribute timeout (as the kernel's own attribute cache would)."""
    d = asyncio.run(ops.mkdir(ROOT_INO, b"d", 0o755, ctx())).st_ino
    fields = cast(pyfuse3.SetattrFields, SimpleNamespace(
        update_mode=True, update_uid=False, update_gid=False, update_size=False,
        update_atime=False, update_mtime=False, update_ctime=False))
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFDIR | 0o700
    asyncio.run(ops.setattr(d, attr, fields, None, ctx()))
    assert stat.S_IMODE(asyncio.run(ops.getattr(d, ctx())).st_mode) == 0o700
    with Client(tmp_path / "s") as other:
        other.chmod("/d", 0o711)
    end = time.monotonic() + 0.5 + 5.0  # the timeout, and room for a loaded machine
    while stat.S_IMODE(asyncio.run(ops.getattr(d, ctx())).st_mode) != 0o711:
        assert time.monotonic() < end, "another client's chmod never showed"
        time.sleep(0.02)


def test_pending_file_getattr_needs_no_thread_and_no_server(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file created here and not committed yet is stat'ed from memory, on the loop."""
    async def go() -> tuple[int, int]:
        fi, attr = await ops.create(ROOT_INO, b"new", 0o644, os.O_WRONLY | os.O_CREAT, ctx())
        with monkeypatch.context() as mp:
            mp.setattr(ops, "_run", None)  # a trip to a thread would fail
            got = await ops.getattr(attr.st_ino, ctx())
        await ops.release(fi.fh)
        return attr.st_ino, got.st_ino
    created, got = asyncio.run(go())
    assert created == got
    assert ops.wb.pending.inos() == []  # committed at release


def _dir(ino: int) -> Inode:
    return Inode(ino, ROOT_INO, Kind.DIR, 0o755, 0, 0, 0, 1, 1, 1, 2)


def test_recent_dirs_keep_directories_for_the_timeout_only() -> None:
    recent = RecentDirs(ttl=0.2, limit=2)
    f = Inode(9, ROOT_INO, Kind.FILE, 0o644, 0, 0, 0, 1, 1, 1, 1)
    recent.committed({5: _dir(5), 9: f})
    assert recent.get(5) == _dir(5) and recent.get(9) is None  # files are not kept
    recent.committed({5: None})  # deleted
    assert recent.get(5) is None
    recent.committed({1: _dir(1)})
    recent.committed({2: _dir(2)})
    recent.committed({3: _dir(3)})  # over the limit: the oldest goes
    assert recent.get(1) is None and recent.get(3) == _dir(3)
    end = time.monotonic() + 5.0
    while recent.get(3) is not None:  # gone once the timeout passed
        assert time.monotonic() < end
        time.sleep(0.02)
