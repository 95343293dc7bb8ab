"""Conformance suite every `Pool` kind must pass.

Subclass `PoolConformance` in a test module and provide a `pool` fixture that
yields a fresh, empty pool::

    class TestLocalPool(PoolConformance):
        @pytest.fixture
        def pool(self, tmp_path):
            with LocalPool(str(tmp_path / "pool")) as p:
                yield p

Hooks a subclass may override: `temporaries(pool)` lists leftovers a failed
or finished put may have left (checked to be empty after puts).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from gfs.codec import Buffer
from gfs.errors import PoolObjectMissingError
from gfs.pools.base import Pool

BAD_KEYS = [
    "",
    "/abs",
    "a//b",
    "a/",
    "../x",
    "a/../b",
    "a/./b",
    ".",
    "..",
    "a\x00b",
    "a\\b",
    "tmp/x",
]


class PoolConformance:
    """Tests of the `Pool` contract; the subclass provides the `pool` fixture."""

    @pytest.fixture
    def pool(self) -> Iterator[Pool]:
        raise NotImplementedError("subclasses provide a `pool` fixture")
        yield  # pragma: no cover

    def temporaries(self, pool: Pool) -> list[str]:
        """Names of the pool's temporaries; pools that keep none return []."""
        return []

    # -- put / get -------------------------------------------------------

    def test_roundtrip_parts(self, pool: Pool) -> None:
        parts: list[Buffer] = [b"hello ", bytearray(b"pool "), memoryview(b"xxworldxx")[2:7], b""]
        pool.put("a/b/c.pack", parts)
        assert pool.get("a/b/c.pack") == b"hello pool world"
        assert pool.size("a/b/c.pack") == 16
        assert pool.exists("a/b/c.pack")
        pool.put("single/view", [memoryview(b"abcdef")[1:4]])
        assert pool.get("single/view") == b"bcd"
        pool.put("single/bytearray", [bytearray(b"ba")])
        assert pool.get("single/bytearray") == b"ba"
        assert self.temporaries(pool) == []

    def test_empty_object(self, pool: Pool) -> None:
        pool.put("empty", [])
        assert pool.exists("empty")
        assert pool.size("empty") == 0
        assert pool.get("empty") == b""
        assert pool.get("empty", 3, 9) == b""

    def test_many_parts(self, pool: Pool) -> None:
        parts = [bytes([i % 251]) * (i % 7) for i in range(3000)]
        pool.put("many", parts)
        assert pool.get("many") == b"".join(parts)

    def test_ranged_get(self, pool: Pool) -> None:
        data = bytes(range(256)) * 4
        pool.put("r", [data])
        n = len(data)
        for start, end in [
            (0, None),
            (0, n),
            (0, 1),
            (1, 2),
            (10, 100),
            (n - 1, None),
            (n - 1, n),
            (n, None),
            (n, n + 5),
            (n + 10, None),
            (n + 10, n + 20),
            (5, n + 100),
            (7, 7),
            (9, 3),
            (0, 0),
        ]:
            assert pool.get("r", start, end) == data[start:end], (start, end)

    def test_readinto(self, pool: Pool) -> None:
        data = bytes(range(256)) * 300
        pool.put("r", [data])
        for start, size in [(0, len(data)), (5, 100), (len(data) - 3, 10), (len(data), 4)]:
            buf = bytearray(b"\xee" * size)
            got = pool.readinto("r", start, memoryview(buf))
            assert bytes(buf[:got]) == data[start:start + size], (start, size)
            assert buf[got:] == b"\xee" * (size - got)
        with pytest.raises(PoolObjectMissingError):
            pool.readinto("no/such.pack", 0, bytearray(4))

    def test_negative_range_rejected(self, pool: Pool) -> None:
        pool.put("r", [b"abc"])
        with pytest.raises(ValueError):
            pool.get("r", -1)
        with pytest.raises(ValueError):
            pool.get("r", 0, -1)

    # -- missing / delete / overwrite --------------------------------------

    def test_missing(self, pool: Pool) -> None:
        assert not pool.exists("no/such.pack")
        with pytest.raises(PoolObjectMissingError) as ei:
            pool.get("no/such.pack")
        assert isinstance(ei.value, FileNotFoundError)
        assert "no/such.pack" in str(ei.value)
        with pytest.raises(PoolObjectMissingError):
            pool.get("no/such.pack", 2, 1)
        with pytest.raises(PoolObjectMissingError):
            pool.size("no/such.pack")

    def test_modified(self, pool: Pool) -> None:
        before = time.time()
        pool.put("m/obj", [b"x"])
        when = pool.modified("m/obj")
        # None: the pool cannot tell (gc then treats the object as young).
        assert when is None or before - 5 <= when <= time.time() + 5
        with pytest.raises(PoolObjectMissingError):
            pool.modified("m/none")

    def test_directory_is_not_an_object(self, pool: Pool) -> None:
        pool.put("d/e/f", [b"x"])
        assert not pool.exists("d/e")
        with pytest.raises(PoolObjectMissingError):
            pool.get("d/e")
        with pytest.raises(PoolObjectMissingError):
            pool.size("d")

    def test_delete_idempotent(self, pool: Pool) -> None:
        pool.put("x/y", [b"1"])
        pool.delete("x/y")
        assert not pool.exists("x/y")
        pool.delete("x/y")
        pool.delete("never/was")
        assert list(pool.list()) == []
        with pytest.raises(PoolObjectMissingError):
            pool.get("x/y")

    def test_overwrite_replaces(self, pool: Pool) -> None:
        pool.put("k", [b"first version, long"])
        pool.put("k", [b"second"])
        assert pool.get("k") == b"second"
        assert pool.size("k") == 6
        assert list(pool.list()) == ["k"]
        assert self.temporaries(pool) == []

    # -- list --------------------------------------------------------------

    def test_list(self, pool: Pool) -> None:
        keys = ["packs/ab/ab01.pack", "packs/ab/ab02.pack", "packs/cd/cd01.pack", "other", "px"]
        for k in keys:
            pool.put(k, [k.encode()])
        assert sorted(pool.list()) == sorted(keys)
        assert sorted(pool.list("packs/")) == keys[:3]
        assert sorted(pool.list("packs/ab/")) == keys[:2]
        assert sorted(pool.list("packs/a")) == keys[:2]
        assert sorted(pool.list("p")) == [*keys[:3], "px"]
        assert sorted(pool.list("packs/ab/ab01.pack")) == keys[:1]
        assert list(pool.list("nothing/")) == []
        assert list(pool.list("packs/zz/")) == []

    def test_list_empty_pool(self, pool: Pool) -> None:
        assert list(pool.list()) == []
        assert list(pool.list("packs/")) == []

    # -- keys --------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_rejected(self, pool: Pool, key: str) -> None:
        with pytest.raises(ValueError):
            pool.put(key, [b"x"])
        for op in (pool.get, pool.size, pool.exists, pool.delete, pool.local_path):
            with pytest.raises(ValueError):
                op(key)
        assert list(pool.list()) == []
        assert self.temporaries(pool) == []

    def test_bad_list_prefix_rejected(self, pool: Pool) -> None:
        for prefix in ("/x", "../", "a/../", "tmp/"):
            with pytest.raises(ValueError):
                list(pool.list(prefix))

    # -- usage / misc ------------------------------------------------------

    def test_usage(self, pool: Pool) -> None:
        before = pool.usage()
        pool.put("u/1", [b"x" * 1000])
        pool.put("u/2", [b"y" * 24])
        after = pool.usage()
        assert after.used_bytes - before.used_bytes == 1024
        assert after.free_bytes is None or after.free_bytes >= 0

    def test_local_path(self, pool: Pool) -> None:
        pool.put("lp/obj", [b"zero-copy"])
        path = pool.local_path("lp/obj")
        if path is not None:
            with open(path, "rb") as f:
                assert f.read() == b"zero-copy"

    def test_url_and_repr(self, pool: Pool) -> None:
        assert isinstance(pool.url, str) and pool.url
        assert type(pool).__name__ in repr(pool)

    # -- concurrency / size ------------------------------------------------

    def test_concurrent_puts(self, pool: Pool) -> None:
        errors: list[BaseException] = []

        def writer(t: int) -> None:
            try:
                for i in range(25):
                    pool.put(f"c/{t:02x}/{i:03d}", [f"{t}:{i}:".encode(), os.urandom(64)])
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        keys = sorted(pool.list("c/"))
        assert len(keys) == 200
        for t in range(8):
            assert pool.get(f"c/{t:02x}/007", 0, 8).startswith(f"{t}:7:".encode())
        assert self.temporaries(pool) == []

    def test_concurrent_overwrite_is_atomic(self, pool: Pool) -> None:
        versions = [bytes([v]) * 4096 for v in range(1, 6)]
        pool.put("same", [versions[0]])
        stop = threading.Event()
        bad: list[bytes] = []

        def reader() -> None:
            while not stop.is_set():
                got = pool.get("same")
                if got not in versions:
                    bad.append(got)

        th = threading.Thread(target=reader)
        th.start()
        try:
            for _ in range(10):
                for v in versions:
                    pool.put("same", [v[:1000], v[1000:]])
        finally:
            stop.set()
            th.join()
        assert bad == []

    def test_large_object(self, pool: Pool) -> None:
        block = os.urandom(1 << 20)
        parts = [block] * 20
        pool.put("big/object", parts)
        assert pool.size("big/object") == 20 << 20
        got = pool.get("big/object")
        assert len(got) == 20 << 20
        assert got[: 1 << 20] == block and got[-(1 << 20) :] == block
        mid = (7 << 20) + 12345
        assert pool.get("big/object", mid, mid + 100) == block[12345:12445]
        assert self.temporaries(pool) == []
