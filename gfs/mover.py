"""The chunk mover: bulk transfer of chunks between stores over TCP.

The native extension `gfs._mover` (native/mover.[ch]) owns the bytes: the
framed protocol of docs/format.md ("Mover protocol"), the HMAC handshake,
the AEAD records every frame after it travels in (AES-128-GCM, AES-256-GCM
or ChaCha20-Poly1305, keys from HKDF over the session secret and an ephemeral
X25519 exchange), parallel
streams, `sendfile` or `pread` + `send` from pack files, spooling of
received blobs to temporaries. This module owns policy: which chunks
(only those the destination lacks: resume), which peer, how many streams,
retries, and the commit of received blobs, which are verified with
`decode_blob` before anything of them becomes visible. Between two stores that
keep delta chunks (`[store] delta`), a changed chunk crosses as a delta against a
base the receiver holds (docs/format.md, "Delta transfer on the mover"): `Source`
names candidate bases and encodes the deltas, `Receiver` says which bases it holds
and rebuilds each delta against its own verified base before storing it.

    secret = os.urandom(32)                       # issued by the control plane
    with MoverServer(src_client, secret) as srv:  # binds 127.0.0.1, port 0
        stats = fetch(dst_client, srv.address, ids, secret, streams=4)
    stats = send(src_client, ("10.0.0.2", 7070), ids, secret)   # push instead

Fetched chunks enter the destination index with refcount 0 (docs/format.md):
commit manifests that name them (`copy_tree` does) or gc reclaims them.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from gfs import _mover, delta_transfer, namespace, resemblance
from gfs.client import Client, Progress
from gfs.codec import (
    BASED_CODECS,
    BLOB_HEADER_LEN,
    CHUNK_ID_LEN,
    CODEC_DELTA,
    CODEC_RAW,
    BlobHeader,
    chunk_id,
    decode_blob,
    parse_blob_header,
)
from gfs.delta import DELTAS
from gfs.env import MOVER_STREAMS
from gfs.errors import CorruptChunkError, HutongError
from gfs.meta import ChunkRecord, ChunkRef, Kind, Location, Manifest, PackRecord, WriteTxn
from gfs.packs import PACK_HEADER_LEN, PackBuilder, new_pack_id, pack_header, pack_key
from gfs.pools.base import TMP_DIR
from gfs.pools.local import LocalPool
from gfs.store import ChunkStore, Prepared, pin_chunks

log = logging.getLogger("hutong.mover")
# A transfer's `progress(n)` (gfs.client.Progress) gets the blob bytes moved since its
# previous call.

Address = tuple[str, int]

DEFAULT_STREAMS: Final = MOVER_STREAMS
#: How long fetched chunks are kept from gc before a manifest must name them.
PIN_SECONDS: Final = 24 * 3600.0
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_RETRIES: Final = 3


@dataclass
class Tuning:
    """Receiver and socket settings, chosen by `python -m bench mover` (module-wide).

    `spool_min`: the smallest spool (so pack) a receiver fills before it
    commits, for fewer fsyncs and transactions per byte; `direct`: receivers
    write spools with O_DIRECT from aligned buffers where the spool directory
    allows it (no page-cache copy; docs/format.md, "Receiving"); `sndbuf`/`rcvbuf`:
    socket buffers in bytes, 0 keeps the kernel's auto-tuning (setting one
    turns it off); `congestion`: TCP congestion control of the mover's
    sockets ("" keeps the system default; "bbr" keeps a lossy long path
    full where loss-based ones back off). A name the kernel does not allow
    raises ValueError.
    """

    spool_min: int = 64 << 20
    direct: bool = True
    sndbuf: int = 0
    rcvbuf: int = 0
    congestion: str = ""


TUNING = Tuning()
#: Pack paths a Source remembers (a pack's local path never changes).
_PATH_CACHE: Final = 1 << 16
_ENTRY = struct.Struct("<16sQII")  # id, offset, length, flags (ENTRY_VERIFIED)
assert _ENTRY.size == _mover.ENTRY_LEN
assert _mover.SPOOL_RESERVE == PACK_HEADER_LEN


# -- errors ------------------------------------------------------------------------


class MoverError(HutongError, ConnectionError):
    """A mover transfer failed; `status` is the native status code, `peer` the address."""

    def __init__(self, message: str, status: int = _mover.ERR_IO, peer: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.peer = peer


class MoverAuthError(MoverError, PermissionError):
    """The handshake failed: the peers do not share the session secret (or it was replayed)."""


class MoverTimeoutError(MoverError, TimeoutError):
    """The peer stalled past the timeout; the transfer may be resumed with the same call."""


class MoverProtocolError(MoverError):
    """The peer sent a malformed frame or a length past a limit; the stream was closed."""


class MoverRecordError(MoverError):
    """A record failed authentication or arrived out of sequence: the stream was tampered
    with in transit (or the peer's key differs). Nothing of that record or after it was
    committed; the transfer is not retried."""


class ChunksUnavailableError(MoverError):
    """The peer does not hold some chunks (or sent damaged copies); `ids` lists them."""

    def __init__(self, message: str, ids: Sequence[bytes], peer: str = "") -> None:
        super().__init__(message, _mover.ERR_IO, peer)
        self.ids = list(ids)


_RETRYABLE = frozenset({_mover.ERR_IO, _mover.ERR_TIMEOUT, _mover.ERR_CLOSED, _mover.ERR_PEER,
                        _mover.ERR_REKEY})

#: Ciphers of a client's streams (`fetch`/`send` `cipher=`); "auto" is AES-128-GCM (TLS
#: 1.3's default suite) on CPUs with AES instructions, ChaCha20-Poly1305 elsewhere; "none"
#: is plaintext and only a server started with `allow_plaintext=True` accepts it
#: (benchmarks, tests).
CIPHERS: Final = {"auto": _mover.CIPHER_AUTO, "aes-128-gcm": _mover.CIPHER_AES128GCM,
                  "aes-256-gcm": _mover.CIPHER_AES256GCM,
                  "chacha20-poly1305": _mover.CIPHER_CHACHA20, "none": _mover.CIPHER_NONE}


def _cipher(name: str) -> int:
    try:
        return CIPHERS[name]
    except KeyError:
        raise ValueError(f"mover cipher {name!r} is unknown: use one of "
                         f"{', '.join(CIPHERS)}") from None


def _error(status: int, message: str, peer: str) -> MoverError:
    text = f"mover {peer}: {message or _mover.strerror(status)}"
    if status == _mover.ERR_AUTH:
        return MoverAuthError(text + " (check the session secret and the cipher)", status, peer)
    if status == _mover.ERR_TIMEOUT:
        return MoverTimeoutError(text + " (run the transfer again to resume)", status, peer)
    if status in (_mover.ERR_PROTOCOL, _mover.ERR_LIMIT):
        return MoverProtocolError(text, status, peer)
    if status == _mover.ERR_RECORD:
        return MoverRecordError(text + " (the stream was altered in transit; nothing of the "
                                "altered record was committed)", status, peer)
    return MoverError(text + " (run the transfer again to resume)", status, peer)


# -- statistics ---------------------------------------------------------------------


@dataclass
class TransferStats:
    """What one `fetch` or `send` did (over all its attempts)."""

    op: str
    peer: str
    streams: int
    requested: int = 0
    """Distinct chunk ids asked for."""
    skipped: int = 0
    """Chunks the destination held already (not moved)."""
    chunks: int = 0
    """Chunks that crossed the wire."""
    bytes: int = 0
    """Blob bytes that crossed the wire (frames not counted)."""
    committed: int = 0
    """Chunks newly recorded in the destination store."""
    rejected: int = 0
    """Chunks whose bytes did not match their id (never stored)."""
    missing: list[builtins.bytes] = field(default_factory=list)
    """Chunks the source does not hold."""
    retries: int = 0
    deltas: int = 0
    """Chunks that crossed the wire as deltas against a base the destination held
    (counted by the receiver in a fetch, by the sender in a send)."""
    seconds: float = 0.0
    cipher: str = ""
    """The streams' cipher ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "none")."""
    errors: list[str] = field(default_factory=list)
    """Stream errors that a retry recovered from."""

    @property
    def rate(self) -> float:
        """Blob bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


# -- the two ends of a store ------------------------------------------------------------


def _store_of(target: Client | ChunkStore) -> ChunkStore:
    return target.store if isinstance(target, Client) else target


def _unique(ids: Iterable[bytes]) -> list[bytes]:
    out = list(dict.fromkeys(bytes(i) for i in ids))
    for cid in out:
        if len(cid) != CHUNK_ID_LEN:
            raise ValueError(f"chunk id must be {CHUNK_ID_LEN} bytes, got {len(cid)}")
    return out


class Source:
    """Resolves chunk ids to the byte ranges of their blobs, for the C sender.

    A blob in a local pool is sent straight from its pack file by the C
    sender (sendfile; the bytes never enter Python, so they are not verified
    here: the receiver verifies every blob before committing it, and reading
    them through `LocalSource` would cost the zero-copy path). A blob whose
    copies are all in other pools (`s3://`, `memory://`...) is read and
    verified with `LocalSource.blob_at` into a *staging file* in the state's
    `tmp/` directory, one per batch, and sent from there. The C sender sends
    a batch completely before its thread resolves the next one, so a
    thread's staging file is deleted at its next `resolve`, when its thread
    has ended, or at `close`; a crash leaves a temporary that gc removes.

    Delta transfer (docs/format.md, "Delta transfer on the mover"): `bases`
    names candidate bases of a batch's chunks from the resemblance index
    (`gfs.delta_transfer.candidates`), `deltas` writes the delta blobs against
    the bases the receiver holds (`gfs.delta_transfer.encode`: only where
    `gfs.delta.pays`) to a second staging file of the thread, deleted at its
    next `bases`. A store without delta chunks (`[store] delta` false) names no base.
    """

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._staging: dict[tuple[int, str], str] = {}  # (native thread id, kind) -> file
        self._paths: dict[tuple[int, bytes], str] = {}  # (pool, pack) -> local path or ""
        self._lock = threading.Lock()
        self.staged = 0
        """Blobs sent through staging files (copies in no local pool)."""
        self.sent_deltas = 0
        """Delta blobs handed to the C sender."""

    def bases(self, ids: bytes) -> bytes:
        """(chunk id, candidate base id) pairs, 32 bytes each, in the order of `ids`, for
        the chunks worth a delta: those this store keeps as deltas (of at least
        `resemblance.MIN_CHUNK` bytes), the base each is stored against first, then the
        candidates of the resemblance index. A chunk stored whole had no base worth a
        delta when it was written: it has none (and is not read). None at all when this
        store keeps no delta chunks."""
        self._release(threading.get_native_id(), "delta")
        if not self.store.config.delta:
            return b""
        stored: dict[bytes, bytes | None] = {}
        with self.store.engine.read() as txn:
            for k in range(0, len(ids), CHUNK_ID_LEN):
                cid = ids[k : k + CHUNK_ID_LEN]
                rec = txn.get_chunk(cid)
                if rec is not None and rec.codec == CODEC_DELTA and \
                        rec.raw_len >= resemblance.MIN_CHUNK:
                    stored[cid] = txn.get_value(DELTAS, cid)
        _, cands = delta_transfer.candidates(self.store, list(stored))
        pairs = [cid + b for cid, base in stored.items()
                 for b in ([base] if base else []) + [c for c in cands.get(cid, ())
                                                      if c != base]]
        return b"".join(pairs[:_mover.MAX_PAIRS])

    def deltas(self, pairs: bytes) -> list[tuple[str, int, int] | None]:
        """For each (chunk, base) pair whose base the receiver holds: the delta blob of
        the chunk against the first such base, where it pays (else None)."""
        step = 2 * CHUNK_ID_LEN
        split = [(pairs[k : k + CHUNK_ID_LEN], pairs[k + CHUNK_ID_LEN : k + step])
                 for k in range(0, len(pairs), step)]
        cands: dict[bytes, list[bytes]] = {}
        for cid, base in split:
            cands.setdefault(cid, []).append(base)
        blobs = delta_transfer.encode(self.store, {}, cands, {b for _, b in split})
        out: list[tuple[str, int, int] | None] = [None] * len(split)
        if not blobs:
            return out
        f, path = self._staging_file("delta")
        at = 0
        with f:
            for i, (cid, _) in enumerate(split):
                blob = blobs.pop(cid, None)
                if blob is None:
                    continue  # whole, or a later candidate of a chunk already given
                f.write(blob)
                out[i] = (path, at, len(blob))
                at += len(blob)
                self.sent_deltas += 1
        return out

    def resolve(self, ids: bytes) -> list[tuple[str, int, int] | None]:
        """(path, offset, length) of each id's blob, None when no pool holds it."""
        self._release(threading.get_native_id(), "whole")
        out: list[tuple[str, int, int] | None] = []
        remote: list[tuple[int, ChunkRecord]] = []
        with self.store.engine.read() as txn:
            for k in range(0, len(ids), CHUNK_ID_LEN):
                rec = txn.get_chunk(ids[k : k + CHUNK_ID_LEN])
                # A delta is sent whole through staging: the peer may lack its base.
                where = None if rec is not None and rec.codec in BASED_CODECS else self._where(rec)
                if where is None and rec is not None:
                    remote.append((len(out), rec))
                out.append(where)
        if remote:
            self._stage(remote, out)
        return out

    def _where(self, rec: ChunkRecord | None) -> tuple[str, int, int] | None:
        if rec is None:
            return None
        paths = self._paths
        for loc in rec.locations:
            path = paths.get((loc.pool, loc.pack))
            if path is None:
                if len(paths) >= _PATH_CACHE:
                    paths.clear()
                path = self.store.pool(loc.pool).local_path(pack_key(loc.pack)) or ""
                paths[loc.pool, loc.pack] = path
            if path:
                return path, loc.offset, loc.length
        return None

    def _staging_file(self, kind: str) -> tuple[BinaryIO, str]:
        """A new staging file of this thread (`kind` "whole" or "delta"), open to write."""
        tmp = self.store.state / "tmp"
        tmp.mkdir(exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="mover-stage-", suffix=".tmp", dir=tmp)
        with self._lock:
            self._staging[threading.get_native_id(), kind] = path
        return os.fdopen(fd, "wb"), path

    def _stage(self, remote: list[tuple[int, ChunkRecord]],
               out: list[tuple[str, int, int] | None]) -> None:
        f, path = self._staging_file("whole")
        at = 0
        with f:
            for i, rec in remote:
                blob = self._get(rec)
                if blob is None:
                    continue
                f.write(blob)
                out[i] = (path, at, len(blob))
                at += len(blob)
                self.staged += 1

    def _get(self, rec: ChunkRecord) -> bytes | None:
        if rec.codec in BASED_CODECS:
            try:
                return self.store.read_blob(rec.id)  # verified, re-encoded whole
            except OSError as e:
                log.warning("chunk %s: delta not readable (%s); the mover reports it "
                            "missing", rec.id.hex(), e)
                return None
        for loc in rec.locations:
            try:
                return self.store.source.blob_at(loc, rec.id)[0]
            except OSError as e:  # PoolError, CorruptChunkError
                log.warning("chunk %s: copy in pool %d unusable (%s); trying another copy",
                            rec.id.hex(), loc.pool, e)
        log.warning("chunk %s: no pool returned its blob; the mover reports it missing",
                    rec.id.hex())
        return None

    def _release(self, tid: int, kind: str) -> None:
        """Delete thread `tid`'s staging file of `kind` and those of threads that have ended."""
        with self._lock:
            done = [t for t in self._staging
                    if t == (tid, kind) or not os.path.exists(f"/proc/self/task/{t[0]}")]
            paths = [self._staging.pop(t) for t in done]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        """Delete every staging file (the sender must be stopped)."""
        with self._lock:
            paths = list(self._staging.values())
            self._staging.clear()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class Receiver:
    """Verifies spooled blobs and commits them into a store (docs/format.md, "Receiving").

    A delta blob (codec 2, "Delta transfer on the mover") is decoded against this
    store's own verified copy of its base and its plain content checked against its
    id; the plain content is then stored through a write session like any new chunk
    (the store's planner may keep it as a delta against a local base, pinning that
    base as every write does), never renamed into a pack as it arrived.
    """

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._base = delta_transfer.base_reader(store)
        self._counts = threading.Lock()
        self.deltas = 0
        """Delta blobs verified and committed."""
        self.delta_rejected = 0
        """Delta blobs rejected (base not held or damaged, content not matching its id)."""
        self.pool_id = store.write_pool
        self.pool = store.pool(self.pool_id)
        if isinstance(self.pool, LocalPool):
            self.spool_dir = os.path.join(self.pool.root, TMP_DIR)
        else:
            self.spool_dir = str(store.state / "tmp")
        os.makedirs(self.spool_dir, exist_ok=True)
        self.spool_limit = max(store.config.pack_size, TUNING.spool_min)
        self.direct = TUNING.direct and direct_io_supported(self.spool_dir)

    def lacking(self, ids: Sequence[bytes]) -> list[bytes]:
        """The ids (in order) that the store's index does not hold."""
        with self.store.engine.read() as txn:
            return [cid for cid in ids if not txn.has_chunk(cid)]

    def need(self, ids: bytes) -> bytes:
        """Server callback: the offered ids that the store lacks."""
        view = [ids[k : k + CHUNK_ID_LEN] for k in range(0, len(ids), CHUNK_ID_LEN)]
        return b"".join(self.lacking(view))

    def holds(self, ids: bytes) -> bytes:
        """Delta callback: a byte per id, 1 when the store holds a copy of it, or holds it
        folded in a group (a base a delta may be sent against)."""
        out = bytearray()
        with self.store.engine.read() as txn:
            for k in range(0, len(ids), CHUNK_ID_LEN):
                rec = txn.get_chunk(ids[k : k + CHUNK_ID_LEN])
                out.append(1 if rec is not None and (rec.locations or rec.group) else 0)
        return bytes(out)

    def commit_spool(self, path: str, entries: bytes) -> tuple[int, int]:
        """Verify every blob of spool file `path`, commit the good ones; (committed, rejected).

        The spool is always consumed: renamed into a pack or deleted.
        """
        try:
            return self._commit(path, [_ENTRY.unpack_from(entries, k)
                                       for k in range(0, len(entries), _ENTRY.size)])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _commit(self, path: str, entries: list[tuple[bytes, int, int, int]]) -> tuple[int, int]:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0, len(entries)
            mm = mmap.mmap(f.fileno(), 0)
            view = memoryview(mm)
            try:
                plains: dict[int, bytes] = {}
                good, rejected = self._verify(view, size, entries, plains)
                whole = [i for i in good if i not in plains]
                return (self._store(path, view, entries, whole)
                        + self._store_plains(entries, plains)), rejected
            finally:
                view.release()
                with contextlib.suppress(BufferError):  # a slice still held: gc unmaps it
                    mm.close()

    def _verify(self, view: memoryview, size: int, entries: list[tuple[bytes, int, int, int]],
                plains: dict[int, bytes]) -> tuple[list[int], int]:
        """Indexes of the good blobs, and how many were rejected; the plain content of
        each good delta blob goes to `plains`.

        Raw blobs the C receiver verified on the fly (flag ENTRY_VERIFIED:
        header, id and xxh3-128 of the payload) are not read again.
        """
        def check(i: int) -> bool:
            cid, off, length, flags = entries[i]
            if off + length > size:
                return False
            if flags & _mover.ENTRY_VERIFIED:
                return True
            blob = view[off : off + length]
            try:
                if length >= BLOB_HEADER_LEN and blob[5] == CODEC_DELTA:
                    return self._verify_delta(blob, cid, i, plains)
                _verify_blob(blob, cid)
            except CorruptChunkError as e:
                log.error("rejected chunk %s from a peer: %s", cid.hex(), str(e))
                return False
            return True

        unchecked = sum(1 for e in entries if not e[3] & _mover.ENTRY_VERIFIED)
        if unchecked > 8:
            ok = list(self.store.executor.map(check, range(len(entries))))
        else:
            ok = [check(i) for i in range(len(entries))]
        good = [i for i, v in enumerate(ok) if v]
        return good, len(entries) - len(good)

    def _verify_delta(self, blob: memoryview, cid: bytes, i: int,
                      plains: dict[int, bytes]) -> bool:
        """Decode a delta blob against this store's verified copy of its base."""
        try:
            plains[i] = decode_blob(blob, expect_id=cid, base=self._base)
        except HutongError as e:  # corrupt, base not held, base damaged
            log.error("rejected delta of chunk %s from a peer: %s", cid.hex(), str(e))
            with self._counts:
                self.delta_rejected += 1
            return False
        return True

    def _store_plains(self, entries: list[tuple[bytes, int, int, int]],
                      plains: dict[int, bytes]) -> int:
        """Store the verified plain content of delta blobs through a write session,
        pinned like every fetched chunk; the number of chunks new to the store."""
        if not plains:
            return 0
        with self.store.writer() as session:  # holds gc.lock shared until pinned
            fresh = set(self.lacking([entries[i][0] for i in plains]))
            todo = {entries[i][0]: raw for i, raw in plains.items() if entries[i][0] in fresh}
            if not todo:
                return 0
            session.store_prepared(Prepared([ChunkRef(c, len(r)) for c, r in todo.items()],
                                            [memoryview(r) for r in todo.values()],
                                            sum(len(r) for r in todo.values())))
            session.commit()
            with self.store.engine.write() as txn:
                pin_chunks(txn, todo, PIN_SECONDS)
        with self._counts:
            self.deltas += len(todo)
        return len(todo)

    def _store(self, path: str, view: memoryview,
               entries: list[tuple[bytes, int, int, int]], good: list[int]) -> int:
        if not good:
            return 0
        with self.store.writer():  # holds gc.lock shared: gc sees no orphan in between
            fresh = self.lacking(list(dict.fromkeys(entries[i][0] for i in good)))
            if not fresh:
                return 0
            wanted = set(fresh)
            pick: list[int] = []
            for i in good:
                if entries[i][0] in wanted:
                    wanted.discard(entries[i][0])
                    pick.append(i)
            pack_id = new_pack_id()
            contiguous = (len(pick) == len(entries)
                          and all(entries[i][1] == (entries[i - 1][1] + entries[i - 1][2]
                                                    if i else PACK_HEADER_LEN)
                                  for i in range(len(entries))))
            locs: dict[bytes, tuple[int, int, BlobHeader]] = {}
            if contiguous and isinstance(self.pool, LocalPool) and \
                    os.path.dirname(path) == self.spool_dir:
                for i in pick:
                    cid, off, length, flags = entries[i]
                    locs[cid] = (off, length, _header(view, cid, off, length, flags))
                pack_size = entries[-1][1] + entries[-1][2]
                self._rename_in_place(path, pack_id, pack_size)
            else:
                builder = PackBuilder(pack_id)
                for i in pick:
                    cid, off, length, _ = entries[i]
                    blob = view[off : off + length]
                    at, n = builder.add(blob[:BLOB_HEADER_LEN], blob[BLOB_HEADER_LEN:])
                    locs[cid] = (at, n, parse_blob_header(blob))
                self.pool.put(pack_key(pack_id), builder.parts())
                pack_size = builder.size
            return self._record(pack_id, pack_size, len(pick), locs)

    def _rename_in_place(self, path: str, pack_id: bytes, end: int) -> None:
        assert isinstance(self.pool, LocalPool)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(fd, pack_header(pack_id), 0)
            os.ftruncate(fd, end)  # drop the bytes of a blob cut mid-way
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.pool.local_path(pack_key(pack_id))
        assert target is not None
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            _fsync_dir(os.path.dirname(parent))
        os.replace(path, target)
        _fsync_dir(parent)

    def _record(self, pack_id: bytes, pack_size: int, nblobs: int,
                locs: dict[bytes, tuple[int, int, BlobHeader]]) -> int:
        now = time.time_ns()
        committed = 0
        live_bytes = 0
        with self.store.engine.write() as txn:
            for cid, (off, length, head) in locs.items():
                if txn.has_chunk(cid):
                    continue  # committed meanwhile by another writer: a dead blob
                committed += 1
                live_bytes += length
                txn.put_chunk(ChunkRecord(cid, head.raw_len, head.payload_len, head.codec, 0,
                                          (Location(self.pool_id, pack_id, off, length),)))
            txn.put_pack(PackRecord(pack_id, self.pool_id, pack_size, nblobs, committed,
                                    live_bytes, now))
            # no manifest names them yet: keep them from gc for a while (docs/format.md)
            pin_chunks(txn, locs, PIN_SECONDS)
        return committed


def _header(view: memoryview, cid: bytes, off: int, length: int, flags: int) -> BlobHeader:
    """The header of a blob: known without reading it when C verified it (raw, this id)."""
    if flags & _mover.ENTRY_VERIFIED:
        n = length - BLOB_HEADER_LEN
        return BlobHeader(CODEC_RAW, 0, n, n, cid)
    return parse_blob_header(view[off : off + length])


def _verify_blob(blob: memoryview, cid: bytes) -> None:
    """Raise `CorruptChunkError` unless `blob` is a valid blob of chunk `cid`.

    A raw blob is checked in place (header, lengths, xxh3-128 of the payload);
    anything else, and any failure, goes through `decode_blob` for its checks
    and its error message.
    """
    head = parse_blob_header(blob)
    if (head.codec == CODEC_RAW and head.chunk_id == cid and len(blob) == head.blob_len
            and chunk_id(blob[BLOB_HEADER_LEN:]) == cid):
        return
    decode_blob(blob, expect_id=cid)


class _Committer:
    """Commits fetched spools on worker threads so the streams keep receiving.

    At most `depth` spools wait at once (the stream handing over the next one
    blocks): disk held by spools stays bounded.
    """

    def __init__(self, receiver: Receiver, depth: int = 4) -> None:
        self.receiver = receiver
        self.depth = depth
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="hutong-mover-commit")
        self._pending: deque[Future[tuple[int, int]]] = deque()
        self._lock = threading.Lock()
        self.committed = 0
        self.rejected = 0

    def submit(self, path: str, entries: bytes) -> tuple[int, int]:
        fut = self._pool.submit(self.receiver.commit_spool, path, entries)
        with self._lock:
            self._pending.append(fut)
            oldest = self._pending[0] if len(self._pending) > self.depth else None
        if oldest is not None:
            self._collect(oldest)
        return 0, 0

    def _collect(self, fut: Future[tuple[int, int]]) -> None:
        committed, rejected = fut.result()
        with self._lock:
            if fut in self._pending:
                self._pending.remove(fut)
                self.committed += committed
                self.rejected += rejected

    def finish(self) -> tuple[int, int]:
        """Wait for every commit; return (committed, rejected) and reset the counters."""
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    fut = self._pending[0]
                self._collect(fut)
        finally:
            done = self.committed, self.rejected
            self.committed = self.rejected = 0
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def direct_io_supported(directory: str) -> bool:
    """Whether files in `directory` can be opened O_DIRECT (some file systems refuse it)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    fd, path = tempfile.mkstemp(prefix="mover-probe-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag))
    except OSError:
        log.debug("spool directory %s refuses O_DIRECT: spools are written buffered", directory)
        return False
    finally:
        os.unlink(path)
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- server -------------------------------------------------------------------------------


class MoverServer:
    """A mover server for one store: serves fetches from it and receives sends into it.

    Runs on native threads until `close` (or the end of a `with` block). Bind
    port 0 to let the kernel choose; `address` tells which. `sendfile`: serve
    blobs with zero-copy `sendfile` (True), `pread` + `send` (False), or, by
    default, `pread` + `send` to a client on this host and `sendfile` to
    others (over loopback both ends share the CPUs; measured by
    `python -m bench mover`). Every stream is encrypted and authenticated;
    `allow_plaintext` also accepts clients that ask for plaintext streams
    (`cipher="none"`: benchmarks and tests only).
    """

    def __init__(self, store: Client | ChunkStore, secret: bytes, host: str = "127.0.0.1",
                 port: int = 0, *, timeout: float = DEFAULT_TIMEOUT,
                 sendfile: bool | None = None, max_blob: int = _mover.DEFAULT_MAX_BLOB,
                 congestion: str | None = None, allow_plaintext: bool = False,
                 max_conns: int = _mover.DEFAULT_MAX_CONNS,
                 handshake_timeout: float = _mover.DEFAULT_HANDSHAKE_TIMEOUT,
                 min_rate: int = _mover.DEFAULT_MIN_RATE) -> None:
        self.store = _store_of(store)
        self.host = host
        self._source = Source(self.store)
        self._receiver = Receiver(self.store)
        self._server: _mover.Server | None = _mover.Server(
            host, port, secret, self._source.resolve, self._receiver.need,
            self._receiver.commit_spool, self._receiver.spool_dir,
            spool_limit=self._receiver.spool_limit, timeout=timeout, max_blob=max_blob,
            sendfile=_sendfile_mode(sendfile), sndbuf=TUNING.sndbuf, rcvbuf=TUNING.rcvbuf,
            congestion=TUNING.congestion if congestion is None else congestion,
            direct=self._receiver.direct, allow_plaintext=allow_plaintext,
            max_conns=max_conns, handshake_timeout=handshake_timeout, min_rate=min_rate,
            bases=self._source.bases, holds=self._receiver.holds,
            deltas=self._source.deltas)
        self.port = self._server.port

    @property
    def address(self) -> Address:
        """(host, port) to give to `fetch` and `send`."""
        return self.host, self.port

    def counters(self) -> dict[str, int]:
        """connections, auth_failures (handshakes refused and records found altered),
        chunks_served, chunks_received, bytes (sent + received), dropped (connections
        over `max_conns`, or too slow to authenticate or to send a frame)."""
        if self._server is None:
            raise ValueError("mover server is closed")
        return self._server.counters()

    def close(self) -> None:
        """Stop listening, close every connection, join every thread (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None
            self._source.close()

    def __enter__(self) -> MoverServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- client transfers ----------------------------------------------------------------------


def _split(ids: Sequence[bytes], streams: int) -> list[bytes]:
    """Contiguous slices (pack order stays together), one per stream, none empty."""
    n = max(1, min(streams, len(ids)))
    per, extra = divmod(len(ids), n)
    out, start = [], 0
    for k in range(n):
        end = start + per + (1 if k < extra else 0)
        out.append(b"".join(ids[start:end]))
        start = end
    return out


def _progress_adapter(progress: Progress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    last = 0

    def tick(nbytes: int, _chunks: int) -> None:
        nonlocal last
        if nbytes > last:
            progress(nbytes - last)
            last = nbytes
    return tick


def _run(op: int, peer: Address, secret: bytes, ids: list[bytes], stats: TransferStats, *,
         streams: int, timeout: float, sendfile: bool | None, progress: Progress | None,
         cipher: str, committer: _Committer | None = None, source: Source | None = None,
         delta: bool = True) -> list[tuple[int, str]]:
    adapter = _progress_adapter(progress)
    receiver = committer.receiver if committer else None
    # deltas only between stores that keep them ([store] delta): the client says so in HELLO
    sends_deltas = delta and source is not None and source.store.config.delta
    takes_deltas = delta and receiver is not None and receiver.store.config.delta
    try:
        # Fetches share one queue of ids (a stream slowed by loss takes less);
        # sends keep one slice per stream (the server commits per batch).
        shared = op == _mover.OP_FETCH and streams > 1 and len(ids) > streams
        batch = min(_mover.MAX_BATCH, max(8, -(-len(ids) // (streams * 16))))
        results = _mover.transfer(
            op, peer[0], peer[1], secret, [b"".join(ids)] if shared else _split(ids, streams),
            streams=streams if shared else 0, batch=batch,
            resolve=source.resolve if source else None,
            spool=committer.submit if committer else None,
            spool_dir=receiver.spool_dir if receiver else ".",
            spool_limit=receiver.spool_limit if receiver else 16 << 20,
            timeout=timeout, sendfile=_sendfile_mode(sendfile), progress=adapter,
            sndbuf=TUNING.sndbuf, rcvbuf=TUNING.rcvbuf, congestion=TUNING.congestion,
            direct=receiver.direct if receiver else False, cipher=_cipher(cipher),
            bases=source.bases if source and sends_deltas else None,
            deltas=source.deltas if source and sends_deltas else None,
            holds=receiver.holds if receiver and takes_deltas else None)
    finally:
        if committer is not None:
            committed, rejected = committer.finish()
            stats.committed += committed
            stats.rejected += rejected
    failures = []
    for status, message, nbytes, chunks, _missing, committed, rejected, used in results:
        if used != "unknown":
            stats.cipher = used
        stats.bytes += nbytes
        stats.chunks += chunks
        stats.committed += committed
        stats.rejected += rejected
        if status != _mover.OK:
            failures.append((status, message))
    if adapter is not None:
        adapter(sum(r[2] for r in results), 0)
    return failures


def _next_attempt(failures: list[tuple[int, str]], attempt: int, retries: int,
                  progressed: bool, stats: TransferStats, started: float) -> int:
    """The attempt number of the next try after stream `failures`, or raise the error.

    Streams that only used up their keys' record limit (`ERR_REKEY`) after
    moving data resume on new streams without spending an attempt.
    """
    rekey = progressed and all(status == _mover.ERR_REKEY for status, _ in failures)
    fatal = [f for f in failures if f[0] not in _RETRYABLE]
    if fatal or (attempt >= retries and not rekey):
        stats.seconds = time.monotonic() - started
        status, message = (fatal or failures)[0]
        raise _error(status, message, stats.peer)
    stats.errors += [m for _, m in failures]
    stats.retries += 1
    return attempt if rekey else attempt + 1


def _sendfile_mode(sendfile: bool | None) -> int:
    """The native sender's mode: 1 sendfile, 0 pread + send, SENDFILE_AUTO by peer."""
    return _mover.SENDFILE_AUTO if sendfile is None else int(sendfile)


def _check_streams(streams: int) -> None:
    if not 1 <= streams <= 64:
        raise ValueError(f"streams must be 1 to 64, got {streams}")


def fetch(store: Client | ChunkStore, peer: Address, ids: Iterable[bytes], secret: bytes, *,
          streams: int = DEFAULT_STREAMS, retries: int = DEFAULT_RETRIES,
          timeout: float = DEFAULT_TIMEOUT, progress: Progress | None = None,
          strict: bool = True, cipher: str = "auto") -> TransferStats:
    """Pull chunks `ids` from the mover server at `peer` into `store`.

    Only chunks the store lacks are asked for, so a second call after an
    interruption moves only what is still missing. Received blobs are
    verified and committed pack by pack (refcount 0, pinned for `PIN_SECONDS` so
    that gc keeps them until a manifest names them). Retryable stream
    failures (cut, stall) are retried up to `retries` times. With `strict`,
    chunks the peer does not hold (or sent damaged) raise
    `ChunksUnavailableError` after the rest was committed; otherwise they are
    listed in `stats.missing`. `cipher` chooses the streams' AEAD (`CIPHERS`).
    """
    _check_streams(streams)
    _cipher(cipher)
    dest = _store_of(store)
    receiver = Receiver(dest)
    want = _unique(ids)
    name = f"{peer[0]}:{peer[1]}"
    stats = TransferStats("fetch", name, streams, requested=len(want))
    started = time.monotonic()
    todo = receiver.lacking(want)
    stats.skipped = len(want) - len(todo)
    committer = _Committer(receiver)
    try:
        return _fetch_loop(receiver, committer, peer, secret, todo, stats, started,
                           streams=streams, retries=retries, timeout=timeout,
                           progress=progress, strict=strict, cipher=cipher)
    finally:
        committer.close()


def _fetch_loop(receiver: Receiver, committer: _Committer, peer: Address, secret: bytes,
                todo: list[bytes], stats: TransferStats, started: float, *, streams: int,
                retries: int, timeout: float, progress: Progress | None,
                strict: bool, cipher: str) -> TransferStats:
    name = stats.peer
    attempt = 0
    delta = True
    while todo:
        before = stats.committed
        rejected = receiver.delta_rejected
        failures = _run(_mover.OP_FETCH, peer, secret, todo, stats, streams=streams,
                        timeout=timeout, sendfile=True, progress=progress, cipher=cipher,
                        committer=committer, delta=delta)
        stats.deltas = receiver.deltas
        # every id newly committed (they are distinct): nothing to look up
        left = [] if stats.committed - before == len(todo) else receiver.lacking(todo)
        if not failures and left and delta and receiver.delta_rejected > rejected:
            # a delta failed (its base went, or was damaged, since HAVE): once more, whole
            stats.rejected -= receiver.delta_rejected - rejected
            log.warning("mover fetch from %s: %d delta(s) rejected; fetching %d chunks whole",
                        name, receiver.delta_rejected - rejected, len(left))
            todo, delta = left, False
            continue
        if not failures:
            todo = left
            break
        attempt = _next_attempt(failures, attempt, retries, stats.committed > before, stats,
                                started)
        log.warning("mover fetch from %s: %d stream(s) failed (%s); retrying %d chunks",
                    name, len(failures), failures[0][1], len(left))
        todo = left
    stats.missing = todo
    stats.seconds = time.monotonic() - started
    if todo and strict:
        raise ChunksUnavailableError(
            f"mover {name}: {len(todo)} chunk(s) not available from the peer "
            f"(first {todo[0].hex()}); the {stats.committed} others were committed", todo, name)
    return stats


def send(store: Client | ChunkStore, peer: Address, ids: Iterable[bytes], secret: bytes, *,
         streams: int = DEFAULT_STREAMS, retries: int = DEFAULT_RETRIES,
         timeout: float = DEFAULT_TIMEOUT, progress: Progress | None = None,
         sendfile: bool | None = None, cipher: str = "auto") -> TransferStats:
    """Push chunks `ids` from `store` to the mover server at `peer`.

    The server answers each batch with the ids it lacks, so a second call
    moves only what is still missing there; it acknowledges a batch only once
    the batch is verified and committed. `sendfile` chooses zero-copy sends
    from pack files (True) or `pread` + `send` (False); by default `pread` +
    `send` to a server on this host, `sendfile` otherwise. Chunks this store does not
    hold are listed in `stats.missing`; damaged ones the server rejected are
    counted in `stats.rejected`. `cipher` chooses the streams' AEAD (`CIPHERS`); an
    encrypted stream always sends with `pread` + `send` (the bytes are sealed in
    user space).
    """
    _check_streams(streams)
    _cipher(cipher)
    src = _store_of(store)
    source = Source(src)
    want = _unique(ids)
    name = f"{peer[0]}:{peer[1]}"
    stats = TransferStats("send", name, streams, requested=len(want))
    started = time.monotonic()
    with src.engine.read() as txn:
        held = [cid for cid in want if txn.has_chunk(cid)]
    have = set(held)
    stats.missing = [cid for cid in want if cid not in have]
    attempt = 0
    while held:
        before = stats.chunks
        try:
            failures = _run(_mover.OP_SEND, peer, secret, held, stats, streams=streams,
                            timeout=timeout, sendfile=sendfile, progress=progress,
                            cipher=cipher, source=source)
        finally:
            source.close()
            stats.deltas = source.sent_deltas
        if not failures:
            break
        attempt = _next_attempt(failures, attempt, retries, stats.chunks > before, stats,
                                started)
        log.warning("mover send to %s: %d stream(s) failed (%s); retrying (%d chunks moved)",
                    name, len(failures), failures[0][1], stats.chunks - before)
    stats.skipped = len(held) - stats.committed - stats.rejected
    stats.seconds = time.monotonic() - started
    return stats


# -- copying a tree between stores --------------------------------------------------------------


@dataclass
class CopyReport:
    """What `copy_tree` did: the chunk transfer and the namespace entries committed."""

    transfer: TransferStats
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    logical_bytes: int = 0


def tree_chunks(store: Client, path: str) -> list[bytes]:
    """The distinct chunk ids of the files under `path` (or of the file), in manifest order."""
    return _unique(ref.id for _, _, m in _tree(store, path) if m for ref in m.chunks)


def _tree(client: Client, path: str) -> list[tuple[str, object, Manifest | None]]:
    """(relative path, inode, manifest) of `path` and everything under it, parents first."""
    out: list[tuple[str, object, Manifest | None]] = []
    with client.engine.read() as txn:
        top = namespace.resolve(txn, path)
        stack = [("", top)]
        while stack:
            rel, node = stack.pop()
            out.append((rel, node, txn.get_manifest(node.ino) if node.kind == Kind.FILE
                        else None))
            if node.kind == Kind.DIR:
                for name, ino in sorted(txn.list_dir(node.ino), reverse=True):
                    stack.append((f"{rel}/{name}", namespace.get(txn, ino)))
    return out


def copy_tree(src: Client, dst: Client, path: str, dest_path: str | None = None, *,
              streams: int = DEFAULT_STREAMS, progress: Progress | None = None,
              host: str = "127.0.0.1") -> CopyReport:
    """Copy the tree at `path` of `src` to `dest_path` (default: the same path) of `dst`.

    The chunks move through a mover server started on `src` for this call
    (loopback, a fresh session secret, port 0); the destination commits them
    and then the namespace entries (files keep mode, owner and mtime), so the
    copied files become visible only once every chunk they name is stored.
    Running it again after an interruption moves only the missing chunks.
    """
    from gfs.meta import Inode

    dest = dest_path or path
    entries = _tree(src, path)
    ids = _unique(ref.id for _, _, m in entries if m for ref in m.chunks)
    secret = os.urandom(32)
    with MoverServer(src, secret, host) as server:
        stats = fetch(dst, server.address, ids, secret, streams=streams, progress=progress)
    report = CopyReport(stats)
    base = dest.rstrip("/") or "/"
    with dst.store.writer() as session:
        for rel, node_obj, manifest in entries:
            node = node_obj
            assert isinstance(node, Inode)
            target = (base + rel) if rel else base
            if target != "/" and node.kind == Kind.DIR:
                session.add_action(_mkdir(target, node))
                report.dirs += 1
            elif node.kind == Kind.SYMLINK:
                session.add_action(_symlink(target, node))
                report.symlinks += 1
            elif node.kind == Kind.FILE:
                refs = list(manifest.chunks) if manifest else []
                session.add_file(refs, _write(target, node))
                report.files += 1
                report.logical_bytes += sum(r.length for r in refs)
    return report


def _mkdir(path: str, node: object) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        from gfs.meta import Inode
        assert isinstance(node, Inode)
        namespace.mkdir(txn, path, node.mode, parents=True, exist_ok=True, uid=node.uid,
                        gid=node.gid, mtime_ns=node.mtime_ns)
        return None
    return action


def _symlink(path: str, node: object) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        from gfs.meta import Inode
        assert isinstance(node, Inode)
        namespace.mkdir(txn, path.rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
        with contextlib.suppress(HutongError):
            namespace.remove(txn, path)
        namespace.symlink(txn, path, node.target, uid=node.uid, gid=node.gid)
        return None
    return action


def _write(path: str, node: object) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
    def action(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
        from gfs.meta import Inode
        assert isinstance(node, Inode)
        namespace.mkdir(txn, path.rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
        return namespace.write_file(txn, path, refs, mode=node.mode, uid=node.uid,
                                    gid=node.gid, mtime_ns=node.mtime_ns)
    return action
