"""Typed stubs of the C extension `gfs._native` (native/module.c)."""

import mmap
from collections.abc import Sequence
from typing import Any

_Buffer = bytes | bytearray | memoryview | mmap.mmap

def cut_points(
    buf: _Buffer, min_size: int, avg_size: int, max_size: int, eof: bool = True, /
) -> list[int]:
    """Chunk end offsets of `buf` by FastCDC; releases the GIL while scanning."""

def check_params(min_size: int, avg_size: int, max_size: int, /) -> None:
    """Raise ValueError unless 64 <= min <= avg <= max <= 2**30, avg a power of two."""

def masks(min_size: int, avg_size: int, max_size: int, /) -> tuple[int, int]:
    """(mask_s, mask_l) for these sizes."""

def gear_table() -> tuple[int, ...]:
    """The 256-entry gear table compiled into the chunker."""

def chunk_ids(buf: _Buffer, cuts: list[int], /) -> bytes:
    """Concatenated 16-byte xxh3-128 ids of the chunks ending at `cuts`; releases the GIL."""

def load_chunked_many(
    paths: list[str] | list[bytes], min_size: int, avg_size: int, max_size: int, limit: int,
    budget: int, /
) -> list[tuple[bytes, list[int], bytes] | OSError | None]:
    """(data, cuts, ids) of each whole file, None if larger than `limit`, the GIL
    released for the batch; OSError in place of a
    file that cannot be read; None past `budget` bytes read whole in the batch."""

def superfeatures(buf: _Buffer, cuts: list[int], /) -> bytes:
    """3 u64 LE super-features per chunk ending at `cuts` (24 bytes each); releases the GIL."""

def features(buf: _Buffer, /) -> tuple[int, ...]:
    """The 12 resemblance features of `buf` taken as one chunk."""

def index_keys_many(chunks: Sequence[_Buffer], /) -> list[list[bytes]]:
    """The resemblance index keys of each buffer taken as one chunk; releases the GIL
    once for the batch."""

def cut_superfeatures(
    buf: _Buffer, min_size: int, avg_size: int, max_size: int, /
) -> tuple[list[int], bytes]:
    """cut_points and superfeatures of the whole buffer in one pass; releases the GIL."""

def write_files(
    items: Sequence[tuple[str, str, Sequence[_Buffer], int, int, int]], /
) -> tuple[int, int]:
    """Create, write, chmod, utime and rename each (tmp, path, blocks, mode, atime_ns,
    mtime_ns) without the GIL; (files done, errno of the first failure or 0)."""

def scan_dir(path: str, /) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """The entries of a local directory, in no order: (name, st_mode, st_uid, st_gid,
    st_size, st_atime_ns, st_mtime_ns, flag) from lstat; flag 0 for a regular file
    access(R_OK) refuses, else 1; st_mode -1 and flag errno where lstat failed."""

class LocalStat(tuple[int, int, int, int, int, int]):
    """The fields of a local entry's lstat that a put uses."""

    def __new__(cls, fields: tuple[int, int, int, int, int, int], /) -> LocalStat: ...
    @property
    def st_mode(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_atime_ns(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...

class LocalEntry(tuple[tuple[str, ...], str, LocalStat]):
    """One entry of a put's local tree: its path below the top, its local path, its stat."""

    def __new__(cls, fields: tuple[tuple[str, ...], str, LocalStat], /) -> LocalEntry: ...
    @property
    def rel(self) -> tuple[str, ...]: ...
    @property
    def path(self) -> str: ...
    @property
    def st(self) -> LocalStat: ...

def scan_entries(
    path: str, rel: tuple[str, ...], max_dirs: int, max_entries: int = ..., /
) -> list[tuple[str, list[tuple[str, int, int, int, int, int, int, int]] | int | None,
                list[LocalEntry] | None]]:
    """scan_dir of path and, breadth first, of the directories below it, up to max_dirs
    in all (no more queued once the listings hold max_entries entries), path first, in
    one release of the GIL: (directory path, None, its entries
    in name order) where every entry is plain (lstat'ed, readable, a name valid as it
    is), else (directory path, its rows or the errno its listing failed with, None)."""

def make_dirs(paths: Sequence[str], /) -> tuple[int, int]:
    """mkdir each path in order without the GIL (one already a directory is kept);
    (paths done, errno of the first failure or 0)."""

def set_dir_attrs(items: Sequence[tuple[str, int, int, int]], /) -> tuple[int, int]:
    """chmod and utime each (path, mode, atime_ns, mtime_ns) in order without the GIL;
    (items done, errno of the first failure or 0)."""

def inode_compact(
    kind: int, mode: int, uid: int, gid: int, parent: int, size: int, version: int,
    atime_ns: int, mtime_ns: int, ctime_ns: int, nlink: int, rdev: int, target: bytes, /
) -> bytes | None:
    """The compact `inodes` value of these fields, or None when a field is out of range."""

def chunk_refcount(cid: bytes, data: bytes, delta: int, /) -> bytes | None:
    """The compact or member `chunks` value `data` with its refcount changed by `delta`,
    or None for another form, a damaged record or a refcount out of range."""

def inode_fields(
    data: _Buffer, /
) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int, str] | None:
    """(kind, mode, uid, gid, parent, size, version, atime_ns, mtime_ns, ctime_ns, nlink,
    rdev, target) of a compact `inodes` value, or None (another form, or damaged)."""

def manifest_fixed(version: int, chunks: Sequence[object], /) -> bytes | None:
    """The fixed `manifests` value of `version` and `chunks` (ChunkRef-like: a 16-byte
    `id`, an int `length`), or None when a field is out of range."""

def manifest_compact(version: int, chunks: Sequence[object], /) -> bytes | None:
    """The compact `manifests` value of `version` and `chunks`, or None as manifest_fixed."""

def manifest_entries(data: _Buffer, /) -> tuple[int, tuple[tuple[bytes, int], ...]] | None:
    """(version, ((id, length), ...)) of a compact `manifests` value, or None (another
    form, or a record the Python decoder rejects)."""

def new_file_rows(
    parent: int, first_ino: int, now: int, kind: int, share_min: int, max_key: int,
    files: list[tuple[str, Any, int, int, int, int]], /
) -> list[tuple[bytes, bytes, bytes, bytes, bytes | None]] | None:
    """The (dirents key, dirents value, inode key, inodes value, compact manifests value
    or None) of each new file (name, refs, mode, uid, gid, mtime_ns) linked in `parent`,
    numbered from `first_ino`, made at `now`; None when the Python reference decides."""
