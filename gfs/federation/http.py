"""HTTP plumbing shared by the registry and the site: errors as JSON, bounded JSON bodies,
a synchronous keep-alive client that signs requests, and Prometheus text metrics."""

from __future__ import annotations

import errno as _errno
import hashlib
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gfs import errors as gerr
from gfs.errors import FormatError, HutongError
from gfs.federation.auth import AuthError, EntityKeys, audience_of, check_body
from gfs.federation.tcp import prefer_bbr

if TYPE_CHECKING:
    from gfs.federation.tls import Trust

log = logging.getLogger("gfs.federation")
MAX_JSON = 1 << 20
"""Largest JSON request body accepted (bytes)."""

_STATUS_OF_ERRNO = {
    _errno.ENOENT: 404, _errno.EEXIST: 409, _errno.ENOTDIR: 409, _errno.EISDIR: 409,
    _errno.ENOTEMPTY: 409, _errno.EINVAL: 400, _errno.EACCES: 403, _errno.ENOSPC: 507,
}
_CLASS_OF_CODE: dict[str, type[gerr._OSLike]] = {
    "ENOENT": gerr.NotFoundError, "EEXIST": gerr.ExistsError, "ENOTDIR": gerr.NotADirError,
    "EISDIR": gerr.IsADirError, "ENOTEMPTY": gerr.NotEmptyError,
    "EINVAL": gerr.InvalidPathError, "EACCES": gerr.PermissionDeniedError,
    "ENOSPC": gerr.NoSpaceError, "EIO": gerr.PoolError,
}


class ApiError(HutongError):
    """An HTTP API answered with an error; `status` and `code` say which."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadRequestError(ApiError, ValueError):
    """A malformed request (JSON, fields, sizes); nothing was changed."""


class UnavailableError(ApiError, ConnectionError):
    """A server could not be reached or answered 5xx; try another replica or retry later."""


def error_body(status: int, code: str, message: str, path: str = "") -> web.Response:
    """The JSON error answer `{"error": code, "message": ..., "path": ...}`."""
    return web.json_response({"error": code, "message": message, "path": path}, status=status)


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Turn Hutong errors and aiohttp HTTP errors into JSON error answers."""
    try:
        return await handler(request)
    except AuthError as e:
        return error_body(e.status, e.code, str(e))
    except ApiError as e:
        return error_body(e.status, e.code, str(e))
    except (gerr.NoSpaceError, gerr.PoolError) as e:
        # the detail names server paths and pool URLs: it goes to the log, not the peer
        log.warning("%s %s: %s", request.method, request.path, e)
        if isinstance(e, gerr.NoSpaceError):
            return error_body(507, "ENOSPC", "no space left at this server for the data; "
                              "place it elsewhere or ask its operator to free space")
        return error_body(500, "EIO", "a storage pool of this server failed; retry, or "
                          "read another replica")
    except gerr._OSLike as e:
        code = _errno.errorcode.get(e.errno or _errno.EIO, "EIO")
        return error_body(_STATUS_OF_ERRNO.get(e.errno or 0, 500), code, e.strerror or str(e),
                          str(e.filename or ""))
    except OSError as e:
        log.warning("%s %s: %s", request.method, request.path, e)
        if e.errno in (_errno.ENOSPC, _errno.EDQUOT):
            return error_body(507, "ENOSPC", "no space left at this server for the data; "
                              "place it elsewhere or ask its operator to free space")
        return error_body(500, "EIO", "input/output error at this server; retry later")
    except (FormatError, gerr.ConfigError) as e:
        return error_body(400, "bad_request", str(e))
    except web.HTTPRequestEntityTooLarge as e:
        return error_body(413, "too_large", f"request body too large: {e.text}")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error_body(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
        if "Allow" in e.headers:  # 405: which methods the resource has
            resp.headers["Allow"] = e.headers["Allow"]
        return resp


#: bytes of the request body `read_body` read (for the access log)
BYTES_IN_KEY: web.RequestKey[int] = web.RequestKey("bytes_in", int)


async def read_body(request: web.Request, limit: int, *, signed: bool = False) -> bytes:
    """The request body, streamed and refused (413) as soon as it passes `limit` bytes,
    whatever Content-Length says (or not, when chunked). With `signed`, the body must be
    the one the request's signature covers (`X-Hutong-Content-SHA256`)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(f"body of {request.content_length} bytes exceeds {limit}", 413,
                       "too_large")
    buf = bytearray()
    digest = hashlib.sha256()
    async for part in request.content.iter_any():
        if len(buf) + len(part) > limit:
            raise ApiError(f"body exceeds {limit} bytes", 413, "too_large")
        buf += part
        digest.update(part)
    if signed:
        check_body(request.headers, digest.hexdigest())
    request[BYTES_IN_KEY] = len(buf)
    return bytes(buf)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object body (an empty body is `{}`); BadRequestError otherwise."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    return data


async def read_json(request: web.Request, limit: int = MAX_JSON, *,
                    signed: bool = False) -> dict[str, Any]:
    """The request's JSON object body, bounded by `limit` bytes (`read_body`)."""
    return parse_json(await read_body(request, limit, signed=signed))


def field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
          default: Any = ..., *, check: Callable[[Any], bool] | None = None,
          nullable: bool = False) -> Any:
    """`data[name]` of type `kind` (bool is not an int), or `default` when absent (or
    null, if `nullable`); BadRequestError."""
    if name in data and data[name] is None and not nullable:
        raise BadRequestError(f"field {name!r} must not be null; leave it out instead")
    if name not in data or data[name] is None:
        if default is ...:
            raise BadRequestError(f"field {name!r} is required")
        return default
    v = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise BadRequestError(f"field {name!r} must be {' or '.join(k.__name__ for k in kinds)}")
    if check is not None and not check(v):
        raise BadRequestError(f"field {name!r} has an invalid value {v!r}")
    return v


class Metrics:
    """Counters and gauges exposed in the Prometheus text format."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def render(self) -> str:
        lines: list[str] = []
        done: set[str] = set()
        for (name, labels), v in sorted(self.counters.items()):
            full = f"{self.prefix}_{name}"
            if full not in done:
                lines.append(f"# TYPE {full} counter")
                done.add(full)
            lab = ",".join(f'{k}="{v2}"' for k, v2 in labels)
            lines.append(f"{full}{{{lab}}} {v}" if lab else f"{full} {v}")
        for name, fn in sorted(self.gauges.items()):
            full = f"{self.prefix}_{name}"
            lines.append(f"# TYPE {full} gauge")
            lines.append(f"{full} {fn()}")
        return "\n".join(lines) + "\n"

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        resp = await handler(request)
        self.inc("http_requests_total", route=name, method=request.method,
                 status=str(resp.status))
        return resp


class _TlsConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the certificate for `server_name`, the peer's
    federation name, instead of the URL's host, then hands it to `check` (the
    revocation list)."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, server_name: str,
                 timeout: float, check: Callable[[bytes], None] | None = None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._tls_context = context
        self._check = check

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        prefer_bbr(self.sock)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)
        der = self.sock.getpeercert(binary_form=True)
        if self._check is not None and der is not None:
            try:
                self._check(der)
            except BaseException:
                self.close()
                raise


_TLS_REFUSALS = ("CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", "BAD_CERTIFICATE",
                 "CERTIFICATE_REQUIRED", "PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                 "WRONG_VERSION_NUMBER", "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE")


def _tls_refusal(e: BaseException) -> bool:
    return isinstance(e, ssl.SSLError) and any(r in str(e).upper() for r in _TLS_REFUSALS)


#: Largest body a compressed response may expand to (a hostile server's gzip bomb stops
#: here).
MAX_DECODED = 256 << 20


def _decoded(data: bytes, encoding: str) -> bytes:
    """A response body without its content encoding (gzip, or none)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding != "gzip":
        raise http.client.HTTPException(f"response in content encoding {encoding!r}, "
                                         "not the gzip or identity asked for")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_DECODED)
    except zlib.error as e:
        raise http.client.HTTPException(f"a gzip response that does not decompress: "
                                         f"{e}") from e
    if d.unconsumed_tail or not d.eof:
        raise http.client.HTTPException(
            f"a gzip response that is truncated or expands beyond {MAX_DECODED} bytes")
    return out


#: Idle connections a client keeps open for its next requests.
MAX_IDLE = 16


class HttpClient:
    """A small synchronous HTTP/1.1 client over TLS 1.3, with keep-alive, signing and
    bearer tokens.

    `tls` says which certificate to expect at the URL and which to present (by default
    the trust kept beside `keys`, `tls.trust_for`); `site` (and its `entity`) name the
    site expected there when the caller knows it (otherwise the registry says). Plain
    http:// only with a trust that allows it (`--insecure-plaintext`). Thread-safe: idle
    connections are kept (at most MAX_IDLE) and reused by any thread. Errors come back
    as the Hutong exception the server named (NotFoundError, AuthError, ...); a
    certificate refused by either side is an AuthError (`tls`).
    """

    def __init__(self, base_url: str, keys: EntityKeys | None = None, token: str | None = None,
                 timeout: float = 30.0, *, tls: Trust | None = None,
                 site: str | None = None, entity: str | None = None) -> None:
        from gfs.federation.tls import trust_for

        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise gerr.ConfigError(f"URL {base_url!r} must be https://HOST:PORT")
        self.tls = tls if tls is not None else trust_for(keys)
        if u.scheme == "https" and self.tls is None:
            raise gerr.ConfigError(f"no TLS trust to check {base_url}: load the entity keys "
                                   "from a site directory, or pass the registry's CA "
                                   "(--registry-ca)")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.secure = u.scheme == "https"
        self.site, self.entity = site, entity
        self.audience = audience_of(base_url)
        self.keys, self.token, self.timeout = keys, token, timeout
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._timed = threading.local()

    def connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """A new connection to the server (not kept, requests not signed) with the TLS
        checks of `request`: for sending hand-made requests."""
        from gfs.federation import PLAINTEXT_OPTION

        t = self.timeout if timeout is None else timeout
        if not self.secure:
            if self.tls is None or not self.tls.plaintext:  # judged now: the option may
                raise gerr.ConfigError(                     # be set after construction
                    f"plain http:// to {self.base_url} refused: federation servers speak "
                    f"TLS (https://); {PLAINTEXT_OPTION} allows it on a development machine")
            return http.client.HTTPConnection(self.host, self.port, timeout=t)
        assert self.tls is not None
        tls = self.tls
        ctx, name = tls.client_context(self.base_url, self.site, self.entity)
        entity = tls.server_entity(self.base_url, self.site, self.entity)
        url = self.base_url
        return _TlsConnection(self.host, self.port, context=ctx, server_name=name, timeout=t,
                              check=lambda der: tls.check_server_cert(entity, url, der))

    def _conn(self) -> http.client.HTTPConnection:
        """An idle kept connection (the most recently used), else a new one: any thread
        reuses what another left open, so a request on a new thread (a FUSE worker, a
        renewal) costs no TCP and TLS handshake while a connection is idle."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.connection()

    def _release(self, c: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(c)
                return
        c.close()

    def close(self) -> None:
        """Close the idle connections (those in use close as their requests end)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def request(self, method: str, path: str, *, body: bytes = b"",
                query: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> tuple[int, bytes, str]:
        """Send one request; returns (status, body, content type). Retries once on a stale
        connection."""
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        for attempt in range(2):
            headers = self.headers(method, target, body, content_type)
            conn = self._conn() if attempt == 0 else self.connection()  # a retry: a new one
            try:
                t0 = time.monotonic()
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                t1 = time.monotonic()
                raw = resp.read()
                self._timed.last = (t0, t1 - t0, time.monotonic(), len(raw))
                data = _decoded(raw, resp.getheader("Content-Encoding", ""))
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                else:
                    self._release(conn)
                kind = resp.getheader("Content-Type", "").split(";")[0].strip().lower()
                return resp.status, data, kind
            except AuthError:  # a PermissionError: the server's certificate is revoked
                conn.close()
                raise
            except (ConnectionError, http.client.HTTPException, TimeoutError, OSError) as e:
                conn.close()
                if _tls_refusal(e):
                    raise AuthError(f"TLS with {self.base_url} refused: {e}", 401,
                                    "tls") from e
                if attempt or isinstance(e, TimeoutError):
                    raise UnavailableError(f"{self.base_url} unreachable: {e}", 503,
                                           "unavailable") from e
        raise AssertionError("unreachable")

    def headers(self, method: str, target: str, body: bytes,
                content_type: str = "application/json") -> dict[str, str]:
        """The headers of one request: signed with the keys, or the bearer token."""
        headers = {"Content-Type": content_type} if body or method != "GET" else {}
        headers["Accept-Encoding"] = "gzip"  # listings come compressed
        if self.keys is not None:
            headers.update(self.keys.sign(method, target, body, self.audience))
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def last_timing(self) -> tuple[float, float, float, int] | None:
        """(sent at, seconds to the first byte, ended at, body bytes) of this thread's
        last answer (monotonic clock), None before any."""
        last: tuple[float, float, float, int] | None = getattr(self._timed, "last", None)
        return last

    def call(self, method: str, path: str, payload: Any = None, *,
             query: Mapping[str, str] | None = None, body: bytes | None = None,
             content_type: str = "application/json") -> Any:
        """A JSON request (or raw `body`); returns the decoded JSON (or bytes) answer."""
        raw = body if body is not None else (b"" if payload is None else
                                            json.dumps(payload).encode())
        status, data, kind = self.request(method, path, body=raw, query=query,
                                          content_type=content_type)
        if status >= 400:
            raise error_from(status, data, f"{method} {self.base_url}{path}")
        if kind == "application/json":
            return json.loads(data)
        return data


def error_from(status: int, data: bytes, what: str) -> HutongError:
    """The exception matching a JSON error answer."""
    try:
        err = json.loads(data)
        code, message, path = str(err["error"]), str(err["message"]), str(err.get("path", ""))
    except (ValueError, KeyError, TypeError):
        code, message, path = "http_error", data[:200].decode("utf-8", "replace"), ""
    text = f"{what}: {message}"
    if status in (401, 403) and code not in _CLASS_OF_CODE:
        return AuthError(text, status, code)
    if code in _CLASS_OF_CODE:
        return _CLASS_OF_CODE[code](path or what, message)
    if status >= 500:
        return UnavailableError(text, status, code)
    if status in (400, 413):
        return BadRequestError(text, status, code)
    return ApiError(text, status, code)


def now() -> float:
    """Wall-clock seconds (one place to patch in tests)."""
    return time.time()
