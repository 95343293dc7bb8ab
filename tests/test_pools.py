"""Pools: the conformance suite for every kind, open_pool, and local fault tests."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.errors import ConfigError, NoSpaceError, PoolError, PoolObjectMissingError
from gfs.pools import FsspecPool, LocalPool, Pool, PoolUsage, open_pool
from gfs.testing.faults import CorruptingPool, FaultyPool, flip_byte, truncate_object
from gfs.testing.pool_suite import PoolConformance

# -- conformance ---------------------------------------------------------------


def _rm_memory(url: str) -> None:
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


class TestLocalPool(PoolConformance):
    @pytest.fixture
    def pool(self, tmp_path: Path) -> Iterator[Pool]:
        with LocalPool(str(tmp_path / "pool")) as p:
            yield p

    def temporaries(self, pool: Pool) -> list[str]:
        assert isinstance(pool, LocalPool)
        return pool.temporaries()


class TestFsspecMemoryPool(PoolConformance):
    @pytest.fixture
    def pool(self) -> Iterator[Pool]:
        url = f"memory://hutong-test-{uuid.uuid4().hex}"
        with FsspecPool(url) as p:
            yield p
        _rm_memory(url)

    def temporaries(self, pool: Pool) -> list[str]:
        assert isinstance(pool, FsspecPool)
        return [p for p in pool.fs.find(pool.root) if "/tmp/" in p]


class TestFsspecMemoryPoolTempMove(TestFsspecMemoryPool):
    """The temp+move put path on an in-memory filesystem."""

    @pytest.fixture
    def pool(self) -> Iterator[Pool]:
        url = f"memory://hutong-test-{uuid.uuid4().hex}"
        with FsspecPool(url, atomic_put=False) as p:
            yield p
        _rm_memory(url)


class TestFsspecLocalPool(PoolConformance):
    """FsspecPool over fsspec's LocalFileSystem (the generic temp+move path)."""

    @pytest.fixture
    def pool(self, tmp_path: Path) -> Iterator[Pool]:
        root = tmp_path / "fspool"
        root.mkdir()
        with FsspecPool(root.as_uri()) as p:
            yield p

    def temporaries(self, pool: Pool) -> list[str]:
        assert isinstance(pool, FsspecPool)
        tmp = os.path.join(pool.root, "tmp")
        return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


def test_fsspec_local_uses_generic_path(tmp_path: Path) -> None:
    pool = FsspecPool(tmp_path.as_uri())
    assert pool.local_path("a/b") == str(tmp_path / "a" / "b")
    assert pool.usage().free_bytes is not None
    mem = FsspecPool(f"memory://x-{uuid.uuid4().hex}")
    assert mem.local_path("a/b") is None
    assert mem.usage() == PoolUsage(0, None)


# -- open_pool -------------------------------------------------------------------


def test_open_pool_kinds(tmp_path: Path) -> None:
    p = open_pool(str(tmp_path / "a"))
    assert isinstance(p, LocalPool) and p.root == str(tmp_path / "a")
    assert p.url == "file://" + str(tmp_path / "a")
    q = open_pool((tmp_path / "b").as_uri())
    assert isinstance(q, LocalPool) and q.root == str(tmp_path / "b")
    m = open_pool(f"memory://open-{uuid.uuid4().hex}")
    assert isinstance(m, FsspecPool)


def test_open_pool_unknown_protocol() -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'nosuchproto'"):
        open_pool("nosuchproto://bucket/x")
    with pytest.raises(ConfigError, match="empty"):
        open_pool("")
    with pytest.raises(ConfigError, match="local path"):
        open_pool("file://otherhost/x")


def test_open_pool_missing_backend() -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("s3fs is installed")
    with pytest.raises(ConfigError, match=r"'s3'.*s3fs"):
        open_pool("s3://bucket/pool")


def test_local_pool_no_create(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        LocalPool(str(tmp_path / "missing"), create=False)


# -- local specifics ----------------------------------------------------------------


def test_local_layout_and_temporaries(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path))
    pool.put("packs/ab/abcd.pack", [b"data"])
    assert (tmp_path / "packs" / "ab" / "abcd.pack").read_bytes() == b"data"
    assert (tmp_path / "tmp").is_dir()
    # A stale temporary is never listed and clean_temporaries removes it.
    stale = tmp_path / "tmp" / "123-dead-0.tmp"
    stale.write_bytes(b"partial")
    assert list(pool.list()) == ["packs/ab/abcd.pack"]
    assert pool.usage().used_bytes == 4
    assert pool.clean_temporaries(older_than=3600) == 0
    os.utime(stale, (0, 0))
    assert pool.clean_temporaries(older_than=3600) == 1
    assert pool.temporaries() == []


def test_local_recreates_removed_fanout_dir(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path))
    pool.put("packs/ab/1", [b"x"])
    pool.delete("packs/ab/1")
    os.rmdir(tmp_path / "packs" / "ab")
    pool.put("packs/ab/2", [b"y"])
    assert pool.get("packs/ab/2") == b"y"


def test_local_other_oserror_is_pool_error(tmp_path: Path) -> None:
    pool = LocalPool(str(tmp_path))
    (tmp_path / "file").write_bytes(b"x")  # a file where a directory is needed
    with pytest.raises(PoolError) as ei:
        pool.put("file/sub", [b"y"])
    assert str(tmp_path) in str(ei.value)
    assert pool.temporaries() == []


# -- fault injection -------------------------------------------------------------


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_faulty_pool_during_put_leaves_nothing(tmp_path: Path) -> None:
    inner = LocalPool(str(tmp_path))
    pool = FaultyPool(inner, fail="put", after=2, error=_enospc(), when="during")
    pool.put("a", [b"1" * 100])
    pool.put("b", [b"2" * 100])
    with pytest.raises(NoSpaceError) as ei:
        pool.put("packs/cc/c.pack", [b"x" * 5000, b"y" * 5000])
    assert ei.value.errno == errno.ENOSPC
    assert "packs" in str(ei.value)
    assert not inner.exists("packs/cc/c.pack")
    assert inner.temporaries() == []
    assert sorted(inner.list()) == ["a", "b"]
    assert pool.calls == 3 and pool.failures == 1


def test_faulty_pool_modes(tmp_path: Path) -> None:
    inner = LocalPool(str(tmp_path))
    before = FaultyPool(inner, fail="put", error=_enospc(), times=1)
    with pytest.raises(OSError):
        before.put("k", [b"x"])
    assert not inner.exists("k")
    before.put("k", [b"x"])  # times=1: only the first call failed
    assert inner.exists("k")

    after = FaultyPool(inner, fail="put", when="after")
    with pytest.raises(OSError):
        after.put("lost-reply", [b"x"])
    assert inner.exists("lost-reply")

    reads = FaultyPool(inner, fail=["get", "size"], after=1, keys=lambda k: k == "k")
    assert reads.get("k") == b"x"
    with pytest.raises(OSError):
        reads.size("k")
    assert reads.get("lost-reply") == b"x"  # not selected by `keys`
    everything = FaultyPool(inner, fail="*")
    for call in (lambda: list(everything.list()), everything.usage, lambda: everything.delete("k")):
        with pytest.raises(OSError):
            call()
    with pytest.raises(ValueError, match="unknown operation"):
        FaultyPool(inner, fail="frobnicate")


def test_corrupting_pool_and_helpers(tmp_path: Path) -> None:
    inner = LocalPool(str(tmp_path))
    inner.put("o", [bytes(100)])
    bad = CorruptingPool(inner, offset=10)
    got = bad.get("o")
    assert got[10] == 1 and got[:10] == bytes(10) and got[11:] == bytes(89)
    assert bad.get("o", 20, 30) == bytes(10)  # offset outside the range: untouched
    assert bad.get("o", 5, 15)[5] == 1
    assert inner.get("o") == bytes(100)
    assert bad.local_path("o") is None
    flip_byte(inner, "o", 99, 0xFF)
    assert inner.get("o", 99) == b"\xff"
    truncate_object(inner, "o", 50)
    assert inner.size("o") == 50
    with pytest.raises(PoolObjectMissingError):
        flip_byte(inner, "missing", 0)


# -- real ENOSPC on a tiny tmpfs -----------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def test_real_enospc_leaves_nothing(tiny_fs: Path) -> None:
    pool = LocalPool(str(tiny_fs / "pool"))
    pool.put("packs/00/small", [b"s" * 1000])
    with pytest.raises(NoSpaceError) as ei:
        pool.put("packs/00/huge", [os.urandom(256 << 10)] * 8)  # 2 MiB into 1 MiB
    assert ei.value.errno == errno.ENOSPC
    assert "no space left" in str(ei.value)
    assert not pool.exists("packs/00/huge")
    assert pool.temporaries() == []
    assert list(pool.list()) == ["packs/00/small"]
    assert pool.get("packs/00/small") == b"s" * 1000
    usage = pool.usage()
    assert usage.used_bytes == 1000 and usage.free_bytes is not None
    # Space is back after the failed put: a fitting object still goes in.
    pool.put("packs/00/fits", [b"f" * (256 << 10)])
    assert pool.size("packs/00/fits") == 256 << 10


@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(1, 97))
@settings(max_examples=60, deadline=None)
def test_short_writes_still_write_every_part_in_order(parts: list[bytes], most: int) -> None:
    """`_write_all` continues after a short writev (mid-part or at a part's end) and
    writes every part once, in order, more than the kernel's iovec limit included."""
    import tempfile

    from gfs.pools import local

    real = os.writev
    calls = [0]

    def short(fd: int, bufs: list[memoryview]) -> int:
        calls[0] += 1
        assert len(bufs) <= local._IOV_MAX
        return real(fd, [b"".join(bytes(b) for b in bufs)[:most]])

    parts = parts + [b"x"] * (local._IOV_MAX + 3)  # more parts than one writev takes
    with tempfile.TemporaryFile() as f:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(local.os, "writev", short)
            assert local._write_all(f.fileno(), parts) == sum(map(len, parts))
        f.seek(0)
        assert f.read() == b"".join(parts)
    assert calls[0] >= sum(map(len, parts)) // most
