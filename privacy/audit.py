"""The audit log of a party: keyed, hash-chained, append-only, in its own
namespace at /ENTITY/.privacy/audit.log (one JSON record per line), with its
head anchored at its peers.

`hash = HMAC-SHA256(k, prev || canonical JSON of the record without "hash")`,
`prev` the previous record's hash (64 zeros first) and `k` derived from the
entity's signing key, so no one without the key can re-chain an edited log.
Every job ends with each party's head countersigned by the other and kept in
the other's log (`anchor` records); the next job between them starts by
checking that each log still holds the head the peer anchored, so a rewrite
(even with the key), a dropped record or a cut tail is caught and the job
refused. No job runs on a chain that fails verification. Appends hold a lock
file in the state directory, so concurrent jobs of one store never fork the
chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from gfs.client import Client
from privacy import keys
from privacy.channel import Channel, Identity
from privacy.errors import AuditError

GENESIS = "0" * 64
KINDS = ("job-start", "policy-refused", "release", "suppressed", "job-done", "job-failed",
         "query", "anchor")
_PERSON = b"hutong-audit-v2"


def audit_path(entity: str) -> str:
    """Where an entity's audit log lives in its namespace."""
    return f"/{entity}/.privacy/audit.log"


def log_key(ident: Identity) -> bytes:
    """The entity's audit MAC key, derived from its signing key."""
    return hashlib.blake2b(bytes(ident.key), digest_size=32, person=_PERSON[:16]).digest()


def record_hash(key: bytes, prev: str, rec: dict[str, Any]) -> str:
    """The keyed chained hash of a record (without its "hash" field)."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, prev.encode() + canon.encode(), hashlib.sha256).hexdigest()


def anchor_message(entity: str, seq: int, head: str) -> bytes:
    """What a peer signs when it countersigns `entity`'s head."""
    return f"hutong-audit-anchor/1 {entity} {seq} {head}".encode()


class AuditLog:
    """One entity's audit log in a store (keyed with the entity's key there)."""

    def __init__(self, fs: Client, entity: str, identity: Identity | None = None) -> None:
        """`identity`: the entity's signing identity (default: its privacy key in the
        store's state directory; at a site, the entity's federation key)."""
        self.fs, self.entity, self.path = fs, entity, audit_path(entity)
        self.identity = identity if identity is not None else keys.identity(fs.state, entity)
        self._key = log_key(self.identity)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.fs.state / "locks" / f"privacy-audit-{self.entity}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _raw(self) -> bytes:
        return self.fs.read_bytes(self.path) if self.fs.exists(self.path) else b""

    def records(self) -> list[dict[str, Any]]:
        """All records, oldest first (not verified; see `verify`)."""
        out = []
        for i, line in enumerate(self._raw().splitlines()):
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AuditError(f"{self.path}: record {i} is not JSON; the log was "
                                 f"altered") from e
        return out

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one record and return it (verifies the chain's tail first)."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit record kind {kind!r}")
        with self._locked():
            raw = self._raw()
            lines = raw.splitlines()
            prev, seq = GENESIS, 0
            if lines:
                last = json.loads(lines[-1])
                prev, seq = str(last["hash"]), int(last["seq"]) + 1
                if record_hash(self._key, str(last.get("prev")), last) != prev:
                    raise AuditError(f"{self.path}: the last record (seq {last.get('seq')}) "
                                     f"does not match its keyed hash; run `hutong audit "
                                     f"verify`")
            rec: dict[str, Any] = {"seq": seq, "time": round(time.time(), 3), "prev": prev,
                                   "entity": self.entity, "kind": kind, **fields}
            rec["hash"] = record_hash(self._key, prev, rec)
            line = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            parent = self.path.rsplit("/", 1)[0]
            self.fs.mkdir(parent, parents=True, exist_ok=True)
            self.fs.write_bytes(self.path, raw + line.encode() + b"\n")
            return rec

    def verify(self) -> int:
        """Check the whole chain; returns the number of records or raises AuditError
        naming the first bad record."""
        prev = GENESIS
        recs = self.records()
        for i, rec in enumerate(recs):
            if rec.get("seq") != i:
                raise AuditError(f"{self.path}: record {i} has seq {rec.get('seq')}; records "
                                 f"were removed or reordered")
            if rec.get("prev") != prev:
                raise AuditError(f"{self.path}: record {i} does not chain to record {i - 1}")
            if not hmac.compare_digest(record_hash(self._key, prev, rec),
                                       str(rec.get("hash"))):
                raise AuditError(f"{self.path}: record {i} ({rec.get('kind')}) was altered "
                                 f"(keyed hash mismatch)")
            prev = str(rec["hash"])
        return len(recs)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest record; (-1, GENESIS) for an empty log."""
        recs = self.records()
        return (int(recs[-1]["seq"]), str(recs[-1]["hash"])) if recs else (-1, GENESIS)

    def anchored_head(self, partner: str) -> tuple[int, str] | None:
        """The head of `partner`'s log that this log last countersigned, if any."""
        for r in reversed(self.records()):
            if r.get("kind") == "anchor" and r.get("partner") == partner:
                return int(r["peer_seq"]), str(r["peer_head"])
        return None

    def check_anchor(self, seq: int, head: str, partner: str) -> None:
        """Raise AuditError unless record `seq` of this log has hash `head` (the head
        `partner` countersigned at the end of the last job between us)."""
        recs = self.records()
        if seq >= len(recs):
            raise AuditError(f"{self.path}: {partner} countersigned record {seq}, but the "
                             f"log has {len(recs)} records: its tail was cut")
        if seq >= 0 and recs[seq].get("hash") != head:
            raise AuditError(f"{self.path}: record {seq} is not the one {partner} "
                             f"countersigned: the log was rewritten")

    def releases(self, partner: str) -> int:
        """Aggregate releases (joins and queries, not PSI) between this entity and
        `partner`."""
        return sum(1 for r in self.records() if r.get("kind") == "release"
                   and r.get("partner") == partner and "what" not in r)

    def spent(self, partner: str) -> float:
        """Privacy budget (epsilon) already spent by `partner` on this entity."""
        return sum(float(r.get("epsilon") or 0.0) for r in self.records()
                   if r.get("kind") == "release" and r.get("partner") == partner)


class AnchorStore(Protocol):
    """A keeper of countersigned audit heads outside the party (the registry)."""

    def check(self, log: AuditLog) -> None:
        """Raise AuditError unless `log` still holds the head last anchored here."""

    def anchor(self, log: AuditLog) -> None:
        """Have `log`'s current head countersigned and kept here."""


def open_session(ch: Channel, log: AuditLog, peer: str) -> None:
    """Before a job: verify our own chain, tell the peer which of its heads we
    countersigned last, and check the head it countersigned of ours is still there."""
    ch.step = "audit-check"
    log.verify()
    mine = log.anchored_head(peer)
    ch.send("audit-check", {"yours": list(mine) if mine else None})
    theirs = ch.recv("audit-check").meta.get("yours")
    if theirs is not None:
        log.check_anchor(int(theirs[0]), str(theirs[1]), peer)


def close_session(ch: Channel, log: AuditLog, peer: str, peer_key_hex: str) -> None:
    """After a job: countersign the peer's head, have ours countersigned, and keep
    both (with the peer's signature) in an `anchor` record."""
    ch.step = "audit-anchor"
    seq, head = log.head()
    ch.send("audit-head", {"seq": seq, "head": head})
    theirs = ch.recv("audit-head").meta
    p_seq, p_head = int(theirs["seq"]), str(theirs["head"])
    sig = log.identity.key.sign(anchor_message(peer, p_seq, p_head)).signature
    ch.send("audit-countersign", {"sig": sig.hex()})
    got = bytes.fromhex(str(ch.recv("audit-countersign").meta["sig"]))
    try:
        nacl.signing.VerifyKey(bytes.fromhex(peer_key_hex)).verify(
            anchor_message(log.entity, seq, head), got)
    except nacl.exceptions.BadSignatureError as e:
        raise AuditError(f"{peer}'s countersignature of {log.path} head {seq} does not "
                         f"verify with its pinned key") from e
    log.append("anchor", partner=peer, peer_seq=p_seq, peer_head=p_head, own_seq=seq,
               own_head=head, countersig=got.hex())


def note_failure(log: AuditLog, kind: str, **fields: Any) -> None:
    """Record a failed or refused job; a log that cannot take it (it fails
    verification) must not hide the job's own error."""
    with contextlib.suppress(AuditError):
        log.append(kind, **fields)
