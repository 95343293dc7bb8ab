"""The mount's request path on PostgreSQL: round trips per request and what they may
skip without showing a stale or wrong answer (the handlers driven directly on a real
server; the FUSE side is tested in tests/test_mount*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import psycopg
import pyfuse3
import pytest

from gfs import namespace
from gfs.client import Client
from gfs.meta import ROOT_INO, Inode, Kind
from gfs.mount import HutongOperations, MountOptions
from gfs.mount_overlay import Written
from gfs.mount_recent import RecentDirs
from gfs.mount_writeback import Spool
from tests.test_mount_helpers import mount as serve_child_mount
from tests.test_mount_helpers import needs_fuse

T = TypeVar("T")


def ctx() -> pyfuse3.RequestContext:
    return cast(pyfuse3.RequestContext, SimpleNamespace(uid=0, gid=0, pid=os.getpid(),
                                                        umask=0o022))


def _operations(state: Path, pg_url: str, ttl: float) -> Iterator[HutongOperations]:
    """Mount operations (no FUSE) on a new store on PostgreSQL, entry and attribute
    timeouts `ttl`."""
    client = Client.init(state, meta=pg_url)
    o = HutongOperations(client, MountOptions(attr_timeout=ttl, entry_timeout=ttl))
    try:
        yield o
    finally:
        o.close()
        client.close()


@pytest.fixture
def ops(tmp_path: Path, pg_url: str) -> Iterator[HutongOperations]:
    yield from _operations(tmp_path / "s", pg_url, 0.5)


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


def test_a_listing_of_a_directory_with_entries_is_one_round_trip(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ls` of a directory with entries: one query brings the entries and their inodes
    (2 before: the directory was read first). An empty directory, a file and a missing
    inode still get their answers (one more query tells which)."""
    d = asyncio.run(ops.mkdir(ROOT_INO, b"d", 0o755, ctx())).st_ino
    for i in range(5):
        _file(ops, d, b"f%d" % i)
    e = asyncio.run(ops.mkdir(ROOT_INO, b"e", 0o755, ctx())).st_ino
    f = _file(ops, ROOT_INO, b"f")

    async def names(ino: int) -> list[bytes]:
        fh = await ops.opendir(ino, ctx())
        try:
            return [n for n, _ in ops._dirs[fh]]
        finally:
            await ops.releasedir(fh)
    listed, n = trips(monkeypatch, lambda: names(d))
    assert (listed, n) == ([b"f%d" % i for i in range(5)], 1)
    assert trips(monkeypatch, lambda: names(e)) == ([], 2)
    for ino, code in ((f, errno.ENOTDIR), (987654321, errno.ENOENT)):
        with pytest.raises(pyfuse3.FUSEError) as err:
            asyncio.run(names(ino))
        assert err.value.errno == code


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


# -- creates ---------------------------------------------------------------------------

TRUNC = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


async def _miss(ops: HutongOperations, parent: int, name: bytes) -> None:
    """The kernel's lookup before a create: a miss, answered as a negative entry."""
    assert (await ops.lookup(parent, name, ctx())).st_ino == 0


def _close(ops: HutongOperations, fh: int, data: bytes) -> None:
    async def go() -> None:
        await ops.write(fh, 0, data)
        await ops.flush(fh)
        await ops.release(fh)
    asyncio.run(go())


def _close_together(ops: HutongOperations, writes: list[tuple[int, bytes]]) -> None:
    """Write each (handle, data) at offset 0, then flush them together (one batch, in
    this order) and release them."""
    async def go() -> None:
        for fh, data in writes:
            await ops.write(fh, 0, data)
        await asyncio.gather(*(ops.flush(fh) for fh, _ in writes))
        await asyncio.gather(*(ops.release(fh) for fh, _ in writes))
    asyncio.run(go())


def test_a_create_right_after_its_lookup_missed_reads_nothing(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """open(O_CREAT|O_TRUNC) of a new name: the kernel's lookup missed and read the
    directory; the create then costs no round trip and no thread (1 round trip
    before), and the file lands at its close."""
    _file(ops, ROOT_INO, b"first")  # (reserves a block of inode numbers: a transaction)
    asyncio.run(_miss(ops, ROOT_INO, b"new"))
    with monkeypatch.context() as mp:
        mp.setattr(ops, "_run", None)  # a trip to a thread would fail
        (fi, attr), n = trips(monkeypatch, lambda: ops.create(ROOT_INO, b"new", 0o644, TRUNC,
                                                              ctx()))
    assert n == 0
    _close(ops, fi.fh, b"content")
    assert ops.client.read_bytes("/new") == b"content"
    assert ops.client.stat("/new").ino == attr.st_ino


def test_a_name_taken_after_the_lookup_gets_the_content_not_replaced(
        ops: HutongOperations, tmp_path: Path) -> None:
    """Another client creates the name between this mount's lookup miss and its close:
    the close writes into their file as a new version (their inode, mode and owner
    kept, as if this open had come after their create), never replacing the file, and
    the kernel's inode of the create here shows that file."""
    asyncio.run(_miss(ops, ROOT_INO, b"x"))
    fi, attr = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"theirs")
        other.chmod("/x", 0o600)
        theirs = other.stat("/x").ino
    _close(ops, fi.fh, b"mine, whole")
    with Client(tmp_path / "s") as check:
        st = check.stat("/x")
        assert (st.ino, st.mode & 0o7777) == (theirs, 0o600)
        assert check.read_bytes("/x") == b"mine, whole"
        assert [e.path for e in check.ls("/")] == ["/x"]
    got = asyncio.run(ops.getattr(attr.st_ino, ctx()))  # the kernel's inode of it
    assert (got.st_ino, got.st_size) == (theirs, len(b"mine, whole"))


def test_a_name_taken_by_a_directory_after_the_lookup_fails_the_close(
        ops: HutongOperations, tmp_path: Path) -> None:
    """Another client makes a directory of the name between this create and its close:
    the close's flush fails with EISDIR (close(2) reports it; the content committed
    nowhere), the directory and its parent are as that client left them, another file
    closed in the same batch is committed, and the mount goes on (a listing, a mkdir)."""
    asyncio.run(_miss(ops, ROOT_INO, b"x"))
    fi, attr = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC, ctx()))
    fi2, _ = asyncio.run(ops.create(ROOT_INO, b"y", 0o644, TRUNC, ctx()))
    with Client(tmp_path / "s") as other:
        other.mkdir("/x")
        other.write_bytes("/x/inside", b"kept")
        before = other.stat("/x")

    async def close_both() -> tuple[BaseException | None, BaseException | None]:
        await ops.write(fi.fh, 0, b"mine")
        await ops.write(fi2.fh, 0, b"other file")
        outcome = await asyncio.gather(ops.flush(fi.fh), ops.flush(fi2.fh),
                                       return_exceptions=True)
        again = await asyncio.gather(ops.flush(fi.fh), return_exceptions=True)
        for fh in (fi.fh, fi2.fh):  # (release errors reach nobody)
            await asyncio.gather(ops.release(fh), return_exceptions=True)
        return cast(BaseException | None, outcome[0]), cast(BaseException | None, again[0])
    first, again = asyncio.run(close_both())
    for e in (first, again):  # every flush of it says so, not only the first
        assert isinstance(e, pyfuse3.FUSEError) and e.errno == errno.EISDIR
    with Client(tmp_path / "s") as check:
        assert check.stat("/x") == before
        assert [e.path for e in check.ls("/x")] == ["/x/inside"]
        assert check.read_bytes("/x/inside") == b"kept"
        assert check.read_bytes("/y") == b"other file"
        assert sorted(e.path for e in check.ls("/")) == ["/x", "/y"]
    assert not ops.wb.lost and attr.st_ino not in ops.wb.pending  # forgotten at release
    with pytest.raises(pyfuse3.FUSEError) as gone:  # the kernel's inode: no such file
        asyncio.run(ops.getattr(attr.st_ino, ctx()))
    assert gone.value.errno == errno.ENOENT
    asyncio.run(ops.mkdir(ROOT_INO, b"later", 0o755, ctx()))  # nothing left to commit
    assert ops.client.stat("/later").is_dir


def test_a_create_without_trunc_writes_over_a_file_made_meanwhile(
        ops: HutongOperations, tmp_path: Path) -> None:
    """open(O_CREAT) without O_TRUNC; another client creates the name before the close:
    as if this open had found their file, the bytes written here land at their offsets
    over their content, the rest of theirs kept (it was replaced whole before)."""
    theirs = b"0123456789abcdefghij"
    for name, writes in ((b"x", [(0, b"MINE"), (10, b"!!")]), (b"y", []),
                         (b"z", [(18, b"-tail-")])):
        fi, attr = asyncio.run(ops.create(ROOT_INO, name, 0o644,
                                          os.O_WRONLY | os.O_CREAT, ctx()))
        path = "/" + name.decode()
        with Client(tmp_path / "s") as other:
            other.write_bytes(path, theirs)
            ino = other.stat(path).ino

        async def close(fh: int = fi.fh, writes: list[tuple[int, bytes]] = writes) -> None:
            for off, data in writes:
                await ops.write(fh, off, data)
            await ops.flush(fh)
            await ops.release(fh)
        asyncio.run(close())
        want = bytearray(theirs)
        for off, data in writes:
            want[off:off + len(data)] = data
        with Client(tmp_path / "s") as check:
            assert check.read_bytes(path) == bytes(want)
            assert check.stat(path).ino == ino
        got = asyncio.run(ops.getattr(attr.st_ino, ctx()))  # the kernel's inode of it
        assert (got.st_ino, got.st_size) == (ino, len(want))


def test_a_lay_over_in_a_batch_commits_the_other_files_too(
        ops: HutongOperations, tmp_path: Path) -> None:
    """Closes committed together: the one whose name was taken meanwhile is laid over
    their file, the other file of the batch is created as usual."""
    fx, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY | os.O_CREAT, ctx()))
    fy, _ = asyncio.run(ops.create(ROOT_INO, b"y", 0o644, TRUNC, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"their long content")
    _close_together(ops, [(fx.fh, b"MY"), (fy.fh, b"y's own")])
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/x") == b"MYeir long content"
        assert check.read_bytes("/y") == b"y's own"


def test_a_file_removed_before_the_lay_over_reads_it_is_created_again(
        ops: HutongOperations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their file is unlinked between the commit finding it and the lay over reading it:
    the commit creates the file here after all, with what was written here."""
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY | os.O_CREAT, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"their long content")
    reader = ops.wb.reader

    def unlinked_first(ino: int) -> tuple[Any, bool]:
        with Client(tmp_path / "s") as other:
            other.rm("/x")
        monkeypatch.setattr(ops.wb, "reader", reader)
        return reader(ino)
    monkeypatch.setattr(ops.wb, "reader", unlinked_first)
    _close(ops, fi.fh, b"mine")
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/x") == b"mine"


def test_what_a_create_wrote_lays_over_their_content_as_posix_would() -> None:
    """`Written.merge` against the same writes and truncates replayed on their file."""
    class Theirs:
        def __init__(self, data: bytes) -> None:
            self.data, self.size = data, len(data)

        def pread(self, off: int, size: int) -> bytes:
            return self.data[off:off + size]

    theirs = bytes(range(65, 65 + 26))
    plans: list[list[tuple[str, int, bytes]]] = [
        [("w", 3, b"xyz")], [("t", 5, b""), ("w", 8, b"12")], [("w", 20, b"long tail!")],
        [("w", 0, b"ab"), ("t", 1, b""), ("t", 30, b""), ("w", 2, b"Q")], [("t", 40, b"")]]
    for plan in plans:
        ours, posix, written = Spool(), bytearray(theirs), Written()
        size = 0
        for op, off, data in plan:
            if op == "w":
                ours.pwrite(data, off)
                size = max(size, off + len(data))
                written.wrote(off, len(data))
                posix[len(posix):off] = bytes(max(0, off - len(posix)))
                posix[off:off + len(data)] = data
            else:
                ours.truncate(off)
                size = off
                written.truncated(off)
                posix = posix[:off] + bytes(max(0, off - len(posix)))
        merged = Spool()
        total = written.merge(Theirs(theirs), ours, size, merged)
        assert (total, merged.pread(total + 1, 0)) == (len(posix), bytes(posix)), plan


def test_an_exclusive_create_of_a_name_taken_after_the_lookup_is_eexist(
        ops: HutongOperations, tmp_path: Path) -> None:
    """O_CREAT|O_EXCL commits the entry in the create itself, in a transaction that
    fails on a taken name: EEXIST, and the other client's file is untouched."""
    asyncio.run(_miss(ops, ROOT_INO, b"x"))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"theirs")
    with pytest.raises(pyfuse3.FUSEError) as e:
        asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC | os.O_EXCL, ctx()))
    assert e.value.errno == errno.EEXIST
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/x") == b"theirs"


def test_an_open_without_excl_of_a_name_found_taken_opens_that_file(
        ops: HutongOperations, tmp_path: Path) -> None:
    """A create (no O_EXCL, no hint) that finds the name taken opens the file there:
    O_TRUNC empties it, as open(2) of an existing file does (EEXIST before)."""
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"theirs, long")
        theirs = other.stat("/x").ino
    fi, attr = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC, ctx()))
    assert attr.st_ino == theirs
    _close(ops, fi.fh, b"mine")
    assert ops.client.read_bytes("/x") == b"mine"
    assert ops.client.stat("/x").ino == theirs


def test_two_mounts_creating_one_name_exclusively_one_wins(
        ops: HutongOperations, tmp_path: Path, pg_url: str) -> None:
    """Two mounts of one namespace both miss the name, then both create it with O_EXCL:
    exactly one create succeeds, the other is EEXIST, and the winner's file is intact
    after its close (both succeeded before, and the later close replaced the file)."""
    other_client = Client.init(tmp_path / "s2", meta=pg_url)
    other = HutongOperations(other_client, MountOptions(attr_timeout=0.5, entry_timeout=0.5))
    try:
        for i in range(3):
            name = f"x{i}".encode()
            asyncio.run(_miss(ops, ROOT_INO, name))
            asyncio.run(_miss(other, ROOT_INO, name))
            outcomes: list[tuple[HutongOperations, int] | int] = []
            for o in (ops, other) if i % 2 else (other, ops):
                try:
                    fi, _ = asyncio.run(o.create(ROOT_INO, name, 0o644, TRUNC | os.O_EXCL,
                                                 ctx()))
                    outcomes.append((o, fi.fh))
                except pyfuse3.FUSEError as e:
                    outcomes.append(e.errno)
            winners = [w for w in outcomes if not isinstance(w, int)]
            assert len(winners) == 1 and errno.EEXIST in outcomes
            o, fh = winners[0]
            mine = f"the winner's, round {i}".encode()  # (each store has its own pool:
            _close(o, fh, mine)                         # no content shared across them)
            assert o.client.read_bytes(f"/x{i}") == mine
    finally:
        other.close()
        other_client.close()


@needs_fuse
def test_two_fuse_mounts_racing_an_exclusive_create_one_wins(tmp_path: Path,
                                                              pg_url: str) -> None:
    """Through the kernel: two mounts of one namespace, a thread on each opening the same
    new names with O_CREAT|O_EXCL at once: per name exactly one open succeeds and the
    other fails with EEXIST; the winner's content is what the name holds."""
    states = [tmp_path / "s1", tmp_path / "s2"]
    for s in states:
        Client.init(s, meta=pg_url).close()
    with serve_child_mount(states[0], tmp_path / "m1") as m1, \
            serve_child_mount(states[1], tmp_path / "m2") as m2:
        mounts = [m1.mnt, m2.mnt]
        rounds = 8
        start = threading.Barrier(2, timeout=30)
        won: list[list[int]] = [[], []]

        def racer(k: int) -> None:
            for i in range(rounds):
                start.wait()
                try:
                    fd = os.open(mounts[k] / f"x{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                 0o644)
                except FileExistsError:
                    continue
                try:
                    os.write(fd, f"mount {k} round {i}".encode())
                finally:
                    os.close(fd)
                won[k].append(i)

        threads = [threading.Thread(target=racer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(won[0] + won[1]) == list(range(rounds))  # one winner per name
        for k in range(2):
            with Client(states[k]) as c:
                for i in won[k]:
                    assert c.read_bytes(f"/x{i}") == f"mount {k} round {i}".encode()


# -- lookups -------------------------------------------------------------------------


def test_concurrent_lookups_share_one_query_each_getting_its_own_answer(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 lookups asked at once while the first is answered: one round trip for the
    first, one for all the others (16 before), each with its own answer: the inode
    found, ENOENT for a missing name (its directory noted as a miss), ENOTDIR below a
    file; and a lookup after another client's commit sees it."""
    from concurrent.futures import ThreadPoolExecutor

    from gfs.errors import NotADirError, NotFoundError
    from gfs.mount_lookups import LookupBatcher

    with Client.init(tmp_path / "s", meta=pg_url) as fs:
        fs.mkdir("/d")
        for i in range(8):
            fs.write_bytes(f"/d/f{i}", b"x")
        d = fs.stat("/d").ino
        f0 = fs.stat("/d/f0").ino
        misses: list[tuple[int, str]] = []
        pool = ThreadPoolExecutor(2)
        batcher = LookupBatcher(fs.engine, pool, lambda where, n: misses.append((where.ino, n)),
                                workers=1)
        asks = [(d, f"f{i}") for i in range(8)] + [(d, f"g{i}") for i in range(7)] + [(f0, "x")]

        async def all_at_once() -> list[Inode | BaseException]:
            return await asyncio.gather(*(batcher.lookup(p, n) for p, n in asks),
                                        return_exceptions=True)
        try:
            got, n = trips(monkeypatch, all_at_once)
            assert n <= 4 and batcher.batches <= 3  # (16 before: one each)
            for (_, name), answer in zip(asks, got, strict=True):
                if name.startswith("f"):
                    assert isinstance(answer, Inode)
                    assert answer.ino == fs.stat(f"/d/{name}").ino
                elif name.startswith("g"):
                    assert isinstance(answer, NotFoundError)
                else:
                    assert isinstance(answer, NotADirError)
            assert sorted(misses) == sorted((d, f"g{i}") for i in range(7))
            with Client(tmp_path / "s") as other:
                other.write_bytes("/d/g0", b"now")
            found = asyncio.run(batcher.lookup(d, "g0"))
            assert found.ino == fs.stat("/d/g0").ino
        finally:
            pool.shutdown()


@needs_fuse
def test_a_fuse_close_fails_when_another_mount_made_the_name_a_directory(
        tmp_path: Path, pg_url: str) -> None:
    """Through the kernel, two mounts of one namespace: A opens a new name with
    O_CREAT|O_TRUNC (after the kernel's lookup missed), B makes a directory of it with a
    file inside, A writes and closes: A's close(2) fails with EISDIR, B's directory is
    intact through both mounts, and nothing else of the namespace changed."""
    states = [tmp_path / "s1", tmp_path / "s2"]
    for s in states:
        Client.init(s, meta=pg_url).close()
    with serve_child_mount(states[0], tmp_path / "m1") as a, \
            serve_child_mount(states[1], tmp_path / "m2") as b:
        (b.mnt / "keep").write_bytes(b"unrelated")
        with Client(states[0]) as c:
            root_before = [e.path for e in c.ls("/")]
        fd = os.open(a.mnt / "x", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        try:
            (b.mnt / "x").mkdir()
            (b.mnt / "x" / "inside").write_bytes(b"theirs")
            os.write(fd, b"A's content")
        finally:
            with pytest.raises(IsADirectoryError):
                os.close(fd)
        for m in (a.mnt, b.mnt):
            assert (m / "x").is_dir()
            assert os.listdir(m / "x") == ["inside"]
        # (each state has its own pool: B's content is read through B)
        assert (b.mnt / "x" / "inside").read_bytes() == b"theirs"
        with Client(states[1]) as c:
            assert sorted(e.path for e in c.ls("/")) == sorted([*root_before, "/x"])
            assert c.read_bytes("/keep") == b"unrelated"
            assert c.stat("/x").is_dir


def _user(uid: int, gid: int | None = None) -> pyfuse3.RequestContext:
    """The request context of a process of user `uid` (no supplementary groups)."""
    return cast(pyfuse3.RequestContext, SimpleNamespace(
        uid=uid, gid=uid if gid is None else gid, pid=-1, umask=0o022))


def _failed_close(ops: HutongOperations, fh: int, data: bytes) -> BaseException | None:
    """Write `data` and close `fh`; what the flush raised."""
    async def go() -> BaseException | None:
        await ops.write(fh, 0, data)
        out = await asyncio.gather(ops.flush(fh), return_exceptions=True)
        await asyncio.gather(ops.release(fh), return_exceptions=True)
        return cast(BaseException | None, out[0])
    return asyncio.run(go())


def _theirs(tmp_path: Path, path: str, mode: int) -> None:
    """Another client makes `path`: user 2000's file of `mode`, content b"B's own"."""
    with Client(tmp_path / "s") as other:
        other.write_bytes(path, b"B's own")
        other.chown(path, 2000, 2000)
        other.chmod(path, mode)


def _intact(tmp_path: Path, path: str, mode: int) -> None:
    with Client(tmp_path / "s") as check:
        st = check.stat(path)
        assert (st.uid, st.mode & 0o7777, st.version) == (2000, mode, 1)
        assert check.read_bytes(path) == b"B's own"


@pytest.mark.parametrize("mode", [0o600, 0o444, 0o640])
def test_a_create_finding_another_users_file_needs_write_access_to_it(
        ops: HutongOperations, tmp_path: Path, mode: int) -> None:
    """User A's create (no O_EXCL) finds user B's file made since the kernel's lookup
    (the kernel checked only the directory): EACCES unless B's mode lets A write, B's
    file untouched (it was opened and truncated before); root and B may."""
    _theirs(tmp_path, "/x", mode)
    for flags in (TRUNC, os.O_WRONLY | os.O_CREAT):
        with pytest.raises(pyfuse3.FUSEError) as denied:
            asyncio.run(ops.create(ROOT_INO, b"x", 0o666, flags, _user(1000, 2000 + 1)))
        assert denied.value.errno == errno.EACCES
        _intact(tmp_path, "/x", mode)
    if mode & 0o040:  # B's group may read: a read-only open in that group succeeds
        fi, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, os.O_RDONLY | os.O_CREAT,
                                       _user(1000, 2000)))
        asyncio.run(ops.release(fi.fh))
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC, ctx()))  # root
    _close(ops, fi.fh, b"root's")
    assert ops.client.read_bytes("/x") == b"root's"


@pytest.mark.parametrize("flags", [TRUNC, os.O_WRONLY | os.O_CREAT])
def test_a_close_into_another_users_file_made_meanwhile_needs_write_access(
        ops: HutongOperations, tmp_path: Path, flags: int) -> None:
    """User B makes the name (a 0600 file) between user A's create and its close: A's
    close fails with EACCES, nothing of A's is committed, B's file intact; a file that
    lets A write gets A's content."""
    asyncio.run(_miss(ops, ROOT_INO, b"x"))
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o666, flags, _user(1000)))
    _theirs(tmp_path, "/x", 0o600)
    e = _failed_close(ops, fi.fh, b"A's content")
    assert isinstance(e, pyfuse3.FUSEError) and e.errno == errno.EACCES
    _intact(tmp_path, "/x", 0o600)
    assert not ops.wb.lost and not ops.wb.creators
    asyncio.run(_miss(ops, ROOT_INO, b"y"))
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"y", 0o666, flags, _user(1000)))
    _theirs(tmp_path, "/y", 0o606)
    assert _failed_close(ops, fi.fh, b"A's") is None
    laid = b"A's own" if flags & os.O_TRUNC == 0 else b"A's"  # over B's b"B's own"
    assert ops.client.read_bytes("/y") == laid


def test_an_append_create_losing_the_race_appends_after_theirs(
        ops: HutongOperations, tmp_path: Path) -> None:
    """Two hosts `echo line >> shared.log` on a log that did not exist: the one whose
    create lost appends its line after the winner's (as if its open had come after the
    winner's create), never over the winner's first bytes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    asyncio.run(_miss(ops, ROOT_INO, b"shared.log"))
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"shared.log", 0o644, flags, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/shared.log", b"winner's line\n")
    assert _failed_close(ops, fi.fh, b"mine\n") is None
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/shared.log") == b"winner's line\nmine\n"
        assert check.stat("/shared.log").version == 2
    assert not ops.wb.appends and not ops.wb.lost


def test_an_append_create_that_also_truncated_fails_its_close_and_keeps_theirs(
        ops: HutongOperations, tmp_path: Path) -> None:
    """An O_APPEND create whose file was also truncated here (where would the bytes go
    in theirs?) fails its close with EEXIST when it lost the race; theirs intact."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    asyncio.run(_miss(ops, ROOT_INO, b"shared.log"))
    fi, attr = asyncio.run(ops.create(ROOT_INO, b"shared.log", 0o644, flags, ctx()))
    ops.wb.truncate(attr.st_ino, 0)  # (as ftruncate(fd, 0) on the handle would)
    with Client(tmp_path / "s") as other:
        other.write_bytes("/shared.log", b"winner's line\n")
    e = _failed_close(ops, fi.fh, b"mine\n")
    assert isinstance(e, pyfuse3.FUSEError) and e.errno == errno.EEXIST
    assert ops.client.read_bytes("/shared.log") == b"winner's line\n"
    assert not ops.wb.appends and not ops.wb.lost


def test_a_lay_over_after_a_commit_midway_does_not_commit_the_others_again(
        ops: HutongOperations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer session commits midway through a batch (here after every file); the
    lay over that a later file of the batch needs retries only what was not committed:
    the file committed before it gets one version, counted once."""
    monkeypatch.setattr("gfs.store.COMMIT_CHUNKS", 1)
    fy, _ = asyncio.run(ops.create(ROOT_INO, b"y", 0o644, TRUNC, ctx()))
    fx, _ = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY | os.O_CREAT, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"their long content")
    before = ops.wb.stats.files
    _close_together(ops, [(fy.fh, b"y's own"), (fx.fh, b"MY")])
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/x") == b"MYeir long content"
        assert (check.read_bytes("/y"), check.stat("/y").version) == (b"y's own", 1)
    assert ops.wb.stats.files - before == 2


def _fields(**update: bool) -> pyfuse3.SetattrFields:
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    return cast(pyfuse3.SetattrFields, SimpleNamespace(
        **{f"update_{n}": update.get(n, False) for n in names}))


def test_the_inode_of_a_create_redirected_to_their_file_takes_changes_until_forgotten(
        ops: HutongOperations, tmp_path: Path) -> None:
    """A create here whose name another client took: an mtime set before the close is
    kept on their file; after the close, chmod and setxattr of the inode the kernel got
    here change their file (ENOENT before), truncate(2) too; a forget of that inode
    drops the redirect."""
    asyncio.run(_miss(ops, ROOT_INO, b"x"))
    fi, attr = asyncio.run(ops.create(ROOT_INO, b"x", 0o644, TRUNC, ctx()))
    mine = attr.st_ino
    times = pyfuse3.EntryAttributes()
    times.st_mtime_ns = 1_234_567_890_000_000_000
    asyncio.run(ops.write(fi.fh, 0, b"mine"))
    asyncio.run(ops.setattr(mine, times, _fields(mtime=True), fi.fh, ctx()))
    with Client(tmp_path / "s") as other:
        other.write_bytes("/x", b"theirs")
        theirs = other.stat("/x").ino
    asyncio.run(ops.flush(fi.fh))
    asyncio.run(ops.release(fi.fh))
    modes = pyfuse3.EntryAttributes()
    modes.st_mode = stat.S_IFREG | 0o640
    got = asyncio.run(ops.setattr(mine, modes, _fields(mode=True), None, ctx()))
    asyncio.run(ops.setxattr(mine, b"user.k", b"v", ctx()))
    assert got.st_ino == theirs
    assert asyncio.run(ops.getxattr(mine, b"user.k", ctx())) == b"v"
    assert b"user.k" in asyncio.run(ops.listxattr(mine, ctx()))
    with Client(tmp_path / "s") as check:
        st = check.stat("/x")
        assert (st.ino, st.mode & 0o7777, st.mtime_ns) == (theirs, 0o640, times.st_mtime_ns)
        assert check.read_bytes("/x") == b"mine"
    asyncio.run(ops.removexattr(mine, b"user.k", ctx()))
    assert asyncio.run(ops.listxattr(theirs, ctx())) == []
    size = pyfuse3.EntryAttributes()
    size.st_size = 2
    cut = asyncio.run(ops.setattr(mine, size, _fields(size=True), None, ctx()))  # truncate(2)
    assert (cut.st_ino, cut.st_size) == (theirs, 2)
    with Client(tmp_path / "s") as check:
        assert check.read_bytes("/x") == b"mi"
    asyncio.run(ops.forget([(mine, 1)]))
    assert mine not in ops.wb.redirects
    with pytest.raises(pyfuse3.FUSEError) as gone:
        asyncio.run(ops.getattr(mine, ctx()))
    assert gone.value.errno == errno.ENOENT


@pytest.mark.parametrize("flags", [TRUNC, os.O_WRONLY | os.O_CREAT])
def test_writing_into_another_users_setgid_file_clears_the_bit_as_open_would(
        ops: HutongOperations, tmp_path: Path, flags: int) -> None:
    """User A (not in the group) writes into user B's setgid file (02666, no group
    execute) found at the create or at the close: the setgid bit is cleared, as a
    write after open(2) of it is on ext4; the rest of the mode kept."""
    _theirs(tmp_path, "/found", 0o2666)
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"found", 0o666, flags, _user(1000)))
    _close(ops, fi.fh, b"A's")
    asyncio.run(_miss(ops, ROOT_INO, b"later"))
    fi, _ = asyncio.run(ops.create(ROOT_INO, b"later", 0o666, flags, _user(1000)))
    _theirs(tmp_path, "/later", 0o2666)
    _close(ops, fi.fh, b"A's")
    with Client(tmp_path / "s") as check:
        for path in ("/found", "/later"):
            assert check.stat(path).mode & 0o7777 == 0o666, path
            assert check.read_bytes(path).startswith(b"A's")
    assert not ops.wb.creators


def _seen_within(check: Callable[[], bool], ttl: float) -> float:
    """Seconds until `check()` held, polled up to `ttl` plus half a second (fails after)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < ttl + 0.5, "not seen within the metadata TTL"
        time.sleep(0.02)  # polling another mount's view, with a deadline
    return time.monotonic() - t0


@needs_fuse
def test_two_fuse_mounts_see_each_others_renames_and_a_stale_guess_is_not_trusted(
        tmp_path: Path, pg_url: str) -> None:
    """Two mounts of one namespace with the default 1 s entry and attribute timeouts.
    B stats f, A renames f to g, and B renames f right away (its kernel still holds
    f, so no lookup goes first): B's transaction assumed f as B read it, its guard
    finds it gone, and the rename runs again, reading: ENOENT, g intact, no second
    name for the file. Each mount's rename shows in the other within the TTL."""
    states = [tmp_path / "s1", tmp_path / "s2"]
    Client.init(states[0], meta=pg_url).close()
    Client.init(states[1], meta=pg_url).close()
    with serve_child_mount(states[0], tmp_path / "m1", "--attr-timeout", "1") as a, \
            serve_child_mount(states[1], tmp_path / "m2", "--attr-timeout", "1") as b:
        (a.mnt / "f").write_bytes(b"A's file")
        _seen_within(lambda: (b.mnt / "f").exists(), 1.0)
        os.rename(a.mnt / "f", a.mnt / "g")
        with pytest.raises(FileNotFoundError):
            os.rename(b.mnt / "f", b.mnt / "h")
        assert sorted(os.listdir(a.mnt)) == ["g"]
        assert os.stat(a.mnt / "g").st_nlink == 1
        _seen_within(lambda: sorted(os.listdir(b.mnt)) == ["g"], 1.0)
        os.rename(b.mnt / "g", b.mnt / "k")
        _seen_within(lambda: not (a.mnt / "g").exists() and (a.mnt / "k").exists(), 1.0)
        assert (a.mnt / "k").read_bytes() == b"A's file"
    with Client(states[0]) as c:
        assert [e.path for e in c.ls("/")] == ["/k"]
        assert c.fsck().ok


@pytest.mark.parametrize("workers", [1, 3])
def test_lookups_arriving_while_batches_wait_start_up_to_workers_batches(
        workers: int) -> None:
    """While the first batches wait for the server, a new lookup starts a batch of its
    own until `workers` are out; later ones queue and go together in one batch once a
    worker is free. Each caller gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from gfs.mount_lookups import LookupBatcher

    gate, lock = threading.Event(), threading.Lock()
    out: list[int] = []  # batches waiting at the gate at once, as each arrived
    sizes: list[int] = []

    class Gated(LookupBatcher):
        def _answer(self, batch: list[Any]) -> list[Inode | BaseException]:
            with lock:
                out.append(len(out) + 1 - len(sizes))
            gate.wait(timeout=30)
            with lock:
                sizes.append(len(batch))
            return [Inode(ino=100 + len(name), kind=Kind.FILE, parent=1, mode=0o644, uid=0,
                          gid=0, size=0, atime_ns=0, mtime_ns=0, ctime_ns=0)
                    for _, name, _ in batch]

    pool = ThreadPoolExecutor(8)
    batcher = Gated(cast(Any, None), pool, lambda where, n: None, workers=workers)

    async def ask() -> list[Inode]:
        first = []
        for i in range(workers):  # one at a time: each its own batch, held at the gate
            first.append(asyncio.ensure_future(batcher.lookup(1, "x" * (i + 1))))
            deadline = time.monotonic() + 10
            while len(out) < i + 1:
                assert time.monotonic() < deadline, "a worker did not start"
                await asyncio.sleep(0.005)  # polling the gate, with a deadline
        later = [asyncio.ensure_future(batcher.lookup(1, "y" * (i + 1))) for i in range(5)]
        await asyncio.sleep(0.05)  # (a worker that would start now would show in `out`)
        assert len(out) == workers
        gate.set()
        return list(await asyncio.gather(*first, *later))

    try:
        got = asyncio.run(ask())
    finally:
        gate.set()
        pool.shutdown()
    assert [n.ino for n in got] == [101 + i for i in range(workers)] + [101 + i for i in range(5)]
    assert max(out) == workers and sorted(sizes)[-1] == 5 and len(sizes) == workers + 1
    assert batcher.batches == workers + 1 and batcher.lookups == workers + 5


async def _listed_dir(ops: HutongOperations, d: int) -> None:
    """Look up three names of `d` (the third starts its read ahead) and wait for it."""
    assert ops._listings is not None
    reads = ops._listings.reads
    for i in range(3):
        await ops.lookup(d, b"f%d" % i, ctx())
    for _ in range(200):
        if ops._listings.reads > reads:
            await asyncio.sleep(0.02)  # (its future's completion reaches this loop)
            return
        await asyncio.sleep(0.01)  # the listing is read on a worker thread
    raise AssertionError("the directory was not read ahead")


def _names_dir(ops: HutongOperations, n: int) -> int:
    d = asyncio.run(ops.mkdir(ROOT_INO, b"d", 0o755, ctx())).st_ino
    for i in range(n):
        _file(ops, d, b"f%d" % i, b"x" * i)
    time.sleep(0.55)  # past the TTL of the changes made here (RecentDirs)
    return d


def test_lookups_of_many_names_of_a_directory_are_answered_from_one_listing(
        ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """After three lookups in one directory it is read ahead (one query); the next
    lookups in it, of names there or not, cost no round trip (one each before) and
    carry timeouts cut to what is left of the TTL."""
    d = _names_dir(ops, 20)

    asyncio.run(_listed_dir(ops, d))

    async def go() -> list[pyfuse3.EntryAttributes]:
        t0 = time.monotonic()
        out = [await ops.lookup(d, b"f%d" % i, ctx()) for i in range(3, 20)]
        out.append(await ops.lookup(d, b"nope", ctx()))
        assert time.monotonic() - t0 < 0.4  # (all within the TTL)
        return out
    got, n = trips(monkeypatch, go)
    assert n == 0
    with ops.client.engine.read() as txn:
        for i, a in enumerate(got[:-1], start=3):
            assert a.st_ino == txn.lookup(d, f"f{i}") and a.st_size == i
            assert 0 < a.entry_timeout < 0.5 and 0 < a.attr_timeout < 0.5
    assert got[-1].st_ino == 0 and 0 < got[-1].entry_timeout < 0.5


def test_another_clients_change_shows_within_the_ttl_of_a_listing(
        ops: HutongOperations, tmp_path: Path, pg_url: str) -> None:
    """Another client renames a listed name and makes a new one: an answer from the
    listing may be the old one, but the kernel may keep it only until the TTL since
    the listing was read; once it has passed, the lookups see the change."""
    d = _names_dir(ops, 10)
    other = Client(tmp_path / "s")  # the same store, its own engine (another client)
    try:
        async def go() -> None:
            await _listed_dir(ops, d)
            read_at = time.monotonic()
            other.mv("/d/f5", "/d/g5")
            old = await ops.lookup(d, b"f5", ctx())  # may be the listing's answer
            assert time.monotonic() + old.entry_timeout <= read_at + 0.5
            while time.monotonic() < read_at + 0.5:
                await asyncio.sleep(0.02)
            assert (await ops.lookup(d, b"f5", ctx())).st_ino == 0
            assert (await ops.lookup(d, b"g5", ctx())).st_ino == old.st_ino
        asyncio.run(go())
    finally:
        other.close()


@pytest.fixture
def slow_ops(tmp_path: Path, pg_url: str) -> Iterator[HutongOperations]:
    """`ops` with a 3 s TTL (listings outlive a loaded machine's pauses)."""
    yield from _operations(tmp_path / "s", pg_url, 3.0)


async def _lookups(ops: HutongOperations, d: int, names: list[bytes]
                   ) -> list[pyfuse3.EntryAttributes]:
    return [await ops.lookup(d, n, ctx()) for n in names]


def _as_server(ops: HutongOperations, d: int, names: list[bytes],
               got: list[pyfuse3.EntryAttributes]) -> None:
    """Each lookup in `d` answered as the server holds it now (inode, size, mode)."""
    with ops.client.engine.read() as txn:
        for n, a in zip(names, got, strict=True):
            ino = txn.lookup(d, n.decode())
            assert a.st_ino == (ino or 0), n
            node = None if ino is None else txn.get_inode(ino)
            if node is not None:
                assert (a.st_size, a.st_mode, a.st_nlink) == (
                    node.size, namespace.st_mode(node), node.nlink), n


def test_own_changes_are_applied_to_a_listing_and_answered_without_a_round_trip(
        slow_ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's own rename, unlink, create, mkdir, link and chmod in a listed
    directory show at once, answered from the listing (no round trip; every commit
    dropped every listing before, so each lookup went to the server)."""
    ops = slow_ops
    d = _names_dir(ops, 10)
    assert ops._listings is not None
    names = [b"f%d" % i for i in range(10)] + [b"g1", b"new", b"sub", b"f3-link", b"nope"]

    async def go() -> None:
        await _listed_dir(ops, d)
        await ops.rename(d, b"f1", d, b"g1", 0, ctx())
        await ops.unlink(d, b"f2", ctx())
        await ops.mkdir(d, b"sub", 0o700, ctx())
        f3 = (await ops.lookup(d, b"f3", ctx())).st_ino
        await ops.link(f3, d, b"f3-link", ctx())
        await ops.setattr((await ops.lookup(d, b"f4", ctx())).st_ino,
                          cast(Any, SimpleNamespace(st_mode=0o600)), _fields(mode=True), None,
                          ctx())
    asyncio.run(go())
    _file(ops, d, b"new", b"new bytes")
    reads = ops._listings.reads
    got, n = trips(monkeypatch, lambda: _lookups(ops, d, names))
    assert n == 0
    _as_server(ops, d, names, got)
    assert ops._listings.reads == reads and ops._listings.applied == 5  # (chmod: no entry)


def test_lookups_before_each_rename_cost_no_round_trip(
        slow_ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel looks up both names before each RENAME: in a directory this mount
    keeps renaming in, both are answered from its listing (the source found, the
    target missing): each rename costs its own round trip only (3 before: the
    first rename dropped the listing)."""
    ops = slow_ops
    d = _names_dir(ops, 10)

    async def renames() -> list[tuple[int, int]]:
        out = []
        for i in range(3, 10):
            src = await ops.lookup(d, b"f%d" % i, ctx())
            dst = await ops.lookup(d, b"g%d" % i, ctx())
            out.append((src.st_ino, dst.st_ino))
            await ops.rename(d, b"f%d" % i, d, b"g%d" % i, 0, ctx())
        return out
    asyncio.run(_listed_dir(ops, d))
    got, n = trips(monkeypatch, renames)
    assert n == 7
    with ops.client.engine.read() as txn:
        assert got == [(txn.lookup(d, f"g{i}"), 0) for i in range(3, 10)]
        assert all(txn.lookup(d, f"f{i}") is None for i in range(3, 10))


def test_a_create_after_a_miss_answered_by_a_listing_reads_nothing(
        slow_ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup miss answered from a listing hands the listed directory to the create
    that follows (no round trip, no thread; 1 round trip before)."""
    ops = slow_ops
    d = _names_dir(ops, 4)
    asyncio.run(_listed_dir(ops, d))
    with monkeypatch.context() as mp:
        mp.setattr(ops, "_run", None)  # a trip to a thread would fail

        async def go() -> tuple[Any, pyfuse3.EntryAttributes]:
            assert (await ops.lookup(d, b"new", ctx())).st_ino == 0
            return await ops.create(d, b"new", 0o644, TRUNC, ctx())
        (fi, attr), n = trips(monkeypatch, go)
    assert n == 0
    _close(ops, fi.fh, b"content")
    assert ops.client.read_bytes("/d/new") == b"content"
    assert ops.client.stat("/d/new").ino == attr.st_ino


def test_a_failed_or_uncertain_own_commit_leaves_no_change_in_a_listing(
        slow_ops: HutongOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolled-back transaction of this mount changes no listing; a commit whose
    outcome is unknown (the connection lost at COMMIT) drops the listings, so the
    lookups ask the server (here the change did commit, and shows)."""
    from gfs.errors import StateError
    from gfs.meta import pg_engine

    ops = slow_ops
    d = _names_dir(ops, 6)
    engine = ops.client.engine
    assert ops._listings is not None
    asyncio.run(_listed_dir(ops, d))
    f0 = asyncio.run(ops.lookup(d, b"f0", ctx())).st_ino
    with pytest.raises(RuntimeError), engine.write() as txn:
        txn.link(d, "ghost", f0)
        txn.unlink(d, "f1")
        raise RuntimeError("failed after its writes")
    with pytest.raises(pyfuse3.FUSEError):  # refused by the server's rules: no change
        asyncio.run(ops.rename(d, b"f2", 987654, b"x", 0, ctx()))
    names = [b"ghost", b"f1", b"f2", b"x"]
    got, n = trips(monkeypatch, lambda: _lookups(ops, d, names))
    assert n == 0
    _as_server(ops, d, names, got)

    real = pg_engine._Txn.commit
    with engine.write() as txn:  # an own change: the directory as committed is kept
        txn.link(d, "pre", f0)
    assert ops._recent is not None and ops._recent.get(d) is not None

    def lost(self: Any) -> None:
        real(self)
        raise psycopg.OperationalError("connection lost at COMMIT (injected)")
    monkeypatch.setattr(pg_engine._Txn, "commit", lost)
    with pytest.raises(StateError), engine.write() as txn:
        txn.link(d, "made", f0)
    monkeypatch.setattr(pg_engine._Txn, "commit", real)
    assert ops._listings.answer(d, "made") is None  # dropped: the server answers
    assert ops._recent.get(d) is None  # nor is the directory kept as it was before
    assert asyncio.run(ops.lookup(d, b"made", ctx())).st_ino == f0


def test_a_listing_read_across_a_commit_here_has_the_commit_applied(
        slow_ops: HutongOperations) -> None:
    """A commit of this process after a listing's snapshot began is applied to the
    listing once read (it was not kept before: the lookups asked the server)."""
    ops = slow_ops
    d = _names_dir(ops, 4)
    lst = ops._listings
    assert lst is not None
    engine = ops.client.engine
    real_read = engine.read

    class Listed:  # the snapshot is taken, then this mount commits a rename
        def __init__(self) -> None:
            self.ctx = real_read()

        def __enter__(self) -> Any:
            txn = self.ctx.__enter__()
            entries = list(txn.list_dir(d))
            t = threading.Thread(target=ops.client.mv, args=("/d/f1", "/d/g1"))
            t.start()
            t.join(30)
            txn.list_dir = lambda parent: iter(entries)
            return txn

        def __exit__(self, *exc: Any) -> None:
            self.ctx.__exit__(*exc)
    assert lst.wanted(d) is False and lst.wanted(d) is False and lst.wanted(d) is True
    cast(Any, engine).read = Listed
    try:
        lst.read(engine, d)
    finally:
        cast(Any, engine).read = real_read
    assert lst.reads == 1
    moved, gone = lst.answer(d, "g1"), lst.answer(d, "f1")
    assert moved is not None and moved[0] is not None and gone is not None
    assert gone[0] is None
    with engine.read() as txn:
        assert moved[0].ino == txn.lookup(d, "g1")


class _ThreeNames:
    """A read transaction of a fake engine for DirListings: directory d holds f0, f1
    and f2 (inodes d*100 + i); `before` runs as a listing begins."""

    def __init__(self, before: Callable[[], None] | None = None) -> None:
        self.before = before

    def list_dir(self, parent: int) -> Iterator[tuple[str, int]]:
        if self.before is not None:
            self.before()
        yield from ((f"f{i}", parent * 100 + i) for i in range(3))

    def get_inode(self, ino: int) -> Inode | None:
        return _dir(ino)


class _FakeEngine:
    """An engine whose read transactions are `txn()`."""

    def __init__(self, txn: Callable[[], Any] = _ThreeNames) -> None:
        self.txn = txn

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        yield self.txn()


def test_a_change_that_cannot_be_applied_exactly_drops_the_listing() -> None:
    """An entry naming an inode neither the commit nor the listing holds, a deleted
    inode still named, the directory deleted, a commit of unknown outcome: each
    drops the listing (the lookups ask the server); one it can apply keeps it."""
    from gfs.mount_listings import DirListings

    def listed() -> DirListings:
        lst = DirListings(5.0, after=1)
        assert lst.wanted(1)
        lst.read(cast(Any, _FakeEngine()), 1)
        assert lst.reads == 1
        return lst
    for inodes, entries in (({}, {(1, "x"): 555}),  # an inode not known here
                            ({101: None}, {}),  # deleted, still named f1
                            ({1: None}, {}),  # the directory itself
                            ({}, None)):  # unknown outcome
        lst = listed()
        lst.committed(cast(Any, inodes), entries)
        assert lst.answer(1, "f0") is None and lst.dropped == 1, (inodes, entries)
    lst = listed()
    lst.committed({101: None, 777: _dir(777)},
                  {(1, "f1"): None, (1, "f0"): 102, (1, "n"): 777, (2, "y"): 5})
    got = [lst.answer(1, n) for n in ("f0", "f1", "f2", "n")]
    assert [g[0].ino if g and g[0] else g and g[0] for g in got] == [102, None, 102, 777]
    assert lst.dropped == 0 and lst.applied == 1


def test_a_commit_that_fails_to_apply_drops_every_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If applying a commit to the listings raises, none is left half applied."""
    from gfs import mount_listings
    from gfs.mount_listings import DirListings

    lst = DirListings(5.0, after=1)
    for d in (1, 2):
        assert lst.wanted(d)
        lst.read(cast(Any, _FakeEngine()), d)
    assert lst.reads == 2
    real = mount_listings._Listing.apply
    calls = [0]

    def apply_once_then_fail(self: Any, *a: Any) -> bool:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("injected")
        return bool(real(self, *a))

    monkeypatch.setattr(mount_listings._Listing, "apply", apply_once_then_fail)
    with pytest.raises(RuntimeError):
        lst.committed({101: None}, {(1, "f1"): None, (2, "f0"): None})
    assert lst.answer(1, "f0") is None and lst.answer(2, "f1") is None


def test_a_read_that_ends_does_not_take_the_commits_of_the_next_read_of_its_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read ahead that keeps nothing (a commit of unknown outcome came during it)
    ends while a second read of the same directory has begun: the commits made during
    the second read must still reach it (review: the first read's cleanup removed the
    second read's list, and an own unlink stayed invisible for the TTL)."""
    from gfs.mount_listings import DirListings

    lst = DirListings(5.0, after=1)
    inside, go = threading.Event(), threading.Event()

    def during_first() -> None:
        lst.committed({}, None)  # an own commit of unknown outcome, meanwhile

    def during_second() -> None:
        inside.set()
        assert go.wait(10)

    first = _FakeEngine(lambda: _ThreeNames(during_first))
    later = _FakeEngine(lambda: _ThreeNames(during_second))
    second: list[threading.Thread] = []
    real = DirListings._read

    def read_then_second_begins(self: DirListings, *a: Any) -> None:
        real(self, *a)
        if not second:  # the first read is over, its cleanup still to come
            assert self.wanted(1)
            second.append(threading.Thread(target=self.read, args=(cast(Any, later), 1)))
            second[0].start()
            assert inside.wait(10)

    monkeypatch.setattr(DirListings, "_read", read_then_second_begins)
    assert lst.wanted(1)
    lst.read(cast(Any, first), 1)
    assert lst.reads == 0  # the first read kept nothing
    lst.committed({101: None}, {(1, "f1"): None})  # an own unlink, during the second read
    go.set()
    second[0].join(10)
    assert lst.reads == 1
    got = lst.answer(1, "f1")
    assert got is not None and got[0] is None  # gone at once, not inode 101 for the TTL
    assert lst.answer(1, "f0") is not None


@needs_fuse
def test_two_fuse_mounts_see_each_others_changes_in_a_listed_directory(
        tmp_path: Path, pg_url: str) -> None:
    """B stats every name of a directory (read ahead after three) and renames one
    itself, A renames one and creates one: B sees A's changes within the 1 s TTL,
    and its own at once."""
    states = [tmp_path / "s1", tmp_path / "s2"]
    Client.init(states[0], meta=pg_url).close()
    Client.init(states[1], meta=pg_url).close()
    with serve_child_mount(states[0], tmp_path / "m1", "--attr-timeout", "1") as a, \
            serve_child_mount(states[1], tmp_path / "m2", "--attr-timeout", "1") as b:
        (a.mnt / "d").mkdir()
        for i in range(10):
            (a.mnt / "d" / f"f{i}").write_bytes(b"x" * i)
        time.sleep(1.1)
        for i in range(10):
            assert os.stat(b.mnt / "d" / f"f{i}").st_size == i
        # B changes the listed directory itself (its listing is kept, the change applied)
        os.rename(b.mnt / "d" / "f6", b.mnt / "d" / "g6")
        assert os.stat(b.mnt / "d" / "g6").st_size == 6
        assert not (b.mnt / "d" / "f6").exists()
        os.rename(a.mnt / "d" / "f3", a.mnt / "d" / "g3")
        (a.mnt / "d" / "new").write_bytes(b"new")
        took = _seen_within(lambda: not (b.mnt / "d" / "f3").exists()
                            and (b.mnt / "d" / "g3").exists()
                            and (b.mnt / "d" / "new").exists(), 1.0)
        assert took <= 1.5
        os.unlink(b.mnt / "d" / "f4")
        assert not (b.mnt / "d" / "f4").exists()
        (b.mnt / "d" / "f5").write_bytes(b"changed here")
        assert os.stat(b.mnt / "d" / "f5").st_size == len(b"changed here")


def test_listings_are_bounded_and_expired_ones_are_dropped() -> None:
    """At most `limit` listings are kept, and reading one drops those past the TTL."""
    from gfs.mount_listings import DirListings

    lst = DirListings(0.3, after=1, limit=2)
    for d in (1, 2, 3):
        assert lst.wanted(d)
        lst.read(cast(Any, _FakeEngine()), d)
    assert lst.answer(1, "f0") is None  # the oldest, over the limit
    got = lst.answer(3, "f1")
    assert got is not None and got[0] is not None and got[0].ino == 301
    assert lst.answer(3, "nope") is not None  # listed: "no such entry"
    time.sleep(0.3)
    assert lst.wanted(4)
    lst.read(cast(Any, _FakeEngine()), 4)
    assert list(lst._lists) == [4]  # 2 and 3 expired, dropped
    with pytest.raises(ValueError, match="positive"):
        DirListings(0)
    # a directory too long to read ahead is not tried again every few lookups
    long = DirListings(5.0, after=1, max_entries=2)
    assert long.wanted(7)
    long.read(cast(Any, _FakeEngine()), 7)
    assert long.reads == 0 and long.answer(7, "f0") is None
    assert not long.wanted(7) and not long.wanted(7)


def test_a_listing_naming_a_missing_inode_is_not_read_again_every_few_lookups() -> None:
    """A directory whose entry names a missing inode (damaged metadata) is not kept,
    and not read ahead again for a while (it used to be read every `after` lookups)."""
    from gfs.mount_listings import DirListings

    reads: list[int] = []

    class Txn:
        def list_dir(self, parent: int) -> Iterator[tuple[str, int]]:
            reads.append(parent)
            yield from (("ok", 11), ("dangling", 12))

        def get_inode(self, ino: int) -> Inode | None:
            return _dir(ino) if ino == 11 else None

    lst = DirListings(5.0, after=1)
    assert lst.wanted(9)
    lst.read(cast(Any, _FakeEngine(Txn)), 9)
    assert lst.answer(9, "ok") is None and reads == [9]
    assert not any(lst.wanted(9) for _ in range(5))
