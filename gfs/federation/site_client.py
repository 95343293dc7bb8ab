"""`SiteClient`: one typed method per endpoint of a site's HTTP API (docs/openapi/site.yaml).

    sc = SiteClient("http://127.0.0.1:8701", keys=EntityKeys.load(dir))
    st = sc.stat("/bank-a/data/x.csv")            # a gfs.namespace_api.Stat
    listing = sc.list_dir("/bank-a/data", if_version=st_dir.version)

Answers come back as `Stat`, `DuReport` and the small frozen dataclasses below;
errors as `gfs.errors` exceptions (404 NotFoundError, 403 AuthError — a
PermissionError —, 409 ExistsError/ApiError, 400 BadRequestError, ...); a site
that cannot be reached or answers 5xx raises `SiteUnavailableError`, an
`UnavailableSiteError` (EHOSTUNREACH, a ConnectionError). Framing, glob and id
checks come from gfs.federation.wire, shared with the site; this module never
imports the site daemon.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gfs.errors import FormatError, UnavailableSiteError
from gfs.federation.auth import EntityKeys
from gfs.federation.http import BadRequestError, HttpClient, UnavailableError
from gfs.federation.inflight import LinkMeter
from gfs.federation.wire import (
    MAX_IDS,
    commit_attrs_to_wire,
    frame_views,
    ids_to_wire,
    pack_frames,
    parse_ids,
    refs_from_wire,
    refs_to_wire,
)
from gfs.meta import ChunkRef
from gfs.namespace_api import DuReport, Stat, stat_from_wire

Record = dict[str, Any]
"""A JSON record the site keeps (grant, rule, agreement, vault owner: see the spec)."""


class SiteUnavailableError(UnavailableSiteError):
    """A site could not be reached, or answered 5xx; `status` and `code` say which
    (503 `unavailable` when it did not answer). Try another replica or retry later."""

    def __init__(self, site: str, message: str, status: int = 503,
                 code: str = "unavailable") -> None:
        super().__init__(site, message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Listing:
    """A directory's stat and entries (`entries` is None when the site said the
    directory is unchanged since the version asked about)."""

    dir: Stat
    entries: list[Stat] | None
    xattrs: dict[str, dict[str, bytes]] | None = None
    """Each entry's extended attributes by its path, when asked for (`xattrs=True`)."""
    lease: float | None = None
    """Seconds of the lease the answer brought (`lease=HOLDER` asked for one)."""

    @property
    def unchanged(self) -> bool:
        return self.entries is None


@dataclass(frozen=True)
class SiteManifest:
    """A file's stat, its chunks as (id, length), and the sites holding replicas."""

    stat: Stat
    chunks: list[tuple[bytes, int]]
    sites: list[str]
    unchanged: bool = False
    """The file is still at the version the caller named (`if_version`): no chunks sent."""
    lease: float | None = None
    """Seconds of the lease the answer brought (`lease=HOLDER` asked for one)."""

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(c, n) for c, n in self.chunks]


@dataclass(frozen=True)
class Visible:
    """The prefixes of `entity` the caller may read (`/v1/ns/visible`)."""

    entity: str
    prefixes: list[str]


@dataclass(frozen=True)
class PutResult:
    """Blobs a chunk put stored, and those the site had already."""

    stored: int
    present: int


@dataclass(frozen=True)
class PinResult:
    """Whether a pin is complete, and the keyed ids of a vault pin's part the site does
    not hold (None: the site did not say; ask `has`)."""

    complete: bool
    missing: list[bytes] | None


@dataclass(frozen=True)
class MoverSession:
    """Where and with which secret a site's mover serves one pull."""

    host: str
    port: int
    secret: str

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "secret": self.secret}


@dataclass(frozen=True)
class PullStats:
    """What one `/v1/mover/pull` moved."""

    source: str
    bytes: int
    chunks: int
    seconds: float
    streams: int
    retries: int
    requested: int
    skipped: int
    committed: int
    deltas: int = 0
    """Chunks that crossed the wire as deltas against a base the site held."""


@dataclass(frozen=True)
class Health:
    """A site's unauthenticated health answer."""

    status: str
    site: str
    entity: str
    primary: bool


#: Longest lease a client believes (seconds), whatever a site says.
MAX_LEASE = 60.0


def _lease(data: Any, what: str) -> float | None:
    """The `lease` of an answer: seconds, or None when it brought none."""
    v = data.get("lease") if isinstance(data, dict) else None
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_LEASE:
        raise FormatError(f"{what}: lease must be 0 to {MAX_LEASE} seconds in the site's "
                          f"answer, not {v!r}")
    return float(v)


def _stat(data: Any, what: str) -> Stat:
    try:
        return stat_from_wire(data)
    except ValueError as e:
        raise FormatError(f"{what}: malformed stat in the site's answer: {e}") from None


class SiteClient:
    """Typed calls to one site, authenticated with entity `keys` or a `token`."""

    def __init__(self, base_url: str, keys: EntityKeys | None = None, token: str | None = None,
                 *, timeout: float = 30.0, **options: Any) -> None:
        """`options` go to the HttpClient below (the one place a site connection is
        made: transport options such as TLS trust belong here) and to `with_timeout`."""
        self.options = options
        self.http = HttpClient(base_url, keys=keys, token=token, timeout=timeout, **options)
        self.meter: LinkMeter | None = None
        """Where the chunk answers (`get`) are measured, if anywhere."""

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def close(self) -> None:
        """Close this thread's connection."""
        self.http.close()

    def __enter__(self) -> SiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_timeout(self, timeout: float) -> SiteClient:
        """Another client of the same site whose answers may take `timeout` seconds
        (a reconcile round or a mover pull moves data); close it after use."""
        return SiteClient(self.base_url, self.http.keys, self.http.token, timeout=timeout,
                          **self.options)

    def call(self, method: str, path: str, payload: Any = None, *,
             query: Mapping[str, str] | None = None, body: bytes | None = None,
             content_type: str = "application/json") -> Any:
        """One request (JSON or raw `body`): the decoded answer; errors as gfs.errors."""
        try:
            return self.http.call(method, path, payload, query=query, body=body,
                                  content_type=content_type)
        except UnavailableError as e:
            raise SiteUnavailableError(self.base_url, str(e), e.status, e.code) from e

    def _json(self, method: str, path: str, payload: Any = None, *,
              query: Mapping[str, str] | None = None) -> dict[str, Any]:
        out = self.call(method, path, payload, query=query)
        if not isinstance(out, dict):
            raise FormatError(f"{method} {self.base_url}{path}: the answer is not a JSON "
                              "object")
        return out

    # -- health -------------------------------------------------------------------------
    def health(self) -> Health:
        d = self._json("GET", "/v1/health")
        return Health(str(d["status"]), str(d["site"]), str(d["entity"]), bool(d["primary"]))

    def status(self) -> Record:
        """Site, entity, region, primary, pools (with use) and, for the entity, rules."""
        return self._json("GET", "/v1/status")

    # -- namespace ------------------------------------------------------------------------
    def stat(self, path: str) -> Stat:
        return self.stat_leased(path)[0]

    def stat_leased(self, path: str, lease: str | None = None) -> tuple[Stat, float | None]:
        """The stat of `path` and, asked with `lease` (the holder id of the caller's
        notice stream, gfs.federation.notices), the seconds of the lease granted."""
        q = {"path": path} | ({"lease": lease} if lease else {})
        d = self._json("GET", "/v1/ns/stat", query=q)
        return _stat(d, path), _lease(d, path)

    def list_dir(self, path: str, *, if_version: int | None = None,
                 mirror: bool = False, xattrs: bool = False,
                 lease: str | None = None) -> Listing:
        """Directory `path` with every entry's full stat, in name order; with
        `if_version`, `entries` is None if the directory's version is still that. With
        `mirror`, as the mirrors a rule keeps here hold it (what they replicate); with
        `xattrs`, every entry's extended attributes too (one request in all)."""
        q = {"path": path}
        if if_version is not None:
            q["if_version"] = str(if_version)
        if mirror:
            q["mirror"] = "1"
        if xattrs:
            q["xattrs"] = "1"
        if lease:
            q["lease"] = lease
        d = self._json("GET", "/v1/ns/list", query=q)
        top = _stat(d["dir"], path)
        if d.get("unchanged"):
            return Listing(top, None, lease=_lease(d, path))
        entries = [_stat(e, path) for e in d["entries"]]
        attrs = None if not xattrs else {
            st.path: {k: base64.b64decode(v) for k, v in e.get("xattrs", {}).items()}
            for st, e in zip(entries, d["entries"], strict=True)}
        return Listing(top, entries, attrs, _lease(d, path))

    def ls(self, path: str) -> list[Stat]:
        """The entries of directory `path` (a file: itself)."""
        entries = self.list_dir(path).entries
        assert entries is not None
        return entries

    def manifest(self, path: str, *, mirror: bool = False,
                 if_version: int | None = None, lease: str | None = None) -> SiteManifest:
        """The file's manifest (from a mirror a rule keeps there, with `mirror`); with
        `if_version`, only the stat and `unchanged` if the file is still at that version
        (a site that does not know the parameter sends the whole manifest)."""
        q = {"path": path} | ({"mirror": "1"} if mirror else {})
        if if_version is not None:
            q["if_version"] = str(if_version)
        if lease:
            q["lease"] = lease
        d = self._json("GET", "/v1/ns/manifest", query=q)
        st, sites = _stat(d["stat"], path), [str(s) for s in d["sites"]]
        ttl = _lease(d, path)
        if d.get("unchanged") is True and if_version is not None:
            return SiteManifest(st, [], sites, unchanged=True, lease=ttl)
        return SiteManifest(st, [(r.id, r.length) for r in refs_from_wire(d["chunks"])],
                            sites, lease=ttl)

    def read(self, path: str, start: int = 0, end: int | None = None, *,
             version: int | None = None) -> bytes:
        """Bytes [start, end) of file `path` (checked against the caller's grants at the
        primary; at most 64 MiB per call); with `version`, ApiError 409
        `version_changed` if the file has another version now."""
        q = {"path": path}
        if start:
            q["start"] = str(start)
        if end is not None:
            q["end"] = str(end)
        if version is not None:
            q["version"] = str(version)
        data = self.call("GET", "/v1/ns/read", query=q)
        return data if isinstance(data, bytes) else str(data).encode()

    def write(self, path: str, data: bytes, *, xattrs: Mapping[str, bytes] | None = None,
              keyed: Mapping[str, bytes] | None = None) -> Stat:
        """Create or replace file `path` with `data` in one request (grantees); with
        `xattrs` and `keyed` (stored as "VERSION VALUE"), its attributes replaced in the
        same commit."""
        query = {"path": path}
        attrs = commit_attrs_to_wire(xattrs, keyed)
        if attrs:
            query["attrs"] = json.dumps(attrs, separators=(",", ":"))
        return _stat(self.call("POST", "/v1/ns/write", body=bytes(data), query=query,
                               content_type="application/octet-stream"), path)

    def commit(self, path: str, refs: Sequence[ChunkRef], mode: int | None = None, *,
               xattrs: Mapping[str, bytes] | None = None,
               keyed: Mapping[str, bytes] | None = None) -> Stat:
        """Commit a manifest of chunks stored at the site (the owner entity only); with
        `xattrs` and `keyed`, the file's attributes replaced in the same commit."""
        body: dict[str, Any] = {"path": path, "chunks": refs_to_wire(refs),
                                **commit_attrs_to_wire(xattrs, keyed)}
        if mode is not None:
            body["mode"] = mode
        return _stat(self._json("POST", "/v1/ns/commit", body), path)

    def concat(self, path: str, sources: Sequence[str], remove: Sequence[str] = (), *,
               xattrs: Mapping[str, bytes] | None = None,
               keyed: Mapping[str, bytes] | None = None) -> Stat:
        """Create or replace `path` with the files `sources` joined and remove `remove`,
        in one manifest commit at the primary (no data sent; any caller that may write
        `path` and `remove` and read `sources`); with `xattrs` and `keyed` (stored as
        "VERSION VALUE"), the file's attributes replaced in the same commit."""
        body: dict[str, Any] = {"path": path, "sources": list(sources),
                                "remove": list(remove), **commit_attrs_to_wire(xattrs, keyed)}
        return _stat(self._json("POST", "/v1/ns/concat", body), path)

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> Stat:
        return _stat(self._json("POST", "/v1/ns/mkdir", {"path": path, "parents": parents,
                                                         "exist_ok": exist_ok}), path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._json("POST", "/v1/ns/remove", {"path": path, "recursive": recursive})

    def rename(self, src: str, dst: str) -> None:
        self._json("POST", "/v1/ns/rename", {"src": src, "dst": dst})

    def symlink(self, path: str, target: str) -> Stat:
        return _stat(self._json("POST", "/v1/ns/symlink", {"path": path, "target": target}),
                     path)

    def mknod(self, path: str, kind: str, mode: int) -> Stat:
        """Create FIFO or socket `path` (the sites make no device nodes)."""
        return _stat(self._json("POST", "/v1/ns/mknod",
                                {"path": path, "kind": kind, "mode": mode}), path)

    def setattr(self, path: str, *, mode: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None) -> Stat:
        """Set the mode and/or times of `path` (None leaves one as it is)."""
        body: dict[str, Any] = {"path": path}
        for k, v in (("mode", mode), ("atime_ns", atime_ns), ("mtime_ns", mtime_ns)):
            if v is not None:
                body[k] = v
        return _stat(self._json("POST", "/v1/ns/setattr", body), path)

    def xattrs(self, path: str) -> dict[str, bytes]:
        d = self._json("GET", "/v1/ns/xattrs", query={"path": path})["xattrs"]
        try:
            return {str(k): base64.b64decode(v, validate=True) for k, v in d.items()}
        except (ValueError, TypeError) as e:
            raise FormatError(f"{path}: malformed xattrs in the site's answer: {e}") from None

    def set_xattrs(self, path: str, values: Mapping[str, bytes], *,
                   replace_all: bool = False) -> Stat:
        body = {"path": path, "replace_all": replace_all,
                "set": {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}}
        return _stat(self._json("POST", "/v1/ns/xattrs", body), path)

    def du(self, path: str) -> DuReport:
        d = self._json("GET", "/v1/ns/du", query={"path": path})
        try:
            return DuReport(str(d["path"]), *(int(d[k]) for k in (
                "files", "dirs", "symlinks", "chunks", "logical_bytes", "unique_bytes",
                "stored_bytes")))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: malformed du report in the site's answer: {e}") \
                from None

    def visible(self) -> Visible:
        """The path prefixes of the site's entity the caller may read."""
        d = self._json("GET", "/v1/ns/visible")
        return Visible(str(d["entity"]), [str(p) for p in d["prefixes"]])

    # -- chunks -------------------------------------------------------------------------
    def has(self, cids: Sequence[bytes], *, owner: str | None = None,
            whole: bool = False) -> list[bool]:
        """Whether the site holds each chunk (of `owner`: keyed ids in its vault; `whole`:
        and holds it whole, not as a sealed delta, so it may be a delta's base)."""
        out: list[bool] = []
        for i in range(0, len(cids), MAX_IDS):
            body: dict[str, Any] = {"ids": ids_to_wire(cids[i:i + MAX_IDS])}
            if owner is not None:
                body["owner"] = owner
            if whole:
                body["whole"] = True
            out += [bool(x) for x in self._json("POST", "/v1/chunks/has", body)["have"]]
        return out

    def get(self, cids: Sequence[bytes], *, owner: str | None = None,
            path: str | None = None) -> list[bytes | None]:
        """The stored blobs of `cids` (at most MAX_IDS), None where the site has none;
        the caller verifies them. With `path`, chunks of that file (a grantee's or a
        prefix token's read, at the primary)."""
        return [None if v is None else bytes(v)
                for v in self.get_views(cids, owner=owner, path=path)]

    def get_views(self, cids: Sequence[bytes], *, owner: str | None = None,
                  path: str | None = None) -> list[memoryview | None]:
        """`get`, each blob a view into the one answer body (no copy per blob: for a
        reader that decodes or copies what it keeps)."""
        if len(cids) > MAX_IDS:
            raise ValueError(f"at most {MAX_IDS} chunk ids per get, not {len(cids)}")
        body: dict[str, Any] = {"ids": ids_to_wire(cids)}
        if owner is not None:
            body["owner"] = owner
        if path is not None:
            body["path"] = path
        data = self.call("POST", "/v1/chunks/get", body)
        timing = self.http.last_timing()
        if self.meter is not None and timing is not None:
            self.meter.observe(*timing, len(cids))
        frames = frame_views(data if isinstance(data, bytes) else b"", limit=len(cids))
        got: list[memoryview | None] = [f if len(f) else None for f in frames]
        return got + [None] * (len(cids) - len(got))

    def put(self, blobs: Iterable[bytes], *, owner: str | None = None,
            replace: bool = False) -> PutResult:
        """Store blobs (verified by the site; `owner`: another entity's encrypted blobs
        under a storage agreement; `replace`: repair damaged copies)."""
        q: dict[str, str] = {}
        if owner is not None:
            q["owner"] = owner
        if replace:
            q["replace"] = "1"
        d = self.call("POST", "/v1/chunks/put", body=pack_frames(blobs), query=q or None,
                      content_type="application/octet-stream")
        return PutResult(int(d["stored"]), int(d["present"]))

    # -- grants, rules, pins ------------------------------------------------------------
    def grants(self) -> list[Record]:
        return list(self._json("GET", "/v1/grants")["grants"])

    def grant(self, pattern: str, to: str, mode: str) -> Record:
        return self._json("POST", "/v1/grants", {"pattern": pattern, "to": to, "mode": mode})

    def revoke(self, grant_id: str) -> Record:
        return self._json("DELETE", f"/v1/grants/{grant_id}")

    def rules(self) -> list[Record]:
        return list(self._json("GET", "/v1/rules")["rules"])

    def rule_add(self, pattern: str, copies: int, where: str = "",
                 lifetime: float | None = None) -> Record:
        body: dict[str, Any] = {"pattern": pattern, "copies": copies, "where": where}
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self._json("POST", "/v1/rules", body)

    def rule_rm(self, rule_id: str) -> Record:
        return self._json("DELETE", f"/v1/rules/{rule_id}")

    def reconcile(self, *, verify: bool = False) -> list[Record]:
        """Evaluate the entity's rules now (use `with_timeout`: a round moves data)."""
        return list(self._json("POST", "/v1/rules/reconcile", {},
                               query={"verify": "1"} if verify else None)["rules"])

    def pin(self, owner: str, rule: str, body: Mapping[str, Any]) -> bool:
        """Pin chunks for `rule` (`body` as the spec's PUT /v1/pins); whether the pin is
        complete (a batched vault pin completes with its last batch)."""
        return self.pin_vault(owner, rule, body).complete

    def pin_vault(self, owner: str, rule: str, body: Mapping[str, Any]) -> PinResult:
        """`pin`, with the keyed ids of a vault pin's part that the site does not hold
        (None from a site that does not say)."""
        d = self._json("PUT", f"/v1/pins/{owner}/{rule}", dict(body))
        if d.get("missing") is None:
            return PinResult(bool(d["complete"]), None)
        try:
            missing = parse_ids(d, "missing")
        except BadRequestError as e:
            raise FormatError(f"PUT {self.base_url}/v1/pins/{owner}/{rule}: malformed "
                              f"answer: {e}") from None
        return PinResult(bool(d["complete"]), missing)

    def mirror_changed(self, owner: str, rule: str, digests: Mapping[str, str]) -> list[str]:
        """Which files (path -> `wire.manifest_digest`) the mirror of `rule` here lacks or
        holds otherwise (at most MAX_IDS files per call)."""
        out: list[str] = []
        items = [[f, d] for f, d in digests.items()]
        for i in range(0, len(items), MAX_IDS):
            d = self._json("POST", f"/v1/pins/{owner}/{rule}/compare",
                           {"files": items[i:i + MAX_IDS]})
            out += [str(f) for f in d["changed"]]
        return out

    def mirror_grants(self, signed: Mapping[str, str]) -> Record:
        """Push the primary's signed grant set to this mirror (gfs.federation.grant_mirror)."""
        return self._json("PUT", "/v1/grants/mirror", dict(signed))

    def unpin(self, owner: str, rule: str) -> bool:
        return bool(self._json("DELETE", f"/v1/pins/{owner}/{rule}")["unpinned"])

    def gc(self) -> Record:
        return self._json("POST", "/v1/gc", {})

    # -- storage agreements and the vault -----------------------------------------------
    def agreements(self) -> list[Record]:
        return list(self._json("GET", "/v1/agreements")["agreements"])

    def agreement_add(self, to: str, quota: int, lifetime: float | None = None) -> Record:
        body: dict[str, Any] = {"to": to, "quota": quota}
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self._json("POST", "/v1/agreements", body)

    def agreement_rm(self, agreement_id: str) -> Record:
        return self._json("DELETE", f"/v1/agreements/{agreement_id}")

    def vault(self) -> list[Record]:
        return list(self._json("GET", "/v1/vault")["owners"])

    # -- mover ----------------------------------------------------------------------------
    def mover_session(self) -> MoverSession:
        d = self._json("POST", "/v1/mover/session", {})
        return MoverSession(str(d["host"]), int(d["port"]), str(d["secret"]))

    def mover_pull(self, source: str | MoverSession, cids: Sequence[bytes], *,
                   streams: int = 4) -> PullStats:
        """Have the site pull `cids` (at most MAX_IDS) from `source` (a site name or a
        mover session) through the native mover."""
        src: Any = source if isinstance(source, str) else source.to_wire()
        d = self._json("POST", "/v1/mover/pull", {"source": src, "ids": ids_to_wire(cids),
                                                  "streams": streams})
        return PullStats(str(d["source"]), int(d["bytes"]), int(d["chunks"]),
                         float(d["seconds"]), int(d["streams"]), int(d["retries"]),
                         int(d["requested"]), int(d["skipped"]), int(d["committed"]),
                         int(d.get("deltas", 0)))


__all__ = ["Health", "Listing", "MoverSession", "PullStats", "PutResult", "Record",
           "SiteClient", "SiteManifest", "SiteUnavailableError", "Visible"]
