"""`SiteSource`: the federation's chunk fetching as a `gfs.read.ChunkSource`.

A chunk is asked of the sites holding the file it belongs to — nearest first
by measured round-trip time from the client's `near` site — and verified (a
foreign site's copy is decrypted with the owner's keys, then verified); a
missing or corrupt copy is skipped and the next site asked. Which sites hold a
file is learnt from its manifest (`note`); a file not noted is looked for at
every site of its owner entity. A grantee (the caller is not the owner) reads
the chunks its own `near` site holds there, the rest at the owner's primary
(naming the file, so the primary checks the grant). This adapter leaves the federation client's
transport as it is; the memory tier wraps it (`FederationClient.cache`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gfs import paths
from gfs.errors import ChunkMissingError, HutongError, UnavailableSiteError
from gfs.read.source import PathOf

if TYPE_CHECKING:
    from gfs.federation.client import FederationClient

#: Files whose holders are remembered (the oldest are forgotten first).
NOTED_FILES = 4096


class SiteSource:
    """Verified chunks from the sites of the federation, through `fc`."""

    def __init__(self, fc: FederationClient) -> None:
        self.fc = fc
        self._holders: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release: the client owns the connections."""

    def note(self, path: str, sites: Sequence[str]) -> None:
        """Record that the current version of file `path` is held by `sites`."""
        with self._lock:
            self._holders.pop(path, None)
            if len(self._holders) >= NOTED_FILES:
                self._holders.pop(next(iter(self._holders)))
            self._holders[path] = list(sites)

    def _holders_of(self, path: str, owner: str) -> list[str]:
        with self._lock:
            known = self._holders.get(path)
        if known:
            return known
        return sorted(n for n, s in self.fc.sites().items() if s.get("entity") == owner)

    def _fetch(self, path: str, cids: list[bytes], *, blobs: bool) -> dict[bytes, bytes]:
        parts = paths.split(paths.normalize(path)) if path else []
        if not parts:
            raise ChunkMissingError(path, f"chunk {cids[0].hex()}: no file names the entity "
                                    "that owns it; read it through a path /ENTITY/...")
        owner = parts[0]
        if self.fc.owner_mode(owner):
            holders = self._holders_of(path, owner)
        else:  # a grantee reads the file's chunks at the primary (first of the holders)
            with self._lock:
                known = self._holders.get(path)
            if known is None:
                try:
                    known = [self.fc.primary(path)[1]]
                except HutongError:  # no such entity, or no primary: no holder to ask
                    known = []
            holders = known[:1]
        todo = list(dict.fromkeys(cids))
        got: dict[bytes, bytes] = {}
        problems: list[str] = []
        if not self.fc.owner_mode(owner):  # dedup credit: what the caller's site holds
            got.update(self._own_copies(todo, problems, blobs=blobs))
            todo = [c for c in todo if c not in got]
        answered = tried = False
        for site in self.fc.candidates(holders, owner):
            if not todo:
                break
            tried = True
            try:
                fetched = self.fc.fetch_chunks(site, owner, todo, problems, blobs=blobs,
                                               path=path)
            except HutongError as e:
                problems.append(f"{site}: {e}")
                answered = answered or not isinstance(e, ConnectionError)
                continue
            answered = True
            got.update(fetched)
            todo = [c for c in todo if c not in got]
        if todo:
            ids = ", ".join(c.hex() for c in todo[:4]) + (", ..." if len(todo) > 4 else "")
            if tried and not answered:  # no holder could be asked: not a data loss
                raise UnavailableSiteError(path, f"{len(todo)} chunks of {path} ({ids}): no "
                                           f"site holding them answered ({holders}): "
                                           + "; ".join(problems)[:800])
            what = "a plain (owner's) copy" if blobs else "a readable copy"
            raise ChunkMissingError(path, f"{len(todo)} chunks of {path} ({ids}) have no "
                                    f"readable copy: none has {what} at any of {holders}: "
                                    + "; ".join(problems)[:800])
        return got

    def _own_copies(self, cids: list[bytes], problems: list[str], *,
                    blobs: bool) -> dict[bytes, bytes]:
        """Chunks of another entity's file that the caller's own `near` site holds
        already (the same bytes have the same id; each copy is verified), so a
        grantee reads only the others across the network from the owner's primary."""
        me, near = self.fc.me, self.fc.near
        rec = self.fc.sites().get(near or "") if me and near else None
        if rec is None or rec.get("entity") != me or rec.get("status") != "up":
            return {}
        try:
            return self.fc.fetch_chunks(str(near), str(me), cids, problems, blobs=blobs)
        except HutongError as e:
            problems.append(f"{near}: {e}")
            return {}

    # -- the ChunkSource protocol --------------------------------------------------------
    def get(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid` of file `path` (`/ENTITY/...`)."""
        return self._fetch(path, [cid], blobs=False)[cid]

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Verified raw bytes of `cids`: one batched request per site per file."""
        return self._by_file(cids, path_of, blobs=False)

    def _by_file(self, cids: Iterable[bytes], path_of: PathOf | None, *,
                 blobs: bool) -> dict[bytes, bytes]:
        by_path: dict[str, list[bytes]] = defaultdict(list)
        for cid in dict.fromkeys(cids):
            by_path[path_of(cid) if path_of else ""].append(cid)
        out: dict[bytes, bytes] = {}
        for path, ids in by_path.items():
            out.update(self._fetch(path, ids, blobs=blobs))
        return out

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified stored blob of chunk `cid` from one of the owner's own sites
        (other sites hold it encrypted for the owner)."""
        return self._fetch(path, [cid], blobs=True)[cid]

    def get_blob_many(self, cids: Iterable[bytes], *,
                      path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Verified stored blobs of `cids` from the owner's own sites, one batched request
        per site per file (what a disk tier keeps; `gfs.read.source.BlobBatches`)."""
        return self._by_file(cids, path_of, blobs=True)

    def worth_caching(self, cid: bytes) -> bool:
        """Always: every copy is across the network."""
        return True


__all__ = ["SiteSource"]
