"""Compute-to-data: a partner's aggregate query runs at the owner's site over the
owner's table; only aggregates that pass the owner's policy leave.

The owner checks the query against its policy before reading anything, then
computes count, sum, mean, min, max (optionally grouped by one column and
filtered by equality on allowed columns), suppresses groups with fewer distinct
identities (the table's first allowed key column) than the policy's minimum
(complementary suppression, and against the cells released to the same partner
before), adds OpenDP noise when the policy asks for it, and sends the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gfs.client import Client
from privacy import dp
from privacy.audit import AuditLog
from privacy.channel import Channel
from privacy.errors import PolicyError
from privacy.policy import Policy, ReleaseTerms, clip_value, complementary_suppression
from privacy.tables import check_columns, iter_batches, key_strings


@dataclass
class _Acc:
    count: int = 0
    ids: set[str] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=dict)
    mins: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)


@dataclass
class Release:
    """What a query releases: rows, the number of suppressed groups, and (kept at
    the owner) the identities behind every released row, for differencing checks."""

    rows: list[dict[str, Any]]
    suppressed: int
    cells: dict[str | None, frozenset[str]]


def _accumulate(fs: Client, table: str, id_column: str, cols: list[str], group_by: str | None,
                where: dict[str, str], terms: ReleaseTerms) -> dict[str | None, _Acc]:
    need = list(dict.fromkeys([id_column, *cols, *where, *([group_by] if group_by else [])]))
    check_columns(fs, table, need)
    accs: dict[str | None, _Acc] = {}
    used: dict[str, int] = {}
    for b in iter_batches(fs, table, need):
        ids = key_strings(b.column(id_column))
        data = {c: b.column(c).to_pylist() for c in need if c != id_column}
        for i in range(b.num_rows):
            if any(str(data[c][i]) != v for c, v in where.items()):
                continue
            ident = ids[i]
            if ident is not None and terms.max_rows_per_key is not None:
                if used.get(ident, 0) >= terms.max_rows_per_key:
                    continue  # contribution bound: later rows of this identity are dropped
                used[ident] = used.get(ident, 0) + 1
            g = None if group_by is None else str(data[group_by][i])
            acc = accs.setdefault(g, _Acc())
            acc.count += 1
            if ident is not None:
                acc.ids.add(ident)
            for c in cols:
                raw = data[c][i]
                if raw is None:
                    continue
                v = float(clip_value(float(raw), terms.clip.get(c)))
                acc.sums[c] = acc.sums.get(c, 0.0) + v
                acc.mins[c] = min(acc.mins.get(c, math.inf), v)
                acc.maxs[c] = max(acc.maxs.get(c, -math.inf), v)
    return accs


def evaluate(fs: Client, table: str, id_column: str, aggs: list[tuple[str, str | None]],
             group_by: str | None, where: dict[str, str], terms: ReleaseTerms,
             history: Sequence[frozenset[str]] = ()) -> Release:
    """The release of a query (at the owner). Groups with fewer than the minimum
    distinct identities are suppressed (decided on noisy counts under DP), then
    more if the suppressed ones together are below it (so total minus released
    never isolates them), then any group whose identities differ from a cell
    released earlier to the same partner (`history`) by fewer than the minimum."""
    cols = sorted({c for _, c in aggs if c})
    accs = _accumulate(fs, table, id_column, cols, group_by, where, terms)
    k = terms.min_group_size
    part = terms.epsilon / (1 + len(aggs)) if terms.epsilon else None
    rows_per_key = terms.max_rows_per_key or 1
    sizes = {g: len(a.ids) for g, a in accs.items()}
    if part:
        sizes = {g: dp.noisy_int(n, rows_per_key, part)[0] for g, n in sizes.items()}
    hidden = complementary_suppression(
        sizes, k, (lambda gs: len(set().union(*(accs[g].ids for g in gs)))) if not part
        else None)
    for g, a in accs.items():
        if g not in hidden and any(_differs_by_few(a.ids, old, k) for old in history):
            hidden.add(g)
    rows: list[dict[str, Any]] = []
    cells: dict[str | None, frozenset[str]] = {}
    for g in sorted(accs, key=str):
        acc = accs[g]
        if g in hidden:
            continue
        cells[g] = frozenset(acc.ids)
        noise: dict[str, Any] = {}
        count: float = acc.count
        if part:
            count, lab = dp.noisy_int(acc.count, rows_per_key, part)
            noise["count(*)"] = lab.to_dict()
        row: dict[str, Any] = {"group": g} if group_by else {}
        for func, col in aggs:
            name = f"{func}({col or '*'})"
            if func == "count":
                row[name] = count
                continue
            assert col is not None
            s = acc.sums.get(col, 0.0)
            if part:
                bound = max(abs(x) for x in terms.clip[col]) if col in terms.clip else 0.0
                s, lab = dp.noisy_real(s, bound * rows_per_key, part)
                noise[name] = lab.to_dict()
            if func == "sum":
                row[name] = s
            elif func == "mean":
                row[name] = s / count if count > 0 else math.nan
            elif func == "min":
                row[name] = acc.mins.get(col)
            else:
                row[name] = acc.maxs.get(col)
        if noise:
            row["noise"] = noise
        rows.append(row)
    return Release(rows, len(hidden), cells)


def _differs_by_few(ids: set[str], old: frozenset[str], k: int) -> bool:
    """True if one set contains the other and the difference has 1..k-1 identities
    (the released aggregates of both would isolate those few)."""
    if ids <= old:
        return 0 < len(old) - len(ids) < k
    if old <= ids:
        return 0 < len(ids) - len(old) < k
    return False


def _history(fs: Client, audit: AuditLog, table: str, partner: str, id_column: str,
             terms: ReleaseTerms) -> list[frozenset[str]]:
    """The identity sets of every cell released to `partner` from `table` before,
    recomputed from the queries in the audit log."""
    out: list[frozenset[str]] = []
    for r in audit.records():
        if r.get("kind") != "query" or r.get("partner") != partner or r.get("table") != table:
            continue
        accs = _accumulate(fs, table, id_column, [], r.get("group_by"),
                           dict(r.get("where") or {}), terms)
        out.extend(frozenset(a.ids) for a in accs.values())
    return out


def serve(ch: Channel, fs: Client, table: str, partner: str, aggs: list[tuple[str, str | None]],
          group_by: str | None, where: dict[str, str], audit: AuditLog, job_id: str,
          ) -> dict[str, Any]:
    """The owner's half: check, compute, release."""
    ch.step = "c2d-check"
    policy = Policy.load(fs, audit.entity)
    terms = policy.check_aggregate(partner, table, None, aggs, group_by, list(where),
                                   spent=audit.spent(partner),
                                   releases=audit.releases(partner))
    if terms.epsilon and any(f in ("min", "max") for f, _ in aggs):
        raise PolicyError("aggregates", "min and max cannot be released with DP noise; ask "
                                        "for count, sum or mean")
    t = policy.partners[partner].tables[table]
    if not t.key_columns:
        raise PolicyError("key_columns", f"{table} has no identity column in the policy, so "
                                         f"the minimum group size cannot be enforced")
    ch.step = "c2d-compute"
    history = _history(fs, audit, table, partner, t.key_columns[0], terms)
    audit.append("query", job=job_id, partner=partner, table=table,
                 aggs=[f"{f}({c or '*'})" for f, c in aggs], group_by=group_by, where=where)
    rel = evaluate(fs, table, t.key_columns[0], aggs, group_by, where, terms, history)
    audit.append("release", job=job_id, partner=partner, groups=len(rel.rows),
                 suppressed=rel.suppressed, epsilon=terms.epsilon)
    ch.step = "c2d-release"
    ch.send("c2d-result", {"groups": rel.rows, "suppressed": rel.suppressed,
                           "epsilon_left": terms.epsilon_left})
    ch.recv("c2d-done")
    return {"role": "owner", "released_groups": len(rel.rows), "suppressed": rel.suppressed,
            "bytes_sent": ch.bytes_sent}


def submit(ch: Channel, table: str, aggs: list[tuple[str, str | None]], group_by: str | None,
           where: dict[str, str]) -> dict[str, Any]:
    """The partner's half: wait for the owner's released rows."""
    ch.step = "c2d-wait"
    m = ch.recv("c2d-result")
    ch.send("c2d-done")
    return {"role": "querier", "table": table, "groups": m.meta["groups"],
            "suppressed": m.meta["suppressed"], "epsilon_left": m.meta.get("epsilon_left")}
