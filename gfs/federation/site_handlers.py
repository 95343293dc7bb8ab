"""The site's HTTP API (docs/openapi/site.yaml): aiohttp handlers over `Site` and
`make_app`. A handler authenticates on the headers, reads a bounded body and runs
everything that touches the store, LMDB or the write lock in a thread pool, so that one
slow write never stalls another request (health checks included)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from gfs import paths
from gfs.accesslog import Access
from gfs.errors import InvalidPathError
from gfs.federation.auth import AuthError
from gfs.federation.http import (
    BYTES_IN_KEY,
    MAX_JSON,
    ApiError,
    BadRequestError,
    error_middleware,
    field,
    read_body,
    read_json,
)
from gfs.federation.notices_site import LeaseTable
from gfs.federation.notices_site import stream as notice_stream
from gfs.federation.rules import RuleSpec, reconcile, unpin_everywhere
from gfs.federation.site_state import METRICS_PATH, NotPrimaryError, Principal, Site
from gfs.federation.wire import (
    MAX_BODY,
    check_name,
    commit_attrs,
    fit_frames,
    frame_views,
    pack_frames,
    parse_digests,
    parse_ids,
    parse_refs,
    refs_to_wire,
    unpack_frames,
    xattrs_from_wire,
)
from gfs.meta import Inode
from gfs.mover import DEFAULT_STREAMS
from gfs.namespace_api import stat_to_wire
from gfs.schema import validate

log = logging.getLogger("gfs.federation.site")
T = TypeVar("T")


# -- HTTP handlers -------------------------------------------------------------------------

SITE_KEY: web.AppKey[Site] = web.AppKey("site", Site)
LEASES_KEY: web.AppKey[LeaseTable] = web.AppKey("leases", LeaseTable)
#: Chunks of a `/v1/chunks/get` answer read and sent together: the answer streams in
#: parts (~1 MiB at the default 64 KiB chunks), each read from disk in the thread pool
#: while the one before is sent, so its first bytes leave after one part's reads, and a
#: slow reader holds one part in memory, not the whole batch (up to MAX_IDS chunks).
STREAM_IDS = 16


def _site(request: web.Request) -> Site:
    return request.app[SITE_KEY]


async def _principal(request: web.Request) -> tuple[Site, Principal]:
    """The site and the caller, authenticated on the headers before any body is read."""
    site = _site(request)
    p = await _run(site.principal, request.headers,
                                                         request.method, request.path_qs)
    request[_PRINCIPAL] = p
    return site, p


async def _json_principal(request: web.Request) -> tuple[Site, Principal, dict[str, Any]]:
    site, p = await _principal(request)
    data = await read_json(request, signed=p.token is None)
    if isinstance(data.get("path"), str):
        request[_PATH] = data["path"]
    return site, p, data


_PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
_PATH: web.RequestKey[str] = web.RequestKey("path", str)


@web.middleware
async def access_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    """Record every answered request in the site's access log (who, what, when, bytes,
    result); health checks are not recorded."""
    resp = await handler(request)
    if request.path == "/v1/health":
        return resp
    p = request.get(_PRINCIPAL)
    who = entity = "-"
    if p is not None:
        entity = p.entity
        who = f"{p.token.sub}@{p.entity}" if p.token is not None else p.entity
    result = "ok"
    if resp.status >= 400 and isinstance(resp, web.Response) and resp.body is not None:
        try:
            result = str(json.loads(bytes(resp.body))["error"])  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            result = f"http {resp.status}"
    out = resp.content_length if resp.content_length is not None else resp.body_length
    route = request.match_info.route.resource
    _site(request).access.record(Access(
        time.time(), who, entity, request.method,
        route.canonical if route is not None else "unmatched",
        request.get(_PATH) or request.query.get("path", ""),
        request.get(BYTES_IN_KEY, 0), out or 0, resp.status, result))
    return resp


async def _get_principal(request: web.Request) -> tuple[Site, Principal]:
    site, p = await _principal(request)
    await read_body(request, MAX_JSON, signed=p.token is None)
    return site, p


def _flag(request: web.Request, name: str) -> bool:
    """A `0`/`1` query flag (absent: 0); BadRequestError for anything else."""
    v = request.query.get(name, "0")
    if v not in ("0", "1"):
        raise BadRequestError(f"query parameter {name!r} must be 0 or 1, not {v!r}")
    return v == "1"


def _owner(site: Site, data: dict[str, Any] | None, query: Any = None) -> str:
    owner = field(data or {}, "owner", str, None) if query is None else query.get("owner")
    return site.entity if owner is None else check_name(owner, "owner")


async def health(request: web.Request) -> web.Response:
    s = _site(request)
    return web.json_response({"status": "ok", "site": s.name, "entity": s.entity,
                              "primary": s.config.primary})


async def metrics(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    site.check_metrics(p)
    # gauges read the vault's disk use and the tiers' LMDB records
    text = await _run(site.metrics.render)
    return web.Response(text=text, content_type="text/plain")


async def chunks_has(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    owner = _owner(site, data)
    site.check_owner(p, owner, write=False)
    cids = parse_ids(data)
    whole = field(data, "whole", bool, False)  # a sealed delta's base must be kept whole

    def has() -> list[bool]:
        if owner == site.entity:
            with site.client.engine.read() as txn:
                return [txn.has_chunk(c) for c in cids]
        return [site.vault.has(owner, c, whole=whole) for c in cids]
    return web.json_response({"have": await _run(has)})


async def chunks_get(request: web.Request) -> web.StreamResponse:
    site, p, data = await _json_principal(request)
    owner = _owner(site, data)
    cids = parse_ids(data)
    path = field(data, "path", str, None)
    if path is None:
        site.check_owner(p, owner, write=False)
    elif owner != site.entity:
        raise BadRequestError("chunks are read by file path from the file's own entity's "
                              "primary; leave 'owner' out")
    else:  # a grantee or a prefix token: the chunks of one file it may read
        await _run(site.check_file_chunks, p, path, cids)

    def read(part: list[bytes], sizes: list[int] | None = None) -> bytes | bytearray:
        if owner == site.entity:
            body, served = site.frames(part)
        else:
            blobs = [site.vault.get(owner, c) for c in part]
            body, served = pack_frames(blobs), sum(b is not None for b in blobs)
        if sizes is not None and len(body) != sum(sizes):
            # A copy read otherwise than its record said when the length was announced
            # (damaged, gone, moved meanwhile) costs that chunk only: it is sent as not
            # held, in its announced size, and the reader asks elsewhere.
            body, changed = fit_frames(body, sizes)
            served = sum(1 for f in frame_views(body, limit=len(part)) if f)
            log.warning("chunk answer to %s: %d chunk(s) sent as not held, their copies "
                        "not as announced (first %s)", request.remote, len(changed),
                        part[changed[0]].hex())
        site.metrics.inc("chunks_served_total", served)
        return body

    parts = [cids[i:i + STREAM_IDS] for i in range(0, len(cids), STREAM_IDS)]

    def start() -> tuple[list[int] | None, bytes | bytearray]:
        sizes = site.frame_sizes(cids) if len(parts) > 1 and owner == site.entity else None
        return sizes, read(parts[0]) if parts else b""
    sizes, first = await _run(start)  # an error here is still JSON
    if len(parts) <= 1:
        site.metrics.inc("chunk_bytes_out_total", len(first))
        return web.Response(body=first, content_type="application/octet-stream")
    # Known ahead, the length is sent (no chunked encoding for the client to undo): each
    # later part is fitted to the sizes announced (`read`).
    if sizes is not None and len(first) != sum(sizes[:STREAM_IDS]):
        sizes = None  # nothing is sent yet: chunked after all
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if sizes is None:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = sum(sizes)
    await resp.prepare(request)
    body = first
    try:
        for k, part in enumerate(parts[1:], start=1):
            at = k * STREAM_IDS
            # the next part is read from disk while this one is being sent
            nxt = asyncio.ensure_future(_run(
                read, part, None if sizes is None else sizes[at:at + len(part)]))
            try:
                await resp.write(body)  # waits while the peer's socket is full
            except BaseException:
                nxt.cancel()
                raise
            site.metrics.inc("chunk_bytes_out_total", len(body))
            body = await nxt
        await resp.write(body)
    except Exception as e:  # the status is sent: no error answer is possible any more
        # End the connection before the closing chunk, so that the client sees a
        # truncated answer (never a short list of chunks passed off as whole).
        log.warning("chunk answer to %s cut short: %s", request.remote, e)
        if request.transport is not None:
            request.transport.close()
        return resp
    site.metrics.inc("chunk_bytes_out_total", len(body))
    await resp.write_eof()
    return resp


async def _binary_principal(request: web.Request) -> tuple[Site, Principal, bytes]:
    """The site, the verified caller and the raw body (at most MAX_BODY) of a request."""
    site, p = await _principal(request)
    return site, p, await read_body(request, MAX_BODY, signed=p.token is None)


async def chunks_put(request: web.Request) -> web.Response:
    site, p, body = await _binary_principal(request)
    loop = asyncio.get_running_loop()
    owner = _owner(site, None, request.query)
    site.check_owner(p, owner, write=True)
    blobs = unpack_frames(body)
    replace = _flag(request, "replace")
    if owner == site.entity:
        put = site.repair_plain if replace else site.put_plain
        stored, present = await loop.run_in_executor(None, put, blobs)
    else:
        stored, present = await loop.run_in_executor(None, site.put_foreign, owner, blobs,
                                                     replace)
    site.metrics.inc("chunks_stored_total", stored)
    site.metrics.inc("chunk_bytes_in_total", len(body))
    return web.json_response({"stored": stored, "present": present})


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the default thread pool: handlers never block the event loop on
    the store, LMDB or the write lock."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def _uint(request: web.Request, name: str, what: str) -> int | None:
    """Query parameter `name` as a non-negative integer (absent: None); BadRequestError
    naming `what` it must be."""
    v = request.query.get(name)
    if v is None:
        return None
    if not v.isdigit() or len(v) > 20:
        raise BadRequestError(f"query parameter {name!r} must be {what} (a non-negative "
                              f"integer), not {v!r}")
    return int(v)


@contextlib.asynccontextmanager
async def _leased(request: web.Request, p: Principal, out: dict[str, Any]
                  ) -> AsyncIterator[None]:
    """Promise a lease (query `lease`: the caller's notice stream) on query `path` before
    the access check and the read run inside; the answer `out` gets its seconds."""
    table, holder, raw = request.app[LEASES_KEY], request.query.get("lease"), \
        request.query.get("path", "")
    if not request.app[SITE_KEY].grants_leases:
        holder = None  # a mirror, or one of several daemons on a shared database
    try:
        ttl = table.promise(holder, p, raw) if holder else None
    except InvalidPathError:
        ttl = None
    try:
        yield
    except BaseException:
        if ttl is not None:
            table.withdraw(holder, p, raw)
        raise
    if ttl is not None:
        out["lease"] = ttl


@contextlib.asynccontextmanager
async def _breaking(request: web.Request, *changed: str, subtree: bool = False,
                    everything: bool = False) -> AsyncIterator[None]:
    """Break the leases a change of `changed` touches once the change inside has run
    (failed too: it may have changed something), before the writer is answered."""
    try:
        yield
    finally:
        await request.app[LEASES_KEY].broken(changed, subtree=subtree, everything=everything)


async def ns_notices(request: web.Request) -> web.StreamResponse:
    """The caller's notice stream (docs/leases.md)."""
    _, p = await _get_principal(request)
    return await notice_stream(request, request.app[LEASES_KEY], p)


async def ns_notices_ack(request: web.Request) -> web.Response:
    _, p, data = await _json_principal(request)
    holder = field(data, "holder", str)
    seq = field(data, "seq", int)
    if not request.app[LEASES_KEY].ack(holder, p, seq):
        raise ApiError(f"no break {seq} awaited on notice stream {holder[:8]}...: it ended "
                       "or was answered; open a new stream", 404, "no_such_break")
    return web.json_response({"acked": seq})


async def ns_notices_renew(request: web.Request) -> web.Response:
    _, p, data = await _json_principal(request)
    holder = field(data, "holder", str)
    ttl = request.app[LEASES_KEY].renew(holder, p)
    if ttl is None:
        raise ApiError(f"no notice stream {holder[:8]}... of the caller that may renew: it "
                       "ended, or has breaks to acknowledge first", 404, "no_such_stream")
    return web.json_response({"ttl": ttl})


async def ns_stat(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    out: dict[str, Any] = {}
    async with _leased(request, p, out):
        path, _ = await _run(site.list_access, p, request.query.get("path", ""))
        out.update(stat_to_wire(await _run(site.client.stat, path)))
    return web.json_response(out)


async def ns_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if_version = _uint(request, "if_version", "a directory's change version")
    if _flag(request, "mirror"):  # a replica answering for a down primary
        norm, keep = await _run(site.mirror_access, p, request.query.get("path", ""),
                                "listings")
        resp = web.json_response(await _run(site.mirrored_listing, norm, keep))
    else:
        out: dict[str, Any] = {}
        async with _leased(request, p, out):
            path, keep = await _run(site.list_access, p, request.query.get("path", ""))
            attrs = _flag(request, "xattrs")
            out.update(await _run(site.listing, path, if_version, keep, attrs))
        resp = web.json_response(out)
    # A listing of 10,000 entries is 2.4 MB of JSON: gzip (if the client accepts it)
    # makes it about a tenth, a few round trips less of TCP slow start on a long link.
    resp.enable_compression()
    return resp


async def ns_visible(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    return web.json_response({"entity": site.entity, "prefixes": await _run(site.visible, p)})


async def ns_manifest(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if _flag(request, "mirror"):  # a replica answering for a down primary
        norm, keep = await _run(site.mirror_access, p, request.query.get("path", ""),
                                "manifests")
        if keep is not None:
            raise AuthError(f"{norm} is a directory the grants show, not a file they grant",
                            403, "forbidden")
        st, m = await _run(site.mirrored, norm)
        return web.json_response({"stat": stat_to_wire(st), "chunks": refs_to_wire(m.chunks),
                                  "sites": [site.name]})
    if_version = _uint(request, "if_version", "a file's version")
    out: dict[str, Any] = {}
    async with _leased(request, p, out):
        path = await _run(site.check_path, p, request.query.get("path", ""), False)
        out.update(await _run(_manifest_answer, site, path, if_version))
    return web.json_response(out)


def _manifest_answer(site: Site, path: str, if_version: int | None) -> dict[str, Any]:
    st, m = site.manifest(path)
    if if_version is not None and st.version == if_version:  # the caller has it
        return {"stat": stat_to_wire(st), "unchanged": True,
                "sites": site.replica_sites(path)}
    return {"stat": stat_to_wire(st), "chunks": refs_to_wire(m.chunks),
            "sites": site.replica_sites(path)}


async def ns_read(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), False)
    start = _uint(request, "start", "a byte offset") or 0
    end = _uint(request, "end", "a byte offset")
    version = _uint(request, "version", "the file version to read")

    def read() -> bytes:
        st, m = site.manifest(path)
        if version is not None and st.version != version:
            raise ApiError(f"{path} is at version {st.version} now, not {version}; stat it "
                           "and read the current version", 409, "version_changed")
        stop = st.size if end is None else min(end, st.size)
        first = min(start, stop)
        if stop - first > MAX_BODY:
            raise ApiError(f"{path}: {stop - first} bytes asked for; read at most {MAX_BODY} "
                           "per request (start, end)", 413, "too_large")
        with site.client.open_version(path, m) as f:
            f.seek(first)
            return f.read(stop - first)
    return web.Response(body=await _run(read), content_type="application/octet-stream")


#: Bytes of the `attrs` query parameter of `POST /v1/ns/write` (S3 allows 2 KiB of
#: user metadata; the request line must stay under aiohttp's 8 KiB).
MAX_WRITE_ATTRS = 6144


def _node_attrs(of_version: Callable[[int], dict[str, bytes]] | None
                ) -> Callable[[Inode], dict[str, bytes]] | None:
    return None if of_version is None else lambda node: of_version(node.version)


def _write_attrs(request: web.Request) -> Callable[[Inode], dict[str, bytes]] | None:
    """The attributes a file write sets in its own commit: query parameter `attrs`, a
    JSON object with `xattrs` and `keyed` as in `/v1/ns/concat`."""
    raw = request.query.get("attrs")
    if raw is None:
        return None
    if len(raw) > MAX_WRITE_ATTRS:
        raise BadRequestError(f"query parameter 'attrs' is {len(raw)} bytes, more than "
                              f"{MAX_WRITE_ATTRS}")
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequestError("query parameter 'attrs' must be a JSON object with "
                              "'xattrs' and 'keyed'") from None
    if not isinstance(data, dict) or not data.keys() <= {"xattrs", "keyed"}:
        raise BadRequestError("query parameter 'attrs' must be a JSON object with "
                              "'xattrs' and 'keyed'")
    return _node_attrs(commit_attrs(data))


async def ns_write(request: web.Request) -> web.Response:
    """Create or replace file `path` with the body; with `attrs`, its extended attributes
    replaced in the same commit."""
    attrs = _write_attrs(request)  # a malformed one: 400 before the body is read
    site, p, body = await _binary_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), True)

    async with _breaking(request, path):
        st = await _run(site.write_file, path, body, attrs)
    return web.json_response(stat_to_wire(st))


async def ns_mkdir(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    parents = field(data, "parents", bool, False)
    exist_ok = field(data, "exist_ok", bool, False)

    made = [paths.join(paths.split(path)[:i]) for i in range(1, len(paths.split(path)))]
    async with _breaking(request, path, *(made if parents else ())):
        st = await _run(site.change, path,
                        lambda: site.client.mkdir(path, parents=parents, exist_ok=exist_ok))
    return web.json_response(stat_to_wire(st))


async def ns_remove(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    if path == f"/{site.entity}":
        raise AuthError(f"the entity root {path} cannot be removed", 403, "forbidden")
    recursive = field(data, "recursive", bool, False)

    async with _breaking(request, path, subtree=True):
        await _run(site.change, None, lambda: site.client.rm(path, recursive=recursive))
    return web.json_response({"removed": path})


async def ns_rename(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    src = await _run(site.check_path, p, field(data, "src", str), True)
    dst = await _run(site.check_path, p, field(data, "dst", str), True)
    if src == f"/{site.entity}":
        raise AuthError(f"the entity root {src} cannot be renamed", 403, "forbidden")

    async with _breaking(request, src, dst, subtree=True):
        await _run(site.change, None, lambda: site.client.mv(src, dst))
    return web.json_response({"src": src, "dst": dst})


async def ns_symlink(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    target = field(data, "target", str)

    async with _breaking(request, path):
        st = await _run(site.change, path, lambda: site.client.symlink(path, target))
    return web.json_response(stat_to_wire(st))


#: What `POST /v1/ns/mknod` makes: no device nodes, whose numbers mean something only
#: on the machine that made them (and a device node another entity planted in a tree
#: mounted with `dev` would open that device).
MKNOD_KINDS = ("fifo", "socket")


async def ns_mknod(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    kind = field(data, "kind", str)
    if kind not in MKNOD_KINDS:
        raise BadRequestError(f"kind must be one of {', '.join(MKNOD_KINDS)}, not {kind!r}: "
                              "sites make no device nodes")
    mode = field(data, "mode", int, 0o644, check=lambda m: 0 <= m <= 0o7777)
    async with _breaking(request, path):
        st = await _run(site.change, path, lambda: site.client.mknod(path, kind, mode))
    return web.json_response(stat_to_wire(st))


async def ns_setattr(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    mode = field(data, "mode", int, None, check=lambda m: 0 <= m <= 0o7777)
    times = [field(data, k, int, None, check=lambda t: 0 <= t < 1 << 63)
             for k in ("atime_ns", "mtime_ns")]
    async with _breaking(request, path):
        st = await _run(site.setattr, path, mode, times[0], times[1])
    return web.json_response(stat_to_wire(st))


async def ns_xattrs_get(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), False)
    values = await _run(site.client.xattrs, path)
    return web.json_response({"xattrs": {k: base64.b64encode(v).decode("ascii")
                                         for k, v in sorted(values.items())}})


async def ns_xattrs_set(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    values = xattrs_from_wire(field(data, "set", dict, {}))
    replace_all = field(data, "replace_all", bool, False)

    async with _breaking(request, path):
        st = await _run(site.change, path,
                        lambda: site.client.set_xattrs(path, values, replace_all=replace_all))
    return web.json_response(stat_to_wire(st))


async def ns_du(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    path = await _run(site.check_path, p, request.query.get("path", ""), False)
    return web.json_response((await _run(site.client.du, path)).to_dict())


async def ns_commit(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    # A commit names chunks by id: only a principal that may read every chunk of the
    # entity (signed by it, or an entity-wide token) may, or chunk ids of files outside
    # a token's prefix would be readable through a new file, and the answer would tell
    # whether the entity holds some content.
    if p.entity != site.entity or not p.entity_wide:
        raise AuthError("commit of chunk lists is for the owner entity itself (signed, or an "
                        "entity-wide token); write files with POST /v1/ns/write", 403,
                        "forbidden")
    refs = parse_refs(data)
    mode = field(data, "mode", int, None, check=lambda m: 0 <= m <= 0o7777)
    attrs = _node_attrs(commit_attrs(data))
    async with _breaking(request, path):
        st = await _run(site.commit, path, refs, mode, attrs)
    site.metrics.inc("commits_total")
    return web.json_response(stat_to_wire(st))


#: Most files one concat joins (S3's most parts of one upload).
MAX_CONCAT = 10_000


async def ns_concat(request: web.Request) -> web.Response:
    """Create or replace `path` with the files `sources` joined, its attributes replaced
    by `xattrs` and `keyed` (each "VERSION VALUE" of the version made), and remove the
    entries `remove`, in one transaction, no data read: any principal that may write `path` and
    each of `remove` and read each source (a prefix token, too: it names no chunk)."""
    site, p, data = await _json_principal(request)
    path = await _run(site.check_path, p, field(data, "path", str), True)
    listed = {name: field(data, name, list, [] if name == "remove" else ...)
              for name in ("sources", "remove")}
    for name, items in listed.items():
        if not all(isinstance(x, str) for x in items) or len(items) > MAX_CONCAT or (
                name == "sources" and not items):
            raise BadRequestError(f"field {name!r} must be a list of 1 to {MAX_CONCAT} "
                                  "paths" if name == "sources" else
                                  f"field {name!r} must be a list of at most {MAX_CONCAT} "
                                  "paths")

    def check() -> tuple[list[str], list[str]]:
        srcs = [site.check_path(p, s, False) for s in listed["sources"]]
        gone = [site.check_path(p, r, True) for r in listed["remove"]]
        if f"/{site.entity}" in gone:
            raise AuthError(f"the entity root /{site.entity} cannot be removed", 403,
                            "forbidden")
        return srcs, gone
    attrs = _node_attrs(commit_attrs(data))
    srcs, gone = await _run(check)
    async with _breaking(request, path, *gone, subtree=bool(gone)):
        st = await _run(site.change, path,
                        lambda: site.client.concat(path, srcs, xattrs=attrs, remove=gone))
    site.metrics.inc("commits_total")
    return web.json_response(stat_to_wire(st))


def _own(site: Site, p: Principal, primary: bool = True) -> None:
    if p.entity != site.entity or (p.token is not None and (
            p.token.scope != "write" or not p.entity_wide)):
        raise AuthError(f"only entity {site.entity!r} itself (signed, or an entity-wide write "
                        "token) may change grants, rules and agreements", 403, "forbidden")
    if primary and not site.config.primary:
        raise NotPrimaryError(f"site {site.name} is not the primary of {site.entity}", 421,
                              "not_primary")


def _pattern(site: Site, pattern: Any) -> str:
    if not isinstance(pattern, str) or (not pattern.startswith(f"/{site.entity}/") and \
            pattern != f"/{site.entity}"):
        raise AuthError(f"pattern {pattern!r} is outside /{site.entity}", 403,
                        "path_outside_root")
    try:
        paths.normalize(pattern.replace("*", "x").replace("?", "x"))
    except InvalidPathError as e:
        raise BadRequestError(f"pattern {pattern!r} is not a valid path pattern: {e}") \
            from None
    return pattern


async def grants_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the entity itself may list its grants", 403, "forbidden")
    return web.json_response({"grants": await _run(site.grants)})


async def grants_add(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    _own(site, p)
    pattern = _pattern(site, field(data, "pattern", str))
    to = field(data, "to", str)
    check_name(to, "grantee")
    mode = field(data, "mode", str, check=lambda m: m in ("read", "write"))
    rec = {"id": secrets.token_hex(4), "pattern": pattern, "to": to, "mode": mode,
           "created": time.time()}
    async with _breaking(request, everything=True):
        await _run(site.put_record, "grant", rec)
    return web.json_response(rec, status=201)


async def grants_mirror(request: web.Request) -> web.Response:
    """The primary's signed grant set, pushed to another site of its entity (a mirror)."""
    site, p, data = await _json_principal(request)
    _own(site, p, primary=False)
    if p.token is not None:
        raise AuthError("a grant set is pushed by the entity's primary (signed)", 403,
                        "forbidden")
    async with _breaking(request, everything=True):
        out = await _run(site.put_mirror_grants, data)
    return web.json_response(out)


async def grants_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    async with _breaking(request, everything=True):
        out = await _run(site.delete_record, "grant", request.match_info["id"])
    return web.json_response(out)


async def rules_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the entity itself may list its rules", 403, "forbidden")
    return web.json_response({"rules": await _run(site.rules)})


async def rules_add(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    _own(site, p)
    spec = validate(RuleSpec, data, where="rule")  # SchemaError: 400, naming the key
    pattern = _pattern(site, spec.pattern)
    rec = {"id": secrets.token_hex(4), "pattern": pattern, "copies": spec.copies,
           "where": spec.where, "expires": time.time() + spec.lifetime if spec.lifetime
           else None, "state": "replicating",
           "reason": "not evaluated yet", "sites": [], "created": time.time()}
    await _run(site.put_record, "rule", rec)
    return web.json_response(rec, status=201)


async def rules_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    rec = await _run(site.delete_record, "rule", request.match_info["id"])
    await _run(unpin_everywhere, site, rec)
    return web.json_response(rec)


async def rules_reconcile(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p)
    verify = _flag(request, "verify")
    states = await _run(reconcile, site, verify)
    return web.json_response({"rules": states})


def _pin_target(request: web.Request, site: Site, p: Principal) -> tuple[str, str]:
    """The owner and rule of a /v1/pins/{owner}/{rule} request the caller may write."""
    owner = _owner(site, None, {"owner": request.match_info["owner"]})
    site.check_owner(p, owner, write=True)
    rule = request.match_info["rule"]
    if not re.fullmatch(r"[0-9a-z]{1,32}", rule):
        raise BadRequestError("rule id must be 1 to 32 characters 0-9 a-z")
    return owner, rule


async def pins_put(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    owner, rule = _pin_target(request, site, p)
    loop = asyncio.get_running_loop()
    if owner == site.entity:
        files = None
        if "files" in data:
            if not isinstance(data["files"], list):
                raise BadRequestError("files must be a list of {path, chunks}")
            files = [(str(f.get("path", "")), parse_refs(f)) for f in data["files"]
                     if isinstance(f, dict)]
        if "chunks" in data or files is None:
            refs = parse_refs(data)
        else:  # the rule's chunks are those of its files (sent once, not twice), and of
            # the files its mirror here already holds as they are (`same`)
            same = parse_digests(data, "same") if "same" in data else {}
            kept = await _run(site.mirrored_refs, rule, same) if same else []
            refs = list({r.id: r for r in [*kept, *(r for _, frs in files for r in frs)]}
                        .values())
        await loop.run_in_executor(None, site.pin_store, owner, rule, refs, files)
    else:
        await _run(site.agreement, owner)
        kids = [c.hex() for c in parse_ids(data, "ids")] if "ids" in data else []
        batches = field(data, "batches", int, 1, check=lambda n: 1 <= n <= 4096)
        batch = field(data, "batch", int, 0, check=lambda i: 0 <= i < batches)
        round_ = field(data, "round", str, "0" * 16,
                       check=lambda r: re.fullmatch(r"[0-9a-f]{16}", r) is not None)
        if batches == 1:
            await _run(site.vault.pin, owner, rule, kids)
            complete = True
        else:
            complete = await loop.run_in_executor(None, site.vault.pin_part, owner, rule,
                                                  round_, batch, batches, kids)
        # the ids of this part not held here: the owner sends them, without a has-list
        missing = await _run(lambda: [k for k in kids if not site.vault.has(owner,
                                                                           bytes.fromhex(k))])
        return web.json_response({"pinned": rule, "complete": complete, "missing": missing})
    return web.json_response({"pinned": rule, "complete": True})


async def pins_compare(request: web.Request) -> web.Response:
    """Which of the owner's files (path, manifest digest) the mirror of a rule here lacks
    or holds otherwise: the owner then sends only those (docs/format.md "Rules")."""
    site, p, data = await _json_principal(request)
    owner, rule = _pin_target(request, site, p)
    if owner != site.entity:
        raise BadRequestError("mirrors are kept for the site's own entity only")
    files = parse_digests(data, "files")
    held = await _run(site.mirror_digests, rule, files)
    return web.json_response({"changed": [f for f, d in files.items() if held[f] != d]})


async def pins_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    owner, rule = _pin_target(request, site, p)
    gone = await _run(site.unpin_store if owner == site.entity else site.vault.unpin, owner,
                      rule)
    return web.json_response({"unpinned": gone})


async def gc(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity or p.token is not None:
        raise AuthError("only the entity itself (signed) may run gc", 403, "forbidden")

    def run() -> dict[str, Any]:
        with site.write_lock:
            report = site.client.gc()
        return {"vault_removed": site.vault.gc(keep=site.live_guests()),
                "vault_temporaries_removed": site.vault.clean_temporaries(),
                "store": str(report)}
    return web.json_response(await _run(run))


async def agreements_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the host entity may list its storage agreements", 403,
                        "forbidden")
    return web.json_response({"agreements": await _run(site.agreements)})


async def agreements_add(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    _own(site, p, primary=False)
    to = field(data, "to", str)
    check_name(to, "guest entity")
    if to == site.entity:
        raise BadRequestError(f"{to!r} is this site's own entity; it needs no agreement")
    quota = field(data, "quota", int, check=lambda q: 0 < q < 1 << 60)
    lifetime = field(data, "lifetime", (int, float), None, check=lambda v: 0 < v < 1e10)
    now = time.time()
    rec = {"id": secrets.token_hex(4), "to": to, "quota": quota, "created": now,
           "expires": now + lifetime if lifetime else None}
    await _run(site.replace_agreement, rec)
    return web.json_response(rec, status=201)


async def agreements_delete(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    _own(site, p, primary=False)
    rec = await _run(site.delete_record, "agreement", request.match_info["id"])
    removed = 0
    if rec["to"] not in await _run(site.live_guests):
        removed = await asyncio.get_running_loop().run_in_executor(
            None, site.vault.remove_owner, rec["to"])
    return web.json_response(rec | {"removed_blobs": removed})


async def vault_list(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity:
        raise AuthError("only the host entity may list the data it keeps for others", 403,
                        "forbidden")
    owners = await _run(site.vault.owners)
    guests = await _run(site.live_guests)
    return web.json_response({"owners": [o | {"agreement": o["owner"] in guests}
                                         for o in owners]})


async def mover_session(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    if p.entity != site.entity or p.token is not None or site.mover_address is None:
        raise AuthError("mover sessions are for the site's own entity (signed requests) "
                        "and need a mover port", 403, "forbidden")
    host, port = site.mover_address
    return web.json_response({"host": host, "port": port, "secret": site.mover_secret.hex()})


async def mover_pull(request: web.Request) -> web.Response:
    site, p, data = await _json_principal(request)
    if p.entity != site.entity or p.token is not None:
        raise AuthError("mover pulls are for the site's own entity (signed requests)", 403,
                        "forbidden")
    cids = parse_ids(data)
    streams = field(data, "streams", int, DEFAULT_STREAMS, check=lambda n: 1 <= n <= 64)
    if "source" not in data:
        raise BadRequestError("field 'source' is required: a site name or a mover session "
                              "{host, port, secret}")
    loop = asyncio.get_running_loop()
    peer, secret, label = await loop.run_in_executor(site.pulls, site.mover_source,
                                                     data["source"])
    st = await loop.run_in_executor(site.pulls, functools.partial(
        site.pull, peer, cids, secret, streams, label))
    site.metrics.inc("mover_pulls_total")
    site.metrics.inc("mover_pull_bytes_total", st.bytes)
    return web.json_response({"source": label, "bytes": st.bytes, "chunks": st.chunks,
                              "seconds": st.seconds, "streams": st.streams,
                              "retries": st.retries, "requested": st.requested,
                              "skipped": st.skipped, "committed": st.committed,
                              "deltas": st.deltas})


async def status(request: web.Request) -> web.Response:
    site, p = await _get_principal(request)
    return web.json_response({
        "site": site.name, "entity": site.entity, "region": site.config.region,
        "primary": site.config.primary, "pools": await _run(site.pools),
        "rules": await _run(site.rules) if p.entity == site.entity and site.config.primary
        else []})


def make_app(site: Site) -> web.Application:
    """The site's aiohttp application (docs/openapi/site.yaml)."""
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[access_middleware, site.metrics.middleware,
                                       error_middleware])
    app[SITE_KEY] = site
    app[LEASES_KEY] = LeaseTable()

    async def end_streams(app: web.Application) -> None:
        app[LEASES_KEY].close()
    app.on_shutdown.append(end_streams)
    r = app.router
    r.add_get("/v1/health", health)
    r.add_get(METRICS_PATH, metrics)
    r.add_get("/v1/status", status)
    r.add_post("/v1/chunks/has", chunks_has)
    r.add_post("/v1/chunks/get", chunks_get)
    r.add_post("/v1/chunks/put", chunks_put)
    r.add_get("/v1/ns/stat", ns_stat)
    r.add_get("/v1/ns/list", ns_list)
    r.add_get("/v1/ns/manifest", ns_manifest)
    r.add_get("/v1/ns/read", ns_read)
    r.add_post("/v1/ns/write", ns_write)
    r.add_post("/v1/ns/mkdir", ns_mkdir)
    r.add_post("/v1/ns/remove", ns_remove)
    r.add_post("/v1/ns/rename", ns_rename)
    r.add_post("/v1/ns/commit", ns_commit)
    r.add_post("/v1/ns/concat", ns_concat)
    r.add_post("/v1/ns/symlink", ns_symlink)
    r.add_post("/v1/ns/mknod", ns_mknod)
    r.add_post("/v1/ns/setattr", ns_setattr)
    r.add_get("/v1/ns/xattrs", ns_xattrs_get)
    r.add_post("/v1/ns/xattrs", ns_xattrs_set)
    r.add_get("/v1/ns/du", ns_du)
    r.add_get("/v1/ns/visible", ns_visible)
    r.add_get("/v1/ns/notices", ns_notices)
    r.add_post("/v1/ns/notices/ack", ns_notices_ack)
    r.add_post("/v1/ns/notices/renew", ns_notices_renew)
    r.add_get("/v1/grants", grants_list)
    r.add_post("/v1/grants", grants_add)
    r.add_put("/v1/grants/mirror", grants_mirror)
    r.add_delete("/v1/grants/{id:[0-9a-f]{8}}", grants_delete)
    r.add_get("/v1/rules", rules_list)
    r.add_post("/v1/rules", rules_add)
    r.add_delete("/v1/rules/{id:[0-9a-f]{8}}", rules_delete)
    r.add_post("/v1/rules/reconcile", rules_reconcile)
    r.add_put("/v1/pins/{owner}/{rule}", pins_put)
    r.add_post("/v1/pins/{owner}/{rule}/compare", pins_compare)
    r.add_delete("/v1/pins/{owner}/{rule}", pins_delete)
    r.add_post("/v1/gc", gc)
    r.add_get("/v1/agreements", agreements_list)
    r.add_post("/v1/agreements", agreements_add)
    r.add_delete("/v1/agreements/{id:[0-9a-f]{8}}", agreements_delete)
    r.add_get("/v1/vault", vault_list)
    r.add_post("/v1/mover/session", mover_session)
    r.add_post("/v1/mover/pull", mover_pull)
    return app


