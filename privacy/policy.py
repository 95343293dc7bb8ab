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
from dataclasses import dataclass, field
from typing import Any

from gfs.client import Client
from privacy.errors import PolicyError, QueryError

AGGREGATES = ("count", "sum", "mean", "min", "max")
PSI_OUTPUTS = ("intersection", "cardinality")


def policy_path(entity: str) -> str:
    """Where an entity's policy lives in its namespace."""
    return f"/{entity}/.privacy/policy.json"


@dataclass(frozen=True)
class TablePolicy:
    """What a partner may do with one table."""

    key_columns: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    aggregates: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    psi_outputs: tuple[str, ...] = ()
    clip: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PartnerPolicy:
    """The rules for one partner entity."""

    tables: dict[str, TablePolicy]
    min_group_size: int = 1
    epsilon_per_release: float | None = None
    epsilon_budget: float | None = None


@dataclass(frozen=True)
class ReleaseTerms:
    """The guard rails a job must apply when it releases (from the owner's policy)."""

    min_group_size: int
    epsilon: float | None
    clip: dict[str, tuple[float, float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"min_group_size": self.min_group_size, "epsilon": self.epsilon,
                "clip": {k: list(v) for k, v in self.clip.items()}}


def _strs(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise QueryError(f"policy {where}: {key} must be a list of strings")
    return tuple(v)


@dataclass(frozen=True)
class Policy:
    """An entity's policy for all its partners."""

    entity: str
    partners: dict[str, PartnerPolicy]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        """Parse and validate a policy document; a bad one raises QueryError."""
        if not isinstance(d, dict) or not isinstance(d.get("entity"), str):
            raise QueryError("policy must be a JSON object with an \"entity\" name")
        partners: dict[str, PartnerPolicy] = {}
        for name, p in dict(d.get("partners", {})).items():
            where = f"{d['entity']}/partners/{name}"
            tables: dict[str, TablePolicy] = {}
            for path, t in dict(p.get("tables", {})).items():
                tw = f"{where}/tables/{path}"
                aggs = _strs(t, "aggregates", tw)
                for a in aggs:
                    if a not in AGGREGATES:
                        raise QueryError(f"policy {tw}: unknown aggregate {a!r}")
                outs = _strs(t, "psi_outputs", tw)
                for o in outs:
                    if o not in PSI_OUTPUTS:
                        raise QueryError(f"policy {tw}: unknown PSI output {o!r}")
                clip: dict[str, tuple[float, float]] = {}
                for col, bounds in dict(t.get("clip", {})).items():
                    lo, hi = (float(x) for x in bounds)
                    if not lo <= hi:
                        raise QueryError(f"policy {tw}: clip of {col} needs lo <= hi")
                    clip[col] = (lo, hi)
                tables[path] = TablePolicy(_strs(t, "key_columns", tw), _strs(t, "columns", tw),
                                           aggs, _strs(t, "group_by", tw), outs, clip)
            mg = int(p.get("min_group_size", 1))
            eps = p.get("epsilon_per_release")
            budget = p.get("epsilon_budget")
            if mg < 1:
                raise QueryError(f"policy {where}: min_group_size must be >= 1")
            if eps is not None and not float(eps) > 0:
                raise QueryError(f"policy {where}: epsilon_per_release must be > 0")
            partners[name] = PartnerPolicy(tables, mg, None if eps is None else float(eps),
                                           None if budget is None else float(budget))
        return cls(str(d["entity"]), partners)

    @classmethod
    def load(cls, fs: Client, entity: str) -> Policy:
        """The policy of `entity` from its namespace; none there refuses every job."""
        path = policy_path(entity)
        if not fs.exists(path):
            raise PolicyError("policy", f"entity {entity!r} has no privacy policy; write one "
                                        f"to {path} (see docs/privacy.md)")
        try:
            doc = json.loads(fs.read_bytes(path))
        except ValueError as e:
            raise QueryError(f"{path} is not valid JSON: {e}") from e
        pol = cls.from_dict(doc)
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

    def check_psi(self, partner: str, table: str, key: str, output: str) -> None:
        """Refuse a PSI job the policy does not allow."""
        _, t = self._table(partner, table)
        self._key(t, table, key)
        if output not in t.psi_outputs:
            raise PolicyError("psi_outputs", f"PSI output {output!r} over {table} is not allowed "
                                             f"for {partner!r} (allowed: "
                                             f"{', '.join(t.psi_outputs) or 'none'})")

    def check_aggregate(self, partner: str, table: str, key: str | None,
                        aggregates: list[tuple[str, str | None]], group_by: str | None,
                        filters: list[str] | None = None, spent: float = 0.0) -> ReleaseTerms:
        """Refuse a join or query the policy does not allow; else the release terms.

        `aggregates` are (function, column or None for count(*)) of *this* table's
        columns; `group_by` is this table's group column if it contributes it."""
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
        if group_by is not None and group_by not in t.group_by:
            raise PolicyError("group_by", f"grouping by {group_by!r} of {table} is not allowed "
                                          f"for {partner!r}")
        for col in filters or []:
            if col not in t.columns:
                raise PolicyError("columns", f"filtering on {col!r} of {table} is not allowed "
                                             f"for {partner!r}")
        eps = p.epsilon_per_release
        if eps is not None:
            for _func, col in aggregates:
                if col is not None and col not in t.clip:
                    raise PolicyError("clip", f"noisy release of {col!r} needs clip bounds in "
                                              f"the policy of {self.entity!r}")
            if p.epsilon_budget is not None and spent + eps > p.epsilon_budget + 1e-12:
                raise PolicyError("epsilon_budget", f"privacy budget of {partner!r} on "
                                                    f"{self.entity!r} is spent ({spent:g} of "
                                                    f"{p.epsilon_budget:g}; this job needs "
                                                    f"{eps:g})")
        return ReleaseTerms(p.min_group_size, eps, dict(t.clip))


def clip_value(v: float, bounds: tuple[float, float] | None) -> float:
    """`v` clamped to `bounds` (unchanged without bounds)."""
    if bounds is None or v is None or (isinstance(v, float) and math.isnan(v)):
        return v
    return min(max(v, bounds[0]), bounds[1])
