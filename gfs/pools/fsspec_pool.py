"""`FsspecPool`: a pool on any fsspec filesystem (memory://, s3://, gs://, file://, ...).

Atomic puts: on object stores (and memory://) one `pipe_file` call makes the
object appear whole or not at all. Elsewhere (local paths through fsspec,
unknown backends) the object is written to ``ROOT/tmp/`` and moved into place.
Durability is the backend's: an object store has the object once the PUT
returned; fsspec's local filesystem does not fsync, so use `LocalPool` for
local directories (`open_pool` does).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec

from gfs.codec import Buffer
from gfs.errors import NoSpaceError, PoolError, PoolObjectMissingError
from gfs.pools.base import TMP_DIR, Pool, PoolUsage, check_key, check_prefix, check_range

#: Protocols whose single `pipe_file` is atomic (an object PUT, or an in-memory swap).
ATOMIC_PIPE_PROTOCOLS = frozenset(
    {"memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
)
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_NOSPACE = {errno.ENOSPC, errno.EDQUOT}


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


class FsspecPool(Pool):
    """A pool at fsspec URL `url`; `storage_options` go to the filesystem.

    `atomic_put` forces (True) or disables (False) the single-`pipe_file`
    put; by default it is used for the protocols in `ATOMIC_PIPE_PROTOCOLS`.
    """

    def __init__(self, url: str, *, atomic_put: bool | None = None, **storage_options: Any):
        self.url = url
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as e:
            raise PoolError(url, f"cannot open pool {url!r}: {e}") from e
        self.fs: Any = fs
        self.root: str = root.rstrip("/")  # "" for a filesystem root
        protos = _protocols(fs)
        self._is_local = bool(protos & _LOCAL_PROTOCOLS)
        self._atomic_pipe = (
            bool(protos & ATOMIC_PIPE_PROTOCOLS) if atomic_put is None else atomic_put
        )
        self._seq = itertools.count()
        self._rand = os.urandom(4).hex()

    # -- helpers ---------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def _missing(self, key: str, e: BaseException | None = None) -> PoolObjectMissingError:
        err = PoolObjectMissingError(key, f"object missing from pool {self.url}")
        if e is not None:
            err.__cause__ = e
        return err

    def _error(self, e: BaseException, key: str, what: str) -> Exception:
        if isinstance(e, (PoolError, NoSpaceError)):
            return e
        if isinstance(e, OSError) and e.errno in _NOSPACE:
            return NoSpaceError(
                key, f"no space left in pool {self.url} ({what}); free space or add a pool"
            )
        return PoolError(key, f"pool {self.url}: {what} failed: {type(e).__name__}: {e}")

    # -- Pool API --------------------------------------------------------

    def put(self, key: str, parts: Sequence[Buffer]) -> None:
        path = self._path(key)
        # One buffer for pipe_file; bytes, since some backends reject memoryviews.
        data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        if self._atomic_pipe:
            try:
                self.fs.pipe_file(path, data)
            except Exception as e:
                raise self._error(e, key, f"put {key}") from e
            return
        tmp = f"{self.root}/{TMP_DIR}/{os.getpid()}-{self._rand}-{next(self._seq)}.tmp"
        try:
            self.fs.makedirs(f"{self.root}/{TMP_DIR}", exist_ok=True)
            self.fs.pipe_file(tmp, data)
            parent = path.rpartition("/")[0]
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.mv(tmp, path)
        except BaseException as e:
            with contextlib.suppress(Exception):  # absent or unreachable: nothing to do
                self.fs.rm_file(tmp)
            if isinstance(e, Exception):
                raise self._error(e, key, f"put {key}") from e
            raise

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_range(start, end)
        path = self._path(key)
        if end is not None and end <= start:
            self.size(key)  # raises if missing
            return b""
        try:
            if start == 0 and end is None:
                return bytes(self.fs.cat_file(path))
            return bytes(self.fs.cat_file(path, start=start, end=end))
        except (FileNotFoundError, IsADirectoryError) as e:
            raise self._missing(key, e) from e
        except Exception as e:
            # Some backends refuse a range that starts past the end (HTTP 416).
            if start > 0 and start >= self.size(key):
                return b""
            raise self._error(e, key, f"get {key}") from e

    def _info(self, key: str) -> dict[str, Any]:
        path = self._path(key)
        try:
            info = self.fs.info(path)
        except FileNotFoundError as e:
            raise self._missing(key, e) from e
        except Exception as e:
            raise self._error(e, key, f"stat {key}") from e
        if info.get("type") != "file":
            raise self._missing(key)
        return dict(info)

    def size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def modified(self, key: str) -> float | None:
        info = self._info(key)
        for field in ("mtime", "LastModified", "last_modified", "created", "modified"):
            value = info.get(field)
            if isinstance(value, int | float):
                return float(value)
            if isinstance(value, datetime.datetime):
                return value.timestamp()
        return None

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.isfile(self._path(key)))
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if self.fs.isfile(path):
                self.fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._error(e, key, f"delete {key}") from e

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        head = prefix.rpartition("/")[0]
        base = f"{self.root}/{head}" if head else self.root or "/"
        try:
            paths = self.fs.find(base, withdirs=False)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._error(e, prefix, "list") from e
        cut = len(self.root) + 1
        for p in sorted(paths):
            p = self.fs._strip_protocol(p)
            if not p.startswith(self.root + "/"):
                continue
            key = p[cut:]
            if key.startswith(prefix) and not key.startswith(TMP_DIR + "/"):
                yield key

    def local_path(self, key: str) -> str | None:
        path = self._path(key)
        return path if self._is_local else None

    def usage(self) -> PoolUsage:
        try:
            found = self.fs.find(self.root or "/", withdirs=False, detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as e:
            raise self._error(e, "", "usage") from e
        tmp_root = f"{self.root}/{TMP_DIR}/"
        used = sum(
            int(info.get("size") or 0)
            for path, info in found.items()
            if not self.fs._strip_protocol(path).startswith(tmp_root)
        )
        free: int | None = None
        if self._is_local:
            try:
                free = shutil.disk_usage(self.root or "/").free
            except OSError:
                free = None
        return PoolUsage(used, free)
