"""`gfs://`: the Hutong namespace as an fsspec filesystem.

    import fsspec, pandas as pd
    fs = fsspec.filesystem("gfs", state="/data/hutong")    # or $HUTONG_STATE, ~/.hutong
    pd.read_parquet("gfs:///lab/trips.parquet", storage_options={"state": "/data/hutong"})

The protocol is registered through the `fsspec.specs` entry point. Paths are
namespace paths: `gfs:///a/b`, `gfs://a/b` and `/a/b` all name `/a/b`.

Reads are buffered and ranged; a file opened for reading sees the version
committed when it was opened, for as long as it stays open. Writes stream
into a store writer session and become visible, whole, when the file is
closed (close-to-open); an abandoned write (`discard()`, or an error inside a
`with` block) changes nothing. `ab` mode keeps the old chunk list and chunks
only its last chunk again with the appended bytes (`Client.append`), which it
holds in memory until the close. Removing or replacing a file also drops its
extended attributes (set through the mount).

Errors are the gfs errors, which inherit the builtins (`FileNotFoundError`,
`IsADirectoryError`, ...), so callers need nothing special.
"""

from __future__ import annotations

import datetime as dt
import os
from contextlib import nullcontext
from typing import Any, ClassVar

import xxhash
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from gfs import namespace, paths
from gfs.client import Client
from gfs.disk_cache import open_tier
from gfs.errors import ExistsError, NotFoundError
from gfs.files import NsWriter
from gfs.meta import Kind
from gfs.namespace_api import Stat
from gfs.read import ManifestReader, cached
from gfs.read.memory import DEFAULT_MEMORY_BYTES
from gfs.store import release

#: Bytes copied at a time by get/put/cp.
COPY_BLOCK = 8 << 20


def _entry(st: Stat) -> dict[str, Any]:
    kind = {"dir": "directory", "file": "file", "symlink": "link"}[st.kind]
    out: dict[str, Any] = {
        "name": st.path, "size": 0 if st.kind == "dir" else st.size, "type": kind,
        "mode": st.mode, "uid": st.uid, "gid": st.gid, "ino": st.ino,
        "mtime": st.mtime_ns / 1e9, "created": st.ctime_ns / 1e9, "version": st.version,
        "islink": st.kind == "symlink",
    }
    if st.kind == "symlink":
        out["destination"] = st.target
    return out


class HutongFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec filesystem over an embedded Hutong store.

    Storage options: `state` (the state directory; default $HUTONG_STATE, else
    ~/.hutong, as for the CLI), `cache_bytes` (memory cache of decompressed
    chunks, shared by the files this instance opens; 256 MiB), `disk_cache`
    ("off", "auto" or "on": the disk tier of stored chunks, as for `hutong
    mount`; off by default) with `disk_cache_dir` and `disk_cache_bytes`, and
    any store setting accepted by `gfs.Client`.
    A `client` keyword reuses an open `gfs.Client` instead.
    """

    protocol: ClassVar[tuple[str, ...]] = ("gfs",)
    root_marker = "/"
    sep = "/"

    def __init__(self, state: str | os.PathLike[str] | None = None, *,
                 client: Client | None = None, cache_bytes: int = DEFAULT_MEMORY_BYTES,
                 disk_cache: str = "off", disk_cache_dir: str | None = None,
                 disk_cache_bytes: int | None = None, **settings: Any) -> None:
        fs_opts = {k: settings.pop(k) for k in list(settings)
                   if k in {"use_listings_cache", "listings_expiry_time", "max_paths",
                            "skip_instance_cache", "asynchronous", "loop"}}
        super().__init__(**fs_opts)
        self.client = client if client is not None else Client(state, **settings)
        self.cache = cached(self.client.store.source, cache_bytes, disk=open_tier(
            self.client.state, disk_cache, disk_cache_dir, disk_cache_bytes))

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
        p = self._strip_protocol(path)
        entries = [_entry(st) for st in self.client.ls(p)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return _entry(self.client.stat(self._strip_protocol(path)))

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.client.stat(self._strip_protocol(path))
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
            for st in self.client.walk(top):
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
        norm = self._strip_protocol(path)
        with self.client.engine.read() as txn:
            node = namespace.resolve(txn, norm)
            h = xxhash.xxh3_128()
            h.update(f"{node.kind.name}:{node.size}:{node.target}".encode())
            m = txn.get_manifest(node.ino) if node.kind == Kind.FILE else None
            for ref in m.chunks if m is not None else ():
                h.update(ref.id)
        return h.hexdigest()

    def ukey(self, path: str) -> str:
        """A key that changes whenever the content changes: a digest of the chunk ids."""
        return self._content_digest(path)

    def checksum(self, path: str) -> int:
        """Content checksum (from the manifest's chunk ids; no data is read)."""
        return int(self._content_digest(path), 16)

    def modified(self, path: str) -> dt.datetime:
        st = self.client.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.mtime_ns / 1e9, tz=dt.UTC)

    def created(self, path: str) -> dt.datetime:
        st = self.client.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.ctime_ns / 1e9, tz=dt.UTC)

    # -- reading -----------------------------------------------------------------
    def _reader(self, path: str) -> ManifestReader:
        norm = self._strip_protocol(path)
        return ManifestReader(self.cache, norm, self.client.manifest(norm))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        reader = self._reader(path)
        size = reader.size
        s = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        e = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        return reader.read_range(s, e)

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
        reader = self._reader(rpath)
        if callback is not None:
            callback.set_size(reader.size)
        target = outfile
        if target is None and os.path.dirname(lpath):
            os.makedirs(os.path.dirname(lpath), exist_ok=True)
        with open(lpath, "wb") if target is None else nullcontext(target) as f:
            for data in reader.blocks(COPY_BLOCK):
                f.write(data)
                if callback is not None:
                    callback.relative_update(len(data))

    # -- writing -----------------------------------------------------------------
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if mode == "create" and self.exists(p):
            raise ExistsError(p)
        self._make_parents(p)
        self.client.write_bytes(p, bytes(value))
        self.invalidate_cache(p)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        p = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(p, exist_ok=True)
            return
        if mode == "create" and self.exists(p):
            raise ExistsError(p)
        self._make_parents(p)
        size = os.path.getsize(lpath)
        if callback is not None:
            callback.set_size(size)
        with open(lpath, "rb") as src, self.client.open(p, "wb") as dst:
            while data := src.read(COPY_BLOCK):
                dst.write(data)
                if callback is not None:
                    callback.relative_update(len(data))
        self.invalidate_cache(p)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        self._make_parents(dst)
        reader = self._reader(src)
        with self.client.open(dst, "wb") as out:
            for data in reader.blocks(COPY_BLOCK):
                out.write(data)
        self.invalidate_cache(dst)

    def _make_parents(self, path: str) -> None:
        parent = self._parent(path)
        if parent != "/":
            self.client.mkdir(parent, parents=True, exist_ok=True)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if self.exists(p):
            raise ExistsError(p)
        self.client.mkdir(p, parents=create_parents)
        self.invalidate_cache(p)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        p = self._strip_protocol(path)
        if not exist_ok and self.exists(p):
            raise ExistsError(p)
        self.client.mkdir(p, parents=True, exist_ok=True)
        self.invalidate_cache(p)

    def _remove(self, path: str, recursive: bool = False) -> None:
        """Remove `path` with its per-inode values (xattrs), releasing its chunks."""
        with self.client.engine.write() as txn:
            release(txn, namespace.remove(txn, path, recursive=recursive))

    def rmdir(self, path: str) -> None:
        p = self._strip_protocol(path)
        if not self.isdir(p):
            raise NotADirectoryError(p)
        self._remove(p)
        self.invalidate_cache(p)

    def _rm(self, path: str) -> None:
        p = self._strip_protocol(path)
        self._remove(p, recursive=self.isdir(p))
        self.invalidate_cache(p)

    def rm_file(self, path: str) -> None:
        self._rm(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        targets = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        done: list[str] = []
        for p in sorted(targets, key=lambda s: (s.count("/"), s)):
            if any(p.startswith(d.rstrip("/") + "/") for d in done):
                continue  # inside a tree already removed
            try:
                self._remove(p, recursive=recursive)
            except NotFoundError:
                continue
            done.append(p)
        self.invalidate_cache()

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
        with self.client.engine.write() as txn:  # like Client.mv, dropping replaced xattrs
            try:
                target = namespace.resolve(txn, dst)
            except (NotFoundError, NotADirectoryError):
                target = None
            if target is not None and target.kind == Kind.DIR and paths.split(src):
                dst = paths.join([*paths.split(dst), paths.split(src)[-1]])
            release(txn, namespace.rename(txn, src, dst))
        self.invalidate_cache()

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if truncate or not self.exists(p):
            self.pipe_file(p, b"")
        else:
            now = namespace.now_ns()
            self.client.utime(p, now, now)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path` (not part of fsspec's contract)."""
        self.client.chmod(self._strip_protocol(path), mode)

    def invalidate_cache(self, path: str | None = None) -> None:
        pass  # no listings cache: every call reads the committed metadata



class HutongFile(AbstractBufferedFile):  # type: ignore[misc]
    """A buffered gfs file: ranged reads of one pinned version, or a streaming writer."""

    DEFAULT_BLOCK_SIZE = 8 << 20

    def __init__(self, fs: HutongFileSystem, path: str, mode: str = "rb",
                 block_size: int | str = "default", autocommit: bool = True,
                 cache_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._writer: NsWriter | None = None
        self._appended: bytearray | None = None
        size = None
        self._cached: ManifestReader | None = None
        if mode == "rb":
            self._cached = ManifestReader(fs.cache, path, fs.client.manifest(path))
            size = self._cached.size
        kwargs.pop("size", None)
        super().__init__(fs, path, mode, block_size, autocommit,
                         cache_options=cache_options, size=size, **kwargs)
        if mode == "rb":
            self.details = {"name": path, "size": size, "type": "file"}

    def _fetch_range(self, start: int, end: int) -> bytes:
        assert self._cached is not None
        return self._cached.pread(start, end - start)

    def _initiate_upload(self) -> None:
        fs: HutongFileSystem = self.fs
        fs._make_parents(self.path)
        if self.mode == "ab" and fs.exists(self.path):
            self._appended = bytearray()  # committed with Client.append on close
            return
        self._writer = fs.client.open(self.path, "wb")  # type: ignore[assignment]

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
        if self._appended is not None:
            data, self._appended = bytes(self._appended), None
            self.fs.client.append(self.path, data)
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close()

    def discard(self) -> None:
        self._appended = None
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.abort()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.writable():
            self.discard()
            self.closed = True
            return
        self.close()



__all__ = ["HutongFile", "HutongFileSystem"]
