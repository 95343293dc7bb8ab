"""External-memory helpers for PSI: partitioned temporary files under a party's
state directory, so a set larger than memory flows through a bounded budget.

* `Workdir`: one job's temporary directory (`<state>/tmp/psi/<pid>-<random>`),
  removed on exit; if the party is killed, a watchdog process (its own session,
  waiting for the party's end of a pipe to close) removes it; directories left
  by a killed watchdog too are removed by the next job (their process is gone).
* `KeyPartitions`: distinct keys in a pseudo-random order, in one external pass:
  keys go to files by a keyed hash (a fresh per-job PRF key), each file is
  deduplicated and shuffled in memory (split again by further hash bits when it
  would not fit the budget); a set that fits the budget stays in memory.
* `ValuePartitions`: fixed-size records (blinded values, optionally with their
  position) by a prefix of the value or by a random draw, read back one
  partition at a time.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

#: Default memory budget of one PSI party (bytes).
DEFAULT_BUDGET = 256 << 20
#: Estimated bytes of memory per distinct key held in a partition (str, dict, list).
KEY_COST = 160
#: Estimated bytes per 12-byte value in a Python set while matching.
VALUE_COST = 120
LEN = struct.Struct("<I")
_MAX_FANOUT_BITS = 8
#: Environment variable setting a PSI party's memory budget in MiB.
BUDGET_ENV = "HUTONG_PSI_MEMORY_MB"


def budget_from_env() -> int:
    """The PSI memory budget in bytes: $HUTONG_PSI_MEMORY_MB MiB, else DEFAULT_BUDGET."""
    v = os.environ.get(BUDGET_ENV, "").strip()
    return int(float(v) * (1 << 20)) if v else DEFAULT_BUDGET


#: The watchdog: wait for EOF on stdin (the party ended, however), remove the directory.
_WATCHDOG = "import shutil, sys; sys.stdin.buffer.read(); shutil.rmtree(sys.argv[1], True)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workdir:
    """A job's temporary directory under `<root>/tmp/psi`; stale ones (their
    process is dead) are removed when a new one is made."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        base = Path(root) / "tmp" / "psi"
        base.mkdir(parents=True, exist_ok=True)
        for d in base.iterdir():
            pid = d.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)
        self.path = base / f"{os.getpid()}-{secrets.token_hex(6)}"
        self._n = 0
        # the kernel closes our end of the pipe however we die (even SIGKILL); the
        # watchdog then removes the directory; a new session, so that killing the
        # party's process group does not kill the watchdog with it. The watchdog comes
        # first: a party killed between making the directory and starting its watchdog
        # (a fork of a large process takes milliseconds) left the directory behind
        # until the next job at that site.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.path)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self.path.mkdir()
        except BaseException:
            self.close()
            raise

    def file(self, stem: str) -> Path:
        """A fresh file name in the directory."""
        self._n += 1
        return self.path / f"{stem}-{self._n}"

    def close(self) -> None:
        """Remove the directory and everything in it (and stop the watchdog)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._watchdog.stdin is not None:
            self._watchdog.stdin.close()
        self._watchdog.wait()

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Buckets:
    """Append-only files with per-file write buffers of `flush` bytes."""

    def __init__(self, wd: Workdir, stem: str, n: int, flush: int) -> None:
        self.paths = [wd.file(stem) for _ in range(n)]
        self._files: list[BinaryIO] = [open(p, "wb") for p in self.paths]  # noqa: SIM115
        self._bufs = [bytearray() for _ in range(n)]
        self.counts = [0] * n
        self._flush = max(4096, flush)

    def add(self, i: int, data: bytes | bytearray | memoryview, count: int = 1) -> None:
        b = self._bufs[i]
        b += data
        self.counts[i] += count
        if len(b) >= self._flush:
            self._files[i].write(b)
            b.clear()

    def close(self) -> None:
        for f, b in zip(self._files, self._bufs, strict=True):
            if b:
                f.write(b)
            f.close()
        self._bufs = []


def read_keys(path: Path) -> Iterator[bytes]:
    """The length-prefixed records of a key partition file."""
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(4 << 20):
            data, pos = rest + chunk, 0
            end = len(data)
            while pos + 4 <= end:
                (ln,) = LEN.unpack_from(data, pos)
                stop = pos + 4 + ln
                if stop > end:
                    break
                yield data[pos + 4:stop]
                pos = stop
            rest = data[pos:]
        if rest:
            raise OSError(f"truncated spill file {path}")


class KeyPartitions:
    """Distinct keys in an order that is a keyed-hash (PRF) order between
    partitions and a uniform shuffle within each: indistinguishable from a
    uniformly random permutation without the per-job PRF key."""

    def __init__(self, wd: Workdir, keys: Iterable[str], budget: int = DEFAULT_BUDGET,
                 hint: int | None = None) -> None:
        self._wd, self._budget = wd, max(budget, 1 << 12)
        self._prf = secrets.token_bytes(32)
        want = max(1, ((hint or 0) * KEY_COST) // self._budget + 1)
        self._bits0 = min(_MAX_FANOUT_BITS, max(0, (want - 1).bit_length()))
        self._mem: list[str] | None = None
        if self._bits0 == 0:  # fits, probably: keep in memory unless the budget runs out
            it, mem, limit = iter(keys), dict[str, None](), self._budget // KEY_COST
            for k in it:
                mem[k] = None
                if len(mem) > limit:
                    self._bits0 = 4
                    self._parts = self._spread(chain(mem, it), self._bits0, 0, 0)
                    return
            self._mem, self._parts = list(mem), []
            return
        self._parts = self._spread(keys, self._bits0, 0, 0)

    def _prf_of(self, k: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(k, digest_size=8, key=self._prf).digest(), "big")

    def _spread(self, keys: Iterable[str] | Iterable[bytes], bits: int, used: int,
                prefix: int) -> list[tuple[Path, int, int, int]]:
        n = 1 << bits
        out = _Buckets(self._wd, "keys", n, self._budget // (4 * n))
        shift = 64 - used - bits
        mask = n - 1
        prf = self._prf
        blake, pack = hashlib.blake2b, LEN.pack
        try:
            for k in keys:
                kb = k.encode() if isinstance(k, str) else k
                i = (int.from_bytes(blake(kb, digest_size=8, key=prf).digest(), "big")
                     >> shift) & mask if bits else 0
                out.add(i, pack(len(kb)) + kb)
        finally:
            out.close()
        return [(p, c, used + bits, (prefix << bits) | i)
                for i, (p, c) in enumerate(zip(out.paths, out.counts, strict=True))]

    def __iter__(self) -> Iterator[list[str]]:
        """Each partition's distinct keys, shuffled; partitions in PRF order.
        Consumes the partition files."""
        if self._mem is not None:
            mem, self._mem = self._mem, None
            perm = shuffled(len(mem))
            yield [mem[j] for j in perm]
            return
        stack = list(reversed(self._parts))
        self._parts = []
        while stack:
            path, count, used, prefix = stack.pop()
            if count * KEY_COST > self._budget and used < 64:
                bits = min(_MAX_FANOUT_BITS, 64 - used,
                           max(1, (count * KEY_COST // self._budget).bit_length()))
                subs = self._spread(read_keys(path), bits, used, prefix)
                path.unlink()
                stack.extend(reversed(subs))
                continue
            distinct = list(dict.fromkeys(read_keys(path)))
            path.unlink()
            perm = shuffled(len(distinct))
            yield [distinct[j].decode() for j in perm]


def shuffled(n: int) -> list[int]:
    """A uniformly random permutation of range(n) from the OS generator."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class ValuePartitions:
    """Records of `size` bytes in `n` partition files, by the value's leading 4
    bytes (uniform for blinded points) or, with `random=True`, by a fresh
    random draw per record."""

    def __init__(self, wd: Workdir, stem: str, size: int, n: int, budget: int,
                 random: bool = False) -> None:
        self.size, self.n, self.random = size, max(1, n), random
        self._b = _Buckets(wd, stem, self.n, budget // (4 * self.n))
        self.total = 0

    @staticmethod
    def count_for(items: int, cost: int, budget: int) -> int:
        """Partitions so that `items` at `cost` bytes each fit in `budget` per partition."""
        return max(1, -(-items * cost // max(budget, 1)))

    def add(self, blob: bytes) -> None:
        """Append concatenated records."""
        k = len(blob) // self.size
        self.total += k
        if self.n == 1:
            self._b.add(0, blob, k)
            return
        recs = np.frombuffer(blob, dtype=np.uint8).reshape(k, self.size)
        if self.random:
            draw = np.frombuffer(os.urandom(4 * k), dtype=">u4").astype(np.uint64)
        else:
            draw = recs[:, :4].copy().view(">u4").reshape(k).astype(np.uint64)
        part = (draw * np.uint64(self.n)) >> np.uint64(32)
        order = np.argsort(part, kind="stable")
        cuts = np.searchsorted(part[order], np.arange(self.n + 1, dtype=np.uint64))
        srt = recs[order]
        for i in range(self.n):
            a, b = int(cuts[i]), int(cuts[i + 1])
            if b > a:
                self._b.add(i, srt[a:b].tobytes(), b - a)

    def close(self) -> None:
        """Finish writing."""
        self._b.close()

    def __iter__(self) -> Iterator[bytes]:
        """Each partition's records (concatenated); consumes the files."""
        for p in self._b.paths:
            data = p.read_bytes()
            p.unlink()
            yield data


def read_chunks(path: Path, chunk: int) -> Iterator[bytes]:
    """`path` in pieces of `chunk` bytes."""
    with open(path, "rb") as f:
        while piece := f.read(chunk):
            yield piece


def positions(start: int, count: int) -> np.ndarray[tuple[int, ...], np.dtype[np.uint64]]:
    """Little-endian uint64 positions start..start+count."""
    return np.arange(start, start + count, dtype="<u8")
