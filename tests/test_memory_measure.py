"""bench._measure.run reports the peak RSS of the command, not of the bench that started it."""

from __future__ import annotations

import sys

from bench._measure import run

MIB = 1 << 20


def test_peak_rss_of_a_small_command_excludes_the_large_parent() -> None:
    ballast = bytearray(300 * MIB)  # zero-filled pages are touched: resident in this process
    ballast[::4096] = b"x" * len(ballast[::4096])
    small = run(["true"])
    assert small.maxrss_kib < 64 * 1024, small.maxrss_kib
    del ballast


def test_peak_rss_counts_what_the_command_itself_touches() -> None:
    touch = "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"
    big = run([sys.executable, "-c", touch])
    assert big.maxrss_kib >= 200 * 1024, big.maxrss_kib
