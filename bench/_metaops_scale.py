"""The scale curve of `python -m bench metaops`: put, fsck, du, get and gc of N small files.

Each command runs as its own `hutong` process through bench._measure.run, which reports
its peak RSS (measured by GNU time, not inherited from the bench). Files are small and
distinct (one chunk each), 1000 to a directory; the curve is per-file time and
peak RSS at each N, and the target is both flat within 2x from the smallest to
the largest N.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench._measure import Run, hutong_cmd, run
from bench._scratch_fs import scratch_fs

#: Files per directory of the generated tree.
PER_DIR = 1000
#: Bytes per file (distinct content, one chunk each).
FILE_BYTES = 200
#: Where each N's scratch filesystem's image goes (the real disk, beside the ingest bench's).
SCRATCH_PARENT = Path(__file__).resolve().parent / ".work"
#: Bytes of scratch filesystem per file: the source and the restored copy at one 1 KiB
#: block and one 256-byte inode each, the store (~1.3 KiB a file at 10^6) and slack.
SCRATCH_BYTES_PER_FILE = 4608
#: Commands measured at each N, in order.
OPS = ("put", "fsck", "du", "get", "gc")


@dataclass(frozen=True)
class Point:
    """One N of the curve: per-op wall seconds, peak RSS (MiB) and CPU seconds (user +
    system: steadier than wall time on a shared machine)."""

    n: int
    seconds: dict[str, float]
    rss_mib: dict[str, float]
    cpu: dict[str, float]
    #: peak anonymous RSS (MiB): RSS less the pages of mapped files (the LMDB metadata)
    anon_mib: dict[str, float]

    def per_file_us(self, op: str) -> float:
        """Microseconds per file of `op`."""
        return self.seconds[op] / self.n * 1e6

    def cpu_per_file_us(self, op: str) -> float:
        """CPU microseconds per file of `op`."""
        return self.cpu[op] / self.n * 1e6


def make_tree(root: Path, n: int) -> None:
    """`n` distinct files of FILE_BYTES bytes, PER_DIR to a directory."""
    for i in range(n):
        d = root / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        body = (f"{i:012d}".encode() * (FILE_BYTES // 12 + 1))[:FILE_BYTES]
        fd = os.open(d / f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)


def measure_fresh(n: int) -> Point:
    """`measure` on a filesystem made for this N (bench/_scratch_fs.py), or in a temporary
    directory when one cannot be made. Why: the disk's root may have too few inodes for
    two copies of 10^7 files, and creating files right after a big removal is slow on
    ext4 without a journal, so removing one N's trees would slow the next N's."""
    with scratch_fs(SCRATCH_PARENT, max(4 << 30, n * SCRATCH_BYTES_PER_FILE),
                    f"scale-{os.getpid()}-{n}", inodes=2 * n + n // 100 + 100_000,
                    block_size=1024) as mnt:
        if mnt is not None:  # removed whole at the end: nothing to delete file by file
            return measure(mnt, n, clean=False)
    with tempfile.TemporaryDirectory(prefix="bench-metaops-scale-") as tmp:
        return measure(Path(tmp), n)


def measure(work: Path, n: int, clean: bool = True) -> Point:
    """Put `n` files into a fresh store, then fsck, du, get them back and gc; the trees
    and the store are removed at the end if `clean`."""
    src, state, out = work / f"src-{n}", work / f"state-{n}", work / f"out-{n}"
    make_tree(src, n)
    env = {**os.environ, "HUTONG_STATE": str(state)}
    hutong = hutong_cmd()
    run([*hutong, "-q", "init"], env=env)
    argv = {
        "put": [*hutong, "-q", "put", f"{src}/", "/data"],
        "fsck": [*hutong, "-q", "fsck"],
        "du": [*hutong, "-q", "du", "/"],
        "get": [*hutong, "-q", "get", "/data", str(out)],
        "gc": [*hutong, "-q", "gc"],
    }
    runs: dict[str, Run] = {}
    for op in OPS:
        runs[op] = r = run(argv[op], env=env)
        # progress on stderr, so a run stopped part way still shows what it measured
        print(f"scale N={n:,} {op}: {r.wall:.1f} s, {r.wall / n * 1e6:.0f} us/file "
              f"({r.cpu / n * 1e6:.0f} CPU), "
              f"peak {r.maxrss_kib / 1024:.0f} MiB ({r.anon_kib / 1024:.0f} anonymous), "
              f"load {os.getloadavg()[0]:.1f}",
              file=sys.stderr, flush=True)
    got = sum(len(files) for _, _, files in os.walk(out))
    if got != n:
        raise RuntimeError(f"get restored {got} files of {n}")
    for p in (src, state, out) if clean else ():
        shutil.rmtree(p)
    return Point(n, {op: r.wall for op, r in runs.items()},
                 {op: r.maxrss_kib / 1024 for op, r in runs.items()},
                 {op: r.cpu for op, r in runs.items()},
                 {op: r.anon_kib / 1024 for op, r in runs.items()})


def flat(points: list[Point], op: str) -> tuple[float, float]:
    """(ratio of per-file time, ratio of peak RSS) of `op`, largest N over smallest."""
    lo, hi = points[0], points[-1]
    return hi.per_file_us(op) / lo.per_file_us(op), hi.rss_mib[op] / lo.rss_mib[op]
