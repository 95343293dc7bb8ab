"""One PostgreSQL-backed namespace mounted on two hosts (issue 15): the database
server in its own network namespace reached over TCP, a writer host and a reader
host in two more, each with its own state directory and FUSE mount, the packs in a
pool both reach (a shared directory). Close-to-open: what one host closed, the
other opens; renames and removals show on both; a host cut off from the database
fails its operations with an error, and loses nothing the other wrote."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gfs.testing.postgres import start_server, stop_server
from gfs.testing.wan import Link, Wan, wan_or_skip
from tests.test_mount_helpers import needs_fuse, serve_child, wait_for

pytestmark = [needs_fuse, pytest.mark.timeout(300)]


@pytest.fixture
def wan() -> Iterator[Wan]:
    with wan_or_skip({n: Link(0.0005) for n in ("db", "w", "r")}) as w:
        yield w


def _hutong(wan: Wan, host: str, state: Path, *args: str) -> str:
    r = wan.run(host, [sys.executable, "-m", "gfs.cli", "--state", str(state), *args],
                timeout=120, check=False)
    assert r.returncode == 0, (args, r.stderr[-2000:])
    return r.stdout


def test_two_hosts_mount_one_postgresql_namespace(wan: Wan, tmp_path: Path) -> None:
    base = tempfile.mkdtemp(prefix="hutong-pg-", dir="/tmp")  # short: a unix socket lives here
    server, proc = start_server(base, netns=wan["db"].netns, listen=wan["db"].address)
    try:
        # the liveness settings of the engine, shortened: a cut-off host fails within ~5 s
        url = (f"postgresql://hutong@{wan['db'].address}:{server.port}/postgres?schema=hosts"
               "&tcp_user_timeout=4000&keepalives_idle=2&keepalives_interval=1"
               "&keepalives_count=2")
        shared = tmp_path / "shared-pool"
        sw, sr = tmp_path / "w-state", tmp_path / "r-state"
        _hutong(wan, "w", sw, "init", "--meta", url)
        _hutong(wan, "w", sw, "pool", "add", "shared", str(shared), "--tier", "hot")
        _hutong(wan, "w", sw, "tier", "policy", "set", "--write-tier", "hot")
        _hutong(wan, "r", sr, "init", "--meta", url)
        mw, mr = tmp_path / "mw", tmp_path / "mr"
        with ExitStack() as stack:
            def mount(host: str, state: Path, mnt: Path) -> None:
                argv = wan[host].net_argv([sys.executable, "-m", "gfs.cli", "--state",
                                           str(state), "-v", "mount", str(mnt),
                                           "--attr-timeout", "0"])
                stack.enter_context(serve_child(argv, state, mnt, timeout=60))

            mount("w", sw, mw)
            mount("r", sr, mr)
            data = os.urandom(3_000_000)
            (mw / "d").mkdir()
            (mw / "d" / "x.bin").write_bytes(data)                # closed on the writer host
            assert (mr / "d" / "x.bin").read_bytes() == data      # opened on the reader host
            with open(mw / "d" / "x.bin", "r+b") as f:            # changed in the middle
                f.seek(1_000_000)
                f.write(b"CHANGED")
            assert (mr / "d" / "x.bin").read_bytes()[1_000_000:1_000_007] == b"CHANGED"
            (mr / "d" / "from-r.txt").write_bytes(b"the reader writes too")
            wait_for(lambda: (mw / "d" / "from-r.txt").exists(), "r's file on w", 20)
            assert (mw / "d" / "from-r.txt").read_bytes() == b"the reader writes too"
            os.rename(mw / "d" / "x.bin", mw / "d" / "y.bin")
            wait_for(lambda: sorted(os.listdir(mr / "d")) == ["from-r.txt", "y.bin"],
                     "the rename on r", 20)
            # the writer host loses the database: its operations fail, the other's work stays
            wan.cut("w")
            try:
                with pytest.raises(OSError) as err:
                    (mw / "d" / "lost.txt").write_bytes(b"never committed")
                assert err.value.errno in (errno.EIO, errno.EHOSTUNREACH, errno.ETIMEDOUT,
                                           errno.ECONNRESET), err.value
                (mr / "d" / "after.txt").write_bytes(b"r still works")
            finally:
                wan.restore("w")
            assert not (mr / "d" / "lost.txt").exists()
            assert (mw / "d" / "after.txt").read_bytes() == b"r still works"  # w is back
            for i in range(3):  # and writes again (new inode numbers, new connections)
                (mw / "d" / f"back{i}.txt").write_bytes(b"w again %d" % i)
            assert (mr / "d" / "back2.txt").read_bytes() == b"w again 2"
            assert (mr / "d" / "y.bin").read_bytes()[:1_000_000] == data[:1_000_000]
        report = _hutong(wan, "r", sr, "fsck")
        assert "ok" in report.lower() or "clean" in report.lower(), report
    finally:
        stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)
