"""The open pack that one writer's successive small commits append to.

A write session that commits a few small files writes a pack of its own, which
for a lone writer is one pack object (a file, its fsyncs and a rename) per file.
A `TailPack` given to `ChunkStore.writer` lets the next session continue the
pack the previous one committed instead: its new blobs are appended in place
(`LocalPool.append`), and the commit updates the pack's record (size, blob and
live counts). docs/format.md, "Appended packs", gives the rules; in short:

* readers only read blobs the index names, so a growing pack reads as before;
* a session resumes the pack only if its record is exactly as this writer left
  it (gc may have deleted or repacked it between sessions, holding its
  exclusive lock, which no session can hold at the same time);
* the tierer moves chunks while sessions run (it holds the gc lock shared
  too) and deletes a pack it emptied: if the resumed pack's record is gone at
  the commit, the commit fails with `TailPackGoneError` and changes nothing,
  and the writer commits its files again (the next session starts a new pack);
* a session that fails after appending forgets the pack: its bytes past the
  recorded size are an uncommitted tail, never referenced, which fsck counts
  and reports apart from damage.
"""

from __future__ import annotations

from gfs.errors import PoolObjectMissingError
from gfs.meta import ReadTxn
from gfs.packs import PackBuilder, pack_key


class TailPackGoneError(PoolObjectMissingError):
    """The pack a session resumed was emptied and deleted (by the tierer) before the
    session committed; nothing was committed: commit the same files again."""

    def __init__(self, pack_id: bytes) -> None:
        super().__init__(pack_key(pack_id), "the appended pack was removed meanwhile "
                         "(emptied by a tier move); nothing was committed, write the "
                         "files again")


class TailPack:
    """The pack a writer's sessions append to (one session at a time uses it)."""

    def __init__(self) -> None:
        self.builder: PackBuilder | None = None
        self.pool_id: int | None = None

    def resume(self, txn: ReadTxn) -> PackBuilder | None:
        """The builder to continue, if its pack's record in `txn` is as this writer
        committed it; else None (and the pack is forgotten)."""
        b = self.builder
        if b is None:
            return None
        rec = txn.get_pack(b.pack_id)
        if rec is None or rec.size != b.written or b.size != b.written \
                or rec.pool != self.pool_id:
            self.forget()
            return None
        return b

    def keep(self, builder: PackBuilder, pool_id: int) -> None:
        """Continue `builder` (just appended to pool `pool_id`) in the next session."""
        self.builder, self.pool_id = builder, pool_id

    def holds(self, builder: PackBuilder | None) -> bool:
        """Whether `builder` is the pack this tail continues."""
        return builder is not None and builder is self.builder

    def forget(self) -> None:
        """Start a new pack next time (this one is full, or a session failed)."""
        self.builder, self.pool_id = None, None


__all__ = ["TailPack", "TailPackGoneError"]
