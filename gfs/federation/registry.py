"""The registry: entities, sites, pools, heartbeats, links; allocates unified identifiers.

`make_app(state_dir)` builds the aiohttp application (API: docs/openapi/registry.yaml);
`hutong registry serve` runs it. State lives in an LMDB environment (value tables
`entities` and `sites`, docs/format.md "Registry state").
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature

from gfs.federation import audit_heads, expr, ids, registry_leases, registry_metrics
from gfs.federation.auth import (
    AuthError,
    NonceCache,
    b64d,
    check_body,
    public_key,
    rotation_text,
    signed_entity,
    verify_request,
)
from gfs.federation.certs import verify_ca
from gfs.federation.http import (
    MAX_JSON,
    ApiError,
    BadRequestError,
    Metrics,
    error_middleware,
    field,
    parse_json,
    read_body,
    read_json,
)
from gfs.meta import LmdbEngine, WriteTxn

DEFAULT_TTL = 15.0
TIERS = ("hot", "warm", "cold")
ADMISSIONS = ("operator", "open")
"""`operator`: entities exist once the operator admits them; `open`: on registration."""
MAX_PENDING = 256
"""Most pending registration requests kept for the operator (oldest dropped)."""
MAX_REVOKED = 4096
"""Most individually revoked tokens an entity lists (expired ones are dropped first)."""
MAX_REVOKED_CERTS = 4096
"""Most certificates one entity lists as revoked (`revoked_certs`, serials in hex)."""
MAX_SITES = 64
"""Most sites one entity may register."""
MAX_INFO = 4096
"""Largest heartbeat `info` object (bytes of compact JSON); listings leave it out."""


class RegistryState:
    """The registry's records in an LMDB environment."""

    def __init__(self, root: str | Path, ttl: float = DEFAULT_TTL,
                 admission: str = "operator") -> None:
        if admission not in ADMISSIONS:
            raise ValueError(f"admission must be one of {ADMISSIONS}, not {admission!r}")
        self.admission = admission
        self.root = Path(root)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.engine = LmdbEngine(str(self.root / "meta"))
        self.ttl = ttl
        self.nonces = NonceCache()
        self.audience = ""
        """`host:port` that signed requests must name (`audience_of` the served URL)."""
        self.metrics = Metrics("hutong_registry")
        self.notary = audit_heads.notary_key(self.root)
        """Signs the audit heads the registry keeps (gfs.federation.audit_heads)."""

    def close(self) -> None:
        self.engine.close()

    # -- records -------------------------------------------------------------
    def entity(self, name: str) -> dict[str, Any] | None:
        with self.engine.read() as txn:
            raw = txn.get_value("entities", name.encode())
        return None if raw is None else dict(json.loads(raw))

    def entities(self) -> list[dict[str, Any]]:
        with self.engine.read() as txn:
            return [json.loads(v) for _, v in txn.iter_values("entities")]

    def site(self, name: str) -> dict[str, Any] | None:
        with self.engine.read() as txn:
            raw = txn.get_value("sites", b"site:" + name.encode())
        return None if raw is None else self._with_status(json.loads(raw))

    def sites(self) -> list[dict[str, Any]]:
        """Every site, without its heartbeat `info` (which `site(name)` returns)."""
        out = []
        with self.engine.read() as txn:
            for _, v in txn.iter_values("sites", b"site:"):
                rec = json.loads(v)
                rec.pop("info", None)
                out.append(self._with_status(rec))
        return out

    def delete_site(self, name: str, entity: str) -> dict[str, Any]:
        """Remove site `name` of `entity` and the links from or to it."""
        with self.engine.write() as txn:
            key = b"site:" + name.encode()
            raw = txn.get_value("sites", key)
            if raw is None:
                raise ApiError(f"site {name!r} is not registered", 404, "not_found")
            rec = json.loads(raw)
            if rec["entity"] != entity:
                raise AuthError(f"site {name!r} belongs to {rec['entity']!r}; only it may "
                                "remove it", 403, "forbidden")
            txn.delete_value("sites", key)
            for k, v in list(txn.iter_values("sites", b"link:")):
                link = json.loads(v)
                if name in (link["a"], link["b"]):
                    txn.delete_value("sites", k)
            ent = json.loads(txn.get_value("entities", entity.encode()) or b"{}")
            if ent.get("primary") == name:
                ent["primary"] = None
                txn.put_value("entities", entity.encode(), json.dumps(ent).encode())
        rec.pop("info", None)
        return self._with_status(rec)

    def links(self) -> list[dict[str, Any]]:
        with self.engine.read() as txn:
            return [json.loads(v) for _, v in txn.iter_values("sites", b"link:")]

    def _with_status(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec["status"] = "up" if time.time() - rec.get("last_seen", 0) < self.ttl else "down"
        return rec

    @staticmethod
    def _serial(txn: WriteTxn, owner: str, typ: str) -> int:
        key = f"serial:{owner}:{typ}".encode()
        raw = txn.get_value("sites", key)
        n = (struct.unpack("<I", raw)[0] if raw else 0) + 1
        if n > ids.MAX_SERIAL:
            raise ApiError(f"no serials left for {owner}/{typ}", 507, "exhausted")
        txn.put_value("sites", key, struct.pack("<I", n))
        return n

    def put_entity(self, rec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """A signed registration: the existing record if the key matches; a new one if
        admission is open; otherwise a pending request for the operator and a 403."""
        with self.engine.write() as txn:
            raw = txn.get_value("entities", rec["name"].encode())
            if raw is not None:
                old = json.loads(raw)
                if old["public_key"] != rec["public_key"]:
                    raise ApiError(f"entity {rec['name']!r} is registered with another key; "
                                   "rotate it with POST /v1/entities/NAME/key", 409,
                                   "conflict")
                if "ca" in rec and (old.get("ca"), old.get("ca_sig")) != (rec["ca"],
                                                                         rec["ca_sig"]):
                    old |= {"ca": rec["ca"], "ca_sig": rec["ca_sig"]}
                    txn.put_value("entities", rec["name"].encode(), json.dumps(old).encode())
                return old, False
            if self.admission == "operator":
                self._request(txn, rec)
            else:
                return self._create(txn, rec), True
        raise AuthError(f"entity {rec['name']!r} is not admitted at this registry; its "
                        "operator admits it with `hutong registry admit` (the request is "
                        "listed by `hutong registry pending`)", 403, "not_admitted")

    def _create(self, txn: WriteTxn, rec: dict[str, Any]) -> dict[str, Any]:
        owner = rec["name"].upper()
        rec["id"] = str(ids.make(owner, rec["industry"], rec["region"], "E", "ORG",
                                 self._serial(txn, owner, "E")))
        rec["created"] = time.time()
        rec["primary"] = None
        rec["revoked"] = []
        rec["revoked_before"] = 0
        txn.put_value("entities", rec["name"].encode(), json.dumps(rec).encode())
        txn.delete_value("sites", f"pending:{rec['name']}".encode())
        return rec

    def _request(self, txn: WriteTxn, rec: dict[str, Any]) -> None:
        key = f"pending:{rec['name']}".encode()
        reqs = [r for r in json.loads(txn.get_value("sites", key) or b"[]")
                if r["public_key"] != rec["public_key"]]
        reqs.append(rec | {"requested": time.time()})
        txn.put_value("sites", key, json.dumps(reqs[-8:]).encode())
        pending = [k for k, _ in txn.iter_values("sites", b"pending:")]
        for k in pending[:max(0, len(pending) - MAX_PENDING)]:
            txn.delete_value("sites", k)

    def update_entity(self, name: str, change: Callable[[dict[str, Any]], None]
                      ) -> dict[str, Any]:
        """Apply `change` to entity `name`'s record in one transaction."""
        with self.engine.write() as txn:
            raw = txn.get_value("entities", name.encode())
            if raw is None:
                raise ApiError(f"entity {name!r} is not registered", 404, "not_found")
            rec = json.loads(raw)
            change(rec)
            txn.put_value("entities", name.encode(), json.dumps(rec).encode())
            return dict(rec)

    def pending(self) -> list[dict[str, Any]]:
        """Registration requests waiting for the operator."""
        with self.engine.read() as txn:
            return [r for _, v in txn.iter_values("sites", b"pending:")
                    for r in json.loads(v)]

    def admit(self, name: str, public_key_b64: str | None = None, industry: str | None = None,
              region: str | None = None, *, rekey: bool = False) -> dict[str, Any]:
        """The operator admits entity `name` with its key (by default the one of its only
        pending request); with `rekey`, rebinds an admitted entity to a new key."""
        ids.check_name(name, "entity name")
        with self.engine.write() as txn:
            reqs = json.loads(txn.get_value("sites", f"pending:{name}".encode()) or b"[]")
            if public_key_b64 is None:
                if len(reqs) != 1:
                    raise ApiError(f"entity {name!r} has {len(reqs)} pending requests; pass "
                                   "--key to say which key to admit", 400, "bad_request")
                public_key_b64 = str(reqs[0]["public_key"])
            public_key(public_key_b64)
            req: dict[str, Any] = next((r for r in reqs if r["public_key"] == public_key_b64),
                                       {})
            raw = txn.get_value("entities", name.encode())
            if raw is not None:
                old = json.loads(raw)
                if old["public_key"] != public_key_b64 and not rekey:
                    raise ApiError(f"entity {name!r} is admitted with another key; pass "
                                   "--rekey to bind it to this one", 409, "conflict")
                old["public_key"] = public_key_b64
                txn.put_value("entities", name.encode(), json.dumps(old).encode())
                return dict(old)
            industry = (industry or req.get("industry") or "GEN").upper()
            if industry not in ids.INDUSTRIES:
                raise ApiError(f"industry {industry!r} is not one of "
                               + " ".join(ids.INDUSTRIES), 400, "bad_request")
            region = ids.check_name(region or req.get("region") or "", "region")
            admitted = {"name": name, "industry": industry, "region": region,
                        "public_key": public_key_b64}
            if "ca" in req:
                admitted |= {"ca": req["ca"], "ca_sig": req["ca_sig"]}
            return self._create(txn, admitted)

    def put_site(self, rec: dict[str, Any]) -> dict[str, Any]:
        with self.engine.write() as txn:
            ent = json.loads(txn.get_value("entities", rec["entity"].encode()) or b"{}")
            if not ent:
                raise ApiError(f"entity {rec['entity']!r} is not registered", 404, "not_found")
            key = b"site:" + rec["name"].encode()
            raw = txn.get_value("sites", key)
            old = json.loads(raw) if raw else None
            if old is not None and old["entity"] != rec["entity"]:
                raise ApiError(f"site {rec['name']!r} belongs to entity {old['entity']!r}", 409,
                               "conflict")
            if old is None:
                count = sum(1 for _, v in txn.iter_values("sites", b"site:")
                            if json.loads(v)["entity"] == rec["entity"])
                if count >= MAX_SITES:
                    raise ApiError(f"entity {rec['entity']!r} already has {count} sites, the "
                                   f"most one entity may register; remove one first (DELETE "
                                   "/v1/sites/NAME)", 409, "too_many_sites")
            owner = rec["entity"].upper()
            region = rec["region"]
            rec["id"] = old["id"] if old else str(ids.make(
                owner, ent["industry"], region, "S", "DC", self._serial(txn, owner, "S")))
            old_pools = {p["name"]: p["id"] for p in (old or {}).get("pools", [])}
            for p in rec["pools"]:
                p["id"] = old_pools.get(p["name"]) or str(ids.make(
                    owner, ent["industry"], region, "P", p["tier"],
                    self._serial(txn, owner, "P")))
            rec["registered"] = old["registered"] if old else time.time()
            rec["last_seen"] = time.time()
            txn.put_value("sites", key, json.dumps(rec).encode())
            if rec["primary"]:
                ent["primary"] = rec["name"]
                txn.put_value("entities", rec["entity"].encode(), json.dumps(ent).encode())
        return self._with_status(rec)

    def heartbeat(self, name: str, used: dict[str, int], info: dict[str, Any]) -> dict[str, Any]:
        with self.engine.write() as txn:
            key = b"site:" + name.encode()
            rec = json.loads(txn.get_value("sites", key) or b"{}")
            if not rec:
                raise ApiError(f"site {name!r} is not registered", 404, "not_found")
            rec["last_seen"] = time.time()
            for p in rec["pools"]:
                if p["name"] in used:
                    p["used"] = used[p["name"]]
            rec["info"] = info
            txn.put_value("sites", key, json.dumps(rec).encode())
        return self._with_status(rec)

    def put_link(self, a: str, b: str, rtt_ms: float, mbps: float) -> dict[str, Any]:
        rec = {"a": a, "b": b, "rtt_ms": rtt_ms, "mbps": mbps, "measured": time.time()}
        with self.engine.write() as txn:
            txn.put_value("sites", f"link:{a}\0{b}".encode(), json.dumps(rec).encode())
        return rec

    def pool_rows(self) -> list[dict[str, Any]]:
        """One attribute row per pool, with its site's attributes (for expressions)."""
        ents = {e["name"]: e for e in self.entities()}
        rows = []
        for s in self.sites():
            for p in s["pools"]:
                rows.append({"site": s["name"], "entity": s["entity"], "region": s["region"],
                             "status": s["status"], "tier": p["tier"], "pool": p["name"],
                             "pool_id": p["id"], "capacity": p["capacity"],
                             "used": p.get("used", 0),
                             "free": max(0, p["capacity"] - p.get("used", 0)),
                             "industry": ents.get(s["entity"], {}).get("industry", "")})
        return rows


STATE_KEY: web.AppKey[RegistryState] = web.AppKey("registry_state", RegistryState)


def _state(request: web.Request) -> RegistryState:
    return request.app[STATE_KEY]


def _verify(request: web.Request, key_b64: str) -> str:
    st = _state(request)
    if not st.audience:
        raise AuthError("the registry is starting; retry", 503, "starting")
    return verify_request(request.headers, request.method, request.path_qs, st.audience,
                          public_key(key_b64), st.nonces)


async def _signed_json(request: web.Request, entity: str) -> dict[str, Any]:
    """The JSON body of a request that `entity` must have signed; the signature is checked
    on the headers before the body is read."""
    rec = _state(request).entity(entity)
    if rec is None:
        raise AuthError(f"entity {entity!r} is not registered", 403, "forbidden")
    who = _verify(request, rec["public_key"])
    if who != entity:
        raise AuthError(f"request signed by {who!r}, but only {entity!r} may do this", 403,
                        "forbidden")
    return await read_json(request, signed=True)


def _name(v: Any, what: str) -> str:
    try:
        return ids.check_name(v, what)
    except ids.IdentifierError as e:
        raise BadRequestError(str(e)) from None


async def health(request: web.Request) -> web.Response:
    st = _state(request)
    return web.json_response({"status": "ok", "entities": len(st.entities()),
                              "sites": len(st.sites()), "time": time.time()})


async def metrics(request: web.Request) -> web.Response:
    st = _state(request)
    registry_metrics.check(request.headers, st.notary.public_key())
    return web.Response(text=st.metrics.render(), content_type="text/plain")


async def register_entity(request: web.Request) -> web.Response:
    body = await read_body(request, MAX_JSON)
    data = parse_json(body)
    name = _name(field(data, "name", str), "entity name")
    industry = field(data, "industry", str, "GEN").upper()
    if industry not in ids.INDUSTRIES:
        raise BadRequestError(f"industry {industry!r} is not one of {' '.join(ids.INDUSTRIES)}")
    region = _name(field(data, "region", str), "region")
    key_b64 = field(data, "public_key", str)
    public_key(key_b64)
    # proof of possession: the registration is signed by the key it registers
    who = _verify(request, key_b64)
    check_body(request.headers, hashlib.sha256(body).hexdigest())
    if who != name:
        raise AuthError(f"registration of {name!r} signed as {who!r}", 403, "forbidden")
    rec: dict[str, Any] = {"name": name, "industry": industry, "region": region,
                           "public_key": key_b64}
    ca = field(data, "ca", str, None)
    if ca is not None:  # the entity's TLS CA, bound to its key (docs/trust.md "Transport")
        ca_sig = field(data, "ca_sig", str)
        verify_ca(name, ca, ca_sig, public_key(key_b64))
        rec |= {"ca": ca, "ca_sig": ca_sig}
    rec, created = _state(request).put_entity(rec)
    return web.json_response(rec, status=201 if created else 200)


async def rotate_key(request: web.Request) -> web.Response:
    """A new key for an entity: signed by the current key, with a proof by the new one."""
    name = _name(request.match_info["name"], "entity name")
    data = await _signed_json(request, name)
    new = field(data, "public_key", str)
    try:
        public_key(new).verify(b64d(field(data, "proof", str)), rotation_text(name, new))
    except (InvalidSignature, ValueError):
        raise AuthError("proof must be the new key's signature of the rotation text "
                        "(auth.rotation_text)", 400, "bad_proof") from None

    ca_sig = field(data, "ca_sig", str, None)

    def change(rec: dict[str, Any]) -> None:
        if rec.get("ca"):  # the CA stays bound: the new key signs it too
            if ca_sig is None:
                raise BadRequestError(f"entity {name!r} has a CA certificate: send ca_sig, "
                                      "the new key's signature of it (certs.sign_ca)")
            verify_ca(name, str(rec["ca"]), ca_sig, public_key(new))
            rec["ca_sig"] = ca_sig
        rec["public_key"] = new
        rec["rotated"] = time.time()
    return web.json_response(_state(request).update_entity(name, change))


async def revoke_tokens(request: web.Request) -> web.Response:
    """Revoke one token of the entity (`jti`, with its `exp`), all issued `before`, or
    one certificate its CA issued (`cert`: its serial number, hex)."""
    name = _name(request.match_info["name"], "entity name")
    data = await _signed_json(request, name)
    cert = field(data, "cert", str, None,
                 check=lambda c: re.fullmatch(r"[0-9a-f]{1,40}", c) is not None)
    if cert is not None:
        if set(data) != {"cert"}:
            raise BadRequestError("send {cert} alone to revoke a certificate")

        def revoke_cert(rec: dict[str, Any]) -> None:
            serials = [c for c in rec.get("revoked_certs", []) if c != cert]
            if len(serials) >= MAX_REVOKED_CERTS:
                raise ApiError(f"entity {name!r} already revokes {MAX_REVOKED_CERTS} "
                               "certificates; make a new CA (rotate the entity key)", 409,
                               "too_many")
            rec["revoked_certs"] = [*serials, cert]
        return web.json_response(_state(request).update_entity(name, revoke_cert))
    jti = field(data, "jti", str, None, check=lambda j: re.fullmatch(r"[0-9a-f]{16,64}", j)
                is not None)
    exp = field(data, "exp", int, None, check=lambda e: 0 < e < 1 << 40)
    before = field(data, "before", (int, float), None, check=lambda b: 0 < b < 1e11)
    if (jti is None) == (before is None) or (jti is not None and exp is None):
        raise BadRequestError("send either {jti, exp} (one token) or {before} (all tokens "
                              "issued before that time)")
    now = time.time()

    def change(rec: dict[str, Any]) -> None:
        if before is not None:
            rec["revoked_before"] = max(float(rec.get("revoked_before", 0)), float(before))
        else:
            live = [r for r in rec.get("revoked", []) if r["exp"] > now]
            live = [r for r in live if r["jti"] != jti] + [{"jti": jti, "exp": exp}]
            if len(live) > MAX_REVOKED:
                raise ApiError(f"entity {name!r} already revokes {MAX_REVOKED} live tokens; "
                               "revoke all issued before a time instead", 409, "too_many")
            rec["revoked"] = live
    return web.json_response(_state(request).update_entity(name, change))


async def put_audit_head(request: web.Request) -> web.Response:
    """An entity's privacy audit-log head, kept signed and timestamped."""
    name = _name(request.match_info["name"], "entity name")
    data = await _signed_json(request, name)
    st = _state(request)
    with st.engine.write() as txn:
        rec = audit_heads.keep(txn, st.notary, name, data)
    return audit_heads.answer(rec, st.notary)


async def get_audit_head(request: web.Request) -> web.Response:
    name = _name(request.match_info["name"], "entity name")
    st = _state(request)
    with st.engine.read() as txn:
        raw = txn.get_value("sites", audit_heads.record_key(name))
    if raw is None:
        raise ApiError(f"the registry keeps no audit head of {name!r}", 404, "not_found")
    return audit_heads.answer(json.loads(raw), st.notary)


async def list_entities(request: web.Request) -> web.Response:
    return web.json_response({"entities": _state(request).entities()})


async def get_entity(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rec = _state(request).entity(name)
    if rec is None:
        raise ApiError(f"entity {name!r} is not registered", 404, "not_found")
    return web.json_response(rec)


async def put_site(request: web.Request) -> web.Response:
    name = _name(request.match_info["name"], "site name")
    entity = signed_entity(request.headers)
    if entity is None:
        raise AuthError("unsigned request: sign it with the entity's key (X-Hutong-* headers)")
    data = await _signed_json(request, entity)
    if field(data, "entity", str) != entity:
        raise AuthError(f"site {name!r} for entity {data['entity']!r} must be signed by it",
                        403, "forbidden")
    pools = []
    for p in field(data, "pools", list, check=lambda v: 1 <= len(v) <= 64):
        if not isinstance(p, dict):
            raise BadRequestError("each pool must be an object")
        tier = field(p, "tier", str, check=lambda t: t in TIERS)
        pools.append({"name": _name(field(p, "name", str), "pool name"), "tier": tier,
                      "capacity": field(p, "capacity", int, check=lambda c: c >= 0),
                      "used": field(p, "used", int, 0, check=lambda c: c >= 0)})
    if len({p["name"] for p in pools}) != len(pools):
        raise BadRequestError("pool names must be unique within a site")
    rec = {"name": name, "entity": entity,
           "region": _name(field(data, "region", str), "region"),
           "endpoint": field(data, "endpoint", str,
                             check=lambda u: u.startswith(("https://", "http://"))
                             and len(u) < 256),
           "mover": field(data, "mover", str, None, check=lambda m: len(m) < 256,
                          nullable=True),
           "primary": field(data, "primary", bool, False), "pools": pools}
    return web.json_response(_state(request).put_site(rec))


async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    st = _state(request)
    site = st.site(name)
    if site is None:
        raise ApiError(f"site {name!r} is not registered; PUT /v1/sites/{name} first", 404,
                       "not_found")
    data = await _signed_json(request, site["entity"])
    used = field(data, "used", dict, {})
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in used.values()):
        raise BadRequestError("field 'used' must map pool names to byte counts")
    info = field(data, "info", dict, {})
    if len(json.dumps(info, separators=(",", ":"))) > MAX_INFO:
        raise ApiError(f"heartbeat info of site {name!r} exceeds {MAX_INFO} bytes of JSON; "
                       "send a summary", 413, "too_large")
    return web.json_response(st.heartbeat(name, used, info))


async def delete_site(request: web.Request) -> web.Response:
    name = _name(request.match_info["name"], "site name")
    st = _state(request)
    site = st.site(name)
    if site is None:
        raise ApiError(f"site {name!r} is not registered", 404, "not_found")
    await _signed_json(request, site["entity"])
    return web.json_response(st.delete_site(name, site["entity"]))


def _where(request: web.Request) -> expr.Predicate:
    try:
        return expr.parse(request.query.get("where", ""))
    except expr.ExpressionError as e:
        raise BadRequestError(str(e)) from None


async def list_sites(request: web.Request) -> web.Response:
    st = _state(request)
    pred = _where(request)
    names = {r["site"] for r in st.pool_rows() if pred(r)}
    return web.json_response({"sites": [s for s in st.sites() if s["name"] in names]})


async def get_site(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rec = _state(request).site(name)
    if rec is None:
        raise ApiError(f"site {name!r} is not registered", 404, "not_found")
    return web.json_response(rec)


async def list_pools(request: web.Request) -> web.Response:
    pred = _where(request)
    return web.json_response({"pools": [r for r in _state(request).pool_rows() if pred(r)]})


async def put_link(request: web.Request) -> web.Response:
    st = _state(request)
    a, b = request.match_info["a"], request.match_info["b"]
    site = st.site(a)
    if site is None or st.site(b) is None:
        raise ApiError(f"link {a} -> {b}: both sites must be registered", 404, "not_found")
    data = await _signed_json(request, site["entity"])
    rtt = field(data, "rtt_ms", (int, float), check=lambda v: 0 <= v < 1e6)
    mbps = field(data, "mbps", (int, float), 0.0, check=lambda v: 0 <= v < 1e9)
    return web.json_response(st.put_link(a, b, float(rtt), float(mbps)))


async def list_links(request: web.Request) -> web.Response:
    return web.json_response({"links": _state(request).links()})


async def put_lease(request: web.Request) -> web.Response:
    """Write or renew a lease of the entity (signed by it; gfs.federation.registry_leases)."""
    entity = _name(request.match_info["entity"], "entity name")
    data = await _signed_json(request, entity)
    st = _state(request)
    driver, ttl, flows = registry_leases.checked(request.match_info["job"], data,
                                                 lambda s: st.site(s) is not None)
    with st.engine.write() as txn:
        rec = registry_leases.keep(txn, entity, request.match_info["job"], driver, ttl, flows,
                                   time.time())
    return web.json_response(rec)


async def delete_lease(request: web.Request) -> web.Response:
    entity = _name(request.match_info["entity"], "entity name")
    await _signed_json(request, entity)
    st = _state(request)
    k = registry_leases.key(entity, request.match_info["job"])
    with st.engine.write() as txn:
        if txn.get_value("sites", k) is None:
            raise ApiError(f"entity {entity!r} holds no lease of job "
                           f"{request.match_info['job']!r}", 404, "not_found")
        txn.delete_value("sites", k)
    return web.json_response({"deleted": request.match_info["job"]})


async def list_leases(request: web.Request) -> web.Response:
    st = _state(request)
    with st.engine.read() as txn:
        raw = [v for _, v in txn.iter_values("sites", registry_leases.PREFIX)]
    return web.json_response({"leases": registry_leases.live(raw, time.time())})


async def get_id(request: web.Request) -> web.Response:
    text = request.match_info["ident"]
    try:
        ident = ids.parse(text)
    except ids.IdentifierError as e:
        raise BadRequestError(str(e)) from None
    st = _state(request)
    names: list[str] = []
    if ident.type == "E":
        names = [e["name"] for e in st.entities() if e["id"] == str(ident)]
    for s in st.sites():
        if s["id"] == str(ident):
            names.append(s["name"])
        names += [f"{s['name']}/{p['name']}" for p in s["pools"] if p["id"] == str(ident)]
    if not names:
        raise ApiError(f"identifier {ident} is valid but not allocated", 404, "not_found")
    return web.json_response({"id": str(ident), "kind": ident.kind, "name": names[0],
                              "owner": ident.owner, "industry": ident.industry,
                              "region": ident.region, "spec": ident.spec,
                              "serial": ident.serial})


#: Modules that add routes to the registry: each has `install_registry(app, state)`
#: (imported at start, as gfs.federation.site does its EXTENSIONS).
EXTENSIONS: tuple[str, ...] = ("gfs.gateway.daemon_dashboard",)


def make_app(state: RegistryState) -> web.Application:
    """The registry's aiohttp application over `state` (closed on app cleanup), with
    the routes of EXTENSIONS."""
    app = web.Application(client_max_size=1 << 20,
                          middlewares=[state.metrics.middleware, error_middleware])
    app[STATE_KEY] = state
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/entities", register_entity)
    app.router.add_get("/v1/entities", list_entities)
    app.router.add_get("/v1/entities/{name}", get_entity)
    app.router.add_post("/v1/entities/{name}/key", rotate_key)
    app.router.add_post("/v1/entities/{name}/revoke", revoke_tokens)
    app.router.add_put("/v1/sites/{name}", put_site)
    app.router.add_get("/v1/sites", list_sites)
    app.router.add_get("/v1/sites/{name}", get_site)
    app.router.add_delete("/v1/sites/{name}", delete_site)
    app.router.add_post("/v1/sites/{name}/heartbeat", heartbeat)
    app.router.add_get("/v1/pools", list_pools)
    app.router.add_put("/v1/links/{a}/{b}", put_link)
    app.router.add_get("/v1/links", list_links)
    app.router.add_get("/v1/leases", list_leases)
    app.router.add_put("/v1/leases/{entity}/{job}", put_lease)
    app.router.add_delete("/v1/leases/{entity}/{job}", delete_lease)
    app.router.add_get("/v1/ids/{ident}", get_id)
    app.router.add_put("/v1/audit/{name}/head", put_audit_head)
    app.router.add_get("/v1/audit/{name}/head", get_audit_head)
    for name in EXTENSIONS:
        importlib.import_module(name).install_registry(app, state)

    async def cleanup(_app: web.Application) -> None:
        state.close()
    app.on_cleanup.append(cleanup)
    return app
