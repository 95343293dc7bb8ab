"""Binary encodings of the metadata records (docs/format.md, "Metadata").

Pure functions, independent of any database, so that every engine stores the
same bytes. Integers in values are little-endian; integers in keys are
big-endian so that byte order is number order.

* `encode_*` raise ValueError when a record cannot be represented (a field out
  of range, an id of the wrong length), naming the record and the field.
* `decode_*` raise `gfs.errors.FormatError` on bytes that do not follow the
  format, naming the record; they never return a partial record.
* `decode_*` take the record's key first (it is not part of the value and is
  used in error messages).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import replace
from itertools import starmap
from typing import Any

from gfs._native import chunk_refcount as _c_chunk_refcount
from gfs._native import inode_compact as _c_inode_compact
from gfs._native import inode_fields as _c_inode_fields
from gfs._native import manifest_compact as _c_manifest_compact
from gfs._native import manifest_entries as _c_manifest_entries
from gfs._native import manifest_fixed as _c_manifest_fixed
from gfs._native import new_file_rows as _c_new_file_rows
from gfs.errors import MetadataDamagedError
from gfs.meta.records import (
    CHUNK_ID_LEN,
    PACK_ID_LEN,
    ChunkRecord,
    ChunkRef,
    Inode,
    Kind,
    Location,
    Manifest,
    ManifestEntries,
    NewFile,
    PackRecord,
    PendingPack,
    PoolRecord,
    new_inode,
)

__all__ = [
    "CHUNK_COMPACT",
    "CHUNK_MEMBER",
    "FORMAT_VERSION",
    "INODE_COMPACT_BIT",
    "INODE_HEADER",
    "INODE_NARROW",
    "MANIFEST_COMPACT",
    "PACKED_FORMAT",
    "PACKED_FORMATS",
    "READABLE_FORMATS",
    "decode_chunk",
    "decode_dirent_ino",
    "decode_dirent_key",
    "decode_ino",
    "decode_inode",
    "decode_manifest",
    "decode_pack",
    "decode_pending",
    "decode_pool",
    "decode_pool_key",
    "decode_u64",
    "dirent_key",
    "dirent_key_within",
    "encode_chunk",
    "encode_dirent_ino",
    "encode_ino",
    "encode_inode",
    "encode_inode_reference",
    "encode_manifest",
    "encode_manifest_compact",
    "encode_manifest_compact_reference",
    "encode_manifest_reference",
    "encode_pack",
    "encode_pending",
    "encode_pool",
    "encode_u64",
    "manifest_entries",
    "new_file_rows",
    "new_file_rows_reference",
    "pool_key",
]

#: Value of the `format` meta key written by this code.
FORMAT_VERSION = b"4"
#: Formats this code reads: formats 1 to 3 lack only the narrow (2) and compact (3)
#: inode records and the folded group member (4), so their stores are read as they
#: are (member blobs included) and marked format 4 when first opened for writing.
#: `format` of an LMDB environment whose large tables compaction has packed into blocks
#: (gfs.meta.blocks; its rows are records of format 4 or older): older code, which
#: would miss the packed rows, refuses it.
#: Format 6 is format 5 whose packed blocks may be compressed with their table's block
#: dictionary (gfs.meta.block_dicts): code of format 5 could not read those.
PACKED_FORMAT = b"6"
PACKED_FORMATS = (b"5", PACKED_FORMAT)
READABLE_FORMATS = (b"1", b"2", b"3", FORMAT_VERSION, *PACKED_FORMATS)

_DAMAGED = "the metadata is damaged; run `hutong fsck`"

# -- keys (big-endian) ----------------------------------------------------------

_U64BE = struct.Struct(">Q")
_U16BE = struct.Struct(">H")
_U64LE = struct.Struct("<Q")


def encode_ino(ino: int) -> bytes:
    """An inode number as a key or dirent value: u64 big-endian."""
    try:
        return _U64BE.pack(ino)
    except struct.error:
        raise ValueError(f"inode number {ino!r} is not a u64") from None


def decode_ino(data: bytes) -> int:
    """The inode number of an 8-byte big-endian key or dirent value."""
    if len(data) != 8:
        raise MetadataDamagedError(f"inode number: expected 8 bytes, got {len(data)}; {_DAMAGED}")
    return int.from_bytes(data, "big")


def encode_dirent_ino(ino: int) -> bytes:
    """A `dirents` value: the inode number big-endian in as few bytes as it needs (1 to
    8; format 3: 3 bytes for most, where formats 1 and 2 wrote 8, which read the same)."""
    if 0 <= ino < 0x1000000:  # most stores' numbers: the length without calls (a put
        # links one entry a file and directory)
        return ino.to_bytes(3 if ino > 0xFFFF else 2 if ino > 0xFF else 1, "big")
    if not 0 <= ino < 1 << 64:
        raise ValueError(f"inode number {ino!r} is not a u64")
    return ino.to_bytes(max(1, (ino.bit_length() + 7) >> 3), "big")


def decode_dirent_ino(data: bytes) -> int:
    """The inode number of a `dirents` value (1 to 8 bytes, big-endian)."""
    if not 1 <= len(data) <= 8:
        raise MetadataDamagedError(
            f"directory entry value: expected 1 to 8 bytes, got {len(data)}; "
            f"{_DAMAGED}")
    return int.from_bytes(data, "big")


def dirent_key(parent: int, name: str) -> bytes:
    """The `dirents` key: parent u64 BE + name (UTF-8). The name must not be empty."""
    if not name:
        raise ValueError(f"directory entry of inode {parent}: empty name")
    return encode_ino(parent) + name.encode("utf-8")


def dirent_key_within(parent: int, name: str, max_key: int) -> bytes:
    """`dirent_key`; ValueError also for a name that makes it over `max_key` bytes (an
    LMDB key's limit)."""
    key = dirent_key(parent, name)
    if len(key) > max_key:
        raise ValueError(f"directory entry of inode {parent}: name is {len(key) - 8} bytes "
                         f"in UTF-8, at most {max_key - 8} allowed")
    return key


def decode_dirent_key(key: bytes) -> tuple[int, str]:
    """(parent, name) of a `dirents` key."""
    if len(key) <= 8:
        raise MetadataDamagedError(f"directory entry key {key!r}: too short; {_DAMAGED}")
    try:
        name = key[8:].decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataDamagedError(
            f"directory entry key {key!r}: name is not UTF-8; {_DAMAGED}") from None
    return int.from_bytes(key[:8], "big"), name


def pool_key(pool_id: int) -> bytes:
    """The `pools` key: pool id u16 big-endian."""
    try:
        return _U16BE.pack(pool_id)
    except struct.error:
        raise ValueError(f"pool id {pool_id!r} is not a u16") from None


def decode_pool_key(key: bytes) -> int:
    """The pool id of a `pools` key."""
    if len(key) != 2:
        raise MetadataDamagedError(f"pool key {key!r}: expected 2 bytes; {_DAMAGED}")
    return int.from_bytes(key, "big")


def encode_u64(value: int) -> bytes:
    """A u64 meta value (`next_ino`), little-endian."""
    try:
        return _U64LE.pack(value)
    except struct.error:
        raise ValueError(f"{value!r} is not a u64") from None


def decode_u64(what: str, data: bytes) -> int:
    """A u64 little-endian meta value; `what` names it in errors."""
    if len(data) != 8:
        raise MetadataDamagedError(f"{what}: expected a u64 (8 bytes), got {len(data)}; {_DAMAGED}")
    return int.from_bytes(data, "little")


# -- inode --------------------------------------------------------------------

#: kind u8, mode u16, uid u32, gid u32, parent u64, size u64, atime_ns i64,
#: mtime_ns i64, ctime_ns i64, version u64; then the symlink target to the end.
INODE_HEADER = struct.Struct("<BHIIQQqqqQ")
#: Set in the kind byte when the header is followed by INODE_LINKS (nlink u32,
#: rdev u64); records without it have nlink 1 and rdev 0.
INODE_HAS_LINKS = 0x80
INODE_LINKS = struct.Struct("<IQ")
#: Set in the kind byte of the narrow record (format 2), used whenever uid and gid fit
#: in 16 bits and parent, size and version in 32: kind u8, mode u16, uid u16, gid u16,
#: parent u32, size u32, version u32, atime_ns i64, mtime_ns i64, ctime_ns i64 (43
#: bytes for 59; the inodes were 31% of a small-files store's metadata).
INODE_NARROW_BIT = 0x40
INODE_NARROW = struct.Struct("<BHHHIIIqqq")
_U16, _U32 = 1 << 16, 1 << 32
_KINDS = {k.value: k for k in Kind}


#: Set in the kind byte of the compact record (format 3), which this code always writes:
#: kind u8, then mode, uid, gid, parent, size, version as unsigned LEB128 varints,
#: mtime_ns i64, ctime_ns - mtime_ns as a zigzag varint, and atime_ns - ctime_ns as a
#: zigzag varint unless INODE_ATIME_IS_CTIME is set; with INODE_HAS_LINKS, nlink and
#: rdev as varints; then the target. A file's record is about 24 bytes (43 narrow).
INODE_COMPACT_BIT = 0x20
#: In a compact record: atime_ns equals ctime_ns (as after a put) and is not stored.
INODE_ATIME_IS_CTIME = 0x10
_I64 = 1 << 63
_U64 = 1 << 64
#: An inode field and its exclusive upper bound (unsigned fields).
_INODE_BOUNDS = (("mode", _U16), ("uid", _U32), ("gid", _U32), ("parent", _U64),
                 ("size", _U64), ("version", _U64), ("nlink", _U32), ("rdev", _U64))


def encode_inode(inode: Inode) -> bytes:
    """The `inodes` value of `inode` (its number is the key): the compact record.

    Encoded in C (native/metarec.c: a put commits one per file and directory, where
    this Python took 6% of a delta put's CPU); a field C finds out of range goes to
    `encode_inode_reference`, which names it in its ValueError."""
    if inode.kind in _KINDS:
        out = _c_inode_compact(inode.kind, inode.mode, inode.uid, inode.gid, inode.parent,
                               inode.size, inode.version, inode.atime_ns, inode.mtime_ns,
                               inode.ctime_ns, inode.nlink, inode.rdev,
                               inode.target.encode("utf-8"))
        if out is not None:
            return out
    return encode_inode_reference(inode)


def encode_inode_reference(inode: Inode) -> bytes:
    """`encode_inode` in Python: the reference the C encoder is tested against, and the
    path that raises the ValueError naming a field out of range."""
    if inode.kind not in _KINDS:
        raise ValueError(f"inode {inode.ino}: unknown kind {inode.kind!r}")
    for name, bound in _INODE_BOUNDS:
        v = getattr(inode, name)
        if not 0 <= v < bound:
            raise ValueError(f"inode {inode.ino}: {name} {v!r} is out of range "
                             f"(0 to {bound - 1})")
    mtime, ctime, atime = inode.mtime_ns, inode.ctime_ns, inode.atime_ns
    for name, v in (("atime_ns", atime), ("mtime_ns", mtime), ("ctime_ns", ctime)):
        if not -_I64 <= v < _I64:
            raise ValueError(f"inode {inode.ino}: {name} {v!r} is not an i64")
    links = inode.nlink != 1 or inode.rdev != 0
    same = atime == ctime
    out = bytearray((inode.kind | INODE_COMPACT_BIT | (INODE_ATIME_IS_CTIME if same else 0)
                     | (INODE_HAS_LINKS if links else 0),))
    _varints_to(out, (inode.mode, inode.uid, inode.gid, inode.parent, inode.size,
                      inode.version))
    out += mtime.to_bytes(8, "little", signed=True)
    tail = [_zigzag(ctime - mtime)]
    if not same:
        tail.append(_zigzag(atime - ctime))
    if links:
        tail += (inode.nlink, inode.rdev)
    _varints_to(out, tail)
    out += inode.target.encode("utf-8")
    return bytes(out)


def _zigzag(v: int) -> int:
    return v << 1 if v >= 0 else ((-v) << 1) - 1


def _unzigzag(z: int) -> int:
    return -((z + 1) >> 1) if z & 1 else z >> 1


def _varints_to(out: bytearray, values: Sequence[int]) -> None:
    """Append `values` (>= 0) to `out` as unsigned LEB128 varints."""
    append = out.append
    for v in values:
        while v > 0x7F:
            append((v & 0x7F) | 0x80)
            v >>= 7
        append(v)


def _varints(data: bytes, pos: int, n: int) -> tuple[list[int], int]:
    """`n` unsigned LEB128 varints of at most 10 bytes from `data[pos:]` and the position
    after them; IndexError when `data` ends first, ValueError when one is too long."""
    vals = []
    for _ in range(n):
        b = data[pos]
        pos += 1
        if b < 0x80:
            vals.append(b)
            continue
        v, shift = b & 0x7F, 7
        while True:
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("varint over 10 bytes")
        vals.append(v)
    return vals, pos


def _decode_compact(ino: int, data: bytes) -> Inode:
    """The compact record: its fields decoded in C (native/metarec.c; a get's plan
    reads an inode per entry, 10 us each in Python), the reference below for any
    record C defers (damaged: it raises the precise error)."""
    f = _c_inode_fields(data)
    if f is not None and f[0] in _KINDS:
        return new_inode(ino, f[4], _KINDS[f[0]], f[1], f[2], f[3], f[5], f[7], f[8], f[9],
                         f[6], f[12], f[10], f[11])
    return _decode_compact_reference(ino, data)


def _decode_compact_reference(ino: int, data: bytes) -> Inode:
    """`_decode_compact` in Python: the reference the C decoder is tested against."""
    flags = data[0]
    try:
        (mode, uid, gid, parent, size, version), pos = _varints(data, 1, 6)
        if pos + 8 > len(data):
            raise IndexError
        mtime = int.from_bytes(data[pos:pos + 8], "little", signed=True)
        tail, pos = _varints(data, pos + 8, 1 if flags & INODE_ATIME_IS_CTIME else 2)
        nlink, rdev = 1, 0
        if flags & INODE_HAS_LINKS:
            (nlink, rdev), pos = _varints(data, pos, 2)
    except (IndexError, ValueError):
        raise MetadataDamagedError(f"inode {ino}: compact record truncated or a field over "
                                   f"64 bits; {_DAMAGED}") from None
    ctime = mtime + _unzigzag(tail[0])
    atime = ctime + _unzigzag(tail[1]) if len(tail) > 1 else ctime
    if not (mode < _U16 and uid < _U32 and gid < _U32 and nlink < _U32 and parent < _U64
            and size < _U64 and version < _U64 and rdev < _U64
            and -_I64 <= ctime < _I64 and -_I64 <= atime < _I64):
        raise MetadataDamagedError(f"inode {ino}: a field of the compact record is out of range; "
                                   f"{_DAMAGED}")
    kind = flags & ~(INODE_COMPACT_BIT | INODE_ATIME_IS_CTIME | INODE_HAS_LINKS)
    k = _KINDS.get(kind)
    if k is None:
        raise MetadataDamagedError(f"inode {ino}: unknown kind {kind}; {_DAMAGED}")
    target = ""
    if len(data) > pos:
        try:
            target = data[pos:].decode("utf-8")
        except UnicodeDecodeError:
            raise MetadataDamagedError(
                f"inode {ino}: symlink target is not UTF-8; {_DAMAGED}") from None
    return Inode(ino, parent, k, mode, uid, gid, size, atime, mtime, ctime, version, target,
                 nlink, rdev)


def decode_inode(ino: int, data: bytes) -> Inode:
    """The inode numbered `ino` from its `inodes` value (compact, narrow or wide)."""
    if data[:1] and data[0] & INODE_COMPACT_BIT:
        return _decode_compact(ino, data)
    header = INODE_NARROW if data[:1] and data[0] & INODE_NARROW_BIT else INODE_HEADER
    if len(data) < header.size:
        raise MetadataDamagedError(
            f"inode {ino}: record is {len(data)} bytes, shorter than the "
            f"{header.size}-byte header; {_DAMAGED}"
            )
    if header is INODE_NARROW:
        kind, mode, uid, gid, parent, size, version, atime, mtime, ctime = \
            INODE_NARROW.unpack_from(data)
        kind &= ~INODE_NARROW_BIT
    else:
        kind, mode, uid, gid, parent, size, atime, mtime, ctime, version = \
            INODE_HEADER.unpack_from(data)
    start, nlink, rdev = header.size, 1, 0
    if kind & INODE_HAS_LINKS:
        kind &= ~INODE_HAS_LINKS
        if len(data) < start + INODE_LINKS.size:
            raise MetadataDamagedError(f"inode {ino}: link count field truncated; {_DAMAGED}")
        nlink, rdev = INODE_LINKS.unpack_from(data, start)
        start += INODE_LINKS.size
    k = _KINDS.get(kind)
    if k is None:
        raise MetadataDamagedError(f"inode {ino}: unknown kind {kind}; {_DAMAGED}")
    target = ""
    if len(data) > start:
        try:
            target = data[start:].decode("utf-8")
        except UnicodeDecodeError:
            raise MetadataDamagedError(
                f"inode {ino}: symlink target is not UTF-8; {_DAMAGED}") from None
    return Inode(ino, parent, k, mode, uid, gid, size, atime, mtime, ctime, version, target,
                 nlink, rdev)


# -- manifest -------------------------------------------------------------------

_MANIFEST_HEAD = struct.Struct("<QI")  # version u64, count u32
_MANIFEST_ENTRY = struct.Struct("<16sI")  # chunk id, raw length u32
assert _MANIFEST_ENTRY.size == CHUNK_ID_LEN + 4


def encode_manifest(manifest: Manifest) -> bytes:
    """The `manifests` value: version u64, count u32, then count x (id 16 B, length u32).

    Encoded in C (native/metarec.c); a field C finds out of range goes to
    `encode_manifest_reference`, which raises the ValueError naming it."""
    out = _c_manifest_fixed(manifest.version, manifest.chunks)
    return encode_manifest_reference(manifest) if out is None else out


def encode_manifest_reference(manifest: Manifest) -> bytes:
    """`encode_manifest` in Python: the reference the C encoder is tested against."""
    chunks = manifest.chunks
    pack = _MANIFEST_ENTRY.pack
    try:
        head = _MANIFEST_HEAD.pack(manifest.version, len(chunks))
        body = b"".join([pack(c.id, c.length) for c in chunks])
    except struct.error as e:
        raise ValueError(
            f"manifest version {manifest.version!r}: a field is out of range ({e})"
        ) from None
    # "16s" pads or truncates silently, so check the ids separately.
    if any(len(c.id) != CHUNK_ID_LEN for c in chunks):
        bad = next(i for i, c in enumerate(chunks) if len(c.id) != CHUNK_ID_LEN)
        raise ValueError(
            f"manifest entry {bad}: chunk id must be {CHUNK_ID_LEN} bytes, "
            f"got {len(chunks[bad].id)}"
        )
    return head + body


def decode_manifest(ino: int, data: bytes) -> Manifest:
    """The manifest of file `ino` from its `manifests` value (the fixed form, or the
    compact form a format-3 LMDB store writes for a manifest it keeps inline)."""
    if len(data) % _MANIFEST_ENTRY.size != _MANIFEST_HEAD.size and data[:1] == MANIFEST_COMPACT:
        return _decode_manifest_compact(ino, data)
    if len(data) < _MANIFEST_HEAD.size:
        raise MetadataDamagedError(f"manifest of inode {ino}: record truncated; {_DAMAGED}")
    version, count = _MANIFEST_HEAD.unpack_from(data)
    body = memoryview(data)[_MANIFEST_HEAD.size :]
    if len(body) != count * _MANIFEST_ENTRY.size:
        raise MetadataDamagedError(
            f"manifest of inode {ino}: header says {count} entries "
            f"({count * _MANIFEST_ENTRY.size} bytes) but {len(body)} bytes follow; {_DAMAGED}"
            )
    return Manifest(version, tuple(starmap(ChunkRef, _MANIFEST_ENTRY.iter_unpack(body))))


def manifest_entries(ino: int, data: bytes) -> ManifestEntries:
    """What `decode_manifest` gives, as plain values, without a Manifest or ChunkRef
    made (a get's plan of 62,793 files spent a seventh of its time decoding
    manifests): the compact form decoded in C, any other form, and a record C leaves
    to it, by `decode_manifest`, which raises for a damaged one."""
    if data[:1] == MANIFEST_COMPACT and len(data) % _MANIFEST_ENTRY.size != _MANIFEST_HEAD.size:
        out = _c_manifest_entries(data)
        if out is not None:
            return out
    return decode_manifest(ino, data).entries()


#: First byte of the compact manifest value: the marker, version and count as varints,
#: then per chunk its length as a varint and its id; one zero byte of padding when the
#: length would be 8 or 12 modulo 20 (the lengths of the fixed and the shared forms).
MANIFEST_COMPACT = b"\xfd"
_FIXED_LENGTHS = (8, 12)


def encode_manifest_compact(manifest: Manifest) -> bytes:
    """The compact `manifests` value of `manifest` (about 21 bytes for one chunk, 32 fixed).

    Encoded in C (native/metarec.c: a put writes one per file of one chunk, 3.3 us each
    in Python, 0.4 in C); a field out of range goes to the reference, which raises."""
    out = _c_manifest_compact(manifest.version, manifest.chunks)
    return encode_manifest_compact_reference(manifest) if out is None else out


def encode_manifest_compact_reference(manifest: Manifest) -> bytes:
    """`encode_manifest_compact` in Python: the reference the C encoder is tested
    against."""
    encode_manifest_reference(manifest)  # the same range checks and errors as the fixed form
    out = bytearray(MANIFEST_COMPACT)
    _varints_to(out, (manifest.version, len(manifest.chunks)))
    for c in manifest.chunks:
        _varints_to(out, (c.length,))
        out += c.id
    if len(out) % 20 in _FIXED_LENGTHS:
        out.append(0)
    return bytes(out)


#: A new file's rows (`new_file_rows`): dirents key, dirents value, inode key, inodes
#: value, and the compact manifests value (None: the manifest is shared, written by
#: gfs.meta.shared_manifests).
NewFileRow = tuple[bytes, bytes, bytes, bytes, bytes | None]


def new_file_rows(parent: int, first_ino: int, now: int, files: list[NewFile],
                  share_min: int, max_key: int) -> list[NewFileRow] | None:
    """The rows of new regular files linked in directory `parent` (`WriteTxn.
    add_new_files`), numbered from `first_ino` in order, made at `now`; a manifest of
    `share_min` refs or more has None (a shared body). Encoded in C, one call a run of
    files (a put's committer spent a third of its time building them a file at a time);
    None when a field is out of range, a name empty, not UTF-8 or making a dirents key
    over `max_key` bytes: `new_file_rows_reference` then raises the precise error."""
    return _c_new_file_rows(parent, first_ino, now, int(Kind.FILE), share_min, max_key, files)


def new_file_rows_reference(parent: int, first_ino: int, now: int, files: list[NewFile],
                            share_min: int, max_key: int) -> list[NewFileRow]:
    """`new_file_rows` in Python, from the encoders of each row: the reference the C
    function is tested against. Raises ValueError (or UnicodeEncodeError for a name
    that is not UTF-8) where C returns None."""
    rows: list[NewFileRow] = []
    for ino, (name, refs, mode, uid, gid, mtime_ns) in enumerate(files, first_ino):
        key = dirent_key_within(parent, name, max_key)
        node = new_inode(ino, parent, Kind.FILE, mode & 0o7777, uid, gid,
                         sum(r.length for r in refs), now, mtime_ns, now, 1, "", 1, 0)
        manifest = Manifest(1, tuple(refs))
        rows.append((key, encode_dirent_ino(ino), encode_ino(ino), encode_inode(node),
                     encode_manifest_compact(manifest) if len(refs) < share_min else None))
    return rows


def _decode_manifest_compact(ino: int, data: bytes) -> Manifest:
    try:
        (version, count), pos = _varints(data, 1, 2)
        if count > len(data):
            raise IndexError
        chunks = []
        for _ in range(count):
            (length,), pos = _varints(data, pos, 1)
            cid = data[pos:pos + CHUNK_ID_LEN]
            if len(cid) != CHUNK_ID_LEN or length >= _U32:
                raise IndexError
            chunks.append(ChunkRef(bytes(cid), length))
            pos += CHUNK_ID_LEN
    except (IndexError, ValueError):
        raise MetadataDamagedError(f"manifest of inode {ino}: compact record truncated or out of "
                                   f"range; {_DAMAGED}") from None
    padded = pos % 20 in _FIXED_LENGTHS
    if len(data) != pos + padded or (padded and data[pos]) or version >= _U64:
        raise MetadataDamagedError(f"manifest of inode {ino}: compact record of {count} entries "
                                   f"is {len(data)} bytes, not {pos + padded}; {_DAMAGED}")
    return Manifest(version, tuple(chunks))


# -- chunk record -----------------------------------------------------------------

_CHUNK_HEAD = struct.Struct("<QIIBB")  # refcount u64, raw u32, stored u32, codec u8, n u8
_LOCATION = struct.Struct("<H16sQI")  # pool u16, pack id, offset u64, length u32
assert _LOCATION.size == 2 + PACK_ID_LEN + 8 + 4


def _encode_chunk_fixed(rec: ChunkRecord) -> bytes:
    """The fixed `chunks` value of formats 1 and 2 (and the range checks of both forms)."""
    locs = rec.locations
    if len(rec.id) != CHUNK_ID_LEN:
        raise ValueError(f"chunk record {rec.id.hex()}: id must be {CHUNK_ID_LEN} bytes")
    for loc in locs:
        if len(loc.pack) != PACK_ID_LEN:
            raise ValueError(
                f"chunk {rec.id.hex()}: location pack id must be {PACK_ID_LEN} bytes, "
                f"got {len(loc.pack)}"
            )
    try:
        head = _CHUNK_HEAD.pack(rec.refcount, rec.raw_len, rec.stored_len, rec.codec, len(locs))
        if not locs:
            return head
        pack = _LOCATION.pack
        return head + b"".join([pack(x.pool, x.pack, x.offset, x.length) for x in locs])
    except struct.error as e:
        raise ValueError(
            f"chunk {rec.id.hex()}: a field is out of range (at most 255 locations) ({e})"
        ) from None


#: First byte of the compact chunk record (format 3): the marker, refcount, raw and stored
#: lengths as varints, codec u8, the location count u8, then per location its pool as a
#: varint, pack id 16 B, offset and length as varints; one zero byte of padding when the
#: length would be 18 modulo 30 (the fixed form's lengths). About 30 bytes for 48.
CHUNK_COMPACT = 0xFD
_FIXED_CHUNK = _CHUNK_HEAD.size  # the fixed form's length modulo _LOCATION.size


#: First byte of the folded member record (format 4): the marker, refcount and raw
#: length as varints, the group chunk id 16 B, the offset in the group as a varint; the
#: compact form's padding. Codec 3, stored length 0, no locations are implied.
CHUNK_MEMBER = 0xFC
_MEMBER_CODEC = 3  # gfs.codec.CODEC_MEMBER (gfs.meta does not import gfs.codec)


def _encode_member(rec: ChunkRecord) -> bytes:
    if (rec.codec != _MEMBER_CODEC or rec.locations or rec.stored_len
            or len(rec.group) != CHUNK_ID_LEN or not 0 <= rec.group_offset < _U32
            or rec.group == rec.id):
        raise ValueError(
            f"chunk {rec.id.hex()}: a folded group member needs codec {_MEMBER_CODEC}, no "
            f"locations, stored length 0, a {CHUNK_ID_LEN}-byte group other than itself "
            f"and an offset under 2^32")
    out = bytearray((CHUNK_MEMBER,))
    _varints_to(out, (rec.refcount, rec.raw_len))
    out += rec.group
    _varints_to(out, (rec.group_offset,))
    if len(out) % _LOCATION.size == _FIXED_CHUNK:
        out.append(0)
    return bytes(out)


def _decode_member(cid: bytes, data: bytes) -> ChunkRecord:
    try:
        (refcount, raw), pos = _varints(data, 1, 2)
        group = bytes(data[pos:pos + CHUNK_ID_LEN])
        if len(group) != CHUNK_ID_LEN:
            raise IndexError
        (offset,), pos = _varints(data, pos + CHUNK_ID_LEN, 1)
    except (IndexError, ValueError):
        raise MetadataDamagedError(f"chunk record {cid.hex()}: folded member record truncated or "
                                   f"out of range; {_DAMAGED}") from None
    padded = pos % _LOCATION.size == _FIXED_CHUNK
    if (len(data) != pos + padded or (padded and data[pos]) or raw >= _U32
            or offset >= _U32 or refcount >= _U64 or group == cid):
        raise MetadataDamagedError(
            f"chunk record {cid.hex()}: folded member record is {len(data)} bytes, not "
            f"{pos + padded}, or out of range; {_DAMAGED}")
    return ChunkRecord(cid, raw, 0, _MEMBER_CODEC, refcount, (), group, offset)


def encode_chunk(rec: ChunkRecord) -> bytes:
    """The `chunks` value of `rec` (its id is the key): the compact record, or the
    folded member record when `rec` names a group."""
    _encode_chunk_fixed(rec)  # the same checks and errors
    if rec.group or rec.group_offset:
        return _encode_member(rec)
    out = bytearray((CHUNK_COMPACT,))
    _varints_to(out, (rec.refcount, rec.raw_len, rec.stored_len))
    out += bytes((rec.codec, len(rec.locations)))
    for loc in rec.locations:
        _varints_to(out, (loc.pool,))
        out += loc.pack
        _varints_to(out, (loc.offset, loc.length))
    if len(out) % _LOCATION.size == _FIXED_CHUNK:
        out.append(0)
    return bytes(out)


def _is_compact_chunk(data: bytes) -> bool:
    return len(data) % _LOCATION.size != _FIXED_CHUNK and data[:1] == b"\xfd"


def _is_member_chunk(data: bytes) -> bool:
    return len(data) % _LOCATION.size != _FIXED_CHUNK and data[:1] == b"\xfc"


_REFCOUNT = struct.Struct("<Q")


def with_refcount_delta(cid: bytes, data: bytes, delta: int) -> bytes:
    """The `chunks` value `data` with its refcount changed by `delta` (the fixed form is
    changed in place, the compact one re-encoded); raises FormatError if the refcount
    would fall below zero.

    Compact and member records are re-encoded in C (native/metarec.c: a put changes one
    refcount per chunk it references, and this decode and encode in Python took 10% of a
    delta put's CPU); the fixed form, and every record C finds damaged or out of range,
    go to `with_refcount_delta_reference`, which raises the precise error."""
    out = _c_chunk_refcount(cid, data, delta)
    if out is not None:
        return out
    return with_refcount_delta_reference(cid, data, delta)


def with_refcount_delta_reference(cid: bytes, data: bytes, delta: int) -> bytes:
    """`with_refcount_delta` in Python: the reference the C re-encoder is tested against."""
    if _is_compact_chunk(data) or _is_member_chunk(data):
        rec = decode_chunk(cid, data)
        if rec.refcount + delta < 0:
            raise MetadataDamagedError(
                f"chunk {cid.hex()}: refcount would fall below zero; {_DAMAGED}")
        return encode_chunk(replace(rec, refcount=rec.refcount + delta))
    if len(data) < _CHUNK_HEAD.size:
        raise MetadataDamagedError(
            f"chunk record {cid.hex()}: {len(data)} bytes is too short; {_DAMAGED}")
    count = _REFCOUNT.unpack_from(data)[0] + delta
    if count < 0:
        raise MetadataDamagedError(f"chunk {cid.hex()}: refcount would fall below zero; {_DAMAGED}")
    return _REFCOUNT.pack(count) + data[_REFCOUNT.size:]


def _decode_chunk_compact(cid: bytes, data: bytes) -> ChunkRecord:
    try:
        (refcount, raw, stored), pos = _varints(data, 1, 3)
        codec, n = data[pos], data[pos + 1]
        pos += 2
        locs = []
        for _ in range(n):
            (pool,), pos = _varints(data, pos, 1)
            pack = data[pos:pos + PACK_ID_LEN]
            if len(pack) != PACK_ID_LEN:
                raise IndexError
            (offset, length), pos = _varints(data, pos + PACK_ID_LEN, 2)
            if pool >= _U16 or length >= _U32:
                raise ValueError
            locs.append(Location(pool, bytes(pack), offset, length))
    except (IndexError, ValueError):
        raise MetadataDamagedError(f"chunk record {cid.hex()}: compact record truncated or out of "
                                   f"range; {_DAMAGED}") from None
    padded = pos % _LOCATION.size == _FIXED_CHUNK
    if (len(data) != pos + padded or (padded and data[pos]) or raw >= _U32
            or stored >= _U32 or refcount >= _U64):
        raise MetadataDamagedError(f"chunk record {cid.hex()}: compact record of {n} locations is "
                                   f"{len(data)} bytes, not {pos + padded}; {_DAMAGED}")
    return ChunkRecord(cid, raw, stored, codec, refcount, tuple(locs))


def decode_chunk(cid: bytes, data: bytes) -> ChunkRecord:
    """The chunk record `cid` from its `chunks` value (compact, folded member or fixed)."""
    if _is_compact_chunk(data):
        return _decode_chunk_compact(cid, data)
    if _is_member_chunk(data):
        return _decode_member(cid, data)
    if len(data) < _CHUNK_HEAD.size:
        raise MetadataDamagedError(f"chunk record {cid.hex()}: record truncated; {_DAMAGED}")
    refcount, raw, stored, codec, n = _CHUNK_HEAD.unpack_from(data)
    if len(data) != _CHUNK_HEAD.size + n * _LOCATION.size:
        raise MetadataDamagedError(
            f"chunk record {cid.hex()}: {n} locations need "
            f"{_CHUNK_HEAD.size + n * _LOCATION.size} bytes, got {len(data)}; {_DAMAGED}"
            )
    locs = tuple(starmap(Location, _LOCATION.iter_unpack(memoryview(data)[_CHUNK_HEAD.size :])))
    return ChunkRecord(cid, raw, stored, codec, refcount, locs)


# -- pack, pending ------------------------------------------------------------------

# pool u16, size u64, nchunks u32, live_chunks u32, live_bytes u64, created_ns i64
_PACK = struct.Struct("<HQIIQq")
_PENDING_HEAD = struct.Struct("<Hq")  # pool u16, created_ns i64; writer token to the end


def encode_pack(rec: PackRecord) -> bytes:
    """The `packs` value of `rec` (its id is the key)."""
    if len(rec.id) != PACK_ID_LEN:
        raise ValueError(f"pack record {rec.id.hex()}: id must be {PACK_ID_LEN} bytes")
    try:
        return _PACK.pack(
            rec.pool, rec.size, rec.nchunks, rec.live_chunks, rec.live_bytes, rec.created_ns
        )
    except struct.error as e:
        raise ValueError(f"pack record {rec.id.hex()}: a field is out of range ({e})") from None


def decode_pack(pack_id: bytes, data: bytes) -> PackRecord:
    """The pack record `pack_id` from its `packs` value."""
    if len(data) != _PACK.size:
        raise MetadataDamagedError(
            f"pack record {pack_id.hex()}: expected {_PACK.size} bytes, got {len(data)}; {_DAMAGED}"
            )
    pool, size, nchunks, live_chunks, live_bytes, created = _PACK.unpack(data)
    return PackRecord(pack_id, pool, size, nchunks, live_chunks, live_bytes, created)


def encode_pending(rec: PendingPack) -> bytes:
    """The `pending` value of `rec` (its pack id is the key)."""
    if len(rec.id) != PACK_ID_LEN:
        raise ValueError(f"pending pack {rec.id.hex()}: id must be {PACK_ID_LEN} bytes")
    try:
        head = _PENDING_HEAD.pack(rec.pool, rec.created_ns)
    except struct.error as e:
        raise ValueError(f"pending pack {rec.id.hex()}: a field is out of range ({e})") from None
    return head + rec.writer.encode("utf-8")


def decode_pending(pack_id: bytes, data: bytes) -> PendingPack:
    """The pending-pack announcement `pack_id` from its `pending` value."""
    if len(data) < _PENDING_HEAD.size:
        raise MetadataDamagedError(f"pending pack {pack_id.hex()}: record truncated; {_DAMAGED}")
    pool, created = _PENDING_HEAD.unpack_from(data)
    try:
        writer = data[_PENDING_HEAD.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataDamagedError(
            f"pending pack {pack_id.hex()}: writer token is not UTF-8; {_DAMAGED}"
            ) from None
    return PendingPack(pack_id, pool, writer, created)


# -- pool ------------------------------------------------------------------------------


def encode_pool(rec: PoolRecord) -> bytes:
    """The `pools` value: compact JSON {name, url, tier, capacity}, keys sorted, UTF-8."""
    pool_key(rec.id)  # range check
    if rec.capacity < 0:
        raise ValueError(f"pool {rec.id} ({rec.name}): capacity must be >= 0")
    doc = {"capacity": rec.capacity, "name": rec.name, "tier": rec.tier, "url": rec.url}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def decode_pool(pool_id: int, data: bytes) -> PoolRecord:
    """The pool `pool_id` from its `pools` value."""
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MetadataDamagedError(
            f"pool {pool_id}: record is not UTF-8 JSON; {_DAMAGED}") from None
    if not isinstance(doc, dict):
        raise MetadataDamagedError(f"pool {pool_id}: record is not a JSON object; {_DAMAGED}")
    name, url, tier, cap = doc.get("name"), doc.get("url"), doc.get("tier"), doc.get("capacity")
    if not (
        isinstance(name, str)
        and isinstance(url, str)
        and isinstance(tier, str)
        and type(cap) is int
        and cap >= 0
    ):
        raise MetadataDamagedError(
            f"pool {pool_id}: record needs string name, url, tier and an integer "
            f"capacity >= 0; {_DAMAGED}"
            )
    return PoolRecord(pool_id, name, url, tier, cap)
