"""The mount's cache tiers and CLI (disk tier, `cache stats` without a mount, `warmup`
into the disk tier), creates committed on close (grouped), xattr clean-up."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bench._folios import large_folio_share
from gfs.client import Client
from gfs.mount import READ_AHEAD_KB
from tests.test_mount_helpers import init_store, mount, needs_fuse, wait_for

pytestmark = needs_fuse


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_disk_tier_through_the_mount_and_stats_without_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    data = random.Random(1).randbytes(3 << 20)
    with Client(state) as c:
        c.write_bytes("/big", data)
        nchunks = len(c.manifest("/big").chunks)
    cache = tmp_path / "dcache"
    opts = ("--disk-cache", "on", "--disk-cache-dir", str(cache), "--cache-size", "1MiB")
    with mount(state, tmp_path / "mnt", *opts) as m:
        assert (m.mnt / "big").read_bytes() == data

        def cache_stats() -> dict[str, Any]:
            out: dict[str, Any] = json.loads(os.getxattr(m.mnt, "user.hutong.cache"))
            return out

        # the tier's writer thread (gfs.disk_writer) admits what the read fetched soon
        wait_for(lambda: cache_stats()["disk"]["admitted"] >= nchunks, "disk admissions",
                 timeout=30)
        stats = cache_stats()
        assert stats["disk"]["admitted"] == nchunks and stats["policy"] == "s3fifo"
        r = _cli(state, "cache", "stats", str(m.mnt))
        assert r.returncode == 0 and "disk tier (owner" in r.stdout, r.stderr
    r = _cli(state, "cache", "stats", "--disk-cache-dir", str(cache), "--json")
    assert r.returncode == 0, r.stderr
    disk = json.loads(r.stdout)["disk"]
    assert disk["entries"] == nchunks and disk["admitted"] == nchunks
    with mount(state, tmp_path / "mnt", *opts) as m:  # a new process: served from disk
        assert (m.mnt / "big").read_bytes() == data
        stats = json.loads(os.getxattr(m.mnt, "user.hutong.cache"))
        assert stats["bytes_from_store"] == 0 and stats["disk"]["hits"] >= nchunks


def test_warmup_counts_what_its_writer_thread_had_still_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk tier's admissions are written by a background thread: warmup waits for
    them before counting (a slow disk made it report fewer chunks than it added; CI
    saw 4 of 9)."""
    import time

    from gfs.disk_cache import DiskCache
    from gfs.mount_cli import warm_disk_tier

    state = tmp_path / "state"
    init_store(state)
    real_put = DiskCache.put

    def slow_put(self: DiskCache, cid: bytes, blob: bytes) -> Any:
        time.sleep(0.05)
        return real_put(self, cid, blob)
    monkeypatch.setattr(DiskCache, "put", slow_put)
    with Client(state) as c:
        c.mkdir("/d")
        for i in range(5):
            c.write_bytes(f"/d/f{i}", random.Random(i).randbytes(100_000 + i))
        chunks = {r.id for i in range(5) for r in c.manifest(f"/d/f{i}").chunks}
        disk = DiskCache(tmp_path / "cache", 1 << 30, admit_local=True)
        try:
            files, _, added = warm_disk_tier(c, disk, "/d")
            assert (files, added) == (5, len(chunks))
            assert all(cid in disk for cid in chunks)
        finally:
            disk.close()


def test_warmup_fills_the_disk_tier_without_a_mount(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with Client(state) as c:
        c.mkdir("/d")
        for i in range(5):
            c.write_bytes(f"/d/f{i}", random.Random(i).randbytes(100_000 + i))
        chunks = {r.id for i in range(5) for r in c.manifest(f"/d/f{i}").chunks}
    r = _cli(state, "cache", "stats")
    assert r.returncode == 2 and "no disk cache" in r.stderr
    r = _cli(state, "warmup", "/d")
    assert r.returncode == 0 and "warmed 5 files" in r.stdout, r.stderr
    assert f"{len(chunks)} chunks added" in r.stdout
    r = _cli(state, "cache", "stats")
    assert r.returncode == 0 and f"in {len(chunks)} chunks" in r.stdout
    r = _cli(state, "warmup", "/d")  # nothing left to add
    assert r.returncode == 0 and "0 chunks added" in r.stdout


def test_creates_commit_on_close_and_group_across_threads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as m, Client(state) as c:
        f = open(m.mnt / "new", "wb")  # noqa: SIM115
        f.write(b"abc")
        f.flush()
        assert not c.exists("/new")  # close-to-open: other clients see it after the close
        assert os.stat(m.mnt / "new").st_size == 3  # this mount sees it at once
        os.chmod(m.mnt / "new", 0o600)
        f.close()
        assert c.read_bytes("/new") == b"abc" and c.stat("/new").mode & 0o777 == 0o600
        g = open(m.mnt / "listed", "wb")  # noqa: SIM115
        assert "listed" in os.listdir(m.mnt)  # a listing commits pending creates (empty)
        g.write(b"later")
        g.close()
        assert c.read_bytes("/listed") == b"later"
        (m.mnt / "d").mkdir()
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            try:
                for i in range(40):
                    (m.mnt / "d" / f"t{k}-{i}").write_bytes(f"{k}:{i}".encode())
            except BaseException as e:
                errors.append(e)
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        names = sorted(s.name for s in c.ls("/d"))
        assert len(names) == 160
        assert c.read_bytes("/d/t3-39") == b"3:39"
        report = c.fsck()
        assert report.ok, report
        inos = {s.ino for s in c.ls("/d")}
        assert len(inos) == 160


def test_xattrs_go_with_their_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as m:
        a, b = m.mnt / "a", m.mnt / "b"
        a.write_bytes(b"1")
        b.write_bytes(b"2")
        os.setxattr(a, "user.k", b"va")
        os.setxattr(b, "user.k", b"vb")
        os.rename(b, a)  # the replaced file's xattrs go, the moved file's stay
        assert os.getxattr(a, "user.k") == b"vb"
        os.unlink(a)
    with Client(state) as c, c.engine.read() as txn:
        assert list(txn.iter_values("xattrs")) == []


def _read_ahead_kb(mnt: Path) -> int:
    """The kernel read-ahead (KiB) of the FUSE connection mounted at `mnt`."""
    with open("/proc/self/mountinfo") as f:
        dev = next(line.split()[2] for line in f if line.split()[4] == str(mnt))
    return int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a bdi's read-ahead")
def test_read_ahead_is_raised_after_the_kernel_set_its_own(tmp_path: Path) -> None:
    """The kernel sets the connection's read-ahead (128 KiB) when FUSE_INIT is answered;
    the mount raises it after that, so sequential reads arrive in large requests."""
    state = tmp_path / "state"
    init_store(state)
    with mount(state, tmp_path / "mnt") as m:
        wait_for(lambda: _read_ahead_kb(m.mnt) == READ_AHEAD_KB, "the raised read-ahead")


def _lookups(mnt: Path) -> tuple[int, int]:
    """(hits, misses) of the mount's memory tier: each read the daemon serves counts."""
    stats = json.loads(os.getxattr(mnt, "user.hutong.cache"))
    return stats["hits"], stats["misses"]


def test_a_warm_read_of_an_unchanged_file_is_served_by_the_kernel(tmp_path: Path) -> None:
    """Opening an unchanged file again keeps the kernel's page cache: the warm read
    sends the daemon no read (its cache counters stand still), so its speed is the
    kernel's (see bench._folios for how FUSE holds those pages). A new version
    drops it: the next read asks the daemon again."""
    state = tmp_path / "state"
    init_store(state)
    data = random.Random(4).randbytes(3 << 20)
    with Client(state) as c:
        c.write_bytes("/f", data)
    with mount(state, tmp_path / "mnt") as m:
        f = m.mnt / "f"
        assert f.read_bytes() == data  # cold: through the daemon
        before = _lookups(m.mnt)
        assert before[1] > 0
        assert f.read_bytes() == data
        assert _lookups(m.mnt) == before
        share = large_folio_share(f)
        assert share is None or 0.0 <= share <= 1.0
        with Client(state) as c:
            c.write_bytes("/f", data[::-1])
        wait_for(lambda: f.read_bytes() == data[::-1], "the new version")
        assert _lookups(m.mnt) != before
