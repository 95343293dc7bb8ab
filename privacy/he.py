"""Homomorphic encryption for join-and-aggregate, on TenSEAL: BFV (exact integer
sums) and CKKS (real sums). Only the value holder ever has the secret key."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import tenseal as ts

from privacy.errors import QueryError

#: BFV plaintext moduli per ring degree: 45-bit primes = 1 mod 2n (batching); sums
#: must stay within +-(t/2).
BFV_PLAIN = {8192: 35184371613697, 16384: 35184371138561}
BFV_T = BFV_PLAIN[8192]
#: Every slot of a CKKS masked sum gets a random share uniform in +-2^CKKS_MASK_BITS
#: (on a grid of 2^-CKKS_FRACTION_BITS): the value holder's view of a slot's partial
#: sum x is within statistical distance |x| / 2^36 of uniform (the slots' float64
#: decryptions are summed, which bounds the shares' size).
CKKS_MASK_BITS = 36
CKKS_FRACTION_BITS = 20
CKKS_SHARE_BITS = CKKS_MASK_BITS + CKKS_FRACTION_BITS
CKKS_SHARE_DEN = float(1 << CKKS_FRACTION_BITS)
#: Multiplications of a fresh Enc(0) by random plaintexts that make the flooding noise.
FLOOD_ROUNDS = 2
#: CKKS results are rounded to this absolute quantum before they leave the value holder.
CKKS_QUANTUM = 1e-3


@dataclass(frozen=True)
class HeParams:
    """Scheme and ring size of one job (both parties must agree)."""

    scheme: str = "bfv"
    degree: int = 8192

    def plain_modulus(self) -> int:
        """The BFV plaintext modulus t (sums are exact within +-t/2)."""
        if self.degree not in BFV_PLAIN:
            raise QueryError(f"BFV needs ring degree 8192 or 16384, not {self.degree}")
        return BFV_PLAIN[self.degree]

    def slots(self) -> int:
        """Values per ciphertext."""
        return self.degree if self.scheme == "bfv" else self.degree // 2


def new_context(p: HeParams) -> Any:
    """A fresh secret context of the value holder (fresh keys per job)."""
    if p.scheme == "bfv":
        return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=p.degree,
                          plain_modulus=p.plain_modulus())
    if p.scheme == "ckks":
        sizes = {4096: [40, 20, 40], 8192: [60, 50, 50, 58], 16384: [60, 50, 50, 50, 60]}
        if p.degree not in sizes:
            raise QueryError(f"CKKS poly degree must be one of {sorted(sizes)}")
        if p.degree == 4096:
            raise QueryError("CKKS degree 4096 has too little capacity for masked sums; use 8192")
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=p.degree,
                         coeff_mod_bit_sizes=sizes[p.degree])
        ctx.global_scale = 2 ** 50
        return ctx
    raise QueryError(f"unknown scheme {p.scheme!r}; use bfv or ckks")


def public_bytes(ctx: Any, p: HeParams) -> bytes:
    """The context without its secret key, as the selector receives it."""
    out: bytes = ctx.serialize(save_public_key=True, save_secret_key=False,
                               save_galois_keys=False, save_relin_keys=False)
    return out


def load_context(data: bytes) -> Any:
    """A context received from the peer."""
    return ts.context_from(data)


def encrypt(ctx: Any, p: HeParams, values: list[Any]) -> bytes:
    """One ciphertext of `values` padded with zeros to the slot count."""
    n = p.slots()
    vals = values + [0] * (n - len(values))
    vec = ts.bfv_vector(ctx, vals) if p.scheme == "bfv" else ts.ckks_vector(ctx, vals)
    out: bytes = vec.serialize()
    return out


def load_vector(ctx: Any, p: HeParams, data: bytes) -> Any:
    """A ciphertext vector from bytes."""
    return ts.bfv_vector_from(ctx, data) if p.scheme == "bfv" else ts.ckks_vector_from(ctx, data)


class Accumulator:
    """Selector side: sum of ciphertext x plaintext 0/1 mask products."""

    def __init__(self, ctx: Any, p: HeParams) -> None:
        self.ctx, self.p = ctx, p
        self.acc: Any = None

    def add(self, ct: Any, mask: list[int]) -> None:
        """acc += ct * mask (a mask of all zeros is skipped)."""
        if not any(mask):
            return
        prod = ct * mask
        self.acc = prod if self.acc is None else self.acc + prod

    def masked(self) -> tuple[bytes, int | float]:
        """The accumulated ciphertext plus a random share r, re-randomised, and r.

        BFV: a uniform vector mod T is added (the value holder sums all slots) and
        a fresh encryption of zero with flooding noise (`flood`), so neither the
        second component (otherwise c1 x mask) nor the decryption noise carries the
        selector's masks. CKKS: slots are summed first, then a fresh encryption of
        a vector of independent random reals in +-2^CKKS_MASK_BITS (slot 0's is
        the share) is added: every slot is masked and the ciphertext is fresh."""
        p = self.p
        acc = self.acc if self.acc is not None else _zero(self.ctx, p)
        if p.scheme == "bfv":
            t = p.plain_modulus()
            shares = _uniform_mod(t, p.slots())
            out: Any = acc + shares + flood(self.ctx, p)
            return out.serialize(), sum(shares) % t
        ks = [secrets.randbelow(2 << CKKS_SHARE_BITS) - (1 << CKKS_SHARE_BITS)
              for _ in range(p.slots())]
        out = acc + [k / CKKS_SHARE_DEN for k in ks] + _zero(self.ctx, p)
        return out.serialize(), sum(ks)


def _uniform_mod(t: int, n: int) -> list[int]:
    """n values uniform mod t, centred in [-t/2, t/2)."""
    return [secrets.randbelow(t) - t // 2 for _ in range(n)]


def flood(ctx: Any, p: HeParams) -> Any:
    """A fresh BFV encryption of zero whose noise floods any selector-dependent
    noise: Enc(0) x P x P' for uniformly random plaintext polynomials P, P'
    (noise about e * 2^(2 log2 t + log2 n), ~2^113 at degree 8192, against
    ~2^61 per chunk from the masked products and the 2^128 decryption bound)."""
    z = _zero(ctx, p)
    for _ in range(FLOOD_ROUNDS):
        z = z * _uniform_mod(p.plain_modulus(), p.slots())
    return z


def _zero(ctx: Any, p: HeParams) -> Any:
    zeros = [0] * p.slots()
    return ts.bfv_vector(ctx, zeros) if p.scheme == "bfv" else ts.ckks_vector(ctx, zeros)


def decrypt_masked(ctx: Any, p: HeParams, data: bytes) -> int | float:
    """Value holder: the masked aggregate (BFV: slot sum mod T; CKKS: rounded)."""
    vec = load_vector(ctx, p, data)
    vals = vec.decrypt()
    if p.scheme == "bfv":
        return int(sum(int(v) for v in vals)) % p.plain_modulus()
    return round(math.fsum(vals) / CKKS_QUANTUM) * CKKS_QUANTUM


def unmask(p: HeParams, released: int | float, share: int | float) -> int | float:
    """Selector: the aggregate from the released masked value and its share."""
    if p.scheme == "bfv":
        t = p.plain_modulus()
        v = (released - int(share)) % t
        return v - t if v > t // 2 else v
    return float(released) - int(share) / CKKS_SHARE_DEN
