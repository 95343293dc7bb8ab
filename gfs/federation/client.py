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
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gfs import chunking, paths
from gfs.codec import decode_blob, decode_encrypted_blob, keyed_chunk_id
from gfs.errors import (
    ConfigError,
    CorruptChunkError,
    HutongError,
    InvalidPathError,
)
from gfs.federation.auth import EntityKeys, b64e, rotation_text, token_claims, token_issuer
from gfs.federation.http import HttpClient, UnavailableError
from gfs.federation.source import SiteSource
from gfs.meta import ChunkRef, Manifest
from gfs.read import ManifestReader, MemoryTier
from gfs.store import prepare

SITES_TTL = 5.0
PULL_BATCH = 4096
"""Chunk ids per `/v1/mover/pull` request (the site's limit)."""
PULL_TIMEOUT = 600.0
RECONCILE_TIMEOUT = 3600.0
"""Seconds `reconcile` waits for its answer (a round places and audits data)."""
"""Seconds the answer to one pull may take (the site's fetch stops on a 30 s stall)."""


log = logging.getLogger("hutong.federation")

class FederationClient:
    """A user's or a site's view of the global namespace."""

    def __init__(self, registry: str, *, keys: EntityKeys | None = None,
                 token: str | None = None, near: str | None = None,
                 cache_bytes: int = 256 << 20, zstd_level: int = 3,
                 params: chunking.ChunkParams | None = None, timeout: float = 30.0) -> None:
        self.registry = HttpClient(registry, keys=keys, token=token, timeout=timeout)
        self.keys, self.token, self.near = keys, token, near
        self.me = keys.name if keys is not None else (token_issuer(token) if token else None)
        self.source = SiteSource(self)
        """The sites' chunks as a verified chunk source."""
        self.cache = MemoryTier(self.source, cache_bytes)
        """The memory tier every chunk read of this client goes through."""
        self.level = zstd_level
        self.params = params or chunking.ChunkParams()
        self.timeout = timeout
        self._sites: tuple[float, dict[str, dict[str, Any]], list[dict[str, Any]]] | None = None
        self._http: dict[str, HttpClient] = {}
        self.chunks_from: dict[str, int] = {}
        """Chunks fetched per site (for tests and `status`)."""
        self.bad_copies = 0

    def close(self) -> None:
        """Close every connection."""
        self.cache.close()
        for h in self._http.values():
            h.close()
        self.registry.close()

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolving ---------------------------------------------------------------------
    def sites(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Every registered site by name, with status (cached for a few seconds)."""
        if refresh or self._sites is None or time.monotonic() - self._sites[0] > SITES_TTL:
            sites = {s["name"]: s for s in self.registry.call("GET", "/v1/sites")["sites"]}
            links = self.registry.call("GET", "/v1/links")["links"]
            self._sites = (time.monotonic(), sites, links)
        return self._sites[1]

    def http(self, site: str) -> HttpClient:
        """A connection to site `site` that authenticates as this client (renewed when
        the registry shows the site at a new endpoint, e.g. after a restart)."""
        endpoint = str(self.sites()[site]["endpoint"]).rstrip("/")
        h = self._http.get(site)
        if h is not None and h.base_url != endpoint:
            h.close()
            h = None
        if h is None:
            h = self._http[site] = HttpClient(endpoint, keys=self.keys, token=self.token,
                                              timeout=self.timeout)
        return h

    def primary(self, path: str) -> tuple[str, str]:
        """(normalised path, primary site name) of the entity owning `path`."""
        norm = paths.normalize(path)
        parts = paths.split(norm)
        if not parts:
            raise InvalidPathError(path, "the federation root has no site; use /ENTITY/...")
        ent = self.registry.call("GET", f"/v1/entities/{parts[0]}")
        if not ent.get("primary"):
            raise UnavailableError(f"entity {parts[0]!r} has no primary site registered", 503,
                                   "no_primary")
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
    def stat(self, path: str) -> dict[str, Any]:
        norm, site = self.primary(path)
        return dict(self.http(site).call("GET", "/v1/ns/stat", query={"path": norm}))

    def ls(self, path: str) -> list[dict[str, Any]]:
        norm, site = self.primary(path)
        return list(self.http(site).call("GET", "/v1/ns/list", query={"path": norm})["entries"])

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        norm, site = self.primary(path)
        self.http(site).call("POST", "/v1/ns/mkdir",
                             {"path": norm, "parents": parents, "exist_ok": exist_ok})

    def rm(self, path: str, *, recursive: bool = False) -> None:
        norm, site = self.primary(path)
        self.http(site).call("POST", "/v1/ns/remove", {"path": norm, "recursive": recursive})

    def mv(self, src: str, dst: str) -> None:
        norm, site = self.primary(src)
        self.http(site).call("POST", "/v1/ns/rename", {"src": norm,
                                                       "dst": paths.normalize(dst)})

    # -- reading ------------------------------------------------------------------------
    def _candidates(self, holders: list[str], owner: str) -> list[str]:
        sites = self.sites()
        assert self._sites is not None
        links = self._sites[2]
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

    def _manifest_or_mirror(self, norm: str, primary: str, owner: str) -> dict[str, Any]:
        """The file's manifest from the primary; while it cannot be reached, from a
        mirror that a rule keeps on another site of the entity (maybe one version old)."""
        try:
            return dict(self.http(primary).call("GET", "/v1/ns/manifest",
                                                query={"path": norm}))
        except ConnectionError as down:  # unreachable or 5xx (UnavailableError)
            problems = [f"{primary}: {down}"]
            for name, s in sorted(self.sites(refresh=True).items()):
                if name == primary or s.get("entity") != owner or s.get("status") != "up":
                    continue
                try:
                    m = dict(self.http(name).call("GET", "/v1/ns/manifest",
                                                  query={"path": norm, "mirror": "1"}))
                except HutongError as e:
                    problems.append(f"{name}: {e}")
                    continue
                log.warning("primary %s of %s is unreachable; reading %s from the mirror "
                            "on %s", primary, owner, norm, name)
                return m
            raise UnavailableError(f"{norm}: the primary is unreachable and no site holds a "
                                   f"mirror ({'; '.join(problems)})", 503, "unavailable") from None

    def read_bytes(self, path: str) -> bytes:
        """The whole content of file `path`, from the best replicas."""
        norm, primary = self.primary(path)
        owner = paths.split(norm)[0]
        if not self._owner_mode(owner):
            data = self.http(primary).call("GET", "/v1/ns/read", query={"path": norm})
            return data if isinstance(data, bytes) else bytes(str(data), "utf-8")
        m = self._manifest_or_mirror(norm, primary, owner)
        manifest = Manifest(int(m.get("stat", {}).get("version", 0)), tuple(
            ChunkRef(bytes.fromhex(h), int(n)) for h, n in m["chunks"]))
        self.source.note(norm, list(m["sites"]))
        return ManifestReader(self.cache, norm, manifest).read_range(0, manifest.size)

    def _fetch(self, site: str, owner: str, cids: list[bytes], problems: list[str],
               *, blobs: bool = False) -> dict[bytes, bytes]:
        """Verified raw chunks `cids` that `site` returns (`blobs`: their stored blobs,
        from the owner's own sites only); bad copies are counted and described."""
        from gfs.federation.site import unpack_frames

        rec = self.sites()[site]
        foreign = rec["entity"] != owner
        if foreign and (self.keys is None or blobs):
            return {}
        out: dict[bytes, bytes] = {}
        for i in range(0, len(cids), 1024):
            batch = cids[i:i + 1024]
            if foreign:
                assert self.keys is not None
                ask = [keyed_chunk_id(c, self.keys.id_key) for c in batch]
                body = {"ids": [k.hex() for k in ask], "owner": owner}
            else:
                body = {"ids": [c.hex() for c in batch]}
            data = self.http(site).call("POST", "/v1/chunks/get", body)
            frames = unpack_frames(data if isinstance(data, bytes) else b"", limit=len(batch))
            for cid, blob in zip(batch, frames, strict=False):
                if not blob:
                    continue
                try:
                    if foreign:
                        assert self.keys is not None
                        raw = decode_encrypted_blob(blob, cid, self.keys.enc_key,
                                                    self.keys.id_key)
                    else:
                        raw = decode_blob(blob, expect_id=cid)
                except CorruptChunkError as e:
                    self.bad_copies += 1
                    problems.append(f"{site}: corrupt copy of {cid.hex()} ({e.strerror})")
                    continue
                out[cid] = bytes(blob) if blobs else raw
        self.chunks_from[site] = self.chunks_from.get(site, 0) + len(out)
        return out

    # -- writing ------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> dict[str, Any]:
        """Create or replace file `path`: missing chunks first, then the manifest commit."""
        from gfs.federation.upload import put_missing

        norm, primary = self.primary(path)
        owner = paths.split(norm)[0]
        site = self.http(primary)
        if not self._owner_mode(owner):
            return dict(site.call("POST", "/v1/ns/write", body=bytes(data),
                                  query={"path": norm},
                                  content_type="application/octet-stream"))
        prep = prepare(data, self.params)
        refs = prep.refs
        put_missing(site, refs, prep.pieces, self.level)
        body: dict[str, Any] = {"path": norm, "chunks": [[r.id.hex(), r.length] for r in refs]}
        if mode is not None:
            body["mode"] = mode
        return dict(site.call("POST", "/v1/ns/commit", body))

    # -- site-to-site transfers -----------------------------------------------------------
    def mover_session(self, site: str) -> dict[str, Any]:
        """`{host, port, secret}` of `site`'s mover (its own entity's signed requests only)."""
        return dict(self.http(site).call("POST", "/v1/mover/session", {}))

    def mover_pull(self, dst: str, source: str | Mapping[str, Any], ids: Sequence[bytes],
                   *, streams: int = 4, session: bool = True,
                   timeout: float = PULL_TIMEOUT) -> dict[str, Any]:
        """Copy chunks `ids` from `source` into `dst`'s store through the native mover
        (`POST /v1/mover/pull` at `dst`, batches of PULL_BATCH ids); both sites belong
        to this client's entity. Only chunks `dst` lacks cross the wire (a repeated
        call resumes). `source` is a site name — with `session`, its mover session is
        asked for here and passed on, else `dst` asks for it — or a session dict.
        Returns the summed stats {bytes, chunks, seconds, streams, retries, requested,
        skipped, committed}. `timeout` bounds the wait for one batch's answer (the
        site's fetch itself fails after 30 s without progress)."""
        if isinstance(source, str) and session:
            source = self.mover_session(source)
        src: Any = source if isinstance(source, str) else dict(source)
        out = {"bytes": 0, "chunks": 0, "seconds": 0.0, "streams": streams, "retries": 0,
               "requested": 0, "skipped": 0, "committed": 0}
        uniq = list(dict.fromkeys(bytes(c) for c in ids))
        endpoint = self.http(dst).base_url
        h = HttpClient(endpoint, keys=self.keys, token=self.token, timeout=timeout)
        try:
            for i in range(0, len(uniq), PULL_BATCH):
                st = h.call("POST", "/v1/mover/pull", {
                    "source": src, "ids": [c.hex() for c in uniq[i:i + PULL_BATCH]],
                    "streams": streams})
                for k in ("bytes", "chunks", "retries", "requested", "skipped", "committed"):
                    out[k] += int(st[k])
                out["seconds"] += float(st["seconds"])
        finally:
            h.close()
        return out

    # -- grants, rules, status ----------------------------------------------------------
    def _entity_site(self, entity: str) -> HttpClient:
        return self.http(self.primary(f"/{entity}")[1])

    def grant(self, pattern: str, to: str, mode: str) -> dict[str, Any]:
        """Let entity `to` read (or write) paths matching `pattern` of its owner."""
        owner = paths.split(paths.normalize(pattern.replace("*", "x")))[0]
        return dict(self._entity_site(owner).call(
            "POST", "/v1/grants", {"pattern": pattern, "to": to, "mode": mode}))

    def grants(self, entity: str) -> list[dict[str, Any]]:
        return list(self._entity_site(entity).call("GET", "/v1/grants")["grants"])

    def revoke(self, entity: str, grant_id: str) -> None:
        self._entity_site(entity).call("DELETE", f"/v1/grants/{grant_id}")

    def rule_add(self, pattern: str, copies: int, where: str = "",
                 lifetime: float | None = None) -> dict[str, Any]:
        """Add a replication rule at the pattern's entity primary."""
        owner = paths.split(paths.normalize(pattern.replace("*", "x")))[0]
        body: dict[str, Any] = {"pattern": pattern, "copies": copies, "where": where}
        if lifetime is not None:
            body["lifetime"] = lifetime
        return dict(self._entity_site(owner).call("POST", "/v1/rules", body))

    def rules(self, entity: str) -> list[dict[str, Any]]:
        return list(self._entity_site(entity).call("GET", "/v1/rules")["rules"])

    def rule_rm(self, entity: str, rule_id: str) -> dict[str, Any]:
        return dict(self._entity_site(entity).call("DELETE", f"/v1/rules/{rule_id}"))

    def reconcile(self, entity: str, *, verify: bool = False,
                  timeout: float = RECONCILE_TIMEOUT) -> list[dict[str, Any]]:
        """Evaluate the entity's rules now (normally the primary does it periodically);
        `verify` also reads back every replica and replaces damaged ones. `timeout`
        bounds the wait for the answer: a round moves data, so it is not the client's
        per-request timeout."""
        h = HttpClient(self._entity_site(entity).base_url, keys=self.keys, token=self.token,
                       timeout=max(timeout, self.timeout))
        try:
            return list(h.call("POST", "/v1/rules/reconcile", {},
                               query={"verify": "1"} if verify else None)["rules"])
        finally:
            h.close()

    # -- storage agreements (the host's side) ---------------------------------------------
    def agreement_add(self, site: str, to: str, quota: int,
                      lifetime: float | None = None) -> dict[str, Any]:
        """Let entity `to` keep up to `quota` bytes of its encrypted replicas at `site` (a
        site of this client's entity), for `lifetime` seconds (None: until revoked)."""
        body: dict[str, Any] = {"to": to, "quota": quota}
        if lifetime is not None:
            body["lifetime"] = lifetime
        return dict(self.http(site).call("POST", "/v1/agreements", body))

    def agreements(self, site: str) -> list[dict[str, Any]]:
        return list(self.http(site).call("GET", "/v1/agreements")["agreements"])

    def agreement_rm(self, site: str, agreement_id: str) -> dict[str, Any]:
        """Revoke an agreement; the guest's data at `site` is removed with it."""
        return dict(self.http(site).call("DELETE", f"/v1/agreements/{agreement_id}"))

    def vault(self, site: str) -> list[dict[str, Any]]:
        """What `site` keeps for other entities: owner, bytes, blobs, rules, agreement."""
        return list(self.http(site).call("GET", "/v1/vault")["owners"])

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

    def rotate_key(self, new: EntityKeys) -> dict[str, Any]:
        """Bind this client's entity to `new`'s key at the registry (signed with the
        current key, proven by the new one); copy the new key to the entity's sites."""
        me = self._me()
        proof = b64e(new.private.sign(rotation_text(me, new.public_b64)))
        return dict(self.registry.call("POST", f"/v1/entities/{me}/key",
                                       {"public_key": new.public_b64, "proof": proof}))

    def _me(self) -> str:
        if self.keys is None:
            raise ConfigError("this needs the entity's keys (--keys), not a token")
        return self.keys.name
