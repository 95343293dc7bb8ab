"""Who a signed S3 request is and which object store it acts on (docs/gateway.md,
"Authentication").

* `StoreAccess`, the embedded store: access keys from its `credentials` table
  (gfs.gateway.credentials), every request on the one store.
* `FederationAccess`, a gateway started with `--profile`: the access key is a
  federation token's id and the token itself comes as the session token
  (`X-Amz-Security-Token`); the secret is derived from the token (`token_secret`).
  The gateway checks the token (its issuer's signature, expiry, revocation) and
  acts with the token's own rights: a namespace opened with the token, so the
  sites enforce its prefix and scope. An entity-wide token of the profile's own
  entity acts as that entity (the profile's namespace: its grants from others
  included), read-only when the token is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gfs.federation.auth import AuthError, public_key, token_claims, token_issuer, verify_token
from gfs.gateway import credentials
from gfs.gateway.backend import EmbeddedBackend, NamespaceBackend
from gfs.gateway.credentials import Credential
from gfs.gateway.errors import S3Error
from gfs.gateway.objects import ObjectStore
from gfs.namespace_api import Namespace

if TYPE_CHECKING:
    from gfs.client import Client
    from gfs.federation.namespace import FederatedNamespace

log = logging.getLogger("gfs.gateway")
#: Seconds the registry's entity records (public keys, revocations) are kept.
RECORDS_TTL = 5.0
#: Namespaces opened for tokens kept open at once (the least recently used is closed).
MAX_TOKEN_STORES = 64


class Access(Protocol):
    """Maps an access key to its credential, and a credential to its object store."""

    def lookup(self, access_key: str, session_token: str | None) -> Credential | None:
        """The credential of `access_key` (with its session token), None if unknown;
        S3Error for a token that is refused."""
        ...

    def basic(self, user: str, password: str) -> Credential | None:
        """The credential of an HTTP basic sign-in (WebDAV), None if it is refused."""
        ...

    def store(self, cred: Credential) -> ObjectStore:
        """The object store requests signed by `cred` act on."""
        ...

    def acquire(self, cred: Credential) -> ObjectStore:
        """`store(cred)`, kept open until `release`d (one request's use of it)."""
        ...

    def release(self, store: ObjectStore) -> None:
        """End a use `acquire` began."""
        ...

    def stores(self) -> list[ObjectStore]:
        """Every store open now (for the metrics and shutdown)."""
        ...

    def close(self) -> None: ...


class StoreAccess:
    """The embedded store's own access keys; one object store for every request."""

    def __init__(self, store: ObjectStore, fs: Client) -> None:
        self._store = store
        self._fs = fs

    def lookup(self, access_key: str, session_token: str | None) -> Credential | None:
        if session_token is not None:
            raise S3Error("InvalidToken", "this gateway serves an embedded store and takes "
                          "no session tokens; sign with an access key of `hutong gateway "
                          "credentials add`")
        return credentials.lookup(self._fs, access_key)

    def basic(self, user: str, password: str) -> Credential | None:
        cred = credentials.lookup(self._fs, user)
        ok = cred is not None and hmac.compare_digest(cred.secret_key.encode(),
                                                      password.encode())
        return cred if ok else None

    def store(self, cred: Credential) -> ObjectStore:
        return self._store

    def acquire(self, cred: Credential) -> ObjectStore:
        return self._store

    def release(self, store: ObjectStore) -> None:
        pass

    def stores(self) -> list[ObjectStore]:
        return [self._store]

    def close(self) -> None:
        self._store.close()


def token_secret(token: str) -> str:
    """The SigV4 secret key that goes with federation token `token` (its holder can
    derive it; the gateway checks the token itself, sent as the session token)."""
    mac = hmac.new(b"hutong-s3-secret-v1", token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:40]


def token_credentials(token: str) -> dict[str, str]:
    """What an S3 client needs to use `token`: access key id, secret and session token."""
    jti = token_claims(token).get("jti")
    if not isinstance(jti, str) or not jti:
        raise AuthError("the token has no id (jti); mint a new one with `hutong token mint`")
    return {"access_key": jti, "secret_key": token_secret(token), "session_token": token}


def _token_id(token: str) -> str:
    """`ID of 'SUBJECT'` of a token, for the log (never the token itself)."""
    try:
        c = token_claims(token)
    except AuthError:
        return "(malformed)"
    return f"{c.get('jti', '?')} of {c.get('sub', '?')!r}"


class FederationAccess:
    """Federation tokens as S3 credentials (see the module docstring).

    `own` is the profile's store (its namespace, the gateway's own identity);
    `entity` the profile's entity; `records` fetches the registry's entity records
    (by name: `public_key`, `revoked`, `revoked_before`); `open_store(token)` opens
    an object store over a namespace acting with `token`."""

    def __init__(self, own: ObjectStore, entity: str | None,
                 records: Callable[[], dict[str, dict[str, Any]]],
                 open_store: Callable[[str], ObjectStore]) -> None:
        self._own = own
        self._entity = entity
        self._records = records
        self._open_store = open_store
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._by_token: OrderedDict[str, ObjectStore] = OrderedDict()
        self._uses: dict[int, int] = {}  # id(store) -> requests using it now
        self._retired: dict[int, ObjectStore] = {}  # evicted while in use: closed when free

    def _record(self, entity: str) -> dict[str, Any] | None:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > RECORDS_TTL:
                self._cached = (time.monotonic(), self._records())
            return self._cached[1].get(entity)

    def lookup(self, access_key: str, session_token: str | None) -> Credential | None:
        if session_token is None:
            raise S3Error("InvalidAccessKeyId", "this gateway serves the federation: sign "
                          "with a token (access key = the token id, secret from `hutong "
                          "gateway token-credentials`, the token as session token)",
                          access_key)
        try:
            issuer = token_issuer(session_token)
            rec = self._record(issuer)
            if rec is None:
                raise S3Error("InvalidToken", f"the token's issuer {issuer!r} is not an "
                              "entity of this federation")
            tok = verify_token(session_token, public_key(str(rec["public_key"])))
            if tok.revoked_by(rec):
                raise S3Error("InvalidToken", f"token {tok.jti} of {tok.sub!r} was revoked "
                              f"by {issuer!r}; ask it for a new one")
        except AuthError as e:
            code = "ExpiredToken" if "expired" in str(e) else "InvalidToken"
            raise S3Error(code, str(e)) from None
        if not tok.jti or not hmac.compare_digest(tok.jti, access_key):
            raise S3Error("InvalidAccessKeyId", "the access key id must be the id (jti) of "
                          "the session token", access_key)
        entity_wide = tok.prefix.rstrip("/") == f"/{tok.iss}"
        as_entity = entity_wide and tok.iss == self._entity
        return Credential(access_key, token_secret(session_token), token=session_token,
                          read_only=as_entity and tok.scope != "write",
                          as_gateway=as_entity)

    def basic(self, user: str, password: str) -> Credential | None:
        """User name = a token's id, password = the token."""
        try:
            return self.lookup(user, password)
        except S3Error:
            return None

    def store(self, cred: Credential) -> ObjectStore:
        if cred.as_gateway or cred.token is None:
            return self._own
        with self._lock:
            got = self._by_token.get(cred.token)
            if got is not None:
                self._by_token.move_to_end(cred.token)
                return got
        new = self._open_store(cred.token)
        old: ObjectStore | None = None
        with self._lock:
            got = self._by_token.setdefault(cred.token, new)
            self._by_token.move_to_end(cred.token)
            if len(self._by_token) > MAX_TOKEN_STORES:
                gone_token, old = self._by_token.popitem(last=False)
                log.info("gateway: %d token namespaces are open, the most kept "
                         "(MAX_TOKEN_STORES); closing the least recently used one, of token "
                         "%s (%s); its next request opens it again", MAX_TOKEN_STORES + 1,
                         _token_id(gone_token),
                         "after its requests in flight" if self._uses.get(id(old)) else "now")
                if self._uses.get(id(old)):
                    self._retired[id(old)], old = old, None
        if got is not new:
            new.close()
        if old is not None:
            old.close()
        return got

    def acquire(self, cred: Credential) -> ObjectStore:
        while True:
            store = self.store(cred)
            with self._lock:  # evicted between store() and here: take it again
                if store is self._own or store in self._by_token.values():
                    self._uses[id(store)] = self._uses.get(id(store), 0) + 1
                    return store

    def release(self, store: ObjectStore) -> None:
        with self._lock:
            left = self._uses.get(id(store), 0) - 1
            if left > 0:
                self._uses[id(store)] = left
                return
            self._uses.pop(id(store), None)
            retired = self._retired.pop(id(store), None)
        if retired is not None:
            retired.close()

    def stores(self) -> list[ObjectStore]:
        with self._lock:
            return [self._own, *self._by_token.values(), *self._retired.values()]

    def close(self) -> None:
        for s in self.stores():
            s.close()


def store_access(fs: Client, root: str = "/") -> StoreAccess:
    """The access of a gateway over embedded store `fs`, buckets under `root`."""
    return StoreAccess(ObjectStore(EmbeddedBackend(fs), root), fs)


def federation_access(ns: FederatedNamespace, root: str,
                      open_token_ns: Callable[[str], Namespace]) -> FederationAccess:
    """The access of a gateway over the federation as `ns` (a profile's namespace);
    `open_token_ns(token)` opens the namespace a token's requests act on."""
    def records() -> dict[str, dict[str, Any]]:
        return {str(r["name"]): r for r in ns.fc.registry.call("GET", "/v1/entities")
                ["entities"]}

    def store(n: Namespace) -> ObjectStore:
        return ObjectStore(NamespaceBackend(n), root, uploads_beside=True)
    return FederationAccess(store(ns), ns.entity, records,
                            lambda token: store(open_token_ns(token)))


def profile_access(profile: str, root: str = "/") -> FederationAccess:
    """The access of `hutong gateway s3 --profile NAME`: the profile's namespace, and a
    namespace per token, trusting the registry as the profile does."""
    from gfs.federation.namespace import FederatedNamespace
    from gfs.profiles import get_profile, open_namespace

    prof = get_profile(profile)
    ns = open_namespace(profile)
    assert isinstance(ns, FederatedNamespace)
    ca = prof.registry_ca.encode() if prof.registry_ca else ns.fc.tls.registry_ca \
        if ns.fc.tls is not None else None

    def open_token_ns(token: str) -> Namespace:
        return FederatedNamespace(prof.registry, token=token, registry_ca=ca,
                                  plaintext=prof.plaintext)
    return federation_access(ns, root, open_token_ns)


__all__ = ["Access", "FederationAccess", "StoreAccess", "federation_access",
           "profile_access", "store_access", "token_credentials", "token_secret"]
