"""Other entities' owner-encrypted blobs kept by a site under storage agreements
(docs/format.md, "Vault and storage agreements", "Sealed delta blobs"; docs/trust.md).
A sealed delta's bases are kept while the delta is (`ROOT/OWNER/deps/de/DELTA.BASE`, a
marker a base).

    vault = Vault(state / "vault")
    vault.put_many("bank-a", [(kid, blob, ())], quota=agreement["quota"])
    vault.pin_part("bank-a", "r1", "9f3c...", 0, 2, kids)     # a pin set in batches
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gfs.federation.http import ApiError, BadRequestError

STAGE_SECONDS = 3600.0
"""How long a pin set sent in batches may stay incomplete (its parts keep blobs meanwhile)."""


class Vault:
    """Blobs by owner and keyed id (`ROOT/OWNER/ab/abcd...`), pins per rule
    (`ROOT/OWNER/pins/RULE.json`), and the bytes each owner uses; thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._started = time.time()
        """Temporaries older than this were left by an earlier process (killed mid-put)."""

    def _path(self, owner: str, kid: bytes) -> Path:
        h = kid.hex()
        return self.root / owner / h[:2] / h

    def _blobs(self, owner: str) -> list[Path]:
        return [f for f in (self.root / owner).glob("??/*") if not f.name.startswith(".")]

    def _used_locked(self, owner: str) -> int:
        if owner not in self._used:
            self._used[owner] = sum(f.stat().st_size for f in self._blobs(owner))
        return self._used[owner]

    def used(self, owner: str) -> int:
        """Bytes of `owner`'s blobs held here."""
        with self._lock:
            return self._used_locked(owner)

    def owners(self) -> list[dict[str, Any]]:
        """`{owner, bytes, blobs, deltas, rules, temporaries}` for every owner with data or
        pins here."""
        if not self.root.exists():
            return []
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            blobs = self._blobs(d.name)
            out.append({"owner": d.name, "bytes": sum(f.stat().st_size for f in blobs),
                        "blobs": len(blobs), "deltas": len(self._dependencies(d.name)),
                        "rules": sorted(p.stem for p in (d / "pins").glob("*.json")),
                        "temporaries": len(self._temporaries(d.name))})
        return out

    def _temporaries(self, owner: str) -> list[Path]:
        """Temporary names of blob and pin writes (`_write`) under `owner`."""
        return list((self.root / owner).glob("**/.*.tmp"))

    def clean_temporaries(self) -> int:
        """Remove temporaries an earlier process left (killed mid-write); ones of this
        process are in use or already renamed. Returns how many."""
        removed = 0
        if not self.root.exists():
            return 0
        for d in [p for p in self.root.iterdir() if p.is_dir()]:
            for f in self._temporaries(d.name):
                try:
                    if f.stat().st_mtime < self._started:
                        f.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def has(self, owner: str, kid: bytes, *, whole: bool = False) -> bool:
        """Whether `owner`'s blob `kid` is held (`whole`: and is not a sealed delta)."""
        if whole and self._deps_of(owner, kid):
            return False
        return self._path(owner, kid).exists()

    # -- sealed deltas and their bases ---------------------------------------------------
    def _deps(self, owner: str) -> Path:
        return self.root / owner / "deps"

    def _marker(self, owner: str, kid: bytes, base: bytes) -> Path:
        h = kid.hex()
        return self._deps(owner) / h[:2] / f"{h}.{base.hex()}"

    def _deps_of(self, owner: str, kid: bytes) -> list[Path]:
        """The dependency markers of blob `kid` (one a base if it is a sealed delta)."""
        h = kid.hex()
        return list((self._deps(owner) / h[:2]).glob(f"{h}.*"))

    def _dependencies(self, owner: str) -> list[tuple[str, str, Path]]:
        """(delta hex, base hex, marker) of every sealed delta recorded for `owner`."""
        out = []
        for m in self._deps(owner).glob("??/*.*"):
            delta, _, base = m.name.partition(".")
            if len(delta) == len(base) == 32:
                out.append((delta, base, m))
        return out

    def _check_base(self, owner: str, kid: bytes, base: bytes) -> None:
        if base == kid or not self._path(owner, base).exists() or self._deps_of(owner, base):
            raise BadRequestError(f"sealed delta {kid.hex()} of {owner!r} names base "
                                  f"{base.hex()}, which this site does not keep whole; "
                                  "send the chunk whole")

    def get(self, owner: str, kid: bytes) -> bytes | None:
        try:
            return self._path(owner, kid).read_bytes()
        except FileNotFoundError:
            return None

    def put_many(self, owner: str, items: Sequence[tuple[bytes, bytes, Sequence[bytes]]], *,
                 replace: bool = False, quota: int | None = None) -> int:
        """Store blobs `(keyed id, blob, base keyed ids)` (no bases: a whole blob); an
        existing one is kept unless `replace` (the owner's repair, whole blobs only). A
        sealed delta (one base, or two) needs each base kept whole here (400, nothing
        stored, otherwise); it keeps them from gc while it is kept. 507 (nothing stored)
        if `quota` bytes would be passed. Returns how many were written."""
        with self._lock:
            used = self._used_locked(owner)
            todo: list[tuple[Path, bytes, int, bytes, Sequence[bytes]]] = []
            for kid, blob, bases in items:
                if bases:
                    if replace:
                        raise BadRequestError(f"a repair of {kid.hex()} of {owner!r} must be "
                                              "a whole sealed blob, not a sealed delta")
                    for base in bases:
                        self._check_base(owner, kid, base)
                p = self._path(owner, kid)
                old = p.stat().st_size if p.exists() else None
                if old is None or replace:
                    todo.append((p, blob, old or 0, kid, bases))
            grow = sum(len(b) - old for _, b, old, _, _ in todo)
            if quota is not None and used + grow > quota:
                raise ApiError(f"the storage agreement for {owner!r} allows {quota} bytes; "
                               f"{used} are used and this put needs {grow} more; ask the host "
                               "for a larger agreement", 507, "quota_exceeded")
            for p, blob, old, kid, bases in todo:
                for base in bases:  # the markers first: a delta is never kept without them
                    self._write(self._marker(owner, kid, base), b"")
                self._write(p, blob)
                if not bases:  # stored whole (a repair of a delta): its bases are freed
                    for m in self._deps_of(owner, kid):
                        m.unlink(missing_ok=True)
                self._used[owner] = self._used.get(owner, 0) + len(blob) - old
            return len(todo)

    @staticmethod
    def _write(p: Path, blob: bytes) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- pins ------------------------------------------------------------------------
    def _pins(self, owner: str) -> Path:
        return self.root / owner / "pins"

    def pin(self, owner: str, rule: str, kids: list[str]) -> None:
        """Replace the pin set of `rule` with `kids` (hex keyed ids)."""
        self._write(self._pins(owner) / f"{rule}.json", json.dumps(sorted(set(kids))).encode())

    def pin_part(self, owner: str, rule: str, round_: str, batch: int, batches: int,
                 kids: list[str]) -> bool:
        """Part `batch` of `batches` of a new pin set of `rule`; when every part of
        `round_` is in, they replace the rule's pins at once (True). Until then the old
        set stays in force and the parts keep their blobs too."""
        d = self._pins(owner)
        self._write(d / f"{rule}.{round_}.{batch}.part", json.dumps(kids).encode())
        with self._lock:
            parts = [d / f"{rule}.{round_}.{i}.part" for i in range(batches)]
            if not all(p.exists() for p in parts):
                return False
            union: set[str] = set()
            for p in parts:
                union.update(json.loads(p.read_bytes()))
            self.pin(owner, rule, sorted(union))
            for p in d.glob(f"{rule}.*.part"):
                p.unlink(missing_ok=True)
            return True

    def unpin(self, owner: str, rule: str) -> bool:
        d = self._pins(owner)
        for p in d.glob(f"{rule}.*.part"):
            p.unlink(missing_ok=True)
        try:
            (d / f"{rule}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def _pinned(self, owner: str, now: float) -> set[str]:
        pinned: set[str] = set()
        d = self._pins(owner)
        for pf in d.glob("*.json"):
            pinned.update(json.loads(pf.read_bytes()))
        for pf in d.glob("*.part"):
            if pf.stat().st_mtime < now - STAGE_SECONDS:
                pf.unlink(missing_ok=True)  # an abandoned round
            else:
                pinned.update(json.loads(pf.read_bytes()))
        return pinned

    # -- reclaiming --------------------------------------------------------------------
    def remove_owner(self, owner: str) -> int:
        """Delete everything of `owner` (its agreement ended); returns the blobs removed."""
        with self._lock:
            n = len(self._blobs(owner))
            shutil.rmtree(self.root / owner, ignore_errors=True)
            self._used.pop(owner, None)
            return n

    def gc(self, keep: set[str] | None = None) -> int:
        """Delete blobs no pin names and no kept sealed delta depends on, and every owner
        not in `keep` (None: keep all owners); returns how many blobs."""
        removed = 0
        if not self.root.exists():
            return 0
        now = time.time()
        for d in [p for p in self.root.iterdir() if p.is_dir()]:
            if keep is not None and d.name not in keep:
                removed += self.remove_owner(d.name)
                continue
            with self._lock:
                self._used_locked(d.name)
                kept = self._kept(d.name, self._pinned(d.name, now))
                for f in self._blobs(d.name):
                    if f.name not in kept:
                        self._used[d.name] -= f.stat().st_size
                        f.unlink()
                        removed += 1
        return removed

    def _kept(self, owner: str, pinned: set[str]) -> set[str]:
        """`pinned` and the bases of the kept sealed deltas; drops the markers of deltas
        not kept (removed now, or never written: a kill -9 between marker and blob)."""
        kept = set(pinned)
        deps = self._dependencies(owner)
        grew = True
        while grew:  # chains have depth 1 (put_many), but follow any to be safe
            grew = False
            for delta, base, _ in deps:
                if delta in kept and base not in kept:
                    kept.add(base)
                    grew = True
        for delta, _, marker in deps:
            if delta in kept and self._path(owner, bytes.fromhex(delta)).exists():
                continue
            try:
                if delta not in kept or marker.stat().st_mtime < self._started:
                    marker.unlink()
            except FileNotFoundError:
                continue
        return kept

    def usage(self) -> int:
        """Bytes of every owner's blobs."""
        return sum(o["bytes"] for o in self.owners())
