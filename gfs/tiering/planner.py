"""The placement plan: from heat, pins and capacities to the moves a tierer makes.

Pure functions of their inputs, so the same code drives the real tierer and
the trace-replay evaluation (`python -m bench tiering`).

Rules, in order:

1. A pinned chunk goes to its pin's tier.
2. A chunk whose decayed read count reached `promote_reads` is a candidate
   for `hot`; a chunk already hot stays a candidate while its count is at
   least half of that (hysteresis, so chunks do not flap at the threshold).
3. Candidates enter `hot` in order of reads per byte (the greedy answer to
   "most reads served from a tier of this many bytes") while the tier stays
   within `high` of its capacity; those that do not fit stay where they are
   (a hot one that no longer fits goes to `warm`).
4. A chunk not read for `demote_idle` seconds goes to `cold`.
5. If `warm` is over `high` of its capacity, its least recently read chunks
   go to `cold` until it is at `low`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gfs.tiering.policy import TierPolicy


@dataclass(frozen=True, slots=True)
class ChunkState:
    """What the planner knows of one chunk: where it is and how it is used."""

    id: bytes
    size: int
    tier: str
    score: float
    idle: float = math.inf
    pin: str | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """Move chunk `id` (`size` bytes) from tier `src` to tier `dst`."""

    id: bytes
    size: int
    src: str
    dst: str


def plan(chunks: Iterable[ChunkState], capacity: dict[str, int],
         policy: TierPolicy) -> list[Move]:
    """The moves that bring `chunks` to the placement `policy` asks for.

    `capacity` gives each tier's bytes (0 or absent: unlimited).
    """
    states = list(chunks)
    target: dict[bytes, str] = {}
    promote = policy.promote_reads

    def limit(tier: str, share: float) -> float:
        cap = capacity.get(tier, 0)
        return math.inf if cap <= 0 else cap * share

    # 1. pins; 2-3. the hot set, hottest first, within the high watermark
    hot_used = 0.0
    for c in states:
        if c.pin is not None:
            target[c.id] = c.pin
            if c.pin == "hot":
                hot_used += c.size
    candidates = [c for c in states if c.pin is None and (
        c.score >= promote or (c.tier == "hot" and c.score >= promote / 2))]
    candidates.sort(key=lambda c: (-c.score / c.size, c.idle))
    hot_limit = limit("hot", policy.high)
    for c in candidates:
        if hot_used + c.size <= hot_limit:
            target[c.id] = "hot"
            hot_used += c.size
    # 4. idle chunks go cold; the rest stay, leaving hot if they lost their place
    for c in states:
        if c.id in target:
            continue
        if c.idle >= policy.demote_idle:
            target[c.id] = "cold"
        elif c.tier == "hot":
            target[c.id] = "warm"
        else:
            target[c.id] = c.tier
    # 5. an over-full warm tier sheds its least recently read chunks
    warm = [c for c in states if target[c.id] == "warm"]
    warm_used = sum(c.size for c in warm)
    if warm_used > limit("warm", policy.high):
        goal = limit("warm", policy.low)
        for c in sorted(warm, key=lambda c: (-c.idle, c.score)):
            if warm_used <= goal:
                break
            if c.pin is None:
                target[c.id] = "cold"
                warm_used -= c.size
    return [Move(c.id, c.size, c.tier, target[c.id]) for c in states if target[c.id] != c.tier]
