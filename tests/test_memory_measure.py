"""bench._measure.run reports the peak RSS (and anonymous RSS) of the command, not of
the bench that started it."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_anonymous_peak_counts_the_heap_not_a_mapped_file(tmp_path: Path) -> None:
    """A command that reads a 200 MiB file through mmap has a high RSS but little
    anonymous memory; one that fills 200 MiB of heap has both. Each keeps its pages for
    one second of work (ten sampling periods) before it exits."""
    data = tmp_path / "mapped"
    with data.open("wb") as f:
        f.truncate(200 * MIB)
    hold = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass\n"
    mapped = run([sys.executable, "-c", "import mmap, sys\n"
                  f"f = open({str(data)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, "
                  "access=mmap.ACCESS_READ)\nsum(m[i] for i in range(0, len(m), 4096))\n"
                  + hold])
    heap = run([sys.executable, "-c", "b = bytearray(200 << 20); "
                "b[::4096] = b'x' * len(b[::4096])\n" + hold])
    assert mapped.maxrss_kib >= 190 * 1024, mapped.maxrss_kib
    assert mapped.anon_kib < 64 * 1024, mapped.anon_kib
    assert heap.anon_kib >= 190 * 1024, heap.anon_kib


def test_the_wait_between_samples_ends_when_the_command_exits() -> None:
    """The sampling wait returns at the command's exit, not at the end of its period
    (Popen.wait(timeout) polled with sleeps of up to 50 ms, added to every wall time)."""
    import subprocess
    import time

    from bench._measure import _exit_signal

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    with _exit_signal(proc) as exited:
        t0 = time.monotonic()
        exited(60.0)
        waited = time.monotonic() - t0
    assert proc.wait(5) == 0
    assert waited < 30.0, waited  # woken by the exit, long before the period's end
