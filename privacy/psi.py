"""ECDH-PSI (semi-honest, two parties): the receiver learns the intersection or
only its size; the sender learns the receiver's set size. See docs/privacy.md.

Each half takes an authenticated `Channel`, the party's distinct keys and a
`GroupPool`; the keys are read from a parquet table with `load_keys`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gfs.client import Client
from privacy.channel import Channel
from privacy.ec import POINT_BYTES, TRUNC_BYTES, GroupPool, job_domain, new_scalar, split
from privacy.errors import ProtocolError, QueryError
from privacy.tables import BATCH_ROWS, iter_batches, key_strings

Progress = Callable[[str, int, int], None]
OUTPUTS = ("intersection", "cardinality")


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class PsiResult:
    """What the receiver learns (the sender's result has `intersection=None` and
    `size=-1`)."""

    size: int
    receiver_count: int
    sender_count: int
    intersection: list[str] | None = None


def load_keys(fs: Client, path: str, column: str, batch_rows: int = BATCH_ROWS) -> list[str]:
    """The distinct non-null keys of `column` in table `path`, in first-seen order."""
    seen: dict[str, None] = {}
    for b in iter_batches(fs, path, [column], batch_rows):
        for k in key_strings(b.column(0)):
            if k is not None:
                seen[k] = None
    return list(seen)


def shuffled(n: int) -> list[int]:
    """A uniformly random permutation of range(n) from the OS generator."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _batches(items: Sequence[str], order: Sequence[int], size: int) -> Iterator[list[str]]:
    for i in range(0, len(order), size):
        yield [items[j] for j in order[i:i + size]]


def _recv_stream(ch: Channel, kind: str, progress: Progress, total: int) -> Iterator[bytes]:
    done = 0
    while True:
        m = ch.recv(kind, kind + "-end")
        if m.kind != kind:
            if int(m.meta.get("n", -1)) != done:
                raise ProtocolError(f"{ch.peer} announced {m.meta.get('n')} items of {kind} "
                                    f"but sent {done}")
            return
        if len(m.body) % POINT_BYTES and kind != "psi-c":
            raise ProtocolError(f"{ch.peer} sent a {kind} batch that is not whole points")
        done += len(m.body) // (TRUNC_BYTES if kind == "psi-c" else POINT_BYTES)
        progress(kind, done, total)
        yield m.body


def receiver(ch: Channel, keys: Sequence[str], job_id: str, output: str, pool: GroupPool,
             progress: Progress = _no_progress, batch_rows: int = BATCH_ROWS) -> PsiResult:
    """The receiver's half: sends [a]H(x) shuffled, blinds the sender's points, matches."""
    if output not in OUTPUTS:
        raise QueryError(f"PSI output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    domain, alpha = job_domain(job_id), new_scalar()
    perm = shuffled(len(keys))
    ch.step = "psi-blind-own"
    a_blobs = []
    for blob in pool.hash_mul(alpha, domain, _batches(keys, perm, batch_rows)):
        a_blobs.append(blob)
        progress("psi-blind-own", sum(len(b) for b in a_blobs) // POINT_BYTES, len(keys))
    ch.step = "psi-send"
    for blob in a_blobs:
        ch.send("psi-a", body=blob)
    ch.send("psi-a-end", {"n": len(keys)})
    del a_blobs
    ch.step = "psi-blind-peer"
    head = ch.recv("psi-b-size")
    n_sender = int(head.meta["n"])
    theirs: set[bytes] = set()
    for piece in pool.mul(alpha, _recv_stream(ch, "psi-b", progress, n_sender), TRUNC_BYTES):
        theirs.update(split(piece, TRUNC_BYTES))
    ch.step = "psi-match"
    matched: list[int] = []
    pos = 0
    for blob in _recv_stream(ch, "psi-c", progress, len(keys)):
        for c in split(blob, TRUNC_BYTES):
            if c in theirs:
                matched.append(pos)
            pos += 1
    if pos != len(keys):
        raise ProtocolError(f"{ch.peer} returned {pos} blinded values for {len(keys)} sent")
    inter = sorted(keys[perm[i]] for i in matched) if output == "intersection" else None
    return PsiResult(len(matched), len(keys), n_sender, inter)


def sender(ch: Channel, keys: Sequence[str], job_id: str, output: str, pool: GroupPool,
           progress: Progress = _no_progress, batch_rows: int = BATCH_ROWS) -> PsiResult:
    """The sender's half: sends [b]H(y) shuffled and [b] of the receiver's points
    (in the receiver's order for `intersection`, shuffled for `cardinality`)."""
    if output not in OUTPUTS:
        raise QueryError(f"PSI output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    domain, beta = job_domain(job_id), new_scalar()
    ch.step = "psi-blind-own"
    b_blobs = []
    for blob in pool.hash_mul(beta, domain, _batches(keys, shuffled(len(keys)), batch_rows)):
        b_blobs.append(blob)
        progress("psi-blind-own", sum(len(b) for b in b_blobs) // POINT_BYTES, len(keys))
    ch.step = "psi-receive"
    a_blobs = list(_recv_stream(ch, "psi-a", progress, -1))
    n_receiver = sum(len(b) for b in a_blobs) // POINT_BYTES
    ch.step = "psi-send"
    ch.send("psi-b-size", {"n": len(keys)})
    for blob in b_blobs:
        ch.send("psi-b", body=blob)
    ch.send("psi-b-end", {"n": len(keys)})
    del b_blobs
    ch.step = "psi-blind-peer"
    if output == "intersection":
        for piece in pool.mul(beta, a_blobs, TRUNC_BYTES):
            ch.send("psi-c", body=piece)
    else:
        items = [c for piece in pool.mul(beta, a_blobs, TRUNC_BYTES)
                 for c in split(piece, TRUNC_BYTES)]
        order = shuffled(len(items))
        step = batch_rows
        for i in range(0, len(order), step):
            ch.send("psi-c", body=b"".join(items[j] for j in order[i:i + step]))
    ch.send("psi-c-end", {"n": n_receiver})
    return PsiResult(-1, n_receiver, len(keys), None)
