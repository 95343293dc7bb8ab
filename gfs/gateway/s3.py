"""The S3-compatible HTTP gateway (aiohttp): path-style requests, SigV4, XML answers.

Routing, authentication and the wire format live here; what the operations do
to the namespace lives in gfs.gateway.objects. Blocking store work runs on a
thread pool, never on the event loop. See docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import datetime as dt
import email.utils
import functools
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

from gfs.accesslog import AccessLog
from gfs.accesslog_gateway import s3_middleware
from gfs.errors import FileTooLargeError, ReadOnlyError, UnavailableSiteError
from gfs.gateway import metrics
from gfs.gateway.access import Access
from gfs.gateway.credentials import Credential
from gfs.gateway.errors import S3Error
from gfs.gateway.objects import (
    CONTENT_TYPE,
    META,
    ObjectInfo,
    ObjectStore,
    ObjectUpload,
    check_key,
    object_xattrs,
)
from gfs.gateway.sigv4 import UNSIGNED, ChunkedDecoder, SignedRequest, Verified, verify

T = TypeVar("T")
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Bodies up to this size are read whole and stored in one worker call (small objects).
SMALL_BODY = 1 << 20
#: Bytes handed to the store per worker call while streaming a large body.
STREAM_BLOCK = 4 << 20
#: Bytes of an object sent per write on GET.
SEND_BLOCK = 2 << 20
#: Largest XML request body (CompleteMultipartUpload of 10,000 parts, DeleteObjects).
MAX_XML = 2 << 20
_ACCESS_KEY = web.AppKey("access", Access)
#: The object store of the request being handled (its credential's).
_REQUEST_STORE: contextvars.ContextVar[ObjectStore] = contextvars.ContextVar("s3_store")
_POOL_KEY = web.AppKey("pool", ThreadPoolExecutor)
_CRED = "hutong.credential"
_VERIFIED = "hutong.verified"
_STREAMING = "hutong.streaming"
log = logging.getLogger("hutong.gateway")


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def _xml(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, content_type="application/xml",
                        body=f'<?xml version="1.0" encoding="UTF-8"?>\n{body}'.encode())


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    h = {"ETag": f'"{info.etag}"', "Last-Modified": _http_date(info.mtime_ns),
         "Content-Type": info.content_type, "Accept-Ranges": "bytes"}
    h.update({f"x-amz-meta-{k}": v for k, v in info.meta.items()})
    return h


def _request_xattrs(request: web.Request) -> dict[str, bytes]:
    meta = {k[len("x-amz-meta-"):]: v for k, v in request.headers.items()
            if k.lower().startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > 2048:
        raise S3Error("MetadataTooLarge", "user metadata is limited to 2 KB")
    return object_xattrs("", request.headers.get("Content-Type"), meta)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a `Range: bytes=...` header; None: the whole object."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # absent, another unit or several ranges: the whole object, as S3
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            n = int(last)
            if n <= 0:
                raise ValueError
            return max(size - n, 0), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        raise S3Error("InvalidRange", f"the range {header} is not satisfiable for an object of "
                      f"{size} bytes")
    return start, min(end, size)


def _parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise S3Error("MalformedXML", f"the {what} body is not well-formed XML: {e}") from None
    for el in root.iter():  # drop the namespace: clients send it or not
        el.tag = el.tag.rsplit("}", 1)[-1]
    return root


class S3Gateway:
    """The request handlers; one per server. Each request acts on the object store of
    the credential that signed it (`access`)."""

    def __init__(self, access: Access, pool: ThreadPoolExecutor) -> None:
        self.access = access
        self.pool = pool

    @property
    def store(self) -> ObjectStore:
        """The store of the request being handled."""
        return _REQUEST_STORE.get()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- entry -----------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        raw_path = request.raw_path.split("?", 1)[0]
        bucket, _, key = unquote(raw_path).lstrip("/").partition("/")
        leased: ObjectStore | None = None
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            signed = SignedRequest(request.method, raw_path,
                                   tuple(request.rel_url.query.items()), headers)
            session = headers.get("x-amz-security-token") or \
                request.rel_url.query.get("X-Amz-Security-Token")
            verified = verify(signed, lambda ak: self.access.lookup(ak, session))
            cred = request[_CRED] = verified.credential
            for b in (bucket, self._copy_source(request)[0]):
                if b and not cred.allows(b):
                    raise S3Error("AccessDenied", "this access key may not use the bucket", b)
            if cred.read_only and request.method not in ("GET", "HEAD"):
                raise S3Error("AccessDenied", "this token may only read; mint a write token "
                              "to change objects", f"{bucket}/{key}")
            leased = await self.run(self.access.acquire, cred)
            _REQUEST_STORE.set(leased)
            payload = None if verified.payload_hash == UNSIGNED or verified.chunked \
                else verified.payload_hash
            request[_VERIFIED] = verified
            resp = await self._dispatch(request, bucket, key, payload)
        except Exception as e:
            if request.get(_STREAMING):
                raise  # the status line is sent: only a cut connection can tell the client
            e = _as_s3(e, f"{bucket}/{key}")
            if not isinstance(e, S3Error):
                log.exception("S3 %s %s failed", request.method, request.path)
                e = S3Error("InternalError", f"{type(e).__name__}: {e}; see the gateway's log",
                            f"{bucket}/{key}")
            resp = web.Response(status=e.status, body=e.to_xml(request_id) if
                                request.method != "HEAD" else None,
                                content_type="application/xml")
        finally:
            if leased is not None:
                await self.run(self.access.release, leased)
        resp.headers["x-amz-request-id"] = request_id
        return resp

    def _copy_source(self, request: web.Request) -> tuple[str, str]:
        src = request.headers.get("x-amz-copy-source")
        if not src:
            return "", ""
        path = unquote(src.split("?", 1)[0]).lstrip("/")
        b, _, k = path.partition("/")
        if not b or not k:
            raise S3Error("InvalidArgument", "x-amz-copy-source must be BUCKET/KEY", src)
        return b, k

    async def _dispatch(self, request: web.Request, bucket: str, key: str,
                        payload: str | None) -> web.StreamResponse:
        q = request.rel_url.query
        m = request.method

        def op(name: str) -> None:
            request[metrics.OPERATION] = name

        if not bucket:
            if m == "GET":
                op("ListBuckets")
                return await self.list_buckets(request[_CRED])
            raise S3Error("MethodNotAllowed", f"{m} / is not an S3 operation")
        if not key:
            routes: dict[tuple[str, str], Callable[[], Awaitable[web.StreamResponse]]] = {
                ("PUT", ""): lambda: self.create_bucket(bucket),
                ("DELETE", ""): lambda: self.delete_bucket(bucket),
                ("HEAD", ""): lambda: self.head_bucket(bucket),
                ("GET", ""): lambda: self.list_objects(request, bucket),
                ("GET", "location"): lambda: self.location(bucket),
                ("GET", "uploads"): lambda: self.list_uploads(request, bucket),
                ("POST", "delete"): lambda: self.delete_objects(request, bucket),
            }
            sub = next((s for s in ("location", "delete", "uploads") if s in q), "")
            if sub == "" and any(s in q for s in ("versioning", "acl", "policy",
                                                  "lifecycle", "cors", "tagging")):
                raise S3Error("NotImplemented", f"bucket subresource {'&'.join(q)} is not "
                              "supported by this gateway")
            handler = routes.get((m, sub))
            if handler is None:
                raise S3Error("MethodNotAllowed", f"{m} on a bucket is not supported")
            op({"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket",
                "GET": "ListObjects", "POST": "DeleteObjects"}[m] if not sub else
               {"location": "GetBucketLocation", "delete": "DeleteObjects",
                "uploads": "ListMultipartUploads"}[sub])
            return await handler()
        if m == "PUT" and "uploadId" in q:
            op("UploadPart")
            if "x-amz-copy-source" in request.headers:
                raise S3Error("NotImplemented", "UploadPartCopy is not supported; copy the "
                              "object with CopyObject")
            return await self.upload_part(request, bucket, key, payload)
        if m == "PUT" and "x-amz-copy-source" in request.headers:
            op("CopyObject")
            return await self.copy_object(request, bucket, key)
        if m == "PUT":
            op("PutObject")
            return await self.put_object(request, bucket, key, payload)
        if m in ("GET", "HEAD") and "uploadId" in q:
            op("ListParts")
            return await self.list_parts(bucket, key, q["uploadId"])
        if m in ("GET", "HEAD"):
            op("GetObject" if m == "GET" else "HeadObject")
            return await self.get_object(request, bucket, key)
        if m == "DELETE" and "uploadId" in q:
            op("AbortMultipartUpload")
            await self.run(self.store.abort_upload, bucket, key, q["uploadId"])
            return web.Response(status=204)
        if m == "DELETE":
            op("DeleteObject")
            await self.run(self.store.delete, bucket, key)
            return web.Response(status=204)
        if m == "POST" and "uploads" in q:
            op("CreateMultipartUpload")
            return await self.create_upload(request, bucket, key)
        if m == "POST" and "uploadId" in q:
            op("CompleteMultipartUpload")
            return await self.complete_upload(request, bucket, key, q["uploadId"])
        raise S3Error("MethodNotAllowed", f"{m} on an object is not supported")

    # -- buckets ---------------------------------------------------------------
    async def list_buckets(self, cred: Credential) -> web.Response:
        buckets = [b for b in await self.run(self.store.list_buckets) if cred.allows(b.name)]
        items = "".join(f"<Bucket><Name>{escape(b.name)}</Name><CreationDate>"
                        f"{_iso(b.ctime_ns)}</CreationDate></Bucket>" for b in buckets)
        return _xml(f'<ListAllMyBucketsResult xmlns="{XMLNS}"><Owner><ID>hutong</ID>'
                    f"<DisplayName>hutong</DisplayName></Owner><Buckets>{items}</Buckets>"
                    "</ListAllMyBucketsResult>")

    async def create_bucket(self, bucket: str) -> web.Response:
        await self.run(self.store.create_bucket, bucket)
        return web.Response(headers={"Location": f"/{bucket}"})

    async def delete_bucket(self, bucket: str) -> web.Response:
        await self.run(self.store.delete_bucket, bucket)
        return web.Response(status=204)

    async def head_bucket(self, bucket: str) -> web.Response:
        await self.run(self.store.head_bucket, bucket)
        return web.Response()

    async def location(self, bucket: str) -> web.Response:
        await self.run(self.store.head_bucket, bucket)
        return _xml(f'<LocationConstraint xmlns="{XMLNS}"></LocationConstraint>')

    async def list_objects(self, request: web.Request, bucket: str) -> web.Response:
        q = request.rel_url.query
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(int(q.get("max-keys", "1000")), 1000)
            if max_keys < 0:
                raise ValueError
        except ValueError:
            raise S3Error("InvalidArgument", "max-keys must be a number >= 0") from None
        if v2:
            token = q.get("continuation-token")
            if token is not None:
                try:
                    start = base64.urlsafe_b64decode(token.encode()).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise S3Error("InvalidArgument", "the continuation token is not one this "
                                  "gateway issued") from None
            else:
                after = q.get("start-after", "")
                start = after + "\0" if after else ""
        else:
            marker = q.get("marker", "")
            start = marker + "\0" if marker else ""
        page = await self.run(self.store.list_objects, bucket, prefix, delimiter, start,
                              max_keys)
        url_encoded = q.get("encoding-type") == "url"

        def enc(text: str) -> str:  # encoding-type=url: keys may hold what XML cannot
            return quote(text, safe="/") if url_encoded else escape(text)
        contents = "".join(
            f"<Contents><Key>{enc(o.key)}</Key><LastModified>{_iso(o.mtime_ns)}"
            f"</LastModified><ETag>&quot;{o.etag}&quot;</ETag><Size>{o.size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>" for o in page.objects)
        prefixes = "".join(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>"
                           for p in page.prefixes)
        head = (f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix>"
                f"<MaxKeys>{max_keys}</MaxKeys>"
                + (f"<Delimiter>{enc(delimiter)}</Delimiter>" if delimiter else "")
                + ("<EncodingType>url</EncodingType>" if url_encoded else "")
                + f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
        if v2:
            head += f"<KeyCount>{len(page.objects) + len(page.prefixes)}</KeyCount>"
            if "continuation-token" in q:
                head += f"<ContinuationToken>{escape(q['continuation-token'])}</ContinuationToken>"
            if page.truncated:
                tok = base64.urlsafe_b64encode(page.next_start.encode()).decode()
                head += f"<NextContinuationToken>{tok}</NextContinuationToken>"
        elif page.truncated:
            last = max([o.key for o in page.objects] + page.prefixes)
            head += f"<NextMarker>{enc(last)}</NextMarker>"
        tag = "ListBucketResult"
        return _xml(f'<{tag} xmlns="{XMLNS}">{head}{contents}{prefixes}</{tag}>')

    async def list_uploads(self, request: web.Request, bucket: str) -> web.Response:
        prefix = request.rel_url.query.get("prefix", "")
        uploads = await self.run(self.store.list_uploads, bucket, prefix)
        items = "".join(f"<Upload><Key>{escape(k)}</Key><UploadId>{u}</UploadId>"
                        f"<Initiated>{_iso(ns)}</Initiated></Upload>" for k, u, ns in uploads)
        return _xml(f'<ListMultipartUploadsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}'
                    f"</Bucket><Prefix>{escape(prefix)}</Prefix><IsTruncated>false"
                    f"</IsTruncated>{items}</ListMultipartUploadsResult>")

    async def delete_objects(self, request: web.Request, bucket: str) -> web.Response:
        root = _parse_xml(await self._small_body(request), "DeleteObjects")
        keys = [el.findtext("Key") or "" for el in root.iter("Object")]
        if len(keys) > 1000:
            raise S3Error("MalformedXML", "DeleteObjects takes at most 1000 keys")
        quiet = (root.findtext("Quiet") or "").lower() == "true"
        out = []
        for key in keys:
            try:
                await self.run(self.store.delete, bucket, key)
                if not quiet:
                    out.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
            except S3Error as e:
                out.append(f"<Error><Key>{escape(key)}</Key><Code>{e.code}</Code>"
                           f"<Message>{escape(e.message)}</Message></Error>")
        return _xml(f'<DeleteResult xmlns="{XMLNS}">{"".join(out)}</DeleteResult>')

    # -- objects ---------------------------------------------------------------
    async def get_object(self, request: web.Request, bucket: str, key: str
                         ) -> web.StreamResponse:
        info, pinned = await self.run(functools.partial(
            self.store.info, bucket, key, pin=request.method == "GET"))
        headers = _object_headers(info)
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match.strip('"') not in (info.etag, "*"):
            raise S3Error("PreconditionFailed", "If-Match does not match the object's ETag",
                          f"{bucket}/{key}")
        if request.headers.get("If-None-Match", "").strip('"') in (info.etag, "*"):
            return web.Response(status=304, headers={"ETag": headers["ETag"]})
        rng = _range(request.headers.get("Range"), info.size)
        start, end = rng if rng is not None else (0, info.size)
        status = 200
        if rng is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        headers["Content-Length"] = str(end - start)
        resp = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD":
            return resp
        request[_STREAMING] = True
        await resp.prepare(request)
        blocks = self.store.read(bucket, key, pinned, start, end)
        # The next block is read on a worker while this one is sent: without the overlap
        # the socket idles for a thread round trip after every drain.
        nxt = asyncio.ensure_future(self.run(_take, blocks, SEND_BLOCK))
        try:
            while block := await nxt:
                nxt = asyncio.ensure_future(self.run(_take, blocks, SEND_BLOCK))
                await resp.write(block)
                metrics.BYTES.labels("s3", "out").inc(len(block))
        finally:
            if not nxt.done():  # the client went away mid-body: let the read finish
                await asyncio.gather(nxt, return_exceptions=True)
        await resp.write_eof()
        return resp

    async def put_object(self, request: web.Request, bucket: str, key: str,
                         payload: str | None) -> web.Response:
        xattrs = _request_xattrs(request)
        md5 = _content_md5(request)
        if key.endswith("/") and request.content_length in (0, None):
            body = await self._small_body(request)
            if body:
                raise S3Error("InvalidArgument", "a key ending in '/' is a folder marker and "
                              "must be empty", f"{bucket}/{key}")
            await self.run(self.store.put_marker, bucket, key)
            return web.Response(headers={"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'})
        check_key(key)
        if not request[_VERIFIED].chunked and request.content_length is not None and \
                request.content_length <= SMALL_BODY:  # group-committed with its neighbours
            body = await request.content.read()
            if len(body) != request.content_length:
                raise S3Error("IncompleteBody", f"received {len(body)} of "
                              f"{request.content_length} bytes")
            etag = await self.run(self.store.put_small, bucket, key, body, xattrs, payload, md5)
            metrics.BYTES.labels("s3", "in").inc(len(body))
        else:
            etag = await self._receive(request, self.store.start_put, (bucket, key, xattrs),
                                       payload, md5)
        return web.Response(headers={"ETag": f'"{etag}"'})

    async def copy_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        src_bucket, src_key = self._copy_source(request)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "x-amz-metadata-directive must be COPY or REPLACE")
        if (src_bucket, src_key) == (bucket, key) and directive == "COPY":
            raise S3Error("InvalidRequest", "copying an object onto itself must change its "
                          "metadata (x-amz-metadata-directive: REPLACE)")
        replace = _request_xattrs(request) if directive == "REPLACE" else None
        info = await self.run(self.store.copy, src_bucket, src_key, bucket, key, replace)
        return _xml(f'<CopyObjectResult xmlns="{XMLNS}"><LastModified>{_iso(info.mtime_ns)}'
                    f"</LastModified><ETag>&quot;{info.etag}&quot;</ETag></CopyObjectResult>")

    # -- multipart -------------------------------------------------------------
    async def create_upload(self, request: web.Request, bucket: str, key: str
                            ) -> web.Response:
        upload_id = await self.run(self.store.create_upload, bucket, key,
                                   _request_xattrs(request))
        return _xml(f'<InitiateMultipartUploadResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}'
                    f"</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                    "</InitiateMultipartUploadResult>")

    async def upload_part(self, request: web.Request, bucket: str, key: str,
                          payload: str | None) -> web.Response:
        q = request.rel_url.query
        try:
            number = int(q.get("partNumber", ""))
        except ValueError:
            raise S3Error("InvalidArgument", "partNumber must be a number from 1 to 10000") \
                from None
        etag = await self._receive(request, self.store.start_part,
                                   (bucket, key, q["uploadId"], number), payload,
                                   _content_md5(request))
        return web.Response(headers={"ETag": f'"{etag}"'})

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> web.Response:
        parts = await self.run(self.store.list_parts, bucket, key, upload_id)
        items = "".join(f"<Part><PartNumber>{n}</PartNumber><LastModified>{_iso(i.mtime_ns)}"
                        f"</LastModified><ETag>&quot;{i.etag}&quot;</ETag><Size>{i.size}"
                        "</Size></Part>" for n, i in parts)
        return _xml(f'<ListPartsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket>'
                    f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                    f"<IsTruncated>false</IsTruncated>{items}</ListPartsResult>")

    async def complete_upload(self, request: web.Request, bucket: str, key: str,
                              upload_id: str) -> web.Response:
        root = _parse_xml(await self._small_body(request), "CompleteMultipartUpload")
        parts: list[tuple[int, str]] = []
        for el in root.iter("Part"):
            try:
                parts.append((int(el.findtext("PartNumber") or ""), el.findtext("ETag") or ""))
            except ValueError:
                raise S3Error("MalformedXML", "a Part has no numeric PartNumber") from None
        info = await self.run(self.store.complete, bucket, key, upload_id, parts)
        return _xml(f'<CompleteMultipartUploadResult xmlns="{XMLNS}"><Location>/{escape(bucket)}'
                    f"/{escape(key)}</Location><Bucket>{escape(bucket)}</Bucket><Key>"
                    f"{escape(key)}</Key><ETag>&quot;{info.etag}&quot;</ETag>"
                    "</CompleteMultipartUploadResult>")

    # -- bodies ----------------------------------------------------------------
    async def _small_body(self, request: web.Request) -> bytes:
        if (request.content_length or 0) > MAX_XML:
            raise S3Error("InvalidRequest", f"request body over {MAX_XML} bytes")
        body = await request.content.read(MAX_XML + 1)
        if len(body) > MAX_XML:
            raise S3Error("InvalidRequest", f"request body over {MAX_XML} bytes")
        return body

    async def _receive(self, request: web.Request, start: Callable[..., ObjectUpload],
                       args: tuple[Any, ...], payload: str | None,
                       md5: bytes | None) -> str:
        """Stream the request body into a new object (or part); returns its ETag."""
        verified: Verified = request[_VERIFIED]
        decoder = ChunkedDecoder(verified) if verified.chunked else None
        if decoder is not None:
            try:
                expected: int | None = int(request.headers["x-amz-decoded-content-length"])
            except (KeyError, ValueError):
                raise S3Error("MissingContentLength", "an aws-chunked body needs "
                              "x-amz-decoded-content-length") from None
        else:
            expected = request.content_length
        if request.content_length is not None and request.content_length <= SMALL_BODY:
            body = await request.content.read()
            if decoder is not None:
                body = b"".join(decoder.feed(body))
                decoder.finish()
            if expected is not None and len(body) != expected:
                raise S3Error("IncompleteBody", f"received {len(body)} of {expected} bytes")
            etag: str = await self.run(_put_whole, start, args, payload, body, md5)
            metrics.BYTES.labels("s3", "in").inc(len(body))
            return etag
        upload = await self.run(start, *args, payload)
        pending: asyncio.Future[None] | None = None
        received = 0
        try:
            buf = bytearray()
            async for data in request.content.iter_chunked(1 << 20):
                for piece in decoder.feed(data) if decoder is not None else (data,):
                    buf += piece
                    received += len(piece)
                if len(buf) >= STREAM_BLOCK:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(self.run(upload.write, bytes(buf)))
                    buf = bytearray()
            if pending is not None:
                await pending
                pending = None
            if decoder is not None:
                decoder.finish()
            if expected is not None and received != expected:
                raise S3Error("IncompleteBody", f"received {received} of {expected} bytes")
            if buf:
                await self.run(upload.write, bytes(buf))
            etag = await self.run(upload.commit, md5)
        except BaseException:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            await asyncio.shield(self.run(upload.abort))
            raise
        metrics.BYTES.labels("s3", "in").inc(received)
        return etag


def _take(blocks: Iterator[bytes], limit: int) -> bytes:
    """The next blocks of `blocks`, joined, about `limit` bytes (b"" at the end)."""
    out: list[bytes] = []
    n = 0
    for b in blocks:
        out.append(b)
        n += len(b)
        if n >= limit:
            break
    return out[0] if len(out) == 1 else b"".join(out)


def _put_whole(start: Callable[..., ObjectUpload], args: tuple[Any, ...],
               payload: str | None, body: bytes, md5: bytes | None) -> str:
    upload = start(*args, payload)
    try:
        upload.write(body)
    except BaseException:
        upload.abort()
        raise
    return upload.commit(md5)


def _content_md5(request: web.Request) -> bytes | None:
    value = request.headers.get("Content-MD5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "Content-MD5 must be the base64 of the body's MD5")
    return digest


def _as_s3(e: Exception, resource: str) -> Exception:
    """The S3 error of a namespace refusal (a token's limits, a site that is down)."""
    if isinstance(e, S3Error):
        return e
    if isinstance(e, PermissionError):
        return S3Error("AccessDenied", f"{e}", resource)
    if isinstance(e, FileTooLargeError):
        return S3Error("EntityTooLarge", f"{e}", resource)
    if isinstance(e, (ReadOnlyError, UnavailableSiteError)):
        return S3Error("ServiceUnavailable", f"{e}", resource)
    return e


def make_app(access: Access, *, workers: int = 16,
             log: AccessLog | None = None) -> web.Application:
    """The S3 gateway application: requests act on the store `access` maps their
    credential to (gfs.gateway.access); each is recorded in `log` when given."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="hutong-s3")
    gw = S3Gateway(access, pool)
    hooks = [metrics.middleware("s3")]
    if log is not None:
        hooks.append(s3_middleware(log, _CRED, metrics.OPERATION))
    app = web.Application(middlewares=hooks, client_max_size=MAX_XML)
    app[_ACCESS_KEY] = access
    app[_POOL_KEY] = pool
    app.router.add_get(metrics.METRICS_PATH, metrics.serve_metrics)
    app.router.add_route("*", "/{tail:.*}", gw.handle)

    async def stop(app: web.Application) -> None:
        pool.shutdown(wait=True)
        access.close()
    app.on_cleanup.append(stop)
    return app


__all__ = ["CONTENT_TYPE", "META", "S3Gateway", "make_app"]
