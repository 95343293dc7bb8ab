"""`FederatedNamespace`: the global tree across entities and sites, as a `Namespace`.

    ns = FederatedNamespace("http://registry:8700", keys=EntityKeys.load(d), near="b-1")
    ns.ls("/")                          # the entities the caller may see, its own first
    with ns.open("/bank-a/shared/x.parquet") as f: ...   # nearest verified replicas
    ns.write_bytes("/telco-b/out/y.csv", data)           # close-to-open commit

`/ENTITY/...` lives at that entity's primary site; a grantee sees only the
directories leading to what it was granted (see gfs.federation.views).
Reads go through the one read stack (memory and disk tiers over the sites'
verified chunks, nearest replica first; while the primary is down, manifests
come from mirrors). Writes spool locally and commit on close
(gfs.federation.upload); while the primary is down they raise ReadOnlyError.
Errors are the embedded store's (`gfs.errors`), so code runs on either back end.
"""

from __future__ import annotations

import base64
import contextlib
import io
import stat as statmod
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gfs import paths
from gfs.disk_cache import DiskCache
from gfs.errors import (
    CrossEntityError,
    ExistsError,
    InvalidPathError,
    IsADirError,
    NotFoundError,
    NotPermittedError,
    PermissionDeniedError,
    ReadOnlyError,
    UnavailableSiteError,
)
from gfs.federation.auth import AuthError, EntityKeys, token_claims, token_issuer
from gfs.federation.client import FederationClient
from gfs.federation.http import ApiError, HttpClient, UnavailableError
from gfs.federation.upload import SpoolWriter, upload
from gfs.federation.views import Visibility
from gfs.meta import ChunkRef, Manifest
from gfs.namespace_api import DuReport, Stat, ls_sorted, stat_from_wire
from gfs.read import ManifestReader, MemoryTier
from gfs.read.memory import DEFAULT_MEMORY_BYTES
from gfs.read.stack import cached

#: Seconds the entities, their primaries and what the caller may see are kept.
VIEW_TTL = 5.0
#: Mode of a directory the federation synthesises (the root, the way to a grant).
SYNTHETIC_MODE = statmod.S_IFDIR | 0o555


class FederatedNamespace:
    """The federation as a `gfs.namespace_api.Namespace` (see the module docstring)."""

    def __init__(self, registry: str, *, keys: EntityKeys | None = None,
                 token: str | None = None, entity: str | None = None,
                 near: str | None = None, cache_dir: Path | None = None,
                 memory_bytes: int | None = None) -> None:
        me = keys.name if keys is not None else token_issuer(token) if token else None
        if entity is not None and me is not None and entity != me:
            raise PermissionDeniedError(f"/{entity}", f"the credentials are {me!r}'s, not "
                                        f"{entity!r}'s; use that entity's keys or token")
        self.entity = entity or me
        memory = DEFAULT_MEMORY_BYTES if memory_bytes is None else memory_bytes
        self.fc = FederationClient(registry, keys=keys, token=token, near=near,
                                   cache_bytes=memory)
        self.chunks: MemoryTier = (self.fc.cache if cache_dir is None else
                                   cached(self.fc.source, memory, disk=DiskCache(cache_dir)))
        """The read stack every chunk read of this namespace goes through."""
        self.spool_dir = None if cache_dir is None else Path(cache_dir)
        self._lock = threading.Lock()
        self._entities: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._view: tuple[float, Visibility] | None = None

    def close(self) -> None:
        """Release connections and the cache tiers."""
        if self.chunks is not self.fc.cache:
            self.chunks.close()
        self.fc.close()

    def __enter__(self) -> FederatedNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- who sees what -------------------------------------------------------------------
    def sites(self) -> dict[str, dict[str, Any]]:
        """Every registered site by name, with its entity, region and status."""
        with self._errors("/", write=False):
            return self.fc.sites()

    def _entity_records(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._entities is not None and time.monotonic() - self._entities[0] < VIEW_TTL:
                return self._entities[1]
        recs = {str(r["name"]): r for r in self.fc.registry.call("GET", "/v1/entities")
                ["entities"]}
        with self._lock:
            self._entities = (time.monotonic(), recs)
        return recs

    def _site(self, entity: str) -> tuple[str, HttpClient]:
        """(name, connection) of `entity`'s primary site."""
        rec = self._entity_records().get(entity)
        if rec is None:
            raise NotFoundError(f"/{entity}")
        primary = rec.get("primary")
        if not primary:
            raise UnavailableError(f"entity {entity!r} has no primary site registered", 503,
                                   "no_primary")
        return str(primary), self.fc.http(str(primary))

    def visibility(self, refresh: bool = False) -> Visibility:
        """The entities and prefixes the caller may see (kept VIEW_TTL seconds)."""
        with self._lock:
            if (not refresh and self._view is not None
                    and time.monotonic() - self._view[0] < VIEW_TTL):
                return self._view[1]
        with self._errors("/", write=False):
            view = self._fetch_visibility()
        with self._lock:
            self._view = (time.monotonic(), view)
        return view

    def _fetch_visibility(self) -> Visibility:
        if self.fc.token is not None:  # a token reaches its prefix of its issuer only
            return Visibility.of(self.entity, {str(self.entity):
                                               [str(token_claims(self.fc.token)["prefix"])]})
        prefixes: dict[str, list[str]] = {}
        if self.entity is not None and self.fc.keys is not None:
            prefixes[self.entity] = [f"/{self.entity}"]
        old = self._view[1] if self._view is not None else None
        for name in self._entity_records():
            if name in prefixes:
                continue
            try:
                _, site = self._site(name)
                got = site.call("GET", "/v1/ns/visible")
                prefixes[name] = [str(p) for p in got.get("prefixes", [])]
            except UnavailableError:  # its primary is down: keep what it showed last
                if old is not None and old.prefixes(name):
                    prefixes[name] = list(old.prefixes(name))
            except (AuthError, ApiError):
                continue
        return Visibility.of(self.entity, prefixes)

    @contextlib.contextmanager
    def _errors(self, path: str, *, write: bool) -> Iterator[None]:
        """The site's refusals as the embedded store's errors: a read refused is a path
        that does not exist for the caller; an unreachable primary makes writes EROFS."""
        try:
            yield
        except AuthError as e:
            if e.status != 403:
                raise
            if write:
                raise PermissionDeniedError(path, f"not allowed to change it ({e})") from None
            raise NotFoundError(path) from None
        except UnavailableError as e:
            ent = (paths.split(path) or ["?"])[0]
            if write:
                raise ReadOnlyError(path, f"read-only: the primary site of {ent!r} is "
                                    f"unreachable ({e}); writes are refused until it is back, "
                                    "reads continue from its mirrors") from None
            raise UnavailableSiteError(path, f"no site of {ent!r} holding it answered ({e}); "
                                       "retry when one is back") from None

    def _real(self, path: str, *, write: bool = False) -> tuple[str, str]:
        """(normalised path, entity) of a path in the real tree the caller sees; a path
        outside it is NotFoundError (a change next to a synthesised directory:
        PermissionDeniedError)."""
        norm = paths.normalize(path)
        view = self.visibility()
        where = view.place(norm)
        if where == "real":
            return norm, paths.split(norm)[0]
        parent = paths.join(paths.split(norm)[:-1])
        if write and where == "hidden" and view.place(parent) in ("root", "synthetic"):
            raise PermissionDeniedError(norm, "only what its entity granted may be "
                                        "changed here")
        if write and where in ("root", "synthetic"):
            raise NotPermittedError(norm, "a directory of the federation's view (the root, "
                                    "or the way to a grant) cannot be changed")
        raise NotFoundError(norm)

    def _call(self, path: str, method: str, endpoint: str, payload: Any = None, *,
              write: bool = False, query: dict[str, str] | None = None) -> Any:
        norm, ent = self._real(path, write=write)
        with self._errors(norm, write=write):
            if write:
                self._writable(ent, norm)
            _, site = self._site(ent)
            return site.call(method, endpoint, payload, query=query)

    def _writable(self, entity: str, norm: str) -> None:
        """ReadOnlyError at once when the registry shows `entity`'s primary down."""
        primary, _ = self._site(entity)
        if self.fc.sites().get(primary, {}).get("status") not in (None, "up"):
            raise UnavailableError(f"site {primary} is down", 503, "unavailable")

    # -- reading -------------------------------------------------------------------------
    def _synthetic(self, norm: str) -> Stat:
        return Stat(norm, "dir", 0, SYNTHETIC_MODE, 0, 0, 0, 0, 0, 0, 0, "")

    def stat(self, path: str) -> Stat:
        """The entry at `path` (symlinks are not followed)."""
        norm = paths.normalize(path)
        if self.visibility().place(norm) in ("root", "synthetic"):
            return self._synthetic(norm)
        return stat_from_wire(self._call(norm, "GET", "/v1/ns/stat", query={"path": norm}),
                              path=norm)

    def exists(self, path: str) -> bool:
        """Whether `path` names an entry the caller may see."""
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def ls(self, path: str = "/") -> list[Stat]:
        """The entries of directory `path` (or the file itself), each with its full Stat;
        the root lists the visible entities, the caller's own first."""
        norm = paths.normalize(path)
        view = self.visibility()
        where = view.place(norm)
        base = norm.rstrip("/")
        if where == "root":
            return [self._synthetic(f"/{e}") for e in view.names()]
        if where == "synthetic":
            out = []
            for name in view.children(norm):
                try:
                    out.append(self.stat(f"{base}/{name}"))
                except NotFoundError:  # a granted prefix that does not exist (yet)
                    continue
            return out
        entries = self.ls_if_changed(norm, None)[1]
        assert entries is not None
        return entries

    def ls_if_changed(self, path: str, version: int | None) -> tuple[Stat, list[Stat] | None]:
        """(the Stat of `path`, its entries as `ls` gives them), or entries None when the
        directory's version is still `version` (one cheap request: a cache revalidates
        a listing without fetching it again)."""
        norm = paths.normalize(path)
        if self.visibility().place(norm) in ("root", "synthetic"):
            return self.stat(norm), self.ls(norm)
        query = {"path": norm}
        if version is not None:
            query["if_version"] = str(version)
        got = self._call(norm, "GET", "/v1/ns/list", query=query)
        top = stat_from_wire(got["dir"], path=norm) if "dir" in got else self.stat(norm)
        if got.get("unchanged"):
            return top, None
        return top, ls_sorted([stat_from_wire(e) for e in got["entries"]])

    def walk(self, path: str = "/") -> Iterator[Stat]:
        """`path` and everything below it the caller may see, depth first, parents first."""
        stack = [self.stat(path)]
        while stack:
            st = stack.pop()
            yield st
            if st.kind == "dir":
                stack.extend(reversed(self.ls(st.path)))

    def readlink(self, path: str) -> str:
        """The target of symlink `path`."""
        st = self.stat(path)
        if st.kind != "symlink":
            raise InvalidPathError(st.path, "not a symlink")
        return st.target

    def du(self, path: str = "/") -> DuReport:
        """Space used under `path`; above the real tree, the sum over the visible prefixes
        below it (chunks shared between prefixes count once per prefix)."""
        norm = paths.normalize(path)
        view = self.visibility()
        if view.place(norm) in ("root", "synthetic"):
            tops = [p for _, ps in view.entities for p in ps
                    if norm == "/" or p.startswith(norm.rstrip("/") + "/")]
            total = DuReport(norm, 0, 0, 0, 0, 0, 0, 0)
            for top in tops:
                try:
                    r = self.du(top)
                except NotFoundError:
                    continue
                total = DuReport(norm, *(a + b for a, b in zip(
                    _du_counts(total), _du_counts(r), strict=True)))
            return total
        got = self._call(norm, "GET", "/v1/ns/du", query={"path": norm})
        return DuReport(norm, *(int(got[k]) for k in _DU_FIELDS))

    def _manifest(self, norm: str, ent: str) -> tuple[Manifest, list[str]]:
        """The committed version of file `norm` and the sites holding it (from a mirror
        while the primary is down)."""
        primary, _ = self._site(ent)
        m = self.fc._manifest_or_mirror(norm, primary, ent)
        st = stat_from_wire(m["stat"], path=norm)
        if st.kind != "file":
            raise _not_a_file(st)
        manifest = Manifest(st.version, tuple(ChunkRef(bytes.fromhex(h), int(n))
                                              for h, n in m["chunks"]))
        return manifest, [str(s) for s in m["sites"]]

    def open(self, path: str, mode: str = "rb", *, perm: int | None = None) -> BinaryIO:
        """A seekable reader of the version committed now ("rb"), or a writer ("wb") whose
        bytes become visible all at once when it is closed (close-to-open)."""
        if mode in ("wb", "w"):
            norm, ent = self._real(path, write=True)
            return SpoolWriter(norm, lambda f, size: self._commit(norm, ent, f, size, perm),
                               self.spool_dir)  # type: ignore[return-value]
        if mode not in ("rb", "r"):
            raise ValueError(f"mode must be 'rb' or 'wb', got {mode!r}")
        norm, ent = self._real(path)
        with self._errors(norm, write=False):
            if not self.fc.owner_mode(ent):  # a grantee reads whole files via the primary
                return io.BufferedReader(io.BytesIO(self._read_whole(norm, ent)))
            try:
                manifest, holders = self._manifest(norm, ent)
            except IsADirError:
                raise _not_a_file(self.stat(norm)) from None
            self.fc.source.note(norm, holders)
            return io.BufferedReader(ManifestReader(self.chunks, norm, manifest), 1 << 20)

    def _read_whole(self, norm: str, ent: str) -> bytes:
        _, site = self._site(ent)
        try:
            data = site.call("GET", "/v1/ns/read", query={"path": norm})
        except IsADirError:
            raise _not_a_file(self.stat(norm)) from None
        return data if isinstance(data, bytes) else str(data).encode()

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of file `path` (all of it by default)."""
        with self.open(path) as f:
            f.seek(max(start, 0))
            return f.read() if end is None else f.read(max(end - max(start, 0), 0))

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` by name."""
        norm = paths.normalize(path)
        if self.visibility().place(norm) in ("root", "synthetic"):
            return {}
        got = self._call(norm, "GET", "/v1/ns/xattrs", query={"path": norm})
        return {str(k): base64.b64decode(str(v)) for k, v in got["xattrs"].items()}

    # -- changing ------------------------------------------------------------------------
    def _commit(self, norm: str, ent: str, f: BinaryIO, size: int, perm: int | None) -> None:
        with self._errors(norm, write=True):
            self._writable(ent, norm)
            _, site = self._site(ent)
            upload(site, norm, f, size, owner=self.fc.owner_mode(ent), mode=perm,
                   params=self.fc.params, level=self.fc.level)

    def write_bytes(self, path: str, data: bytes, *, perm: int | None = None) -> None:
        """Create or replace file `path` with `data`, atomically."""
        with self.open(path, "wb", perm=perm) as f:
            f.write(data)

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Create directory `path` (`parents`: and the missing ones above it)."""
        norm = paths.normalize(path)
        if self.visibility().place(norm) in ("root", "synthetic"):
            if exist_ok:
                return
            raise ExistsError(norm)
        self._call(norm, "POST", "/v1/ns/mkdir",
                   {"path": norm, "parents": parents, "exist_ok": exist_ok}, write=True)

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Remove `path` (a non-empty directory needs `recursive`)."""
        norm = paths.normalize(path)
        self._call(norm, "POST", "/v1/ns/remove", {"path": norm, "recursive": recursive},
                   write=True)

    def mv(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` (into `dst` when it is a directory), within one entity."""
        s, d = paths.normalize(src), paths.normalize(dst)
        se, de = paths.split(s)[:1], paths.split(d)[:1]
        if se and de and se != de:
            raise CrossEntityError(s, f"cannot rename to {d}: it belongs to another entity; "
                                   "copy it there, then remove it")
        self._real(d, write=True)
        self._call(s, "POST", "/v1/ns/rename", {"src": s, "dst": d}, write=True)

    def symlink(self, path: str, target: str) -> None:
        """Create symlink `path` -> `target`."""
        norm = paths.normalize(path)
        self._call(norm, "POST", "/v1/ns/symlink", {"path": norm, "target": target},
                   write=True)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path`."""
        norm = paths.normalize(path)
        self._call(norm, "POST", "/v1/ns/setattr", {"path": norm, "mode": mode}, write=True)

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set the access and modification times of `path` (None keeps one)."""
        norm = paths.normalize(path)
        body: dict[str, Any] = {"path": norm}
        if atime_ns is not None:
            body["atime_ns"] = atime_ns
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        self._call(norm, "POST", "/v1/ns/setattr", body, write=True)

    def set_xattrs(self, path: str, values: dict[str, bytes], *,
                   replace_all: bool = False) -> None:
        """Set extended attributes of `path`; `replace_all` drops the others first."""
        norm = paths.normalize(path)
        self._call(norm, "POST", "/v1/ns/xattrs",
                   {"path": norm, "replace_all": replace_all,
                    "set": {k: base64.b64encode(v).decode() for k, v in values.items()}},
                   write=True)


_DU_FIELDS = ("files", "dirs", "symlinks", "chunks", "logical_bytes", "unique_bytes",
              "stored_bytes")


def _du_counts(r: DuReport) -> tuple[int, ...]:
    return tuple(int(getattr(r, k)) for k in _DU_FIELDS)


def _not_a_file(st: Stat) -> Exception:
    """The embedded store's error for reading something that is not a regular file."""
    if st.kind == "dir":
        return IsADirError(st.path)
    if st.kind == "symlink":
        return InvalidPathError(st.path, "is a symlink (read its target instead)")
    return InvalidPathError(st.path, f"is a {st.kind}, not a regular file (special files "
                            "hold no data in the store)")


__all__ = ["FederatedNamespace"]
