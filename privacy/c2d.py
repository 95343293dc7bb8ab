"""Compute-to-data: a partner's aggregate query runs at the owner's site over the
owner's table; only aggregates that pass the owner's policy leave.

The owner checks the query against its policy before reading anything, then
computes count, sum, mean, min, max (optionally grouped by one column and
filtered by equality on allowed columns), suppresses groups with fewer distinct
identities (the table's first allowed key column) than the policy's minimum,
adds Laplace noise when the policy asks for it, and sends the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gfs.client import Client
from privacy.audit import AuditLog
from privacy.channel import Channel
from privacy.errors import PolicyError
from privacy.pjc import _laplace
from privacy.policy import Policy, ReleaseTerms, clip_value
from privacy.tables import check_columns, iter_batches, key_strings


@dataclass
class _Acc:
    count: int = 0
    ids: set[str] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=dict)
    mins: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)


def evaluate(fs: Client, table: str, id_column: str, aggs: list[tuple[str, str | None]],
             group_by: str | None, where: dict[str, str], terms: ReleaseTerms,
             ) -> tuple[list[dict[str, Any]], int]:
    """The released rows and the number of suppressed groups of a query (at the owner)."""
    cols = sorted({c for _, c in aggs if c})
    need = list(dict.fromkeys([id_column, *cols, *where, *([group_by] if group_by else [])]))
    check_columns(fs, table, need)
    accs: dict[str | None, _Acc] = {}
    for b in iter_batches(fs, table, need):
        ids = key_strings(b.column(id_column))
        data = {c: b.column(c).to_pylist() for c in need if c != id_column}
        for i in range(b.num_rows):
            if any(str(data[c][i]) != v for c, v in where.items()):
                continue
            g = None if group_by is None else str(data[group_by][i])
            acc = accs.setdefault(g, _Acc())
            acc.count += 1
            if ids[i] is not None:
                acc.ids.add(ids[i] or "")
            for c in cols:
                raw = data[c][i]
                if raw is None:
                    continue
                v = float(clip_value(float(raw), terms.clip.get(c)))
                acc.sums[c] = acc.sums.get(c, 0.0) + v
                acc.mins[c] = min(acc.mins.get(c, math.inf), v)
                acc.maxs[c] = max(acc.maxs.get(c, -math.inf), v)
    rows: list[dict[str, Any]] = []
    suppressed = 0
    eps = terms.epsilon / max(1, len(aggs)) if terms.epsilon else None
    for g in sorted(accs, key=str):
        acc = accs[g]
        if len(acc.ids) < terms.min_group_size:
            suppressed += 1
            continue
        count = acc.count + (_laplace(1.0 / eps) if eps else 0.0)
        row: dict[str, Any] = {"group": g} if group_by else {}
        for func, col in aggs:
            name = f"{func}({col or '*'})"
            if func == "count":
                row[name] = count
                continue
            assert col is not None
            bound = max(abs(x) for x in terms.clip[col]) if col in terms.clip else 0.0
            s = acc.sums.get(col, 0.0) + (_laplace(bound / eps) if eps else 0.0)
            if func == "sum":
                row[name] = s
            elif func == "mean":
                row[name] = s / count if count > 0 else math.nan
            elif func == "min":
                row[name] = acc.mins.get(col)
            else:
                row[name] = acc.maxs.get(col)
        rows.append(row)
    return rows, suppressed


def serve(ch: Channel, fs: Client, table: str, partner: str, aggs: list[tuple[str, str | None]],
          group_by: str | None, where: dict[str, str], audit: AuditLog, job_id: str,
          ) -> dict[str, Any]:
    """The owner's half: check, compute, release."""
    ch.step = "c2d-check"
    policy = Policy.load(fs, audit.entity)
    terms = policy.check_aggregate(partner, table, None, aggs, group_by, list(where),
                                   spent=audit.spent(partner))
    if terms.epsilon and any(f in ("min", "max") for f, _ in aggs):
        raise PolicyError("aggregates", "min and max cannot be released with DP noise; ask "
                                        "for count, sum or mean")
    t = policy.partners[partner].tables[table]
    if not t.key_columns:
        raise PolicyError("key_columns", f"{table} has no identity column in the policy, so "
                                         f"the minimum group size cannot be enforced")
    audit.append("query", job=job_id, partner=partner, table=table,
                 aggs=[f"{f}({c or '*'})" for f, c in aggs], group_by=group_by, where=where)
    ch.step = "c2d-compute"
    rows, suppressed = evaluate(fs, table, t.key_columns[0], aggs, group_by, where, terms)
    audit.append("release", job=job_id, partner=partner, groups=len(rows),
                 suppressed=suppressed, epsilon=terms.epsilon)
    ch.step = "c2d-release"
    ch.send("c2d-result", {"groups": rows, "suppressed": suppressed})
    ch.recv("c2d-done")
    return {"role": "owner", "released_groups": len(rows), "suppressed": suppressed,
            "bytes_sent": ch.bytes_sent}


def submit(ch: Channel, table: str, aggs: list[tuple[str, str | None]], group_by: str | None,
           where: dict[str, str]) -> dict[str, Any]:
    """The partner's half: wait for the owner's released rows."""
    ch.step = "c2d-wait"
    m = ch.recv("c2d-result")
    ch.send("c2d-done")
    return {"role": "querier", "table": table, "groups": m.meta["groups"],
            "suppressed": m.meta["suppressed"]}
