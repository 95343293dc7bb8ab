"""A pool whose objects are encrypted at rest (docs/format.md, "Sealed pool objects").

`SealedPool` wraps any `Pool`: each object is stored as a 32-byte header and
64 KiB segments, each sealed with AES-256-GCM under a key derived for that
object and that key name, so every writer and reader above (writes, gc,
fsck, tierer, repair, the mover's receiver) keeps working unchanged and
never sees or writes a plaintext byte in the backend.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gfs import _sealed
from gfs.codec import Buffer
from gfs.errors import ConfigError, CorruptChunkError
from gfs.pools.base import Pool, PoolWrapper, check_key, check_range

MAGIC = b"HTSO"
VERSION = 1
HEAD_LEN = 32
SALT_LEN = 24
SEGMENT = 64 << 10
TAG = 16
KEY_LEN = 32
STEP = SEGMENT + TAG
GROUP = 16
"""Segments read from the backend per call (~1 MiB)."""
HEADS_CACHED = 4096
"""Object headers (salt, size) a pool remembers for the reads that follow."""
_HEAD = struct.Struct(f"<4sB3x{SALT_LEN}s")
_AD = struct.Struct(">QB")


@functools.lru_cache(maxsize=1024)
def _object_aead(key: bytes, name: str, salt: bytes) -> AESGCM:
    """The cipher of one object (one put: its salt), kept for the ranged reads that follow
    (a derivation costs ~100 us, a 4 KiB read ~10 us)."""
    info = b"hutong pool object v1\0" + name.encode()
    return AESGCM(HKDF(hashes.SHA256(), KEY_LEN, salt, info).derive(key))


def _scratch(local: threading.local) -> tuple[memoryview, memoryview]:
    """This thread's buffers (in `local`, one per pool: a sealed pool inside another
    must not share them) for GROUP sealed segments and GROUP + 1 plain ones, reused by
    every read."""
    bufs: tuple[memoryview, memoryview] | None = getattr(local, "bufs", None)
    if bufs is None:
        bufs = local.bufs = (memoryview(bytearray(GROUP * STEP)),
                              memoryview(bytearray((GROUP + 1) * SEGMENT)))
    return bufs


def _segments(body: int) -> int:
    """Segments in an object of `body` sealed bytes after the header (at least one)."""
    return max(1, -(-body // (SEGMENT + TAG)))


class SealedPool(PoolWrapper):
    """`inner` with every object encrypted and authenticated under `key` (32 bytes)."""

    def __init__(self, inner: Pool, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ConfigError(f"at-rest key must be {KEY_LEN} bytes, got {len(key)}")
        super().__init__(inner)
        self._key = key
        self._heads: dict[str, tuple[bytes, int]] = {}
        self._heads_lock = threading.Lock()
        self._local = threading.local()

    def _aead(self, name: str, salt: bytes) -> AESGCM:
        return _object_aead(self._key, name, salt)

    def _corrupt(self, name: str, what: str) -> CorruptChunkError:
        return CorruptChunkError(f"{self.url} object {name}",
                                 f"encrypted object {what}: damaged, or sealed with another "
                                 "at-rest key; run `hutong fsck`")

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        check_key(key)
        salt = os.urandom(SALT_LEN)
        aead = self._aead(key, salt)
        plain = memoryview(b"".join(parts))  # segments are views, not copies
        n = max(1, -(-len(plain) // SEGMENT))
        out: list[Buffer] = [_HEAD.pack(MAGIC, VERSION, salt)]
        for i in range(n):
            nonce = i.to_bytes(12, "big")
            out.append(aead.encrypt(nonce, plain[i * SEGMENT:(i + 1) * SEGMENT],
                                    _AD.pack(i, i == n - 1)))
        self._forget(key)
        self.inner.put(key, out)
        self._remember(key, salt, HEAD_LEN + len(plain) + n * TAG)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def _remember(self, key: str, salt: bytes, stored: int) -> None:
        with self._heads_lock:
            if len(self._heads) >= HEADS_CACHED:
                self._heads.pop(next(iter(self._heads)))
            self._heads[key] = (salt, stored)

    def _forget(self, key: str) -> None:
        with self._heads_lock:
            self._heads.pop(key, None)

    def _layout(self, key: str, stored: int) -> tuple[int, int]:
        """(segments, plaintext size) of object `key` of `stored` bytes."""
        body = stored - HEAD_LEN
        n = _segments(body)
        if body < TAG or body - (n - 1) * (SEGMENT + TAG) < TAG:
            raise self._corrupt(key, f"of {stored} bytes is cut")
        return n, body - n * TAG

    def _head(self, key: str, cached: bool) -> tuple[bytes, int]:
        """(salt, stored size) of the object: remembered from an earlier put or read (a stale
        entry fails authentication and is read again), else read from the backend."""
        if cached:
            with self._heads_lock:
                head = self._heads.get(key)
            if head is not None:
                return head
        stored = self.inner.size(key)
        raw = self.inner.get(key, 0, HEAD_LEN)
        magic, version, salt = _HEAD.unpack(raw) if len(raw) == HEAD_LEN else (b"", 0, b"")
        if magic != MAGIC or version != VERSION:
            raise self._corrupt(key, "has no sealed header (a plaintext object in an "
                                "encrypted pool?)")
        self._remember(key, salt, stored)
        return salt, stored

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        check_range(start, end)
        data = self._read(key, start, end, None)
        assert isinstance(data, bytes)
        return data

    def readinto(self, key: str, start: int, buf: bytearray | memoryview) -> int:
        """Decrypt straight into `buf` (nothing of a segment that fails is left in it)."""
        check_key(key)
        check_range(start, start + len(buf))
        with memoryview(buf) as view:
            got = self._read(key, start, start + len(buf), view.cast("B"))
        assert isinstance(got, int)
        return got

    def _read(self, key: str, start: int, end: int | None,
              into: memoryview | None) -> bytes | int:
        """Plaintext [start, end) as new bytes, or into `into` (then how many bytes)."""
        # The first try uses the remembered header; an object replaced or damaged since
        # fails authentication and is read afresh (damage fails every time).
        for attempt in range(3):
            try:
                return self._open(key, start, end, into, cached=attempt == 0)
            except CorruptChunkError:
                if into is not None:
                    into[:] = bytes(len(into))
                self._forget(key)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _open(self, key: str, start: int, end: int | None, into: memoryview | None, *,
              cached: bool) -> bytes | int:
        salt, stored = self._head(key, cached and (end is None or end > start))
        n, size = self._layout(key, stored)
        end = size if end is None else min(end, size)
        length = max(0, end - start)
        if into is not None:
            return self._fill(key, salt, stored, n, start, into[:length])
        if not length:
            return b""
        if length > GROUP * SEGMENT:
            # Decrypted straight into the bytes returned (made in C, filled once).
            return _sealed.filled_bytes(
                length, lambda out: self._fill(key, salt, stored, n, start, out))
        pt = _scratch(self._local)[1]
        out = pt[start % SEGMENT:][:length]
        self._fill(key, salt, stored, n, start, out)
        return bytes(out)

    def _fill(self, key: str, salt: bytes, stored: int, n: int, start: int,
              out: memoryview) -> int:
        """Decrypt plaintext [start, start + len(out)) of the object into `out`; returns
        len(out). Whole segments are opened in place in `out`; a partial first or last
        one in this thread's scratch, then copied."""
        if not out:
            return 0
        end = start + len(out)
        first, last = start // SEGMENT, (end - 1) // SEGMENT
        aead = self._aead(key, salt)
        ct, pt = _scratch(self._local)
        # `out` may itself be the scratch's plaintext buffer (a read of up to GROUP
        # segments), then segments are opened where they belong in it.
        own = out.obj is pt.obj
        for g in range(first, last + 1, GROUP):
            k = min(GROUP, last + 1 - g)
            at, stop = HEAD_LEN + g * STEP, min(stored, HEAD_LEN + (g + k) * STEP)
            got = self.inner.readinto(key, at, ct[:stop - at])
            if got != stop - at:
                raise self._corrupt(key, f"of {stored} bytes is cut")
            for i in range(g, g + k):
                seg = ct[(i - g) * STEP:min((i - g + 1) * STEP, got)]
                lo, hi = i * SEGMENT, i * SEGMENT + len(seg) - TAG
                whole = own or (start <= lo and hi <= end)
                if own:
                    dest = pt[(i - first) * SEGMENT:(i - first) * SEGMENT + hi - lo]
                elif whole:
                    dest = out[lo - start:hi - start]
                else:
                    dest = pt[:hi - lo]
                try:
                    aead.decrypt_into(i.to_bytes(12, "big"), seg, _AD.pack(i, i == n - 1), dest)
                except InvalidTag:
                    raise self._corrupt(key, f"segment {i} fails authentication") from None
                if not whole:  # a partial first or last segment
                    a, b = max(lo, start), min(hi, end)
                    out[a - start:b - start] = dest[a - lo:b - lo]
        return len(out)

    def size(self, key: str) -> int:
        return self._layout(key, self.inner.size(key))[1]
