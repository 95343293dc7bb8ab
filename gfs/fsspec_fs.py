"""`gfs://`: any Hutong namespace as an fsspec filesystem (the embedded store or the
federation of a profile).

    import fsspec, pandas as pd
    fs = fsspec.filesystem("gfs", state="/data/hutong")    # or $HUTONG_STATE, ~/.hutong
    pd.read_parquet("gfs:///lab/trips.parquet", storage_options={"state": "/data/hutong"})
    pd.read_parquet("gfs://bank-a/shared/x.parquet", storage_options={"profile": "work"})

The protocol is registered through the `fsspec.specs` entry point. Paths are
namespace paths: `gfs:///a/b`, `gfs://a/b` and `/a/b` all name `/a/b`, so on a
federated profile `gfs://ENTITY/path` is `/ENTITY/path`. Without `profile` (and
without $HUTONG_PROFILE or `hutong profile use`) it is the embedded store.

Everything goes through the Namespace API (gfs.namespace_api), so both back ends
behave alike. A file opened for reading sees the version committed when it was
opened, for as long as it stays open. Writes stream into the namespace's
close-to-open writer and become visible, whole, when the file is closed; an
abandoned write (`discard()`, or an error inside a `with` block) changes nothing.
`ab` mode rewrites the file with the appended bytes on close (on the embedded
store, only its last chunk is chunked again: `Client.append`).

Errors are the gfs errors, which inherit the builtins (`FileNotFoundError`,
`IsADirectoryError`, ...), so callers need nothing special.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, BinaryIO, ClassVar

import xxhash
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem, _Cached

from gfs import paths
from gfs.errors import ConfigError, ExistsError, NotFoundError
from gfs.namespace_api import Namespace, Stat
from gfs.read.memory import DEFAULT_MEMORY_BYTES

#: Bytes copied at a time by get/put/cp.
COPY_BLOCK = 8 << 20
#: Content digests (ukey, checksum) remembered per file version.
DIGESTS_KEPT = 4096


def _entry(st: Stat) -> dict[str, Any]:
    kind = {"dir": "directory", "file": "file", "symlink": "link"}.get(st.kind, "other")
    out: dict[str, Any] = {
        "name": st.path, "size": 0 if st.kind == "dir" else st.size, "type": kind,
        "mode": st.mode, "uid": st.uid, "gid": st.gid, "ino": st.ino,
        "mtime": st.mtime_ns / 1e9, "created": st.ctime_ns / 1e9, "version": st.version,
        "islink": st.kind == "symlink",
    }
    if st.kind == "symlink":
        out["destination"] = st.target
    return out


def _copy(src: BinaryIO, dst: Any, callback: Any = None) -> None:
    while data := src.read(COPY_BLOCK):
        dst.write(data)
        if callback is not None:
            callback.relative_update(len(data))


class _Resolved(_Cached):  # type: ignore[misc]
    """fsspec's instance cache, keyed by the tree the options select *now*: the profile
    in use (or the state directory) is resolved before the cache is looked up, so that
    changing $HUTONG_PROFILE, `hutong profile use` or $HUTONG_STATE between two calls
    never hands back a filesystem over the other tree."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not {"profile", "namespace", "client"} & set(kwargs):
            from gfs.env import state_dir
            from gfs.profiles import LOCAL, selected

            kwargs["profile"] = selected() or LOCAL
            if kwargs["profile"] == LOCAL and not args:
                kwargs["state"] = str(state_dir(kwargs.get("state")))
        return super().__call__(*args, **kwargs)


class HutongFileSystem(AbstractFileSystem, metaclass=_Resolved):  # type: ignore[misc]
    """fsspec filesystem over a Hutong namespace.

    Storage options: `profile` (a federation profile, see gfs.profiles; default the
    selected one, else the embedded store), `state` (the embedded store's state
    directory; default $HUTONG_STATE, else ~/.hutong, as for the CLI), `cache_bytes`
    (memory tier of the chunks read; 256 MiB), `disk_cache` ("off", "auto" or "on":
    the embedded store's disk tier, as for `hutong mount`; off by default; a
    profile's disk cache is its `cache_dir`) with `disk_cache_dir` and
    `disk_cache_bytes`, and any store setting accepted by `gfs.Client`.
    A `namespace` (or `client`) keyword uses an open namespace instead; it is not
    closed by `close()`.
    """

    protocol: ClassVar[tuple[str, ...]] = ("gfs",)
    root_marker = "/"
    sep = "/"

    def __init__(self, state: str | os.PathLike[str] | None = None, *,
                 profile: str | None = None, namespace: Namespace | None = None,
                 client: Namespace | None = None, cache_bytes: int = DEFAULT_MEMORY_BYTES,
                 disk_cache: str = "off", disk_cache_dir: str | None = None,
                 disk_cache_bytes: int | None = None, **settings: Any) -> None:
        fs_opts = {k: settings.pop(k) for k in list(settings)
                   if k in {"use_listings_cache", "listings_expiry_time", "max_paths",
                            "skip_instance_cache", "asynchronous", "loop"}}
        super().__init__(**fs_opts)
        given = namespace if namespace is not None else client
        self._owned = given is None
        if given is not None:
            self.ns: Namespace = given
        else:
            from gfs.profiles import open_namespace
            self.ns = open_namespace(profile, state=state, memory_bytes=cache_bytes, **settings)
            if disk_cache != "off":
                self._disk_tier(cache_bytes, disk_cache, disk_cache_dir, disk_cache_bytes)
        self._digests: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
        self._digest_lock = threading.Lock()

    def _disk_tier(self, memory: int, mode: str, directory: str | None,
                   capacity: int | None) -> None:
        from gfs.client import Client
        from gfs.disk_cache import open_tier

        if not isinstance(self.ns, Client):
            self.close()
            raise ConfigError("disk_cache applies to an embedded store; a profile's disk "
                              "cache is its cache_dir (`hutong profile add --cache-dir`)")
        self.ns.cache_reads(memory, disk=open_tier(self.ns.state, mode, directory, capacity))

    def close(self) -> None:
        """Close the namespace this filesystem opened (not one it was given)."""
        if self._owned:
            self.ns.close()

    # -- paths -------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        p = str(path)
        for proto in cls.protocol:
            for prefix in (f"{proto}://", f"{proto}::"):
                if p.startswith(prefix):
                    p = p[len(prefix):]
        p = "/" + p.lstrip("/")
        while "//" in p:
            p = p.replace("//", "/")
        return p.rstrip("/") or "/"

    def unstrip_protocol(self, name: str) -> str:
        return f"gfs://{self._strip_protocol(name)}"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    # -- looking -----------------------------------------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = [_entry(st) for st in self.ns.ls(self._strip_protocol(path))]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return _entry(self.ns.stat(self._strip_protocol(path)))

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.ns.stat(self._strip_protocol(path))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return False
        return True

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        top = self._strip_protocol(path)
        base = len(paths.split(top))
        out: dict[str, dict[str, Any]] = {}
        try:
            for st in self.ns.walk(top):
                depth = len(paths.split(st.path)) - base
                if maxdepth is not None and depth > maxdepth:
                    continue
                if st.kind != "dir" or withdirs:
                    out[st.path] = _entry(st)
        except (FileNotFoundError, NotADirectoryError):
            return {} if detail else []
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def _content_digest(self, path: str) -> str:
        """xxh3-128 of the kind, size, target and bytes of `path`, read once per version."""
        st = self.ns.stat(self._strip_protocol(path))
        key = (st.path, st.ino, st.version, st.size, st.mtime_ns)
        with self._digest_lock:
            if key in self._digests:
                self._digests.move_to_end(key)
                return self._digests[key]
        h = xxhash.xxh3_128()
        h.update(f"{st.kind}:{st.size}:{st.target}".encode())
        if st.kind == "file":
            with self.ns.open(st.path, "rb") as f:
                while data := f.read(COPY_BLOCK):
                    h.update(data)
        digest = h.hexdigest()
        with self._digest_lock:
            self._digests[key] = digest
            while len(self._digests) > DIGESTS_KEPT:
                self._digests.popitem(last=False)
        return digest

    def ukey(self, path: str) -> str:
        """A key that changes whenever the content changes: a digest of the content."""
        return self._content_digest(path)

    def checksum(self, path: str) -> int:
        """Content checksum (the same digest as `ukey`)."""
        return int(self._content_digest(path), 16)

    def modified(self, path: str) -> dt.datetime:
        st = self.ns.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.mtime_ns / 1e9, tz=dt.UTC)

    def created(self, path: str) -> dt.datetime:
        st = self.ns.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.ctime_ns / 1e9, tz=dt.UTC)

    # -- reading -----------------------------------------------------------------
    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        with self.ns.open(self._strip_protocol(path), "rb") as f:
            if (start is not None and start < 0) or (end is not None and end < 0):
                size = f.seek(0, os.SEEK_END)
                start = None if start is None else (max(size + start, 0) if start < 0
                                                    else start)
                end = None if end is None else (max(size + end, 0) if end < 0 else end)
            s = start or 0
            f.seek(s)
            return f.read() if end is None else f.read(max(end - s, 0))

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> HutongFile:
        p = self._strip_protocol(path)
        if mode == "xb" and self.exists(p):
            raise ExistsError(p)
        return HutongFile(self, p, mode, block_size or "default", autocommit,
                          cache_options=cache_options, **kwargs)

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None,
                 **kwargs: Any) -> None:
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        with self.ns.open(self._strip_protocol(rpath), "rb") as src:
            if callback is not None:
                callback.set_size(src.seek(0, os.SEEK_END))
                src.seek(0)
            if outfile is None and os.path.dirname(lpath):
                os.makedirs(os.path.dirname(lpath), exist_ok=True)
            with open(lpath, "wb") if outfile is None else nullcontext(outfile) as f:
                _copy(src, f, callback)

    # -- writing -----------------------------------------------------------------
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if mode == "create" and self.exists(p):
            raise ExistsError(p)
        self._make_parents(p)
        self.ns.write_bytes(p, bytes(value))

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        p = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(p, exist_ok=True)
            return
        if mode == "create" and self.exists(p):
            raise ExistsError(p)
        self._make_parents(p)
        if callback is not None:
            callback.set_size(os.path.getsize(lpath))
        with open(lpath, "rb") as src, self.ns.open(p, "wb") as dst:
            _copy(src, dst, callback)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        self._make_parents(dst)
        with self.ns.open(src, "rb") as r, self.ns.open(dst, "wb") as w:
            _copy(r, w)

    def _make_parents(self, path: str) -> None:
        parent = self._parent(path)
        if parent != "/":
            self.ns.mkdir(parent, parents=True, exist_ok=True)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if self.exists(p):
            raise ExistsError(p)
        self.ns.mkdir(p, parents=create_parents)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        p = self._strip_protocol(path)
        if not exist_ok and self.exists(p):
            raise ExistsError(p)
        self.ns.mkdir(p, parents=True, exist_ok=True)

    def rmdir(self, path: str) -> None:
        p = self._strip_protocol(path)
        if not self.isdir(p):
            raise NotADirectoryError(p)
        self.ns.rm(p)

    def rm_file(self, path: str) -> None:
        p = self._strip_protocol(path)
        self.ns.rm(p, recursive=self.isdir(p))

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        targets = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        done: list[str] = []
        for p in sorted(targets, key=lambda s: (s.count("/"), s)):
            if any(p.startswith(d.rstrip("/") + "/") for d in done):
                continue  # inside a tree already removed
            try:
                self.ns.rm(p, recursive=recursive)
            except NotFoundError:
                continue
            done.append(p)

    def mv(self, path1: Any, path2: Any, recursive: bool = False,
           maxdepth: int | None = None, **kwargs: Any) -> None:
        single = (isinstance(path1, str) and isinstance(path2, str)
                  and not any(c in path1 for c in "*?[") and not path2.endswith("/"))
        if not single:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if not self.exists(src):
            raise NotFoundError(src)
        self.ns.mv(src, dst)  # into dst when it is a directory, like mv

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if truncate or not self.exists(p):
            self.pipe_file(p, b"")
        else:
            now = time.time_ns()
            self.ns.utime(p, now, now)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path` (not part of fsspec's contract)."""
        self.ns.chmod(self._strip_protocol(path), mode)

    def invalidate_cache(self, path: str | None = None) -> None:
        pass  # no listings cache: every call asks the namespace


class HutongFile(AbstractBufferedFile):  # type: ignore[misc]
    """A buffered gfs file: ranged reads of one pinned version, or a streaming writer."""

    DEFAULT_BLOCK_SIZE = 8 << 20

    def __init__(self, fs: HutongFileSystem, path: str, mode: str = "rb",
                 block_size: int | str = "default", autocommit: bool = True,
                 cache_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._writer: BinaryIO | None = None
        self._appended: bytearray | None = None
        self._reader: BinaryIO | None = None
        size = None
        if mode == "rb":
            self._reader = fs.ns.open(path, "rb")  # pins the version committed now
            size = self._reader.seek(0, os.SEEK_END)
        kwargs.pop("size", None)
        super().__init__(fs, path, mode, block_size, autocommit,
                         cache_options=cache_options, size=size, **kwargs)
        if mode == "rb":
            self.details = {"name": path, "size": size, "type": "file"}

    def _fetch_range(self, start: int, end: int) -> bytes:
        assert self._reader is not None
        self._reader.seek(start)
        return self._reader.read(end - start)

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            r, self._reader = self._reader, None
            r.close()

    def _initiate_upload(self) -> None:
        fs: HutongFileSystem = self.fs
        fs._make_parents(self.path)
        if self.mode == "ab" and fs.exists(self.path):
            self._appended = bytearray()  # committed on close
            return
        self._writer = fs.ns.open(self.path, "wb")

    def _upload_chunk(self, final: bool = False) -> bool:
        if self._appended is not None:
            self._appended += self.buffer.getvalue()
        else:
            assert self._writer is not None
            self._writer.write(self.buffer.getvalue())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        ns: Namespace = self.fs.ns
        if self._appended is not None:
            data, self._appended = bytes(self._appended), None
            append = getattr(ns, "append", None)  # the embedded store re-chunks the tail only
            if append is not None:
                append(self.path, data)
            else:
                ns.write_bytes(self.path, ns.read_bytes(self.path) + data,
                               perm=ns.stat(self.path).mode & 0o7777)
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close()

    def discard(self) -> None:
        self._appended = None
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.abort()  # type: ignore[attr-defined]  # every namespace writer can abort

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.writable():
            self.discard()
            self.closed = True
            return
        self.close()


__all__ = ["HutongFile", "HutongFileSystem"]
