"""Reading a put's next small files on another thread while the caller commits.

A put's main thread spends most of its time in Python (resemblance lookups, the
metadata commit). Reading, cutting and hashing a small file in C took less time
than handing the GIL over, so it ran on the main thread, holding the GIL: nothing
overlapped. Here the next files are read in batches by one native call
(`gfs.store.read_prepared_many`) that releases the GIL once per batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from gfs import chunking
from gfs.store import Prepared, read_prepared_many

T = TypeVar("T")
#: A batch ends at this many files or bytes.
BATCH_FILES = 64
BATCH_BYTES = 8 << 20
#: Batches read ahead of the caller, and items held at most while they are read.
AHEAD = 2
WINDOW = 4096

_Loaded = Prepared | OSError | None


class _Slot:
    __slots__ = ("future", "index", "last")

    def __init__(self, index: int) -> None:
        self.future: Future[list[_Loaded]] | None = None
        self.index = index
        self.last = False


def read_ahead(items: Iterable[T], wanted: Callable[[T], tuple[str, int] | None],
               params: chunking.ChunkParams, pool: ThreadPoolExecutor
               ) -> Iterator[tuple[T, _Loaded]]:
    """Each item of `items`, in order, with the file `wanted(item)` names ((path, size),
    or None: nothing to read) read and prepared on `pool`: a `Prepared`, None (too
    big to read whole: stream it), or the OSError reading it raised (raise it where
    the sequential read would have). Holds at most AHEAD batches and WINDOW items."""
    source = iter(items)
    pending: deque[tuple[T, _Slot | None]] = deque()
    paths: list[str] = []
    slots: list[_Slot] = []
    size = 0
    inflight = 0

    def submit() -> None:
        nonlocal paths, slots, size, inflight
        if not paths:
            return
        future = pool.submit(read_prepared_many, paths, params)
        for slot in slots:
            slot.future = future
        slots[-1].last = True
        paths, slots, size = [], [], 0
        inflight += 1

    exhausted = False
    while True:
        while not exhausted and inflight < AHEAD and len(pending) < WINDOW:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            want = wanted(item)
            if want is None:
                pending.append((item, None))
                continue
            new = _Slot(len(paths))
            paths.append(want[0])
            slots.append(new)
            size += want[1]
            pending.append((item, new))
            if len(paths) >= BATCH_FILES or size >= BATCH_BYTES:
                submit()
        if not pending:
            return
        item, slot = pending.popleft()
        if slot is None:
            yield item, None
            continue
        if slot.future is None:  # the caller caught up with a partial batch
            submit()
        assert slot.future is not None
        loaded = slot.future.result()[slot.index]
        if slot.last:
            inflight -= 1
        yield item, loaded
