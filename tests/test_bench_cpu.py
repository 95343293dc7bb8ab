"""CPU per MB in the benches: `bench._measure.cpu_seconds` of a process and its
children, and the globalfs table's CPU rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench._fsops import Timing
from bench._measure import cpu_seconds
from bench.globalfs import FULL, Results, Tree, Verdicts, cpu_row

BURN = """
import sys, time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
sys.stdout.write("x")
sys.stdout.flush()
time.sleep(60)
"""


def test_cpu_seconds_counts_the_children_of_a_process() -> None:
    """A shell that burns nothing itself, its child 0.3 s: the tree's CPU is the child's
    (as a mount run under `ip netns exec` or a daemon's workers)."""
    sh = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{BURN}'; true"],
                          stdout=subprocess.PIPE)
    try:
        assert sh.stdout is not None and sh.stdout.read(1) == b"x"  # burnt, still alive
        assert cpu_seconds(sh.pid) >= 0.25
        assert cpu_seconds(sh.pid, tree=False) < 0.1
    finally:
        for kids in Path(f"/proc/{sh.pid}/task").glob("*/children"):
            for kid in kids.read_text().split():
                os.kill(int(kid), signal.SIGKILL)
        sh.wait(timeout=30)
    assert cpu_seconds(sh.pid) == 0.0  # gone: nothing to count


def test_globalfs_rows_show_cpu_per_mb_of_each_process() -> None:
    v = Verdicts(Results(), FULL.size, FULL.entries)
    tree = Tree(cold=Timing(10.0, 1, 1, 1 << 30), cold_cpu={"client": 3.5, "site": 2.0})
    cpu_row(v, "lo_mount", "loopback", "hutong mount", tree, 1 << 30)
    cpu_row(v, "lo_embedded", "loopback", "embedded mount", Tree(), 1 << 30)  # not measured
    assert v.rows == [["loopback", "cold read: CPU per MB", "hutong mount",
                       "client 3.26 ms, site 1.86 ms", "", "", ""]]
    assert v.figures == {"cold_lo_mount_client_ms_mb": 3.26, "cold_lo_mount_site_ms_mb": 1.86}
