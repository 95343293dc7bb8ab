"""`Kept`: one value fetched over the network, trusted for a TTL and renewed in the
background while it is only a little old, so that callers do not wait a round trip
for it every TTL (stale-while-revalidate, as HTTP caches do)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("hutong.federation")

T = TypeVar("T")

#: A value up to this many TTLs old is served while it is fetched again in the
#: background; an older one is fetched in the caller's thread.
RENEW_WITHIN = 4.0
#: Threads renewing values in the background (two: one slow source does not hold up
#: every other renewal).
RENEW_THREADS = 2


class Kept(Generic[T]):
    """The value `fetch` returns, kept `ttl` seconds (thread-safe).

    `get()` returns it while fresh; up to RENEW_WITHIN TTLs old, returns it and starts
    one background fetch; older (or with `refresh`), fetches it in the caller's thread,
    and an error of that fetch is the caller's. A background fetch that fails leaves
    the old value (logged), to be fetched in the caller's thread once too old.
    """

    def __init__(self, fetch: Callable[[], T], ttl: float, *, what: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.ttl = ttl
        self.what = what
        self.clock = clock
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None
        self._renewing = False

    def peek(self) -> T | None:
        """The value kept, however old (None if never fetched)."""
        with self._lock:
            return None if self._value is None else self._value[1]

    def age(self) -> float:
        """Seconds since the value kept was fetched (infinite if never)."""
        with self._lock:
            return float("inf") if self._value is None else self.clock() - self._value[0]

    def get(self, refresh: bool = False) -> T:
        with self._lock:
            kept = self._value
            age = float("inf") if kept is None else self.clock() - kept[0]
            renew = (kept is not None and not refresh and self.ttl <= age
                     < self.ttl * RENEW_WITHIN and not self._renewing)
            if renew:
                self._renewing = True
        if kept is not None and not refresh and age < self.ttl * RENEW_WITHIN:
            if renew:
                _renewals().put(self._renew)
            return kept[1]
        return self._fetch()

    def _fetch(self) -> T:
        at = self.clock()
        value = self.fetch()
        with self._lock:
            if self._value is None or self._value[0] <= at:
                self._value = (at, value)
        return value

    def _renew(self) -> None:
        try:
            self._fetch()
        except Exception as e:  # the caller's thread fetches it once it is too old
            log.info("renewing %s in the background failed: %s", self.what, e)
        finally:
            with self._lock:
                self._renewing = False


_queue_lock = threading.Lock()
_queue: queue.SimpleQueue[Callable[[], None]] | None = None


def _renewals() -> queue.SimpleQueue[Callable[[], None]]:
    """The queue of background renewals, served by RENEW_THREADS long-lived daemon
    threads: their connections (one per thread, `HttpClient`) stay open between
    renewals, so a renewal costs one request, not a TCP and a TLS handshake as well."""
    global _queue
    with _queue_lock:
        if _queue is None:
            q: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
            for i in range(RENEW_THREADS):
                threading.Thread(target=_serve, args=(q,), daemon=True,
                                 name=f"hutong-renew-{i}").start()
            _queue = q
        return _queue


def _serve(q: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        q.get()()  # each renewal catches its own errors


__all__ = ["RENEW_WITHIN", "Kept"]
