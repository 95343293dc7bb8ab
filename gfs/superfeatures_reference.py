"""Reference super-features: plain Python, one byte at a time.

The executable form of docs/format.md, section "Resemblance and delta
chunks". Slow; used only by the tests, which check that the native
`gfs._native.superfeatures` gives exactly the same values.
"""

from __future__ import annotations

import struct

import xxhash

from gfs.cdc_reference import GEAR, MASK64, splitmix64

#: Initial state of the splitmix64 generator of the transforms: ASCII "HutongSF".
SF_SEED = 0x4875746F_6E675346
FEATURES = 12
SUPER = 3
SAMPLE_MASK = 0x7F00_0000_0000_0000

_OUT = splitmix64(2 * FEATURES, SF_SEED)
#: Multipliers (odd) and addends of the feature transforms.
MULT: list[int] = [_OUT[2 * k] | 1 for k in range(FEATURES)]
ADD: list[int] = [_OUT[2 * k + 1] for k in range(FEATURES)]


def features(data: bytes) -> tuple[int, ...]:
    """The 12 features of `data` taken as one chunk (all zero without samples)."""
    best = [0] * FEATURES
    sampled = False
    fp = 0
    for byte in data:
        fp = ((fp << 1) + GEAR[byte]) & MASK64
        if fp & SAMPLE_MASK == 0:
            sampled = True
            for k in range(FEATURES):
                best[k] = max(best[k], (MULT[k] * fp + ADD[k]) & MASK64)
    return tuple(best) if sampled else (0,) * FEATURES


def group(feats: tuple[int, ...]) -> tuple[int, ...]:
    """The 3 super-features of 12 features: xxh3-64 of each 4, packed u64 LE (0 if all 0)."""
    per = FEATURES // SUPER
    groups = [feats[per * j:per * (j + 1)] for j in range(SUPER)]
    return tuple(xxhash.xxh3_64_intdigest(struct.pack("<4Q", *g)) if any(g) else 0
                 for g in groups)


def superfeatures(data: bytes) -> tuple[int, ...]:
    """The 3 super-features of `data` taken as one chunk."""
    return group(features(data))
