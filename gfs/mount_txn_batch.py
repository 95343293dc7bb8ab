"""Metadata changes of concurrent callers committed in one write transaction.

A caller that finds no commit running commits its change at once, in its own
thread (a lone change waits for nobody and pays no thread hand-off); changes
that arrive while it commits are queued, and the first of them commits them all
in one transaction, so concurrent mkdirs, chmods and renames share one commit
and one flush; the entries the changes of a batch will look up are read ahead
together (`ReadTxn.read_ahead`: one round trip on a database server). Each
change is a pure function of the transaction (it may run again): if a batch
fails, its changes run one by one, so each caller gets its own result or error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

from gfs.meta import MetaEngine, WriteTxn

T = TypeVar("T")
#: (directory inode, names below one another) a change will look up
Walks: TypeAlias = Sequence[tuple[int, Sequence[str]]]


class _Change(Generic[T]):
    """One queued change: its function, and its outcome once committed."""

    def __init__(self, fn: Callable[[WriteTxn], T], walks: Walks = (),
                 manifests: bool = False) -> None:
        self.fn = fn
        self.walks = walks
        self.manifests = manifests
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False
        #: Set when the change is committed or its caller must commit the queue.
        self.wake = threading.Event()


class TxnBatcher:
    """Commits the changes of concurrent `run` calls in shared transactions of
    `engine`; `prelude` runs first in every transaction (once per batch)."""

    def __init__(self, engine: MetaEngine,
                 prelude: Callable[[WriteTxn], None] | None = None) -> None:
        self._engine = engine
        self._prelude = prelude
        self._lock = threading.Lock()
        self._queue: list[_Change[Any]] = []
        self._busy = False
        #: Transactions committed, and the changes in them (for tests and stats).
        self.batches = 0
        self.changes = 0

    def queued(self) -> int:
        """How many changes wait for a transaction."""
        with self._lock:
            return len(self._queue)

    def run(self, fn: Callable[[WriteTxn], T], walks: Walks = (), *,
            manifests: bool = False) -> T:
        """Commit `fn` (with the changes queued beside it); its result, or what it
        raised. Returns once the transaction holding it has committed. `walks`: the
        entries `fn` will look up (with `manifests`, also the manifests at their ends),
        read ahead with those of the rest of the batch."""
        me: _Change[T] = _Change(fn, walks, manifests)
        with self._lock:
            self._queue.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.wake.wait()  # committed by another caller, or told to commit the queue
        if not me.done:
            self._lead(me)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]  # set: done without error

    def _lead(self, me: _Change[Any]) -> None:
        """Commit the queue until `me` is committed; then hand the rest on to the
        first caller still waiting (so no caller keeps committing for others)."""
        while not me.done:
            with self._lock:
                batch, self._queue = self._queue, []
            self._commit(batch)
        with self._lock:
            if self._queue:
                self._queue[0].wake.set()  # it leads next
            else:
                self._busy = False

    def _commit(self, batch: list[_Change[Any]]) -> None:
        def apply(txn: WriteTxn) -> list[Any]:
            _read_ahead(txn, batch)
            if self._prelude is not None:
                self._prelude(txn)
            return [ch.fn(txn) for ch in batch]

        try:
            results = self._engine.transact(apply)
        except BaseException as e:
            if len(batch) == 1:
                self._finish(batch[0], None, e)
            else:
                for ch in batch:  # one by one: each error reaches its own caller
                    self._one(ch)
            return
        with self._lock:
            self.batches += 1
            self.changes += len(batch)
        for ch, res in zip(batch, results, strict=True):
            self._finish(ch, res, None)

    def _one(self, ch: _Change[Any]) -> None:
        """Run `ch` alone, recording its result or error."""
        def apply(txn: WriteTxn) -> Any:
            _read_ahead(txn, [ch])
            if self._prelude is not None:
                self._prelude(txn)
            return ch.fn(txn)

        try:
            res = self._engine.transact(apply)
        except BaseException as e:
            self._finish(ch, None, e)
            return
        with self._lock:
            self.batches += 1
            self.changes += 1
        self._finish(ch, res, None)

    @staticmethod
    def _finish(ch: _Change[Any], result: Any, error: BaseException | None) -> None:
        ch.result, ch.error, ch.done = result, error, True
        ch.wake.set()


def _read_ahead(txn: WriteTxn, batch: list[_Change[Any]]) -> None:
    walks = [w for ch in batch for w in ch.walks]
    if walks:
        txn.read_ahead(walks, manifests=any(ch.manifests for ch in batch))


__all__ = ["TxnBatcher", "Walks"]
