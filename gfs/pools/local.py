"""`LocalPool`: a pool in a directory of a local filesystem, with plain os calls.

`put` writes a temporary under ``ROOT/tmp/``, fsyncs it, renames it over the
key's path and fsyncs that directory, so the object is atomic and durable on
return; `put_unsynced` does the same without the two fsyncs, which
`sync_puts` makes later for every such object at once. `append` writes into an
object in place at a given offset (the growing pack of one writer, docs/format.md
"Appended packs"): durable on return with fdatasync, or at the next `sync_puts`.
Fan-out directories are created on demand (and their parents fsynced once). Reads
use `os.pread` on the object's file.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence

from gfs.codec import Buffer
from gfs.errors import NoSpaceError, PoolError, PoolObjectMissingError
from gfs.pools.base import TMP_DIR, Pool, PoolUsage, check_key, check_prefix, check_range

_NOSPACE = {errno.ENOSPC, errno.EDQUOT}
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_TMP_SUFFIX = ".tmp"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: Sequence[Buffer]) -> int:
    """Write every part to `fd` with `os.writev` in batches; return the bytes written."""
    total = 0
    it = iter(parts)
    while True:
        batch = [memoryview(p).cast("B") for p in itertools.islice(it, _IOV_MAX)]
        if not batch:
            return total
        batch = [v for v in batch if v.nbytes]
        while batch:
            n = os.writev(fd, batch)
            total += n
            # Drop what was written (in one slice: up to _IOV_MAX parts a batch); a
            # short write continues mid-buffer.
            done = 0
            while done < len(batch) and n >= batch[done].nbytes:
                n -= batch[done].nbytes
                done += 1
            del batch[:done]
            if n:
                batch[0] = batch[0][n:]


class LocalPool(Pool):
    """A pool stored under directory `root` (created if missing unless `create=False`).

    Objects are files at ``root/<key>``; temporaries live in ``root/tmp/`` and
    are never listed. Use `clean_temporaries` to remove stale ones left by a
    crash (only when no writer can be between write and rename).
    """

    def __init__(self, root: str, *, create: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = "file://" + self.root
        self._tmp = os.path.join(self.root, TMP_DIR)
        self._dirs: set[str] = set()  # directories known to exist durably
        self._seq = itertools.count()
        self._rand = os.urandom(4).hex()
        self._unsynced: set[str] = set()  # objects put without fsync
        self._unsynced_dirs: set[str] = set()  # parents of directories made without it
        self._unsynced_lock = threading.Lock()
        try:
            if not os.path.isdir(self.root):
                if not create:
                    raise PoolError(
                        self.root, f"pool directory {self.root} does not exist; create it first"
                    )
                os.makedirs(os.path.dirname(self.root), exist_ok=True)
                self._mkdirs(self.root)
            else:
                self._dirs.add(self.root)
            self._mkdirs(self._tmp)
        except OSError as e:
            raise self._error(e, self.root, "open pool") from e

    # -- helpers ---------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _error(self, e: OSError, path: str, what: str) -> OSError:
        if isinstance(e, (PoolError, NoSpaceError)):
            return e
        if e.errno in _NOSPACE:
            return NoSpaceError(
                path,
                f"no space left in pool {self.url} ({what}: {e.strerror}); "
                "free space or add a pool",
            )
        return PoolError(path, f"pool {self.url}: {what} failed: {e.strerror or e}")

    def _mkdirs(self, path: str, durable: bool = True) -> None:
        """Make sure directory `path` exists durably (its entry fsynced in its parent;
        with `durable=False`, at the next `sync_puts`).

        The parent is fsynced even when the directory existed already: another
        thread or a crashed process may have created it without that fsync.
        This happens once per directory per pool object.
        """
        if path in self._dirs:
            return
        parent = os.path.dirname(path)
        if path != self.root and parent not in self._dirs:
            self._mkdirs(parent, durable)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        if parent != path:
            if durable:
                _fsync_dir(parent)
            else:
                with self._unsynced_lock:
                    self._unsynced_dirs.add(parent)
        self._dirs.add(path)

    # -- Pool API --------------------------------------------------------

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        self._put(key, parts, durable=True)

    def put_unsynced(self, key: str, parts: Sequence[Buffer]) -> None:
        self._put(key, parts, durable=False)

    def sync_puts(self) -> None:
        with self._unsynced_lock:
            paths, self._unsynced = self._unsynced, set()
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        try:
            for path in sorted(paths):
                try:
                    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
                except FileNotFoundError:
                    continue  # deleted meanwhile (gc): nothing to make durable
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            # the objects' directories, then the parents of directories made meanwhile
            # (deepest first: a directory's entry is synced after its own content)
            for parent in sorted({os.path.dirname(p) for p in paths} | dirs,
                                 key=lambda d: (-d.count(os.sep), d)):
                _fsync_dir(parent)
        except OSError as e:
            with self._unsynced_lock:  # still not durable: the next sync tries again
                self._unsynced |= paths
                self._unsynced_dirs |= dirs
            raise self._error(e, self.root, "sync") from e


    def append(self, key: str, parts: Sequence[Buffer], offset: int, *,
               durable: bool = True) -> None:
        """Write `parts` into object `key` at `offset`, creating it at offset 0.

        Not atomic: a reader must only read ranges it knows are written (a pack's
        committed blobs). PoolObjectMissingError if the object (offset > 0) is gone.
        Durable on return (fdatasync; at creation the directory
        entry too), or with `durable=False` at the next `sync_puts`.
        """
        path = self._path(key)
        flags = os.O_WRONLY | _O_CLOEXEC | (os.O_CREAT | os.O_EXCL if offset == 0 else 0)
        try:
            parent = os.path.dirname(path)
            self._mkdirs(parent, durable)
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError as e:
                raise PoolObjectMissingError(key, f"object missing from pool {self.url}") from e
            try:
                os.lseek(fd, offset, os.SEEK_SET)
                _write_all(fd, parts)
                if durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if durable and offset == 0:
                _fsync_dir(parent)
        except OSError as e:
            raise self._error(e, path, f"append to {key}") from e
        if not durable:
            with self._unsynced_lock:
                self._unsynced.add(path)

    def close(self) -> None:
        """Make the objects put without fsync durable."""
        self.sync_puts()

    def _put(self, key: str, parts: Sequence[Buffer], *, durable: bool) -> None:
        self.stage(key).finish(parts, durable=durable)

    def stage(self, key: str) -> StagedPut:
        """Start putting object `key` in parts: see `StagedPut`."""
        return StagedPut(self, key)

    def _open(self, key: str) -> tuple[int, os.stat_result, str]:
        """(fd, stat, path) of the object, opened for reading; the caller closes fd."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise PoolObjectMissingError(key, f"object missing from pool {self.url}") from e
        except OSError as e:
            raise self._error(e, path, f"get {key}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PoolObjectMissingError(key, f"object missing from pool {self.url}")
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise self._error(e, path, f"get {key}") from e
            raise
        return fd, st, path

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_range(start, end)
        fd, st, path = self._open(key)
        try:
            stop = st.st_size if end is None else min(end, st.st_size)
            want = stop - start
            if want <= 0:
                return b""
            data = os.pread(fd, want, start)
            if len(data) == want:
                return data
            chunks = [data]
            got = len(data)
            while got < want:
                more = os.pread(fd, want - got, start + got)
                if not more:
                    break  # the file shrank under us: return what exists
                chunks.append(more)
                got += len(more)
            return b"".join(chunks)
        except OSError as e:
            raise self._error(e, path, f"get {key}") from e
        finally:
            os.close(fd)

    def readinto(self, key: str, start: int, buf: bytearray | memoryview) -> int:
        check_range(start, None)
        fd, _, path = self._open(key)
        view = memoryview(buf).cast("B")
        got = 0
        try:
            while got < len(view):
                n = os.preadv(fd, [view[got:]], start + got)
                if n == 0:
                    break  # end of the object
                got += n
            return got
        except OSError as e:
            raise self._error(e, path, f"get {key}") from e
        finally:
            os.close(fd)

    def _stat(self, key: str) -> os.stat_result:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise PoolObjectMissingError(key, f"object missing from pool {self.url}") from e
        except OSError as e:
            raise self._error(e, path, f"stat {key}") from e
        if not stat.S_ISREG(st.st_mode):
            raise PoolObjectMissingError(key, f"object missing from pool {self.url}")
        return st

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def modified(self, key: str) -> float | None:
        return self._stat(key).st_mtime

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a directory is not an object
        except OSError as e:
            raise self._error(e, path, f"delete {key}") from e
        try:
            _fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise self._error(e, path, f"delete {key}") from e

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        base = os.path.join(self.root, *head.split("/")) if head else self.root
        yield from self._walk(base, head + "/" if head else "", prefix)

    def _walk(self, dirpath: str, rel: str, prefix: str) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(dirpath), key=lambda d: d.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error(e, dirpath, "list") from e
        for entry in entries:
            key = rel + entry.name
            if not rel and entry.name == TMP_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                sub = key + "/"
                if sub.startswith(prefix) or prefix.startswith(sub):
                    yield from self._walk(entry.path, sub, prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                yield key

    def local_path(self, key: str) -> str | None:
        return self._path(key)

    def usage(self) -> PoolUsage:
        used = 0
        for key in self.list():
            try:
                used += os.stat(self._path(key)).st_size
            except FileNotFoundError:
                continue
        try:
            st = os.statvfs(self.root)
        except OSError:
            return PoolUsage(used, None)
        return PoolUsage(used, st.f_bavail * st.f_frsize)

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        """Remove temporaries older than `older_than` seconds; return how many."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def temporaries(self) -> builtins.list[str]:
        """Return the names of the temporaries currently in ``root/tmp/``."""
        try:
            return sorted(os.listdir(self._tmp))
        except FileNotFoundError:
            return []


class StagedPut:
    """An object of a `LocalPool` written in parts into a temporary, then put at its
    key by `finish` exactly as `LocalPool.put` puts it (`put_unsynced` with
    `durable=False`): invisible until then, atomic, and after a crash a temporary
    that `LocalPool.clean_temporaries` removes. A writer that gathers an object over
    a while (a pack) writes its bytes as they come, so that only the last part, the
    fsyncs and the rename remain when it must be durable. One thread uses it; on a
    failure the temporary is removed and the error raised.
    """

    def __init__(self, pool: LocalPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.path = pool._path(key)
        self.tmp = os.path.join(pool._tmp, f"{os.getpid()}-{pool._rand}-{next(pool._seq)}"
                                           f"{_TMP_SUFFIX}")
        #: bytes written to the temporary so far
        self.written = 0
        self._fd = -1
        self._ended = False  # finished or discarded
        try:
            pool._mkdirs(pool._tmp)
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC,
                               0o644)
        except OSError as e:
            raise pool._error(e, self.path, f"put {key}") from e

    def write(self, parts: Sequence[Buffer]) -> None:
        """Write `parts` after the bytes written so far (not synced)."""
        if self._ended:
            raise ValueError(f"put of {self.key} already finished or discarded")
        try:
            self.written += _write_all(self._fd, parts)
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise self.pool._error(e, self.path, f"put {self.key}") from e
            raise

    def finish(self, parts: Sequence[Buffer] = (), *, durable: bool = True) -> None:
        """Write the last `parts` and put the object at its key: durable on return
        (the file fsynced, renamed, its directory fsynced), or with `durable=False`
        at the pool's next `sync_puts`."""
        self.write(parts)
        pool, path, tmp = self.pool, self.path, self.tmp
        try:
            if durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            parent = os.path.dirname(path)
            pool._mkdirs(parent, durable)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                # A cached fan-out directory was removed behind our back: recreate it.
                pool._dirs.clear()
                pool._mkdirs(parent, durable)
                os.replace(tmp, path)
            self._ended = True  # the temporary is the object now
            if durable:
                _fsync_dir(parent)
        except BaseException as e:
            # The original error matters more; clean_temporaries removes a leftover later.
            self.discard()
            if isinstance(e, OSError):
                raise pool._error(e, path, f"put {self.key}") from e
            raise
        if not durable:
            with pool._unsynced_lock:
                pool._unsynced.add(path)

    def discard(self) -> None:
        """Close and remove the temporary (nothing was put); after `finish` or
        again: nothing."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self._ended:
            self._ended = True
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
