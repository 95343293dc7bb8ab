"""Fault injection for pools, for tests of the layers above them.

* `FaultyPool(inner, fail="put", after=3, error=OSError(errno.ENOSPC, "full"))`
  delegates to `inner` and raises `error` on the chosen operation(s) once
  `after` calls of them succeeded. `when` picks the moment of a failing put:
  ``"before"`` (nothing reaches `inner`), ``"during"`` (`inner.put` gets
  parts that raise `error` part-way through, so the real pool's cleanup and
  error translation run: a `LocalPool` then raises `NoSpaceError` for ENOSPC)
  or ``"after"`` (the object is stored, then the caller still sees the
  error, like a lost reply). Other operations fail before delegating.
* `CorruptingPool(inner, offset=...)` returns corrupted bytes from `get`
  without touching the stored object (a bad copy in transit).
* `flip_byte(pool, key, offset)` and `truncate_object(pool, key, length)`
  damage the stored object itself.

Counters are thread-safe; `calls` and `failures` count what happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, overload

from gfs.codec import Buffer
from gfs.pools.base import Pool, PoolUsage, PoolWrapper

OPERATIONS = frozenset({"put", "get", "size", "exists", "delete", "list", "usage"})
When = Literal["before", "during", "after"]


class _FailingParts(Sequence[Buffer]):
    """Parts that yield the first half of the data, then raise `error`."""

    def __init__(self, parts: Sequence[Buffer], error: BaseException) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        total = sum(v.nbytes for v in views)
        half = total // 2
        self._head: list[Buffer] = []
        for v in views:
            if half <= 0:
                break
            self._head.append(v[:half])
            half -= min(half, v.nbytes)
        self._error = error

    def __len__(self) -> int:
        return len(self._head) + 1

    @overload
    def __getitem__(self, i: int) -> Buffer: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Buffer]: ...
    def __getitem__(self, i: int | slice) -> Buffer | Sequence[Buffer]:
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += len(self)
        if i < len(self._head):
            return self._head[i]
        if i == len(self._head):
            raise self._error
        raise IndexError(i)

    def __iter__(self) -> Iterator[Buffer]:
        yield from self._head
        raise self._error


class FaultyPool(Pool):
    """A pool that fails on purpose; see the module docstring.

    `fail` is an operation name, a collection of them, or ``"*"`` for all.
    `after` calls of the failing operation(s) succeed first; then `times`
    calls fail (None: every later call). `keys` restricts failures to keys it
    accepts (it gets the key, or the prefix for `list`, "" for `usage`).
    """

    def __init__(
        self,
        inner: Pool,
        fail: str | Sequence[str] = "put",
        after: int = 0,
        error: BaseException | None = None,
        *,
        when: When = "before",
        times: int | None = None,
        keys: Callable[[str], bool] | None = None,
    ) -> None:
        ops = OPERATIONS if fail == "*" else {fail} if isinstance(fail, str) else set(fail)
        unknown = set(ops) - OPERATIONS
        if unknown:
            raise ValueError(f"FaultyPool: unknown operation(s) {sorted(unknown)}")
        self.inner = inner
        self.url = inner.url
        self.ops = frozenset(ops)
        self.after = after
        self.error: BaseException = error or OSError(5, "injected I/O error")
        self.when = when
        self.times = times
        self.keys = keys
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()

    def _should_fail(self, op: str, key: str) -> bool:
        if op not in self.ops or (self.keys is not None and not self.keys(key)):
            return False
        with self._lock:
            self.calls += 1
            if self.calls <= self.after:
                return False
            if self.times is not None and self.failures >= self.times:
                return False
            self.failures += 1
            return True

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        if not self._should_fail("put", key):
            return self.inner.put(key, parts)
        if self.when == "during":
            self.inner.put(key, _FailingParts(parts, self.error))
            raise self.error  # the inner pool swallowed the error: still fail
        if self.when == "after":
            self.inner.put(key, parts)
        raise self.error

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if self._should_fail("get", key):
            raise self.error
        return self.inner.get(key, start, end)

    def size(self, key: str) -> int:
        if self._should_fail("size", key):
            raise self.error
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        if self._should_fail("exists", key):
            raise self.error
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        if self._should_fail("delete", key):
            raise self.error
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        if self._should_fail("list", prefix):
            raise self.error
        return self.inner.list(prefix)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    def usage(self) -> PoolUsage:
        if self._should_fail("usage", ""):
            raise self.error
        return self.inner.usage()

    def close(self) -> None:
        self.inner.close()


class CorruptingPool(PoolWrapper):
    """A pool whose `get` returns damaged bytes; the stored objects stay intact.

    For each `get` of a key accepted by `keys` (default: every key) the byte
    at object offset `offset` is XORed with `mask` when it lies in the
    returned range; with `offset=None` the middle byte of the returned range
    is flipped. `local_path` returns None so that readers cannot bypass it.
    """

    def __init__(
        self,
        inner: Pool,
        offset: int | None = None,
        *,
        mask: int = 0x01,
        keys: Callable[[str], bool] | None = None,
    ) -> None:
        if not 1 <= mask <= 0xFF:
            raise ValueError("CorruptingPool: mask must be 1..255")
        super().__init__(inner)
        self.offset = offset
        self.mask = mask
        self.keys = keys
        self.corrupted = 0

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        data = self.inner.get(key, start, end)
        if not data or (self.keys is not None and not self.keys(key)):
            return data
        pos = len(data) // 2 if self.offset is None else self.offset - start
        if not 0 <= pos < len(data):
            return data
        out = bytearray(data)
        out[pos] ^= self.mask
        self.corrupted += 1
        return bytes(out)


def flip_byte(pool: Pool, key: str, offset: int, mask: int = 0x01) -> None:
    """XOR the stored byte at `offset` of object `key` with `mask` (rewrites the object).

    A negative `offset` counts from the end. Raises `IndexError` if outside.
    """
    data = bytearray(pool.get(key))
    data[offset] ^= mask
    pool.put(key, [data])


def truncate_object(pool: Pool, key: str, length: int) -> None:
    """Cut the stored object `key` to its first `length` bytes (rewrites it)."""
    pool.put(key, [pool.get(key, 0, length)])
