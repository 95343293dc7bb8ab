"""A site's state: its store, keys, configuration, grants, rules, pins, vault and peer
key cache — everything the HTTP handlers (gfs.federation.site_handlers) call, no
aiohttp application. Blocking by nature (LMDB, pools, the write lock): handlers call
it from a thread pool."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gfs import delta_transfer, namespace, paths
from gfs.accesslog import AccessLog
from gfs.client import Client
from gfs.codec import (
    check_encrypted_blob,
    decode_blob,
    parse_blob_header,
    sealed_bases,
)
from gfs.errors import (
    CorruptChunkError,
    HutongError,
    InvalidPathError,
    NotADirError,
    NotFoundError,
    StateError,
)
from gfs.federation import certs, ids
from gfs.federation.auth import (
    SKEW,
    AuthError,
    EntityKeys,
    Issuer,
    NonceCache,
    Token,
    audience_of,
    bearer_claims,
    public_key,
    verify_request,
)
from gfs.federation.grant_mirror import sign_grants, verify_grants
from gfs.federation.http import (
    ApiError,
    BadRequestError,
    HttpClient,
    Metrics,
)
from gfs.federation.site_client import SiteClient
from gfs.federation.site_lock import WriteLock
from gfs.federation.vault import Vault
from gfs.federation.wire import (
    FRAME,
    check_name,
    glob_match,
    literal_prefix,
    manifest_digest,
    pack_frames,
)
from gfs.group_commit import GroupCommitter
from gfs.meta import ChunkRef, Inode, Kind, LmdbEngine, Manifest, ReadTxn, WriteTxn
from gfs.mover import (
    PIN_SECONDS,
    ChunksUnavailableError,
    MoverAuthError,
    MoverError,
    TransferStats,
)
from gfs.namespace_api import Stat, stat_to_wire
from gfs.paths import covers
from gfs.read.served import frame_sizes, stored_blob, stored_frames
from gfs.schema import Schema, load
from gfs.store import Prepared, pin_chunks

log = logging.getLogger("gfs.federation.site")
#: Where a mirror keeps the signed grant set its primary pushed (gfs.federation.grant_mirror).
MIRROR_GRANTS_KEY = b"mirror-grants:set"
PULL_WORKERS = 4
"""Mover pulls a site runs at once (others wait for a thread)."""
KEY_TTL = 60.0
SITE_FILE = "site.json"


class NotPrimaryError(ApiError):
    """A namespace request reached a site that is not its entity's primary."""


# -- the site ------------------------------------------------------------------------------

#: the route of the Prometheus metrics (authenticated: `Site.check_metrics`)
METRICS_PATH = "/metrics"
DASHBOARD_API = "/dashboard/api/"
"""The site dashboard's JSON API (gfs.gateway.daemon_dashboard), which metrics tokens read."""


@dataclass
class Principal:
    """Who is asking: an entity (signed request) or a token of an entity."""

    entity: str
    token: Token | None = None

    @property
    def entity_wide(self) -> bool:
        """Signed by the entity, or a token whose prefix is the entity's whole subtree."""
        return self.token is None or self.token.prefix.rstrip("/") == f"/{self.entity}"


class SiteConfig(Schema):
    """What `site.json` in the state directory says about the site."""

    name: str
    entity: str
    region: str
    industry: str
    registry: str
    primary: bool

    @classmethod
    def load(cls, state: Path) -> SiteConfig:
        path = state / "federation" / SITE_FILE
        if not path.exists():
            raise StateError(f"{state} is not a site; create it with `hutong site init`")
        return load(cls, path, what="site file")

    def save(self, state: Path) -> None:
        p = state / "federation" / SITE_FILE
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.model_dump(), indent=1))
        os.replace(tmp, p)


class Site:
    """A site's state: its store, keys, configuration, vault and peer key cache."""

    def __init__(self, state: str | os.PathLike[str], *, registry: str | None = None,
                 key_ttl: float = KEY_TTL) -> None:
        self.state = Path(state)
        self.key_ttl = key_ttl
        """Seconds a peer's registry record (key, revocations) is cached."""
        self.config = SiteConfig.load(self.state)
        if registry:
            self.config.registry = registry
        self.keys = EntityKeys.load(self.state / "federation")
        self.client = Client(self.state)
        self.vault = Vault(self.state / "vault")
        self.registry = HttpClient(self.config.registry, keys=self.keys, timeout=10)
        self.nonces = NonceCache()
        self.metrics = Metrics("hutong_site")
        self.endpoint = ""
        self.mover_address: tuple[str, int] | None = None
        self.mover_secret = secrets.token_bytes(32)
        self._records: dict[str, tuple[dict[str, Any], float]] = {}
        self.clock_skew = 0.0
        """Registry clock minus this site's, measured at the last heartbeat (seconds)."""
        self._keys_lock = threading.Lock()
        self.write_lock = WriteLock()
        self.pulls = ThreadPoolExecutor(max_workers=PULL_WORKERS,
                                        thread_name_prefix="hutong-pull")
        """Threads of `/v1/mover/pull` (a stalled source must not take the API's)."""
        self.metrics.gauges["vault_bytes"] = lambda: float(self.vault.usage())
        self._puts: GroupCommitter[list[tuple[ChunkRef, bytes]]] = GroupCommitter(
            self._store_puts, name="hutong-site-puts")
        """Chunk puts arriving together are stored by one session (`put_plain`)."""
        self.access = AccessLog(self.state)
        """Every request answered, appended to STATE/log/access.jsonl (`hutong log`)."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def entity(self) -> str:
        return self.config.entity

    @property
    def grants_leases(self) -> bool:
        """Whether this daemon promises open leases (docs/leases.md): only where every
        change of its namespace passes through it, i.e. its entity's primary on an
        embedded store. A mirror's copy changes by replication, and a namespace on a
        database server shared with other daemons changes through them too: neither
        change could break this daemon's leases."""
        return self.config.primary and isinstance(self.client.engine, LmdbEngine)

    def close(self) -> None:
        self.pulls.shutdown(wait=True, cancel_futures=True)
        self.registry.close()
        self._puts.close()
        self.client.close()
        self.access.close()

    # -- registry --------------------------------------------------------------
    def entity_record(self, entity: str) -> dict[str, Any]:
        """The registry's record of `entity` (key, revoked tokens), cached for KEY_TTL s.
        For this site's own entity an unreachable registry gives the last record known
        (or none): its own key is local."""
        with self._keys_lock:
            hit = self._records.get(entity)
        if hit is not None and time.monotonic() - hit[1] < self.key_ttl:
            return hit[0]
        try:
            rec = dict(self.registry.call("GET", f"/v1/entities/{entity}"))
        except HutongError as e:
            if getattr(e, "status", 0) == 404 or isinstance(e, NotFoundError):
                raise AuthError(f"entity {entity!r} is not registered") from None
            if entity != self.entity:
                raise
            log.warning("site %s: registry unreachable for the record of %s: %s", self.name,
                        entity, e)
            return hit[0] if hit is not None else {}
        with self._keys_lock:
            self._records[entity] = (rec, time.monotonic())
        return rec

    def peer_key(self, entity: str) -> Ed25519PublicKey:
        """The public key the registry publishes for `entity` (cached for KEY_TTL s)."""
        if entity == self.entity:
            return self.keys.private.public_key()
        return public_key(self.entity_record(entity)["public_key"])

    def pools(self) -> list[dict[str, Any]]:
        used: dict[int, int] = {}
        with self.client.engine.read() as txn:
            for p in txn.iter_packs():
                used[p.pool] = used.get(p.pool, 0) + p.size
            recs = list(txn.iter_pools())
        vault = self.vault.usage() if self.vault.root.exists() else 0
        return [{"name": r.name, "tier": r.tier, "capacity": r.capacity or (1 << 40),
                 "used": used.get(r.id, 0) + (vault if i == 0 else 0)}
                for i, r in enumerate(recs)]

    def register(self) -> dict[str, Any]:
        """Register (or refresh) the entity and this site at the registry."""
        body = {"name": self.entity, "industry": self.config.industry,
                "region": self.config.region, "public_key": self.keys.public_b64,
                **certs.ca_fields(self.keys)}
        self.registry.call("POST", "/v1/entities", body)
        mover = (f"{self.mover_address[0]}:{self.mover_address[1]}"
                 if self.mover_address else None)
        return dict(self.registry.call("PUT", f"/v1/sites/{self.name}", {
            "entity": self.entity, "region": self.config.region, "endpoint": self.endpoint,
            "mover": mover, "primary": self.config.primary, "pools": self.pools()}))

    def heartbeat(self) -> None:
        """Report usage; measure this site's clock against the registry's."""
        t0 = time.time()
        health = self.registry.call("GET", "/v1/health")  # unsigned: works with any clock
        skew = float(health["time"]) - (t0 + time.time()) / 2
        if abs(skew) > SKEW >= abs(self.clock_skew):
            log.warning("site %s: clock differs from the registry's by %.0f s; refusing "
                        "tokens and signatures until it is fixed", self.name, skew)
        self.clock_skew = skew
        used = {p["name"]: p["used"] for p in self.pools()}
        self.registry.call("POST", f"/v1/sites/{self.name}/heartbeat", {"used": used})

    # -- authorisation -----------------------------------------------------------
    def principal(self, headers: Mapping[str, str], method: str, path_qs: str) -> Principal:
        """Authenticate a request (`method`, `path_qs`) on its `headers` alone (token or
        signature; a signed body is checked as it is read); deny by default."""
        if abs(self.clock_skew) > SKEW:
            raise AuthError(f"the clock of site {self.name} differs from the registry's by "
                            f"{self.clock_skew:.0f} s (more than {SKEW}); it cannot judge "
                            "expiry until its clock is fixed", 503, "clock_skew")
        claims = bearer_claims(
            headers, lambda iss: Issuer(self.peer_key(iss), self.entity_record(iss)))
        if claims is not None:
            where = path_qs.split("?", 1)[0]
            if claims.scope == "metrics" and where != METRICS_PATH and \
                    not where.startswith(DASHBOARD_API):
                raise AuthError(f"a metrics token of {claims.sub!r} reads {METRICS_PATH} "
                                f"and {DASHBOARD_API} only; use a read or write token", 403,
                                "forbidden")
            return Principal(claims.iss, claims)
        entity = headers.get("X-Hutong-Entity")
        if entity is None:
            raise AuthError("authentication required: sign the request with an entity key "
                            "or send a token (Authorization: Bearer)")
        try:
            ids.check_name(entity, "X-Hutong-Entity")
        except ids.IdentifierError as e:
            raise AuthError(str(e)) from None
        if not self.endpoint:
            raise AuthError(f"site {self.name} is starting; retry", 503, "starting")
        who = verify_request(headers, method, path_qs,
                             audience_of(self.endpoint), self.peer_key(entity), self.nonces)
        return Principal(who)

    def grants(self) -> list[dict[str, Any]]:
        with self.client.engine.read() as txn:
            return [json.loads(v) for _, v in txn.iter_values("rules", b"grant:")]

    def check_path(self, p: Principal, path: str, write: bool) -> str:
        """The normalised `path` if `p` may read (or write) it here; else AuthError."""
        if not isinstance(path, str):
            raise BadRequestError("path must be a string")
        norm = paths.normalize(path)
        parts = paths.split(norm)
        if not parts or parts[0] != self.entity:
            raise AuthError(f"path {norm!r} is outside /{self.entity}, the only subtree this "
                            "site serves", 403, "path_outside_root")
        if not self.config.primary:
            raise NotPrimaryError(f"site {self.name} is not the primary of {self.entity}; ask "
                                  "the registry for the primary", 421, "not_primary")
        what = "write" if write else "read"
        if p.token is not None and not p.token.allows(norm, write):
            raise AuthError(f"token of {p.token.sub!r} does not allow {what} on {norm!r} "
                            f"(scope {p.token.scope}, prefix {p.token.prefix})", 403,
                            "forbidden")
        if p.entity == self.entity:
            return norm
        for g in self.grants():
            if g["to"] == p.entity and glob_match(g["pattern"], norm) and (
                    not write or g["mode"] == "write"):
                return norm
        raise AuthError(f"entity {p.entity!r} has no {what} grant on {norm!r}", 403,
                        "forbidden")

    def visible(self, p: Principal) -> list[str]:
        """The path prefixes of this site's entity that `p` may read: `/E` for the entity
        itself, the fixed leading parts of its grants' patterns for a grantee, each cut
        to a token's prefix; [] for none (docs/openapi/site.yaml, /v1/ns/visible)."""
        if not self.config.primary:
            raise NotPrimaryError(f"site {self.name} is not the primary of {self.entity}; ask "
                                  "the registry for the primary", 421, "not_primary")
        if p.entity == self.entity:
            cands = [f"/{self.entity}"]
        else:
            cands = [literal_prefix(g["pattern"]) for g in self.grants()
                     if g["to"] == p.entity]
        out: set[str] = set()
        for c in cands:
            if p.token is not None and not covers(p.token.prefix, c):
                tp = paths.normalize(p.token.prefix)
                if not covers(c, tp):
                    continue
                c = tp  # the token reaches only part of what the grant shows
            out.add(c)
        return sorted(c for c in out if not any(o != c and covers(o, c) for o in out))

    def list_access(self, p: Principal, path: Any) -> tuple[str, Callable[[str], bool] | None]:
        """(normalised `path`, filter of the entries `p` may see) if `p` may stat or list
        `path`: anything it may read (no filter), or, for a grantee, a directory that is
        one of its `visible` prefixes (only the entries its grants match)."""
        try:
            return self.check_path(p, path, write=False), None
        except AuthError:
            norm = paths.normalize(path)
            if p.entity == self.entity or norm not in self.visible(p):
                raise
        pats = [g["pattern"] for g in self.grants() if g["to"] == p.entity]
        tok = p.token

        def keep(entry: str) -> bool:
            return any(glob_match(pt, entry) for pt in pats) and (
                tok is None or tok.allows(entry, False))
        return norm, keep

    def listing(self, path: str, if_version: int | None,
                keep: Callable[[str], bool] | None, xattrs: bool = False) -> dict[str, Any]:
        """The `/v1/ns/list` answer for `path` (one read transaction: the directory's
        stat and its entries agree); `{"dir", "unchanged": true}` when its change
        version is `if_version`. With `xattrs`, each entry carries its extended
        attributes (base64), read in the same transaction."""
        attrs: dict[str, dict[str, bytes]] = {}
        with self.client.engine.read() as txn:
            node = namespace.resolve(txn, path)
            top = Stat.of(path, node)
            if node.kind != Kind.DIR:
                entries = [top]
                nodes = [node]
            elif if_version is not None and node.version == if_version:
                return {"dir": stat_to_wire(top), "unchanged": True}
            else:
                base = path.rstrip("/")
                kids = list(namespace.readdir(txn, node.ino))
                entries = [Stat.of(f"{base}/{name}", kid) for name, kid in kids]
                nodes = [kid for _, kid in kids]
            if xattrs:
                attrs = {e.path: namespace.get_xattrs(txn, n.ino)
                         for e, n in zip(entries, nodes, strict=True)}
        if keep is not None:
            entries = [e for e in entries if keep(e.path)]
        wire = [stat_to_wire(e) for e in entries]
        if xattrs:
            for w, e in zip(wire, entries, strict=True):
                w["xattrs"] = {k: base64.b64encode(v).decode("ascii")
                               for k, v in sorted(attrs[e.path].items())}
        return {"dir": stat_to_wire(top), "entries": wire}

    @overload
    def change(self, path: str, fn: Callable[[], object]) -> Stat: ...

    @overload
    def change(self, path: None, fn: Callable[[], object]) -> None: ...

    def change(self, path: str | None, fn: Callable[[], object]) -> Stat | None:
        """Run namespace change `fn` under the write lock (blocking: call it from a
        thread); the stat of `path` after it (None: no stat)."""
        with self.write_lock:
            fn()
        return None if path is None else self.client.stat(path)

    def write_file(self, path: str, data: bytes,
                   xattrs: namespace.XattrSource | None = None) -> Stat:
        """Create or replace file `path` with `data`, and with `xattrs` its attributes in
        the same commit; file writes run side by side (the write lock shared: each one's
        chunking, compression and pack writes would otherwise wait for every other's);
        its stat after."""
        with self.write_lock.shared():
            self.client.write_many([(path, data, xattrs)])
        return self.client.stat(path)

    def setattr(self, path: str, mode: int | None, atime_ns: int | None,
                mtime_ns: int | None) -> Stat:
        """Set the mode and times of `path` in one transaction; its new stat."""
        return self.change(path, lambda: self.client.engine.transact(
            lambda txn: namespace.set_attrs(txn, path, mode=mode, atime_ns=atime_ns,
                                            mtime_ns=mtime_ns)))

    def check_file_chunks(self, p: Principal, path: str, cids: list[bytes]) -> None:
        """Chunk reads by a principal that may read file `path` but not every chunk of the
        entity (a grantee, a prefix token): only chunks of the file's current version,
        at the primary (at a mirror: of its mirrored version, for a grant the mirror
        holds); AuthError otherwise. The ids follow from bytes the caller
        may read anyway, so the answer tells nothing of other files."""
        if self.config.primary:
            norm = self.check_path(p, path, write=False)
            _, m = self.manifest(norm)
        else:  # a mirror, for a grantee while the primary is down: the mirrored version
            norm, keep = self.mirror_access(p, path, "chunks")
            if keep is not None:
                raise AuthError(f"{norm} is a directory the grants show, not a file they "
                                "grant", 403, "forbidden")
            _, m = self.mirrored(norm)
        held = {r.id for r in m.chunks}
        stray = [c for c in cids if c not in held]
        if stray:
            raise AuthError(f"{len(stray)} of the chunk ids asked for are not chunks of the "
                            f"current version of {norm} (first {stray[0].hex()}); read "
                            "its manifest again", 403, "forbidden")

    def check_metrics(self, p: Principal) -> None:
        """Only this site's own entity reads its metrics: signed, an entity-wide token, or
        a token of scope `metrics` (made for scrapers: it reads nothing else)."""
        if p.entity != self.entity or not (p.entity_wide or (
                p.token is not None and p.token.scope == "metrics")):
            raise AuthError(f"metrics of site {self.name} are for entity {self.entity!r} "
                            "only: sign the request or send its token (`hutong token mint "
                            "--scope metrics`)", 403, "forbidden")

    def check_owner(self, p: Principal, owner: str, write: bool) -> None:
        """Chunk-level access: only the owner entity itself (signed, or an entity-wide
        token; write needs write scope)."""
        if p.entity != owner or not p.entity_wide or (
                write and p.token is not None and p.token.scope != "write"):
            raise AuthError(f"chunk access for owner {owner!r} needs a request signed by "
                            f"{owner!r} or an entity-wide token of it", 403, "forbidden")

    # -- rules and pins (store side) ---------------------------------------------
    def pin_store(self, owner: str, rule: str, refs: list[ChunkRef],
                  files: list[tuple[str, list[ChunkRef]]] | None = None) -> None:
        """Pin chunks of this site's own store under /.pins/OWNER/RULE (gc keeps them),
        and keep a mirror of the rule's file manifests under /.mirror/RULE/PATH, from
        which reads are served while the primary is down."""
        self.check_refs(refs + [r for _, rs in files or [] for r in rs], "cannot pin")
        path = f"/.pins/{owner}/{rule}"

        def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
            namespace.mkdir(txn, f"/.pins/{owner}", parents=True, exist_ok=True)
            for ref in r:  # the rule's manifest keeps them now, not the transfer's pin
                txn.delete_value("pins", ref.id)
            return namespace.write_file(txn, path, r)

        def mirror(fpath: str) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
            target = f"/.mirror/{rule}{fpath}"

            def act(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
                namespace.mkdir(txn, target.rsplit("/", 1)[0], parents=True, exist_ok=True)
                return namespace.write_file(txn, target, r)
            return act
        with self.write_lock, self.client.store.writer() as s:
            s.add_file(refs, action)
            for fpath, frefs in files or []:
                if paths.split(fpath)[:1] != [owner]:
                    raise BadRequestError(f"mirrored file {fpath!r} is outside /{owner}")
                s.add_file(frefs, mirror(paths.normalize(fpath)))

    def unpin_store(self, owner: str, rule: str) -> bool:
        found = False
        for p in (f"/.pins/{owner}/{rule}", f"/.mirror/{rule}"):
            try:
                self.client.rm(p, recursive=True)
                found = True
            except NotFoundError:
                pass
        return found

    def mirror_digests(self, rule: str, files: Iterable[str]) -> dict[str, str | None]:
        """The manifest digest (`wire.manifest_digest`) of each of `files` in the mirror
        of `rule` kept here, None where it keeps none."""
        out: dict[str, str | None] = {}
        with self.client.engine.read() as txn:
            for f in files:
                try:
                    node = namespace.resolve(txn, f"/.mirror/{rule}{paths.normalize(f)}")
                except (NotFoundError, NotADirError, InvalidPathError):
                    out[f] = None
                    continue
                m = txn.get_manifest(node.ino) if node.kind == Kind.FILE else None
                out[f] = manifest_digest(m.chunks if m else ()) if node.kind == Kind.FILE \
                    else None
        return out

    def mirrored_refs(self, rule: str, same: Mapping[str, str]) -> list[ChunkRef]:
        """The chunks of the files `same` (path -> digest) mirrored here for `rule`; 409
        `mirror_changed` if one is absent or has another digest (the owner then sends
        every file)."""
        changed = [f for f, d in self.mirror_digests(rule, same).items() if d != same[f]]
        if changed:
            raise ApiError(f"{len(changed)} file(s) named unchanged differ from the mirror "
                           f"of rule {rule} here (first: {changed[0]}); send them whole", 409,
                           "mirror_changed")
        refs: dict[bytes, ChunkRef] = {}
        with self.client.engine.read() as txn:
            for f in same:
                node = namespace.resolve(txn, f"/.mirror/{rule}{paths.normalize(f)}")
                m = txn.get_manifest(node.ino)
                for r in m.chunks if m else ():
                    refs.setdefault(r.id, r)
        return list(refs.values())

    @staticmethod
    def _mirror_nodes(txn: ReadTxn, path: str) -> Iterator[Inode]:
        """The inodes of `path` in each rule's mirror kept here (`/.mirror/RULE/PATH`)."""
        try:
            rules = [name for name, _ in txn.list_dir(namespace.resolve(txn, "/.mirror").ino)]
        except NotFoundError:
            return
        for rule in rules:
            try:
                yield namespace.resolve(txn, f"/.mirror/{rule}{path}")
            except (NotFoundError, NotADirError):
                continue

    # -- grants at mirrors (gfs.federation.grant_mirror) -----------------------------------
    def signed_grants(self) -> dict[str, str]:
        """This primary's grants, signed with the entity's key for its mirrors."""
        return sign_grants(self.keys, self.grants())

    def put_mirror_grants(self, signed: Mapping[str, Any]) -> dict[str, Any]:
        """Keep the signed grant set the primary pushed (checked: signature, entity,
        expiry, and not older than the set held: a replay is 409 `stale_grants`)."""
        if self.config.primary:
            raise BadRequestError(f"site {self.name} is the primary of {self.entity}: it keeps "
                                  "the grants themselves, not a mirrored set")
        doc = verify_grants(signed, self.entity, self.peer_key(self.entity))
        with self.client.engine.write() as txn:
            old = txn.get_value("rules", MIRROR_GRANTS_KEY)
            if old is not None:
                held = json.loads(json.loads(old)["doc"])
                if doc["issued"] < held["issued"]:
                    raise ApiError(f"the grant set was issued before the one site {self.name} "
                                   "holds (a replay); send the current one", 409,
                                   "stale_grants")
            txn.put_value("rules", MIRROR_GRANTS_KEY, json.dumps(
                {"doc": signed["doc"], "sig": signed["sig"]}).encode())
        return {"grants": len(doc["grants"]), "expires": doc["expires"]}

    def mirror_grants(self, grantee: str) -> list[dict[str, Any]]:
        """The grants to `grantee` in the signed set this mirror holds, checked again now
        (an altered or expired set gives none, logged)."""
        with self.client.engine.read() as txn:
            raw = txn.get_value("rules", MIRROR_GRANTS_KEY)
        if raw is None:
            return []
        try:
            doc = verify_grants(json.loads(raw), self.entity, self.peer_key(self.entity))
        except (AuthError, ValueError) as e:
            log.warning("site %s: the mirrored grant set is not usable: %s", self.name, e)
            return []
        return [g for g in doc["grants"] if isinstance(g, dict) and g.get("to") == grantee
                and isinstance(g.get("pattern"), str)]

    def mirror_access(self, p: Principal, raw: Any, what: str
                      ) -> tuple[str, Callable[[str], bool] | None]:
        """(normalised path, filter of entries) for a request to this site's mirrors: the
        owner entity's signed requests see everything; another entity's signed requests
        what the mirrored grants give it, as at the primary (`list_access`); AuthError
        otherwise."""
        if not isinstance(raw, str):
            raise BadRequestError("path must be a string")
        norm = paths.normalize(raw)
        if paths.split(norm)[:1] != [self.entity]:
            raise AuthError(f"path {norm!r} is outside /{self.entity}, the only subtree this "
                            "site mirrors", 403, "path_outside_root")
        if p.token is not None:
            raise AuthError(f"mirrored {what} answer signed requests only (the owner entity's "
                            "and its grantees')", 403, "forbidden")
        if p.entity == self.entity:
            return norm, None
        pats = [str(g["pattern"]) for g in self.mirror_grants(p.entity)]
        if any(glob_match(pt, norm) for pt in pats):
            return norm, None
        if any(literal_prefix(pt) == norm for pt in pats):
            return norm, lambda entry: any(glob_match(pt, entry) for pt in pats)
        raise AuthError(f"entity {p.entity!r} has no grant on {norm!r} that the mirror on "
                        f"site {self.name} holds", 403, "forbidden")

    def mirrored_listing(self, path: str,
                         keep: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """The `/v1/ns/list` answer for directory `path` as this site's mirrors hold it:
        the entries the rules replicate here (newest of each name), as of their last
        reconcile; NotFoundError if no mirror holds that directory."""
        top: Stat | None = None
        entries: dict[str, Stat] = {}
        base = path.rstrip("/")
        with self.client.engine.read() as txn:
            for node in self._mirror_nodes(txn, path):
                if node.kind != Kind.DIR:
                    continue
                if top is None or node.mtime_ns > top.mtime_ns:
                    top = replace(Stat.of(path, node), version=0)  # no revalidation
                for name, kid in namespace.readdir(txn, node.ino):
                    st = Stat.of(f"{base}/{name}", kid)
                    old = entries.get(name)
                    if old is None or st.mtime_ns > old.mtime_ns:
                        entries[name] = st
        if top is None:
            raise NotFoundError(path, f"no mirror of directory {path} on site {self.name}")
        return {"dir": stat_to_wire(top),
                "entries": [stat_to_wire(entries[n]) for n in sorted(entries)
                            if keep is None or keep(entries[n].path)]}

    def mirrored(self, path: str) -> tuple[Stat, Manifest]:
        """The newest mirrored manifest of `path` (kept by the primary's rules)."""
        best: tuple[Stat, Manifest] | None = None
        with self.client.engine.read() as txn:
            for node in self._mirror_nodes(txn, path):
                m = txn.get_manifest(node.ino)
                if node.kind == Kind.FILE and m is not None and (
                        best is None or node.mtime_ns > best[0].mtime_ns):
                    best = (Stat.of(path, node), m)
        if best is None:
            raise NotFoundError(path, f"no mirror of {path} on site {self.name}")
        return best

    # -- mover pulls ------------------------------------------------------------------
    def mover_source(self, source: Any) -> tuple[tuple[str, int], bytes, str]:
        """(address, session secret, label) of a pull's `source`: a site of this entity
        (its session is asked for here, signed) or a session `{host, port, secret}`."""
        if isinstance(source, str):
            return self._site_session(source)
        if isinstance(source, dict):
            host, port, secret = source.get("host"), source.get("port"), source.get("secret")
            if not isinstance(host, str) or not 0 < len(host) <= 255:
                raise BadRequestError("source.host must be a host name or address")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise BadRequestError("source.port must be a port number 1 to 65535")
            if not isinstance(secret, str) or not re.fullmatch(r"(?:[0-9a-f]{2}){16,64}",
                                                               secret):
                raise BadRequestError("source.secret must be the session secret as 32 to 128 "
                                      "lower-case hex digits (POST /v1/mover/session at the "
                                      "source)")
            if (host, port) == self.mover_address:
                raise BadRequestError(f"source is this site's own mover ({host}:{port})")
            return (host, port), bytes.fromhex(secret), f"{host}:{port}"
        raise BadRequestError("field 'source' must be a site name or a mover session "
                              "{host, port, secret}")

    def _site_session(self, name: str) -> tuple[tuple[str, int], bytes, str]:
        check_name(name, "source")
        if name == self.name:
            raise BadRequestError(f"source {name} is this site; pull from another site")
        rec = next((s for s in self.registry.call("GET", "/v1/sites")["sites"]
                    if s["name"] == name), None)
        if rec is None:
            raise BadRequestError(f"source site {name!r} is not registered")
        if rec["entity"] != self.entity:
            raise BadRequestError(f"source site {name} belongs to {rec['entity']!r}; mover "
                                  f"pulls are between sites of {self.entity!r}")
        if not rec.get("mover"):
            raise ApiError(f"source site {name} runs no mover; copy with /v1/chunks/get and "
                           "/v1/chunks/put instead", 409, "no_mover")
        try:
            with SiteClient(str(rec["endpoint"]), keys=self.keys, timeout=10) as peer:
                sess = peer.mover_session()
        except ConnectionError as e:
            raise ApiError(f"source site {name} does not answer: {e}", 502,
                           "source_unreachable") from None
        return (sess.host, sess.port), bytes.fromhex(sess.secret), name

    def pull(self, peer: tuple[str, int], cids: list[bytes], secret: bytes, streams: int,
             label: str) -> TransferStats:
        """`gfs.mover.fetch` of `cids` from `peer` into this site's store: only the chunks
        missing here cross the wire (resume), each verified; new ones are pinned for
        PIN_SECONDS (as `put_plain` pins), until a manifest names them."""
        from gfs.mover import fetch

        try:
            return fetch(self.client, peer, cids, secret, streams=streams)
        except ChunksUnavailableError as e:
            raise ApiError(f"pull from {label}: the source lacks {len(e.ids)} chunk(s) (first "
                           f"{e.ids[0].hex()}); the others were stored", 409,
                           "missing_chunks") from None
        except MoverAuthError as e:
            raise BadRequestError(f"pull from {label}: the source refused the session ({e}); "
                                  "ask it for a new one (POST /v1/mover/session)") from None
        except MoverError as e:
            raise ApiError(f"pull from {label}: {e}", 502, "source_unreachable") from None

    # -- chunks --------------------------------------------------------------------
    def blob(self, cid: bytes) -> bytes | None:
        """The blob of chunk `cid` as a peer takes it (`gfs.read.served.stored_blob`)."""
        return stored_blob(self.client.store, cid)

    def frames(self, cids: list[bytes]) -> tuple[bytes | bytearray, int]:
        """`pack_frames` of the blobs of `cids` as a peer takes them (a /v1/chunks/get
        answer's part) and how many the site holds: one buffer read with one metadata
        transaction, or chunk by chunk where `stored_frames` says so."""
        got = stored_frames(self.client.store, cids, FRAME)
        if got is not None:
            return got
        blobs = [self.blob(c) for c in cids]
        return pack_frames(blobs), sum(b is not None for b in blobs)

    def frame_sizes(self, cids: list[bytes]) -> list[int] | None:
        """Bytes of each chunk's frame in the `frames` of `cids`, before any blob is read
        (`gfs.read.served.frame_sizes`); None where not known ahead."""
        return frame_sizes(self.client.store, cids, FRAME)

    def put_plain(self, blobs: list[bytes]) -> tuple[int, int]:
        """Verify every blob, then store the new ones (refcount 0); (stored, present).
        A delta blob (docs/format.md "Delta transfer") is rebuilt against this site's
        copy of its base and verified; a missing base refuses the whole body."""
        raws: list[tuple[ChunkRef, bytes]] = []
        base = delta_transfer.base_reader(self.client.store)
        for i, b in enumerate(blobs):
            try:
                raw = decode_blob(b, base=base)
            except CorruptChunkError as e:
                raise BadRequestError(f"blob {i} of the body is corrupt: {e}") from None
            except delta_transfer.MissingBaseError as e:
                raise BadRequestError(f"blob {i} of the body (chunk {b[16:32].hex()}) is a "
                                      f"{e}") from None
            raws.append((ChunkRef(b[16:32], len(raw)), raw))
        with self.client.engine.read() as txn:
            new = [(r, raw) for r, raw in raws if not txn.has_chunk(r.id)]
        if new:
            uniq = dict((r.id, (r, raw)) for r, raw in new)
            self._puts.submit(list(uniq.values()))
            return len(uniq), len(blobs) - len(uniq)
        return 0, len(blobs)

    def _store_puts(self, puts: list[list[tuple[ChunkRef, bytes]]]) -> None:
        """Store the chunks of concurrent puts in one write session, so they share a pack
        (one pack per put made 5,781 packs under load), pinned until a manifest commit
        names them."""
        uniq = {r.id: (r, raw) for put in puts for r, raw in put}
        with self.write_lock, self.client.store.writer() as s:
            s.store_prepared(Prepared([r for r, _ in uniq.values()],
                                      [memoryview(raw) for _, raw in uniq.values()],
                                      sum(len(raw) for _, raw in uniq.values())))
            s.commit()
            with self.client.engine.write() as txn:
                pin_chunks(txn, uniq, PIN_SECONDS)

    def repair_plain(self, blobs: list[bytes]) -> tuple[int, int]:
        """Replace this site's copies of chunks whose every copy fails verification with
        `blobs` (verified first); (repaired, left alone)."""
        by_id = {}
        for i, b in enumerate(blobs):
            try:
                by_id[parse_blob_header(b).chunk_id] = b
                decode_blob(b)
            except CorruptChunkError as e:
                raise BadRequestError(f"blob {i} of the body is corrupt: {e}") from None
        with self.write_lock:
            repaired = self.client.store.replace_copies(by_id)
        return repaired, len(blobs) - repaired

    def put_foreign(self, owner: str, blobs: list[bytes],
                    replace: bool = False) -> tuple[int, int]:
        """Keep `owner`'s encrypted blobs (sealed whole, or sealed deltas against bases
        kept here whole), only under a live storage agreement and within its quota;
        (stored, present)."""
        agreement = self.agreement(owner)
        items: list[tuple[bytes, bytes, tuple[bytes, ...]]] = []
        for i, b in enumerate(blobs):
            try:
                items.append((check_encrypted_blob(b).chunk_id, b, sealed_bases(b)))
            except CorruptChunkError as e:
                raise BadRequestError(f"blob {i} of the body is not a valid owner-encrypted "
                                      f"blob: {e}") from None
        stored = self.vault.put_many(owner, items, replace=replace,
                                     quota=int(agreement["quota"]))
        return stored, len(blobs) - stored

    # -- storage agreements (docs/trust.md) -----------------------------------------------
    def agreements(self) -> list[dict[str, Any]]:
        with self.client.engine.read() as txn:
            return [json.loads(v) for _, v in txn.iter_values("rules", b"agreement:")]

    def agreement(self, owner: str) -> dict[str, Any]:
        """The live storage agreement under which this site keeps `owner`'s data; 403
        if there is none (never granted, expired or revoked)."""
        now = time.time()
        for a in self.agreements():
            if a["to"] == owner and (a["expires"] is None or a["expires"] > now):
                return a
        raise AuthError(f"site {self.name} has no storage agreement with {owner!r}; its "
                        f"entity {self.entity!r} grants one with POST /v1/agreements", 403,
                        "no_agreement")

    def replace_agreement(self, rec: dict[str, Any]) -> None:
        """Keep agreement `rec`; one agreement per guest: it replaces the guest's others."""
        with self.client.engine.write() as txn:
            for _, v in list(txn.iter_values("rules", b"agreement:")):
                old = json.loads(v)
                if old["to"] == rec["to"]:
                    txn.delete_value("rules", f"agreement:{old['id']}".encode())
            txn.put_value("rules", f"agreement:{rec['id']}".encode(), json.dumps(rec).encode())

    def live_guests(self) -> set[str]:
        now = time.time()
        return {a["to"] for a in self.agreements()
                if a["expires"] is None or a["expires"] > now}

    # -- namespace --------------------------------------------------------------------
    def manifest(self, path: str) -> tuple[Stat, Manifest]:
        with self.client.engine.read() as txn:
            node = namespace.resolve(txn, path)
            if node.kind != Kind.FILE:
                from gfs.errors import IsADirError
                raise IsADirError(path, "not a regular file")
            m = txn.get_manifest(node.ino) or Manifest(0, ())
            return Stat.of(path, node), m

    def check_refs(self, refs: list[ChunkRef], what: str) -> None:
        """409 if a chunk of `refs` is not stored here, 400 if a length is not the stored
        chunk's (a manifest must describe its chunks exactly)."""
        missing: list[str] = []
        with self.client.engine.read() as txn:
            for r in refs:
                rec = txn.get_chunk(r.id)
                if rec is None:
                    missing.append(r.id.hex())
                elif rec.raw_len != r.length:
                    raise BadRequestError(f"{what}: chunk {r.id.hex()} is {rec.raw_len} bytes, "
                                          f"not {r.length}; send the lengths of the chunks "
                                          "as cut")
        if missing:
            raise ApiError(f"{what}: {len(missing)} chunks are not stored at {self.name} (put "
                           f"them first; first {missing[0]})", 409, "missing_chunks")

    def commit(self, path: str, refs: list[ChunkRef], mode: int | None,
               xattrs: namespace.XattrSource | None = None) -> Stat:
        """Commit a manifest of chunks stored here (with `xattrs`, the file's attributes
        replaced in the same transaction); their upload pins are released in it too (the
        manifest now keeps them from gc)."""
        self.check_refs(refs, f"commit of {path}")

        def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
            for ref in r:
                txn.delete_value("pins", ref.id)
            return namespace.write_file(txn, path, r, mode=mode, xattrs=xattrs)
        with self.write_lock, self.client.store.writer() as s:
            s.add_file(refs, action)
        return self.client.stat(path)

    def replica_sites(self, path: str) -> list[str]:
        out = [self.name]
        for r in self.rules():
            if glob_match(r["pattern"], path):
                out += [s for s in r.get("sites", []) if s not in out]
        return out

    def rules(self) -> list[dict[str, Any]]:
        with self.client.engine.read() as txn:
            return [json.loads(v) for _, v in txn.iter_values("rules", b"rule:")]

    def put_record(self, kind: str, rec: dict[str, Any]) -> None:
        with self.client.engine.write() as txn:
            txn.put_value("rules", f"{kind}:{rec['id']}".encode(), json.dumps(rec).encode())

    def delete_record(self, kind: str, rid: str) -> dict[str, Any]:
        with self.client.engine.write() as txn:
            key = f"{kind}:{rid}".encode()
            raw = txn.get_value("rules", key)
            if raw is None:
                raise ApiError(f"no {kind} {rid!r} at {self.name}", 404, "not_found")
            txn.delete_value("rules", key)
            return dict(json.loads(raw))


