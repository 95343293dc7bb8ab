"""Tiering policy against plain LRU and a static placement, on replayed access traces.

`python -m bench tiering [--quick]`

A trace is a sequence of chunk reads over a dataset five to ten times larger
than the hot tier. Three placements serve it:

* hutong: the real planner (`gfs.tiering.planner.plan`) on heat kept with the
  real decay (`gfs.tiering.heat.Heat`), run as the background tierer would,
  every `--period` reads; moves counted both ways (promotions, demotions and
  moves to cold).
* LRU: the hot tier as an LRU cache that admits every missed chunk at once;
  only its promotions are counted as moved bytes (its evictions are taken as
  free, in LRU's favour).
* static: the first-written chunks fill the hot tier and never move.

Workloads: a Zipf popularity whose popular set drifts; a stationary Zipf with
periodic full scans; drift and scans mixed. Reported per workload and
placement: hot-tier hit ratio, bytes moved between tiers, storage cost per
month at the policy's prices. Target: hutong's hit ratio above LRU's on the
drifting workload and not below it on the others, with fewer bytes moved.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from bench.report import headline, table
from gfs.tiering.heat import Heat
from gfs.tiering.planner import ChunkState, plan
from gfs.tiering.policy import TierPolicy

NS = 1_000_000_000  # one read per simulated second


@dataclass
class Result:
    hits: int = 0
    reads: int = 0
    moved: int = 0
    cost: float = 0.0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.reads if self.reads else 0.0


def zipf_sampler(n: int, alpha: float, rnd: random.Random) -> Iterator[int]:
    """Ranks 0..n-1 drawn with probability proportional to 1/(rank+1)^alpha."""
    weights = [1.0 / (k + 1) ** alpha for k in range(n)]
    cum = list(itertools.accumulate(weights))
    total = cum[-1]
    while True:
        yield bisect.bisect_left(cum, rnd.random() * total)


def trace(kind: str, n: int, reads: int, seed: int) -> list[int]:
    """Chunk indexes read, in order, for a workload."""
    rnd = random.Random(seed)
    ranks = zipf_sampler(n, 0.9, rnd)
    perm = list(range(n))
    rnd.shuffle(perm)
    phases = 8
    out: list[int] = []
    scan_every = reads // 4
    while len(out) < reads:
        phase = len(out) * phases // reads
        shift = phase * n // 20 if kind in ("drift", "mix") else 0  # 5% of the set per phase
        out.append(perm[(next(ranks) + shift) % n])
        if kind in ("scan", "mix") and len(out) % scan_every == 0:
            out.extend(range(n))  # a full sequential scan
    return out[:reads]


def run_hutong(sizes: list[int], reads: list[int], hot_cap: int, policy: TierPolicy,
               period: int) -> Result:
    r = Result()
    tier = ["warm"] * len(sizes)
    heat: dict[int, Heat] = {}
    now = 0
    for k, idx in enumerate(reads):
        now = (k + 1) * NS
        r.reads += 1
        r.hits += tier[idx] == "hot"
        h = heat.get(idx)
        heat[idx] = (Heat(1.0, now, 1) if h is None else
                     Heat(h.at(now, policy.window) + 1, now, h.reads + 1))
        if (k + 1) % period == 0:
            states = []
            for i, size in enumerate(sizes):
                hh = heat.get(i)
                states.append(ChunkState(
                    i.to_bytes(16, "big"), size, tier[i],
                    hh.at(now, policy.window) if hh else 0.0,
                    (now - (hh.last_ns if hh else 0)) / NS))
            for m in plan(states, {"hot": hot_cap}, policy):
                i = int.from_bytes(m.id, "big")
                tier[i] = m.dst
                r.moved += m.size
    r.cost = _cost(sizes, tier, policy)
    return r


def run_lru(sizes: list[int], reads: list[int], hot_cap: int, policy: TierPolicy) -> Result:
    r = Result()
    hot: OrderedDict[int, int] = OrderedDict()
    used = 0
    for idx in reads:
        r.reads += 1
        if idx in hot:
            r.hits += 1
            hot.move_to_end(idx)
            continue
        size = sizes[idx]
        while hot and used + size > hot_cap:
            _, s = hot.popitem(last=False)
            used -= s
        if size <= hot_cap:
            hot[idx] = size
            used += size
            r.moved += size
    tier = ["hot" if i in hot else "warm" for i in range(len(sizes))]
    r.cost = _cost(sizes, tier, policy)
    return r


def run_static(sizes: list[int], reads: list[int], hot_cap: int, policy: TierPolicy) -> Result:
    r = Result()
    used = 0
    tier = []
    for s in sizes:
        if used + s <= hot_cap:
            tier.append("hot")
            used += s
        else:
            tier.append("warm")
    for idx in reads:
        r.reads += 1
        r.hits += tier[idx] == "hot"
    r.cost = _cost(sizes, tier, policy)
    return r


def _cost(sizes: list[int], tier: list[str], policy: TierPolicy) -> float:
    return sum(s / 1e9 * policy.prices.get(t, 0.0) for s, t in zip(sizes, tier, strict=True))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench tiering", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller dataset and traces")
    ap.add_argument("--period", type=int, default=0, help="reads between tierer runs")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 8000
    reads = 40_000 if args.quick else 200_000
    period = args.period or max(200, reads // 200)
    rnd = random.Random(1)
    sizes = [min(256 << 10, max(16 << 10, int(rnd.lognormvariate(11.0, 0.5)))) for _ in range(n)]
    total = sum(sizes)
    hot_cap = total // 8
    # half-life 20 tierer periods: long enough to tell steady heat from a scan
    policy = TierPolicy(promote_reads=2.0, window=period * 20, demote_idle=reads / 2,
                        high=0.95, low=0.8)
    print(f"tiering: {n} chunks, {total / 2**20:.0f} MiB, hot tier {hot_cap / 2**20:.0f} MiB "
          f"(1/8), {reads} reads per trace, tierer every {period} reads; policy "
          f"promote_reads={policy.promote_reads} window={policy.window:.0f}s "
          f"demote_idle={policy.demote_idle:.0f}s")
    rows = []
    wins: dict[str, tuple[float, float, int, int]] = {}
    for kind in ("drift", "scan", "mix"):
        t = trace(kind, n, reads, seed={"drift": 11, "scan": 12, "mix": 13}[kind])
        ours = run_hutong(sizes, t, hot_cap, policy, period)
        lru = run_lru(sizes, t, hot_cap, policy)
        static = run_static(sizes, t, hot_cap, policy)
        for name, res in (("hutong", ours), ("LRU", lru), ("static", static)):
            rows.append((kind, name, f"{res.hit_ratio:.3f}", f"{res.moved / 2**20:.0f}",
                         f"{res.cost * 1000:.3f}"))
        wins[kind] = (ours.hit_ratio, lru.hit_ratio, ours.moved, lru.moved)
    print(table(["workload", "placement", "hot hit ratio", "moved MiB", "cost mUSD/month"],
                rows))
    met = (wins["drift"][0] > wins["drift"][1]
           and all(w[0] >= w[1] for w in wins.values())
           and all(w[2] < w[3] for w in wins.values()))
    print(headline(
        "tiering", met,
        drift_hit=round(wins["drift"][0], 3), drift_lru=round(wins["drift"][1], 3),
        scan_hit=round(wins["scan"][0], 3), scan_lru=round(wins["scan"][1], 3),
        mix_hit=round(wins["mix"][0], 3), mix_lru=round(wins["mix"][1], 3),
        moved_vs_lru=round(sum(w[2] for w in wins.values())
                           / max(1, sum(w[3] for w in wins.values())), 3)))
    return 0
