"""`FederatedNamespace`: the global tree across entities and sites, as a `Namespace`.

    ns = FederatedNamespace("https://registry:8700", keys=EntityKeys.load(d), near="b-1")
    ns = FederatedNamespace("https://registry:8700", token=t, registry_ca="ca.pem")
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

import contextlib
import io
import shutil
import stat as statmod
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from gfs import namespace_api, paths
from gfs.disk_cache import DiskCache
from gfs.errors import (
    ConfigError,
    CrossEntityError,
    ExistsError,
    FileTooLargeError,
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
from gfs.federation.http import ApiError, UnavailableError
from gfs.federation.inflight import RequestSizer
from gfs.federation.kept import Kept
from gfs.federation.notices import Leases
from gfs.federation.site_client import (
    Listing,
    SiteClient,
    SiteManifest,
    SiteUnavailableError,
)
from gfs.federation.tls import Trust, client_trust, read_registry_ca
from gfs.federation.upload import SpoolWriter, upload
from gfs.federation.views import Visibility
from gfs.federation.wire import version_keyed
from gfs.meta import Manifest
from gfs.namespace_api import DuReport, Stat
from gfs.read import ManifestReader, MemoryTier
from gfs.read.memory import DEFAULT_MEMORY_BYTES
from gfs.read.reader import READ_AHEAD_BYTES
from gfs.read.stack import cached

#: Seconds the entities, their primaries and what the caller may see are kept.
VIEW_TTL = 5.0
#: Read-ahead of a reader over a disk tier (bytes): 40 ms at 1 Gbit/s is 5 MB in
#: flight, and requests only fill the link when several are always queued (a cold
#: gfs:// read of 256 MiB over the emulated WAN: 26-32 MB/s with 8 MiB, 38-42 with
#: 32 MiB; 4 iperf3 streams 52 MB/s).
WAN_READ_AHEAD = 32 << 20
#: Requests for chunks in flight at once (the memory tier's prefetch threads, one
#: connection each). Each waits a round trip before its next, so a link of rate B and
#: round trip T is used about 1 / (1 + B*T / in-flight): 0.64 at 117 MB/s and 40 ms with
#: 16 chunks (~1 MiB) each. Each asks for 64 chunks at least (fewer requests: less CPU
#: per MB), more where the measured link wants it (`gfs.federation.inflight`, within the
#: read-ahead and 64 MiB).
#: More in flight did not read faster on a loaded 2-core machine, where the CPU of the
#: delay line, site and client bounds the read first (gfs:// cold, 256 MiB over the
#: emulated WAN, load 9-19, configurations alternated, three rounds each; one run:
#: 8 x 16 chunks 33/31/25 MB/s, 8 x 32 25/27/30, 12 x 32 22/28/27; another: 8 x 16
#: 27/20/37, 8 x 64 24/14/28, 16 x 32 23/14/20).
FETCH_THREADS = 8
#: Manifests of files opened kept (by path) to be revalidated by version at the next
#: open instead of fetched again (a 1 GiB file's is ~16,000 chunks: tens of ms to
#: receive and parse).
KEPT_MANIFESTS = 64
#: Mode of a directory the federation synthesises (the root, the way to a grant).
SYNTHETIC_MODE = statmod.S_IFDIR | 0o555


T = TypeVar("T")


def read_ahead_for(memory: int, *, disk: bool) -> int:
    """Bytes a reader fetches ahead: what keeps a long link busy. Over a disk tier,
    WAN_READ_AHEAD (the memory tier keeps it until read, `MemoryTier.keep_ahead`, and
    a chunk evicted anyway is read from disk); without one, a 32nd of the memory tier."""
    if disk:
        return WAN_READ_AHEAD
    return max(READ_AHEAD_BYTES, min(WAN_READ_AHEAD, memory // 32))


class FederatedNamespace:
    """The federation as a `gfs.namespace_api.Namespace` (see the module docstring)."""

    def __init__(self, registry: str, *, keys: EntityKeys | None = None,
                 token: str | None = None, entity: str | None = None,
                 near: str | None = None, cache_dir: Path | None = None,
                 memory_bytes: int | None = None,
                 registry_ca: bytes | str | Path | None = None, tls: Trust | None = None,
                 plaintext: bool = False) -> None:
        """`registry_ca` (PEM, or its file) is the registry's CA, needed with a token;
        keys from a site directory bring their own (its pinned CA and certificate).
        `tls` gives the whole trust instead; `plaintext` allows an http:// registry
        (development only, `--insecure-plaintext`)."""
        me = keys.name if keys is not None else token_issuer(token) if token else None
        if entity is not None and me is not None and entity != me:
            raise PermissionDeniedError(f"/{entity}", f"the credentials are {me!r}'s, not "
                                        f"{entity!r}'s; use that entity's keys or token")
        self.entity = entity or me
        memory = DEFAULT_MEMORY_BYTES if memory_bytes is None else memory_bytes
        if tls is None:
            tls = client_trust(registry, keys=keys, plaintext=plaintext,
                               registry_ca=None if registry_ca is None
                               else read_registry_ca(registry_ca))
        if registry.startswith("https://") and tls.registry_ca is None:
            raise ConfigError(f"no CA to check registry {registry}: pass registry_ca= "
                              "(--registry-ca FILE, the registry's STATE/tls/ca.pem) or "
                              "keys from a site directory")
        self.fc = FederationClient(registry, keys=keys, token=token, near=near,
                                   cache_bytes=0, tls=tls)
        self.read_ahead = read_ahead_for(memory, disk=cache_dir is not None)
        """Bytes a reader fetches ahead (`read_ahead_for`)."""
        self.sizer = RequestSizer(self.fc.link, requests=FETCH_THREADS, window=self.read_ahead)
        """Chunks per prefetch request, sized to the link (`gfs.federation.inflight`)."""
        self.chunks: MemoryTier = cached(
            self.fc.source, memory, threads=FETCH_THREADS, batch=self.sizer,
            disk=None if cache_dir is None else DiskCache(cache_dir))
        """The read stack every chunk read of this namespace goes through."""
        self.spool_dir = None if cache_dir is None else Path(cache_dir)
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, tuple[Stat, Manifest]] = OrderedDict()
        self._view = Kept(self._fetch_visibility, VIEW_TTL, what="what the caller may see")
        self._asks = ThreadPoolExecutor(16, thread_name_prefix="hutong-visible")
        self.leases = Leases()
        """Open leases and the notice streams that keep them (gfs.federation.notices)."""

    def close(self) -> None:
        """Release connections and the cache tiers."""
        self._asks.shutdown(wait=False, cancel_futures=True)
        self.leases.close()
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
        return self.fc.entities()

    def _site(self, entity: str) -> tuple[str, SiteClient]:
        """(name, client) of `entity`'s primary site."""
        rec = self._entity_records().get(entity)
        if rec is None:
            raise NotFoundError(f"/{entity}")
        primary = rec.get("primary")
        if not primary:
            raise SiteUnavailableError(f"/{entity}", f"entity {entity!r} has no primary "
                                       "site registered", 503, "no_primary")
        return str(primary), self.fc.site(str(primary))

    def _ask(self, norm: str, site: SiteClient, op: Callable[[SiteClient], T]) -> T:
        """`op(site)` for path `norm`; when the primary does not answer, the registry is
        asked again and `op` retried once at the primary's new endpoint if it moved
        (restarted elsewhere): the registry view is shared and may predate the move."""
        try:
            return op(site)
        except ConnectionError:
            self.fc.sites(refresh=True)
            moved = self._site(paths.split(norm)[0])[1]
            if moved is site:
                raise
            return op(moved)

    def visibility(self, refresh: bool = False) -> Visibility:
        """The entities and prefixes the caller may see (kept VIEW_TTL seconds, renewed
        in the background while a little older: the sites check every request anyway)."""
        with self._errors("/", write=False):
            return self._view.get(refresh)

    def _fetch_visibility(self) -> Visibility:
        if self.fc.token is not None:  # a token reaches its prefix of its issuer only
            return Visibility.of(self.entity, {str(self.entity):
                                               [str(token_claims(self.fc.token)["prefix"])]})
        prefixes: dict[str, list[str]] = {}
        if self.entity is not None and self.fc.keys is not None:
            prefixes[self.entity] = [f"/{self.entity}"]
        old = self._view.peek()

        def ask(name: str) -> list[str]:
            try:
                return self._site(name)[1].visible().prefixes
            except UnavailableSiteError:  # its primary is down: keep what it showed last
                return list(old.prefixes(name)) if old is not None else []
            except (PermissionError, ApiError):
                return []
        others = [n for n in self._entity_records() if n not in prefixes]
        if others:  # one request per entity, all at once (one round trip of wall time),
            # from threads that keep their connections
            prefixes.update(zip(others, self._asks.map(ask, others), strict=True))
        return Visibility.of(self.entity, prefixes)

    @contextlib.contextmanager
    def _errors(self, path: str, *, write: bool) -> Iterator[None]:
        """The site's refusals as the embedded store's errors: a read refused is a path
        that does not exist for the caller; an unreachable primary makes writes EROFS."""
        try:
            yield
        except (AuthError, PermissionDeniedError) as e:
            if isinstance(e, AuthError) and e.status != 403:
                raise
            if write:
                raise PermissionDeniedError(path, f"not allowed to change it ({e})") from None
            raise NotFoundError(path) from None
        except ApiError as e:
            if e.status != 413:
                raise
            raise FileTooLargeError(path, "another entity's files are read and written whole "
                                    f"through its primary, and this one is too large for that "
                                    f"({e}); ask its owner for a copy in parts") from None
        except (UnavailableError, UnavailableSiteError) as e:
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

    @contextlib.contextmanager
    def _at(self, path: str, *, write: bool = False) -> Iterator[tuple[str, SiteClient]]:
        """(normalised path, its primary's client) for one call in the real tree, the
        call's errors translated (`_errors`); a write first checks the primary is up."""
        norm, ent = self._real(path, write=write)
        with self._errors(norm, write=write):
            primary, site = self._site(ent)
            if write and self.fc.sites().get(primary, {}).get("status") not in (None, "up"):
                raise SiteUnavailableError(primary, f"site {primary} is down")
            yield norm, site

    # -- reading -------------------------------------------------------------------------
    def _synthetic(self, norm: str) -> Stat:
        return Stat(norm, "dir", 0, SYNTHETIC_MODE, 0, 0, 0, 0, 0, 0, 0, "")

    def _entity_root(self, entity: str) -> Stat:
        """`/ENTITY` as the root lists it: its real stat where the caller sees all of it
        (its mode says whether it may write there), else (or while the primary is
        unreachable) a synthesised directory."""
        top = f"/{entity}"
        if self.visibility().place(top) == "real":
            with contextlib.suppress(UnavailableSiteError, NotFoundError):
                return self.stat(top)
        return self._synthetic(top)

    def _shown(self, norm: str) -> bool:
        """Whether `norm` is the root or a synthesised directory of the caller's view."""
        return self.visibility().place(norm) in ("root", "synthetic")

    def stat(self, path: str) -> Stat:
        """The entry at `path` (symlinks are not followed); while the primary is down,
        a file's stat as a mirror holds it (for the owner entity, and for a grantee as
        far as the grants the mirror holds go)."""
        norm = paths.normalize(path)
        if self._shown(norm):
            return self._synthetic(norm)
        held = self.leased(norm)
        if held is not None:
            return held
        with self._at(norm) as (n, site):
            try:
                return self._ask(n, site, lambda h: self._stat_leased(h, n))
            except ConnectionError:  # the mirrors answer the owner and its grantees
                return self._mirrored_stat(n)

    def _stat_leased(self, site: SiteClient, n: str) -> Stat:
        holder, ticket = self.leases.ticket(site.http)
        st, ttl = site.stat_leased(n, holder)
        if ticket is not None:
            ticket.grant(n, st, ttl)
        return st

    def leased(self, path: str) -> Stat | None:
        """The Stat of `path` while a lease promises it (its own, or its directory's
        listing): known without asking (docs/leases.md); None otherwise."""
        norm = paths.normalize(path)
        got = self.leases.find(norm)
        if got is not None:
            return got.stat
        if norm == "/":
            return None
        parent = self.leases.find(paths.parent_of(norm))
        if parent is None or parent.entries is None:
            return None
        return parent.entries.get(norm.rsplit("/", 1)[1])

    def _mirrored_stat(self, n: str) -> Stat:
        """The stat of `n` as a mirror holds it (its primary being down): a file's from
        its mirrored manifest, a directory's from the listing of its parent (an entity's
        top from its own). Not held by any mirror: UnavailableSiteError, since the
        mirrors hold only what the rules replicate and cannot say it does not exist."""
        parts = paths.split(n)
        if len(parts) == 1:
            return self.fc.mirror_listing(n).dir
        try:
            return self.fc.manifest(n).stat
        except UnavailableSiteError as e:
            missing = e
        try:
            entries = self.fc.mirror_listing(paths.join(parts[:-1])).entries or []
        except UnavailableSiteError:
            raise missing from None
        for st in entries:
            if st.path == n:
                return st
        raise missing

    def exists(self, path: str) -> bool:
        """Whether `path` names an entry the caller may see."""
        return namespace_api.exists(self, path)

    def ls(self, path: str = "/") -> list[Stat]:
        """The entries of directory `path` (or the file itself), each with its full Stat;
        the root lists the visible entities, the caller's own first."""
        entries = self.ls_if_changed(path, None)[1]
        assert entries is not None
        return entries

    def ls_if_changed(self, path: str, version: int | None) -> tuple[Stat, list[Stat] | None]:
        """(the Stat of `path`, its entries as `ls` gives them), or entries None when the
        directory's version is still `version` (one cheap request: a cache revalidates
        a listing without fetching it again)."""
        norm = paths.normalize(path)
        view = self.visibility()
        where = view.place(norm)
        if where == "root":
            return self._synthetic(norm), [self._entity_root(e) for e in view.names()]
        if where == "synthetic":
            out = []
            for name in view.children(norm):
                try:
                    out.append(self.stat(f"{norm.rstrip('/')}/{name}"))
                except NotFoundError:  # a granted prefix that does not exist (yet)
                    continue
            return self._synthetic(norm), out
        with self._at(norm) as (n, site):
            try:
                listing = self._ask(n, site, lambda h: self._list_leased(h, n, version))
            except ConnectionError:  # what the mirrors hold of it (for the owner and
                listing = self.fc.mirror_listing(n)  # what they hold of its grants)
        return listing.dir, listing.entries

    def _list_leased(self, site: SiteClient, n: str, version: int | None) -> Listing:
        holder, ticket = self.leases.ticket(site.http)
        listing = site.list_dir(n, if_version=version, lease=holder)
        if ticket is not None:
            ticket.grant(n, listing.dir, listing.lease, listing.entries,
                         unchanged=listing.unchanged)
        return listing

    def ls_xattrs(self, path: str) -> list[tuple[Stat, dict[str, bytes]]]:
        """`ls` with each entry's extended attributes: in the real tree one request to
        the primary in all (a gateway's listing), elsewhere one per entry."""
        norm = paths.normalize(path)
        if self.visibility().place(norm) == "real":
            with self._at(norm) as (n, site):
                try:
                    listing = self._ask(n, site, lambda h: h.list_dir(n, xattrs=True))
                except ConnectionError:  # ls falls back to the mirrors
                    listing = None
            if listing is not None and listing.entries is not None:
                attrs = listing.xattrs or {}
                return [(st, attrs.get(st.path, {})) for st in listing.entries]
        return [(st, self.xattrs(st.path)) for st in self.ls(norm)]

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
        with self._at(norm) as (n, site):
            return site.du(n)

    def open(self, path: str, mode: str = "rb", *, perm: int | None = None) -> BinaryIO:
        """A seekable reader of the version committed now ("rb"), or a writer ("wb") whose
        bytes become visible all at once when it is closed (close-to-open)."""
        if mode in ("wb", "w"):
            return self.open_with_attrs(path, perm=perm)
        if mode not in ("rb", "r"):
            raise ValueError(f"mode must be 'rb' or 'wb', got {mode!r}")
        return self.open_stat(path)[1]

    def open_stat(self, path: str) -> tuple[Stat, BinaryIO]:
        """A seekable reader of the version of file `path` committed now, and that
        version's Stat (one request: the manifest carries it; a manifest kept from an
        earlier open is revalidated by version instead of sent again)."""
        norm = paths.normalize(path)
        with self._lock:
            kept = self._manifests.get(norm)
        held = None if kept is None else self.leased(norm)
        if kept is not None and held is not None and _same_version(kept[0], held):
            # a lease promises the version kept: no request (docs/leases.md)
            return held, io.BufferedReader(ManifestReader(self.chunks, norm, kept[1],
                                                          read_ahead=self.read_ahead), 1 << 20)
        m = self._manifest(path, None if kept is None else kept[0].version)
        if m.unchanged and kept is not None and _same_version(kept[0], m.stat):
            manifest = kept[1]
        else:
            if m.unchanged:  # another file now has that version number (made anew)
                m = self._manifest(path, None)
            manifest = Manifest(m.stat.version, tuple(m.refs()))
            with self._lock:
                self._manifests[norm] = (m.stat, manifest)
                self._manifests.move_to_end(norm)
                while len(self._manifests) > KEPT_MANIFESTS:
                    self._manifests.popitem(last=False)
        return m.stat, io.BufferedReader(ManifestReader(self.chunks, norm, manifest,
                                                        read_ahead=self.read_ahead), 1 << 20)

    def _manifest(self, path: str, if_version: int | None) -> SiteManifest:
        """The manifest of file `path` from its primary (a mirror while it is down), or
        only its stat when it is still at `if_version`."""
        with self._at(path) as (norm, site):
            try:
                m = self._ask(norm, site, lambda h: self._manifest_leased(h, norm, if_version))
            except ConnectionError:  # the primary is down: from a mirror
                m = self.fc.manifest(norm)
            except IsADirError:  # the site says so of symlinks too
                raise _not_a_file(self.stat(norm)) from None
        if m.stat.kind != "file":
            raise _not_a_file(m.stat)
        self.fc.source.note(norm, m.sites)
        return m

    def _manifest_leased(self, site: SiteClient, n: str, if_version: int | None
                         ) -> SiteManifest:
        holder, ticket = self.leases.ticket(site.http)
        m = site.manifest(n, if_version=if_version, lease=holder)
        if ticket is not None and m.stat.kind == "file":
            ticket.grant(n, m.stat, m.lease)
        return m

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of file `path` (all of it by default)."""
        with self.open(path) as f:
            f.seek(max(start, 0))
            return f.read() if end is None else f.read(max(end - max(start, 0), 0))

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` by name."""
        norm = paths.normalize(path)
        if self._shown(norm):
            return {}
        with self._at(norm) as (n, site):
            return site.xattrs(n)

    # -- changing ------------------------------------------------------------------------
    def open_with_attrs(self, path: str, *, perm: int | None = None,
                        xattrs: Mapping[str, bytes] | None = None,
                        keyed: Mapping[str, bytes] | None = None) -> BinaryIO:
        """A writer of file `path` (as `open(path, "wb")`) whose commit also replaces the
        file's attributes with `xattrs` and `keyed` (each stored as "VERSION VALUE" of
        the version made), in the same transaction at the primary."""
        norm, _ = self._real(path, write=True)

        def commit(f: BinaryIO, size: int) -> None:
            with self._at(norm, write=True) as (n, site):
                upload(site, n, f, size, owner=self.fc.owner_mode(paths.split(n)[0]),
                       mode=perm, params=self.fc.params, level=self.fc.level,
                       xattrs=xattrs, keyed=keyed)
        return SpoolWriter(norm, commit, self.spool_dir)  # type: ignore[return-value]

    def write_bytes(self, path: str, data: bytes, *, perm: int | None = None) -> None:
        """Create or replace file `path` with `data`, atomically."""
        with self.open(path, "wb", perm=perm) as f:
            f.write(data)

    def concat(self, path: str, sources: list[str], remove: Sequence[str] = (), *,
               xattrs: Mapping[str, bytes] | None = None,
               keyed: Mapping[str, bytes] | None = None) -> Stat:
        """Create or replace file `path` with the files `sources` joined (S3 multipart
        completion), then remove the entries `remove`; with `xattrs` (and `keyed`, each
        stored as "VERSION VALUE" of the version made) its attributes are replaced.
        When all paths are in the entity of `path`: one manifest commit at its primary
        (`POST /v1/ns/concat`, no data read or sent, the attributes in the same commit;
        for any caller that may write `path` and read `sources`, prefix tokens too);
        otherwise read and written again, then the attributes set and `remove` removed."""
        norm, ent = self._real(path, write=True)
        if all(paths.split(paths.normalize(s))[:1] == [ent] for s in [*sources, *remove]):
            with self._at(norm, write=True) as (n, site):
                return site.concat(n, [paths.normalize(s) for s in sources],
                                   [paths.normalize(r) for r in remove],
                                   xattrs=xattrs, keyed=keyed)
        with self.open(norm, "wb") as out:
            for src in sources:
                with self.open(src) as f:
                    shutil.copyfileobj(f, out, 4 << 20)
        if xattrs is not None or keyed:
            version = self.stat(norm).version
            self.set_xattrs(norm, version_keyed(xattrs or {}, keyed or {}, version),
                            replace_all=True)
        for r in remove:
            self.rm(r, recursive=True)
        return self.stat(norm)

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Create directory `path` (`parents`: and the missing ones above it)."""
        norm = paths.normalize(path)
        if self._shown(norm):
            if exist_ok:
                return
            raise ExistsError(norm)
        with self._at(norm, write=True) as (n, site):
            site.mkdir(n, parents=parents, exist_ok=exist_ok)

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Remove `path` (a non-empty directory needs `recursive`)."""
        with self._at(path, write=True) as (n, site):
            site.remove(n, recursive=recursive)

    def mv(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` (into `dst` when it is a directory), within one entity."""
        s, d = paths.normalize(src), paths.normalize(dst)
        se, de = paths.split(s)[:1], paths.split(d)[:1]
        if se and de and se != de:
            raise CrossEntityError(s, f"cannot rename to {d}: it belongs to another entity; "
                                   "copy it there, then remove it")
        self._real(d, write=True)
        with self._at(s, write=True) as (n, site):
            site.rename(n, d)

    def symlink(self, path: str, target: str) -> None:
        """Create symlink `path` -> `target`."""
        with self._at(path, write=True) as (n, site):
            site.symlink(n, target)

    def mknod(self, path: str, kind: str, mode: int = 0o644, rdev: int = 0) -> None:
        """Create FIFO or socket `path` (metadata only). Device nodes are refused
        (NotPermittedError): their numbers mean something only on the machine that made
        them, and one planted in another entity's tree could open its devices."""
        if kind not in ("fifo", "socket"):
            raise NotPermittedError(paths.normalize(path), f"the federation makes FIFOs and "
                                    f"sockets, not {kind} nodes (device numbers are "
                                    "local to one machine)")
        with self._at(path, write=True) as (n, site):
            site.mknod(n, kind, mode & 0o7777)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path`."""
        with self._at(path, write=True) as (n, site):
            site.setattr(n, mode=mode)

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set the access and modification times of `path` (None keeps one)."""
        with self._at(path, write=True) as (n, site):
            site.setattr(n, atime_ns=atime_ns, mtime_ns=mtime_ns)

    def set_xattrs(self, path: str, values: dict[str, bytes], *,
                   replace_all: bool = False) -> None:
        """Set extended attributes of `path`; `replace_all` drops the others first."""
        with self._at(path, write=True) as (n, site):
            site.set_xattrs(n, values, replace_all=replace_all)


_DU_FIELDS = ("files", "dirs", "symlinks", "chunks", "logical_bytes", "unique_bytes",
              "stored_bytes")


def _du_counts(r: DuReport) -> tuple[int, ...]:
    return tuple(int(getattr(r, k)) for k in _DU_FIELDS)


def _same_version(a: Stat, b: Stat) -> bool:
    """Whether two stats of one path are of the same committed file version."""
    return (a.ino, a.version, a.size, a.mtime_ns) == (b.ino, b.version, b.size, b.mtime_ns)


def _not_a_file(st: Stat) -> Exception:
    """The embedded store's error for reading something that is not a regular file."""
    if st.kind == "dir":
        return IsADirError(st.path)
    if st.kind == "symlink":
        return InvalidPathError(st.path, "is a symlink (read its target instead)")
    return InvalidPathError(st.path, f"is a {st.kind}, not a regular file (special files "
                            "hold no data in the store)")


__all__ = ["WAN_READ_AHEAD", "FederatedNamespace", "read_ahead_for"]
