"""The gateways' part of the access log (gfs.accesslog; docs/format.md, "Access log").

One hook at each gateway's request boundary records every S3 and WebDAV
request in the same log as a site's: an aiohttp middleware for the S3
gateway, a WSGI wrapper for the WebDAV one. The caller is the credential
that signed the request: `ACCESS_KEY@ENTITY` for a federation token (the
access key is the token's id, the entity its issuer), `ACCESS_KEY@local`
for an access key of the embedded store, "-" when the request was refused
before a credential was established.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from gfs.accesslog import Access, AccessLog
from gfs.federation.auth import AuthError, token_issuer
from gfs.gateway.credentials import Credential

#: The entity recorded for an access key of the embedded store (not a federation token).
LOCAL = "local"
_S3_CODE = re.compile(rb"<Code>([A-Za-z]{1,64})</Code>")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def caller(cred: Credential | None) -> tuple[str, str]:
    """(who, entity) of a request signed by `cred` (None: not authenticated)."""
    if cred is None:
        return "-", "-"
    entity = LOCAL
    if cred.token is not None:
        try:
            entity = token_issuer(cred.token)
        except AuthError:  # the gateway verified it; cannot happen, but never fail a log
            entity = "?"
    return f"{cred.access_key}@{entity}", entity


def s3_middleware(log: AccessLog, cred_key: str, operation_key: str) -> Any:
    """An aiohttp middleware recording every request of the S3 gateway in `log`; the
    gateway stores the request's credential under `cred_key` and its S3 operation
    name under `operation_key` as soon as it knows them."""
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        status, result, out = 500, "cut", 0
        try:
            resp = await handler(request)
            status = resp.status
            out = resp.content_length if resp.content_length is not None \
                else resp.body_length
            result = "ok"
            if status >= 400:
                body = resp.body if isinstance(resp, web.Response) else None
                found = _S3_CODE.search(bytes(body)) if isinstance(
                    body, (bytes, bytearray)) else None
                result = found.group(1).decode() if found else f"http {status}"
            return resp
        finally:
            who, entity = caller(request.get(cred_key))
            size = request.headers.get("x-amz-decoded-content-length") \
                or request.content_length or 0
            log.record(Access(
                time.time(), who, entity, request.method,
                f"s3 {request.get(operation_key, request.method)}",
                unquote(request.raw_path.split("?", 1)[0]),
                int(size), out or 0, status, result))
    return record


def webdav_middleware(log: AccessLog, cred_key: str, app: WSGIApp) -> WSGIApp:
    """`app` (the WebDAV gateway) with every request recorded in `log`; the gateway's
    sign-in stores the request's credential in the environ under `cred_key`."""
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status = [500]
        out = 0

        def start(s: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            status[0] = int(s.split(" ", 1)[0])
            return start_response(s, headers, *exc)
        try:
            for part in app(environ, start):
                out += len(part)
                yield part
        finally:
            who, entity = caller(environ.get(cred_key))
            method = str(environ.get("REQUEST_METHOD", "?"))
            log.record(Access(
                time.time(), who, entity, method, f"webdav {method}",
                str(environ.get("PATH_INFO", "")), int(environ.get("CONTENT_LENGTH") or 0),
                out, status[0], "ok" if status[0] < 400 else f"http {status[0]}"))
    return wrapped
