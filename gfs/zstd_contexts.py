"""Per-thread caches of zstd contexts with a dictionary loaded.

Loading a dictionary (a delta's base, a metadata table's trained dictionary) into a
zstd context builds its match tables: on the release series' small files against a
64 KiB dictionary that cost 124 us a chunk where reusing the context cost 17 us. zstd
contexts are not safe across threads, so each thread keeps its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zstandard

from gfs.eviction import LRUPolicy

Context = zstandard.ZstdCompressor | zstandard.ZstdDecompressor


class ContextCache(threading.local):
    """One thread's contexts by key, evicted least recently used once the sizes given
    for them (their dictionaries' bytes) pass `bound`. The key must name the
    dictionary's bytes themselves (a digest of them), not an id the caller trusts: a
    damaged or wrong dictionary must neither use a context built from the right one nor
    leave one behind under the right name."""

    def __init__(self, bound: int) -> None:
        self.policy = LRUPolicy(bound)
        self.entries: dict[bytes, Context] = {}

    def get(self, key: bytes, size: int, make: Callable[[], Context]) -> Context:
        """The context cached under `key`, else `make()` (kept if it fits)."""
        ctx = self.entries.get(key)
        if ctx is not None:
            self.policy.hit(key)
            return ctx
        ctx = make()
        for gone in self.policy.admit(key, size):
            self.entries.pop(gone, None)
        if key in self.policy:
            self.entries[key] = ctx
        return ctx
