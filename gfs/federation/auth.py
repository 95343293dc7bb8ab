"""Entity keys, signed requests and scoped user tokens (docs/format.md, "Keys, signatures
and tokens").

    keys = EntityKeys.create(state / "federation", "bank-a")
    headers = keys.sign("POST", "/v1/ns/mkdir", body)       # a site-to-site request
    token = keys.mint_token("alice", "read", "/bank-a/data", ttl=3600)
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gfs import paths
from gfs.errors import HutongError, InvalidPathError, StateError
from gfs.federation.ids import check_name
from gfs.paths import covers

SKEW = 300
"""Seconds a signed request's time may differ from the receiver's clock."""
TOKEN_TYP = "JWT"
#: read; write (implies read); metrics (reads a site's /metrics and nothing else)
TOKEN_SCOPES = ("read", "write", "metrics")
KEY_FILE = "entity.key"
DATA_FILE = "data.key"
NAME_FILE = "entity.name"
_NONCE = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class AuthError(HutongError, PermissionError):
    """A request is not authenticated (status 401) or not allowed (status 403)."""

    def __init__(self, message: str, status: int = 401, code: str = "unauthenticated") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def b64e(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of b64e; ValueError on bad input."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_\-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key(raw_b64: str) -> Ed25519PublicKey:
    """An Ed25519 public key from its raw 32 bytes in base64 (standard or url-safe)."""
    try:
        raw = base64.b64decode(raw_b64.replace("-", "+").replace("_", "/")
                               + "=" * (-len(raw_b64) % 4), validate=True)
        if len(raw) != 32:
            raise ValueError("length")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as e:
        raise AuthError("public key must be 32 raw Ed25519 bytes in base64", 400,
                        "bad_key") from e


def _string_to_sign(method: str, audience: str, target: str, entity: str, when: str,
                    nonce: str, body_sha256: str) -> bytes:
    return "\n".join(("HTSIG2", method.upper(), audience, target, entity, when, nonce,
                      body_sha256)).encode()


def audience_of(url: str) -> str:
    """The audience a request to `url` is signed for: its `host:port`, lower case."""
    u = urllib.parse.urlsplit(url)
    if not u.hostname:
        raise ValueError(f"URL {url!r} has no host")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{host}:{u.port or (443 if u.scheme == 'https' else 80)}".lower()


def rotation_text(entity: str, new_key_b64: str) -> bytes:
    """What the new key signs to prove its possession when an entity rotates its key."""
    return f"HTROT1\n{entity}\n{new_key_b64}".encode()


@dataclass(frozen=True)
class Token:
    """The verified claims of a user token."""

    iss: str
    sub: str
    scope: str
    prefix: str
    exp: int
    iat: int
    jti: str = ""

    def revoked_by(self, record: Mapping[str, object]) -> bool:
        """Whether the issuer's registry `record` revokes this token (by id, or all
        tokens issued before `revoked_before`)."""
        before = record.get("revoked_before") or 0
        if isinstance(before, (int, float)) and self.iat < before:
            return True
        revoked = record.get("revoked") or []
        return isinstance(revoked, list) and any(
            isinstance(r, dict) and r.get("jti") == self.jti for r in revoked)

    def allows(self, path: str, write: bool) -> bool:
        """Whether the claims cover `path` for reading (or writing)."""
        if self.scope not in ("read", "write") or (write and self.scope != "write"):
            return False  # a metrics token reads no data
        return covers(self.prefix, path)


class EntityKeys:
    """An entity's Ed25519 key pair and data secret, kept in a directory (mode 0600 files)."""

    def __init__(self, name: str, private: Ed25519PrivateKey, data_secret: bytes) -> None:
        self.name = check_name(name, "entity name")
        self.private = private
        self.data_secret = data_secret
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode("ascii")
        self.enc_key = self._derive(b"hutong chunk enc v1")
        self.id_key = self._derive(b"hutong chunk id v1")
        self.directory: Path | None = None
        """The directory the keys were loaded from (its `tls/` holds the TLS trust)."""

    def _derive(self, info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(self.data_secret)

    @classmethod
    def create(cls, directory: str | os.PathLike[str], name: str) -> EntityKeys:
        """New keys for entity `name`, written to `directory` (refuses to overwrite)."""
        d = Path(directory)
        check_name(name, "entity name")
        if (d / KEY_FILE).exists():
            raise StateError(f"entity keys already exist in {d}; use them or pick another "
                             "directory")
        d.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        secret = secrets.token_bytes(32)
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        for fname, data in ((KEY_FILE, pem), (DATA_FILE, secret), (NAME_FILE, name.encode())):
            fd = os.open(d / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        keys = cls(name, private, secret)
        keys.directory = d
        return keys

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EntityKeys:
        """The keys kept in `directory` (see `create`)."""
        d = Path(directory)
        try:
            pem = (d / KEY_FILE).read_bytes()
            secret = (d / DATA_FILE).read_bytes()
            name = (d / NAME_FILE).read_text().strip()
        except FileNotFoundError as e:
            raise StateError(f"no entity keys in {d}; create them with "
                             "`hutong site init --entity NAME`") from e
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey) or len(secret) != 32:
            raise StateError(f"entity keys in {d} are not an Ed25519 key and a 32-byte secret")
        keys = cls(name, private, secret)
        keys.directory = d
        return keys

    def sign(self, method: str, target: str, body: bytes, audience: str) -> dict[str, str]:
        """Headers that sign a request for the server `audience` (`audience_of` its URL);
        `target` is the path with its query string. The body is signed through its
        SHA-256, sent in a header, so the server authenticates before reading it."""
        when = str(int(time.time()))
        nonce = secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        sig = self.private.sign(_string_to_sign(method, audience, target, self.name, when,
                                                nonce, digest))
        return {"X-Hutong-Entity": self.name, "X-Hutong-Time": when, "X-Hutong-Nonce": nonce,
                "X-Hutong-Audience": audience, "X-Hutong-Content-SHA256": digest,
                "X-Hutong-Signature": b64e(sig)}

    def mint_token(self, sub: str, scope: str, prefix: str, ttl: float) -> str:
        """A user token of this entity: a JWT signed with EdDSA (Ed25519) by the entity key,
        `scope` one of TOKEN_SCOPES, limited to `prefix`, valid `ttl` seconds."""
        return mint_token(self.private, self.name, sub, scope, prefix, ttl)


def mint_token(private: Ed25519PrivateKey, iss: str, sub: str, scope: str, prefix: str,
               ttl: float) -> str:
    """A token of issuer `iss` signed by `private` (docs/format.md, "Tokens")."""
    import jwt

    if scope not in TOKEN_SCOPES:
        raise ValueError(f"token scope must be one of {', '.join(TOKEN_SCOPES)}, not "
                         f"{scope!r}")
    prefix = paths.normalize(prefix)
    now = int(time.time())
    claims = {"iss": iss, "sub": sub, "scope": scope, "prefix": prefix,
              "iat": now, "exp": now + int(ttl), "jti": secrets.token_hex(16)}
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"typ": TOKEN_TYP})


class NonceCache:
    """Nonces seen within the replay window, to refuse replayed requests; thread-safe.

    A nonce is never forgotten while a request carrying it could still be accepted
    (2 * SKEW seconds). Memory is bounded by refusing new requests instead: at most
    `per_entity` remembered nonces per entity (429 beyond) and `limit` in all (503)."""

    WINDOW = 2 * SKEW

    def __init__(self, limit: int = 1 << 18, per_entity: int = 1 << 16) -> None:
        self._seen: dict[str, str] = {}
        self._order: deque[tuple[float, str]] = deque()
        self._count: dict[str, int] = {}
        self._limit, self._per_entity = limit, per_entity
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def check(self, nonce: str, now: float, entity: str = "") -> None:
        """Record `nonce` of `entity`; AuthError if it was seen in the window (401) or the
        cache is full of nonces still inside it (429 for the entity, 503 in all)."""
        with self._lock:
            while self._order and self._order[0][0] <= now - self.WINDOW:
                _, old = self._order.popleft()
                owner = self._seen.pop(old)
                left = self._count[owner] - 1
                if left:
                    self._count[owner] = left
                else:
                    del self._count[owner]
            if nonce in self._seen:
                raise AuthError("replayed request (nonce seen before); sign every request "
                                "anew")
            if self._count.get(entity, 0) >= self._per_entity:
                raise AuthError(f"entity {entity!r} sent more than {self._per_entity} signed "
                                f"requests in {self.WINDOW} s; slow down and retry", 429,
                                "too_many_requests")
            if len(self._seen) >= self._limit:
                raise AuthError(f"more than {self._limit} signed requests in {self.WINDOW} s; "
                                "the server is busy, retry later", 503, "busy")
            self._seen[nonce] = entity
            self._order.append((now, nonce))
            self._count[entity] = self._count.get(entity, 0) + 1


def signed_entity(headers: Mapping[str, str]) -> str | None:
    """The entity a request claims to be signed by, or None if it carries no signature."""
    get = headers.get
    name = get("X-Hutong-Entity")
    if name is None:
        return None
    try:
        return check_name(name, "X-Hutong-Entity")
    except HutongError as e:
        raise AuthError(str(e)) from None


def verify_request(headers: Mapping[str, str], method: str, target: str, audience: str,
                   key: Ed25519PublicKey, nonces: NonceCache, now: float | None = None) -> str:
    """Check a signed request's headers against the entity's public `key` and this
    server's `audience`; returns the entity name. The body is checked afterwards, as it
    is read, against `X-Hutong-Content-SHA256` (`check_body`)."""
    get = headers.get
    entity = signed_entity(headers)
    when, nonce, sig = (get("X-Hutong-Time"), get("X-Hutong-Nonce"),
                        get("X-Hutong-Signature"))
    aud, digest = get("X-Hutong-Audience"), get("X-Hutong-Content-SHA256")
    if (entity is None or when is None or nonce is None or sig is None or aud is None
            or digest is None):
        raise AuthError("unsigned request: X-Hutong-Entity, -Time, -Nonce, -Audience, "
                        "-Content-SHA256 and -Signature are all required")
    now = time.time() if now is None else now
    if not when.isdigit() or abs(int(when) - now) > SKEW:
        raise AuthError(f"request time {when!r} is more than {SKEW} s from the server's clock; "
                        "check the clocks")
    if not _NONCE.fullmatch(nonce):
        raise AuthError("X-Hutong-Nonce must be 32 lower-case hex digits")
    if not _SHA256.fullmatch(digest):
        raise AuthError("X-Hutong-Content-SHA256 must be 64 lower-case hex digits")
    if aud.lower() != audience:
        raise AuthError(f"request signed for {aud!r}, but this server is {audience!r}; sign "
                        "it for the server it is sent to", 401, "wrong_audience")
    try:
        key.verify(b64d(sig), _string_to_sign(method, audience, target, entity, when, nonce,
                                              digest))
    except (InvalidSignature, ValueError):
        raise AuthError(f"bad signature for entity {entity!r} (not signed with the key the "
                        "registry publishes)") from None
    nonces.check(nonce, now, entity)
    return entity


def check_body(headers: Mapping[str, str], digest: str) -> None:
    """AuthError unless `digest` (SHA-256 hex of the body read) is the signed one."""
    if headers.get("X-Hutong-Content-SHA256") != digest:
        raise AuthError("the body does not match the signed X-Hutong-Content-SHA256; sign "
                        "the body that is sent")


_OLD_TOKEN = ("an old-format token (base64url(claims).signature, before JWT) is no longer "
              "accepted; mint a new one with `hutong token mint`")
_MALFORMED = "malformed token: expected a JWT (header.claims.signature) signed with EdDSA"


def token_claims(token: str) -> dict[str, object]:
    """The claims of a token, unverified (to find the key that must verify it)."""
    import jwt

    if token.count(".") == 1:
        raise AuthError(_OLD_TOKEN, 401, "old_token")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError(_MALFORMED) from None
    if not isinstance(claims, dict):
        raise AuthError(_MALFORMED)
    return claims


def token_issuer(token: str) -> str:
    """The `iss` claim of a token, unverified (to find the key that must verify it)."""
    iss = token_claims(token).get("iss")
    try:
        if not isinstance(iss, str):
            raise AuthError(_MALFORMED)
        return check_name(iss, "token issuer")
    except HutongError:
        raise AuthError(_MALFORMED) from None


@dataclass(frozen=True)
class Issuer:
    """What verifies a token of one issuer: its public key and, where tokens can be
    revoked, the registry's record listing the revocations."""

    key: Ed25519PublicKey
    record: Mapping[str, object] | None = None


def bearer_claims(headers: Mapping[str, str], issuer: Callable[[str], Issuer],
                  missing: str | None = None) -> Token | None:
    """Verify the `Authorization: Bearer TOKEN` of a request: `issuer(iss)` gives the key
    (and revocation record) of the token's issuer, or raises AuthError for one not
    trusted here. None if there is no Authorization header and `missing` is None;
    AuthError(`missing`) if there is none and `missing` is given."""
    auth = headers.get("Authorization", "")
    if not auth:
        if missing is None:
            return None
        raise AuthError(missing)
    if not auth.startswith("Bearer "):
        raise AuthError("Authorization must be 'Bearer TOKEN'")
    token = auth[7:].strip()
    who = issuer(token_issuer(token))
    claims = verify_token(token, who.key)  # a forged or expired token: 401
    if who.record is not None and claims.revoked_by(who.record):
        raise AuthError(f"token {claims.jti or '(no id)'} of {claims.sub!r} was revoked by "
                        f"{claims.iss!r}; ask it for a new one", 401, "revoked")
    return claims


def verify_token(token: str, key: Ed25519PublicKey, now: float | None = None) -> Token:
    """Verify a token (a JWT, EdDSA only: no other algorithm is accepted) against its
    issuer's public key: signature, claims, expiry, and an issue time not in the future
    beyond the clock skew bound."""
    import jwt

    token_claims(token)  # the old format gets its own message
    try:
        if jwt.get_unverified_header(token).get("typ") != TOKEN_TYP:
            raise AuthError(_MALFORMED)
        c = jwt.decode(token, key, algorithms=["EdDSA"],
                       options={"require": ["iss", "sub", "scope", "prefix", "iat", "exp",
                                            "jti"],
                                "verify_exp": False, "verify_iat": False,
                                "verify_nbf": False})
        tok = Token(str(c["iss"]), str(c["sub"]), str(c["scope"]), str(c["prefix"]),
                    int(c["exp"]), int(c["iat"]), str(c["jti"]))
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        raise AuthError("invalid token (bad signature or claims); mint a new one") from None
    if tok.scope not in TOKEN_SCOPES:
        raise AuthError(f"token scope {tok.scope!r} is not one of {', '.join(TOKEN_SCOPES)}")
    try:
        paths.normalize(tok.prefix)
    except InvalidPathError:
        raise AuthError(f"token prefix {tok.prefix!r} is not a namespace path") from None
    at = time.time() if now is None else now
    if at >= tok.exp:
        raise AuthError(f"token of {tok.sub!r} expired; mint a new one")
    if tok.iat > at + SKEW:
        raise AuthError(f"token of {tok.sub!r} issued in the future ({tok.iat - at:.0f} s "
                        "ahead); check the issuer's clock")
    return tok
