"""What a site and its clients both need on the wire: chunk frames, path globs, and the
checks of chunk ids, chunk lists and names (docs/openapi/site.yaml).

Both the site daemon (gfs.federation.site*) and every client (SiteClient, the rule
reconciler, dataflow) import this module; no client imports the daemon.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import xxhash

from gfs.federation import ids
from gfs.federation.http import BadRequestError, field
from gfs.meta import ChunkRef

MAX_BODY = 64 << 20
"""Largest chunk put body and file write body (bytes)."""
MAX_IDS = 4096
"""Most chunk ids in one has/get/pull/pin request."""
MAX_REFS = 1 << 20
"""Most chunks in one manifest commit."""
HEX32 = re.compile(r"[0-9a-f]{32}")
"""A chunk id on the wire: 32 lower-case hex digits."""
FRAME = struct.Struct("<I")
"""The length before each blob of a frame sequence."""
SKIP = 1 << 31
"""Set in a frame's length: no blob (not held, as length 0); the low 31 bits count filler
bytes that follow, which a reader skips (`skip_frame`)."""


# -- chunk frames ------------------------------------------------------------------------

def pack_frames(blobs: Iterable[bytes | None]) -> bytes:
    """Frames `u32 LE length, blob` (length 0 for None)."""
    parts: list[bytes] = []
    for b in blobs:
        parts.append(FRAME.pack(len(b) if b else 0))
        if b:
            parts.append(b)
    return b"".join(parts)  # one copy


def unpack_frames(body: bytes, limit: int = MAX_IDS) -> list[bytes]:
    """The blobs of a frame sequence; BadRequestError if truncated or too many."""
    return [bytes(v) for v in frame_views(body, limit)]


def frame_views(body: bytes | bytearray, limit: int = MAX_IDS) -> list[memoryview]:
    """The blobs of a frame sequence as views into `body` (no copy: a reader that
    decodes or copies each blob anyway); BadRequestError if truncated or too many."""
    out: list[memoryview] = []
    view, pos = memoryview(body), 0
    while pos < len(body):
        if pos + 4 > len(body):
            raise BadRequestError(f"truncated frame header at byte {pos}")
        (n,) = FRAME.unpack_from(body, pos)
        pos += 4
        skip, n = n & SKIP, n & ~SKIP
        if pos + n > len(body):
            raise BadRequestError(f"truncated frame at byte {pos - 4}: it claims {n} bytes, "
                                  f"{len(body) - pos} left")
        out.append(view[pos:pos if skip else pos + n])
        pos += n
        if len(out) > limit:
            raise BadRequestError(f"more than {limit} frames in one body")
    return out


def skip_frame(size: int) -> bytes:
    """A frame of `size` bytes (header included) that holds no blob: not held, as a
    length 0 frame, padded to a size announced before the blob was read."""
    if not FRAME.size <= size < FRAME.size + SKIP:
        raise ValueError(f"a skip frame is {FRAME.size} to {FRAME.size + SKIP - 1} bytes, "
                         f"not {size}")
    return FRAME.pack(SKIP | (size - FRAME.size)) + bytes(size - FRAME.size)


def fit_frames(body: bytes | bytearray, sizes: Sequence[int]) -> tuple[bytes, list[int]]:
    """The frames of `body`, each `sizes[i]` bytes (header included) as announced before
    the blobs were read, and the indices of those that were not: each of these becomes
    a `skip_frame` of its announced size, which a reader takes as not held here.
    ValueError if `body` does not hold `len(sizes)` frames."""
    frames = frame_views(body, limit=len(sizes))
    if len(frames) != len(sizes):
        raise ValueError(f"{len(frames)} frames where {len(sizes)} were announced")
    out: list[bytes | memoryview] = []
    changed: list[int] = []
    for i, (f, size) in enumerate(zip(frames, sizes, strict=True)):
        if FRAME.size + len(f) == size:
            out += [FRAME.pack(len(f)), f]
        else:
            changed.append(i)
            out.append(skip_frame(size))
    return b"".join(out), changed


# -- paths -----------------------------------------------------------------------------

def glob_match(pattern: str, path: str) -> bool:
    """Whether `path` matches `pattern` (`*` within a component, `**` any depth; `/a/**`
    also matches `/a`)."""
    if pattern.endswith("/**") and path == pattern[:-3]:
        return True
    rx = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    rx = rx.replace(r"\?", "[^/]")
    return re.fullmatch(rx, path) is not None


def literal_prefix(pattern: str) -> str:
    """The fixed leading components of a path pattern (`/a/b/*/c` -> `/a/b`)."""
    parts = []
    for p in pattern.strip("/").split("/"):
        if any(c in p for c in "*?["):
            break
        parts.append(p)
    return "/" + "/".join(parts)


# -- ids, chunk lists, names -------------------------------------------------------------

def ids_to_wire(cids: Iterable[bytes]) -> list[str]:
    """Chunk ids as the wire lists them."""
    return [c.hex() for c in cids]


def parse_ids(data: Mapping[str, Any], name: str = "ids") -> list[bytes]:
    """The chunk ids listed in field `name` (at most MAX_IDS); BadRequestError."""
    raw = field(data, name, list, check=lambda v: len(v) <= MAX_IDS)
    if not all(isinstance(x, str) and HEX32.fullmatch(x) for x in raw):
        raise BadRequestError(f"field {name!r} must list chunk ids as 32 lower-case hex digits")
    return [bytes.fromhex(x) for x in raw]


def manifest_digest(refs: Iterable[ChunkRef]) -> str:
    """How an owner and its mirror compare a file: xxh3-128 (hex) of its (id, length)
    list (docs/format.md "Rules")."""
    h = xxhash.xxh3_128()
    for r in refs:
        h.update(r.id + r.length.to_bytes(8, "little"))
    return h.hexdigest()


def parse_digests(data: Mapping[str, Any], name: str) -> dict[str, str]:
    """Field `name`: `[[path, manifest digest hex], ...]` (at most MAX_IDS); BadRequestError."""
    raw = field(data, name, list, check=lambda v: len(v) <= MAX_IDS)
    out: dict[str, str] = {}
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], str) or not HEX32.fullmatch(item[1])):
            raise BadRequestError(f"field {name!r} must list [path, digest hex] pairs")
        out[item[0]] = item[1]
    return out


def refs_to_wire(refs: Iterable[ChunkRef]) -> list[list[Any]]:
    """A chunk list as the wire gives it: `[[id hex, length], ...]`."""
    return [[r.id.hex(), r.length] for r in refs]


def parse_refs(data: Mapping[str, Any], name: str = "chunks") -> list[ChunkRef]:
    """The `[id hex, length > 0]` pairs of field `name`; BadRequestError."""
    raw = field(data, name, list, check=lambda v: len(v) <= MAX_REFS)
    return refs_from_wire(raw, name)


def refs_from_wire(raw: Sequence[Any], name: str = "chunks") -> list[ChunkRef]:
    """ChunkRefs of a wire chunk list; BadRequestError naming field `name`."""
    out = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not HEX32.fullmatch(item[0]) or not isinstance(item[1], int)
                or isinstance(item[1], bool) or not 0 < item[1] < 1 << 31):
            raise BadRequestError(f"field {name!r} must list [id hex, length > 0] pairs")
        out.append(ChunkRef(bytes.fromhex(item[0]), item[1]))
    return out


def version_keyed(fixed: Mapping[str, bytes], keyed: Mapping[str, bytes],
                  version: int) -> dict[str, bytes]:
    """Attributes of file version `version`: `fixed`, and each of `keyed` stored as
    "VERSION VALUE" (a reader trusts it only while the file is still at that version;
    the S3 ETag)."""
    return {**fixed, **{k: f"{version} ".encode() + v for k, v in keyed.items()}}


def xattrs_to_wire(values: Mapping[str, bytes]) -> dict[str, str]:
    """Extended attributes as sent: name -> base64 value."""
    return {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}


def xattrs_from_wire(raw: Mapping[str, Any]) -> dict[str, bytes]:
    """Extended attributes of a request (name -> base64 value); BadRequestError."""
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        if not name or "\0" in name or len(name.encode("utf-8", "surrogateescape")) > 255:
            raise BadRequestError(f"xattr name {name[:40]!r} must be 1 to 255 bytes without "
                                  "NUL")
        if not isinstance(value, str):
            raise BadRequestError(f"xattr {name!r}: value must be a base64 string")
        try:
            out[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"xattr {name!r}: value is not valid base64") from None
    return out


def commit_attrs_to_wire(xattrs: Mapping[str, bytes] | None,
                         keyed: Mapping[str, bytes] | None) -> dict[str, dict[str, str]]:
    """The fields `xattrs` and `keyed` of a commit that replaces a file's attributes
    (empty when neither is given: the attributes are kept)."""
    if xattrs is None and not keyed:
        return {}
    return {"xattrs": xattrs_to_wire(xattrs or {}), "keyed": xattrs_to_wire(keyed or {})}


def commit_attrs(data: Mapping[str, Any]) -> Callable[[int], dict[str, bytes]] | None:
    """From a commit's fields `xattrs` and `keyed`: the attributes of the version it
    makes (`keyed` ones stored as "VERSION VALUE"); None when neither field is there
    (the file keeps its attributes). BadRequestError for a malformed one."""
    if "xattrs" not in data and "keyed" not in data:
        return None
    fixed = xattrs_from_wire(field(data, "xattrs", dict, {}))
    keyed = xattrs_from_wire(field(data, "keyed", dict, {}))
    return lambda version: version_keyed(fixed, keyed, version)


def check_name(value: Any, what: str) -> str:
    """`value` as an entity or site name; BadRequestError naming `what` otherwise."""
    try:
        return ids.check_name(value, what)
    except ids.IdentifierError as e:
        raise BadRequestError(str(e)) from None


__all__ = ["FRAME", "HEX32", "MAX_BODY", "MAX_IDS", "MAX_REFS", "SKIP", "check_name",
           "commit_attrs", "commit_attrs_to_wire", "fit_frames", "frame_views", "glob_match",
           "ids_to_wire", "literal_prefix", "manifest_digest", "pack_frames", "parse_digests",
           "parse_ids", "parse_refs", "refs_from_wire", "refs_to_wire", "skip_frame",
           "unpack_frames", "version_keyed", "xattrs_from_wire", "xattrs_to_wire"]
