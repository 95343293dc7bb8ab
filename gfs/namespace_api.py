"""The namespace API: one typed interface behind every door (CLI, Python, gfs://, mount).

Two back ends implement `Namespace`:

* the embedded store, `gfs.Client` (one machine, no server);
* the federation, `gfs.federation.namespace.FederatedNamespace`, whose root
  lists the entities the caller may see and whose `/ENTITY/...` subtrees live
  at that entity's sites.

Both return the same `Stat` and `DuReport` and raise the same `gfs.errors`
exceptions (`NotFoundError` is a `FileNotFoundError`, and so on), so code
written against one runs on the other. `gfs.open_namespace(profile=...)` picks
the back end from a profile (see gfs.profiles).

This module stays light (no LMDB, aiohttp or pydantic) so that importing it is free.
"""

from __future__ import annotations

import stat as statmod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from gfs.errors import NotFoundError

if TYPE_CHECKING:
    from gfs.meta import Inode


@dataclass(frozen=True)
class Stat:
    """What `stat` and `ls` tell about one namespace entry."""

    path: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    version: int
    target: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] or "/"

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    def to_dict(self) -> dict[str, Any]:
        """The form printed by `--json` (mode as `-rw-r--r--`, times ISO 8601)."""
        import datetime as dt

        out: dict[str, Any] = {
            "path": self.path, "name": self.name, "kind": self.kind, "size": self.size,
            "mode": statmod.filemode(self.mode), "uid": self.uid, "gid": self.gid,
            "inode": self.ino, "version": self.version,
            "mtime": dt.datetime.fromtimestamp(self.mtime_ns / 1e9).isoformat(),
        }
        if self.kind == "symlink":
            out["target"] = self.target
        return out

    @classmethod
    def of(cls, path: str, node: Inode) -> Stat:
        """The Stat of inode `node` at `path` (embedded store)."""
        from gfs import namespace

        return cls(path, node.kind.name.lower(), node.size, namespace.st_mode(node), node.uid,
                   node.gid, node.atime_ns, node.mtime_ns, node.ctime_ns, node.ino,
                   node.version, node.target)


@dataclass(frozen=True)
class DuReport:
    """Space used under a path: logical, after dedup, and as stored."""

    path: str
    files: int
    dirs: int
    symlinks: int
    chunks: int
    logical_bytes: int
    unique_bytes: int
    stored_bytes: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def total_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "files": self.files, "dirs": self.dirs,
            "symlinks": self.symlinks, "chunks": self.chunks,
            "logical_bytes": self.logical_bytes, "unique_bytes": self.unique_bytes,
            "stored_bytes": self.stored_bytes, "dedup_ratio": round(self.dedup_ratio, 4),
            "compression_ratio": round(self.compression_ratio, 4),
            "total_ratio": round(self.total_ratio, 4),
        }


@runtime_checkable
class Namespace(Protocol):
    """A file tree: the embedded store or the federation (see the module docstring).

    Paths are absolute namespace paths ("/a/b"). Writes through `open(path, "wb")`
    are close-to-open: nothing is visible until `close()` returns, then all of it.
    A back end that cannot write right now (the federation while an entity's
    primary site is down) raises `gfs.errors.ReadOnlyError` (EROFS).
    """

    # -- reading -----------------------------------------------------------------------
    def stat(self, path: str) -> Stat:
        """The entry at `path` (symlinks are not followed)."""
        ...

    def exists(self, path: str) -> bool:
        """Whether `path` names an entry."""
        ...

    def ls(self, path: str = "/") -> list[Stat]:
        """The entries of directory `path`, each with its full Stat, in name order."""
        ...

    def walk(self, path: str = "/") -> Iterator[Stat]:
        """Every entry below `path`, depth first, parents before children."""
        ...

    def readlink(self, path: str) -> str:
        """The target of symlink `path`."""
        ...

    def du(self, path: str = "/") -> DuReport:
        """Space used under `path`."""
        ...

    def open(self, path: str, mode: str = "rb", *, perm: int | None = None) -> BinaryIO:
        """A seekable reader ("rb") or a close-to-open writer ("wb")."""
        ...

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of file `path`."""
        ...

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` by name."""
        ...

    # -- changing ----------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes, *, perm: int | None = None) -> None:
        """Create or replace file `path` with `data`, atomically."""
        ...

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Create directory `path`."""
        ...

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Remove `path` (a non-empty directory needs `recursive`)."""
        ...

    def mv(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` (within one entity on the federation)."""
        ...

    def symlink(self, path: str, target: str) -> None:
        """Create symlink `path` -> `target`."""
        ...

    def mknod(self, path: str, kind: str, mode: int = 0o644, rdev: int = 0) -> None:
        """Create special file `path` of `kind` ("fifo", "socket", "chardev",
        "blockdev"; metadata only). The federation makes FIFOs and sockets only
        (NotPermittedError for device nodes)."""
        ...

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path`."""
        ...

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set the access and modification times of `path` (None keeps one)."""
        ...

    def set_xattrs(self, path: str, values: dict[str, bytes], *,
                   replace_all: bool = False) -> None:
        """Set extended attributes of `path`; `replace_all` drops the others first."""
        ...

    def close(self) -> None:
        """Release connections and caches."""
        ...


def exists(ns: Namespace, path: str) -> bool:
    """Whether `path` names an entry of `ns` (one that the caller may see): what every
    back end's `exists` answers."""
    try:
        ns.stat(path)
    except NotFoundError:
        return False
    return True


def stat_to_wire(st: Stat) -> dict[str, Any]:
    """A Stat as the JSON object sites send (every field, numbers as numbers)."""
    return {"path": st.path, "kind": st.kind, "size": st.size, "mode": st.mode,
            "uid": st.uid, "gid": st.gid, "atime_ns": st.atime_ns, "mtime_ns": st.mtime_ns,
            "ctime_ns": st.ctime_ns, "ino": st.ino, "version": st.version,
            "target": st.target}


_INT_FIELDS = ("size", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns", "ino",
               "version")
_KINDS = frozenset({"file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"})
#: The kinds `Namespace.mknod` makes.
SPECIAL_KINDS = ("fifo", "socket", "chardev", "blockdev")


def stat_from_wire(data: Mapping[str, Any], *, path: str | None = None) -> Stat:
    """The Stat in a site's JSON answer; a malformed one raises ValueError naming the
    field. Fields an older site does not send read as 0 ("" for `target`); `path`
    replaces the path the site gave (the federation's view of the same entry)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a stat must be a JSON object, not {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"stat field 'kind' must be one of {sorted(_KINDS)}, not {kind!r}")
    vals: dict[str, int] = {}
    for name in _INT_FIELDS:
        v = data.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"stat field {name!r} must be a non-negative integer, not {v!r}")
        vals[name] = v
    where = path if path is not None else data.get("path")
    target = data.get("target", "")
    if not isinstance(where, str) or not isinstance(target, str):
        raise ValueError("stat fields 'path' and 'target' must be strings")
    return Stat(where, kind, vals["size"], vals["mode"], vals["uid"], vals["gid"],
                vals["atime_ns"], vals["mtime_ns"], vals["ctime_ns"], vals["ino"],
                vals["version"], target)


def ls_sorted(entries: Sequence[Stat]) -> list[Stat]:
    """Entries in name order (the order every back end lists in)."""
    return sorted(entries, key=lambda s: s.name)
