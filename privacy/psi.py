"""ECDH-PSI (semi-honest, two parties): the receiver learns the intersection or
only its size; the sender learns the receiver's set size. See docs/privacy.md.

Each half takes an authenticated `Channel`, the party's keys (any iterable,
duplicates allowed: streamed from a parquet table with `iter_keys`) and a
`GroupPool`. Distinct keys, blinded lists and the peer's values live in
partitioned temporary files (`privacy.spill`), so memory stays within a
budget whatever the set sizes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gfs.client import Client
from privacy.channel import Channel
from privacy.ec import POINT_BYTES, TRUNC_BYTES, GroupPool, job_domain, new_scalar, split
from privacy.errors import PolicyError, ProtocolError, QueryError
from privacy.spill import (
    DEFAULT_BUDGET,
    LEN,
    VALUE_COST,
    KeyPartitions,
    ValuePartitions,
    Workdir,
    positions,
    read_chunks,
    read_keys,
    shuffled,
)
from privacy.tables import BATCH_ROWS, iter_batches, key_strings

Progress = Callable[[str, int, int], None]
OUTPUTS = ("intersection", "cardinality")
#: A returned value and its 8-byte send position, as spilled for matching.
MATCH_REC = TRUNC_BYTES + 8
__all__ = ["DEFAULT_BUDGET", "OUTPUTS", "PsiResult", "iter_keys", "load_keys", "receiver",
           "sender", "shuffled"]


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


def iter_keys(fs: Client, path: str, column: str,
              batch_rows: int = BATCH_ROWS) -> Iterator[str]:
    """The non-null keys of `column` in table `path`, streamed (duplicates kept:
    the PSI halves remove them on disk)."""
    for b in iter_batches(fs, path, [column], batch_rows):
        for k in key_strings(b.column(0)):
            if k is not None:
                yield k


def _recv_stream(ch: Channel, kind: str, progress: Progress, total: int) -> Iterator[bytes]:
    done = 0
    size = TRUNC_BYTES if kind == "psi-c" else POINT_BYTES
    while True:
        m = ch.recv(kind, kind + "-end")
        if m.kind != kind:
            if int(m.meta.get("n", -1)) != done:
                raise ProtocolError(f"{ch.peer} announced {m.meta.get('n')} items of {kind} "
                                    f"but sent {done}")
            return
        if len(m.body) % size:
            raise ProtocolError(f"{ch.peer} sent a {kind} batch that is not whole values")
        done += len(m.body) // size
        progress(kind, done, total)
        yield m.body


@contextmanager
def _workdir(root: str | os.PathLike[str] | None) -> Iterator[Workdir]:
    with Workdir(root if root is not None else Path(tempfile.gettempdir()) / "hutong") as wd:
        yield wd


def _blind_own(pool: GroupPool, scalar: bytes, domain: bytes, keys: Iterable[str], wd: Workdir,
               budget: int, hint: int | None, batch_rows: int, progress: Progress,
               sent: BinaryIO | None) -> tuple[Path, int]:
    """[scalar]H(k) of the distinct keys in pseudo-random order, to a file; the
    keys themselves in the same order to `sent` (length-prefixed) if given."""
    if hint is None and isinstance(keys, Sized):
        hint = len(keys)
    parts = KeyPartitions(wd, keys, budget, hint)

    def batches() -> Iterator[list[str]]:
        for part in parts:
            for i in range(0, len(part), batch_rows):
                b = part[i:i + batch_rows]
                if sent is not None:
                    buf = bytearray()
                    for k in b:
                        kb = k.encode()
                        buf += LEN.pack(len(kb)) + kb
                    sent.write(buf)
                yield b

    path, n = wd.file("blinded"), 0
    with open(path, "wb") as out:
        for blob in pool.hash_mul(scalar, domain, batches()):
            out.write(blob)
            n += len(blob) // POINT_BYTES
            progress("psi-blind-own", n, hint if hint is not None else -1)
    return path, n


def _send_file(ch: Channel, kind: str, path: Path, n: int, batch_rows: int) -> None:
    for blob in read_chunks(path, batch_rows * POINT_BYTES):
        ch.send(kind, body=blob)
    path.unlink()
    ch.send(kind + "-end", {"n": n})


def receiver(ch: Channel, keys: Iterable[str], job_id: str, output: str, pool: GroupPool,
             progress: Progress = _no_progress, batch_rows: int = BATCH_ROWS, *,
             budget: int = DEFAULT_BUDGET, workdir: str | os.PathLike[str] | None = None,
             hint: int | None = None) -> PsiResult:
    """The receiver's half: sends [a]H(x) shuffled, blinds the sender's points, matches.
    Holds about `budget` bytes of data whatever the set sizes; the rest is in
    temporary files under `workdir`/tmp/psi, removed when the half returns or fails."""
    if output not in OUTPUTS:
        raise QueryError(f"PSI output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    with _workdir(workdir) as wd:
        return _receiver(ch, keys, job_id, output, pool, progress, batch_rows, budget, wd, hint)


def _receiver(ch: Channel, keys: Iterable[str], job_id: str, output: str, pool: GroupPool,
              progress: Progress, batch_rows: int, budget: int, wd: Workdir,
              hint: int | None) -> PsiResult:
    domain, alpha = job_domain(job_id), new_scalar()
    ch.step = "psi-blind-own"
    sent_path = wd.file("sent")
    with open(sent_path, "wb") as sent:
        a_path, n = _blind_own(pool, alpha, domain, keys, wd, budget, hint, batch_rows,
                               progress, sent if output == "intersection" else None)
    ch.step = "psi-send"
    _send_file(ch, "psi-a", a_path, n, batch_rows)
    ch.step = "psi-blind-peer"
    head = ch.recv("psi-b-size")
    n_sender = int(head.meta["n"])
    parts = ValuePartitions.count_for(n_sender * VALUE_COST + n * MATCH_REC, 1, budget)
    theirs = ValuePartitions(wd, "theirs", TRUNC_BYTES, parts, budget)
    for piece in pool.mul(alpha, _recv_stream(ch, "psi-b", progress, n_sender), TRUNC_BYTES):
        theirs.add(piece)
    theirs.close()
    ch.step = "psi-match"
    mine = ValuePartitions(wd, "mine", MATCH_REC, parts, budget)
    pos = 0
    for blob in _recv_stream(ch, "psi-c", progress, n):
        k = len(blob) // TRUNC_BYTES
        if pos + k > n:
            raise ProtocolError(f"{ch.peer} returned more blinded values than the {n} sent")
        recs = np.empty((k, MATCH_REC), dtype=np.uint8)
        recs[:, :TRUNC_BYTES] = np.frombuffer(blob, dtype=np.uint8).reshape(k, TRUNC_BYTES)
        recs[:, TRUNC_BYTES:] = positions(pos, k).view(np.uint8).reshape(k, 8)
        mine.add(recs.tobytes())
        pos += k
    mine.close()
    if pos != n:
        raise ProtocolError(f"{ch.peer} returned {pos} blinded values for {n} sent")
    matched: list[int] = []
    count = 0
    for tb, mb in zip(theirs, mine, strict=True):
        s = set(split(tb, TRUNC_BYTES))
        del tb
        for j in range(0, len(mb), MATCH_REC):
            if mb[j:j + TRUNC_BYTES] in s:
                count += 1
                if output == "intersection":
                    matched.append(int.from_bytes(mb[j + TRUNC_BYTES:j + MATCH_REC], "little"))
    inter = None
    if output == "intersection":
        want = set(matched)
        inter = sorted(k.decode() for i, k in enumerate(read_keys(sent_path)) if i in want)
    sent_path.unlink()
    return PsiResult(count, n, n_sender, inter)


def sender(ch: Channel, keys: Iterable[str], job_id: str, output: str, pool: GroupPool,
           progress: Progress = _no_progress, batch_rows: int = BATCH_ROWS, *,
           budget: int = DEFAULT_BUDGET, workdir: str | os.PathLike[str] | None = None,
           hint: int | None = None, min_receiver: int = 1) -> PsiResult:
    """The sender's half: sends [b]H(y) shuffled and [b] of the receiver's points
    (in the receiver's order for `intersection`, shuffled for `cardinality`).
    A receiver with fewer than `min_receiver` keys is refused before anything of
    the sender's is sent (a one-key set would be a membership test).
    Memory and temporary files as for `receiver`."""
    if output not in OUTPUTS:
        raise QueryError(f"PSI output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    with _workdir(workdir) as wd:
        return _sender(ch, keys, job_id, output, pool, progress, batch_rows, budget, wd, hint,
                       min_receiver)


def _sender(ch: Channel, keys: Iterable[str], job_id: str, output: str, pool: GroupPool,
            progress: Progress, batch_rows: int, budget: int, wd: Workdir,
            hint: int | None, min_receiver: int) -> PsiResult:
    domain, beta = job_domain(job_id), new_scalar()
    ch.step = "psi-blind-own"
    b_path, n = _blind_own(pool, beta, domain, keys, wd, budget, hint, batch_rows, progress,
                           None)
    ch.step = "psi-receive"
    a_path, n_receiver = wd.file("theirs"), 0
    with open(a_path, "wb") as f:
        for blob in _recv_stream(ch, "psi-a", progress, -1):
            f.write(blob)
            n_receiver += len(blob) // POINT_BYTES
    if 0 < n_receiver < min_receiver:  # an empty set tests nothing
        raise PolicyError("min_group_size", f"{ch.peer} asked for a PSI over {n_receiver} "
                                            f"key(s), fewer than the minimum {min_receiver}; "
                                            f"a set that small is a membership test")
    ch.step = "psi-send"
    ch.send("psi-b-size", {"n": n})
    _send_file(ch, "psi-b", b_path, n, batch_rows)
    ch.step = "psi-blind-peer"
    chunks = read_chunks(a_path, batch_rows * POINT_BYTES)
    if output == "intersection":
        for piece in pool.mul(beta, chunks, TRUNC_BYTES):
            ch.send("psi-c", body=piece)
    else:
        parts = ValuePartitions.count_for(n_receiver, VALUE_COST, budget)
        mixed = ValuePartitions(wd, "mixed", TRUNC_BYTES, parts, budget, random=True)
        for piece in pool.mul(beta, chunks, TRUNC_BYTES):
            mixed.add(piece)
        mixed.close()
        for data in mixed:  # random partitions, each shuffled: a uniform permutation
            items = split(data, TRUNC_BYTES)
            del data
            order = shuffled(len(items))
            for i in range(0, len(order), batch_rows):
                ch.send("psi-c", body=b"".join(items[j] for j in order[i:i + batch_rows]))
    a_path.unlink()
    ch.send("psi-c-end", {"n": n_receiver})
    return PsiResult(-1, n_receiver, n, None)
