"""Buckets and objects over the namespace (docs/gateway.md, "Mapping").

Bucket `b` is the directory `ROOT/b`; object key `k/e/y` is the file
`ROOT/b/k/e/y`. Object facts live in extended attributes of the file: the
ETag as `user.s3.etag` ("VERSION ETAG", trusted only while the file is still
at that version), the content type as `user.s3.content-type`, and user
metadata `x-amz-meta-NAME` as `user.meta.NAME`. Multipart uploads are
staged in `ROOT/.s3-uploads/ID/` (never a bucket name) as one file per part.
Every method is synchronous: the HTTP layer runs them on worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from gfs import paths
from gfs.errors import (
    ExistsError,
    IsADirError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
)
from gfs.federation.wire import version_keyed
from gfs.gateway.backend import Backend, KeyedXattrs, VersionXattrs, Writer
from gfs.gateway.errors import S3Error
from gfs.namespace_api import Stat

UPLOADS = ".s3-uploads"
ETAG = "user.s3.etag"
CONTENT_TYPE = "user.s3.content-type"
META = "user.meta."
UPLOAD_BUCKET = "user.s3.bucket"
UPLOAD_KEY = "user.s3.key"
#: Smallest part of a multipart upload but the last (as S3).
MIN_PART = 5 << 20
MAX_PARTS = 10_000
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: The least string above every key below a common prefix (keys are UTF-8).
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD, GET and listings tell about an object."""

    key: str
    size: int
    etag: str
    mtime_ns: int
    content_type: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    """One page of ListObjectsV2."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    truncated: bool
    next_start: str  # the continuation point, "" when not truncated


def check_bucket(bucket: str) -> None:
    """Refuse a name S3 would not accept as a bucket name."""
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise S3Error("InvalidBucketName", "bucket names are 3 to 63 lowercase letters, "
                      "digits, '.' or '-', starting and ending with a letter or digit", bucket)


def check_key(key: str, *, marker_ok: bool = False) -> None:
    """Refuse a key that has no namespace path: empty, too long, or with an empty, '.'
    or '..' segment (a trailing '/' only as a folder marker when `marker_ok`)."""
    if not key:
        raise S3Error("InvalidArgument", "the object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise S3Error("KeyTooLongError", "object keys are at most 1024 bytes", key)
    body = key[:-1] if marker_ok and key.endswith("/") else key
    parts = body.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise S3Error("InvalidArgument", "this gateway stores keys as paths: a key must not "
                      "start with '/', hold '//', '.' or '..' segments or NUL, or end with '/' "
                      "unless it is an empty folder marker", key)


def etag_value(etag: str, version: int) -> bytes:
    """The stored `user.s3.etag` of file version `version`."""
    return version_keyed({}, {ETAG: etag.encode()}, version)[ETAG]


def _etag_of(st: Stat, xattrs: dict[str, bytes]) -> str:
    raw = xattrs.get(ETAG, b"").decode()
    version, _, etag = raw.partition(" ")
    if etag and version == str(st.version):
        return etag
    # written through another door: an opaque ETag that changes with every version
    return hashlib.md5(f"{st.ino}:{st.version}:{st.size}".encode()).hexdigest() + "-1"


def _info(key: str, st: Stat, xattrs: dict[str, bytes]) -> ObjectInfo:
    meta = {k[len(META):]: v.decode("utf-8", "replace") for k, v in xattrs.items()
            if k.startswith(META)}
    ctype = xattrs.get(CONTENT_TYPE, b"binary/octet-stream").decode()
    return ObjectInfo(key, st.size, _etag_of(st, xattrs), st.mtime_ns, ctype, meta)


def object_xattrs(etag: str, content_type: str | None,
                  meta: dict[str, str]) -> dict[str, bytes]:
    """The extended attributes of a new object but its ETag."""
    out = {META + k.lower(): v.encode() for k, v in meta.items()}
    if content_type:
        out[CONTENT_TYPE] = content_type.encode()
    return out


def check_digests(md5: bytes, sha256: str | None, expect_sha256: str | None,
                  content_md5: bytes | None) -> None:
    """Refuse a body whose digests differ from what the client signed or sent."""
    if expect_sha256 is not None and sha256 != expect_sha256:
        raise S3Error("XAmzContentSHA256Mismatch", "the body's sha256 does not match "
                      "x-amz-content-sha256; the object was not stored")
    if content_md5 is not None and md5 != content_md5:
        raise S3Error("BadDigest", "the body's MD5 does not match Content-MD5; the object "
                      "was not stored")


class ObjectUpload:
    """A streaming PUT: bytes go into the store as they arrive; the object (or part)
    appears, whole, on `commit`. Used by one thread at a time."""

    def __init__(self, backend: Backend, path: str, xattrs: dict[str, bytes],
                 expect_sha256: str | None) -> None:
        self._etag = ""
        # the ETag is known at the commit: the writer reads `keyed` then (a site sets
        # the attributes in that commit)
        self._keyed: dict[str, bytes] = {}
        self._writer: Writer = backend.writer(path, KeyedXattrs(xattrs, self._keyed))
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha256() if expect_sha256 else None
        self._expect = expect_sha256
        self.size = 0

    def write(self, block: bytes) -> None:
        """Add `block` to the object."""
        self._md5.update(block)
        if self._sha is not None:
            self._sha.update(block)
        self._writer.write(block)
        self.size += len(block)

    def commit(self, content_md5: bytes | None = None) -> str:
        """Check the digests the client sent and make the object visible; its ETag."""
        digest = self._md5.digest()
        try:
            check_digests(digest, self._sha.hexdigest() if self._sha else None, self._expect,
                          content_md5)
        except S3Error:
            self.abort()
            raise
        self._etag = digest.hex()
        self._keyed[ETAG] = self._etag.encode()
        self._writer.commit()
        return self._etag

    def abort(self) -> None:
        """Drop what was written; the previous object (if any) stays."""
        self._writer.abort()


def _with_etag(xattrs: dict[str, bytes], etag: str) -> VersionXattrs:
    """`xattrs` and the ETag keyed by the version committed (as `etag_value`)."""
    return KeyedXattrs(xattrs, {ETAG: etag.encode()})


class ObjectStore:
    """S3 buckets and objects in the namespace below `root`."""

    def __init__(self, backend: Backend, root: str = "/", *,
                 uploads_beside: bool = False) -> None:
        """`uploads_beside`: stage multipart uploads in `.s3-uploads/` of the key's own
        directory (where a token limited to a prefix may write; the federation) rather
        than in `ROOT/.s3-uploads/`; keys may then hold no `.s3-uploads` segment."""
        self.backend = backend
        self.ns = backend.ns
        self.root = paths.normalize(root)
        self.uploads = self._path(UPLOADS)
        self.beside = uploads_beside

    def close(self) -> None:
        """Release the back end (its group-commit thread, its connections)."""
        self.backend.close()

    def put_small(self, bucket: str, key: str, body: bytes, xattrs: dict[str, bytes],
                  expect_sha256: str | None, content_md5: bytes | None) -> str:
        """PutObject of a body held whole, committed together with concurrent ones."""
        digest = hashlib.md5(body).digest()
        check_digests(digest, hashlib.sha256(body).hexdigest() if expect_sha256 else None,
                      expect_sha256, content_md5)
        self._require_bucket(bucket)
        p = self.key_path(bucket, key)
        etag = digest.hex()
        try:
            self._make_parent(p)
            self.backend.write_small(p, body, _with_etag(xattrs, etag))
        except (ExistsError, NotADirError, IsADirError):
            raise S3Error("ObjectConflict", "the key clashes with the path of another object "
                          "(this gateway stores keys as paths)", f"{bucket}/{key}") from None
        return etag

    def _path(self, *parts: str) -> str:
        return paths.join([*paths.split(self.root), *[p for s in parts for p in s.split("/")
                                                       if p]])

    def bucket_path(self, bucket: str) -> str:
        check_bucket(bucket)
        return self._path(bucket)

    def key_path(self, bucket: str, key: str) -> str:
        check_key(key)
        self._check_staging(key)
        return self._path(bucket, key)

    def _check_staging(self, key: str) -> None:
        if self.beside and UPLOADS in key.split("/"):
            raise S3Error("InvalidArgument", f"'{UPLOADS}' is where this gateway stages "
                          "multipart uploads; no key segment may be named so", key)

    def _make_parent(self, path: str) -> None:
        """Make the missing directories above `path` (a read when none are missing)."""
        parent = paths.join(paths.split(path)[:-1])
        try:
            if self.ns.stat(parent).is_dir:
                return
        except NotFoundError:
            pass
        self._mkdirs(parent)

    def _mkdirs(self, path: str) -> None:
        """mkdir -p; a directory the credentials cannot see is AccessDenied."""
        try:
            self.ns.mkdir(path, parents=True, exist_ok=True)
        except NotFoundError:
            raise S3Error("AccessDenied", "the key is outside what these credentials may "
                          "change", path) from None

    def _require_bucket(self, bucket: str) -> str:
        p = self.bucket_path(bucket)
        try:
            if self.ns.stat(p).is_dir:
                return p
        except (NotFoundError, NotADirError):
            pass
        raise S3Error("NoSuchBucket", "the bucket does not exist; create it with "
                      "CreateBucket", bucket)

    # -- buckets ---------------------------------------------------------------
    def list_buckets(self) -> list[Stat]:
        """Every bucket (directory under the root with a valid bucket name)."""
        if not self.ns.exists(self.root):
            return []
        return [st for st in self.ns.ls(self.root) if st.is_dir and _BUCKET.match(st.name)]

    def create_bucket(self, bucket: str) -> None:
        p = self.bucket_path(bucket)
        self.ns.mkdir(self.root, parents=True, exist_ok=True)
        try:
            self.ns.mkdir(p)
        except ExistsError:
            raise S3Error("BucketAlreadyOwnedByYou", "the bucket exists already", bucket) \
                from None

    def delete_bucket(self, bucket: str) -> None:
        p = self._require_bucket(bucket)
        try:
            self.ns.rm(p)
        except NotEmptyError:
            raise S3Error("BucketNotEmpty", "the bucket holds objects; delete them first",
                          bucket) from None

    def head_bucket(self, bucket: str) -> None:
        self._require_bucket(bucket)

    # -- objects ---------------------------------------------------------------
    def info(self, bucket: str, key: str, *, pin: bool = True) -> tuple[ObjectInfo, object]:
        """The object's facts and a handle on the version described (`pin`; else None)."""
        self._require_bucket(bucket)
        p = self.key_path(bucket, key)
        for _ in range(3):  # a writer may commit between the reads: retry
            try:
                st = self.ns.stat(p)
                if st.kind != "file":
                    break
                xattrs = self.ns.xattrs(p)
                m = self.backend.pin(p, st.version) if pin else None
            except (NotFoundError, NotADirError):
                break
            return _info(key, st, xattrs), m
        raise S3Error("NoSuchKey", "the object does not exist", f"{bucket}/{key}")

    def read(self, bucket: str, key: str, pinned: object, start: int,
             end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the object version `pinned` (from `info`)."""
        return self.backend.read(self.key_path(bucket, key), pinned, start, end)

    def start_put(self, bucket: str, key: str, xattrs: dict[str, bytes],
                  expect_sha256: str | None) -> ObjectUpload:
        """Begin a streaming PUT of `key` (missing parent directories are made)."""
        self._require_bucket(bucket)
        p = self.key_path(bucket, key)
        try:
            self._make_parent(p)
        except (ExistsError, NotADirError):
            raise S3Error("ObjectConflict", "a prefix of this key is an object; this "
                          "gateway stores keys as paths, so 'a' and 'a/b' cannot both be "
                          "objects", f"{bucket}/{key}") from None
        try:
            return ObjectUpload(self.backend, p, xattrs, expect_sha256)
        except IsADirError:
            raise S3Error("ObjectConflict", "the key is a prefix of other objects (a "
                          "directory); this gateway stores keys as paths",
                          f"{bucket}/{key}") from None

    def put_marker(self, bucket: str, key: str) -> None:
        """An empty key ending in '/' (a folder marker): the directory."""
        self._require_bucket(bucket)
        check_key(key, marker_ok=True)
        try:
            self.ns.mkdir(self._path(bucket, key), parents=True, exist_ok=True)
        except (ExistsError, NotADirError):
            raise S3Error("ObjectConflict", "an object has this name", f"{bucket}/{key}") \
                from None

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object (absent is fine, as S3); empty parent directories stay."""
        self._require_bucket(bucket)
        marker = key.endswith("/")
        check_key(key, marker_ok=True)
        p = self._path(bucket, key)
        try:
            st = self.ns.stat(p)
            if st.is_dir and not marker:
                return
            self.ns.rm(p)
        except (NotFoundError, NotADirError, NotEmptyError):
            pass

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str,
             replace: dict[str, bytes] | None) -> ObjectInfo:
        """CopyObject without reading data: the copy shares the source's chunks.
        `replace`: new metadata (REPLACE directive), else the source's is kept."""
        info, _ = self.info(src_bucket, src_key)
        self._require_bucket(bucket)
        src = self.key_path(src_bucket, src_key)
        dst = self.key_path(bucket, key)
        xattrs = self.ns.xattrs(src) if replace is None else dict(replace)
        xattrs.pop(ETAG, None)
        try:
            self._make_parent(dst)
            st = self.backend.concat(dst, [src], _with_etag(xattrs, info.etag), [])
        except (ExistsError, NotADirError, IsADirError):
            raise S3Error("ObjectConflict", "the destination key clashes with a path of "
                          "another object", f"{bucket}/{key}") from None
        return ObjectInfo(key, st.size, info.etag, st.mtime_ns, info.content_type)

    def list_objects(self, bucket: str, prefix: str, delimiter: str, start: str,
             max_keys: int) -> Listing:
        """One page of keys >= `start` that begin with `prefix`, rolled up at `delimiter`."""
        bp = self._require_bucket(bucket)
        cut = prefix.rfind("/") + 1
        dir_part = prefix[:cut]
        lo = max(start, prefix)
        if not lo.startswith(dir_part) or any(
                s in ("", ".", "..") for s in dir_part.split("/")[:-1]):
            return Listing([], [], False, "")  # no key can be >= lo and under dir_part
        top = paths.join([*paths.split(bp), *dir_part.split("/")[:-1]])
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        resume = ""
        try:
            for st, attrs in self.backend.scan(top, lo[len(dir_part):], delimiter != "/"):
                key = dir_part + st.path[len(top.rstrip("/")) + 1:] + ("/" if st.is_dir else "")
                if self.beside and UPLOADS in key.split("/"):
                    continue  # multipart staging, not objects
                if not key.startswith(prefix):
                    if key > prefix:
                        break  # past every key with the prefix
                    continue
                roll = ""
                if st.is_dir:
                    roll = key
                elif delimiter and delimiter in key[len(prefix):]:
                    roll = key[:key.index(delimiter, len(prefix)) + len(delimiter)]
                if roll and prefixes and prefixes[-1] == roll:
                    continue
                if len(objects) + len(prefixes) >= max_keys:
                    return Listing(objects, prefixes, True, resume)
                if roll:
                    prefixes.append(roll)
                    resume = roll + _TOP
                else:
                    objects.append(_info(key, st, dict(attrs) if attrs is not None
                                         else self.ns.xattrs(st.path)))
                    resume = key + "\0"
        except (NotFoundError, NotADirError):
            pass
        return Listing(objects, prefixes, False, "")

    # -- multipart -------------------------------------------------------------
    def _staging(self, bucket: str, key: str) -> str:
        """The directory that holds the uploads of `key`."""
        if not self.beside:
            return self.uploads
        return paths.join([*paths.split(self.key_path(bucket, key))[:-1], UPLOADS])

    def _drop_staging(self, bucket: str, key: str) -> None:
        """Remove the key's staging directory once it holds no upload (beside only)."""
        if self.beside:
            with contextlib.suppress(NotFoundError, NotEmptyError):
                self.ns.rm(self._staging(bucket, key))

    def _upload_dir(self, bucket: str, key: str, upload_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise S3Error("NoSuchUpload", "no such upload", upload_id)
        p = f"{self._staging(bucket, key)}/{upload_id}"
        try:
            x = self.ns.xattrs(p)
        except (NotFoundError, NotADirError):
            raise S3Error("NoSuchUpload", "the upload does not exist (completed or aborted?)",
                          upload_id) from None
        if x.get(UPLOAD_BUCKET) != bucket.encode() or x.get(UPLOAD_KEY) != key.encode():
            raise S3Error("NoSuchUpload", "the upload belongs to another key", upload_id)
        return p

    def create_upload(self, bucket: str, key: str, xattrs: dict[str, bytes]) -> str:
        """Start a multipart upload; its id."""
        self._require_bucket(bucket)
        upload_id = secrets.token_hex(16)
        p = f"{self._staging(bucket, key)}/{upload_id}"
        try:
            self._mkdirs(p)
        except (ExistsError, NotADirError):
            raise S3Error("ObjectConflict", "a prefix of this key is an object; this "
                          "gateway stores keys as paths", f"{bucket}/{key}") from None
        self.ns.set_xattrs(p, {**xattrs, UPLOAD_BUCKET: bucket.encode(),
                               UPLOAD_KEY: key.encode()})
        return upload_id

    def start_part(self, bucket: str, key: str, upload_id: str, number: int,
                   expect_sha256: str | None) -> ObjectUpload:
        """Begin streaming part `number` (1 to 10000) of an upload."""
        d = self._upload_dir(bucket, key, upload_id)
        if not 1 <= number <= MAX_PARTS:
            raise S3Error("InvalidArgument", f"part numbers are 1 to {MAX_PARTS}, got {number}")
        return ObjectUpload(self.backend, f"{d}/{number:05d}", {}, expect_sha256)

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, ObjectInfo]]:
        """(number, facts) of every part uploaded so far, by number."""
        d = self._upload_dir(bucket, key, upload_id)
        return [(int(st.name), _info(st.name, st, self.ns.xattrs(st.path)))
                for st in self.ns.ls(d)]

    def upload_facts(self, bucket: str, key: str, upload_id: str) -> dict[str, bytes]:
        """The metadata given when the upload was created."""
        return self.ns.xattrs(self._upload_dir(bucket, key, upload_id))

    def complete(self, bucket: str, key: str, upload_id: str,
                 parts: list[tuple[int, str]]) -> ObjectInfo:
        """Join the listed parts into the object, without reading them; the ETag is the
        MD5 of the parts' MD5s followed by "-N". Parts not listed are dropped."""
        d = self._upload_dir(bucket, key, upload_id)
        have = dict(self.list_parts(bucket, key, upload_id))
        if not parts:
            raise S3Error("MalformedXML", "CompleteMultipartUpload lists no parts", upload_id)
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "parts must be listed in ascending order, once",
                          upload_id)
        md5s = b""
        for i, (n, etag) in enumerate(parts):
            info = have.get(n)
            if info is None or info.etag != etag.strip('"'):
                raise S3Error("InvalidPart", f"part {n} was not uploaded or its ETag differs",
                              upload_id)
            if info.size < MIN_PART and i < len(parts) - 1:
                raise S3Error("EntityTooSmall", f"part {n} is {info.size} bytes; every part "
                              f"but the last must be at least {MIN_PART} bytes", upload_id)
            md5s += bytes.fromhex(info.etag)
        etag = f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"
        facts = self.ns.xattrs(d)
        xattrs = {k: v for k, v in facts.items() if k not in (UPLOAD_BUCKET, UPLOAD_KEY)}
        dst = self.key_path(bucket, key)
        try:
            self._make_parent(dst)
            st = self.backend.concat(dst, [f"{d}/{n:05d}" for n in numbers],
                                     _with_etag(xattrs, etag), [d])
        except (ExistsError, NotADirError, IsADirError):
            raise S3Error("ObjectConflict", "the key clashes with the path of another "
                          "object", f"{bucket}/{key}") from None
        self._drop_staging(bucket, key)
        return ObjectInfo(key, st.size, etag, st.mtime_ns, "")

    def list_uploads(self, bucket: str, prefix: str = "") -> list[tuple[str, str, int]]:
        """(key, upload id, started ns) of the uploads in progress into `bucket`, by key."""
        bp = self._require_bucket(bucket)
        if self.beside:  # a walk of the bucket for its staging directories
            found = [u for d in self.ns.walk(bp) if d.is_dir and d.name == UPLOADS
                     for u in self.ns.ls(d.path)]
        else:
            found = self.ns.ls(self.uploads) if self.ns.exists(self.uploads) else []
        out = []
        for st in found:
            x = self.ns.xattrs(st.path)
            key = x.get(UPLOAD_KEY, b"").decode()
            if x.get(UPLOAD_BUCKET) == bucket.encode() and key.startswith(prefix):
                out.append((key, st.name, st.ctime_ns))
        return sorted(out)

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (gc reclaims their chunks)."""
        self.ns.rm(self._upload_dir(bucket, key, upload_id), recursive=True)
        self._drop_staging(bucket, key)
