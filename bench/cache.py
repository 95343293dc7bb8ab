"""`python -m bench cache [--quick]`: eviction policies of the cache tiers on replayed traces.

Each trace is a sequence of chunk reads (id, size) shaped like a reader of the
mount or of gfs://: a hot set read over and over while large files are scanned
once, loops over a working set larger than the cache, Zipf-popular whole files,
a hot set that moves. Chunk sizes follow the chunker's spread (16 to 256 KiB,
mean near 64 KiB). Every policy of `gfs.eviction.POLICIES` replays every trace
with the same byte capacity; the figure is the byte hit ratio (bytes served
from the cache / bytes read). The limit measured beside them is Belady's
clairvoyant policy (evict the chunk read again furthest in the future), which
no online policy can beat on unit sizes and which is close to the best on
bytes. The cost column is the policy's own time per access (Python).

The target: the default policy (`gfs.eviction.DEFAULT_POLICY`) has the best mean
byte hit ratio over the traces, or within 0.01 of it.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections.abc import Callable

from bench.report import headline, table
from gfs.eviction import DEFAULT_POLICY, POLICIES

Trace = list[tuple[int, int]]
MiB = 1 << 20


def _sizes(rnd: random.Random, n: int) -> list[int]:
    """Chunk sizes like FastCDC's with 16/64/256 KiB: clipped log-normal, mean ~64 KiB."""
    out = []
    for _ in range(n):
        s = int(rnd.lognormvariate(10.9, 0.45))
        out.append(min(max(s, 16 << 10), 256 << 10))
    return out


class _Universe:
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.size: list[int] = []

    def new(self, n: int) -> list[int]:
        first = len(self.size)
        self.size += _sizes(self.rnd, n)
        return list(range(first, first + n))


def _zipf_picker(rnd: random.Random, n: int, s: float) -> Callable[[], int]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    import bisect

    return lambda: min(bisect.bisect_left(cum, rnd.random() * total), n - 1)


def trace_hot_and_scans(u: _Universe, scale: int) -> tuple[str, Trace, int]:
    """A hot set (Zipf 0.9) read all the time; every so often a big file scanned once."""
    hot = u.new(2000 * scale)
    pick = _zipf_picker(u.rnd, len(hot), 0.9)
    t: Trace = []
    for _ in range(20):
        for _ in range(3000 * scale):
            k = hot[pick()]
            t.append((k, u.size[k]))
        for k in u.new(3000 * scale):  # a file larger than the cache, read once
            t.append((k, u.size[k]))
    cap = int(sum(u.size[k] for k in hot) * 0.6)
    return "hot set + one-time scans", t, cap


def trace_loop(u: _Universe, scale: int) -> tuple[str, Trace, int]:
    """A working set 1.3x the cache read in a loop, with a small hot set between passes."""
    loop = u.new(2500 * scale)
    hot = u.new(300 * scale)
    t: Trace = []
    for _ in range(8):
        for k in loop:
            t.append((k, u.size[k]))
            if u.rnd.random() < 0.2:
                h = u.rnd.choice(hot)
                t.append((h, u.size[h]))
    cap = int(sum(u.size[k] for k in loop) / 1.3)
    return "loop 1.3x cache + hot", t, cap


def trace_zipf_files(u: _Universe, scale: int) -> tuple[str, Trace, int]:
    """Whole files read by Zipf(1.0) popularity; file sizes 1 to 200 chunks."""
    files = [u.new(max(1, int(u.rnd.paretovariate(1.2)))) for _ in range(1500 * scale)]
    files = [f[:200] for f in files]
    pick = _zipf_picker(u.rnd, len(files), 1.0)
    t: Trace = []
    while len(t) < 60000 * scale:
        for k in files[pick()]:
            t.append((k, u.size[k]))
    cap = int(sum(u.size[k] for f in files for k in f) * 0.1)
    return "zipf whole files", t, cap


def trace_moving_hot(u: _Universe, scale: int) -> tuple[str, Trace, int]:
    """Five phases, each with its own hot set (Zipf 0.8) and background one-time reads."""
    t: Trace = []
    hot_bytes = 0
    for _ in range(5):
        hot = u.new(1500 * scale)
        hot_bytes = sum(u.size[k] for k in hot)
        pick = _zipf_picker(u.rnd, len(hot), 0.8)
        for _ in range(12000 * scale):
            k = u.new(1)[0] if u.rnd.random() < 0.15 else hot[pick()]
            t.append((k, u.size[k]))
    return "moving hot set", t, int(hot_bytes * 0.8)


def trace_sequential_rereads(u: _Universe, scale: int) -> tuple[str, Trace, int]:
    """A dataset of files read start to end by a few jobs, some files twice in a row."""
    files = [u.new(u.rnd.randint(10, 120)) for _ in range(120 * scale)]
    t: Trace = []
    for _ in range(4):
        order = u.rnd.sample(range(len(files)), len(files) // 2)
        for i in order:
            reps = 2 if u.rnd.random() < 0.3 else 1
            for _ in range(reps):
                for k in files[i]:
                    t.append((k, u.size[k]))
    cap = int(sum(u.size[k] for f in files for k in f) * 0.25)
    return "dataset passes, re-reads", t, cap


def replay(policy: str, trace: Trace, capacity: int) -> tuple[float, float]:
    """(byte hit ratio, seconds per access) of `policy` on `trace`."""
    p = POLICIES[policy](capacity)
    hit_bytes = total = 0
    t0 = time.perf_counter()
    for k, size in trace:
        key = k.to_bytes(8, "little")
        total += size
        if p.hit(key):
            hit_bytes += size
        else:
            p.admit(key, size)
        assert p.size <= capacity
    return hit_bytes / total, (time.perf_counter() - t0) / len(trace)


def belady(trace: Trace, capacity: int) -> float:
    """Byte hit ratio of Belady's policy (evict the key whose next read is furthest)."""
    n = len(trace)
    nxt = [n] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        k = trace[i][0]
        nxt[i] = last.get(k, n)
        last[k] = i
    cached: dict[int, int] = {}  # key -> next use
    size: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    used = hit_bytes = total = 0
    for i, (k, s) in enumerate(trace):
        total += s
        if k in cached:
            hit_bytes += s
        elif s <= capacity:
            size[k] = s
            used += s
        cached[k] = nxt[i]
        heapq.heappush(heap, (-nxt[i], k))
        while used > capacity:
            neg, victim = heapq.heappop(heap)
            if cached.get(victim) != -neg:
                continue  # stale entry
            del cached[victim]
            used -= size.pop(victim)
    return hit_bytes / total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cache")
    ap.add_argument("--quick", action="store_true", help="smaller traces")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    scale = 1 if args.quick else 3
    policies = sorted(POLICIES)
    rows: list[list[object]] = []
    sums = dict.fromkeys(policies, 0.0)
    costs = dict.fromkeys(policies, 0.0)
    makers = (trace_hot_and_scans, trace_loop, trace_zipf_files, trace_moving_hot,
              trace_sequential_rereads)
    for maker in makers:
        u = _Universe(random.Random(args.seed))
        name, trace, cap = maker(u, scale)
        row: list[object] = [name, f"{len(trace)}", f"{cap / MiB:.0f} MiB"]
        for p in policies:
            ratio, cost = replay(p, trace, cap)
            sums[p] += ratio
            costs[p] += cost
            row.append(f"{ratio:.3f}")
        row.append(f"{belady(trace, cap):.3f}")
        rows.append(row)
    n = len(makers)
    rows.append(["mean", "", "", *(f"{sums[p] / n:.3f}" for p in policies), ""])
    rows.append(["policy cost", "", "", *(f"{costs[p] / n * 1e6:.2f} us" for p in policies),
                 ""])
    print(table(["trace", "reads", "capacity", *policies, "belady (limit)"], rows))
    best = max(policies, key=lambda p: sums[p])
    met = sums[DEFAULT_POLICY] / n >= sums[best] / n - 0.01
    print(headline("cache", met, default=DEFAULT_POLICY, best=best,
                   **{f"{p}_mean": round(sums[p] / n, 3) for p in policies}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
