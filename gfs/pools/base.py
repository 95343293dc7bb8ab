"""The pool contract: a flat store of immutable objects under string keys.

Every pool kind (`LocalPool`, `FsspecPool`, test wrappers) implements `Pool`
and passes `gfs.testing.pool_suite.PoolConformance`.

Keys are relative, '/'-separated names such as ``packs/ab/ab...ef.pack``:
not empty, no leading '/', no empty, '.' or '..' component, no NUL or
backslash, and not under the reserved top-level ``tmp/`` (where pools keep
temporaries). Any other key raises `ValueError` and changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from gfs.codec import Buffer

TMP_DIR = "tmp"
"""Reserved top-level component holding temporaries; never a key, never listed."""


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """Space used by a pool's objects and space free for it (None when unknown)."""

    used_bytes: int
    free_bytes: int | None


def check_key(key: str) -> str:
    """Return `key` if it is a valid pool key, else raise `ValueError` saying why."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"pool key must be a non-empty str, got {key!r}")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"pool key {key!r} contains NUL or backslash")
    if key.startswith("/"):
        raise ValueError(f"pool key {key!r} must be relative (no leading '/')")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"pool key {key!r} has an empty, '.' or '..' component")
    if parts[0] == TMP_DIR:
        raise ValueError(f"pool key {key!r} is under the reserved '{TMP_DIR}/' prefix")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it is a valid `list` prefix (a key prefix, maybe ending in '/')."""
    if not prefix:
        return ""
    check_key(prefix[:-1] if prefix.endswith("/") else prefix + "x")
    return prefix


def check_range(start: int, end: int | None) -> None:
    """Reject negative range bounds (ranges are absolute byte offsets)."""
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"byte range [{start}, {end}) must not be negative")


class Pool(ABC):
    """A storage backend for pack objects.

    Contract (checked by the conformance suite):

    * `put` is atomic — readers see the old object or the whole new one, never
      a part — and durable when it returns (local: fsync of the file and its
      directory). Putting an existing key replaces it atomically.
    * `get(key, start, end)` returns bytes ``[start, end)`` like Python slicing
      of the object: a range past the end returns what exists (maybe ``b""``);
      ``end=None`` means to the end; ``end <= start`` gives ``b""``. Negative
      bounds raise `ValueError`. A missing object raises
      `PoolObjectMissingError` (also for empty ranges).
    * `delete` is idempotent; `list` yields keys relative to the pool root in
      no particular order and never temporaries.
    * Out of space raises `NoSpaceError`; other backend failures `PoolError`;
      in both cases no partial object remains under the key.
    * Pools are safe to use from several threads at once.
    """

    url: str

    @abstractmethod
    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        """Store the concatenation of `parts` under `key`, atomically and durably."""

    def put_unsynced(self, key: str, parts: Sequence[Buffer]) -> None:
        """`put`, atomic but durable only after the next `sync_puts` (a pool whose
        `put` costs no fsync keeps this default: durable at once)."""
        self.put(key, parts)

    def sync_puts(self) -> None:  # noqa: B027 - optional hook, see put_unsynced
        """Make every `put_unsynced` object so far durable."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of the object (clamped to its size, like slicing)."""

    def readinto(self, key: str, start: int, buf: bytearray | memoryview) -> int:
        """Fill `buf` with the object's bytes from `start`; return how many were read (fewer
        at the end of the object). Pools that can read without an intermediate copy
        (`LocalPool`) override this default, which copies from `get`."""
        data = self.get(key, start, start + len(buf))
        buf[:len(data)] = data
        return len(data)

    @abstractmethod
    def size(self, key: str) -> int:
        """Return the object's size in bytes; `PoolObjectMissingError` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether an object is stored under `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error if it is absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys that start with `prefix` (a plain string prefix)."""

    def modified(self, key: str) -> float | None:
        """When the object was stored (seconds since the epoch), or None if the pool
        cannot tell. A missing object raises `PoolObjectMissingError`."""
        self.size(key)
        return None

    def local_path(self, key: str) -> str | None:
        """Return a filesystem path of the object (for zero-copy senders), or None.

        The path is not checked to exist. Only pools on a local filesystem
        return a path; the default is None.
        """
        check_key(key)
        return None

    @abstractmethod
    def usage(self) -> PoolUsage:
        """Return bytes used by the pool's objects and bytes free (None if unknown)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most pools hold nothing
        """Release resources; idempotent. The pool must not be used afterwards."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class PoolWrapper(Pool):
    """A pool that adds behaviour around `inner` (encryption, fault injection): every
    operation goes to `inner` unless the subclass overrides it; `local_path` stays None
    (the default) so that zero-copy readers cannot bypass the wrapper."""

    def __init__(self, inner: Pool) -> None:
        self.inner = inner
        self.url = inner.url

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        self.inner.put(key, parts)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self.inner.get(key, start, end)

    def readinto(self, key: str, start: int, buf: bytearray | memoryview) -> int:
        return self.inner.readinto(key, start, buf)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def modified(self, key: str) -> float | None:
        return self.inner.modified(key)

    def usage(self) -> PoolUsage:
        return self.inner.usage()

    def close(self) -> None:
        self.inner.close()
