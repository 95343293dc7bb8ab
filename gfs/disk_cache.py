"""Disk tier of the local cache: stored chunks (blobs, compressed as in their pack)
in files on local disk, with a capacity in bytes and an eviction policy.

Layout (`CACHE` is `STATE/cache` unless configured; see `cache_dir`):

    CACHE/lock                  held (flock, exclusive) by the process that owns the tier
    CACHE/chunks/ab/abcd...ef   one blob per file, named by its chunk id in hex
    CACHE/tmp/                  blobs being written (renamed into chunks/ when whole)
    CACHE/stats.json            counters, saved every few seconds and on close

Crash safety: a blob is written under `tmp/` and renamed into place, without
fsync; a file torn by a crash (or damaged later) fails `decode_blob` (header,
lengths, digest), is deleted and counted as `corrupt_dropped`, and the chunk is
read from the store: a cache file is never served unverified. `tmp/` is
emptied when an owner opens the tier.

One process owns the tier (the lock): it admits and evicts. Other processes
that open the same directory (a second mount, `hutong warmup` beside a mount)
use it read-only: they serve verified hits and never write or evict.

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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gfs.codec import decode_blob
from gfs.env import CACHE_BYTES_ENV, CACHE_DIR_ENV
from gfs.errors import ConfigError, CorruptChunkError
from gfs.eviction import DEFAULT_POLICY, make_policy
from gfs.units import UnitError, parse_size

log = logging.getLogger("hutong.cache")

#: Environment variables naming the tier's directory and capacity.
#: Default capacity of the disk tier.
DEFAULT_DISK_BYTES = 4 << 30
STATS_FILE = "stats.json"
#: Seconds between saves of the counters while the tier is in use.
SAVE_EVERY = 5.0
_COUNTERS = ("hits", "misses", "admitted", "evictions", "corrupt_dropped", "bytes_written",
             "bytes_read")


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
    corrupt_dropped: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    bytes_from_store: int = 0
    bytes_cached: int = 0
    entries: int = 0
    capacity: int = 0
    policy: str = DEFAULT_POLICY
    path: str = ""
    mode: str = "owner"
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiskCache:
    """Stored chunks on local disk, verified on every read (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], capacity: int = DEFAULT_DISK_BYTES,
                 policy: str = DEFAULT_POLICY, *, admit_local: bool = False) -> None:
        if capacity < 0:
            raise ConfigError(f"disk cache capacity must be >= 0 bytes, got {capacity}")
        self.root = Path(root)
        self.capacity = capacity
        self.admit_local = admit_local
        self._chunks = self.root / "chunks"
        self._chunks_str = str(self._chunks)
        self._tmp = self.root / "tmp"
        try:
            self._chunks.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
            self._chunks_fd = os.open(self._chunks, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
        self._save_lock = threading.Lock()
        self._policy = make_policy(policy, capacity)
        self._stats = DiskStats(capacity=capacity, policy=policy, path=str(self.root),
                                mode="owner" if self.owner else "read-only")
        saved = read_saved(self.root)
        if saved is not None:
            for k in _COUNTERS:
                if isinstance(saved.get(k), int):
                    setattr(self._stats, k, saved[k])
        self._local: dict[int, bool] = {}
        self._tmp_seq = 0
        self._last_save = time.monotonic()
        self._closed = False
        if self.owner:
            self._recover()

    # -- files -------------------------------------------------------------------------
    def _path(self, cid: bytes) -> str:
        h = cid.hex()
        return f"{self._chunks_str}/{h[:2]}/{h}"

    def _read_file(self, cid: bytes) -> bytes:
        """The bytes of chunk `cid`'s file (FileNotFoundError when absent): opened relative
        to the chunks directory, one fstat and one read (warm reads are bound by these
        calls: a pathlib path and a buffered file halved the disk tier's rate)."""
        h = cid.hex()
        fd = os.open(f"{h[:2]}/{h}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._chunks_fd)
        try:
            size = os.fstat(fd).st_size
            blob = os.read(fd, size)
            while len(blob) < size:  # a short read: rare, but allowed
                more = os.read(fd, size - len(blob))
                if not more:
                    break
                blob += more
            return blob
        finally:
            os.close(fd)

    def _recover(self) -> None:
        """Drop temporaries; index the files found, oldest first (evicting beyond capacity)."""
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        found: list[tuple[float, bytes, int, str]] = []
        for sub in os.scandir(self._chunks):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                try:
                    cid = bytes.fromhex(entry.name)
                    st = entry.stat(follow_symlinks=False)
                except (ValueError, OSError):
                    cid = b""
                if len(cid) != 16:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    continue
                found.append((st.st_mtime, cid, st.st_size, entry.path))
        found.sort()
        for _, cid, size, _ in found:
            for old in self._policy.load(cid, size):
                self._unlink(old)

    def _unlink(self, cid: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(cid))

    # -- reading and admitting ---------------------------------------------------------
    def __contains__(self, cid: object) -> bool:
        if not isinstance(cid, bytes):
            return False
        if self.owner:
            with self._lock:
                return cid in self._policy
        return os.path.exists(self._path(cid))

    def get(self, cid: bytes) -> bytes | None:
        """The verified raw bytes of chunk `cid` from disk, or None (a miss).

        A file that fails verification is deleted and counted, never returned.
        """
        got = self._read(cid)
        return None if got is None else got[1]

    def get_blob(self, cid: bytes) -> bytes | None:
        """The verified stored blob of chunk `cid` from disk, or None (a miss)."""
        got = self._read(cid)
        return None if got is None else got[0]

    def _read(self, cid: bytes) -> tuple[bytes, bytes] | None:
        if self.owner:
            with self._lock:
                known = cid in self._policy
                if not known:
                    self._stats.misses += 1
            if not known:
                return None
        try:
            blob = self._read_file(cid)
        except FileNotFoundError:
            with self._lock:
                self._policy.discard(cid)
                self._stats.misses += 1
            return None
        try:
            raw = decode_blob(blob, expect_id=cid)
        except CorruptChunkError as e:
            log.warning("dropped damaged disk cache file %s: %s", self._path(cid), e)
            if self.owner:
                self._unlink(cid)
            with self._lock:
                self._policy.discard(cid)
                self._stats.corrupt_dropped += 1
                self._stats.misses += 1
            return None
        with self._lock:
            self._policy.hit(cid)
            self._stats.hits += 1
            self._stats.bytes_read += len(blob)
        self._maybe_save()
        return blob, raw

    def put(self, cid: bytes, blob: bytes) -> bool:
        """Admit the stored blob of chunk `cid` (not verified here: callers pass blobs
        they verified); returns whether it is now cached."""
        if not self.owner or self._closed or len(blob) > self.capacity:
            return False
        with self._lock:
            if cid in self._policy:
                return True
            self._tmp_seq += 1
            tmp = self._tmp / f"{cid.hex()}.{os.getpid()}.{self._tmp_seq}"
        final = self._path(cid)
        try:
            with open(tmp, "wb", buffering=0) as f:
                view = memoryview(blob)
                while view:
                    view = view[f.write(view) or 0:]
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(tmp, final)
        except OSError as e:
            log.warning("disk cache %s: cannot store chunk %s (%s)", self.root, cid.hex(),
                        e.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        with self._lock:
            evicted = self._policy.admit(cid, len(blob))
            kept = cid in self._policy
            self._stats.admitted += kept
            self._stats.bytes_written += len(blob)
            self._stats.evictions += sum(1 for k in evicted if k != cid)
        for old in evicted:
            self._unlink(old)
        self._maybe_save()
        return kept

    # -- statistics --------------------------------------------------------------------
    def stats(self) -> DiskStats:
        """A snapshot of the counters and the tier's current use."""
        with self._lock:
            s = DiskStats(**asdict(self._stats))
            if self.owner:
                s.bytes_cached, s.entries = self._policy.size, len(self._policy)
        if not self.owner:
            s.entries, s.bytes_cached = scan_usage(self.root)
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
        """Save the counters and give up ownership."""
        if self._closed:
            return
        self.save_stats()
        self._closed = True
        os.close(self._lock_fd)
        os.close(self._chunks_fd)


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
    """(files, bytes) under `root`/chunks, from the directory alone."""
    files = size = 0
    chunks = Path(root) / "chunks"
    if not chunks.is_dir():
        return 0, 0
    for sub in os.scandir(chunks):
        if sub.is_dir(follow_symlinks=False):
            for entry in os.scandir(sub.path):
                with contextlib.suppress(OSError):
                    size += entry.stat(follow_symlinks=False).st_size
                    files += 1
    return files, size


def offline_stats(root: str | os.PathLike[str]) -> DiskStats | None:
    """The disk tier's statistics without opening it: saved counters and a scan of the
    files now present; None if `root` holds no disk tier."""
    rootp = Path(root)
    if not (rootp / "chunks").is_dir():
        return None
    s = DiskStats(path=str(rootp), mode="offline")
    saved = read_saved(rootp)
    if saved is not None:
        for k, v in saved.items():
            if k in DiskStats.__dataclass_fields__ and k not in {"path", "mode"}:
                setattr(s, k, v)
    s.entries, s.bytes_cached = scan_usage(rootp)
    return s


__all__ = ["CACHE_BYTES_ENV", "CACHE_DIR_ENV", "DEFAULT_DISK_BYTES", "DiskCache", "DiskStats",
           "cache_capacity", "cache_dir", "offline_stats", "open_tier", "read_saved",
           "scan_usage"]
