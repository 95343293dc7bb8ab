"""The site's write lock: exclusive for changes that must run alone (namespace edits,
gc, repair, pins), shared for file writes, which may run side by side.

    with site.write_lock:            # exclusive, as a plain lock
        ...
    with site.write_lock.shared():   # alongside other shared holders
        ...

A waiting exclusive holder stops new shared ones, so a stream of writes cannot
starve gc.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType


class WriteLock:
    """A writer-preferring shared/exclusive lock; `with lock:` holds it exclusively."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting

    def __enter__(self) -> WriteLock:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            finally:
                self._waiting -= 1
            self._exclusive = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock alongside other shared holders (no exclusive one)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._waiting == 0)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()
