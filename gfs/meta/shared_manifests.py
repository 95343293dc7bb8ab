"""Content-addressed manifests of the LMDB engine: identical file contents share one
body record with a reference count (docs/format.md, "Metadata (LMDB engine)").

A `manifests` value is either inline (the compact form of
`gfs.meta.encoding.encode_manifest_compact`; stores of formats 1 and 2 hold the fixed
form, version u64, count u32, entries, which reads as well) or a
reference (version u64, count 0xFFFFFFFF, body key 16 B) to an `mbodies` record
(refcount u64, then the entries). The key is BLAKE2b-128 of the entries; a new
body is shared only when the stored entries are byte-identical, so a key
collision can never make one file read another's chunks. Manifests of fewer
than `SHARE_MIN_CHUNKS` chunks stay inline: a reference would not be smaller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

try:  # hashlib.blake2b itself, without importing hashlib's OpenSSL (~3.5 ms a command)
    from _blake2 import blake2b
except ImportError:  # an interpreter without CPython's own module
    from hashlib import blake2b

from gfs.errors import MetadataDamagedError
from gfs.meta import encoding as enc
from gfs.meta.records import ChunkRef, Manifest

#: Manifests with fewer chunks than this are stored inline.
SHARE_MIN_CHUNKS = 2
_HEAD = struct.Struct("<QI")  # version u64, count u32 (as in the inline form)
_REF_MARK = 0xFFFFFFFF
_REFCOUNT = struct.Struct("<Q")
KEY_LEN = 16


def ref_key(value: bytes) -> bytes | None:
    """The body key of a reference value, or None for an inline one."""
    if len(value) == _HEAD.size + KEY_LEN and _HEAD.unpack_from(value)[1] == _REF_MARK:
        return value[_HEAD.size:]
    return None


def decode(ino: int, value: bytes, body: Callable[[bytes], bytes | None]) -> Manifest:
    """The manifest of file `ino` from its `manifests` value; `body` reads an `mbodies`
    record by key."""
    key = ref_key(value)
    if key is None:
        return enc.decode_manifest(ino, value)
    rec = body(key)
    if rec is None or len(rec) < _REFCOUNT.size:
        raise MetadataDamagedError(
            f"manifest of inode {ino}: shared body {key.hex()} is missing; the metadata is "
            "damaged: restore it from a dump (`hutong meta load`)")
    entries = rec[_REFCOUNT.size:]
    version = _HEAD.unpack_from(value)[0]
    return enc.decode_manifest(ino, _HEAD.pack(version, len(entries) // 20) + entries)


def put(txn: Any, manifests: Any, bodies: Any, ino_key: bytes, manifest: Manifest, *,
        replaces: bool = True) -> None:
    """Set the manifest of `ino_key` in py-lmdb write transaction `txn`, sharing the body
    with identical contents (and releasing the body its old manifest named; `replaces`
    False: the caller knows there is none, a new inode's)."""
    if replaces:
        release(txn, manifests, bodies, ino_key)
    if len(manifest.chunks) < SHARE_MIN_CHUNKS:
        txn.put(ino_key, enc.encode_manifest_compact(manifest), db=manifests)
        return
    inline = enc.encode_manifest(manifest)
    entries = inline[_HEAD.size:]
    key = blake2b(entries, digest_size=KEY_LEN).digest()
    old = txn.get(key, db=bodies)
    if old is None:
        txn.put(key, _REFCOUNT.pack(1) + entries, db=bodies)
    elif old[_REFCOUNT.size:] == entries:
        txn.put(key, _REFCOUNT.pack(_REFCOUNT.unpack_from(old)[0] + 1) + entries, db=bodies)
    else:  # a key collision: never share
        txn.put(ino_key, enc.encode_manifest_compact(manifest), db=manifests)
        return
    txn.put(ino_key, _HEAD.pack(manifest.version, _REF_MARK) + key, db=manifests)


def release(txn: Any, manifests: Any, bodies: Any, ino_key: bytes) -> None:
    """Drop the reference the current manifest of `ino_key` holds on a shared body (the
    body goes with its last reference); the `manifests` value itself is left."""
    value = txn.get(ino_key, db=manifests)
    key = None if value is None else ref_key(bytes(value))
    if key is None:
        return
    old = txn.get(key, db=bodies)
    if old is None:
        return
    n = _REFCOUNT.unpack_from(old)[0]
    if n <= 1:
        txn.delete(key, db=bodies)
    else:
        txn.put(key, _REFCOUNT.pack(n - 1) + bytes(old[_REFCOUNT.size:]), db=bodies)


def problems(manifests: Iterable[tuple[bytes, bytes]], bodies: Iterable[tuple[bytes, bytes]]
             ) -> list[str]:
    """Shared bodies whose refcount differs from the manifests naming them, and
    references to missing bodies (fsck); `manifests` and `bodies`: the rows of the two
    tables, in key order."""
    named: dict[bytes, int] = {}
    for _, value in manifests:
        key = ref_key(bytes(value))
        if key is not None:
            named[key] = named.get(key, 0) + 1
    out = []
    for key, rec in bodies:
        n = _REFCOUNT.unpack_from(rec)[0]
        want = named.pop(bytes(key), 0)
        if n != want:
            out.append(f"shared manifest body {bytes(key).hex()} refcount {n}, "
                       f"but {want} files name it")
    out += [f"shared manifest body {key.hex()} is missing ({n} files name it)"
            for key, n in named.items()]
    return out


def manifest_bytes(manifests: Iterable[Manifest]) -> tuple[int, int]:
    """(inline, shared): key and value bytes the `manifests` take stored every one
    inline, and stored as this module does (references plus one body per distinct
    entry list), for metadata reports."""
    inline = shared = 0
    bodies: set[tuple[ChunkRef, ...]] = set()
    for m in manifests:
        whole = 8 + _HEAD.size + 20 * len(m.chunks)
        inline += whole
        if len(m.chunks) < SHARE_MIN_CHUNKS:
            shared += whole
            continue
        shared += 8 + _HEAD.size + KEY_LEN
        if m.chunks not in bodies:
            bodies.add(m.chunks)
            shared += KEY_LEN + _REFCOUNT.size + 20 * len(m.chunks)
    return inline, shared
