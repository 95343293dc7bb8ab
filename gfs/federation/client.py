"""One namespace across entities: `/ENTITY/...` resolved through the registry.

    fc = FederationClient("http://127.0.0.1:8700", keys=EntityKeys.load(dir), near="bank-a-2")
    fc.write_bytes("/bank-a/data/x.csv", b"...")     # chunks first, then the manifest
    fc.read_bytes("/bank-a/data/x.csv")              # each chunk from the best replica

Reads by the owner entity (its keys, or an entity-wide token) go chunk by chunk:
the local cache, then the sites holding the file's replicas in order of measured
round-trip time from `near` (same region before others, the primary last among
equals); a missing or corrupt copy is skipped and the next site is asked. Other
principals (a grantee, a prefix token) read and write whole files through the
primary, which checks their grants. Writes are close-to-open: the file changes
only when the primary commits the manifest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from gfs import chunking, paths
from gfs.codec import decode_blob, keyed_chunk_id, verify_blob
from gfs.errors import (
    ConfigError,
    CorruptChunkError,
    HutongError,
    InvalidPathError,
    NotFoundError,
    UnavailableSiteError,
)
from gfs.federation import certs
from gfs.federation.auth import EntityKeys, b64e, rotation_text, token_claims, token_issuer
from gfs.federation.http import HttpClient
from gfs.federation.inflight import LinkMeter
from gfs.federation.registry_view import RegistryView
from gfs.federation.sealed_read import open_sealed
from gfs.federation.site_client import (
    Listing,
    MoverSession,
    Record,
    SiteClient,
    SiteManifest,
    SiteUnavailableError,
)
from gfs.federation.source import SiteSource
from gfs.federation.tls import Trust, trust_for
from gfs.federation.upload import put_missing
from gfs.meta import Manifest
from gfs.namespace_api import Stat
from gfs.read import ManifestReader, MemoryTier
from gfs.store import prepare

PULL_BATCH = 4096
"""Chunk ids per `/v1/mover/pull` request (the site's limit)."""
PULL_TIMEOUT = 600.0
RECONCILE_TIMEOUT = 3600.0
"""Seconds `reconcile` waits for its answer (a round places and audits data)."""
"""Seconds the answer to one pull may take (the site's fetch stops on a 30 s stall)."""


log = logging.getLogger("hutong.federation")
T = TypeVar("T")

class FederationClient:
    """A user's or a site's view of the global namespace."""

    def __init__(self, registry: str, *, keys: EntityKeys | None = None,
                 token: str | None = None, near: str | None = None,
                 cache_bytes: int = 256 << 20, zstd_level: int = 3,
                 params: chunking.ChunkParams | None = None, timeout: float = 30.0,
                 tls: Trust | None = None) -> None:
        """`tls`: the registry's CA and this party's certificate (default: the trust
        kept beside `keys`, `gfs.federation.tls.trust_for`); needed with a token."""
        self.tls = tls if tls is not None else trust_for(keys)
        self.registry = HttpClient(registry, keys=keys, token=token, timeout=timeout,
                                   tls=self.tls)
        self.keys, self.token, self.near = keys, token, near
        self.me = keys.name if keys is not None else (token_issuer(token) if token else None)
        self.source = SiteSource(self)
        self.link = LinkMeter()
        """The chunk answers of every site, measured (`gfs.federation.inflight`)."""
        """The sites' chunks as a verified chunk source."""
        self.cache = MemoryTier(self.source, cache_bytes)
        """The memory tier every chunk read of this client goes through."""
        self.level = zstd_level
        self.params = params or chunking.ChunkParams()
        self.timeout = timeout
        self.view = (self.tls.view if self.tls is not None and self.tls.serves(registry)
                     else RegistryView(self.registry))
        self._since = self.view.clock()
        """A shared view's answers older than this client are asked again once: a new
        client sees the federation as it is now (a site may have moved meanwhile)."""
        """The registry's entities, sites and links, kept a few seconds (stale while the
        registry is unreachable): the trust's, which checks the sites' certificates
        with the same records (one registry cache)."""
        self._site_clients: dict[str, SiteClient] = {}
        self._site_lock = threading.Lock()
        self.chunks_from: dict[str, int] = {}
        """Chunks fetched per site (for tests and `status`)."""
        self.bad_copies = 0

    def close(self) -> None:
        """Close every connection."""
        self.cache.close()
        for h in self._site_clients.values():
            h.close()
        self.registry.close()

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolving ---------------------------------------------------------------------
    def sites(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Every registered site by name, with status (`RegistryView`: kept a few
        seconds; the last answer while the registry is unreachable)."""
        return self.view.sites(refresh, since=self._since)

    def entities(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Every registered entity by name (`RegistryView`, as `sites`)."""
        return self.view.entities(refresh, since=self._since)

    def site(self, name: str) -> SiteClient:
        """A client of site `name` that authenticates as this client (renewed when the
        registry shows the site at a new endpoint, e.g. after a restart)."""
        rec = self.sites().get(name)
        if rec is None:
            rec = self.sites(refresh=True).get(name)
        if rec is None:
            raise SiteUnavailableError(name, f"site {name!r} is not registered", 404,
                                       "not_registered")
        endpoint = str(rec["endpoint"]).rstrip("/")
        with self._site_lock:
            h = self._site_clients.get(name)
            if h is None or h.base_url != endpoint:
                h = self._site_clients[name] = SiteClient(
                    endpoint, keys=self.keys, token=self.token, timeout=self.timeout,
                    tls=self.tls, site=name, entity=str(rec["entity"]))
                h.meter = self.link
            return h

    def with_site(self, name: str, op: Callable[[SiteClient], T]) -> T:
        """`op(self.site(name))`; when the site does not answer, the registry is asked
        again and `op` retried once if the site moved (e.g. restarted on a new port)."""
        h = self.site(name)
        try:
            return op(h)
        except ConnectionError:
            self.sites(refresh=True)
            h2 = self.site(name)
            if h2 is h:
                raise
            return op(h2)

    def primary(self, path: str) -> tuple[str, str]:
        """(normalised path, primary site name) of the entity owning `path`."""
        norm = paths.normalize(path)
        parts = paths.split(norm)
        if not parts:
            raise InvalidPathError(path, "the federation root has no site; use /ENTITY/...")
        ent = self.entities().get(parts[0])
        if ent is None:
            ent = self.entities(refresh=True).get(parts[0])
        if ent is None:
            raise NotFoundError(f"/{parts[0]}")
        if not ent.get("primary"):
            raise SiteUnavailableError(norm, f"entity {parts[0]!r} has no primary site "
                                       "registered", 503, "no_primary")
        return norm, str(ent["primary"])

    def owner_mode(self, entity: str) -> bool:
        """Whether this client reads `entity`'s files chunk by chunk as their owner (its
        keys, or an entity-wide token of it); otherwise only whole files through the
        primary (`/v1/ns/read`), as the owner's grants allow."""
        return self._owner_mode(entity)

    def _owner_mode(self, entity: str) -> bool:
        if self.keys is not None:
            return self.keys.name == entity
        if self.token is not None and self.me == entity:
            claims = token_claims(self.token)
            return str(claims.get("prefix", "")).rstrip("/") == f"/{entity}"
        return False

    # -- namespace ----------------------------------------------------------------------
    def stat(self, path: str) -> Stat:
        """The entry at `path` (asked of its entity's primary)."""
        norm, site = self.primary(path)
        return self.site(site).stat(norm)

    def ls(self, path: str) -> list[Stat]:
        """The entries of directory `path` with their full stats, in name order."""
        norm, site = self.primary(path)
        return self.site(site).ls(norm)

    def walk(self, path: str) -> Iterator[Stat]:
        """`path` and everything below it, parents before children (a directory removed
        meanwhile is skipped); NotFoundError if `path` is not there."""
        norm, site = self.primary(path)
        sc = self.site(site)
        top = sc.stat(norm)
        yield top
        stack = [top] if top.is_dir else []
        while stack:
            d = stack.pop()
            try:
                entries = sc.ls(d.path)
            except NotFoundError:
                continue
            for e in entries:
                yield e
                if e.is_dir:
                    stack.append(e)

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        norm, site = self.primary(path)
        self.site(site).mkdir(norm, parents=parents, exist_ok=exist_ok)

    def rm(self, path: str, *, recursive: bool = False) -> None:
        norm, site = self.primary(path)
        self.site(site).remove(norm, recursive=recursive)

    def mv(self, src: str, dst: str) -> None:
        norm, site = self.primary(src)
        self.site(site).rename(norm, paths.normalize(dst))

    # -- reading ------------------------------------------------------------------------
    def candidates(self, holders: list[str], owner: str) -> list[str]:
        """The sites of `holders` to ask for `owner`'s chunks, best first: up sites this
        client may read from, by measured round-trip time from `near` (same region before
        others, the primary last among equals), then the down ones."""
        sites = self.sites()
        links = self.view.links()
        near = sites.get(self.near or "")
        rtt = {(lk["a"], lk["b"]): lk["rtt_ms"] for lk in links}

        def cost(name: str) -> tuple[float, int]:
            s = sites[name]
            if near is None:
                c = 0.0
            elif name == near["name"]:
                c = -1.0
            else:
                # only links measured from the near site count: a link another entity
                # published from its own site says nothing the reader can trust
                c = rtt.get((near["name"], name),
                            1.0 if s["region"] == near["region"] else 1000.0)
            return (c, 1 if name == holders[0] else 0)
        usable = [h for h in holders if h in sites and sites[h]["status"] == "up"
                  and (sites[h]["entity"] == owner or self.keys is not None)]
        down = [h for h in holders if h in sites and h not in usable]
        return sorted(usable, key=cost) + down

    def manifest(self, path: str) -> SiteManifest:
        """The manifest of file `path` from its entity's primary; while the primary
        cannot be reached, from a mirror that a rule keeps on another site of the
        entity (maybe one version old). UnavailableSiteError if none answers."""
        norm, primary = self.primary(path)
        try:
            return self.site(primary).manifest(norm)
        except ConnectionError as down:  # unreachable or 5xx
            return self._from_mirrors(norm, primary, down,
                                      lambda h: h.manifest(norm, mirror=True))

    def mirror_listing(self, path: str) -> Listing:
        """Directory `path` as the mirrors of its entity's other sites hold it (what the
        rules replicate there, as of their last reconcile), for when the primary cannot
        be reached; UnavailableSiteError if no mirror holds it."""
        norm, primary = self.primary(path)
        down = SiteUnavailableError(primary, f"primary {primary} is unreachable")
        return self._from_mirrors(norm, primary, down,
                                  lambda h: h.list_dir(norm, mirror=True))

    def _from_mirrors(self, norm: str, primary: str, down: Exception,
                      op: Callable[[SiteClient], T]) -> T:
        """`op` on the first up site of `norm`'s entity, other than the down primary,
        that answers it from its mirrors."""
        owner = paths.split(norm)[0]
        problems = [f"{primary}: {down}"]
        for name, s in sorted(self.sites(refresh=True).items()):
            if name == primary or s.get("entity") != owner or s.get("status") != "up":
                continue
            try:
                out = op(self.site(name))
            except HutongError as e:
                problems.append(f"{name}: {e}")
                continue
            log.warning("primary %s of %s is unreachable; %s answered from the mirror "
                        "on %s", primary, owner, norm, name)
            return out
        raise UnavailableSiteError(norm, f"the primary is unreachable and no site holds "
                                   f"a mirror of it ({'; '.join(problems)})") from None

    def read_bytes(self, path: str) -> bytes:
        """The whole content of file `path`, from the best replicas."""
        norm, primary = self.primary(path)
        owner = paths.split(norm)[0]
        if not self._owner_mode(owner):
            return self.site(primary).read(norm)
        m = self.manifest(norm)
        manifest = Manifest(m.stat.version, tuple(m.refs()))
        self.source.note(norm, m.sites)
        return ManifestReader(self.cache, norm, manifest).read_range(0, manifest.size)

    def fetch_chunks(self, site: str, owner: str, cids: list[bytes], problems: list[str],
                     *, blobs: bool = False, path: str | None = None) -> dict[bytes, bytes]:
        """Verified raw chunks `cids` of entity `owner` that `site` returns (`blobs`: their
        stored blobs, from the owner's own sites only); bad copies are counted and
        described in `problems`. A caller that is not the owner reads only chunks of a
        file it may read (`path`), at the owner's primary."""
        rec = self.sites()[site]
        foreign = rec["entity"] != owner
        if foreign and (self.keys is None or blobs or not self._owner_mode(owner)):
            return {}
        out: dict[bytes, bytes] = {}
        sc = self.site(site)
        for i in range(0, len(cids), 1024):
            batch = cids[i:i + 1024]
            errors: dict[bytes, CorruptChunkError] = {}
            if foreign:  # sealed, perhaps sealed deltas whose bases the site also keeps
                assert self.keys is not None
                keys = self.keys
                frames = sc.get([keyed_chunk_id(c, keys.id_key) for c in batch], owner=owner)
                got = {cid: blob for cid, blob in zip(batch, frames, strict=True) if blob}
                opened = open_sealed(got, lambda kids: sc.get(kids, owner=owner), keys)
                out.update(opened.raws)
                errors = opened.errors
            else:  # a caller that may not read every chunk names the file (`path`);
                # each blob is a view into the answer, copied once: decoded, or (a caller
                # keeping blobs) verified in place, then copied
                views = sc.get_views(batch, path=None if self._owner_mode(owner) else path)
                for cid, view in zip(batch, views, strict=True):
                    if view is None:
                        continue
                    try:
                        if blobs:
                            verify_blob(view, cid)
                            out[cid] = bytes(view)
                        else:
                            out[cid] = decode_blob(view, expect_id=cid)
                    except CorruptChunkError as e:
                        errors[cid] = e
            for cid, err in errors.items():
                self.bad_copies += 1
                problems.append(f"{site}: corrupt copy of {cid.hex()} ({err.strerror})")
        self.chunks_from[site] = self.chunks_from.get(site, 0) + len(out)
        return out

    # -- writing ------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> Stat:
        """Create or replace file `path`: missing chunks first, then the manifest commit."""
        norm, primary = self.primary(path)
        owner = paths.split(norm)[0]
        site = self.site(primary)
        if not self._owner_mode(owner):
            return site.write(norm, data)
        prep = prepare(data, self.params)
        put_missing(site, prep.refs, prep.pieces, self.level)
        refs = prep.refs
        return site.commit(norm, refs, mode)

    # -- site-to-site transfers -----------------------------------------------------------
    def mover_session(self, site: str) -> MoverSession:
        """Where `site`'s mover serves a pull (its own entity's signed requests only)."""
        return self.site(site).mover_session()

    def mover_pull(self, dst: str, source: str | MoverSession | Mapping[str, Any],
                   ids: Sequence[bytes], *, streams: int = 4, session: bool = True,
                   timeout: float = PULL_TIMEOUT) -> dict[str, Any]:
        """Copy chunks `ids` from `source` into `dst`'s store through the native mover
        (`POST /v1/mover/pull` at `dst`, batches of PULL_BATCH ids); both sites belong
        to this client's entity. Only chunks `dst` lacks cross the wire (a repeated
        call resumes). `source` is a site name — with `session`, its mover session is
        asked for here and passed on, else `dst` asks for it — or a session.
        Returns the summed stats {bytes, chunks, seconds, streams, retries, requested,
        skipped, committed, deltas}. `timeout` bounds the wait for one batch's answer (the
        site's fetch itself fails after 30 s without progress)."""
        if isinstance(source, str) and session:
            source = self.mover_session(source)
        if isinstance(source, Mapping):
            source = MoverSession(str(source["host"]), int(source["port"]),
                                  str(source["secret"]))
        out = {"bytes": 0, "chunks": 0, "seconds": 0.0, "streams": streams, "retries": 0,
               "requested": 0, "skipped": 0, "committed": 0, "deltas": 0}
        uniq = list(dict.fromkeys(bytes(c) for c in ids))
        h = self.site(dst).with_timeout(timeout)
        try:
            for i in range(0, len(uniq), PULL_BATCH):
                st = h.mover_pull(source, uniq[i:i + PULL_BATCH], streams=streams)
                for k in ("bytes", "chunks", "retries", "requested", "skipped", "committed",
                          "deltas"):
                    out[k] += getattr(st, k)
                out["seconds"] += st.seconds
        finally:
            h.close()
        return out

    # -- grants, rules, status ----------------------------------------------------------
    def entity_site(self, entity: str) -> SiteClient:
        """The primary site of `entity`."""
        return self.site(self.primary(f"/{entity}")[1])

    def grant(self, pattern: str, to: str, mode: str) -> Record:
        """Let entity `to` read (or write) paths matching `pattern` of its owner."""
        owner = paths.split(paths.normalize(pattern.replace("*", "x")))[0]
        return self.entity_site(owner).grant(pattern, to, mode)

    def grants(self, entity: str) -> list[Record]:
        return self.entity_site(entity).grants()

    def revoke(self, entity: str, grant_id: str) -> None:
        self.entity_site(entity).revoke(grant_id)

    def rule_add(self, pattern: str, copies: int, where: str = "",
                 lifetime: float | None = None) -> Record:
        """Add a replication rule at the pattern's entity primary."""
        owner = paths.split(paths.normalize(pattern.replace("*", "x")))[0]
        return self.entity_site(owner).rule_add(pattern, copies, where, lifetime)

    def rules(self, entity: str) -> list[Record]:
        return self.entity_site(entity).rules()

    def rule_rm(self, entity: str, rule_id: str) -> Record:
        return self.entity_site(entity).rule_rm(rule_id)

    def reconcile(self, entity: str, *, verify: bool = False,
                  timeout: float = RECONCILE_TIMEOUT) -> list[Record]:
        """Evaluate the entity's rules now (normally the primary does it periodically);
        `verify` also reads back every replica and replaces damaged ones. `timeout`
        bounds the wait for the answer: a round moves data, so it is not the client's
        per-request timeout."""
        h = self.entity_site(entity).with_timeout(max(timeout, self.timeout))
        try:
            return h.reconcile(verify=verify)
        finally:
            h.close()

    # -- storage agreements (the host's side) ---------------------------------------------
    def agreement_add(self, site: str, to: str, quota: int,
                      lifetime: float | None = None) -> Record:
        """Let entity `to` keep up to `quota` bytes of its encrypted replicas at `site` (a
        site of this client's entity), for `lifetime` seconds (None: until revoked)."""
        return self.site(site).agreement_add(to, quota, lifetime)

    def agreements(self, site: str) -> list[Record]:
        return self.site(site).agreements()

    def agreement_rm(self, site: str, agreement_id: str) -> Record:
        """Revoke an agreement; the guest's data at `site` is removed with it."""
        return self.site(site).agreement_rm(agreement_id)

    def vault(self, site: str) -> list[Record]:
        """What `site` keeps for other entities: owner, bytes, blobs, rules, agreement."""
        return self.site(site).vault()

    # -- keys and tokens (the entity's side) --------------------------------------------
    def revoke_token(self, token: str) -> dict[str, Any]:
        """Revoke one token of this client's entity (sites refuse it within their key
        cache time)."""
        claims = token_claims(token)
        return dict(self.registry.call("POST", f"/v1/entities/{self._me()}/revoke",
                                       {"jti": claims["jti"], "exp": claims["exp"]}))

    def revoke_tokens_before(self, when: float) -> dict[str, Any]:
        """Revoke every token of this client's entity issued before `when` (unix s)."""
        return dict(self.registry.call("POST", f"/v1/entities/{self._me()}/revoke",
                                       {"before": when}))

    def revoke_cert(self, serial: int) -> dict[str, Any]:
        """Revoke one certificate this client's entity CA issued, by serial number (signed
        with the entity key): sites refuse it as a client certificate and clients as a
        site's server certificate from their next read of the registry."""
        if self.keys is None:
            raise ConfigError("revoking a certificate is signed with the entity key; pass "
                              "--keys DIR (the entity's site directory STATE/federation)")
        if not 0 < serial < 1 << 160:
            raise ConfigError(f"certificate serial {serial:x} is not 1 to 20 bytes long")
        return dict(self.registry.call("POST", f"/v1/entities/{self._me()}/revoke",
                                       {"cert": f"{serial:x}"}))

    def rotate_key(self, new: EntityKeys) -> dict[str, Any]:
        """Bind this client's entity to `new`'s key at the registry (signed with the
        current key, proven by the new one); copy the new key to the entity's sites."""
        me = self._me()
        proof = b64e(new.private.sign(rotation_text(me, new.public_b64)))
        body = {"public_key": new.public_b64, "proof": proof}
        ca = self.tls.own_ca_pem() if self.tls is not None else None
        if ca is not None:  # the entity's own CA, bound anew to the new key
            body["ca_sig"] = certs.sign_ca(new, ca)
        return dict(self.registry.call("POST", f"/v1/entities/{me}/key", body))

    def _me(self) -> str:
        if self.keys is None:
            raise ConfigError("this needs the entity's keys (--keys), not a token")
        return self.keys.name
