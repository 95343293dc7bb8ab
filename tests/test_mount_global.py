"""The global mount (gfs.mount_global) over the embedded store, through real FUSE:
POSIX operations, close-to-open, metadata cache round trips, errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.federation.auth import EntityKeys
from gfs.profiles import add_profile
from tests.test_cli_behaviour import assert_one_error, hutong
from tests.test_mount_helpers import (
    Mounted,
    assert_edits,
    assert_posix_errnos,
    errno_of,
    init_store,
    needs_fuse,
    serve_child,
)

pytestmark = needs_fuse


class GMounted:
    def __init__(self, m: Mounted, calls: Path) -> None:
        self.m = m
        self.mnt = m.mnt
        self.state = m.state
        self.calls_log = calls

    def calls(self) -> Counter[str]:
        text = self.calls_log.read_text() if self.calls_log.exists() else ""
        return Counter(text.split())


def global_mount(state: Path, mnt: Path, ttl: float = 1.0,
                 op_timeout: float = 60.0) -> Iterator[GMounted]:
    calls = mnt.parent / f"{mnt.name}.calls"
    argv = [sys.executable, "-m", "tests.global_mount_child", str(state), str(mnt),
            str(calls), "--ttl", str(ttl), "--op-timeout", str(op_timeout)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    with serve_child(argv, state, mnt, env=env) as m:
        yield GMounted(m, calls)


@pytest.fixture
def g(tmp_path: Path) -> Iterator[GMounted]:
    state = tmp_path / "state"
    init_store(state)
    yield from global_mount(state, tmp_path / "mnt")


def test_files_dirs_rename_symlink_xattr(g: GMounted) -> None:
    d = g.mnt / "dir"
    d.mkdir()
    assert_edits(d)
    os.symlink("a.txt", d / "ln")
    assert os.readlink(d / "ln") == "a.txt" and (d / "ln").read_bytes() == b"other"
    os.setxattr(d / "a.txt", "user.tag", b"v1")
    assert os.getxattr(d / "a.txt", "user.tag") == b"v1"
    assert "user.tag" in os.listxattr(d / "a.txt")
    os.removexattr(d / "a.txt", "user.tag")
    assert errno_of(os.getxattr, d / "a.txt", "user.tag") == errno.ENODATA
    (d / "sub").mkdir()
    (d / "sub" / "deep").write_bytes(b"deep")
    os.rename(d / "sub", g.mnt / "moved")
    assert (g.mnt / "moved" / "deep").read_bytes() == b"deep"
    os.chmod(d / "a.txt", 0o600)
    assert (d / "a.txt").stat().st_mode & 0o777 == 0o600
    os.truncate(d / "a.txt", 2)
    assert (d / "a.txt").read_bytes() == b"ot"
    os.unlink(d / "ln")
    os.unlink(d / "a.txt")
    os.rmdir(d)
    assert sorted(os.listdir(g.mnt)) == ["moved"]
    with Client(g.state) as c:  # all of it reached the namespace
        assert [s.name for s in c.ls("/")] == ["moved"]
        assert c.read_bytes("/moved/deep") == b"deep"


def test_ls_l_learns_once_that_acls_and_labels_are_unsupported(g: GMounted) -> None:
    """Only user.* extended attributes are stored; the others are ENOTSUP (as the
    kernel says of a namespace a file system has no handler for), which `ls -l`
    remembers for the mount: a few requests, not two per entry."""
    d = g.mnt / "many"
    d.mkdir()
    for i in range(300):
        (d / f"f{i:03d}").touch()
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        assert errno_of(os.getxattr, d / "f000", name) == errno.ENOTSUP
    out = subprocess.run(["strace", "-f", "-c", "-e", "trace=getxattr,lgetxattr", "ls", "-l",
                          str(d)], capture_output=True, text=True, check=True, timeout=120)
    assert len(out.stdout.splitlines()) == 301  # "total" and one line per entry
    calls = sum(int(line.split()[3]) for line in out.stderr.splitlines()
                if line.rstrip().endswith("getxattr"))
    assert 0 < calls <= 6, out.stderr


def test_errnos(g: GMounted) -> None:
    assert_posix_errnos(g.mnt)
    assert errno_of(os.link, g.mnt / "f", g.mnt / "h") == errno.EPERM
    assert (g.mnt / "f").read_bytes() == b"x"


def test_close_to_open_nothing_visible_before_close(g: GMounted) -> None:
    with Client(g.state) as c:
        f = open(g.mnt / "new", "wb")  # noqa: SIM115
        try:
            f.write(b"a" * 100_000)
            f.flush()  # in the spool only: the namespace has no such file yet
            assert not c.exists("/new")
        finally:
            f.close()
        assert c.read_bytes("/new") == b"a" * 100_000
        c.write_bytes("/new", b"b" * 200_000)  # written elsewhere, after our close
    # a new open sees the whole new version (the kernel's cached size is dropped)
    assert (g.mnt / "new").read_bytes() == b"b" * 200_000


def test_stable_inode_numbers(g: GMounted) -> None:
    (g.mnt / "a").write_bytes(b"1")
    ino = (g.mnt / "a").stat().st_ino
    os.rename(g.mnt / "a", g.mnt / "b")
    assert (g.mnt / "b").stat().st_ino == ino
    (g.mnt / "c").write_bytes(b"2")
    assert (g.mnt / "c").stat().st_ino != ino


def test_ls_l_of_a_big_directory_costs_one_listing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    n = 10_000
    with Client(state) as c:
        c.mkdir("/big")
        c.write_many([(f"/big/f{i:05d}", b"", None) for i in range(n)])
    for m in global_mount(state, tmp_path / "mnt", ttl=60.0):
        before = m.calls()
        names = os.listdir(m.mnt / "big")
        sizes = [os.lstat(m.mnt / "big" / name).st_size for name in names]
        after = m.calls() - before
        assert len(names) == n and sizes == [0] * n
        assert after["ls"] == 1, after
        assert after["stat"] <= 3, after  # the path to the directory, not its entries


def test_an_unchanged_file_is_read_again_from_the_page_cache(g: GMounted) -> None:
    data = os.urandom(3 << 20)
    with Client(g.state) as c:
        c.write_bytes("/f", data)
    assert (g.mnt / "f").read_bytes() == data  # first open: fetched
    before = g.calls()
    assert (g.mnt / "f").read_bytes() == data  # same version: the kernel's pages
    again = g.calls() - before
    # (one stat: the reader of that version is kept, no manifest is fetched again)
    assert again == {"stat": 1}, again
    with Client(g.state) as c:  # a new version (same size) behind the mount's back
        c.write_bytes("/f", data[::-1])
    deadline = time.monotonic() + 10
    while (g.mnt / "f").read_bytes() != data[::-1]:  # within the metadata TTL
        assert time.monotonic() < deadline, "the new version never showed"
    assert g.calls()["read"] > before["read"]


def _faults(m: GMounted, **kinds: list[str]) -> None:
    tmp = m.calls_log.with_suffix(".tmp")
    tmp.write_text(json.dumps(kinds))
    tmp.replace(Path(str(m.calls_log) + ".faults"))  # the child reads it whole


def test_read_only_entity_gives_erofs_and_reads_continue(g: GMounted) -> None:
    (g.mnt / "e").mkdir()
    (g.mnt / "e" / "old").write_bytes(b"committed")
    _faults(g, readonly=["/e"])
    assert (g.mnt / "e" / "old").read_bytes() == b"committed"  # reads continue
    assert errno_of(os.mkdir, g.mnt / "e" / "sub") == errno.EROFS
    assert errno_of(os.unlink, g.mnt / "e" / "old") == errno.EROFS
    # a write is spooled; its commit at close() fails, and nothing of it is visible
    f = open(g.mnt / "e" / "new", "wb")  # noqa: SIM115
    f.write(b"half")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EROFS
    f2 = open(g.mnt / "e" / "old", "r+b")  # noqa: SIM115
    f2.write(b"X")
    f2.flush()
    with pytest.raises(OSError) as e:
        os.fsync(f2.fileno())  # fsync returns the commit's error too
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        f2.close()  # and so does every close while it is not committed
    assert e.value.errno == errno.EROFS
    with Client(g.state) as c:
        assert not c.exists("/e/new") and c.read_bytes("/e/old") == b"committed"
    _faults(g)
    (g.mnt / "e" / "again").write_bytes(b"ok")  # the primary is back: writes work
    assert (g.mnt / "e" / "again").read_bytes() == b"ok"


def test_unreachable_sites_give_ehostunreach(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with Client(state) as c:
        c.mkdir("/far")
        c.write_bytes("/far/f", b"x" * 1000)
    for m in global_mount(state, tmp_path / "mnt", ttl=0.0):
        _faults(m, unreachable=["/far"])
        assert errno_of(os.stat, m.mnt / "far" / "f") == errno.EHOSTUNREACH
        assert errno_of((m.mnt / "far" / "f").read_bytes) == errno.EHOSTUNREACH
        assert os.listdir(m.mnt) == ["far"]  # the rest of the tree still answers


def test_a_hung_back_end_is_bounded_by_the_op_timeout(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with Client(state) as c:
        c.mkdir("/slow")
        c.write_bytes("/slow/f", b"x")
    for m in global_mount(state, tmp_path / "mnt", ttl=0.0, op_timeout=1.0):
        _faults(m, hang=["/slow"])
        t0 = time.monotonic()
        assert errno_of(os.stat, m.mnt / "slow" / "f") == errno.EHOSTUNREACH
        assert time.monotonic() - t0 < 10  # the op timeout, not the back end's hang
        assert "gave no answer" in m.m.log_text()
        _faults(m)  # lifted: the same call answers again
        assert os.stat(m.mnt / "slow" / "f").st_size == 1


def test_lock_file_pattern_of_git(g: GMounted) -> None:
    """Create x.lock exclusively, chmod it before anything is committed, close, rename
    over x; again and again (what git does to its config and index)."""
    d = g.mnt / "repo"
    d.mkdir()
    for i in range(3):
        fd = os.open(d / "config.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        os.chmod(d / "config.lock", 0o640)  # not committed yet: given at the commit
        os.write(fd, f"version {i}\n".encode())
        os.close(fd)
        os.rename(d / "config.lock", d / "config")
        assert (d / "config").read_bytes() == f"version {i}\n".encode()
        assert (d / "config").stat().st_mode & 0o777 == 0o640
        assert not (d / "config.lock").exists()


def test_entries_are_shown_as_the_mounting_users_and_truncate_keeps_the_head(
        g: GMounted) -> None:
    with Client(g.state) as c:
        c.write_bytes("/theirs", bytes(range(256)) * 4000)
        c.chown("/theirs", 1234, 5678)  # an owner id of another machine
    st = os.stat(g.mnt / "theirs")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert errno_of(os.chown, g.mnt / "theirs", 4321, -1) == errno.EPERM
    os.truncate(g.mnt / "theirs", 1000)  # not open here: through a spool, one commit
    assert (g.mnt / "theirs").read_bytes() == (bytes(range(256)) * 4)[:1000]
    os.truncate(g.mnt / "theirs", 0)
    assert (g.mnt / "theirs").stat().st_size == 0


def test_sigterm_commits_a_file_held_open_then_unmounts(tmp_path: Path) -> None:
    """The embedded mount's drain (gfs.mount.serve), on the global mount: what an open
    writer wrote is committed whole, the mount unmounts and exits 0."""
    state = tmp_path / "state"
    init_store(state)
    data = os.urandom(3 << 20)
    for m in global_mount(state, tmp_path / "mnt"):
        f = open(m.mnt / "held.bin", "wb")  # noqa: SIM115
        f.write(data)
        f.flush()
        m.m.proc.send_signal(signal.SIGTERM)
        assert m.m.proc.wait(timeout=60) == 0, m.m.log_text()
        assert not os.path.ismount(m.mnt)
        with contextlib.suppress(OSError):
            f.close()
    with Client(state) as c:
        assert c.read_bytes("/held.bin") == data


def test_mount_of_a_profile_refuses_the_embedded_disk_tier_flags(tmp_path: Path) -> None:
    EntityKeys.create(tmp_path / "keys", "lab")
    add_profile("p", registry="http://127.0.0.1:9", entity="lab", keys=tmp_path / "keys",
                plaintext=True)
    (tmp_path / "mnt").mkdir()
    proc = hutong("--profile", "p", "mount", str(tmp_path / "mnt"), "--disk-cache-dir",
                  str(tmp_path / "c"), check=False)
    assert proc.returncode == 2
    assert_one_error(proc.stderr)
    assert b"cache directory" in proc.stderr and not os.path.ismount(tmp_path / "mnt")


def test_xattr_of_a_file_still_being_written(g: GMounted) -> None:
    with open(g.mnt / "new.bin", "wb") as f:
        f.write(b"part one")
        f.flush()
        os.setxattr(g.mnt / "new.bin", "user.origin", b"sensor-7")  # not committed yet
        f.write(b", part two")
    assert (g.mnt / "new.bin").read_bytes() == b"part one, part two"
    assert os.getxattr(g.mnt / "new.bin", "user.origin") == b"sensor-7"
