"""Read-ahead of a put's files: read, cut and hash in batches on one thread, in order.

The main thread of a put runs the per-file Python (dedup lookups, delta plans, the
commit's rows) while the compression workers run zstd; reading, cutting and hashing
the next files in C (`chunking.load_chunked_many`, the GIL released for a whole batch)
runs beside them on this module's thread. Batches, not files, cross between threads:
a small file takes less time to read than a GIL hand-over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

#: A batch holds at most this many files or (by their sizes at the walk) bytes.
READ_BATCH_FILES = 256
READ_BATCH_BYTES = 4 << 20
#: Batches read ahead of the one whose files are being stored.
READ_DEPTH = 2
#: Walk entries (directories and files) held back per batch at most.
READ_BATCH_ENTRIES = 1024

E = TypeVar("E")
R = TypeVar("R")


class _Batch(Generic[E, R]):
    __slots__ = ("entries", "paths", "reads", "size")

    def __init__(self) -> None:
        self.entries: list[tuple[E, bool]] = []  # (entry, read?)
        self.paths: list[str] = []
        self.size = 0
        self.reads: Future[list[R]] | None = None


def read_ahead(entries: Iterable[E], wanted: Callable[[E], tuple[str, int] | None],
               read_many: Callable[[list[str]], list[R]], *, depth: int = READ_DEPTH,
               batch_files: int = READ_BATCH_FILES, batch_bytes: int = READ_BATCH_BYTES,
               batch_entries: int = READ_BATCH_ENTRIES,
               on_batch: Callable[[list[R]], None] | None = None,
               ) -> Generator[tuple[E, bool, R | None], None, None]:
    """Each of `entries` in order, with whether it was read and its read.

    `wanted(entry)` gives the (path, size) of an entry to read, or None. Wanted
    paths are read in batches by `read_many` (one result per path, in order) on
    one thread, at most `depth` batches ahead of the entry yielded, so at most
    `depth + 1` batches of at most `batch_files` files and about `batch_bytes`
    bytes (a file bigger than that alone) are held. An exception of `read_many`
    is raised at the first entry of its batch. `on_batch(reads)`, if given, is
    called with a batch's reads (on the consumer's thread) before its first entry
    is yielded. Closing the iterator (the consumer failed) cancels the batches not
    begun and waits for the running one.
    """
    if depth < 1 or batch_files < 1 or batch_entries < 1:
        raise ValueError("read_ahead needs depth, batch_files and batch_entries >= 1")
    pending: deque[_Batch[E, R]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="hutong-read") as pool:
        try:
            cur: _Batch[E, R] = _Batch()
            for entry in entries:
                want = wanted(entry)
                cur.entries.append((entry, want is not None))
                if want is not None:
                    cur.paths.append(want[0])
                    cur.size += want[1]
                if (len(cur.paths) >= batch_files or cur.size >= batch_bytes
                        or len(cur.entries) >= batch_entries):
                    if cur.paths:
                        cur.reads = pool.submit(read_many, cur.paths)
                    pending.append(cur)
                    cur = _Batch()
                    while len(pending) > depth:
                        yield from _emit(pending.popleft(), on_batch)
            if cur.paths:
                cur.reads = pool.submit(read_many, cur.paths)
            pending.append(cur)
            while pending:
                yield from _emit(pending.popleft(), on_batch)
        finally:
            for b in pending:
                if b.reads is not None:
                    b.reads.cancel()


def _emit(batch: _Batch[E, R], on_batch: Callable[[list[R]], None] | None,
          ) -> Iterator[tuple[E, bool, R | None]]:
    reads = batch.reads.result() if batch.reads is not None else []
    if len(reads) != len(batch.paths):
        raise RuntimeError(f"read_many gave {len(reads)} reads for {len(batch.paths)} paths")
    if on_batch is not None and reads:
        on_batch(reads)
    k = 0
    for entry, read in batch.entries:
        if read:
            yield entry, True, reads[k]
            k += 1
        else:
            yield entry, False, None
