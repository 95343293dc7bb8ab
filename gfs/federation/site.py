"""The site daemon: one entity's metadata (when primary) and its pools' chunks over HTTP.

`Site` holds the state (an embedded store, the entity keys, the vault of other
entities' encrypted blobs); `make_app(site)` builds the aiohttp application
(API: docs/openapi/site.yaml); `hutong site serve` runs it with a mover port,
heartbeats to the registry and the rule reconciler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gfs import namespace, paths
from gfs.client import Client
from gfs.codec import CODEC_DELTA, check_encrypted_blob, decode_blob, parse_blob_header
from gfs.errors import (
    CorruptChunkError,
    HutongError,
    InvalidPathError,
    NotADirError,
    NotFoundError,
    StateError,
)
from gfs.federation import ids
from gfs.federation.auth import (
    SKEW,
    AuthError,
    EntityKeys,
    NonceCache,
    Token,
    audience_of,
    covers,
    public_key,
    token_issuer,
    verify_request,
    verify_token,
)
from gfs.federation.http import (
    MAX_JSON,
    ApiError,
    BadRequestError,
    HttpClient,
    Metrics,
    error_middleware,
    field,
    read_body,
    read_json,
)
from gfs.federation.vault import Vault
from gfs.federation.wire import (
    MAX_BODY,
    check_name,
    glob_match,
    literal_prefix,
    pack_frames,
    parse_ids,
    parse_refs,
    unpack_frames,
)
from gfs.meta import ChunkRef, Kind, Manifest, WriteTxn
from gfs.mover import (
    DEFAULT_STREAMS,
    PIN_SECONDS,
    ChunksUnavailableError,
    MoverAuthError,
    MoverError,
    TransferStats,
)
from gfs.namespace_api import Stat, stat_to_wire
from gfs.packs import pack_key
from gfs.schema import Schema, load, validate
from gfs.store import Prepared, pin_chunks

log = logging.getLogger("gfs.federation.site")
T = TypeVar("T")
PULL_WORKERS = 4
"""Mover pulls a site runs at once (others wait for a thread)."""
KEY_TTL = 60.0
SITE_FILE = "site.json"


class NotPrimaryError(ApiError):
    """A namespace request reached a site that is not its entity's primary."""


# -- the site ------------------------------------------------------------------------------

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
        self.write_lock = threading.Lock()
        self.pulls = ThreadPoolExecutor(max_workers=PULL_WORKERS,
                                        thread_name_prefix="hutong-pull")
        """Threads of `/v1/mover/pull` (a stalled source must not take the API's)."""
        self.metrics.gauges["vault_bytes"] = lambda: float(self.vault.usage())

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def entity(self) -> str:
        return self.config.entity

    def close(self) -> None:
        self.pulls.shutdown(wait=True, cancel_futures=True)
        self.registry.close()
        self.client.close()

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
                "region": self.config.region, "public_key": self.keys.public_b64}
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
    def principal(self, request: web.Request) -> Principal:
        """Authenticate a request on its headers alone (token or signature; a signed body
        is checked as it is read); deny by default."""
        if abs(self.clock_skew) > SKEW:
            raise AuthError(f"the clock of site {self.name} differs from the registry's by "
                            f"{self.clock_skew:.0f} s (more than {SKEW}); it cannot judge "
                            "expiry until its clock is fixed", 503, "clock_skew")
        auth = request.headers.get("Authorization", "")
        if auth:
            if not auth.startswith("Bearer "):
                raise AuthError("Authorization must be 'Bearer TOKEN'")
            tok = auth[7:].strip()
            iss = token_issuer(tok)
            claims = verify_token(tok, self.peer_key(iss))
            if claims.revoked_by(self.entity_record(iss)):
                raise AuthError(f"token {claims.jti or '(no id)'} of {claims.sub!r} was "
                                f"revoked by {iss!r}; ask it for a new one", 401, "revoked")
            return Principal(iss, claims)
        entity = request.headers.get("X-Hutong-Entity")
        if entity is None:
            raise AuthError("authentication required: sign the request with an entity key "
                            "or send a token (Authorization: Bearer)")
        try:
            ids.check_name(entity, "X-Hutong-Entity")
        except ids.IdentifierError as e:
            raise AuthError(str(e)) from None
        if not self.endpoint:
            raise AuthError(f"site {self.name} is starting; retry", 503, "starting")
        who = verify_request(request.headers, request.method, request.path_qs,
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
                keep: Callable[[str], bool] | None) -> dict[str, Any]:
        """The `/v1/ns/list` answer for `path` (one read transaction: the directory's
        stat and its entries agree); `{"dir", "unchanged": true}` when its change
        version is `if_version`."""
        with self.client.engine.read() as txn:
            node = namespace.resolve(txn, path)
            top = Stat.of(path, node)
            if node.kind != Kind.DIR:
                entries = [top]
            elif if_version is not None and node.version == if_version:
                return {"dir": stat_to_wire(top), "unchanged": True}
            else:
                base = path.rstrip("/")
                entries = [Stat.of(f"{base}/{name}", kid)
                           for name, kid in namespace.readdir(txn, node.ino)]
        if keep is not None:
            entries = [e for e in entries if keep(e.path)]
        return {"dir": stat_to_wire(top), "entries": [stat_to_wire(e) for e in entries]}

    def setattr(self, path: str, mode: int | None, atime_ns: int | None,
                mtime_ns: int | None) -> Stat:
        """Set the mode and times of `path` in one transaction; its new stat."""
        with self.write_lock:
            self.client.engine.transact(lambda txn: namespace.set_attrs(
                txn, path, mode=mode, atime_ns=atime_ns, mtime_ns=mtime_ns))
        return self.client.stat(path)

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

    def mirrored(self, path: str) -> tuple[Stat, Manifest]:
        """The newest mirrored manifest of `path` (kept by the primary's rules)."""
        best: tuple[Stat, Manifest] | None = None
        with self.client.engine.read() as txn:
            try:
                rules = [name for name, _ in txn.list_dir(namespace.resolve(txn, "/.mirror").ino)]
            except NotFoundError:
                rules = []
            for rule in rules:
                try:
                    node = namespace.resolve(txn, f"/.mirror/{rule}{path}")
                except (NotFoundError, NotADirError):
                    continue
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
        peer = HttpClient(str(rec["endpoint"]), keys=self.keys, timeout=10)
        try:
            sess = peer.call("POST", "/v1/mover/session", {})
        except ConnectionError as e:
            raise ApiError(f"source site {name} does not answer: {e}", 502,
                           "source_unreachable") from None
        finally:
            peer.close()
        return (str(sess["host"]), int(sess["port"])), bytes.fromhex(sess["secret"]), name

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
        """The blob of chunk `cid` as stored (first readable location), or None. A delta
        chunk is served whole: the peer may not hold its base."""
        with self.client.engine.read() as txn:
            rec = txn.get_chunk(cid)
        if rec is None:
            return None
        if rec.codec == CODEC_DELTA:
            try:
                return self.client.store.read_blob(cid)
            except HutongError:
                return None
        for loc in rec.locations:
            try:
                return bytes(self.client.store.pool(loc.pool).get(
                    pack_key(loc.pack), loc.offset, loc.offset + loc.length))
            except HutongError:
                continue
        return None

    def put_plain(self, blobs: list[bytes]) -> tuple[int, int]:
        """Verify every blob, then store the new ones (refcount 0); (stored, present)."""
        raws: list[tuple[ChunkRef, bytes]] = []
        for i, b in enumerate(blobs):
            try:
                raw = decode_blob(b)
            except CorruptChunkError as e:
                raise BadRequestError(f"blob {i} of the body is corrupt: {e}") from None
            raws.append((ChunkRef(b[16:32], len(raw)), raw))
        with self.client.engine.read() as txn:
            new = [(r, raw) for r, raw in raws if not txn.has_chunk(r.id)]
        if new:
            uniq = dict((r.id, (r, raw)) for r, raw in new)
            with self.write_lock, self.client.store.writer() as s:
                s.store_prepared(Prepared([r for r, _ in uniq.values()],
                                          [memoryview(raw) for _, raw in uniq.values()],
                                          sum(len(raw) for _, raw in uniq.values())))
                s.commit()
                # until the manifest commit names them, a pin keeps them from gc
                with self.client.engine.write() as txn:
                    pin_chunks(txn, uniq, PIN_SECONDS)
            return len(uniq), len(blobs) - len(uniq)
        return 0, len(blobs)

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
        """Keep `owner`'s encrypted blobs, only under a live storage agreement and within
        its quota; (stored, present)."""
        agreement = self.agreement(owner)
        heads = []
        for i, b in enumerate(blobs):
            try:
                heads.append(check_encrypted_blob(b))
            except CorruptChunkError as e:
                raise BadRequestError(f"blob {i} of the body is not a valid owner-encrypted "
                                      f"blob: {e}") from None
        stored = self.vault.put_many(owner, [(h.chunk_id, b) for h, b in
                                             zip(heads, blobs, strict=True)],
                                     replace=replace, quota=int(agreement["quota"]))
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

    def commit(self, path: str, refs: list[ChunkRef], mode: int | None) -> Stat:
        """Commit a manifest of chunks stored here; their upload pins are released in the
        same transaction (the manifest now keeps them from gc)."""
        self.check_refs(refs, f"commit of {path}")

        def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
            for ref in r:
                txn.delete_value("pins", ref.id)
            return namespace.write_file(txn, path, r, mode=mode)
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


# -- HTTP handlers -------------------------------------------------------------------------

SITE_KEY: web.AppKey[Site] = web.AppKey("site", Site)


def _site(request: web.Request) -> Site:
    return request.app[SITE_KEY]


async def _principal(request: web.Request) -> tuple[Site, Principal]:
    """The site and the caller, authenticated on the headers before any body is read."""
    site = _site(request)
    p = await asyncio.get_running_loop().run_in_executor(None, site.principal, request)
    return site, p


async def _json_principal(request: web.Request) -> tuple[Site, Principal, dict[str, Any]]:
    site, p = await _principal(request)
    return site, p, await read_json(request, signed=p.token is None)


async def _get_principal(request: web.Request) -> tuple[Site, Principal]:
    site, p = await _principal(request)
    await read_body(request, MAX_JSON, signed=p.token is None)
    return site, p


def _flag(request: web.Request, name: str) -> bool:
    """A `0`/`1` query flag (absent: 0); BadRequestError for anything else."""
    v = request.query.get(name, "0")
    if v not in ("0", "1"):
        raise BadRequestError(f"query parameter {name!r} must be 0 or 1, not {v!r}")
    return v == "1"


def _owner(site: Site, data: dict[str, Any] | None, query: Any = None) -> str:
    owner = field(data or {}, "owner", str, None) if query is None else query.get("owner")
    return site.entity if owner is None else check_name(owner, "owner")


async def health(request: web.Request) -> web.Response:
    s = _site(request)
    return web.json_response({"status": "ok", "site": s.name, "entity": s.entity,
                              "primary": s.config.primary})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=_site(request).metrics.render(), content_type="text/plain")


async def chunks_has(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    owner = _owner(site, data)
    site.check_owner(p, owner, write=False)
    cids = parse_ids(data)
    if owner == site.entity:
        with site.client.engine.read() as txn:
            have = [txn.has_chunk(c) for c in cids]
    else:
        have = [site.vault.has(owner, c) for c in cids]
    return web.json_response({"have": have})


async def chunks_get(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    owner = _owner(site, data)
    site.check_owner(p, owner, write=False)
    cids = parse_ids(data)

    def read() -> bytes:
        if owner == site.entity:
            blobs = [site.blob(c) for c in cids]
        else:
            blobs = [site.vault.get(owner, c) for c in cids]
        site.metrics.inc("chunks_served_total", sum(b is not None for b in blobs))
        return pack_frames(blobs)
    body = await asyncio.get_running_loop().run_in_executor(None, read)
    site.metrics.inc("chunk_bytes_out_total", len(body))
    return web.Response(body=body, content_type="application/octet-stream")


async def _binary_principal(request: web.Request) -> tuple[Site, Principal, bytes]:
    """The site, the verified caller and the raw body (at most MAX_BODY) of a request."""
    site, p = await _principal(request)
    return site, p, await read_body(request, MAX_BODY, signed=p.token is None)


async def chunks_put(request: web.Request) -> web.Response:
    site, p, body = await _binary_principal(request)
    loop = asyncio.get_running_loop()
    owner = _owner(site, None, request.query)
    site.check_owner(p, owner, write=True)
    blobs = unpack_frames(body)
    replace = _flag(request, "replace")
    if owner == site.entity:
        put = site.repair_plain if replace else site.put_plain
        stored, present = await loop.run_in_executor(None, put, blobs)
    else:
        stored, present = await loop.run_in_executor(None, site.put_foreign, owner, blobs,
                                                     replace)
    site.metrics.inc("chunks_stored_total", stored)
    site.metrics.inc("chunk_bytes_in_total", len(body))
    return web.json_response({"stored": stored, "present": present})


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the default thread pool: handlers never block the event loop on
    the store, LMDB or the write lock."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def _version(request: web.Request) -> int | None:
    v = request.query.get("if_version")
    if v is None:
        return None
    if not v.isdigit() or len(v) > 20:
        raise BadRequestError(f"query parameter 'if_version' must be a directory's change "
                              f"version (a non-negative integer), not {v!r}")
    return int(v)


async def ns_stat(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path, _ = await _run(site.list_access, p, request.query.get("path", ""))
    return web.json_response(stat_to_wire(await _run(site.client.stat, path)))


async def ns_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if_version = _version(request)
    path, keep = await _run(site.list_access, p, request.query.get("path", ""))
    return web.json_response(await _run(site.listing, path, if_version, keep))


async def ns_visible(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    return web.json_response({"entity": site.entity, "prefixes": await _run(site.visible, p)})


async def ns_manifest(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if _flag(request, "mirror"):  # a replica answering for a down primary
        raw = request.query.get("path", "")
        norm = paths.normalize(raw) if isinstance(raw, str) else ""
        site.check_owner(p, paths.split(norm)[0] if norm != "/" else "", write=False)
        if p.token is not None or paths.split(norm)[:1] != [site.entity]:
            raise AuthError("mirrored manifests are for the owner entity's signed requests",
                            403, "forbidden")
        st, m = await asyncio.get_running_loop().run_in_executor(None, site.mirrored, norm)
        return web.json_response({"stat": stat_to_wire(st),
                                  "chunks": [[r.id.hex(), r.length] for r in m.chunks],
                                  "sites": [site.name]})
    path = site.check_path(p, request.query.get("path", ""), write=False)
    st, m = site.manifest(path)
    return web.json_response({"stat": stat_to_wire(st),
                              "chunks": [[r.id.hex(), r.length] for r in m.chunks],
                              "sites": site.replica_sites(path)})


async def ns_read(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = site.check_path(p, request.query.get("path", ""), write=False)
    st, _ = site.manifest(path)
    if st.size > MAX_BODY:
        raise ApiError(f"{path} is {st.size} bytes; read it chunk by chunk", 413, "too_large")
    data = await asyncio.get_running_loop().run_in_executor(None, site.client.read_bytes, path)
    return web.Response(body=data, content_type="application/octet-stream")


async def ns_write(request: web.Request) -> web.Response:
    site, p, body = await _binary_principal(request)
    loop = asyncio.get_running_loop()
    path = site.check_path(p, request.query.get("path", ""), write=True)

    def write() -> Stat:
        with site.write_lock:
            site.client.write_bytes(path, body)
        return site.client.stat(path)
    return web.json_response(stat_to_wire(await loop.run_in_executor(None, write)))


async def ns_mkdir(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    parents = field(data, "parents", bool, False)
    exist_ok = field(data, "exist_ok", bool, False)

    def run() -> Stat:
        with site.write_lock:
            site.client.mkdir(path, parents=parents, exist_ok=exist_ok)
        return site.client.stat(path)
    return web.json_response(stat_to_wire(await _run(run)))


async def ns_remove(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    if path == f"/{site.entity}":
        raise AuthError(f"the entity root {path} cannot be removed", 403, "forbidden")
    recursive = field(data, "recursive", bool, False)

    def run() -> None:
        with site.write_lock:
            site.client.rm(path, recursive=recursive)
    await _run(run)
    return web.json_response({"removed": path})


async def ns_rename(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    src = await _run(site.check_path, p, field(data, "src", str), True)
    dst = await _run(site.check_path, p, field(data, "dst", str), True)
    if src == f"/{site.entity}":
        raise AuthError(f"the entity root {src} cannot be renamed", 403, "forbidden")

    def run() -> None:
        with site.write_lock:
            site.client.mv(src, dst)
    await _run(run)
    return web.json_response({"src": src, "dst": dst})


async def ns_symlink(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    target = field(data, "target", str)

    def run() -> Stat:
        with site.write_lock:
            site.client.symlink(path, target)
        return site.client.stat(path)
    return web.json_response(stat_to_wire(await _run(run)))


async def ns_setattr(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    mode = field(data, "mode", int, None, check=lambda m: 0 <= m <= 0o7777)
    times = [field(data, k, int, None, check=lambda t: 0 <= t < 1 << 63)
             for k in ("atime_ns", "mtime_ns")]
    st = await _run(site.setattr, path, mode, times[0], times[1])
    return web.json_response(stat_to_wire(st))


async def ns_xattrs_get(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), False)
    values = await _run(site.client.xattrs, path)
    return web.json_response({"xattrs": {k: base64.b64encode(v).decode("ascii")
                                         for k, v in sorted(values.items())}})


def _xattr_values(data: dict[str, Any]) -> dict[str, bytes]:
    raw = field(data, "set", dict, {})
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        if not name or "\0" in name or len(name.encode("utf-8", "surrogateescape")) > 255:
            raise BadRequestError(f"xattr name {name[:40]!r} must be 1 to 255 bytes without "
                                  "NUL")
        if not isinstance(value, str):
            raise BadRequestError(f"xattr {name!r}: value must be a base64 string")
        try:
            out[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"xattr {name!r}: value is not valid base64") from None
    return out


async def ns_xattrs_set(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    values = _xattr_values(data)
    replace_all = field(data, "replace_all", bool, False)

    def run() -> Stat:
        with site.write_lock:
            site.client.set_xattrs(path, values, replace_all=replace_all)
        return site.client.stat(path)
    return web.json_response(stat_to_wire(await _run(run)))


async def ns_du(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), False)
    return web.json_response((await _run(site.client.du, path)).to_dict())


async def ns_commit(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = site.check_path(p, field(data, "path", str), write=True)
    # A commit names chunks by id: only a principal that may read every chunk of the
    # entity (signed by it, or an entity-wide token) may, or chunk ids of files outside
    # a token's prefix would be readable through a new file, and the answer would tell
    # whether the entity holds some content.
    if p.entity != site.entity or not p.entity_wide:
        raise AuthError("commit of chunk lists is for the owner entity itself (signed, or an "
                        "entity-wide token); write files with POST /v1/ns/write", 403,
                        "forbidden")
    refs = parse_refs(data)
    mode = field(data, "mode", int, None, check=lambda m: 0 <= m <= 0o7777)
    st = await asyncio.get_running_loop().run_in_executor(None, site.commit, path, refs, mode)
    site.metrics.inc("commits_total")
    return web.json_response(stat_to_wire(st))


def _own(site: Site, p: Principal, primary: bool = True) -> None:
    if p.entity != site.entity or (p.token is not None and (
            p.token.scope != "write" or not p.entity_wide)):
        raise AuthError(f"only entity {site.entity!r} itself (signed, or an entity-wide write "
                        "token) may change grants, rules and agreements", 403, "forbidden")
    if primary and not site.config.primary:
        raise NotPrimaryError(f"site {site.name} is not the primary of {site.entity}", 421,
                              "not_primary")


def _pattern(site: Site, pattern: Any) -> str:
    if not isinstance(pattern, str) or (not pattern.startswith(f"/{site.entity}/") and \
            pattern != f"/{site.entity}"):
        raise AuthError(f"pattern {pattern!r} is outside /{site.entity}", 403,
                        "path_outside_root")
    try:
        paths.normalize(pattern.replace("*", "x").replace("?", "x"))
    except InvalidPathError as e:
        raise BadRequestError(f"pattern {pattern!r} is not a valid path pattern: {e}") \
            from None
    return pattern


async def grants_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the entity itself may list its grants", 403, "forbidden")
    return web.json_response({"grants": site.grants()})


async def grants_add(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    _own(site, p)
    pattern = _pattern(site, field(data, "pattern", str))
    to = field(data, "to", str)
    check_name(to, "grantee")
    mode = field(data, "mode", str, check=lambda m: m in ("read", "write"))
    rec = {"id": secrets.token_hex(4), "pattern": pattern, "to": to, "mode": mode,
           "created": time.time()}
    site.put_record("grant", rec)
    return web.json_response(rec, status=201)


async def grants_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    return web.json_response(site.delete_record("grant", request.match_info["id"]))


async def rules_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the entity itself may list its rules", 403, "forbidden")
    return web.json_response({"rules": site.rules()})


async def rules_add(request: web.Request) -> web.Response:
    from gfs.federation.rules import RuleSpec

    site, p, data = await _json_principal(request)
    _own(site, p)
    spec = validate(RuleSpec, data, where="rule")  # SchemaError: 400, naming the key
    pattern = _pattern(site, spec.pattern)
    rec = {"id": secrets.token_hex(4), "pattern": pattern, "copies": spec.copies,
           "where": spec.where, "expires": time.time() + spec.lifetime if spec.lifetime
           else None, "state": "replicating",
           "reason": "not evaluated yet", "sites": [], "created": time.time()}
    site.put_record("rule", rec)
    return web.json_response(rec, status=201)


async def rules_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    rec = site.delete_record("rule", request.match_info["id"])
    from gfs.federation.rules import unpin_everywhere
    await asyncio.get_running_loop().run_in_executor(None, unpin_everywhere, site, rec)
    return web.json_response(rec)


async def rules_reconcile(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    from gfs.federation.rules import reconcile
    verify = _flag(request, "verify")
    states = await asyncio.get_running_loop().run_in_executor(None, reconcile, site, verify)
    return web.json_response({"rules": states})


async def pins_put(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    owner = _owner(site, None, {"owner": request.match_info["owner"]})
    site.check_owner(p, owner, write=True)
    rule = request.match_info["rule"]
    if not re.fullmatch(r"[0-9a-z]{1,32}", rule):
        raise BadRequestError("rule id must be 1 to 32 characters 0-9 a-z")
    loop = asyncio.get_running_loop()
    if owner == site.entity:
        files = None
        if "files" in data:
            if not isinstance(data["files"], list):
                raise BadRequestError("files must be a list of {path, chunks}")
            files = [(str(f.get("path", "")), parse_refs(f)) for f in data["files"]
                     if isinstance(f, dict)]
        await loop.run_in_executor(None, site.pin_store, owner, rule, parse_refs(data), files)
    else:
        site.agreement(owner)
        kids = [c.hex() for c in parse_ids(data, "ids")] if "ids" in data else []
        batches = field(data, "batches", int, 1, check=lambda n: 1 <= n <= 4096)
        batch = field(data, "batch", int, 0, check=lambda i: 0 <= i < batches)
        round_ = field(data, "round", str, "0" * 16,
                       check=lambda r: re.fullmatch(r"[0-9a-f]{16}", r) is not None)
        if batches == 1:
            site.vault.pin(owner, rule, kids)
        elif not await loop.run_in_executor(None, site.vault.pin_part, owner, rule, round_,
                                            batch, batches, kids):
            return web.json_response({"pinned": rule, "complete": False})
    return web.json_response({"pinned": rule, "complete": True})


async def pins_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    owner = _owner(site, None, {"owner": request.match_info["owner"]})
    site.check_owner(p, owner, write=True)
    rule = request.match_info["rule"]
    if not re.fullmatch(r"[0-9a-z]{1,32}", rule):
        raise BadRequestError("rule id must be 1 to 32 characters 0-9 a-z")
    gone = site.unpin_store(owner, rule) if owner == site.entity else \
        site.vault.unpin(owner, rule)
    return web.json_response({"unpinned": gone})


async def gc(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity or p.token is not None:
        raise AuthError("only the entity itself (signed) may run gc", 403, "forbidden")

    def run() -> dict[str, Any]:
        with site.write_lock:
            report = site.client.gc()
        return {"vault_removed": site.vault.gc(keep=site.live_guests()),
                "store": str(report)}
    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, run))


async def agreements_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the host entity may list its storage agreements", 403,
                        "forbidden")
    return web.json_response({"agreements": site.agreements()})


async def agreements_add(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    _own(site, p, primary=False)
    to = field(data, "to", str)
    check_name(to, "guest entity")
    if to == site.entity:
        raise BadRequestError(f"{to!r} is this site's own entity; it needs no agreement")
    quota = field(data, "quota", int, check=lambda q: 0 < q < 1 << 60)
    lifetime = field(data, "lifetime", (int, float), None, check=lambda v: 0 < v < 1e10)
    now = time.time()
    rec = {"id": secrets.token_hex(4), "to": to, "quota": quota, "created": now,
           "expires": now + lifetime if lifetime else None}
    for old in site.agreements():  # one agreement per guest: a new grant replaces it
        if old["to"] == to:
            site.delete_record("agreement", old["id"])
    site.put_record("agreement", rec)
    return web.json_response(rec, status=201)


async def agreements_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p, primary=False)
    rec = site.delete_record("agreement", request.match_info["id"])
    removed = 0
    if rec["to"] not in site.live_guests():
        removed = await asyncio.get_running_loop().run_in_executor(
            None, site.vault.remove_owner, rec["to"])
    return web.json_response(rec | {"removed_blobs": removed})


async def vault_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the host entity may list the data it keeps for others", 403,
                        "forbidden")
    owners = await asyncio.get_running_loop().run_in_executor(None, site.vault.owners)
    guests = site.live_guests()
    return web.json_response({"owners": [o | {"agreement": o["owner"] in guests}
                                         for o in owners]})


async def mover_session(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity or p.token is not None or site.mover_address is None:
        raise AuthError("mover sessions are for the site's own entity (signed requests) "
                        "and need a mover port", 403, "forbidden")
    host, port = site.mover_address
    return web.json_response({"host": host, "port": port, "secret": site.mover_secret.hex()})


async def mover_pull(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    if p.entity != site.entity or p.token is not None:
        raise AuthError("mover pulls are for the site's own entity (signed requests)", 403,
                        "forbidden")
    cids = parse_ids(data)
    streams = field(data, "streams", int, DEFAULT_STREAMS, check=lambda n: 1 <= n <= 64)
    if "source" not in data:
        raise BadRequestError("field 'source' is required: a site name or a mover session "
                              "{host, port, secret}")
    loop = asyncio.get_running_loop()
    peer, secret, label = await loop.run_in_executor(site.pulls, site.mover_source,
                                                     data["source"])
    st = await loop.run_in_executor(site.pulls, functools.partial(
        site.pull, peer, cids, secret, streams, label))
    site.metrics.inc("mover_pulls_total")
    site.metrics.inc("mover_pull_bytes_total", st.bytes)
    return web.json_response({"source": label, "bytes": st.bytes, "chunks": st.chunks,
                              "seconds": st.seconds, "streams": st.streams,
                              "retries": st.retries, "requested": st.requested,
                              "skipped": st.skipped, "committed": st.committed})


async def status(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    return web.json_response({
        "site": site.name, "entity": site.entity, "region": site.config.region,
        "primary": site.config.primary, "pools": site.pools(),
        "rules": site.rules() if p.entity == site.entity and site.config.primary else []})


def make_app(site: Site) -> web.Application:
    """The site's aiohttp application (docs/openapi/site.yaml)."""
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[site.metrics.middleware, error_middleware])
    app[SITE_KEY] = site
    r = app.router
    r.add_get("/v1/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/status", status)
    r.add_post("/v1/chunks/has", chunks_has)
    r.add_post("/v1/chunks/get", chunks_get)
    r.add_post("/v1/chunks/put", chunks_put)
    r.add_get("/v1/ns/stat", ns_stat)
    r.add_get("/v1/ns/list", ns_list)
    r.add_get("/v1/ns/manifest", ns_manifest)
    r.add_get("/v1/ns/read", ns_read)
    r.add_post("/v1/ns/write", ns_write)
    r.add_post("/v1/ns/mkdir", ns_mkdir)
    r.add_post("/v1/ns/remove", ns_remove)
    r.add_post("/v1/ns/rename", ns_rename)
    r.add_post("/v1/ns/commit", ns_commit)
    r.add_post("/v1/ns/symlink", ns_symlink)
    r.add_post("/v1/ns/setattr", ns_setattr)
    r.add_get("/v1/ns/xattrs", ns_xattrs_get)
    r.add_post("/v1/ns/xattrs", ns_xattrs_set)
    r.add_get("/v1/ns/du", ns_du)
    r.add_get("/v1/ns/visible", ns_visible)
    r.add_get("/v1/grants", grants_list)
    r.add_post("/v1/grants", grants_add)
    r.add_delete("/v1/grants/{id:[0-9a-f]{8}}", grants_delete)
    r.add_get("/v1/rules", rules_list)
    r.add_post("/v1/rules", rules_add)
    r.add_delete("/v1/rules/{id:[0-9a-f]{8}}", rules_delete)
    r.add_post("/v1/rules/reconcile", rules_reconcile)
    r.add_put("/v1/pins/{owner}/{rule}", pins_put)
    r.add_delete("/v1/pins/{owner}/{rule}", pins_delete)
    r.add_post("/v1/gc", gc)
    r.add_get("/v1/agreements", agreements_list)
    r.add_post("/v1/agreements", agreements_add)
    r.add_delete("/v1/agreements/{id:[0-9a-f]{8}}", agreements_delete)
    r.add_get("/v1/vault", vault_list)
    r.add_post("/v1/mover/session", mover_session)
    r.add_post("/v1/mover/pull", mover_pull)
    return app


def init_site(state: str | os.PathLike[str], *, name: str, entity: str, region: str,
              registry: str, industry: str = "GEN", primary: bool = False,
              keys_from: str | os.PathLike[str] | None = None) -> SiteConfig:
    """Create a site's state: an embedded store, entity keys (new, or copied from
    `keys_from` for a second site of the same entity) and site.json."""
    root = Path(state)
    for n, what in ((name, "site name"), (entity, "entity name"), (region, "region")):
        ids.check_name(n, what)
    if industry.upper() not in ids.INDUSTRIES:
        raise ids.IdentifierError(f"industry {industry!r} is not one of "
                                  + " ".join(ids.INDUSTRIES))
    Client.init(root).close()
    fed = root / "federation"
    if keys_from is not None:
        src = EntityKeys.load(keys_from)
        if src.name != entity:
            raise StateError(f"keys in {keys_from} belong to {src.name!r}, not {entity!r}")
        fed.mkdir(parents=True, exist_ok=True)
        for f in ("entity.key", "data.key", "entity.name"):
            data = (Path(keys_from) / f).read_bytes()
            fd = os.open(fed / f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
    else:
        EntityKeys.create(fed, entity)
    cfg = SiteConfig(name=name, entity=entity, region=region, industry=industry.upper(),
                     registry=registry, primary=primary)
    cfg.save(root)
    with Client(root) as c, contextlib.suppress(HutongError):
        c.mkdir(f"/{entity}")
    return cfg


