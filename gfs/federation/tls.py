"""TLS 1.3 between the parties of a federation: who a client expects at a URL, the
contexts that check it, and the servers' side (mutual TLS at sites).

A `Trust` knows the registry's CA (pinned at `hutong site init`), this party's own
entity CA and certificate (if it has one), and learns other entities' CAs from the
registry, each checked against the entity's Ed25519 key (`certs.verify_ca`). A client
connecting to a URL asks the registry which site serves there and accepts only a
certificate issued by that site's entity CA for that site's name. docs/trust.md
"Transport" has the policy.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gfs.errors import ConfigError, HutongError
from gfs.federation import certs
from gfs.federation.auth import AuthError, public_key, signed_entity

if TYPE_CHECKING:
    from gfs.federation.auth import EntityKeys
    from gfs.federation.http import HttpClient
    from gfs.federation.registry_view import RegistryView

log = logging.getLogger("gfs.federation")
MISS_REFRESH = 1.0
"""Least seconds between two re-reads of the entity CAs for an unknown signer."""
CHECKED_LIMIT = 4096
MAX_REVOKED_CERTS = 4096
"""Most revoked certificate serials read per entity (the registry keeps no more)."""
"""Client certificates whose issuer check a site remembers."""


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{(u.hostname or '').lower()}:{u.port or 443}"


class Trust:
    """What one party trusts and presents on TLS connections; thread-safe.

    `directory` is a TLS directory (`certs` layout) with this party's CA and node
    certificate, presented as client certificate; without it the party is a user (TLS
    plus a token). `plaintext` allows http:// URLs (PLAINTEXT_OPTION)."""

    def __init__(self, registry_url: str, registry_ca: bytes | None, *,
                 directory: Path | None = None, plaintext: bool = False) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.registry_ca = registry_ca
        self.directory = directory
        self.plaintext = plaintext
        self.entity: str | None = None
        self.own_ca: x509.Certificate | None = None
        if directory is not None and (directory / certs.CA_CERT).exists():
            self.own_ca = certs.load_cert((directory / certs.CA_CERT).read_bytes(),
                                          str(directory / certs.CA_CERT))
            self.entity = self.own_ca.subject.get_attributes_for_oid(
                x509.oid.NameOID.ORGANIZATION_NAME)[0].value  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._cas: dict[tuple[str, str, str, str], x509.Certificate] = {}
        """CAs checked against their entity's key, by (entity, CA, signature, key)."""
        self._revoked: dict[str, frozenset[int]] = {}
        self._registry: HttpClient | None = None
        self._view: RegistryView | None = None

    @classmethod
    def load(cls, directory: str | Path, registry: str | None = None, *,
             plaintext: bool = False) -> Trust:
        """The trust of a site (its `STATE/federation/tls`): the registry URL and CA
        pinned at init, the entity CA and the site's certificate."""
        d = Path(directory)
        url = registry or _read(d / certs.REGISTRY_URL, "registry URL").decode().strip()
        ca = d / certs.REGISTRY_CA
        return cls(url, ca.read_bytes() if ca.exists() else None, directory=d,
                   plaintext=plaintext)

    def serves(self, url: str) -> bool:
        """Whether `url` is this trust's registry."""
        return _key(url) == _key(self.registry_url)

    def own_ca_pem(self) -> bytes | None:
        """This party's entity CA certificate (PEM), if it has one."""
        if self.own_ca is None:
            return None
        return self.own_ca.public_bytes(serialization.Encoding.PEM)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    # -- who is where --------------------------------------------------------------------
    def _registry_client(self) -> HttpClient:
        from gfs.federation.http import HttpClient

        with self._lock:
            if self._registry is None:
                self._registry = HttpClient(self.registry_url, tls=self, timeout=10)
            return self._registry

    @property
    def view(self) -> RegistryView:
        """The registry's entities and sites as this party knows them: the one cache of
        the registry a process holds per trust (clients of the same registry share it,
        `FederationClient.view`)."""
        from gfs.federation.registry_view import RegistryView

        registry = self._registry_client()
        with self._lock:
            if self._view is None:
                self._view = RegistryView(registry)
            return self._view

    def site_at(self, url: str, refresh: bool = False) -> tuple[str, str]:
        """(site, entity) the registry lists at endpoint `url`; AuthError if none."""
        key = _key(url)
        for again in (refresh, True):
            sites = {_key(str(r["endpoint"])): (str(r["name"]), str(r["entity"]))
                     for r in self.view.sites(again).values() if r.get("endpoint")}
            if key in sites:
                return sites[key]
            if again:
                break
        raise AuthError(f"no site of registry {self.registry_url} serves at {url}; "
                        "connect to an endpoint the registry lists", 401, "unknown_peer")

    def entity_ca(self, entity: str, refresh: bool = False) -> x509.Certificate:
        """The CA of `entity`: this party's own from its directory, another's as the
        registry publishes it (`view`), checked against the entity's key."""
        if entity == self.entity and self.own_ca is not None:
            return self.own_ca
        rec = self.view.entities(refresh).get(entity)
        if not refresh and (rec is None or not rec.get("ca")):  # new since: ask again
            rec = self.view.entities(True).get(entity)
        if rec is None:
            raise AuthError(f"entity {entity!r} is not registered at {self.registry_url}",
                            401, "unknown_peer")
        ca = self._verified(rec)
        if ca is None:
            raise AuthError(f"entity {entity!r} has published no CA certificate; its sites "
                            "must register again (`hutong site serve` does at start)", 401,
                            "no_ca")
        return ca

    def _note_revoked(self, rec: dict[str, Any]) -> None:
        """Keep the serials of the certificates the entity of `rec` revoked (hex)."""
        with self._lock:
            self._revoked[str(rec.get("name", ""))] = frozenset(
                int(str(x), 16) for x in rec.get("revoked_certs", [])[:MAX_REVOKED_CERTS])

    def _verified(self, rec: dict[str, Any]) -> x509.Certificate | None:
        name = str(rec.get("name", ""))
        self._note_revoked(rec)
        if not rec.get("ca") or not rec.get("ca_sig"):
            return None
        key = (name, str(rec["ca"]), str(rec["ca_sig"]), str(rec["public_key"]))
        with self._lock:
            ca = self._cas.get(key)
        if ca is None:
            ca = certs.verify_ca(name, key[1], key[2], public_key(key[3]))
            with self._lock:
                if len(self._cas) >= CHECKED_LIMIT:
                    self._cas.clear()
                self._cas[key] = ca
        return ca

    def revoked_certs(self) -> dict[str, frozenset[int]]:
        """Serial numbers of the certificates each entity revoked, as last read."""
        with self._lock:
            return dict(self._revoked)

    def entity_cas(self) -> dict[str, x509.Certificate]:
        """Every entity's CA the registry publishes, asked again now (bad bindings left
        out and logged)."""
        out: dict[str, x509.Certificate] = {}
        for rec in self.view.entities(refresh=True).values():
            try:
                ca = self._verified(rec)
            except AuthError as e:
                log.warning("registry %s: %s", self.registry_url, e)
                continue
            if ca is not None:
                out[str(rec["name"])] = ca
        if self.entity is not None and self.own_ca is not None:
            out[self.entity] = self.own_ca
        return out

    # -- client side ---------------------------------------------------------------------
    def client_context(self, url: str, site: str | None = None, entity: str | None = None
                       ) -> tuple[ssl.SSLContext, str]:
        """(context, server name) for a connection to `url`: the registry's CA and name
        for the registry; otherwise the CA of the entity of the site the registry lists
        there (or of `site` of `entity`, when the caller names them) and that site's
        name."""
        if _key(url) == _key(self.registry_url):
            if self.registry_ca is None:
                raise ConfigError(f"no CA pinned for registry {self.registry_url}; pass "
                                  "--registry-ca FILE (the registry's STATE/tls/ca.pem)")
            return self._ctx(self.registry_ca.decode("ascii")), certs.REGISTRY_NAME
        if site is None:
            site, entity = self.site_at(url)
        elif entity is None:
            entity = self._entity_of_site(site)
        return self._ctx(_pem(self.entity_ca(entity))), certs.site_name(site, entity)

    def server_entity(self, url: str, site: str | None = None,
                      entity: str | None = None) -> str | None:
        """The entity whose CA issues the certificate of the server at `url` (as
        `client_context` resolves it), or None for the registry."""
        if _key(url) == _key(self.registry_url):
            return None
        if entity is not None:
            return entity
        return self._entity_of_site(site) if site is not None else self.site_at(url)[1]

    def check_server_cert(self, entity: str | None, url: str, leaf_der: bytes) -> None:
        """AuthError if `entity` revoked the certificate `leaf_der` that the server at
        `url` presented (the registry's list, as this trust last read it with the
        entity's CA: a revoked certificate, with its key stolen, no longer passes for
        the site). While the registry cannot be asked, the list last read is used: sites
        keep talking to each other when the registry is down."""
        if entity is None:
            return
        try:
            rec = self.view.entities().get(entity)  # cached; also this party's own entity
        except HutongError as e:  # the registry unreachable: the list as last read
            log.debug("revocations of %s not refreshed (%s); using the list last read",
                      entity, e)
        else:
            if rec is not None:
                self._note_revoked(rec)
        serial = x509.load_der_x509_certificate(leaf_der).serial_number
        with self._lock:
            revoked = self._revoked.get(entity, frozenset())
        if serial in revoked:
            raise AuthError(f"the server at {url} presented certificate {serial:x}, which "
                            f"{entity!r} revoked; it is not that site (or the site must get "
                            "a new certificate)", 401, "revoked_certificate")

    def _entity_of_site(self, site: str) -> str:
        rec = self.view.sites().get(site) or self.view.sites(refresh=True).get(site)
        if rec is None:
            raise AuthError(f"no site {site!r} is registered at {self.registry_url}", 401,
                            "unknown_peer")
        return str(rec["entity"])

    def _ctx(self, ca_pem: str) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(ca_pem)
            if ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
                ctx.load_verify_locations(cadata=ca_pem)
                if self.directory is not None and (self.directory / certs.NODE_CERT).exists():
                    ctx.load_cert_chain(self.directory / certs.NODE_CERT,
                                        self.directory / certs.NODE_KEY)
                self._contexts[ca_pem] = ctx
            return ctx


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no {what} in {path.parent}; create it with `hutong site init "
                          "--registry URL --registry-ca FILE`") from None


_BY_DIR: dict[Path, Trust] = {}
_BY_DIR_LOCK = threading.Lock()


def trust_for(keys: EntityKeys | None) -> Trust | None:
    """The trust kept beside entity keys loaded from a site's directory (one per
    directory in a process), or None for keys that have no TLS directory."""
    d = getattr(keys, "directory", None)
    if d is None or not (Path(d) / "tls" / certs.REGISTRY_URL).exists():
        return None
    tls_dir = Path(d) / "tls"
    with _BY_DIR_LOCK:
        t = _BY_DIR.get(tls_dir)
        if t is None:
            t = _BY_DIR[tls_dir] = Trust.load(tls_dir)
        return t


# -- server side ---------------------------------------------------------------------------

class ServerTls:
    """A server's TLS 1.3 context. With `mutual` (sites), clients may present a
    certificate, and one that no entity CA of the registry issued fails the handshake;
    `refresh` re-reads the entity CAs (new contexts take over through SNI)."""

    def __init__(self, directory: Path, trust: Trust | None = None, *,
                 mutual: bool = False) -> None:
        self.directory, self.trust, self.mutual = directory, trust, mutual
        self._missed = -MISS_REFRESH
        self.cas: dict[str, x509.Certificate] = {}
        if mutual and trust is not None and trust.entity and trust.own_ca is not None:
            self.cas = {trust.entity: trust.own_ca}
        self._state: tuple[dict[str, x509.Certificate], dict[str, frozenset[int]],
                           dict[tuple[str, bytes], bool]] = (self.cas, {}, {})
        self._current = self._build()
        self.context = self._build()
        self.context.sni_callback = self._sni

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.directory / certs.NODE_CERT, self.directory / certs.NODE_KEY)
        if self.mutual:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cadata="".join(_pem(c) for c in self.cas.values()))
        return ctx

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.context = self._current

    def refresh(self) -> bool:
        """Re-read the entity CAs from the registry; whether the set changed."""
        if not self.mutual or self.trust is None:
            return False
        cas = self.trust.entity_cas()
        revoked = self.trust.revoked_certs()
        if {k: c.fingerprint(hashes.SHA256()) for k, c in cas.items()} == \
                {k: c.fingerprint(hashes.SHA256()) for k, c in self.cas.items()} \
                and revoked == self._state[1]:
            return False
        self.cas = cas
        self._state = (cas, revoked, {})
        self._current = self._build()
        log.info("TLS: trusting the CAs of %d entities", len(cas))
        return True

    def client_entity_ok(self, entity: str, leaf_der: bytes) -> bool:
        """Whether `leaf_der` was issued by `entity`'s CA and not revoked by it (as last
        refreshed; answers
        are remembered until the CAs change, as every request of a connection asks)."""
        cas, revoked, checked = self._state  # one snapshot: a refresh replaces all
        key = (entity, leaf_der)
        ok = checked.get(key)
        if ok is None:
            ca = cas.get(entity)
            ok = ca is not None and certs.issued_by(leaf_der, ca) and \
                x509.load_der_x509_certificate(leaf_der).serial_number \
                not in revoked.get(entity, frozenset())
            if len(checked) >= CHECKED_LIMIT:
                checked.clear()
            checked[key] = ok
        return ok

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """A request signed by an entity must come with a client certificate of that
        entity's CA (mutual TLS): a stolen signature is useless from another host."""
        entity = signed_entity(request.headers)
        if entity is not None and self.mutual:
            sslobj = request.transport.get_extra_info("ssl_object") \
                if request.transport is not None else None
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            if der is None:
                raise AuthError(f"a request signed by {entity!r} needs a client certificate "
                                f"from {entity!r}'s CA (mutual TLS); connect with the "
                                "entity's site directory", 401, "client_certificate")
            if not self.client_entity_ok(entity, der):
                now = time.monotonic()
                if entity not in self.cas and now - self._missed >= MISS_REFRESH:
                    self._missed = now  # a new entity: read the CAs again, once a second
                    await asyncio.get_running_loop().run_in_executor(None, self.refresh)
                if not self.client_entity_ok(entity, der):
                    raise AuthError(f"the client certificate was not issued by the CA of "
                                    f"{entity!r}, which signed the request; an entity "
                                    "connects with its own certificate", 403,
                                    "client_certificate")
        return await handler(request)



def client_trust(registry: str, *, keys: EntityKeys | None = None,
                 registry_ca: bytes | None = None, plaintext: bool = False) -> Trust:
    """The trust of a client of `registry`: the one kept beside `keys` (a site's
    directory: its certificate and pinned CA) when it pins that registry's CA, a trust
    with the site's certificate and `registry_ca` when either differs, else a user's
    trust in `registry_ca` (no certificate). `plaintext` allows http://."""
    base = trust_for(keys)
    if base is not None and registry_ca in (None, base.registry_ca) \
            and _key(registry) == _key(base.registry_url):
        trust = base
    elif base is not None:
        trust = Trust(registry, registry_ca or base.registry_ca, directory=base.directory)
    else:
        trust = Trust(registry, registry_ca)
    trust.plaintext = trust.plaintext or plaintext
    return trust


def read_registry_ca(source: bytes | str | Path) -> bytes:
    """The registry CA certificate (PEM) given as its bytes or text, or as the path of
    its file; ConfigError naming the file and the remedy when it is not one."""
    if isinstance(source, Path) or (isinstance(source, str) and "-----BEGIN" not in source):
        try:
            pem = Path(source).expanduser().read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read the registry CA {source}: {e.strerror}; pass "
                              "the registry's STATE/tls/ca.pem") from None
        where = f"registry CA {source}"
    else:
        pem = source.encode("ascii", "replace") if isinstance(source, str) else source
        where = "the registry CA"
    try:
        x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{where} is not a PEM certificate; pass the registry's "
                          "STATE/tls/ca.pem") from None
    return pem
