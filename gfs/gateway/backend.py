"""What the S3 gateway needs of a namespace beyond the `Namespace` API, for each back end.

`ObjectStore` (gfs.gateway.objects) speaks the `Namespace` API for everything it
can; the few operations that differ between the embedded store and the
federation live here, behind `Backend`:

* reading a pinned version (the embedded store: coalesced pack spans one
  window ahead; the federation: a reader opened on the version stat-ed);
* writing a file whose attributes depend on the version it becomes (the ETag);
* many small files at once (the embedded store group-commits them);
* joining files without reading them (multipart completion, CopyObject);
* walking keys in byte order from a start key (listings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from gfs import paths
from gfs.client import Client
from gfs.errors import NotADirError, NotFoundError
from gfs.federation.wire import version_keyed
from gfs.files import NsWriter
from gfs.group_commit import GroupCommitter
from gfs.meta import Manifest
from gfs.namespace import XattrSource
from gfs.namespace_api import Namespace, Stat

#: The extended attributes of a file, given the version it is committed as.
VersionXattrs = Callable[[int], Mapping[str, bytes]]


@dataclass(frozen=True)
class KeyedXattrs:
    """Attributes of the version a commit makes: `fixed` as they are, each of `keyed`
    as "VERSION VALUE" (trusted only while the file is at that version). Unlike any
    callable, it can be sent to a site, which sets them in the commit itself. Both are
    read at the commit (a streaming upload adds its ETag to `keyed` just before)."""

    fixed: Mapping[str, bytes]
    keyed: Mapping[str, bytes]

    def __call__(self, version: int) -> dict[str, bytes]:
        return version_keyed(self.fixed, self.keyed, version)
#: Bytes per block of a federated GET.
FED_READ_BLOCK = 4 << 20


class Writer(Protocol):
    """A close-to-open writer: nothing is visible before `commit`."""

    def write(self, block: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Backend(Protocol):
    """The back-end-specific half of the object store (see the module docstring)."""

    ns: Namespace

    def pin(self, path: str, version: int) -> object:
        """A handle on version `version` of file `path`; NotFoundError if it changed."""
        ...

    def read(self, path: str, pinned: object, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the version `pinned`, in blocks."""
        ...

    def writer(self, path: str, xattrs: VersionXattrs) -> Writer:
        """A new version of `path`, with `xattrs` of it set when it is committed."""
        ...

    def write_small(self, path: str, data: bytes, xattrs: VersionXattrs) -> None:
        """Create or replace `path` with `data` (may be batched with concurrent calls)."""
        ...

    def concat(self, path: str, sources: list[str], xattrs: VersionXattrs,
               remove: list[str]) -> Stat:
        """`path` := the files `sources` joined, without reading them where the back end
        can; then the entries `remove` are removed."""
        ...

    def scan(self, path: str, start: str, recursive: bool
             ) -> Iterator[tuple[Stat, Mapping[str, bytes] | None]]:
        """Entries below directory `path` in the byte order of their keys, from `start`
        (as gfs.namespace.scan: a directory sorts as "name/"), each with its extended
        attributes where the listing carried them (None: ask `ns.xattrs`)."""
        ...

    def close(self) -> None: ...


# -- the embedded store ------------------------------------------------------------------
class _NsWriter:
    def __init__(self, fs: Client, path: str, xattrs: VersionXattrs) -> None:
        w = fs.open(path, "wb")
        assert isinstance(w, NsWriter)
        self._w: NsWriter = w
        self._w.set_xattrs(lambda node: xattrs(node.version))

    def write(self, block: bytes) -> None:
        self._w.write(block)

    def commit(self) -> None:
        self._w.close()

    def abort(self) -> None:
        self._w.abort()


_Small = tuple[str, bytes, XattrSource | None]


class SmallWrites:
    """Group commit for small objects (gfs.group_commit): PUTs that arrive together are
    written in one `Client.write_many` (one pack, one metadata sync); a batch that
    fails is retried file by file, so each PUT gets its own answer."""

    #: Most files and bytes in one batch.
    MAX_FILES = 512
    MAX_BYTES = 16 << 20

    def __init__(self, fs: Client) -> None:
        self._group: GroupCommitter[_Small] = GroupCommitter(
            fs.write_many, "hutong-s3-batch", max_items=self.MAX_FILES,
            max_bytes=self.MAX_BYTES, size=lambda item: len(item[1]))

    def write(self, path: str, data: bytes, xattrs: VersionXattrs) -> None:
        """Write one file in the next batch; returns when it is committed."""
        self._group.submit((path, data, lambda node: xattrs(node.version)))

    def close(self) -> None:
        self._group.close()


class EmbeddedBackend:
    """The embedded store: pinned manifests, group commit, joins in one transaction."""

    def __init__(self, fs: Client) -> None:
        self.fs = fs
        self.ns: Namespace = fs
        self.small = SmallWrites(fs)

    def pin(self, path: str, version: int) -> object:
        return self.fs.manifest(path, version=version)

    def read(self, path: str, pinned: object, start: int, end: int) -> Iterator[bytes]:
        assert isinstance(pinned, Manifest)
        return self.fs.iter_bytes(path, start, end, manifest=pinned)

    def writer(self, path: str, xattrs: VersionXattrs) -> Writer:
        return _NsWriter(self.fs, path, xattrs)

    def write_small(self, path: str, data: bytes, xattrs: VersionXattrs) -> None:
        self.small.write(path, data, xattrs)

    def concat(self, path: str, sources: list[str], xattrs: VersionXattrs,
               remove: list[str]) -> Stat:
        return self.fs.concat(path, sources, xattrs=lambda node: xattrs(node.version),
                              remove=remove)

    def scan(self, path: str, start: str, recursive: bool
             ) -> Iterator[tuple[Stat, Mapping[str, bytes] | None]]:
        for st in self.fs.scan(path, start=start, recursive=recursive):
            yield st, None  # a local read

    def close(self) -> None:
        self.small.close()


# -- a namespace without those primitives (the federation) --------------------------------
class _SpoolWriter:
    def __init__(self, ns: Namespace, path: str, xattrs: VersionXattrs) -> None:
        self._ns, self._path, self._xattrs = ns, path, xattrs
        self._w = ns.open(path, "wb")

    def write(self, block: bytes) -> None:
        self._w.write(block)

    def commit(self) -> None:
        self._w.close()
        _set_version_xattrs(self._ns, self._path, self._xattrs)

    def abort(self) -> None:
        abort = getattr(self._w, "abort", None)
        if abort is not None:
            abort()


class _CommitWriter:
    """A writer whose own commit sets the attributes (the federation's
    `open_with_attrs`)."""

    def __init__(self, f: BinaryIO) -> None:
        self._w = f

    def write(self, block: bytes) -> None:
        self._w.write(block)

    def commit(self) -> None:
        self._w.close()

    def abort(self) -> None:
        abort = getattr(self._w, "abort", None)
        if abort is not None:
            abort()


def _set_version_xattrs(ns: Namespace, path: str, xattrs: VersionXattrs) -> Stat:
    """Set the attributes of the version of `path` committed now (a writer that commits
    meanwhile makes them stale; the ETag says which version it is for)."""
    st = ns.stat(path)
    ns.set_xattrs(path, dict(xattrs(st.version)), replace_all=True)
    return st


class _Pinned:
    """A reader opened on one version of a file, closed when its blocks are read."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f


class NamespaceBackend:
    """Any `Namespace` (the federation): a read is a reader opened on the version
    stat-ed; attributes are set in the write's own commit where the namespace can
    (`open_with_attrs`), else right after it (keyed by version, so a stale ETag is never
    trusted); joins use the namespace's `concat`."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def pin(self, path: str, version: int) -> object:
        f = self.ns.open(path, "rb")
        got = _version_of(f)
        if got is not None and got != version:
            f.close()
            raise NotFoundError(path, f"version {version} is no longer the committed one")
        return _Pinned(f)

    def read(self, path: str, pinned: object, start: int, end: int) -> Iterator[bytes]:
        assert isinstance(pinned, _Pinned)
        f = pinned.f
        try:
            f.seek(start)
            left = end - start
            while left > 0:
                block = f.read(min(FED_READ_BLOCK, left))
                if not block:
                    return
                left -= len(block)
                yield block
        finally:
            f.close()

    def writer(self, path: str, xattrs: VersionXattrs) -> Writer:
        with_attrs = getattr(self.ns, "open_with_attrs", None)
        if with_attrs is not None and isinstance(xattrs, KeyedXattrs):
            return _CommitWriter(with_attrs(path, xattrs=xattrs.fixed, keyed=xattrs.keyed))
        return _SpoolWriter(self.ns, path, xattrs)

    def write_small(self, path: str, data: bytes, xattrs: VersionXattrs) -> None:
        w = self.writer(path, xattrs)
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        w.commit()

    def concat(self, path: str, sources: list[str], xattrs: VersionXattrs,
               remove: list[str]) -> Stat:
        join = getattr(self.ns, "concat", None)
        if join is None:
            raise NotImplementedError(f"{type(self.ns).__name__} cannot join files")
        if isinstance(xattrs, KeyedXattrs):  # set in the join's own commit
            st: Stat = join(path, sources, remove, xattrs=xattrs.fixed, keyed=xattrs.keyed)
            return st
        join(path, sources, remove)
        return _set_version_xattrs(self.ns, path, xattrs)

    def scan(self, path: str, start: str, recursive: bool
             ) -> Iterator[tuple[Stat, Mapping[str, bytes] | None]]:
        top = self.ns.stat(path)
        if not top.is_dir:
            raise NotADirError(path)
        yield from self._scan(paths.normalize(path), "", start, recursive)

    def _list(self, path: str) -> list[tuple[Stat, Mapping[str, bytes] | None]]:
        """The entries of `path` with their attributes in one request where the
        namespace can (the federation's `ls_xattrs`)."""
        with_attrs = getattr(self.ns, "ls_xattrs", None)
        if with_attrs is not None:
            return list(with_attrs(path))
        return [(st, None) for st in self.ns.ls(path)]

    def _scan(self, path: str, prefix: str, start: str, recursive: bool
              ) -> Iterator[tuple[Stat, Mapping[str, bytes] | None]]:
        keyed = sorted(((st.name + ("/" if st.is_dir else ""), st, x)
                        for st, x in self._list(path)), key=lambda e: e[0])
        for key, st, x in keyed:
            full = prefix + key
            if st.is_dir and recursive:
                if not (full + "\U0010ffff" < start):  # a key below it can still be >= start
                    yield from self._scan(st.path, full, start, recursive)
            elif full >= start:
                yield st, x

    def close(self) -> None:
        self.ns.close()


def _version_of(f: BinaryIO) -> int | None:
    """The version a namespace reader was opened on, where it tells."""
    raw = getattr(f, "raw", None)
    m = getattr(raw, "manifest", None)
    v = getattr(m, "version", None)
    return v if isinstance(v, int) else None


__all__ = ["Backend", "EmbeddedBackend", "KeyedXattrs", "NamespaceBackend", "SmallWrites",
           "VersionXattrs", "Writer"]
