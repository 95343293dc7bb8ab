"""Bounded memory: the peak RSS of put, fsck, du and get does not grow with the store.

Each operation runs in a child process (a fresh interpreter) that opens the
store, notes its RSS, runs the operation over a tree of N small files and
reports how far its peak RSS (getrusage) rose above the open store. Memory is
deterministic enough to compare that growth at N and at 5N files. The memory
that is bounded by settings (the pack size, the LMDB map pages touched between
two trims, SQLite's page cache of a spilled table) is set small, so both runs
reach those bounds and the comparison sees only growth with the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench._metaops_scale import make_tree

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys
from gfs import Client
import gfs.meta.residency, gfs.spill
# small caps, so that N files already reach them: what is left to grow grows with N
# (the map trimmer's is small as shipped: TRIM_TICKS)
gfs.spill.CACHE_KIB = 1024
op, src, state, out, n = sys.argv[1:6]
with (Client.init(state, pack_size=1 << 20) if op == "put" else Client(state)) as fs:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if op == "put":
        fs.put(src + "/", "/data")
    elif op == "fsck":
        assert fs.fsck().ok
    elif op == "du":
        assert fs.du("/").files == int(n)
    else:
        fs.get("/data", out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(peak - base))
"""
OPS = ("put", "fsck", "du", "get")


def _growth(tmp: Path, n: int, root: Path = ROOT) -> dict[str, int]:
    """Peak RSS above the open store (KiB) of each operation (its own process), N files."""
    src = tmp / f"src{n}"
    make_tree(src, n)
    out: dict[str, int] = {}
    for op in OPS:
        proc = subprocess.run([sys.executable, "-c", CHILD, op, str(src), str(tmp / f"s{n}"),
                               str(tmp / f"out{n}"), str(n)],
                              capture_output=True, text=True, timeout=900, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[op] = json.loads(proc.stdout)
    assert sum(len(f) for _, _, f in os.walk(tmp / f"out{n}")) == n
    return out


def test_peak_rss_of_put_fsck_du_get_stays_flat_from_n_to_5n_files(tmp_path: Path) -> None:
    small, large = _growth(tmp_path, 10_000), _growth(tmp_path, 50_000)
    # measured (KiB above the open store, 10^4 -> 5*10^4 files): before streaming put
    # 17168 -> 77476, fsck 10164 -> 54240, du 4876 -> 26976, get 16660 -> 71448; now
    # put 7284 -> 21204, fsck 6748 -> 16888, du 3336 -> 4816, get 11600 -> 25200
    for op in OPS:
        assert large[op] <= 2 * small[op] + 12 * 1024, (op, small, large)
