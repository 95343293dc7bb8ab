"""Group commit: one thread commits queued items in batches, so parallel writers
(the mount's closes, a site's small chunk puts) share one durable commit."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommitter(Generic[T]):
    """One thread that commits items in batches: `submit` returns once its item is
    committed; items submitted while a batch commits form the next batch, so
    parallel writers share one commit. With `expected` (how many more items are
    on their way, given the batch so far), a batch also waits up to `window`
    seconds for those, so closes that arrive together share one commit even when
    none is running; a lone writer (nothing expected) never waits. If a batch
    fails, its items are committed one by one, so each error reaches the caller
    whose item caused it. With `max_items` or `max_bytes` (`size` says an item's
    bytes), a batch stops growing at that cap and the rest waits for the next."""

    def __init__(self, commit_batch: Callable[[list[T]], None],
                 name: str = "hutong-commit", *,
                 expected: Callable[[list[T]], int] | None = None,
                 window: float = 0.0, max_items: int | None = None,
                 max_bytes: int | None = None,
                 size: Callable[[T], int] | None = None) -> None:
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs size (the bytes of an item)")
        self._commit_batch = commit_batch
        self._expected = expected
        self._window = window
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._size = size
        self._queue: queue.SimpleQueue[tuple[T, Future[None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        """Commit `item` (with whatever else is queued); raises what its commit raised."""
        self.submit_future(item).result()

    def submit_future(self, item: T) -> Future[None]:
        """Queue `item`; the future is done once it is committed (or its commit failed).
        Waiting on it needs no thread of a pool (the FUSE handlers await it)."""
        fut: Future[None] = Future()
        self._queue.put((item, fut))
        return fut

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = self._take(batch, None)
            if not stopping and self._expected is not None and self._window > 0:
                deadline = time.monotonic() + self._window
                while not stopping and not self._full(batch, self._bytes(batch)) and \
                        self._expected([it for it, _ in batch]) > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    stopping = self._take(batch, left)
            if stopping:
                self._queue.put(None)  # stop after this batch
            self._run(batch)

    def _take(self, batch: list[tuple[T, Future[None]]], wait: float | None) -> bool:
        """Move what is queued into `batch` (waiting up to `wait` seconds for the first
        when given) until it is full; True if the stop marker was met."""
        used = self._bytes(batch)
        while not self._full(batch, used):
            try:
                more = self._queue.get(timeout=wait) if wait is not None else \
                    self._queue.get_nowait()
            except queue.Empty:
                return False
            if more is None:
                return True
            batch.append(more)
            used += self._size(more[0]) if self._size is not None else 0
            wait = None
        return False

    def _bytes(self, batch: list[tuple[T, Future[None]]]) -> int:
        size = self._size
        return 0 if size is None else sum(size(it) for it, _ in batch)

    def _full(self, batch: list[tuple[T, Future[None]]], used: int) -> bool:
        """Whether `batch` (of `used` bytes) has reached the item or byte cap."""
        return (self._max_items is not None and len(batch) >= self._max_items) or \
            (self._max_bytes is not None and used >= self._max_bytes)

    def _run(self, batch: list[tuple[T, Future[None]]]) -> None:
        try:
            self._commit_batch([it for it, _ in batch])
        except BaseException as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for it, fut in batch:  # one by one, so each error reaches its file
                try:
                    self._commit_batch([it])
                except BaseException as e1:
                    fut.set_exception(e1)
                else:
                    fut.set_result(None)
            return
        for _, fut in batch:
            fut.set_result(None)
