"""Tiering policy: what the tierer should achieve, kept as data in the store."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gfs.config import TIERS
from gfs.errors import ConfigError

if TYPE_CHECKING:
    from gfs.meta import ReadTxn, WriteTxn

#: Tier classes from fastest to cheapest.
POLICY_KEY = b"tier-policy"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> float:
    """Seconds in `text` such as "90s", "15m", "6h", "7d" or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_size(text: str) -> int:
    """Bytes in `text` such as "512M", "10G", "1.5T" or a bare number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M, 10G)")
    return int(float(m.group(1)) * _SIZES[m.group(2)])


@dataclass(frozen=True)
class TierPolicy:
    """The placement policy of one store (site).

    A chunk is promoted to `hot` once its decayed read count (half-life
    `window`) reaches `promote_reads`; it is demoted to `cold` after
    `demote_idle` seconds without a read. Each tier is filled to at most
    `high` of its capacity; when it is over, the coldest chunks leave until
    it is at `low`. `pins` map a path prefix to a tier that its files' chunks
    must be in. `cold_level` is the zstd level chunks are recompressed at when
    they move to `cold`. `prices` are USD per GB-month, for cost reports.
    `rate` bounds the bytes a run moves per second (0: unbounded).
    """

    promote_reads: float = 3.0
    window: float = 3600.0
    demote_idle: float = 7 * 86400.0
    high: float = 0.9
    low: float = 0.75
    cold_level: int = 19
    write_tier: str = "warm"
    rate: int = 0
    pins: dict[str, str] = field(default_factory=dict)
    prices: dict[str, float] = field(
        default_factory=lambda: {"hot": 0.10, "warm": 0.023, "cold": 0.004})

    def __post_init__(self) -> None:
        if self.promote_reads <= 0:
            raise ConfigError(f"promote_reads must be positive, got {self.promote_reads}")
        if self.window <= 0 or self.demote_idle <= 0:
            raise ConfigError("window and demote_idle must be positive durations")
        if not 0 < self.low <= self.high <= 1:
            raise ConfigError(f"watermarks must satisfy 0 < low <= high <= 1, "
                              f"got low={self.low} high={self.high}")
        if not -7 <= self.cold_level <= 22:
            raise ConfigError(f"cold_level must be a zstd level (-7..22), got {self.cold_level}")
        if self.rate < 0:
            raise ConfigError(f"rate must be >= 0 bytes/s, got {self.rate}")
        for tier in (self.write_tier, *self.pins.values(), *self.prices):
            if tier not in TIERS:
                raise ConfigError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}")
        for prefix in self.pins:
            if not prefix.startswith("/"):
                raise ConfigError(f"pin path must be absolute, got {prefix!r}")

    def with_changes(self, **changes: Any) -> TierPolicy:
        """A copy with `changes` applied (validated)."""
        return replace(self, **changes)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TierPolicy:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"stored tier policy is not valid: {e}; set it again with "
                              "`hutong tier policy set`") from None

    @classmethod
    def load(cls, txn: ReadTxn) -> TierPolicy:
        """The store's policy (defaults if none was set)."""
        data = txn.get_value("rules", POLICY_KEY)
        return cls() if data is None else cls.from_json(data)

    def save(self, txn: WriteTxn) -> None:
        """Make this the store's policy."""
        txn.put_value("rules", POLICY_KEY, self.to_json())

    def pinned_tier(self, path: str) -> str | None:
        """The tier a pin forces on `path` (the longest matching prefix), or None."""
        best: tuple[int, str] | None = None
        for prefix, tier in self.pins.items():
            p = prefix.rstrip("/") or "/"
            inside = path == p or path.startswith(p if p == "/" else p + "/")
            if inside and (best is None or len(p) > best[0]):
                best = (len(p), tier)
        return None if best is None else best[1]
