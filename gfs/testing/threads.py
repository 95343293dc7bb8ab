"""Run a test's work on N threads and fail loudly if any raises or hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(work: Callable[[int], None], n: int, *, deadline: float,
                together: bool = False) -> None:
    """Call `work(k)` for k in 0..n-1, each on its own thread, and wait for all.

    With `together`, every call starts only once all n threads are running (a
    barrier), so they contend. Raises AssertionError if a thread is still running
    `deadline` seconds into its join, else re-raises the first exception a call
    raised.
    """
    errors: list[BaseException] = []
    start = threading.Barrier(n) if together else None

    def run(k: int) -> None:
        try:
            if start is not None:
                start.wait(deadline)
            work(k)
        except BaseException as e:  # re-raised in the caller's thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,), name=f"work-{k}") for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads still running after {deadline} s: {', '.join(hung)}"
    if errors:
        raise errors[0]
