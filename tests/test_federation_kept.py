"""`gfs.federation.kept.Kept`: a value kept for a TTL and renewed in the background
while a little old (stale-while-revalidate), with an injected clock."""

from __future__ import annotations

import threading

import pytest

from gfs.federation.kept import RENEW_THREADS, RENEW_WITHIN, Kept
from tests.test_meta_cache import Clock
from tests.test_mount_helpers import wait_for


class Source:
    """Values 1, 2, 3, ... one per fetch; `gate` holds a fetch until set."""

    def __init__(self) -> None:
        self.n = 0
        self.fail = False
        self.fetched = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.threads: list[str] = []
        self.thread_objects: list[threading.Thread] = []

    def __call__(self) -> int:
        self.threads.append(threading.current_thread().name)
        self.thread_objects.append(threading.current_thread())
        assert self.gate.wait(10)
        try:
            if self.fail:
                raise ConnectionError("source down")
            self.n += 1
            return self.n
        finally:
            self.fetched.set()


def test_fresh_then_renewed_in_the_background_then_fetched_in_the_callers_thread() -> None:
    clock, src = Clock(), Source()
    k = Kept(src, 1.0, what="test", clock=clock)
    assert k.get() == 1 and k.get() == 1 and src.n == 1  # fresh: no fetch
    clock.now = 1.5  # a little old: the old value at once, a new one fetched behind
    src.gate.clear()
    src.fetched.clear()
    assert k.get() == 1
    assert k.get() == 1  # one background fetch at a time
    src.gate.set()
    wait_for(lambda: k.peek() == 2, "the background renewal", timeout=10)
    assert src.n == 2
    assert src.threads[-1].startswith("hutong-renew-")
    clock.now = 1.5 + RENEW_WITHIN * 1.0  # too old: fetched in the caller's thread
    assert k.get() == 3 and src.threads[-1] == threading.current_thread().name
    assert k.get(refresh=True) == 4


def test_a_failed_renewal_keeps_the_old_value_and_a_too_old_one_raises() -> None:
    clock, src = Clock(), Source()
    k = Kept(src, 1.0, what="test", clock=clock)
    assert k.get() == 1
    src.fail = True
    clock.now = 2.0
    src.fetched.clear()
    assert k.get() == 1
    assert src.fetched.wait(10)
    clock.now = 10.0
    with pytest.raises(ConnectionError):
        k.get()
    assert k.peek() == 1


def test_renewals_run_on_long_lived_threads() -> None:
    """Every background renewal runs on one of a few threads that stay: their
    connections stay open, so a renewal is one request, not a new TCP and TLS
    handshake each (a new thread each time opened a new connection)."""
    clock, src = Clock(), Source()
    k = Kept(src, 1.0, what="test", clock=clock)
    assert k.get() == 1
    for n in range(2, 8):
        clock.now += 1.5  # a little old each time: one renewal behind
        k.get()
        wait_for(lambda n=n: k.peek() == n, "the background renewal", timeout=10)  # type: ignore[misc]
    renewers = {id(t) for t in src.thread_objects[1:]}
    assert len(src.thread_objects) == 7 and len(renewers) <= RENEW_THREADS
    assert all(t.is_alive() for t in src.thread_objects[1:])
