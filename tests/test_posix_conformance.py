"""POSIX conformance of the FUSE mount, by system call, against the local file system.

Every case runs twice: in a fresh directory of the machine's own file system
(ext4 here) and in a fresh directory of a real mount (``--allow-other``), each
time in a forked child that is root or an unprivileged user (`setgroups`,
`setgid`, `setuid`). A case records what each call returned (its value or its
errno) and the stat fields it cares about; the two records must be equal.
Times are compared as "changed or not" (after the clock has moved on one tick).
"""

from __future__ import annotations

import ctypes
import errno
import grp
import itertools
import os
import pickle
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_mount_helpers import Mounted, init_store, mount, needs_fuse

pytestmark = needs_fuse

USER, OTHER, GROUP = "hutong-posix", "hutong-posix2", "hutong-posixg"

#: ext4's largest file with 4 KiB blocks: larger sizes give EFBIG.
EXT4_MAX_FILE = ((1 << 32) - 1) << 12


def _ensure_accounts() -> None:
    """The unprivileged users and the extra group of the cases (made once)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    for name, extra in ((USER, [GROUP]), (OTHER, [])):
        try:
            pwd.getpwnam(name)
        except KeyError:
            cmd = ["useradd", "--no-create-home", "--user-group", "--shell", "/bin/false"]
            if extra:
                cmd += ["--groups", ",".join(extra)]
            subprocess.run([*cmd, name], check=True)


@dataclass(frozen=True)
class Who:
    """The identity a case acts as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass
class Ids:
    """The ids a case needs: the acting user, another user, a group of the user."""

    user: Who
    other_uid: int
    other_gid: int
    extra_gid: int


def _ids() -> Ids:
    u, o, g = pwd.getpwnam(USER), pwd.getpwnam(OTHER), grp.getgrnam(GROUP)
    return Ids(Who("user", u.pw_uid, u.pw_gid, (u.pw_gid, g.gr_gid)), o.pw_uid, o.pw_gid,
               g.gr_gid)


ROOT = Who("root", 0, 0, (0,))


@dataclass
class Env:
    """One run of a case: its directory, who acts, and the ids around."""

    d: Path
    who: Who
    ids: Ids
    on_mount: bool

    @property
    def root(self) -> bool:
        return self.who.uid == 0


@dataclass
class Record:
    """What a case saw, in order: (label, outcome) pairs."""

    rows: list[tuple[str, Any]] = field(default_factory=list)
    env: Env | None = None

    def call(self, label: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run `fn` and record its result (or errno name); returns the result or None."""
        try:
            out = fn(*args, **kw)
        except OSError as e:
            self.rows.append((label, errno.errorcode.get(e.errno or 0, str(e.errno))))
            return None
        self.rows.append((label, _plain(out)))
        return out

    def note(self, label: str, value: Any) -> None:
        """Record a value computed by the case."""
        self.rows.append((label, _plain(value)))

    def stat(self, label: str, path: Path | str, *fields: str, follow: bool = False) -> None:
        """Record stat fields of `path` (errno name if it cannot be stat'ed).

        "type" and "perm" split st_mode; "uid"/"gid" are named relative to the case
        ("me", "other", "root", "extra") so both runs compare equal."""
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError as e:
            self.rows.append((label, errno.errorcode.get(e.errno or 0)))
            return
        out: dict[str, Any] = {}
        for f in fields or ("type", "perm", "nlink", "uid", "gid", "size"):
            if f == "type":
                out[f] = stat.S_IFMT(st.st_mode)
            elif f == "perm":
                out[f] = oct(stat.S_IMODE(st.st_mode))
            elif f in ("uid", "gid"):
                out[f] = self._id_name(f, getattr(st, "st_" + f))
            else:
                out[f] = getattr(st, "st_" + f)
        self.rows.append((label, out))

    def _id_name(self, kind: str, value: int) -> str:
        assert self.env is not None
        ids = self.env.ids
        names = {0: "root"}
        if kind == "uid":
            names |= {ids.user.uid: "user", ids.other_uid: "other"}
        else:
            names |= {ids.user.gid: "user", ids.other_gid: "other", ids.extra_gid: "extra"}
        return names.get(value, str(value))


def _plain(v: Any) -> Any:
    """A comparable form of a call's result (fds and stat results reduced)."""
    if isinstance(v, os.stat_result):
        return "stat"
    if isinstance(v, (bytes, str, int, float, bool, type(None), tuple, list)):
        return v
    return type(v).__name__


#: Linux's clock id of the coarse real-time clock (not exported by the time module).
CLOCK_REALTIME_COARSE = 5


def tick() -> None:
    """Wait until the coarse clock the file systems stamp times with has moved on."""
    start = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    deadline = time.monotonic() + 1.0
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= start:
        assert time.monotonic() < deadline, "the coarse clock does not move"
        time.sleep(0.001)


def times(path: Path | str) -> tuple[int, int, int]:
    """(atime, mtime, ctime) of `path` in ns, not following symlinks."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def changed(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    """Which of atime, mtime, ctime changed: e.g. "-mc"."""
    return "".join(c if b != a else "-" for c, b, a in zip("amc", before, after, strict=True))


Setup = Callable[[Env], None]
Act = Callable[[Env, Record], None]


@dataclass
class Posix:
    """The two places the cases run in, and the accounts."""

    local: Path
    mnt: Path
    mounted: Mounted
    ids: Ids
    counter: Iterator[int]


@pytest.fixture(scope="session")
def posix() -> Iterator[Posix]:
    if os.geteuid() != 0:
        pytest.skip("the conformance cases switch users: run as root")
    _ensure_accounts()
    # both places under one world-searchable directory of the local file system,
    # at paths of the same length (PATH_MAX cases compare full lengths)
    base = Path(tempfile.mkdtemp(prefix="hutong-posix-", dir="/tmp"))
    base.chmod(0o755)
    local, mnt = base / "loc", base / "mnt"
    local.mkdir(mode=0o755)
    init_store(base / "state")
    try:
        with mount(base / "state", mnt, "--allow-other") as mounted:
            mnt.chmod(0o755)
            yield Posix(local, mnt, mounted, _ids(), itertools.count())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _in_child(who: Who, fn: Callable[[], Record]) -> Record:
    """Run `fn` in a forked child as `who`; its record (or its traceback re-raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups(list(who.groups))
            os.setgid(who.gid)
            os.setuid(who.uid)
            os.umask(0o022)
            payload = pickle.dumps(("ok", fn()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
            code = 1
        with os.fdopen(w, "wb") as out:
            out.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"case failed in the child ({who.name}):\n{value}")
    assert isinstance(value, Record)
    return value


def run_case(px: Posix, who: str, act: Act, setup: Setup | None = None) -> Record:
    """Run `setup` (as root) then `act` (as `who`) locally and on the mount; assert both
    records are equal and return the mount's."""
    n = next(px.counter)
    acting = ROOT if who == "root" else px.ids.user
    records = []
    for top, on_mount in ((px.local, False), (px.mnt, True)):
        env = Env(top / f"case{n}", acting, px.ids, on_mount)
        env.d.mkdir()
        env.d.chmod(0o777)
        if setup is not None:
            setup(env)

        def body(env: Env = env) -> Record:
            rec = Record(env=env)
            os.chdir(env.d)
            act(env, rec)
            rec.env = None
            return rec
        records.append(_in_child(acting, body))
    local, on_mount = records
    assert on_mount.rows == local.rows, _diff(local, on_mount)
    return on_mount


def _diff(local: Record, mnt: Record) -> str:
    lines = ["mount differs from the local file system:"]
    for i in range(max(len(local.rows), len(mnt.rows))):
        a = local.rows[i] if i < len(local.rows) else None
        b = mnt.rows[i] if i < len(mnt.rows) else None
        mark = "  " if a == b else "!!"
        lines.append(f"{mark} local {a!r}\n{mark} mount {b!r}")
    return "\n".join(lines)


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _write(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _own(env: Env, path: Path, owner: str = "user", group: str | None = None) -> None:
    """chown `path` (as root, in setup) to "user", "other" or "root"."""
    ids = env.ids
    uid = {"user": ids.user.uid, "other": ids.other_uid, "root": 0}[owner]
    gid = {"user": ids.user.gid, "other": ids.other_gid, "root": 0,
           "extra": ids.extra_gid}[group or owner]
    os.chown(path, uid, gid, follow_symlinks=False)


# -- mknod(2), mkfifo(3) ------------------------------------------------------

class TestMknod:
    def test_fifo(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            r.call("mkfifo", os.mkfifo, "p", 0o640)
            r.stat("stat", "p", "type", "perm", "nlink", "uid", "size")
            r.call("again", os.mkfifo, "p")
            r.call("open", lambda: os.close(os.open("p", os.O_RDONLY | os.O_NONBLOCK)))
            r.note("listed", sorted(os.listdir(".")))
            r.call("unlink", os.unlink, "p")
            r.call("gone", os.stat, "p")
        run_case(posix, who, act)

    def test_nodes(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            r.call("sock", os.mknod, "s", stat.S_IFSOCK | 0o600)
            r.call("reg", os.mknod, "f", stat.S_IFREG | 0o600)
            r.call("chr", os.mknod, "c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            r.call("blk", os.mknod, "b", stat.S_IFBLK | 0o600, os.makedev(7, 9))
            for name in "sfcb":
                r.stat(name, name, "type", "perm", "nlink", "uid", "gid", "size", "rdev")
            r.call("exists", os.mknod, "s", stat.S_IFSOCK | 0o600)
            r.call("missing parent", os.mknod, "no/s", stat.S_IFIFO | 0o600)
            r.call("rename", os.rename, "s", "s2")
            r.stat("renamed", "s2", "type", "perm")
        run_case(posix, who, act)

    def test_device_node_is_not_opened_on_the_mount(self, posix: Posix) -> None:
        # the mount is nodev (as every FUSE mount of an unprivileged user is): a device
        # node is metadata that can be listed and stat'ed, never a way to a device
        d = posix.mnt / f"case{next(posix.counter)}"
        d.mkdir()

        def act() -> Record:
            r = Record()
            os.chdir(d)
            r.call("mknod", os.mknod, "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            r.call("rdev", lambda: os.stat("null").st_rdev == os.makedev(1, 3))
            r.call("write", lambda: _write("null", b"gone"))
            r.call("read", _read, "null")
            return r
        assert _in_child(ROOT, act).rows == [("mknod", None), ("rdev", True),
                                             ("write", "EACCES"), ("read", "EACCES")]
        assert "nodev" in next(line for line in Path("/proc/mounts").read_text().splitlines()
                               if f" {posix.mnt} " in line)


# -- link(2) ------------------------------------------------------------------

class TestLink:
    def test_nlink_and_data_lifetime(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("a", b"first")
            os.mkdir("sub")
            r.call("link", os.link, "a", "b")
            r.call("link across dirs", os.link, "a", "sub/c")
            r.stat("a", "a", "nlink", "size")
            r.note("same inode", os.stat("a").st_ino == os.stat("sub/c").st_ino)
            _write("b", b"second content")
            r.call("read through a", _read, "a")
            r.call("unlink a", os.unlink, "a")
            r.stat("b", "b", "nlink", "size")
            r.call("read b", _read, "b")
            r.call("unlink b", os.unlink, "b")
            r.stat("c", "sub/c", "nlink", "size")
            r.call("read c", _read, "sub/c")
            r.note("listing", sorted(os.listdir(".")))
        run_case(posix, who, act)

    def test_errors(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x")
            os.mkdir("d")
            os.symlink("f", "sym")
            r.call("to existing", os.link, "f", "d")
            r.call("dir", os.link, "d", "d2")
            r.call("missing", os.link, "nope", "n")
            r.call("into missing dir", os.link, "f", "no/f")
            r.call("through a file", os.link, "f", "f/x")
            r.call("symlink itself", os.link, "sym", "sym2", follow_symlinks=False)
            r.stat("sym2", "sym2", "type", "nlink")
            r.call("long name", os.link, "f", "n" * 256)
        run_case(posix, who, act)

    def test_times(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x")
            os.mkdir("d")
            f0, d0 = times("f"), times("d")
            tick()
            os.link("f", "d/g")
            r.note("file", changed(f0, times("f")))
            r.note("dir", changed(d0, times("d")))
            f1, d1 = times("f"), times("d")
            tick()
            os.unlink("d/g")
            r.note("file after unlink", changed(f1, times("f")))
            r.note("dir after unlink", changed(d1, times("d")))
        run_case(posix, who, act)

    def test_rename_between_links(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            os.mkdir("x")
            os.mkdir("y")
            _write("x/a", b"data")
            os.link("x/a", "x/b")
            r.call("rename onto its own link", os.rename, "x/a", "x/b")
            r.note("both still there", sorted(os.listdir("x")))
            r.call("rename across dirs", os.rename, "x/a", "y/a")
            r.stat("moved", "y/a", "nlink")
            r.stat("other link", "x/b", "nlink")
            _write("y/c", b"other")
            r.call("rename over a link", os.rename, "y/c", "x/b")
            r.stat("survivor", "y/a", "nlink", "size")
            r.call("content", _read, "y/a")
        run_case(posix, who, act)


# -- NAME_MAX, PATH_MAX ----------------------------------------------------------

class TestNameMax:
    def test_name_max(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            ok, long = "n" * 255, "n" * 256
            r.call("create 255", _write, ok, b"x")
            r.call("stat 255", os.stat, ok)
            r.note("listed", [len(n) for n in os.listdir(".")])
            r.call("mkdir 255", os.mkdir, "d" * 255)
            r.call("create 256", _write, long, b"x")
            r.call("stat 256", os.stat, long)
            r.call("mkdir 256", os.mkdir, long)
            r.call("rename to 256", os.rename, ok, long)
            r.call("symlink 256", os.symlink, "x", long)
            r.call("multi-byte 255", _write, "é" * 127 + "n", b"y")
            r.call("multi-byte 256", _write, "é" * 128, b"y")
        run_case(posix, who, act)

    def test_path_max(self, posix: Posix, who: str) -> None:
        part = "p" * 200

        def act(env: Env, r: Record) -> None:
            # 25 levels: deeper than PATH_MAX from the case directory, reached by chdir
            def descend() -> None:
                for _ in range(25):
                    os.mkdir(part)
                    os.chdir(part)
            r.call("descend", descend)
            r.call("create deep", _write, "f", b"deep")
            r.call("read deep", _read, "f")
            r.call("stat deep", os.stat, "f")
            r.call("mkdir deep", os.mkdir, "d")
            r.call("rename deep", os.rename, "f", "d/g")
            r.call("link deep", os.link, "d/g", "h")
            r.call("unlink deep", os.unlink, "h")
            os.chdir(env.d)
            rel = "/".join([part] * 20)           # 4019 bytes
            r.call("4095 bytes", os.stat, rel + "/" + "x" * 75)
            r.call("4096 bytes", os.stat, rel + "/" + "x" * 76)
        run_case(posix, who, act)


# -- open(2), access(2), mkdir(2): permission checks -----------------------------

class TestPermissions:
    def test_file_bits(self, posix: Posix) -> None:
        def setup(env: Env) -> None:
            for name, owner, group, mode in (
                    ("owner_rw", "user", "user", 0o600), ("owner_r", "user", "user", 0o400),
                    ("root_only", "root", "root", 0o600), ("group_r", "other", "extra", 0o640),
                    ("group_none", "user", "extra", 0o066), ("other_r", "other", "other", 0o604),
                    ("other_none", "other", "user", 0o660)):
                p = env.d / name
                _write(p, b"secret")
                _own(env, p, owner, group)
                p.chmod(mode)

        def act(env: Env, r: Record) -> None:
            for name in ("owner_rw", "owner_r", "root_only", "group_r", "group_none",
                         "other_r", "other_none"):
                r.call(f"{name} read", _read, name)
                r.call(f"{name} write", lambda n=name: os.close(os.open(n, os.O_WRONLY)))
                r.call(f"{name} access", os.access, name, os.R_OK | os.W_OK)
                r.call(f"{name} exec", os.access, name, os.X_OK)
        run_case(posix, "user", act, setup)
        run_case(posix, "root", act, setup)

    def test_search_and_write_on_dirs(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, mode in (("nosearch", 0o766), ("noread", 0o733), ("nowrite", 0o755),
                               ("closed", 0o700)):
                p = env.d / name
                p.mkdir()
                _write(p / "f", b"x")
                (p / "sub").mkdir()
                _own(env, p, "other")
                p.chmod(mode)

        def act(env: Env, r: Record) -> None:
            for name in ("nosearch", "noread", "nowrite", "closed"):
                r.call(f"{name} stat", lambda n=name: os.stat(f"{n}/f").st_size)
                r.call(f"{name} list", lambda n=name: sorted(os.listdir(n)))
                r.call(f"{name} create", _write, f"{name}/new", b"y")
                r.call(f"{name} unlink", os.unlink, f"{name}/f")
                r.call(f"{name} mkdir", os.mkdir, f"{name}/sub2")
                r.call(f"{name} rename out", os.rename, f"{name}/sub", "out_" + name)
                r.call(f"{name} chdir", os.chdir, name)
                os.chdir(env.d)
        run_case(posix, who, act, setup)

    def test_sticky_directory(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            t = env.d / "tmp"
            t.mkdir()
            t.chmod(0o1777)
            for name, owner in (("mine", "user"), ("theirs", "other"), ("roots", "root")):
                _write(t / name, b"x")
                _own(env, t / name, owner)
                (t / name).chmod(0o666)
            (t / "dir_theirs").mkdir()
            _own(env, t / "dir_theirs", "other")

        def act(env: Env, r: Record) -> None:
            r.stat("mode", "tmp", "type", "perm")
            for name in ("mine", "theirs", "roots"):
                r.call(f"rename {name}", os.rename, f"tmp/{name}", f"tmp/{name}.moved")
            for name in ("mine", "theirs", "roots"):
                r.call(f"unlink {name}", os.unlink, f"tmp/{name}.moved")
                r.call(f"unlink {name} (unmoved)", os.unlink, f"tmp/{name}")
            r.call("rmdir theirs", os.rmdir, "tmp/dir_theirs")
            _write("tmp/new", b"mine now")
            r.call("rename over theirs", os.rename, "tmp/new", "tmp/theirs")
        run_case(posix, who, act, setup)

    def test_setgid_directory_inheritance(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            g = env.d / "g"
            g.mkdir()
            _own(env, g, "user", "extra")
            g.chmod(0o2777)

        def act(env: Env, r: Record) -> None:
            _write("g/f", b"x")
            os.mkdir("g/d")
            os.mkfifo("g/p")
            r.stat("file", "g/f", "perm", "gid")
            r.stat("dir", "g/d", "perm", "gid")
            r.stat("fifo", "g/p", "perm", "gid")
        run_case(posix, who, act, setup)


# -- chown(2), chmod(2) ----------------------------------------------------------

class TestChown:
    def test_rules(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, owner in (("mine", "user"), ("theirs", "other")):
                _write(env.d / name, b"x")
                _own(env, env.d / name, owner)

        def act(env: Env, r: Record) -> None:
            ids = env.ids
            r.call("no change", os.chown, "mine", -1, -1)
            r.call("same owner", os.chown, "mine", ids.user.uid, -1)
            r.call("give away", os.chown, "mine", ids.other_uid, -1)
            r.stat("after give away", "mine", "uid", "gid")
            r.call("group I am in", os.chown, "mine", -1, ids.extra_gid)
            r.stat("after chgrp", "mine", "uid", "gid")
            r.call("group I am not in", os.chown, "mine", -1, ids.other_gid)
            r.call("theirs", os.chown, "theirs", ids.user.uid, -1)
            r.call("theirs group", os.chown, "theirs", -1, ids.extra_gid)
            r.stat("theirs after", "theirs", "uid", "gid")
            r.call("missing", os.chown, "nope", 0, 0)
        run_case(posix, who, act, setup)

    def test_clears_setuid_setgid(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("sgid_noexec", 0o2644),
                               ("both", 0o6755)):
                _write(env.d / name, b"#!/bin/sh\n")
                _own(env, env.d / name, "user")
                (env.d / name).chmod(mode)
            (env.d / "dir").mkdir()
            _own(env, env.d / "dir", "user")
            (env.d / "dir").chmod(0o2755)

        def act(env: Env, r: Record) -> None:
            for name in ("suid", "sgid", "sgid_noexec", "both", "dir"):
                r.call(f"chgrp {name}", os.chown, name, -1, env.ids.extra_gid)
                r.stat(f"{name} after chgrp", name, "perm", "gid")
        run_case(posix, who, act, setup)

    def test_chmod_rules(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, owner, group in (("mine", "user", "user"), ("theirs", "other", "other"),
                                       ("mine_foreign_group", "user", "other")):
                _write(env.d / name, b"x")
                _own(env, env.d / name, owner, group)

        def act(env: Env, r: Record) -> None:
            r.call("mine", os.chmod, "mine", 0o6750)
            r.stat("mine after", "mine", "perm")
            r.call("theirs", os.chmod, "theirs", 0o777)
            r.stat("theirs after", "theirs", "perm")
            r.call("setgid, foreign group", os.chmod, "mine_foreign_group", 0o2755)
            r.stat("foreign group after", "mine_foreign_group", "perm")
            r.call("sticky file", os.chmod, "mine", 0o1644)
            r.stat("sticky after", "mine", "perm")
        run_case(posix, who, act, setup)


# -- write(2): setuid/setgid clearing -----------------------------------------------

class TestWrite:
    def test_write_clears_setuid(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, mode in (("suid", 0o4777), ("sgid", 0o2777), ("sgid_noexec", 0o2666),
                               ("truncated", 0o6777)):
                _write(env.d / name, b"0123456789")
                _own(env, env.d / name, "other")
                (env.d / name).chmod(mode)

        def act(env: Env, r: Record) -> None:
            for name in ("suid", "sgid", "sgid_noexec"):
                fd = os.open(name, os.O_WRONLY)
                r.call(f"write {name}", os.pwrite, fd, b"ab", 2)
                os.close(fd)
                r.stat(f"{name} after write", name, "perm", "size")
            r.call("truncate", os.truncate, "truncated", 3)
            r.stat("after truncate", "truncated", "perm", "size")
        run_case(posix, who, act, setup)

    def test_write_times(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x" * 100)
            t0 = times("f")
            tick()
            fd = os.open("f", os.O_WRONLY)
            r.call("write", os.pwrite, fd, b"yy", 10)
            os.close(fd)
            r.note("after write", changed(t0, times("f")))
            t1 = times("f")
            tick()
            fd = os.open("f", os.O_WRONLY)
            r.call("empty write", os.write, fd, b"")
            os.close(fd)
            r.note("after empty write", changed(t1, times("f")))
        run_case(posix, who, act)


# -- rename(2) ----------------------------------------------------------------------

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    """renameat2(2) relative to the working directory."""
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, old.encode(), at_fdcwd, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class TestRename:
    def test_errors(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            os.makedirs("a/b/c")
            os.makedirs("full/x")
            os.mkdir("empty")
            _write("f", b"x")
            _write("full/g", b"y")
            r.call("over non-empty dir", os.rename, "a", "full")
            r.call("into own subdir", os.rename, "a", "a/b/c/a")
            r.call("onto own subdir", os.rename, "a", "a/b")
            r.call("file over dir", os.rename, "f", "empty")
            r.call("dir over file", os.rename, "empty", "f")
            r.call("missing", os.rename, "nope", "x")
            r.call("to itself", os.rename, "f", "f")
            r.call("dir onto itself", os.rename, "a", "a")
            r.call("into missing dir", os.rename, "f", "nope/f")
            r.call("through a file", os.rename, "f", "f/x")
            r.call("dot", os.rename, "a/.", "z")
            r.call("dotdot", os.rename, "a/b/..", "z")
            r.call("dir over empty dir", os.rename, "a", "empty")
            r.note("top", sorted(os.listdir(".")))
            r.call("noreplace", renameat2, "f", "full/g", RENAME_NOREPLACE)
            r.call("noreplace free", renameat2, "f", "f2", RENAME_NOREPLACE)
        run_case(posix, who, act)

    def test_exchange(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"file")
            os.makedirs("d/x")
            r.call("exchange", renameat2, "f", "d", RENAME_EXCHANGE)
            r.stat("f", "f", "type")
            r.stat("d", "d", "type")
            r.call("f/x", os.stat, "f/x")
            r.call("d content", _read, "d")
            r.call("exchange missing", renameat2, "f", "nope", RENAME_EXCHANGE)
        run_case(posix, who, act)

    def test_times_and_dir_nlink(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            os.makedirs("src/moving/inner")
            os.mkdir("dst")
            _write("src/f", b"x")
            r.stat("src nlink", "src", "nlink")
            s0, d0, m0, f0 = times("src"), times("dst"), times("src/moving"), times("src/f")
            tick()
            os.rename("src/moving", "dst/moved")
            os.rename("src/f", "dst/f")
            r.note("src", changed(s0, times("src")))
            r.note("dst", changed(d0, times("dst")))
            r.note("moved dir", changed(m0, times("dst/moved")))
            r.note("moved file", changed(f0, times("dst/f")))
            r.stat("src nlink after", "src", "nlink")
            r.stat("dst nlink after", "dst", "nlink")
            r.stat("moved nlink", "dst/moved", "nlink")
            r.call("dotdot", lambda: os.stat("dst/moved/inner/../..").st_ino
                   == os.stat("dst").st_ino)
        run_case(posix, who, act)


# -- unlink(2), rmdir(2) --------------------------------------------------------------

class TestUnlinkRmdir:
    def test_errors(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            os.makedirs("d/sub")
            _write("f", b"x")
            os.symlink("d", "sym")
            r.call("unlink dir", os.unlink, "d")
            r.call("rmdir file", os.rmdir, "f")
            r.call("rmdir non-empty", os.rmdir, "d")
            r.call("rmdir missing", os.rmdir, "nope")
            r.call("unlink missing", os.unlink, "nope")
            r.call("unlink through file", os.unlink, "f/x")
            r.call("rmdir dot", os.rmdir, "d/sub/.")
            r.call("rmdir dotdot", os.rmdir, "d/sub/..")
            r.call("rmdir symlink", os.rmdir, "sym")
            r.call("unlink symlink", os.unlink, "sym")
            r.stat("dir still there", "d", "type")
            r.call("unlink long", os.unlink, "n" * 256)
            r.call("rmdir sub", os.rmdir, "d/sub")
            r.stat("d nlink", "d", "nlink")
            r.call("rmdir d", os.rmdir, "d")
            r.note("left", sorted(os.listdir(".")))
        run_case(posix, who, act)

    def test_mount_root_is_busy(self, posix: Posix) -> None:
        # the local counterpart of a mount's root is "/": both are mount points
        local = _in_child(ROOT, lambda: Record([("rmdir", _errno_of(os.rmdir, "/"))]))
        mounted = _in_child(ROOT, lambda: Record([("rmdir", _errno_of(os.rmdir,
                                                                     str(posix.mnt)))]))
        assert local.rows == mounted.rows == [("rmdir", "EBUSY")]

    def test_times(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            os.mkdir("d")
            os.mkdir("d/sub")
            _write("d/f", b"x")
            d0 = times("d")
            tick()
            os.unlink("d/f")
            r.note("after unlink", changed(d0, times("d")))
            d1 = times("d")
            tick()
            os.rmdir("d/sub")
            r.note("after rmdir", changed(d1, times("d")))
        run_case(posix, who, act)


def _errno_of(fn: Callable[..., Any], *args: Any) -> str:
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "?")
    return "ok"


# -- truncate(2), ftruncate(2) ---------------------------------------------------------

class TestTruncate:
    def test_sizes_and_errors(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"0123456789")
            os.mkdir("d")
            r.call("shrink", os.truncate, "f", 4)
            r.call("content", _read, "f")
            r.call("grow", os.truncate, "f", 8)
            r.call("content grown", _read, "f")
            r.call("negative", os.truncate, "f", -1)
            r.call("too big", os.truncate, "f", EXT4_MAX_FILE + 1)
            r.call("dir", os.truncate, "d", 0)
            r.call("missing", os.truncate, "nope", 0)
            fd = os.open("f", os.O_RDONLY)
            r.call("ftruncate read-only", os.ftruncate, fd, 0)
            os.close(fd)
            fd = os.open("f", os.O_RDWR)
            r.call("ftruncate", os.ftruncate, fd, 2)
            r.call("ftruncate too big", os.ftruncate, fd, EXT4_MAX_FILE + 1)
            r.call("read after ftruncate", os.pread, fd, 100, 0)
            os.close(fd)
            r.stat("final", "f", "size")
        run_case(posix, who, act)

    def test_permission(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            _write(env.d / "ro", b"0123456789")
            _own(env, env.d / "ro", "other")
            (env.d / "ro").chmod(0o644)

        def act(env: Env, r: Record) -> None:
            r.call("truncate without write permission", os.truncate, "ro", 1)
            r.stat("size", "ro", "size")
        run_case(posix, who, act, setup)

    def test_times(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"0123456789")
            t = times("f")
            tick()
            os.truncate("f", 5)
            r.note("truncate shrinking", changed(t, t := times("f")))
            tick()
            os.truncate("f", 5)
            r.note("truncate same size", changed(t, t := times("f")))
            tick()
            fd = os.open("f", os.O_WRONLY)
            os.ftruncate(fd, 5)
            os.close(fd)
            r.note("ftruncate same size", changed(t, t := times("f")))
            tick()
            os.close(os.open("f", os.O_WRONLY | os.O_TRUNC))
            r.note("O_TRUNC", changed(t, times("f")))
        run_case(posix, who, act)


# -- utimensat(2) ------------------------------------------------------------------------

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, atime: tuple[int, int] | None,
              mtime: tuple[int, int] | None) -> None:
    """utimensat(2) relative to the working directory (None for both: NULL times)."""
    at_fdcwd = -100
    if atime is None or mtime is None:
        ts = None
    else:
        ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(at_fdcwd, path.encode(), ts, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class TestUtimensat:
    def test_now_and_omit(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x")
            past = (1_000_000_000, 5)
            r.call("set both", utimensat, "f", past, (1_100_000_000, 7))
            st = os.stat("f")
            r.note("both", (st.st_atime_ns, st.st_mtime_ns))
            t = times("f")
            tick()
            r.call("omit mtime", utimensat, "f", (1_200_000_000, 9), (0, UTIME_OMIT))
            st = os.stat("f")
            r.note("atime set, mtime kept", (st.st_atime_ns, st.st_mtime_ns))
            r.note("changed", changed(t, t := times("f")))
            tick()
            r.call("now mtime, omit atime", utimensat, "f", (0, UTIME_OMIT), (0, UTIME_NOW))
            r.note("changed 2", changed(t, t := times("f")))
            r.note("mtime is recent", time.time_ns() - os.stat("f").st_mtime_ns < 10**10)
            tick()
            r.call("omit both", utimensat, "f", (0, UTIME_OMIT), (0, UTIME_OMIT))
            r.note("changed 3", changed(t, t := times("f")))
            tick()
            r.call("now both", utimensat, "f", None, None)
            r.note("changed 4", changed(t, times("f")))
            r.call("bad nsec", utimensat, "f", (0, 1_000_000_000), (0, 0))
        run_case(posix, who, act)

    def test_permission(self, posix: Posix, who: str) -> None:
        def setup(env: Env) -> None:
            for name, mode in (("writable", 0o666), ("readonly", 0o644)):
                _write(env.d / name, b"x")
                _own(env, env.d / name, "other")
                (env.d / name).chmod(mode)

        def act(env: Env, r: Record) -> None:
            for name in ("writable", "readonly"):
                r.call(f"{name} now", utimensat, name, None, None)
                r.call(f"{name} now/omit", utimensat, name, (0, UTIME_NOW), (0, UTIME_OMIT))
                r.call(f"{name} explicit", utimensat, name, (5, 0), (5, 0))
        run_case(posix, who, act, setup)


# -- stat(2) times of other calls ------------------------------------------------------

class TestTimes:
    def test_chmod_chown_mkdir_create(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x")
            t = times("f")
            tick()
            os.chmod("f", 0o600)
            r.note("chmod", changed(t, t := times("f")))
            tick()
            os.chown("f", -1, -1)
            r.note("chown no-op", changed(t, t := times("f")))
            tick()
            os.chown("f", os.getuid(), -1)
            r.note("chown same", changed(t, times("f")))
            d = times(".")
            tick()
            os.mkdir("sub")
            r.note("dir after mkdir", changed(d, d := times(".")))
            tick()
            _write("g", b"")
            r.note("dir after create", changed(d, d := times(".")))
            tick()
            os.symlink("g", "s")
            r.note("dir after symlink", changed(d, d := times(".")))
            tick()
            os.mkfifo("p")
            r.note("dir after mkfifo", changed(d, d := times(".")))
            tick()
            _write("g", b"again")
            r.note("dir after rewrite", changed(d, times(".")))
        run_case(posix, who, act)

    def test_atime_on_read(self, posix: Posix, who: str) -> None:
        def act(env: Env, r: Record) -> None:
            _write("f", b"x" * 1000)
            os.utime("f", ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
            t = times("f")
            _read("f")  # relatime: atime older than mtime is updated
            r.note("read", changed(t, t := times("f")))
            _read("f")  # now newer than mtime: left
            r.note("second read", changed(t, times("f")))
            os.listdir(".")
        run_case(posix, who, act)


# -- the Python API over the same store ------------------------------------------------

def test_client_links_and_special_files(tmp_path: Path) -> None:
    """Hard links and special files made through `Client` (the path layer over the
    namespace's inode forms): shared content, link counts, refusals naming the path."""
    from gfs.client import Client
    from gfs.errors import ExistsError, InvalidPathError, NotPermittedError
    from gfs.meta import Kind

    with Client.init(tmp_path / "state") as c:
        c.mkdir("/d")
        c.write_bytes("/a", b"one")
        c.link("/a", "/d/b")
        c.write_bytes("/d/b", b"two")  # the same inode: seen through both names
        assert c.read_bytes("/a") == b"two" and c.stat("/a").ino == c.stat("/d/b").ino
        c.mknod("/p", Kind.FIFO, 0o600)
        c.mknod("/tty", Kind.CHARDEV, 0o620, os.makedev(4, 1))
        assert c.stat("/p").mode == stat.S_IFIFO | 0o600
        with pytest.raises(ExistsError, match="/d/b"):
            c.link("/a", "/d/b")
        with pytest.raises(NotPermittedError, match="/e"):
            c.link("/d", "/e")
        with pytest.raises(InvalidPathError, match="is a fifo, not a regular file"):
            c.read_bytes("/p")
        with pytest.raises(InvalidPathError, match="/q"):
            c.mknod("/q", Kind.DIR)
        c.rm("/a")
        assert c.read_bytes("/d/b") == b"two"
        assert c.fsck().ok
