"""Records kept by a metadata engine (see docs/format.md, "Metadata")."""

from __future__ import annotations

import enum
from dataclasses import dataclass

ROOT_INO = 1
CHUNK_ID_LEN = 16
PACK_ID_LEN = 16


class Kind(enum.IntEnum):
    """What an inode is."""

    FILE = 1
    DIR = 2
    SYMLINK = 3
    #: Special files: metadata only (the kernel serves their I/O, as on every
    #: network file system); a device's numbers are in `Inode.rdev`.
    FIFO = 4
    SOCKET = 5
    CHARDEV = 6
    BLOCKDEV = 7


@dataclass(frozen=True, slots=True)
class Inode:
    """A namespace node. `parent` is the containing directory (ROOT_INO for the root);
    0 for a non-directory that has had more than one link (it has no single parent).

    `nlink` counts directory entries naming a non-directory (hard links); for a
    directory it is 2 + its subdirectories, or 1 for a directory made before link
    counts were kept (unknown, as some kernel file systems report). `rdev` is the
    device number of a character or block device node."""

    ino: int
    parent: int
    kind: Kind
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    version: int = 0
    target: str = ""
    nlink: int = 1
    rdev: int = 0


# Inode's slots, set straight (what its generated __init__ does field by field through
# the frozen class's object.__setattr__, by name): `new_inode` builds one in about 60%
# of the time. Inode must keep having no __post_init__ for it to be the same object.
assert not hasattr(Inode, "__post_init__")
_new = object.__new__
(_s_ino, _s_parent, _s_kind, _s_mode, _s_uid, _s_gid, _s_size, _s_atime, _s_mtime, _s_ctime,
 _s_version, _s_target, _s_nlink, _s_rdev) = (
    getattr(Inode, f).__set__ for f in ("ino", "parent", "kind", "mode", "uid", "gid", "size",
                                         "atime_ns", "mtime_ns", "ctime_ns", "version",
                                         "target", "nlink", "rdev"))


def new_inode(ino: int, parent: int, kind: Kind, mode: int, uid: int, gid: int, size: int,
              atime_ns: int, mtime_ns: int, ctime_ns: int, version: int, target: str,
              nlink: int, rdev: int) -> Inode:
    """`Inode(...)` with every field given in order, faster (a put makes one per file
    and directory and changes each directory's once a commit)."""
    node: Inode = _new(Inode)
    _s_ino(node, ino)
    _s_parent(node, parent)
    _s_kind(node, kind)
    _s_mode(node, mode)
    _s_uid(node, uid)
    _s_gid(node, gid)
    _s_size(node, size)
    _s_atime(node, atime_ns)
    _s_mtime(node, mtime_ns)
    _s_ctime(node, ctime_ns)
    _s_version(node, version)
    _s_target(node, target)
    _s_nlink(node, nlink)
    _s_rdev(node, rdev)
    return node


def inode_with(node: Inode, *, parent: int | None = None, kind: Kind | None = None,
               mode: int | None = None, uid: int | None = None, gid: int | None = None,
               size: int | None = None, atime_ns: int | None = None,
               mtime_ns: int | None = None, ctime_ns: int | None = None,
               version: int | None = None, target: str | None = None,
               nlink: int | None = None, rdev: int | None = None) -> Inode:
    """`dataclasses.replace` of an inode (None: the field kept; no field is ever None),
    several times faster: no field walk, no keyword dict (a put's commit steps each
    directory's version and link count)."""
    n = node
    return new_inode(n.ino, n.parent if parent is None else parent,
                     n.kind if kind is None else kind, n.mode if mode is None else mode,
                     n.uid if uid is None else uid, n.gid if gid is None else gid,
                     n.size if size is None else size,
                     n.atime_ns if atime_ns is None else atime_ns,
                     n.mtime_ns if mtime_ns is None else mtime_ns,
                     n.ctime_ns if ctime_ns is None else ctime_ns,
                     n.version if version is None else version,
                     n.target if target is None else target,
                     n.nlink if nlink is None else nlink, n.rdev if rdev is None else rdev)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One entry of a manifest: a chunk id and its raw length."""

    id: bytes
    length: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """A file version: the ordered chunks whose concatenation is the content."""

    version: int
    chunks: tuple[ChunkRef, ...]

    @property
    def size(self) -> int:
        return sum(c.length for c in self.chunks)

    def entries(self) -> ManifestEntries:
        """This manifest as plain values: (version, ((chunk id, raw length), ...))."""
        return self.version, tuple([(c.id, c.length) for c in self.chunks])


#: A manifest as plain values (`Manifest.entries`, `ReadTxn.scan_manifest`).
ManifestEntries = tuple[int, tuple[tuple[bytes, int], ...]]

#: A new regular file of a put, for `WriteTxn.add_new_files`: (name, refs, mode, uid,
#: gid, mtime_ns); mode as the local lstat gives it (the permission bits are kept).
NewFile = tuple[str, list[ChunkRef], int, int, int, int]


@dataclass(frozen=True, slots=True)
class Location:
    """Where one copy of a chunk's blob lives: a byte range of a pack in a pool."""

    pool: int
    pack: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """The chunk index entry. `refcount` counts manifest entries that name the chunk.

    A folded group member (docs/format.md, "Group blobs") has codec 3, stored length
    0, no locations, and names its group chunk (`group`) and the offset of its first
    byte in the group's raw bytes (`group_offset`); every other record has `group`
    empty."""

    id: bytes
    raw_len: int
    stored_len: int
    codec: int
    refcount: int
    locations: tuple[Location, ...]
    group: bytes = b""
    group_offset: int = 0


# ChunkRecord's slots, set straight as `new_inode` sets Inode's: a put's commit makes
# one record per new chunk (and per folded group member) and another with its refcount.
assert not hasattr(ChunkRecord, "__post_init__")
(_c_id, _c_raw_len, _c_stored_len, _c_codec, _c_refcount, _c_locations, _c_group,
 _c_group_offset) = (
    getattr(ChunkRecord, f).__set__ for f in ("id", "raw_len", "stored_len", "codec",
                                               "refcount", "locations", "group",
                                               "group_offset"))


def chunk_record(cid: bytes, raw_len: int, stored_len: int, codec: int, refcount: int,
                 locations: tuple[Location, ...], group: bytes = b"",
                 group_offset: int = 0) -> ChunkRecord:
    """`ChunkRecord(...)` with its fields in order, faster (see `new_inode`)."""
    rec: ChunkRecord = _new(ChunkRecord)
    _c_id(rec, cid)
    _c_raw_len(rec, raw_len)
    _c_stored_len(rec, stored_len)
    _c_codec(rec, codec)
    _c_refcount(rec, refcount)
    _c_locations(rec, locations)
    _c_group(rec, group)
    _c_group_offset(rec, group_offset)
    return rec


def with_refcount(rec: ChunkRecord, refcount: int) -> ChunkRecord:
    """`dataclasses.replace(rec, refcount=refcount)`, several times faster."""
    return chunk_record(rec.id, rec.raw_len, rec.stored_len, rec.codec, refcount,
                        rec.locations, rec.group, rec.group_offset)


@dataclass(frozen=True, slots=True)
class PackRecord:
    """A committed pack object; `live_*` count chunk locations that point into it."""

    id: bytes
    pool: int
    size: int
    nchunks: int
    live_chunks: int
    live_bytes: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class PendingPack:
    """A pack being written by a writer that has not committed it yet."""

    id: bytes
    pool: int
    writer: str
    created_ns: int


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """A storage pool of this store: any fsspec URL, with a tier class and a capacity."""

    id: int
    name: str
    url: str
    tier: str = "warm"
    capacity: int = 0
