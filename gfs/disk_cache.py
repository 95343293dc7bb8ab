"""Disk tier of the local cache: stored chunks (blobs, compressed as in their pack)
in large append-only segment files on local disk, with a capacity in bytes and an
eviction policy over whole segments.

Layout (`CACHE` is `STATE/cache` unless configured; see `cache_dir`):

    CACHE/lock                      held (flock, exclusive) by the process that owns the tier
    CACHE/segments/000000000007.seg a sealed segment: blobs back to back, each a whole
                                    stored blob (its 36-byte header names the chunk and
                                    the payload length), never changed again
    CACHE/segments/000000000007.idx the index of sealed segment 7 (written when it is
                                    sealed; checksummed, see `_write_index`)
    CACHE/segments/000000000008.open the segment being appended to (one at a time)
    CACHE/stats.json                counters, saved every few seconds and on close

Why segments: a warm re-read of a 1 GiB file was about 14,000 opens and reads of
one small file each (a bare loop tops out near 730 MB/s); in segments the chunks
a reader admitted in order lie back to back, and a run of them is read with one
`preadv` straight into the reader's buffer (`read_into`).

The index (chunk id -> segment, offset, length) lives in memory and is rebuilt
when the tier is opened: from a sealed segment's `.idx` file (one read per
segment: a 10 GiB tier is ~160 reads instead of ~140,000 header reads), or, when
that file is missing, damaged (its checksum), or describes a segment of another
size, by walking the segment's blob headers (and the owner writes the file
again). The `.idx` file only says where records are: every read still verifies
the record itself, so a lying index file can cause a miss, never a wrong byte.
An entry becomes
visible only after its bytes are written (`put` appends, then indexes). A crash
can leave a torn tail in the open segment: the walk stops at the first header
that does not parse or whose blob overruns the file, the file is cut there and
sealed. Every read is still verified (header, id, xxh3-128 of the content, in
place, without a copy): a record damaged on disk is never served; it is dropped
from the index and counted as `corrupt_dropped`, and the chunk is read from the
store. Verification is kept on purpose (architecture invariant 1): xxh3 runs at
several GB/s in place, and a local file system does not checksum data.

Eviction: a segment is sealed (renamed `.seg`, without an fsync) when it reaches
`segment_bytes` (64 MiB, or a 16th of the capacity when that is smaller); sealed
segments are the eviction policy's keys, sized by their bytes, and an evicted
segment is deleted whole (its chunks leave the index). A read of a chunk counts
as a hit of its segment. The open segment is not evicted, so the tier may exceed
its capacity by at most one segment.

One process owns the tier (the lock): it admits and evicts. Other processes
that open the same directory (a second mount, `hutong warmup` beside a mount)
use it read-only: they index what is there, serve verified hits, look again for
new segments at most once a second on a miss, and never write or evict.

`gfs.read.DiskTier` puts this cache in front of a chunk source. By default only
chunks whose pool is not on local disk are admitted (caching a local pack file
in another local file saves nothing); `admit_local=True` (`hutong mount
--disk-cache on`, `hutong warmup`) admits every chunk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from gfs.codec import (
    BLOB_HEADER_LEN,
    CODEC_RAW,
    BlobHeader,
    decode_blob,
    parse_blob_header,
)
from gfs.env import CACHE_BYTES_ENV, CACHE_DIR_ENV
from gfs.errors import ConfigError, CorruptChunkError
from gfs.eviction import DEFAULT_POLICY, make_policy
from gfs.units import UnitError, parse_size

log = logging.getLogger("hutong.cache")

#: Default capacity of the disk tier.
DEFAULT_DISK_BYTES = 4 << 30
#: Largest segment; smaller tiers use a 16th of their capacity.
SEGMENT_BYTES = 64 << 20
STATS_FILE = "stats.json"
SEGMENTS = "segments"
#: Seconds between saves of the counters while the tier is in use.
SAVE_EVERY = 5.0
#: Seconds between looks for new segments by a read-only user of the tier.
RESCAN_EVERY = 1.0
_COUNTERS = ("hits", "misses", "admitted", "evictions", "corrupt_dropped", "bytes_written",
             "bytes_read")
#: Buffers one preadv takes at most (IOV_MAX is 1024 on Linux; two per record).
_IOV_RECORDS = 500
#: A segment index file: magic, format, segment number, segment bytes, records; then
#: per record chunk id, offset, blob bytes, raw flag; then xxh3-128 of all before it.
_IDX_MAGIC = b"HTSX"
_IDX_HEAD = struct.Struct("<4sHQQI")
_IDX_RECORD = struct.Struct("<16sQIB")
_IDX_FORMAT = 1


def cache_dir(state: str | os.PathLike[str], arg: str | os.PathLike[str] | None = None) -> Path:
    """The disk tier's directory: `arg`, else $HUTONG_DISK_CACHE, else STATE/cache."""
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(state) / "cache"


def cache_capacity(arg: int | None = None) -> int:
    """The disk tier's capacity: `arg`, else $HUTONG_DISK_CACHE_BYTES, else 4 GiB."""
    if arg is not None:
        value, source = arg, "argument"
    else:
        env = os.environ.get(CACHE_BYTES_ENV)
        if env is None:
            return DEFAULT_DISK_BYTES
        source = f"environment {CACHE_BYTES_ENV}"
        try:
            value = parse_size(env)
        except UnitError as e:
            raise ConfigError(f"{source}: {e}") from None
    if value < 0:
        raise ConfigError(f"{source}: disk cache capacity must be >= 0 bytes, got {value}")
    return value


@dataclass
class DiskStats:
    """Counters of the disk tier (cumulative over the runs that owned it)."""

    hits: int = 0
    misses: int = 0
    admitted: int = 0
    evictions: int = 0
    """Chunks that left the tier with their evicted segment."""
    corrupt_dropped: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    bytes_from_store: int = 0
    bytes_cached: int = 0
    entries: int = 0
    segments: int = 0
    capacity: int = 0
    policy: str = DEFAULT_POLICY
    path: str = ""
    mode: str = "owner"
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Entry(NamedTuple):
    seg: int
    off: int
    length: int
    """Bytes of the whole blob."""
    raw: bool
    """The payload is the raw chunk (codec raw): readable straight into a caller's buffer."""


def _seg_name(seg: int, sealed: bool) -> str:
    return f"{seg:012d}.{'seg' if sealed else 'open'}"


def _idx_name(seg: int) -> str:
    return f"{seg:012d}.idx"


def _index_bytes(seg: int, size: int, records: Sequence[tuple[bytes, _Entry]]) -> bytes:
    """The `.idx` file of sealed segment `seg` of `size` bytes holding `records`."""
    body = b"".join([_IDX_HEAD.pack(_IDX_MAGIC, _IDX_FORMAT, seg, size, len(records)),
                     *(_IDX_RECORD.pack(cid, e.off, e.length, e.raw) for cid, e in records)])
    return body + xxhash.xxh3_128_digest(body)


def _read_index(path: Path, seg: int, size: int) -> list[tuple[bytes, _Entry]] | None:
    """The records of sealed segment `seg` (`size` bytes now) from its `.idx` file; None
    if the file is missing, damaged, of another segment or of another size."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    body, check = data[:-16], data[-16:]
    if len(body) < _IDX_HEAD.size or xxhash.xxh3_128_digest(body) != check:
        return None
    magic, fmt, number, seg_size, count = _IDX_HEAD.unpack_from(body)
    if (magic, fmt, number, seg_size) != (_IDX_MAGIC, _IDX_FORMAT, seg, size) or \
            len(body) != _IDX_HEAD.size + count * _IDX_RECORD.size:
        return None
    out = []
    for cid, off, length, raw in _IDX_RECORD.iter_unpack(body[_IDX_HEAD.size:]):
        if off + length > size or length < BLOB_HEADER_LEN:
            return None
        out.append((cid, _Entry(0, off, length, bool(raw))))
    return out


def _walk(fd: int, start: int = 0) -> tuple[list[tuple[bytes, _Entry]], int]:
    """The records of one segment file from offset `start` (segment number 0 in the
    entries), and the offset where the whole records end (a torn or foreign tail
    starts there)."""
    size = os.fstat(fd).st_size
    out: list[tuple[bytes, _Entry]] = []
    off = start
    while off + BLOB_HEADER_LEN <= size:
        try:
            h = parse_blob_header(os.pread(fd, BLOB_HEADER_LEN, off))
        except CorruptChunkError:
            break
        if off + h.blob_len > size:
            break
        out.append((h.chunk_id, _Entry(0, off, h.blob_len, h.codec == CODEC_RAW)))
        off += h.blob_len
    return out, off


class DiskCache:
    """Stored chunks in segment files on local disk, verified on every read (see the
    module docstring)."""

    def __init__(self, root: str | os.PathLike[str], capacity: int = DEFAULT_DISK_BYTES,
                 policy: str = DEFAULT_POLICY, *, admit_local: bool = False,
                 segment_bytes: int | None = None) -> None:
        if capacity < 0:
            raise ConfigError(f"disk cache capacity must be >= 0 bytes, got {capacity}")
        self.root = Path(root)
        self.capacity = capacity
        self.admit_local = admit_local
        self.segment_bytes = max(1, segment_bytes if segment_bytes is not None
                                 else min(SEGMENT_BYTES, capacity // 16))
        self._segs = self.root / SEGMENTS
        try:
            self._segs.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o644)
        except OSError as e:
            raise ConfigError(f"disk cache directory {self.root} is not usable ({e.strerror}); "
                              f"choose another with --disk-cache-dir or {CACHE_DIR_ENV}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.owner = True
        except BlockingIOError:
            self.owner = False
            log.info("disk cache %s is owned by another process: using it read-only", self.root)
        self._lock = threading.Lock()
        self._append_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._policy = make_policy(policy, capacity)
        self._stats = DiskStats(capacity=capacity, policy=policy, path=str(self.root),
                                mode="owner" if self.owner else "read-only")
        saved = read_saved(self.root)
        if saved is not None:
            for k in _COUNTERS:
                if isinstance(saved.get(k), int):
                    setattr(self._stats, k, saved[k])
        self._index: dict[bytes, _Entry] = {}
        self._members: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._fds: dict[int, int] = {}
        self._graveyard: list[int] = []  # fds of evicted segments, closed when no read runs
        self._reading = 0
        self._open: int | None = None  # the segment being appended to (owner only)
        self._open_end = 0
        self._next = 1
        self._last_scan = time.monotonic()
        self._last_save = time.monotonic()
        self._closed = False
        if self.owner:
            self._recover()
        else:
            self._scan()

    # -- segments ----------------------------------------------------------------------
    def _key(self, seg: int) -> bytes:
        return seg.to_bytes(8, "big")

    def _add(self, seg: int, records: list[tuple[bytes, _Entry]]) -> None:
        """Index `records` of segment `seg` (under the lock)."""
        members = self._members.setdefault(seg, [])
        for cid, e in records:
            if cid not in self._index:
                self._index[cid] = e._replace(seg=seg)
                members.append(cid)
        self._sizes[seg] = max(self._sizes.get(seg, 0),
                               max((e.off + e.length for _, e in records), default=0))

    def _recover(self) -> None:
        """Index the segments found, oldest first (evicting beyond capacity); cut the
        torn tail of a segment left open by a crash and seal it; drop the files of
        the earlier one-file-per-chunk layout."""
        for legacy in ("chunks", "tmp"):
            if (self.root / legacy).is_dir():
                log.info("disk cache %s: dropping the old one-file-per-chunk layout", self.root)
                shutil.rmtree(self.root / legacy, ignore_errors=True)
        for seg, sealed, path in self._listing():
            self._next = max(self._next, seg + 1)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            size = os.fstat(fd).st_size
            indexed = _read_index(self._segs / _idx_name(seg), seg, size) if sealed else None
            if indexed is not None:
                records, end = indexed, size
            else:
                records, end = _walk(fd)
            if not sealed:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                    os.replace(path, self._segs / _seg_name(seg, True))
            elif end != size:
                log.warning("disk cache segment %s: bytes after offset %d are not whole "
                            "chunks and are ignored", path, end)
            if indexed is None:
                self._write_index(seg, end, records)
            self._fds[seg] = fd
            self._add(seg, records)
            self._sizes[seg] = end
            for old in self._policy.load(self._key(seg), end):
                self._drop(int.from_bytes(old, "big"))

    def _listing(self) -> list[tuple[int, bool, Path]]:
        """(number, sealed, path) of the segment files, in order."""
        found = []
        for entry in os.scandir(self._segs):
            stem, _, ext = entry.name.partition(".")
            if ext in ("seg", "open") and stem.isdigit():
                found.append((int(stem), ext == "seg", Path(entry.path)))
            elif ext == "idx" and stem.isdigit():
                if self.owner and not os.path.exists(self._segs / _seg_name(int(stem), True)):
                    with contextlib.suppress(OSError):  # its segment was evicted
                        os.unlink(entry.path)
            elif self.owner:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return sorted(found)

    def _scan(self) -> None:
        """Read-only use: index segments (and records) written since the last scan;
        forget those the owner deleted."""
        self._last_scan = time.monotonic()
        listing = self._listing()
        present = {seg for seg, _, _ in listing}
        with self._lock:
            for seg in [s for s in self._fds if s not in present]:
                self._forget(seg)
        for seg, sealed, path in listing:
            with self._lock:
                fd = self._fds.get(seg)
                start = self._sizes.get(seg, 0)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
            indexed = None
            if sealed and start == 0:
                size = os.fstat(fd).st_size
                indexed = _read_index(self._segs / _idx_name(seg), seg, size)
            records, end = (indexed, size) if indexed is not None else _walk(fd, start)
            with self._lock:
                if self._fds.setdefault(seg, fd) != fd:  # another thread's scan opened it
                    os.close(fd)
                self._add(seg, records)
                self._sizes[seg] = max(self._sizes.get(seg, 0), end)

    def _forget(self, seg: int) -> None:
        """Remove segment `seg` from the index (under the lock); its fd is closed once
        no read is running."""
        for cid in self._members.pop(seg, []):
            e = self._index.get(cid)
            if e is not None and e.seg == seg:
                del self._index[cid]
                self._stats.evictions += 1
        self._sizes.pop(seg, None)
        fd = self._fds.pop(seg, None)
        if fd is not None:
            self._graveyard.append(fd)
        self._bury()

    def _bury(self) -> None:
        if not self._reading:
            for fd in self._graveyard:
                os.close(fd)
            self._graveyard.clear()

    def _drop(self, seg: int) -> None:
        """Evict segment `seg`: out of the index, its file deleted (owner, under the lock)."""
        self._forget(seg)
        for name in (_seg_name(seg, True), _idx_name(seg)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._segs / name)

    def _seal(self) -> None:
        """Seal the open segment: rename it to .seg and hand it to the eviction policy
        (under the append lock). No fsync: every read verifies, so a segment that a
        power loss left short or zeroed loses records, never serves them."""
        seg = self._open
        if seg is None:
            return
        self._open = None
        try:
            os.replace(self._segs / _seg_name(seg, False), self._segs / _seg_name(seg, True))
        except OSError as e:
            log.warning("disk cache %s: cannot seal segment %d (%s)", self.root, seg, e.strerror)
        else:
            with self._lock:
                index = self._index
                records = [(cid, rec) for cid in self._members.get(seg, ())
                           if (rec := index.get(cid)) is not None and rec.seg == seg]
            self._write_index(seg, self._open_end, records)
        with self._lock:
            for old in self._policy.admit(self._key(seg), self._open_end):
                self._drop(int.from_bytes(old, "big"))

    def _write_index(self, seg: int, size: int, records: Sequence[tuple[bytes, _Entry]]
                     ) -> None:
        """Write the `.idx` file of sealed segment `seg` (owner; a temporary file renamed
        into place, without an fsync: a damaged one is rebuilt from the headers)."""
        tmp = self._segs / f".{_idx_name(seg)}.tmp"
        try:
            tmp.write_bytes(_index_bytes(seg, size, records))
            os.replace(tmp, self._segs / _idx_name(seg))
        except OSError as e:
            log.warning("disk cache %s: cannot write the index of segment %d (%s)",
                        self.root, seg, e.strerror)

    # -- reading -----------------------------------------------------------------------
    def __contains__(self, cid: object) -> bool:
        with self._lock:
            return cid in self._index

    def missing(self, cids: Iterable[bytes]) -> list[bytes]:
        """Those of `cids` not on disk now (one lock for all)."""
        with self._lock:
            index = self._index
            return [cid for cid in cids if cid not in index]

    def _entry(self, cid: bytes) -> tuple[_Entry, int] | None:
        """(entry, fd) of chunk `cid`, pinning the fd until `_unpin`; None on a miss."""
        with self._lock:
            e = self._index.get(cid)
            if e is not None:
                self._reading += 1
                return e, self._fds[e.seg]
            self._stats.misses += 1
        if not self.owner and time.monotonic() - self._last_scan >= RESCAN_EVERY:
            self._scan()
            with self._lock:
                e = self._index.get(cid)
                if e is not None:
                    self._stats.misses -= 1
                    self._reading += 1
                    return e, self._fds[e.seg]
        return None

    def _unpin(self, hits: Sequence[tuple[bytes, _Entry]], bad: Sequence[bytes]) -> None:
        """End a read: count `hits`, drop the damaged `bad` records."""
        with self._lock:
            self._reading -= 1
            for seg in {e.seg for _, e in hits}:
                self._policy.hit(self._key(seg))
            self._stats.hits += len(hits)
            self._stats.bytes_read += sum(e.length for _, e in hits)
            for cid in bad:
                if self._index.pop(cid, None) is not None:
                    self._stats.corrupt_dropped += 1
                    self._stats.misses += 1
            self._bury()
        self._maybe_save()

    def get(self, cid: bytes) -> bytes | None:
        """The verified raw bytes of chunk `cid` from disk, or None (a miss).

        A record that fails verification is dropped from the index and counted,
        never returned.
        """
        got = self._read(cid)
        return None if got is None else got[1]

    def get_blob(self, cid: bytes) -> bytes | None:
        """The verified stored blob of chunk `cid` from disk, or None (a miss)."""
        got = self._read(cid)
        return None if got is None else got[0]

    def _read(self, cid: bytes) -> tuple[bytes, bytes] | None:
        found = self._entry(cid)
        if found is None:
            return None
        e, fd = found
        try:
            blob = os.pread(fd, e.length, e.off)
            raw = decode_blob(blob, expect_id=cid)
        except (OSError, CorruptChunkError) as err:
            log.warning("dropped damaged disk cache record of chunk %s in segment %d: %s",
                        cid.hex(), e.seg, err)
            self._unpin((), (cid,))
            return None
        self._unpin(((cid, e),), ())
        return blob, raw

    def read_into(self, items: Sequence[tuple[bytes, memoryview]]) -> list[bool]:
        """Read whole chunks straight into buffers: `items` pairs a chunk id with a view
        of exactly its raw length. Records lying back to back in one segment are read
        with one `preadv` (headers to scratch, payloads into the views) and verified in
        place. Returns, per item, whether its view now holds the verified chunk (False:
        a miss or a damaged record; the view's contents are then undefined)."""
        ok = [False] * len(items)
        with self._lock:  # every lookup under one lock: ~16,000 chunks a warm GiB
            index, fds = self._index, self._fds
            found = [index.get(cid) for cid, _ in items]
            pinned = len(items) - found.count(None)
            self._reading += pinned
            self._stats.misses += len(items) - pinned
            fd_of = {e.seg: fds[e.seg] for e in found if e is not None}
        hits: list[tuple[bytes, _Entry]] = []
        bad: list[bytes] = []
        runs: list[list[int]] = []
        end = (-1, -1)  # (segment, offset) where the last run ends
        for i, e in enumerate(found):
            if e is None:
                continue
            cid, view = items[i]
            if not e.raw or e.length - BLOB_HEADER_LEN != len(view):
                data = None
                with contextlib.suppress(OSError, CorruptChunkError):
                    data = decode_blob(os.pread(fd_of[e.seg], e.length, e.off), expect_id=cid)
                if data is not None and len(data) == len(view):
                    view[:] = data
                    ok[i] = True
                    hits.append((cid, e))
                else:
                    bad.append(cid)
                continue
            if end == (e.seg, e.off) and len(runs[-1]) < _IOV_RECORDS:
                runs[-1].append(i)
            else:
                runs.append([i])
            end = (e.seg, e.off + e.length)
        for run in runs:
            heads = [bytearray(BLOB_HEADER_LEN) for _ in run]
            iov: list[bytearray | memoryview] = []
            total = 0
            for h, i in zip(heads, run, strict=True):
                iov += (h, items[i][1])
                total += found[i].length  # type: ignore[union-attr]
            first = found[run[0]]
            assert first is not None
            try:
                n = os.preadv(fd_of[first.seg], iov, first.off)
            except OSError:
                n = -1
            for h, i in zip(heads, run, strict=True):
                cid, view = items[i]
                if n == total and _verified(h, view, cid):
                    ok[i] = True
                    hits.append((cid, found[i]))  # type: ignore[arg-type]
                else:
                    bad.append(cid)
        with self._lock:  # one pin per found item was taken above
            self._reading -= pinned - 1
        self._unpin(hits, bad)
        return ok

    # -- admitting ---------------------------------------------------------------------
    def put(self, cid: bytes, blob: bytes) -> bool:
        """Admit the stored blob of chunk `cid` (not verified here: callers pass blobs
        they verified): appended to the open segment, then indexed; returns whether it
        is now cached."""
        if not self.owner or self._closed or len(blob) > self.capacity:
            return False
        try:
            raw = parse_blob_header(blob).codec == CODEC_RAW
        except CorruptChunkError:
            return False
        with self._append_lock:
            with self._lock:
                if cid in self._index:
                    return True
            if self._open is None and not self._start_segment():
                return False
            seg, off = self._open, self._open_end
            assert seg is not None
            with self._lock:
                fd = self._fds[seg]
            try:
                view = memoryview(blob)
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], off + done)
            except OSError as e:
                log.warning("disk cache %s: cannot store chunk %s (%s)", self.root, cid.hex(),
                            e.strerror)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, off)
                return False
            self._open_end = off + len(blob)
            with self._lock:
                self._add(seg, [(cid, _Entry(seg, off, len(blob), raw))])
                self._stats.admitted += 1
                self._stats.bytes_written += len(blob)
            if self._open_end >= self.segment_bytes:
                self._seal()
        self._maybe_save()
        with self._lock:
            return cid in self._index

    def _start_segment(self) -> bool:
        seg = self._next
        self._next += 1
        try:
            fd = os.open(self._segs / _seg_name(seg, False),
                         os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            log.warning("disk cache %s: cannot start a segment (%s)", self.root, e.strerror)
            return False
        with self._lock:
            self._fds[seg] = fd
            self._members[seg] = []
            self._sizes[seg] = 0
        self._open, self._open_end = seg, 0
        return True

    # -- statistics --------------------------------------------------------------------
    def stats(self) -> DiskStats:
        """A snapshot of the counters and the tier's current use."""
        with self._lock:
            s = DiskStats(**asdict(self._stats))
            s.entries, s.segments = len(self._index), len(self._sizes)
            s.bytes_cached = sum(self._sizes.values())
        s.updated = time.time()
        return s

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= SAVE_EVERY:
            self.save_stats()

    def save_stats(self) -> None:
        """Write the counters to CACHE/stats.json (atomically; owner only)."""
        if not self.owner:
            return
        with self._save_lock:
            self._last_save = time.monotonic()
            data = json.dumps(self.stats().to_dict(), indent=1).encode()
            tmp = self.root / f".{STATS_FILE}.{os.getpid()}.tmp"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.root / STATS_FILE)
            except OSError as e:
                log.warning("cannot save disk cache statistics in %s: %s", self.root, e)

    def close(self) -> None:
        """Seal the open segment, save the counters and give up ownership."""
        if self._closed:
            return
        with self._append_lock:
            if self._open is not None and self._open_end > 0:
                self._seal()
            self._closed = True
        self.save_stats()
        with self._lock:
            self._graveyard.extend(self._fds.values())
            self._fds.clear()
            self._reading = 0
            self._bury()
        os.close(self._lock_fd)


def _verified(head: bytearray, view: memoryview, cid: bytes) -> bool:
    """Whether a header read into `head` and the payload read into `view` are the whole
    raw blob of chunk `cid`."""
    return head == _raw_header(cid, len(view)) and xxhash.xxh3_128_digest(view) == cid


def _raw_header(cid: bytes, n: int) -> bytes:
    """The one header a raw blob of chunk `cid` of `n` bytes can have (comparing it is
    stricter and cheaper than parsing: ~1 us a chunk instead of ~4)."""
    return BlobHeader(CODEC_RAW, 0, n, n, cid).to_bytes()


def open_tier(state: str | os.PathLike[str], mode: str, directory: str | None = None,
              capacity: int | None = None, policy: str = DEFAULT_POLICY) -> DiskCache | None:
    """The disk tier of the store in `state`: mode "auto" (chunks of pools not on local
    disk), "on" (every chunk) or "off" (None)."""
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"disk cache mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return None
    return DiskCache(cache_dir(state, directory), cache_capacity(capacity), policy,
                     admit_local=mode == "on")


def read_saved(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The counters saved in `root`/stats.json, or None if there are none (or unreadable)."""
    try:
        data = json.loads((Path(root) / STATS_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scan_usage(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(chunks, bytes) in the segments under `root`, from their index files or else
    their blob headers."""
    chunks = size = 0
    segs = Path(root) / SEGMENTS
    if not segs.is_dir():
        return 0, 0
    for entry in os.scandir(segs):
        stem, _, ext = entry.name.partition(".")
        if ext not in ("seg", "open") or not stem.isdigit():
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            end = os.fstat(fd).st_size
            indexed = _read_index(segs / _idx_name(int(stem)), int(stem), end) \
                if ext == "seg" else None
            records, end = (indexed, end) if indexed is not None else _walk(fd)
        finally:
            os.close(fd)
        chunks += len(records)
        size += end
    return chunks, size


def offline_stats(root: str | os.PathLike[str]) -> DiskStats | None:
    """The disk tier's statistics without opening it: saved counters and a scan of the
    segments now present; None if `root` holds no disk tier."""
    rootp = Path(root)
    if not (rootp / SEGMENTS).is_dir():
        return None
    s = DiskStats(path=str(rootp), mode="offline")
    saved = read_saved(rootp)
    if saved is not None:
        for k, v in saved.items():
            if k in DiskStats.__dataclass_fields__ and k not in {"path", "mode"}:
                setattr(s, k, v)
    s.entries, s.bytes_cached = scan_usage(rootp)
    return s


__all__ = ["CACHE_BYTES_ENV", "CACHE_DIR_ENV", "DEFAULT_DISK_BYTES", "SEGMENT_BYTES",
           "DiskCache", "DiskStats", "cache_capacity", "cache_dir", "offline_stats",
           "open_tier", "read_saved", "scan_usage"]
