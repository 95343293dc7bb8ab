"""Tiering policy: what the tierer should achieve, kept as data in the store."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from gfs.env import TIERS
from gfs.errors import ConfigError
from gfs.meta import MetaEngine, ReadTxn, WriteTxn
from gfs.schema import Schema, SchemaError, validate
from gfs.tiering.defaults import POLICY_KEY, WINDOW, WRITE_TIER
from gfs.units import Duration, Size


def _tier(name: str) -> str:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; tiers are {', '.join(TIERS)}")
    return name


#: A tier class name in a model.
Tier = Annotated[str, AfterValidator(_tier)]


class TierPolicy(Schema):
    """The placement policy of one store (site).

    A chunk is promoted to `hot` once its decayed read count (half-life
    `window`) reaches `promote_reads`; it is demoted to `cold` after
    `demote_idle` seconds without a read. Each tier is filled to at most
    `high` of its capacity; when it is over, the coldest chunks leave until
    it is at `low`. `pins` map a path prefix to a tier that its files' chunks
    must be in. `cold_level` is the zstd level chunks are recompressed at when
    they move to `cold`. `prices` are USD per GB-month, for cost reports.
    `rate` bounds the bytes a run moves per second (0: unbounded). Durations
    and sizes also take the spellings of `gfs.units` ("7d", "100MiB").
    """

    model_config = ConfigDict(frozen=True)

    promote_reads: Annotated[float, Field(gt=0)] = 3.0
    window: Annotated[Duration, Field(gt=0)] = WINDOW
    demote_idle: Annotated[Duration, Field(gt=0)] = 7 * 86400.0
    high: Annotated[float, Field(gt=0, le=1)] = 0.9
    low: Annotated[float, Field(gt=0, le=1)] = 0.75
    cold_level: Annotated[int, Field(ge=-7, le=22)] = 19
    write_tier: Tier = WRITE_TIER
    rate: Size = 0
    pins: dict[str, Tier] = Field(default_factory=dict)
    prices: dict[Tier, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"hot": 0.10, "warm": 0.023, "cold": 0.004})

    @field_validator("pins")
    @classmethod
    def _absolute(cls, pins: dict[str, str]) -> dict[str, str]:
        for prefix in pins:
            if not prefix.startswith("/"):
                raise ValueError(f"pin path must be absolute, got {prefix!r}")
        return pins

    @model_validator(mode="after")
    def _watermarks(self) -> TierPolicy:
        if self.low > self.high:
            raise ValueError(f"watermarks must satisfy 0 < low <= high <= 1, "
                             f"got low={self.low} high={self.high}")
        return self

    def with_changes(self, **changes: Any) -> TierPolicy:
        """A copy with `changes` applied, validated like a new policy (SchemaError names
        the setting; the policy itself never changes)."""
        return validate(type(self), {**self.model_dump(), **changes}, where="tier policy")

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain data (for `--json` output and storage)."""
        return self.model_dump()

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TierPolicy:
        try:
            return validate(cls, json.loads(data), where="stored tier policy")
        except (ValueError, SchemaError) as e:
            raise ConfigError(f"{e}; set it again with `hutong tier policy set`") from None

    @classmethod
    def load(cls, txn: ReadTxn) -> TierPolicy:
        """The store's policy (defaults if none was set)."""
        data = txn.get_value("rules", POLICY_KEY)
        return cls() if data is None else cls.from_json(data)

    @classmethod
    def current(cls, engine: MetaEngine) -> TierPolicy:
        """The policy stored in `engine` now (defaults until one is set)."""
        with engine.read() as txn:
            return cls.load(txn)

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
