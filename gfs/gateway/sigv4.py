"""AWS Signature Version 4 verification for the S3 gateway: the Authorization header
form and the presigned query form (docs/gateway.md, "Authentication").

Pure functions over a `SignedRequest`, so they run without a server; the secret
comes from a lookup function (gfs.gateway.credentials).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from gfs.gateway.credentials import Credential
from gfs.gateway.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
#: aws-chunked bodies: each chunk signed (chained from the request's signature), or
#: unsigned chunks followed by trailing checksums.
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
#: Longest chunk header or trailer line of an aws-chunked body.
MAX_CHUNK_LINE = 4096
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Largest clock difference accepted for header-signed requests (as AWS).
MAX_SKEW = dt.timedelta(minutes=15)
#: Longest validity of a presigned URL (seven days, as AWS).
MAX_EXPIRES = 7 * 24 * 3600
_AUTH = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([^,]+),\s*SignedHeaders=([^,]+),"
                   r"\s*Signature=([0-9a-f]{64})\s*$")
_SPACES = re.compile(r"\s+")

Lookup = Callable[[str], Credential | None]


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers: method, raw path, query pairs (decoded) and headers
    (lower-case names)."""

    method: str
    raw_path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out: who signed it, and how its body is hashed
    (a sha256 hex digest the body must match, UNSIGNED-PAYLOAD, or one of the
    aws-chunked STREAMING-* forms); with the signature, date and scope that chunk
    signatures chain from."""

    credential: Credential
    payload_hash: str
    signature: str = ""
    amz_date: str = ""
    scope: str = ""

    @property
    def chunked(self) -> bool:
        return self.payload_hash in (STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER)


def _enc(s: str) -> str:
    return quote(s, safe="-_.~")


def canonical_request(req: SignedRequest, signed_headers: list[str], payload_hash: str,
                      *, drop_signature: bool) -> str:
    """The canonical request string of SigV4."""
    uri = quote(unquote(req.raw_path), safe="/~") or "/"
    pairs = sorted((_enc(k), _enc(v)) for k, v in req.query
                   if not (drop_signature and k == "X-Amz-Signature"))
    query = "&".join(f"{k}={v}" for k, v in pairs)
    headers = "".join(f"{h}:{_SPACES.sub(' ', req.headers.get(h, '').strip())}\n"
                      for h in signed_headers)
    return "\n".join([req.method, uri, query, headers, ";".join(signed_headers),
                      payload_hash])


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """The derived SigV4 key for one day, region and service."""
    k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    """The hex signature of `canonical` for credential scope `scope`."""
    day, region, service, _ = scope.split("/")
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(signing_key(secret, day, region, service), to_sign.encode(),
                    hashlib.sha256).hexdigest()


def _parse_time(amz_date: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise S3Error("AccessDenied", f"X-Amz-Date {amz_date!r} is not of the form "
                      "YYYYMMDDTHHMMSSZ") from None


def _credential(cred_field: str, amz_date: str, lookup: Lookup) -> tuple[Credential, str]:
    parts = cred_field.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or parts[3] != "s3":
        raise S3Error("AuthorizationHeaderMalformed", f"credential {cred_field!r} is not "
                      "ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request")
    if parts[1] != amz_date[:8]:
        raise S3Error("AuthorizationHeaderMalformed", f"credential date {parts[1]} is not "
                      f"the day of X-Amz-Date {amz_date}")
    cred = lookup(parts[0])
    if cred is None:
        raise S3Error("InvalidAccessKeyId", f"access key {parts[0]!r} is not known to this "
                      "store; issue one with `hutong gateway credentials add`")
    return cred, "/".join(parts[1:])


def verify(req: SignedRequest, lookup: Lookup, now: dt.datetime | None = None) -> Verified:
    """Check the SigV4 signature of `req` (header or presigned form); raises S3Error."""
    now = now or dt.datetime.now(dt.UTC)
    auth = req.headers.get("authorization")
    params = dict(req.query)
    if auth is not None:
        m = _AUTH.match(auth)
        if m is None:
            if auth.startswith("AWS "):
                raise S3Error("AccessDenied", "signature version 2 is not supported; "
                              "configure the client for SigV4 (s3v4)")
            raise S3Error("AuthorizationHeaderMalformed", "the Authorization header is not "
                          "'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'")
        cred_field, signed, sig = m.groups()
        amz_date = req.headers.get("x-amz-date") or ""
        when = _parse_time(amz_date)
        if abs(now - when) > MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", f"request time {amz_date} differs from the "
                          "server's by more than 15 minutes; check the client's clock")
        payload = req.headers.get("x-amz-content-sha256") or ""
        if payload.startswith("STREAMING-") and payload not in (STREAMING_SIGNED,
                                                                STREAMING_UNSIGNED_TRAILER):
            raise S3Error("NotImplemented", f"payload form {payload} is not supported; send "
                          f"{STREAMING_SIGNED}, the body's sha256 or UNSIGNED-PAYLOAD")
        if payload not in (UNSIGNED, STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER) and \
                not re.fullmatch(r"[0-9a-f]{64}", payload):
            raise S3Error("InvalidArgument", "x-amz-content-sha256 must be the body's sha256 "
                          "hex digest or UNSIGNED-PAYLOAD")
        drop = False
    elif "X-Amz-Signature" in params:
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise S3Error("AccessDenied", f"X-Amz-Algorithm must be {ALGORITHM}")
        cred_field = params.get("X-Amz-Credential", "")
        signed = params.get("X-Amz-SignedHeaders", "")
        sig = params["X-Amz-Signature"]
        amz_date = params.get("X-Amz-Date", "")
        when = _parse_time(amz_date)
        try:
            expires = int(params.get("X-Amz-Expires", ""))
        except ValueError:
            raise S3Error("AuthorizationQueryParametersError",
                          "X-Amz-Expires must be a number of seconds") from None
        if not 0 < expires <= MAX_EXPIRES:
            raise S3Error("AuthorizationQueryParametersError",
                          f"X-Amz-Expires must be 1 to {MAX_EXPIRES} seconds")
        if now > when + dt.timedelta(seconds=expires):
            raise S3Error("AccessDenied", f"Request has expired: the presigned URL was valid "
                          f"until {(when + dt.timedelta(seconds=expires)).isoformat()}")
        if when - now > MAX_SKEW:
            raise S3Error("AccessDenied", "the presigned URL is dated in the future")
        payload, drop = UNSIGNED, True
    elif "AWSAccessKeyId" in params:
        raise S3Error("AccessDenied", "signature version 2 is not supported; presign with "
                      "SigV4 (botocore Config(signature_version='s3v4'))")
    else:
        raise S3Error("AccessDenied", "anonymous requests are refused; sign requests with an "
                      "access key from `hutong gateway credentials add`")
    cred, scope = _credential(cred_field, amz_date, lookup)
    headers = signed.split(";")
    if "host" not in headers:
        raise S3Error("AuthorizationHeaderMalformed", "the signed headers must include host")
    canonical = canonical_request(req, headers, payload, drop_signature=drop)
    expected = signature(cred.secret_key, amz_date, scope, canonical)
    if not hmac.compare_digest(expected, sig):
        raise S3Error("SignatureDoesNotMatch", "the request signature we calculated does not "
                      "match the signature you provided; check the secret key and signing "
                      "method")
    return Verified(cred, payload, sig, amz_date, scope)


class ChunkedDecoder:
    """Decodes an aws-chunked body fed piece by piece, checking each chunk's signature
    (STREAMING-AWS4-HMAC-SHA256-PAYLOAD: each chains from the previous one, the first
    from the request's) or, for the unsigned-trailer form, only the framing.

    Data is returned as it arrives; a chunk whose signature does not match raises
    SignatureDoesNotMatch when its last byte arrives, so callers must not commit
    before `finish()`.
    """

    def __init__(self, verified: Verified) -> None:
        self._signed = verified.payload_hash == STREAMING_SIGNED
        self._key = b""
        if self._signed:
            day, region, service, _ = verified.scope.split("/")
            self._key = signing_key(verified.credential.secret_key, day, region, service)
        self._prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{verified.amz_date}\n{verified.scope}\n"
        self._prev = verified.signature
        self._buf = bytearray()
        self._state = "header"
        self._left = 0
        self._want_sig = ""
        self._sha = hashlib.sha256()
        self.decoded = 0

    def _line(self) -> str | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_CHUNK_LINE:
                raise S3Error("IncompleteBody", "aws-chunked body: a chunk header is too long")
            return None
        line = bytes(self._buf[:end]).decode("ascii", "replace")
        del self._buf[:end + 2]
        return line

    def _check(self) -> None:
        if not self._signed:
            return
        to_sign = (self._prefix + self._prev + "\n" + EMPTY_SHA256 + "\n"
                   + self._sha.hexdigest())
        sig = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, self._want_sig):
            raise S3Error("SignatureDoesNotMatch", "an aws-chunked chunk signature does not "
                          "match its data; nothing was stored")
        self._prev = sig

    def feed(self, data: bytes) -> list[bytes]:
        """The body bytes in `data` (framing removed)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._state == "header":
                line = self._line()
                if line is None:
                    return out
                size_text, _, ext = line.partition(";")
                try:
                    self._left = int(size_text.strip(), 16)
                except ValueError:
                    raise S3Error("IncompleteBody", f"aws-chunked body: bad chunk header "
                                  f"{line[:80]!r}") from None
                self._want_sig = ext.strip().removeprefix("chunk-signature=")
                if self._signed and not self._want_sig:
                    raise S3Error("SignatureDoesNotMatch", "aws-chunked chunk without "
                                  "chunk-signature")
                self._sha = hashlib.sha256()
                if self._left == 0:
                    self._check()
                    self._state = "trailer"
                else:
                    self._state = "data"
            elif self._state == "data":
                if not self._buf:
                    return out
                take = bytes(self._buf[:self._left])
                del self._buf[:len(take)]
                self._sha.update(take)
                self._left -= len(take)
                self.decoded += len(take)
                out.append(take)
                if self._left == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if len(self._buf) < 2:
                    return out
                if self._buf[:2] != b"\r\n":
                    raise S3Error("IncompleteBody", "aws-chunked body: chunk not followed "
                                  "by CRLF")
                del self._buf[:2]
                self._check()
                self._state = "header"
            elif self._state == "trailer":  # trailing checksum headers, then an empty line
                line = self._line()
                if line is None:
                    return out
                if line == "":
                    self._state = "done"
            else:
                if self._buf.strip():
                    raise S3Error("IncompleteBody", "aws-chunked body: bytes after the end")
                self._buf.clear()
                return out

    def finish(self) -> None:
        """Raise unless the final (empty) chunk arrived."""
        if self._state not in ("trailer", "done") or (self._state == "trailer" and self._buf):
            raise S3Error("IncompleteBody", "aws-chunked body ended before its final chunk")
