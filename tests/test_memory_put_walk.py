"""A put of a big local tree holds a bounded, compact part of its walk.

The put's walk (gfs.put_walk) hands the put up to PUT_WALK_KEPT entries of a local
tree while it checks the whole tree before anything is written. Each kept entry was a frozen
dataclass with an os.stat_result (~960 bytes, float times included) and the bound
50,000: put's peak anonymous memory grew by 31 MiB from 10^4 to 10^5 files.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import gfs.put_walk as walk_mod

#: Bytes a kept entry may take (measured: ~510; the os.stat_result form took ~960).
ENTRY_BYTES = 650


def _tree(root: Path, dirs: int, per_dir: int) -> None:
    for d in range(dirs):
        sub = root / f"dir{d:03d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"file{f:05d}.txt").write_bytes(b"%d" % f)


def test_a_kept_walk_entry_is_compact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 4, 500)
    for _ in walk_mod.walk_local(src, os.stat(src)):  # one-time allocations aside
        pass
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = list(walk_mod.walk_local(src, os.stat(src)))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1 + 2 * 4 + 4 * 500 + 1
    assert (after - before) / len(kept) < ENTRY_BYTES
    assert walk_mod.PUT_WALK_KEPT * ENTRY_BYTES <= 16 << 20  # what a put may keep
    # the entry carries what the put uses, equal to the local stat
    entry = next(e for leaving, e in kept if e.rel == ("dir001", "file00007.txt"))
    st = os.stat(src / "dir001" / "file00007.txt")
    assert (entry.st.st_mode, entry.st.st_uid, entry.st.st_gid, entry.st.st_size,
            entry.st.st_atime_ns, entry.st.st_mtime_ns) == (
        st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns, st.st_mtime_ns)

