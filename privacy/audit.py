"""The audit log of a party: hash-chained, append-only, in its own namespace at
/ENTITY/.privacy/audit.log (one JSON record per line).

`hash = SHA-256(prev || canonical JSON of the record without "hash")`; `prev`
is the previous record's hash (64 zeros first). Appends hold a lock file in the
state directory, so concurrent jobs of one store never fork the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gfs.client import Client
from privacy.errors import AuditError

GENESIS = "0" * 64
KINDS = ("job-start", "policy-refused", "release", "suppressed", "job-done", "job-failed",
         "query")


def audit_path(entity: str) -> str:
    """Where an entity's audit log lives in its namespace."""
    return f"/{entity}/.privacy/audit.log"


def record_hash(prev: str, rec: dict[str, Any]) -> str:
    """The chained hash of a record (without its "hash" field)."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev.encode() + canon.encode()).hexdigest()


class AuditLog:
    """One entity's audit log in a store."""

    def __init__(self, fs: Client, entity: str) -> None:
        self.fs, self.entity, self.path = fs, entity, audit_path(entity)

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
                if record_hash(str(last.get("prev")), last) != prev:
                    raise AuditError(f"{self.path}: the last record (seq {last.get('seq')}) "
                                     f"does not match its hash; run `hutong audit verify`")
            rec: dict[str, Any] = {"seq": seq, "time": round(time.time(), 3), "prev": prev,
                                   "entity": self.entity, "kind": kind, **fields}
            rec["hash"] = record_hash(prev, rec)
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
            if record_hash(prev, rec) != rec.get("hash"):
                raise AuditError(f"{self.path}: record {i} ({rec.get('kind')}) was altered "
                                 f"(hash mismatch)")
            prev = str(rec["hash"])
        return len(recs)

    def spent(self, partner: str) -> float:
        """Privacy budget (epsilon) already spent by `partner` on this entity."""
        return sum(float(r.get("epsilon") or 0.0) for r in self.records()
                   if r.get("kind") == "release" and r.get("partner") == partner)
