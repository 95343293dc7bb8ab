"""OT-extension PSI (KKRT16 batched OPRF, semi-honest, two parties): the receiver
learns the intersection, the sender learns the receiver's set size. The protocol,
its parameters and its security argument are in docs/privacy.md ("OT-PSI").

The halves take the same authenticated `Channel` as the ECDH halves and an Arrow
string array of distinct keys (`key_array`). The bulk work (hashing, the OT
extension, the code, matching) is C (`privacy._psi_ot`); this module drives the
messages, checks every one and owns the parameters.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import nacl.bindings as sodium
import nacl.exceptions
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gfs.client import Client
from privacy import _psi_ot as _c
from privacy.channel import Channel
from privacy.ec import job_domain
from privacy.errors import PolicyError, PrivacyError, ProtocolError
from privacy.psi import PsiResult
from privacy.spill import Workdir, _Buckets
from privacy.tables import BATCH_ROWS, iter_batches, key_array, num_rows

Progress = Callable[[str, int, int], None]
#: Code length in bits = base OTs (KKRT16 sec. 5: >= 448 suffices up to 2^24 items
#: at 128-bit computational / 40-bit statistical security; 512 keeps rows aligned).
W = 512
ROW = W // 8
ID = 16
POINT = 32
#: Rows of the OT matrix per message (1 MiB of U).
BLOCK_ROWS = 16384
#: Cuckoo table size over the receiver's set size (3 hash functions, PSZ18).
EXPANSION = 1.27
MAX_STASH = 64
#: Statistical security of the false-match bound (bits).
SIGMA = 40
#: The sender spills its OPRF values to 2^SPILL_BITS files by their leading bits.
SPILL_BITS = 4
SPILL_PARTS = 1 << SPILL_BITS
__all__ = ["Params", "ReceiverView", "SenderView", "TableKeys", "params", "receiver",
           "run_half", "sender"]


class CuckooError(PrivacyError, RuntimeError):
    """Cuckoo hashing of the receiver's set overflowed its stash (probability
    below 2^-40 at the default parameters); running the job again retries."""


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class Params:
    """The public parameters of one run, a function of the two set sizes."""

    n: int
    m: int
    bins: int
    stash: int
    #: OT rows: bins + stash rounded up to a multiple of 128
    rows: int
    #: bytes of each OPRF value sent: false-match chance <= 2^-SIGMA
    ob: int


def stash_size(n: int) -> int:
    """Stash slots for n receiver items at EXPANSION (measured: see docs/privacy.md)."""
    return 4 if n < 1 << 10 else 3 if n < 1 << 14 else 2 if n < 1 << 18 else 1


def params(n: int, m: int, bins: int | None = None, stash: int | None = None) -> Params:
    """Parameters for sets of n (receiver) and m (sender) distinct keys."""
    b = bins if bins is not None else max(math.ceil(EXPANSION * n), 128)
    s = stash if stash is not None else stash_size(n)
    rows = -(-(b + s) // 128) * 128
    compares = max(n, 1) * (3 + s) * max(m, 1)
    ob = max(8, math.ceil((SIGMA + math.log2(compares)) / 8))
    return Params(n, m, b, s, rows, ob)


@dataclass(frozen=True)
class TableKeys:
    """The keys of `column` in table `path`, read batch by batch (canonical text as
    `privacy.tables.key_strings`): a party never holds all its key strings at once."""

    fs: Client
    path: str
    column: str
    batch_rows: int = BATCH_ROWS

    def rows(self) -> int:
        """Rows of the table (from its metadata: an upper bound of its keys)."""
        return num_rows(self.fs, self.path)

    def batches(self) -> Iterator[pa.Array]:
        """The column's keys, one Arrow string array per record batch."""
        for b in iter_batches(self.fs, self.path, [self.column], self.batch_rows):
            yield key_array(b.column(0))


Keys: TypeAlias = TableKeys | pa.Array | list[str]


def _batches(keys: Keys) -> Iterator[pa.Array]:
    """Non-null keys as string arrays, a batch at a time."""
    parts = keys.batches() if isinstance(keys, TableKeys) else iter(
        [pa.array(keys, type=pa.large_string()) if isinstance(keys, list) else keys])
    for arr in parts:
        yield arr.drop_null() if arr.null_count else arr


def hash_ids(keys: pa.Array, domain: bytes, progress: Progress = lambda *a: None,
             step: int = 1 << 20) -> bytes:
    """16-byte ids SHA-256(domain || key) of every key of a string array."""
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        keys = keys.cast(pa.large_string())
    _, offs, data = keys.buffers()
    big = pa.types.is_large_string(keys.type)
    out = bytearray()
    n = len(keys)
    for i in range(0, n, step):
        k = min(step, n - i)
        out += _c.hash_items(domain, data if data is not None else b"", offs, big,
                             keys.offset + i, k)
        progress("psi-hash", i + k, n)
    return bytes(out)


def distinct_ids(keys: Keys, domain: bytes, progress: Progress) -> np.ndarray[Any, Any]:
    """The ids of the distinct keys, sorted, as an (n, 16) uint8 array: hashed batch
    by batch (two uint64 words per id; distinct ids are distinct keys)."""
    total = keys.rows() if isinstance(keys, TableKeys) else len(keys)
    words = np.empty((total, 2), np.uint64)  # one allocation: no heap of small pieces
    done = 0
    for arr in _batches(keys):
        if done + len(arr) > total:
            raise ProtocolError(f"{keys} has more keys than its {total} rows")
        words[done:done + len(arr)] = np.frombuffer(hash_ids(arr, domain),
                                                    np.uint64).reshape(-1, 2)
        done += len(arr)
        progress("psi-hash", done, total)
    order = np.lexsort((words[:done, 1], words[:done, 0]))
    words = words[order]
    del order
    keep = np.ones(len(words), dtype=bool)
    keep[1:] = (words[1:] != words[:-1]).any(axis=1)
    return words[keep].view(np.uint8).reshape(-1, ID)


def strings_of(keys: Keys, domain: bytes, wanted: np.ndarray[Any, Any]) -> list[str]:
    """The keys whose ids are in `wanted` (sorted (k, 16) ids as `distinct_ids`
    returns them), each once, sorted: the keys are read again, batch by batch."""
    w = wanted.view(np.uint64).reshape(-1, 2)
    found = np.zeros(len(w), dtype=bool)
    out: list[pa.Array] = []
    for arr in _batches(keys):
        b = np.frombuffer(hash_ids(arr, domain), np.uint64).reshape(-1, 2)
        lo = np.searchsorted(w[:, 0], b[:, 0], "left")
        hi = np.searchsorted(w[:, 0], b[:, 0], "right")
        pos = np.full(len(b), -1, dtype=np.int64)
        one = np.flatnonzero(hi - lo == 1)
        pos[one] = np.where((w[lo[one], 1] == b[one, 1]), lo[one], -1)
        for i in np.flatnonzero(hi - lo > 1):  # two ids share 64 bits: ~2^-64 per pair
            hit = lo[i] + np.flatnonzero(w[lo[i]:hi[i], 1] == b[i, 1])
            pos[i] = hit[0] if len(hit) else -1
        rows = np.flatnonzero(pos >= 0)
        rows = rows[~found[pos[rows]]]
        first = rows[np.unique(pos[rows], return_index=True)[1]]  # a key once per batch
        found[pos[first]] = True
        out.append(arr.take(pa.array(first, type=pa.int64())).cast(pa.large_string()))
    matched = pa.concat_arrays(out) if out else pa.array([], pa.large_string())
    out.clear()
    # byte order of UTF-8 is code point order: the same order as sorted() on str
    matched = matched.take(pc.sort_indices(matched))
    pa.default_memory_pool().release_unused()
    result: list[str] = matched.to_pylist()
    return result


# -- base OTs: Chou-Orlandi "simplest OT" over the Ed25519 group (libsodium) -----

def _scalar() -> bytes:
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64)))


def _kdf(i: int, a: bytes, b: bytes, p: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(i.to_bytes(4, "little") + a + b + p, digest_size=16,
                           person=b"hutong-ot-base").digest()


def _point(data: bytes, what: str, peer: str) -> bytes:
    if len(data) != POINT or not sodium.crypto_core_ed25519_is_valid_point(data):
        raise ProtocolError(f"{peer} sent an invalid {what} (not a point of the prime-order "
                            f"Ed25519 group); the job is aborted")
    return data


def _mul(s: bytes, p: bytes, peer: str) -> bytes:
    try:
        return bytes(sodium.crypto_scalarmult_ed25519_noclamp(s, p))
    except nacl.exceptions.RuntimeError as e:
        raise ProtocolError(f"{peer} sent a base-OT point of small order; the job is "
                            f"aborted") from e


def bits(s: bytes) -> list[int]:
    """Bits of `s`, least significant first (the C row convention)."""
    return [(s[i // 8] >> (i % 8)) & 1 for i in range(8 * len(s))]


# -- the halves -----------------------------------------------------------------

@dataclass
class ReceiverView:
    """Everything the receiver holds after a run (for adversary tests)."""

    k0: bytes = b""
    k1: bytes = b""
    code_key: bytes = b""
    inputs: bytes = b""
    received: list[bytes] = field(default_factory=list)
    params: Params | None = None
    stash_used: int = 0


@dataclass
class SenderView:
    """Everything the sender holds after a run (for adversary tests)."""

    ks: bytes = b""
    s: bytes = b""
    code_key: bytes = b""
    u: list[bytes] = field(default_factory=list)
    params: Params | None = None


def receiver(ch: Channel, keys: Keys, job_id: str,
             progress: Progress = _no_progress, *, bins: int | None = None,
             stash: int | None = None, view: ReceiverView | None = None) -> PsiResult:
    """The receiver's half: learns the intersection (sorted) and |Y|.
    `bins`/`stash` override the cuckoo parameters (tests); `view` records the run.
    Holds the keys' 16-byte ids, not their strings: the matched keys are read again
    at the end (docs/privacy.md, "Memory")."""
    domain = job_domain(job_id)
    ch.step = "psi-hash"
    ids = distinct_ids(keys, domain, progress)
    n = len(ids)
    p0 = params(n, 1, bins, stash)
    if p0.bins < 1 or p0.stash < 0 or p0.stash > MAX_STASH:
        raise ValueError(f"cuckoo parameters out of range: bins {p0.bins}, stash {p0.stash}")
    ch.step = "psi-cuckoo"
    table_b, used = _c.cuckoo(ids.data, p0.bins, p0.stash,
                              int.from_bytes(os.urandom(8), "little"))
    if used < 0:
        raise CuckooError(f"cuckoo hashing of {n} keys into {p0.bins} bins needed more than "
                          f"{p0.stash} stash slots; run the job again")
    if view is not None:
        view.stash_used = used
    a = _scalar()
    big_a = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(a))
    ch.step = "psi-ot-base"
    ch.send("ot-hello", {"n": n, "bins": p0.bins, "stash": p0.stash}, big_a)
    msg = ch.recv("ot-base")
    m = msg.meta.get("m")
    if not isinstance(m, int) or m < 0:
        raise ProtocolError(f"{ch.peer} sent a malformed set size {m!r} in ot-base")
    if n == 0 or m == 0:
        return PsiResult(0, n, m, [])
    p = params(n, m, p0.bins, p0.stash)
    if len(msg.body) != 16 + W * POINT:
        raise ProtocolError(f"{ch.peer} sent {len(msg.body)} bytes of base OTs, expected "
                            f"{16 + W * POINT}")
    code_key, pts = msg.body[:16], msg.body[16:]
    k0, k1 = bytearray(), bytearray()
    for i in range(W):
        bi = _point(pts[POINT * i:POINT * (i + 1)], f"base-OT point {i}", ch.peer)
        k0 += _kdf(i, big_a, bi, _mul(a, bi, ch.peer))
        diff = bytes(sodium.crypto_core_ed25519_sub(bi, big_a))
        k1 += _kdf(i, big_a, bi, _mul(a, diff, ch.peer))
    table = np.frombuffer(table_b, dtype=np.int32)
    del table_b
    mine = np.empty((n, p.ob), dtype=np.uint8)
    owner = table[table >= 0]  # item index of each occupied row, in row order
    inputs = []
    ch.step = "psi-ot-extend"
    pos = 0
    for start in range(0, p.rows, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, p.rows - start)
        # bin inputs: the cuckoo item, or a random dummy for an empty bin or slot
        r = np.frombuffer(bytearray(os.urandom(rows * ID)), np.uint8).reshape(rows, ID)
        tb = table[start:start + rows]
        sel = np.flatnonzero(tb >= 0)
        r[sel] = ids[tb[sel]]
        if view is not None:
            inputs.append(r.tobytes())
        u, vals = _c.recv_block(bytes(k0), bytes(k1), code_key, r.tobytes(), start, rows,
                                p.ob)
        ch.send("ot-u", {"start": start}, u)
        v = np.frombuffer(vals, dtype=np.uint8).reshape(rows, p.ob)
        mine[pos:pos + len(sel)] = v[sel]
        pos += len(sel)
        progress("psi-ot-extend", start + rows, p.rows)
    ch.send("ot-u-end", {"rows": p.rows})
    mine_b = mine.data.cast("B")  # the values, without a copy
    slots = _c.match_build(mine_b, p.ob)
    ch.step = "psi-match"
    hits: list[np.ndarray] = []
    got, limit = 0, (3 + p.stash) * m
    while True:
        msg = ch.recv("ot-v", "ot-v-end")
        if msg.kind == "ot-v-end":
            if msg.meta.get("n") != got or got != limit:
                raise ProtocolError(f"{ch.peer} sent {got} OPRF values (announced "
                                    f"{msg.meta.get('n')!r}); {m} keys make {limit}")
            break
        if len(msg.body) % p.ob:
            raise ProtocolError(f"{ch.peer} sent an OPRF batch that is not whole "
                                f"{p.ob}-byte values")
        got += len(msg.body) // p.ob
        if got > limit:
            raise ProtocolError(f"{ch.peer} sent more than the {limit} OPRF values its "
                                f"{m} keys allow")
        if view is not None:
            view.received.append(msg.body)
        hits.append(np.frombuffer(_c.match_probe(slots, mine_b, p.ob, msg.body),
                                  dtype=np.uint32))
        progress("psi-match", got, limit)
    if view is not None:
        view.inputs = b"".join(inputs)
    del slots, mine_b, mine, table
    idx = owner[np.unique(np.concatenate([np.zeros(0, np.uint32), *hits]))]
    wanted = ids[np.sort(idx)]
    del owner, idx, hits, ids  # only the matched ids are needed to read their keys again
    inter = strings_of(keys, domain, wanted)
    if view is not None:
        view.k0, view.k1, view.code_key, view.params = bytes(k0), bytes(k1), code_key, p
    return PsiResult(len(inter), n, m, inter)


def sender(ch: Channel, keys: Keys, job_id: str,
           progress: Progress = _no_progress, *, min_receiver: int = 1,
           view: SenderView | None = None,
           workdir: str | os.PathLike[str] | None = None) -> PsiResult:
    """The sender's half: learns |X| only. A receiver with fewer than `min_receiver`
    keys is refused before anything of the sender's is sent. The OPRF values go to
    spill files under `workdir` (default: the system's temporary directory), one per
    range of their leading bits, and are sent a file at a time, each shuffled."""
    ch.step = "psi-hash"
    ids = distinct_ids(keys, job_domain(job_id), progress)
    m = len(ids)
    ch.step = "psi-ot-base"
    msg = ch.recv("ot-hello")
    n, bins, stash = (msg.meta.get(k) for k in ("n", "bins", "stash"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, bins, stash)):
        raise ProtocolError(f"{ch.peer} sent malformed OT parameters {msg.meta!r}")
    assert isinstance(n, int) and isinstance(bins, int) and isinstance(stash, int)
    if n < 0 or not (n <= bins <= 4 * n + 1024) or not 0 <= stash <= MAX_STASH:
        raise ProtocolError(f"{ch.peer} asked for {bins} bins and {stash} stash slots for "
                            f"{n} keys; the sender allows n..4n+1024 bins and at most "
                            f"{MAX_STASH} stash slots")
    if 0 < n < min_receiver:
        raise PolicyError("min_group_size", f"{ch.peer} asked for a PSI over {n} key(s), "
                                            f"fewer than the minimum {min_receiver}; a set "
                                            f"that small is a membership test")
    big_a = _point(msg.body, "base-OT point A", ch.peer)
    if n == 0 or m == 0:
        ch.send("ot-base", {"m": m})
        return PsiResult(-1, n, m, None)
    p = params(n, m, bins, stash)
    offs, items = _c.simple(ids.data, p.bins)
    s = os.urandom(ROW)
    code_key = os.urandom(16)
    pts, ks = bytearray(), bytearray()
    for i, c in enumerate(bits(s)):
        b = _scalar()
        bb = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(b))
        if c:
            bb = bytes(sodium.crypto_core_ed25519_add(big_a, bb))
        pts += bb
        ks += _kdf(i, big_a, bb, _mul(b, big_a, ch.peer))
    ch.step = "psi-ot-base"
    ch.send("ot-base", {"m": m}, code_key + bytes(pts))
    with Workdir(workdir if workdir is not None else tempfile.gettempdir()) as wd:
        _send_values(ch, wd, p, ks, s, code_key, offs, items, ids, progress, view)
    if view is not None:
        view.ks, view.s, view.code_key, view.params = bytes(ks), s, code_key, p
    return PsiResult(-1, n, m, None)


def _send_values(ch: Channel, wd: Workdir, p: Params, ks: bytearray, s: bytes,
                 code_key: bytes, offs: bytes, items: bytes, ids: np.ndarray[Any, Any],
                 progress: Progress, view: SenderView | None) -> None:
    """The OT extension at the sender and its OPRF values: (3 + stash) m of them,
    padded with random ones (an item whose hash functions share a bin yields fewer),
    spilled by their leading bits (a function of each value alone, so the order of
    the files says nothing of bins), each file shuffled uniformly when sent."""
    ch.step = "psi-ot-extend"
    spill = _Buckets(wd, "oprf", SPILL_PARTS, 1 << 20)
    total = (3 + p.stash) * p.m
    start = written = 0
    while True:
        msg = ch.recv("ot-u", "ot-u-end")
        if msg.kind == "ot-u-end":
            if msg.meta.get("rows") != p.rows or start != p.rows:
                raise ProtocolError(f"{ch.peer} ended the OT extension after {start} of "
                                    f"{p.rows} rows")
            break
        rows = min(BLOCK_ROWS, p.rows - start)
        if msg.meta.get("start") != start or rows <= 0 or len(msg.body) != rows * ROW:
            raise ProtocolError(f"{ch.peer} sent a malformed OT block (start "
                                f"{msg.meta.get('start')!r}, {len(msg.body)} bytes; expected "
                                f"start {start}, {max(rows, 0) * ROW} bytes)")
        if view is not None:
            view.u.append(msg.body)
        vals = _c.send_block(bytes(ks), s, code_key, msg.body, start, rows, offs, items,
                             p.bins, p.stash, ids.data, p.ob)
        written += len(vals) // p.ob
        _spill(spill, vals, p.ob)
        start += rows
        progress("psi-ot-extend", start, p.rows)
    if written > total:
        raise PrivacyError(f"the OT extension made {written} values for {total}")
    for i in range(written, total, 1 << 20):  # the padding, spilled the same way
        _spill(spill, os.urandom(min(1 << 20, total - i) * p.ob), p.ob)
    spill.close()
    ch.step = "psi-send"
    step = BLOCK_ROWS * ROW // p.ob * p.ob
    for path in spill.paths:
        part = bytearray(path.read_bytes())
        path.unlink()
        _c.shuffle(part, p.ob)  # a uniform order within the file
        mv = memoryview(part)
        for i in range(0, len(part), step):
            ch.send("ot-v", body=bytes(mv[i:i + step]))
        del mv, part
    ch.send("ot-v-end", {"n": total})


def _spill(spill: _Buckets, vals: bytes, ob: int) -> None:
    """Append OPRF values to the spill file of their leading bits."""
    v = np.frombuffer(vals, np.uint8).reshape(-1, ob)
    part = v[:, 0] >> (8 - SPILL_BITS)
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=SPILL_PARTS)
    v = v[order]
    at = 0
    for i, c in enumerate(counts):
        if c:
            spill.add(i, v[at:at + c].tobytes(), int(c))
            at += int(c)


def run_half(side: str, ch: Channel, keys: Keys, job_id: str, progress: Progress,
             *, min_receiver: int = 1, workdir: str | os.PathLike[str] | None = None,
             ) -> dict[str, Any]:
    """A job's PSI half: the left party receives; returns what this party learns,
    in the same shape as the ECDH half's answer."""
    if side == "left":
        r = receiver(ch, keys, job_id, progress)
        return {"size": r.size, "own_keys": r.receiver_count, "peer_keys": r.sender_count,
                "intersection": r.intersection}
    r = sender(ch, keys, job_id, progress, min_receiver=min_receiver, workdir=workdir)
    return {"own_keys": r.sender_count, "peer_keys": r.receiver_count}
