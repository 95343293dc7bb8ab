"""How many chunks one remote fetch asks for: enough that the fetch threads keep a few
bandwidth-delay products of the link in flight.

`LinkMeter` measures the link from the chunk requests themselves: the round trip is
the least time to first byte seen lately (queueing at the site only adds to it), the
rate the bytes answered over a sliding window. `depth_for` turns (rate, round trip)
into bytes to keep in flight, `chunks_per_request` into a request size; `RequestSizer`
ties them to a meter for a memory tier's prefetch (`MemoryTier(batch=...)`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

#: Bandwidth-delay products kept in flight. The rate is measured through the pipeline
#: it sizes: each fetch thread waits a round trip T between its answers, so a depth D
#: delivers r = D / (T + D / B) of a link of rate B, and D = F * r * T settles at
#: D = (F - 1) * B * T, r = (1 - 1 / F) * B. A factor of 4 settled at 0.75 of the
#: link (measured: gfs:// cold over a 40 ms WAN at 0.70); 10 settles at 0.9, or at
#: what the read-ahead window allows (32 MiB over 118 MB/s x 40 ms: 0.88).
DEPTH_FACTOR = 10.0
#: Most bytes of chunks a client keeps in flight however long the link.
MEMORY_CAP = 64 << 20
#: Seconds of requests the meter remembers.
WINDOW_S = 2.0
#: Chunk size assumed before any answer was measured (the chunker's mean).
DEFAULT_CHUNK = 64 << 10
#: Each fetch thread's share of the fewest bytes kept in flight, in chunks (8 threads
#: x 16 x 64 KiB: 8 MiB, what the fetches asked before the sizing).
LEAST_CHUNKS = 16
#: Fewest chunks one request asks for. Fewer, larger requests cost less CPU per MB at
#: both ends, where the CPU bounds a read (a cold 1 GiB read through the global mount on
#: loopback, 64 against 16, two A/B pairs at load 9-12: mount 3.50/3.26 against
#: 4.27/3.79 ms per MB, site 2.76/2.76 against 2.84/3.26); a read-ahead of a few
#: requests is still split among the threads (`MemoryTier.prefetch`).
REQUEST_CHUNKS = 64
#: Most chunks per request (one /v1/chunks/get of the federation client).
MOST_CHUNKS = 1024


def depth_for(rate: float, rtt: float, *, floor: int, cap: int) -> int:
    """Bytes to keep in flight on a link of `rate` bytes/s and round trip `rtt`
    seconds: DEPTH_FACTOR bandwidth-delay products, at least `floor`, at most `cap`
    (the cap wins over the floor)."""
    want = DEPTH_FACTOR * rate * rtt if rate > 0 and rtt > 0 else 0.0
    return max(1, min(cap, max(floor, math.ceil(want))))


def chunks_per_request(depth: int, requests: int, chunk_bytes: int, *,
                       least: int = REQUEST_CHUNKS, most: int = MOST_CHUNKS) -> int:
    """Chunks each of `requests` parallel requests asks for so that together they hold
    `depth` bytes of chunks of `chunk_bytes` (within [least, most])."""
    per = depth // max(1, requests * max(1, chunk_bytes))
    return max(least, min(most, per))


class LinkMeter:
    """Rate, round trip and chunk size of the chunk answers seen in the last `window`
    seconds (thread-safe; `clock` is injectable for tests)."""

    def __init__(self, window: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        # (start, first byte after, end, bytes, chunks) of each answer, oldest first
        self._seen: deque[tuple[float, float, float, int, int]] = deque()

    def observe(self, start: float, ttfb: float, end: float, nbytes: int,
                chunks: int) -> None:
        """One answer: sent at `start`, its first byte `ttfb` seconds later, its last at
        `end` (clock seconds), `nbytes` bytes holding `chunks` chunks."""
        with self._lock:
            self._seen.append((start, ttfb, end, nbytes, chunks))
            self._trim(end)

    def _trim(self, now: float) -> None:
        while self._seen and self._seen[0][2] < now - self.window:
            self._seen.popleft()

    def estimate(self) -> tuple[float, float, int]:
        """(bytes/s, round-trip seconds, bytes per chunk) lately; (0, 0, DEFAULT_CHUNK)
        before any answer."""
        with self._lock:
            self._trim(self.clock())
            seen = list(self._seen)
        if not seen:
            return 0.0, 0.0, DEFAULT_CHUNK
        span = max(e for _, _, e, _, _ in seen) - min(s for s, _, _, _, _ in seen)
        nbytes = sum(b for _, _, _, b, _ in seen)
        chunks = sum(c for _, _, _, _, c in seen)
        rate = nbytes / span if span > 0 else 0.0
        rtt = min(t for _, t, _, _, _ in seen)
        return rate, rtt, nbytes // chunks if chunks else DEFAULT_CHUNK


class RequestSizer:
    """Chunks per prefetch request for `requests` fetch threads over the link `meter`
    measures: `depth_for` bounded by `window` (the reader's read-ahead) and `cap`."""

    def __init__(self, meter: LinkMeter, *, requests: int, window: int,
                 cap: int = MEMORY_CAP) -> None:
        self.meter, self.requests, self.window, self.cap = meter, requests, window, cap
        self.last_depth = 0
        """Bytes in flight the last call sized for (for benchmarks and tests)."""

    def __call__(self) -> int:
        rate, rtt, chunk = self.meter.estimate()
        floor = self.requests * LEAST_CHUNKS * chunk
        depth = depth_for(rate, rtt, floor=floor, cap=min(self.cap, self.window))
        self.last_depth = depth
        return chunks_per_request(depth, self.requests, chunk)


__all__ = ["DEPTH_FACTOR", "MEMORY_CAP", "REQUEST_CHUNKS", "LinkMeter", "RequestSizer",
           "chunks_per_request", "depth_for"]
