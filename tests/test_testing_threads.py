"""The thread harness the concurrency tests share fails on errors and hangs."""

from __future__ import annotations

import threading

import pytest

from gfs.testing.threads import run_threads


def test_every_call_runs_once_and_together_means_at_once() -> None:
    seen: list[int] = []
    gate = threading.Barrier(4)

    def work(k: int) -> None:
        gate.wait(5)  # only passes if all four run at the same time
        seen.append(k)

    run_threads(work, 4, deadline=10, together=True)
    assert sorted(seen) == [0, 1, 2, 3]


def test_an_error_in_any_thread_is_raised_in_the_caller() -> None:
    def work(k: int) -> None:
        if k == 2:
            raise ValueError("thread 2 failed")

    with pytest.raises(ValueError, match="thread 2 failed"):
        run_threads(work, 3, deadline=10)


def test_a_hung_thread_fails_the_run_by_its_deadline() -> None:
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match=r"still running after 0\.2 s: work-1"):
            run_threads(lambda k: None if k != 1 else release.wait(30) and None, 2,
                        deadline=0.2)
    finally:
        release.set()
