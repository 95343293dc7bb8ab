"""Owner policies: which partners may run which privacy jobs over which tables,
columns and aggregates, and the guard rails of every release (minimum distinct
identities per group, clipping, differential-privacy noise with a budget).

A policy is JSON kept in the owner's namespace at /ENTITY/.privacy/policy.json
(see docs/privacy.md). No policy means no job: the default is to refuse.
Every check runs before any data is read; a refusal is a PolicyError naming
the rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from gfs.client import Client
from gfs.schema import Schema, validate_json
from privacy.errors import PolicyError, PolicyFileError, QueryError


def policy_path(entity: str) -> str:
    """Where an entity's policy lives in its namespace."""
    return f"/{entity}/.privacy/policy.json"


class _Strict(Schema):
    """Unknown keys and wrong types are errors, never silently ignored or coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TablePolicy(_Strict):
    """What a partner may do with one table."""

    key_columns: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    aggregates: tuple[Literal["count", "sum", "mean", "min", "max", "count_distinct"],
                     ...] = ()
    group_by: tuple[str, ...] = ()
    psi_outputs: tuple[Literal["intersection", "cardinality"], ...] = ()
    clip: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for col, (lo, hi) in v.items():
            if not lo <= hi:
                raise ValueError(f"clip of {col} needs lo <= hi, got [{lo:g}, {hi:g}]")
        return v


class PartnerPolicy(_Strict):
    """The rules for one partner entity."""

    tables: dict[str, TablePolicy]
    min_group_size: int = Field(default=1, ge=1)
    epsilon_per_release: float | None = Field(default=None, gt=0)
    epsilon_budget: float | None = Field(default=None, gt=0)
    #: contribution bound: rows of one key a release may use (default 1 with DP)
    max_rows_per_key: int | None = Field(default=None, ge=1)
    #: joins and queries this partner may get without DP noise (their differences
    #: are not checked across jobs; with DP the budget bounds them instead)
    max_releases: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class ReleaseTerms:
    """The guard rails a job must apply when it releases (from the owner's policy)."""

    min_group_size: int
    epsilon: float | None
    clip: dict[str, tuple[float, float]]
    #: rows of one key a release may use (duplicates beyond it are dropped)
    max_rows_per_key: int | None = None
    #: the partner's budget left after this release (None: no budget)
    epsilon_left: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"min_group_size": self.min_group_size, "epsilon": self.epsilon,
                "clip": {k: list(v) for k, v in self.clip.items()},
                "max_rows_per_key": self.max_rows_per_key, "epsilon_left": self.epsilon_left}


def complementary_suppression(sizes: dict[Any, int], k: int,
                              union: Callable[[set[Any]], int] | None = None) -> set[Any]:
    """The groups to suppress: those with fewer than `k` distinct identities and, if
    those together have fewer than `k` (`union`, default the sum of sizes), the
    smallest others until they do; so a total minus the released groups never
    isolates fewer than `k` identities (complementary suppression)."""
    out = {g for g, n in sizes.items() if n < k}
    size = union or (lambda gs: sum(sizes[g] for g in gs))
    for g in sorted((g for g in sizes if g not in out), key=lambda g: (sizes[g], str(g))):
        if not out or size(out) >= k:
            break
        out.add(g)
    return out


def load_policy(raw: bytes | str, source: str) -> Policy:
    """Parse and validate a policy document (JSON) read from `source`.

    The one entry point for policy files: unknown keys and wrong types raise
    QueryError naming `source`, the key and (for a misspelt key) the closest valid
    one; nothing is coerced or defaulted silently."""
    return validate_json(Policy, raw, where=source, error=PolicyFileError)


class Policy(_Strict):
    """An entity's policy for all its partners."""

    entity: str
    partners: dict[str, PartnerPolicy] = Field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "policy") -> Policy:
        """Validate a policy document already parsed from JSON (see `load_policy`)."""
        return load_policy(json.dumps(d), source)

    @classmethod
    def load(cls, fs: Client, entity: str) -> Policy:
        """The policy of `entity` from its namespace; none there refuses every job."""
        path = policy_path(entity)
        if not fs.exists(path):
            raise PolicyError("policy", f"entity {entity!r} has no privacy policy; write one "
                                        f"to {path} (see docs/privacy.md)")
        pol = load_policy(fs.read_bytes(path), path)
        if pol.entity != entity:
            raise QueryError(f"{path} is the policy of {pol.entity!r}, not {entity!r}")
        return pol

    # -- checks (before any data is read) --------------------------------------
    def _table(self, partner: str, table: str) -> tuple[PartnerPolicy, TablePolicy]:
        p = self.partners.get(partner)
        if p is None:
            raise PolicyError("partners", f"entity {partner!r} is not an allowed partner of "
                                          f"{self.entity!r}")
        t = p.tables.get(table)
        if t is None:
            raise PolicyError("tables", f"{self.entity!r} does not share table {table} with "
                                        f"{partner!r}")
        return p, t

    def _key(self, t: TablePolicy, table: str, key: str) -> None:
        if key not in t.key_columns:
            raise PolicyError("key_columns", f"column {key!r} of {table} may not be used as a "
                                             f"join key (allowed: {', '.join(t.key_columns)})")

    def check_partner(self, partner: str, table: str, key: str | None) -> None:
        """Refuse an unknown partner, an unshared table or a key column not allowed."""
        _, t = self._table(partner, table)
        if key is not None:
            self._key(t, table, key)

    def check_psi(self, partner: str, table: str, key: str, output: str,
                  spent: float = 0.0) -> ReleaseTerms:
        """Refuse a PSI job the policy does not allow; else its release terms (a PSI
        release is metered: it costs epsilon_per_release of the budget, though its
        size is exact, and the peer's set must reach min_group_size)."""
        p, t = self._table(partner, table)
        self._key(t, table, key)
        if output not in t.psi_outputs:
            raise PolicyError("psi_outputs", f"PSI output {output!r} over {table} is not allowed "
                                             f"for {partner!r} (allowed: "
                                             f"{', '.join(t.psi_outputs) or 'none'})")
        return self._terms(partner, p, t, spent)

    def check_aggregate(self, partner: str, table: str, key: str | None,
                        aggregates: list[tuple[str, str | None]],
                        group_by: str | Sequence[str] | None,
                        filters: list[str] | None = None, spent: float = 0.0,
                        releases: int = 0) -> ReleaseTerms:
        """Refuse a join or query the policy does not allow; else the release terms.

        `aggregates` are (function, column or None for count(*)) of *this* table's
        columns; `group_by` is this table's group column(s) it contributes."""
        p, t = self._table(partner, table)
        if key is not None:
            self._key(t, table, key)
        for func, col in aggregates:
            if func not in t.aggregates:
                raise PolicyError("aggregates", f"aggregate {func} over {table} is not allowed "
                                                f"for {partner!r} (allowed: "
                                                f"{', '.join(t.aggregates) or 'none'})")
            if col is not None and col not in t.columns:
                raise PolicyError("columns", f"column {col!r} of {table} is not released to "
                                             f"{partner!r}")
        for g in [group_by] if isinstance(group_by, str) else list(group_by or []):
            if g not in t.group_by:
                raise PolicyError("group_by", f"grouping by {g!r} of {table} is not allowed "
                                              f"for {partner!r}")
        for col in filters or []:
            if col not in t.columns:
                raise PolicyError("columns", f"filtering on {col!r} of {table} is not allowed "
                                             f"for {partner!r}")
        if p.epsilon_per_release is None and p.max_releases is not None \
                and releases >= p.max_releases:
            raise PolicyError("max_releases", f"{partner!r} has had {releases} release(s) "
                                              f"without noise from {self.entity!r}, the most "
                                              f"its policy allows (their differences could "
                                              f"isolate a person); ask the owner for DP")
        if p.epsilon_per_release is not None:
            for _func, col in aggregates:
                if col is not None and col not in t.clip:
                    raise PolicyError("clip", f"noisy release of {col!r} needs clip bounds in "
                                              f"the policy of {self.entity!r}")
        return self._terms(partner, p, t, spent)

    def _terms(self, partner: str, p: PartnerPolicy, t: TablePolicy,
               spent: float) -> ReleaseTerms:
        """The release terms of one job, refusing it if the budget cannot pay it."""
        eps = p.epsilon_per_release
        if eps is not None and p.epsilon_budget is not None \
                and spent + eps > p.epsilon_budget + 1e-12:
            raise PolicyError("epsilon_budget", f"privacy budget of {partner!r} on "
                                                f"{self.entity!r} is spent ({spent:g} of "
                                                f"{p.epsilon_budget:g}; this job needs "
                                                f"{eps:g})")
        left = None
        if p.epsilon_budget is not None:
            left = max(0.0, p.epsilon_budget - spent - (eps or 0.0))
        rows = p.max_rows_per_key or (1 if eps is not None else None)
        return ReleaseTerms(p.min_group_size, eps, dict(t.clip), rows, left)


def clip_value(v: float, bounds: tuple[float, float] | None) -> float:
    """`v` clamped to `bounds` (unchanged without bounds)."""
    if bounds is None or v is None or (isinstance(v, float) and math.isnan(v)):
        return v
    return min(max(v, bounds[0]), bounds[1])
