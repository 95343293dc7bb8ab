"""Differential-privacy noise from OpenDP (never hand-rolled floating-point
sampling; Mironov 2012 shows why): the discrete Laplace mechanism for integers
(counts, BFV sums) and OpenDP's Laplace mechanism for reals (CKKS sums), whose
sampler is exact and rounds safely.

Importing this module enables OpenDP's "contrib" features (OpenDP's own switch
for mechanisms outside its vetted core; the Laplace mechanisms live there).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import opendp.prelude as dp

from privacy.errors import QueryError

dp.enable_features("contrib")

MECHANISM_INT = "discrete laplace (opendp)"
MECHANISM_REAL = "laplace (opendp)"


@dataclass(frozen=True)
class Noise:
    """The label of one noisy release: mechanism, epsilon spent on it, noise scale."""

    mechanism: str
    epsilon: float
    scale: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (goes into the released output)."""
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "scale": self.scale}


def _scale(sensitivity: float, epsilon: float) -> float:
    if not epsilon > 0:
        raise QueryError(f"epsilon must be > 0, got {epsilon}")
    return max(float(sensitivity), 1e-12) / epsilon


@lru_cache(maxsize=64)
def _int_mech(scale: float) -> Any:
    return dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"),
                             scale=scale)


@lru_cache(maxsize=64)
def _real_mech(scale: float) -> Any:
    return dp.m.make_laplace(dp.atom_domain(T=float, nan=False),
                             dp.absolute_distance(T=float), scale=scale)


def noisy_int(value: int, sensitivity: float, epsilon: float) -> tuple[int, Noise]:
    """`value` plus discrete Laplace noise for an epsilon-DP release (the noise is
    drawn around 0 and added in Python, so `value` may be any size, e.g. mod t)."""
    scale = _scale(sensitivity, epsilon)
    return int(value) + int(_int_mech(scale)(0)), Noise(MECHANISM_INT, epsilon, scale)


def noisy_real(value: float, sensitivity: float, epsilon: float) -> tuple[float, Noise]:
    """`value` plus Laplace noise (OpenDP's exact sampler) for an epsilon-DP release."""
    scale = _scale(sensitivity, epsilon)
    return float(_real_mech(scale)(float(value))), Noise(MECHANISM_REAL, epsilon, scale)
