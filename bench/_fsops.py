"""The globalfs bench's data set and the operations it times on any mounted tree.

The same tree goes into every system: `big.bin` (random bytes: nothing
compresses or deduplicates), `list/` and `stat/` with `entries` empty files
each (one is listed with `ls -l`, the other stat'ed file by file, both cold),
and `creates/` made during the run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench._measure import drop_page_cache, read_file, write_random
from gfs.client import Client

CREATE_SIZE = 4096


@dataclass(frozen=True)
class Dataset:
    """The local source file and the sizes of the tree every system gets."""

    big: Path
    entries: int
    creates: int

    @property
    def size(self) -> int:
        return self.big.stat().st_size

    def names(self) -> list[str]:
        """The names of the files in `list/` and `stat/`."""
        return [f"f{i:05d}" for i in range(self.entries)]


def make_dataset(root: Path, size: int, entries: int, creates: int) -> Dataset:
    """Write the random source file of `size` bytes under `root`."""
    return Dataset(write_random(root / "big.bin", size), entries, creates)


def fill_client(client: Client, prefix: str, ds: Dataset) -> None:
    """Put the tree under `prefix` of a store (a site's, before the site serves it)."""
    client.mkdir(prefix, parents=True, exist_ok=True)
    client.put(ds.big, f"{prefix}/big.bin")
    for sub in ("list", "stat"):
        client.mkdir(f"{prefix}/{sub}")
        client.write_many([(f"{prefix}/{sub}/{n}", b"", None) for n in ds.names()])


def fill_dir(root: Path, ds: Dataset) -> None:
    """Write the tree under `root` (a mount of another system)."""
    with open(ds.big, "rb") as src, open(root / "big.bin", "wb") as dst:
        while data := src.read(8 << 20):
            dst.write(data)
    for sub in ("list", "stat"):
        (root / sub).mkdir()
        for n in ds.names():
            (root / sub / n).touch()


@dataclass
class Timing:
    """One timed operation: seconds, how many items of how many it finished, bytes."""

    seconds: float
    done: int
    wanted: int
    nbytes: int = 0

    @property
    def complete(self) -> bool:
        return self.done == self.wanted

    @property
    def mbs(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def _timed(fn: Callable[[], Timing]) -> Timing:
    t = time.perf_counter()
    out = fn()
    out.seconds = time.perf_counter() - t
    return out


def sequential_read(path: Path, size: int, *, cold: bool, drop: tuple[Path, ...] = ()) -> Timing:
    """Read `path` start to end; `cold` first drops the page cache of it and of `drop`
    (the backing files of a local store), after writing every dirty page out: the
    writeback of data just filled would otherwise overlap the timed read (it tripled
    the CPU per MB of some cold reads), and a dirty page cannot be dropped."""
    if cold:
        os.sync()
        for p in (path, *drop):
            drop_page_cache(p)
    t = _timed(lambda: Timing(0, 1, 1, read_file(path)))
    if t.nbytes != size:
        raise SystemExit(f"bench: read {t.nbytes} bytes of {path}, expected {size}")
    return t


def ls_l(directory: Path, entries: int, timeout: float) -> Timing:
    """`ls -l` of `directory` (every entry's attributes, as a user would list it)."""
    def run() -> Timing:
        out = subprocess.run(["ls", "-l", str(directory)], capture_output=True, text=True,
                             timeout=timeout, check=True)
        return Timing(0, len(out.stdout.splitlines()) - 1, entries)
    t = _timed(run)
    if not t.complete:
        raise SystemExit(f"bench: ls -l {directory} showed {t.done} entries, not {entries}")
    return t


def stat_all(directory: Path, entries: int, budget: float) -> Timing:
    """List `directory`, then stat each file in name order (as dataset discovery does),
    for at most `budget` seconds."""
    def run() -> Timing:
        end = time.monotonic() + budget
        names = sorted(os.listdir(directory))
        done = 0
        for name in names:
            os.stat(directory / name)
            done += 1
            if time.monotonic() > end:
                break
        return Timing(0, done, entries)
    return _timed(run)


def creates(directory: Path, count: int, budget: float) -> Timing:
    """Create `count` files of 4 KiB in `directory` (new), each closed before the next,
    for at most `budget` seconds."""
    payload = os.urandom(CREATE_SIZE)

    def run() -> Timing:
        directory.mkdir()
        end = time.monotonic() + budget
        done = 0
        for i in range(count):
            with open(directory / f"c{i:05d}", "wb") as f:
                f.write(payload)
            done += 1
            if time.monotonic() > end:
                break
        return Timing(0, done, count, done * CREATE_SIZE)
    return _timed(run)
