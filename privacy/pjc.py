"""Private join-and-aggregate (the Private Join and Compute pattern, with TenSEAL).

The value holder V encrypts its values; the selector S finds, through ECDH
blinding, which of V's shuffled rows match its keys (per group) and how many of
its rows each joins, multiplies those weights into V's ciphertexts, adds them
up, masks each aggregate with a random share, re-randomises it and sends it
back; V decrypts only the groups its release rules pass, and S removes its
shares (or sends them to V, when V receives the result). See docs/privacy.md
for what each side learns.

Duplicate keys: SQL inner-join semantics; every pair of rows with equal keys
counts. `distinct` (for the minimum-group rule) counts distinct keys among the
matching V rows.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from privacy import dp, he
from privacy.channel import Channel
from privacy.ec import POINT_BYTES, TRUNC_BYTES, GroupPool, job_domain, new_scalar, split
from privacy.errors import PolicyError, PrivacyError, ProtocolError, QueryError
from privacy.policy import complementary_suppression
from privacy.psi import shuffled

Progress = Callable[[str, int, int], None]
COUNT = "#count"
DISTINCT = "#distinct"


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass
class ValueRows:
    """The value holder's input: row keys (None never matches), value columns and
    optionally its group-by labels."""

    keys: list[str | None]
    values: dict[str, list[Any]]
    groups: list[str] | None = None


@dataclass
class SelectRows:
    """The selector's input: row keys and optionally its group-by labels."""

    keys: list[str | None]
    groups: list[str] | None = None


@dataclass
class ReleaseRules:
    """What the value holder enforces on every release."""

    min_distinct: int = 1
    epsilon: float | None = None
    #: per value column, the largest |value| after clipping (DP sensitivity, BFV range)
    bounds: dict[str, float] = field(default_factory=dict)
    #: contribution bound: rows of one key used (the rest are dropped at random)
    max_rows_per_key: int | None = None
    #: the partner's budget left after this release, reported with the result
    epsilon_left: float | None = None
    #: called with the released and suppressed groups before anything is sent
    on_release: Callable[[list[dict[str, Any]], list[str]], None] | None = None


@dataclass(frozen=True)
class GroupResult:
    """One released group: its label, row count, distinct keys and sums."""

    group: str | None
    count: float
    sums: dict[str, float]
    #: per released number, the noise added (mechanism, epsilon, scale); None: exact
    noise: dict[str, Any] | None = None
    #: the selector's and the value holder's group labels (None: that side has none)
    s_group: str | None = None
    v_group: str | None = None
    #: distinct join keys in the group (released only when asked: count(distinct k))
    distinct: float | None = None

    def mean(self, column: str) -> float:
        """sum / count (NaN for an empty group)."""
        return self.sums[column] / self.count if self.count else math.nan


@dataclass
class JoinResult:
    """What a party ends with: released groups, suppressed group count, sizes."""

    groups: list[GroupResult]
    suppressed: int
    value_rows: int
    selector_keys: int
    scheme: str
    #: the partner's privacy budget left on the value holder (None: no budget)
    epsilon_left: float | None = None


# -- value holder -------------------------------------------------------------------
def value_holder(ch: Channel, rows: ValueRows, job_id: str, params: he.HeParams,
                 rules: ReleaseRules, pool: GroupPool, progress: Progress = _no_progress,
                 receive: bool = False, extremes: Sequence[tuple[str, str]] = (),
                 with_distinct: bool = False) -> JoinResult:
    """V's half. Returns what V learns: the released groups as sent (masked), or,
    with `receive`, the result itself (S then learns no aggregate). `extremes` are
    (min|max, column) pairs to release, `with_distinct` releases the distinct key count
    (docs/privacy.md says what each adds to what S learns)."""
    cols = sorted(rows.values)
    ext = [f"{f}:{c}" for f, c in dict.fromkeys(extremes)]
    for f, c in extremes:
        if f not in ("min", "max") or c not in rows.values:
            raise QueryError(f"{f}({c}) is not an extreme of a value column of this party")
    if ext and rows.groups is not None:
        raise QueryError("min and max in a join need the value holder's rows ungrouped (the "
                         "selector cannot tell its groups apart); group by the other party's "
                         "columns, or ask the owner for min/max with a query job")
    for c in cols:
        if len(rows.values[c]) != len(rows.keys):
            raise QueryError(f"column {c} has {len(rows.values[c])} values for "
                             f"{len(rows.keys)} keys")
    live = [i for i, k in enumerate(rows.keys) if k is not None]
    order = [live[j] for j in shuffled(len(live))]
    if rules.max_rows_per_key is not None:  # contribution bound: a random few rows per key
        used: dict[str | None, int] = {}
        kept = []
        for i in order:
            if used.get(rows.keys[i], 0) < rules.max_rows_per_key:
                used[rows.keys[i]] = used.get(rows.keys[i], 0) + 1
                kept.append(i)
        order = kept
    n = len(order)
    if params.scheme == "bfv":
        for c in cols:
            bound = rules.bounds.get(c) or max((abs(int(v)) for v in rows.values[c]), default=0)
            rules.bounds[c] = float(bound)
            if bound * max(n, 1) >= params.plain_modulus() // 2:
                raise QueryError(f"sum of {c} could reach {bound * n}, beyond the exact BFV "
                                 f"range +-{params.plain_modulus() // 2}; clip the column or "
                                 f"use ckks")
    else:
        for c in cols:
            rules.bounds.setdefault(c, max((abs(float(v)) for v in rows.values[c]), default=0.0))
    vlabels = sorted(set(rows.groups[i] for i in order)) if rows.groups is not None else [None]
    domain, alpha = job_domain(job_id), new_scalar()
    ctx = he.new_context(params)
    ch.step = "pjc-blind-own"
    keys_in_order = [rows.keys[i] or "" for i in order]
    a_blobs = list(pool.hash_mul(alpha, domain, [keys_in_order]))
    ch.step = "pjc-encrypt"
    slots = params.slots()
    first: set[tuple[str, str | None]] = set()
    distinct_flag = []
    for i in order:
        g = rows.groups[i] if rows.groups is not None else None
        key = (rows.keys[i] or "", g)
        distinct_flag.append(0 if key in first else 1)
        first.add(key)
    ch.send("pjc-ctx", {"n": n, "scheme": params.scheme, "degree": params.degree,
                        "vgroups": len(vlabels), "columns": cols, "extremes": ext},
            he.public_bytes(ctx, params))
    for blob in a_blobs:
        ch.send("pjc-a", body=blob)
    ch.send("pjc-a-end", {"n": n})
    del a_blobs
    chunks = -(-n // slots)
    sent = 0
    for ci in range(chunks):
        idx = order[ci * slots:(ci + 1) * slots]
        dflags = distinct_flag[ci * slots:(ci + 1) * slots]
        for gi, label in enumerate(vlabels):
            sel = [1 if label is None or rows.groups is None or rows.groups[i] == label else 0
                   for i in idx]
            vectors: list[tuple[str, list[Any]]] = [
                (COUNT, sel), (DISTINCT, [s * d for s, d in zip(sel, dflags, strict=True)])]
            for c in cols:
                conv = int if params.scheme == "bfv" else float
                vectors.append((c, [conv(rows.values[c][i]) * s
                                    for i, s in zip(idx, sel, strict=True)]))
            for kind, vals in vectors:
                ch.send("pjc-ct", {"chunk": ci, "vg": gi, "agg": kind},
                        he.encrypt(ctx, params, vals))
        sent += len(idx)
        progress("pjc-encrypt", sent, n)
    for c in sorted({e.split(":", 1)[1] for e in ext}):  # the rank order of c, no values
        ranked = sorted(range(n), key=lambda p: rows.values[c][order[p]])  # ties: random
        ch.send("pjc-order", {"column": c}, array("I", ranked).tobytes())
    ch.send("pjc-ct-end", {"chunks": chunks})
    ch.step = "pjc-reblind"
    lists: list[tuple[int, bytes]] = []
    while True:
        m = ch.recv("pjc-b", "pjc-b-end")
        if m.kind == "pjc-b-end":
            max_mult = max(1, int(m.meta.get("max_mult", 1)))
            break
        if len(m.body) % POINT_BYTES:
            raise ProtocolError(f"{ch.peer} sent a pjc-b list that is not whole points")
        lists.append((int(m.meta["sg"]), m.body))
    s_keys = sum(len(b) for _, b in lists) // POINT_BYTES
    if params.scheme == "bfv":
        for c in cols:
            if rules.bounds[c] * max(n, 1) * max_mult >= params.plain_modulus() // 2:
                raise QueryError(f"sum of {c} could reach {rules.bounds[c] * n * max_mult} "
                                 f"(with {ch.peer}'s duplicate keys), beyond the exact BFV "
                                 f"range; clip the column or use ckks")
    check_groups(lists, rules.min_distinct, strict=rules.epsilon is not None, peer=ch.peer)
    for li, (_, blob) in enumerate(lists):
        items = split(b"".join(pool.mul(alpha, [blob], TRUNC_BYTES)), TRUNC_BYTES)
        ch.send("pjc-bb", {"list": li}, b"".join(items[j] for j in shuffled(len(items))))
        progress("pjc-reblind", li + 1, len(lists))
    ch.send("pjc-bb-end", {"lists": len(lists)})
    ch.step = "pjc-release"
    aggs: dict[tuple[int, int], dict[str, tuple[bytes, Any]]] = {}
    while True:
        m = ch.recv("pjc-agg", "pjc-agg-end")
        if m.kind == "pjc-agg-end":
            break
        aggs.setdefault((int(m.meta["sg"]), int(m.meta["vg"])), {})[str(m.meta["agg"])] = (
            m.body, m.meta.get("share"))
    released: list[dict[str, Any]] = []
    results: list[GroupResult] = []
    parts_of: dict[tuple[int, int], dict[str, tuple[bytes, Any]]] = {}
    counts: dict[tuple[int, int], int] = {}
    sizes: dict[tuple[int, int], int] = {}
    # the budget: parallel over disjoint groups; within a group, one part each for the
    # threshold decision, the count and every sum
    part = (rules.epsilon / (2 + len(cols) + len(ext))) if rules.epsilon else None
    dnoise: dict[tuple[int, int], dict[str, Any]] = {}
    # a key's contribution: its rows at V times the rows it joins at S (both clipped)
    rows_per_key = (rules.max_rows_per_key or 1) * max_mult
    for (sg, vg), parts in sorted(aggs.items()):
        need = {COUNT, DISTINCT, *cols, *ext}
        if set(parts) != need:
            raise ProtocolError(f"{ch.peer} sent aggregates {sorted(parts)} for group "
                                f"{sg}/{vg}, expected {sorted(need)}")
        count = he.unmask(params, he.decrypt_masked(ctx, params, parts[COUNT][0]),
                          parts[COUNT][1])
        distinct = he.unmask(params, he.decrypt_masked(ctx, params, parts[DISTINCT][0]),
                             parts[DISTINCT][1])
        if abs(count - round(count)) > 0.01 or not 0 <= round(count) <= n * max_mult:
            raise PrivacyError(f"the {params.scheme} count of group {sg}/{vg} came back as "
                               f"{count}, not a row count: the parameters lost precision; "
                               f"nothing was released")
        parts_of[(sg, vg)], counts[(sg, vg)] = parts, round(count)
        sizes[(sg, vg)] = round(distinct)
        if part:  # suppression is decided on a noisy distinct count
            # a key counts once per V group it has rows in: at most max_rows_per_key
            sizes[(sg, vg)], lab = dp.noisy_int(round(distinct), rules.max_rows_per_key or 1,
                                                part)
            dnoise[(sg, vg)] = lab.to_dict()
    hidden = complementary_suppression(sizes, rules.min_distinct)
    suppressed = [f"{sg}/{vg}" for sg, vg in sorted(hidden)]
    for (sg, vg), parts in sorted(parts_of.items()):
        if (sg, vg) in hidden:
            continue
        label = vlabels[vg]
        out: dict[str, Any] = {"sg": sg, "vg": vg, "vlabel": label}
        rcount: float = counts[(sg, vg)]
        noise: dict[str, Any] = {}
        if part:
            rcount, lab = dp.noisy_int(counts[(sg, vg)], rows_per_key, part)
            noise["count"] = lab.to_dict()
        out["count"] = rcount
        if with_distinct:  # the noisy count suppression was decided on: no further epsilon
            out["distinct"] = sizes[(sg, vg)]
            if part:
                noise["distinct"] = dnoise[(sg, vg)]
        sums: dict[str, float] = {}
        for c in cols + ext:
            masked = he.decrypt_masked(ctx, params, parts[c][0])
            if part:
                bound = max(rules.bounds.get(c.split(":")[-1], 0.0), 1e-12)
                # one key moves a sum by its rows' values, a min or max across the range
                sens = 2 * bound if c in ext else bound * rows_per_key
                if params.scheme == "bfv":
                    noisy, lab = dp.noisy_int(int(masked), math.ceil(sens), part)
                    masked = noisy % params.plain_modulus()
                else:
                    masked, lab = dp.noisy_real(float(masked), sens, part)
                noise[c] = lab.to_dict()
            out[c] = masked
            sums[c] = float(masked)
        if noise:
            out["noise"] = noise
        released.append(out)
        results.append(GroupResult(label, rcount, sums, distinct=out.get("distinct")))
    if rules.on_release is not None:
        rules.on_release(released, suppressed)
    if not receive:
        ch.send("pjc-release", {"groups": released, "suppressed": len(suppressed),
                                "epsilon_left": rules.epsilon_left})
        ch.recv("pjc-done")
        return JoinResult(results, len(suppressed), n, s_keys, params.scheme, rules.epsilon_left)
    # V receives the result: S sends its shares (and labels) of the released groups only
    ch.send("pjc-release", {"groups": [{"sg": g["sg"], "vg": g["vg"]} for g in released],
                            "suppressed": len(suppressed), "receiver": "value-holder"})
    m = ch.recv("pjc-shares")
    s_labels = m.meta["labels"]
    shares = {(int(x["sg"]), int(x["vg"])): x["shares"] for x in m.meta["groups"]}
    mine = []
    for rg in released:
        sh = shares[(int(rg["sg"]), int(rg["vg"]))]
        sums = {c: float(he.unmask(params, rg[c], sh[c])) for c in cols + ext}
        slab = s_labels[int(rg["sg"])] if s_labels else None
        mine.append(GroupResult(slab if slab is not None else rg["vlabel"],
                                float(rg["count"]), sums, rg.get("noise"), slab, rg["vlabel"],
                                rg.get("distinct")))
    ch.send("pjc-done")
    return JoinResult(mine, len(suppressed), n, s_keys, params.scheme, rules.epsilon_left)


def check_groups(lists: list[tuple[int, bytes]], k: int, *, strict: bool, peer: str) -> None:
    """Refuse selector groups whose overlap would let the selector difference them:
    under DP (`strict`) any key in two groups; otherwise two overlapping groups that
    differ by 1 to k-1 keys (X = A u B and Y = A give the suppressed B as X - Y)."""
    groups: dict[int, set[bytes]] = {}
    for sg, blob in lists:
        groups.setdefault(sg, set()).update(split(blob, POINT_BYTES))
    names = sorted(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = groups[a], groups[b]
            if x.isdisjoint(y):
                continue
            if strict or 0 < len(x - y) < k or 0 < len(y - x) < k:
                why = "under DP" if strict else f"and differ by fewer than {k} keys"
                raise PolicyError("groups", f"{peer}'s groups {a} and {b} share keys {why}: "
                                            f"differencing them would reveal a group below "
                                            f"the minimum size; give each key one group")


# -- selector -----------------------------------------------------------------------
def selector(ch: Channel, rows: SelectRows, job_id: str, pool: GroupPool,
             progress: Progress = _no_progress, *, max_mult: int | None = None,
             receive: bool = True) -> JoinResult:
    """S's half. Each of V's rows is weighted, per S group, by the number of S's rows
    with its key in that group (clipped to `max_mult`): SQL inner-join semantics.
    Returns the released aggregates, unmasked (or, unless `receive`, only the number
    of groups released: the value holder receives the result)."""
    labels = sorted(set(g for g, k in zip(rows.groups, rows.keys, strict=True) if k is not None)
                    ) if rows.groups is not None else [None]
    per_group: dict[str | None, dict[str, int]] = {lab: {} for lab in labels}
    for i, k in enumerate(rows.keys):
        if k is not None:
            mult = per_group[rows.groups[i] if rows.groups is not None else None]
            mult[k] = mult.get(k, 0) + 1
    domain, beta = job_domain(job_id), new_scalar()
    ch.step = "pjc-blind-own"
    b_lists: list[tuple[int, int, bytes]] = []  # (S group, multiplicity, blinded keys)
    top = 1
    for sg, lab in enumerate(labels):
        by_mult: dict[int, list[str]] = {}
        for k, c in per_group[lab].items():
            c = min(c, max_mult) if max_mult else c
            by_mult.setdefault(c, []).append(k)
            top = max(top, c)
        for j in shuffled(len(by_mult)):  # V sees list sizes, not which multiplicity
            c = sorted(by_mult)[j]
            ks = [by_mult[c][i] for i in shuffled(len(by_mult[c]))]
            b_lists.append((sg, c, b"".join(pool.hash_mul(beta, domain, [ks]))))
    ch.step = "pjc-receive"
    head = ch.recv("pjc-ctx")
    n, vgroups, cols = int(head.meta["n"]), int(head.meta["vgroups"]), list(head.meta["columns"])
    ext = [str(e) for e in head.meta.get("extremes", [])]
    if ext and (vgroups != 1 or any(e.split(":", 1)[1] not in cols for e in ext)):
        raise ProtocolError(f"{ch.peer} asked for extremes {ext} over grouped rows or "
                            f"columns it does not send")
    ctx = he.load_context(head.body)
    params = he.HeParams(str(head.meta["scheme"]), int(head.meta["degree"]))
    a_blobs = []
    while True:
        m = ch.recv("pjc-a", "pjc-a-end")
        if m.kind == "pjc-a-end":
            break
        a_blobs.append(m.body)
    if sum(len(b) for b in a_blobs) != n * POINT_BYTES:
        raise ProtocolError(f"{ch.peer} announced {n} rows but sent a different number")
    cts: dict[tuple[int, int, str], bytes] = {}
    orders: dict[str, array[int]] = {}
    while True:
        m = ch.recv("pjc-ct", "pjc-order", "pjc-ct-end")
        if m.kind == "pjc-ct-end":
            break
        if m.kind == "pjc-order":
            orders[str(m.meta["column"])] = _rank_order(m.body, n, ch.peer)
            continue
        cts[(int(m.meta["chunk"]), int(m.meta["vg"]), str(m.meta["agg"]))] = m.body
        progress("pjc-receive", len(cts), -1)
    ch.step = "pjc-send"
    for sg, _, blob in b_lists:
        ch.send("pjc-b", {"sg": sg}, blob)
    ch.send("pjc-b-end", {"lists": len(b_lists), "max_mult": top})
    ch.step = "pjc-blind-peer"
    d_vals = split(b"".join(pool.mul(beta, a_blobs, TRUNC_BYTES)), TRUNC_BYTES)
    weights: list[dict[bytes, int]] = [{} for _ in labels]
    got = 0
    while True:
        m = ch.recv("pjc-bb", "pjc-bb-end")
        if m.kind == "pjc-bb-end":
            break
        li = int(m.meta["list"])
        if not 0 <= li < len(b_lists):
            raise ProtocolError(f"{ch.peer} returned an unknown list {li}")
        sg, c, _ = b_lists[li]
        weights[sg].update(dict.fromkeys(split(m.body, TRUNC_BYTES), c))
        got += 1
    if got != len(b_lists):
        raise ProtocolError(f"{ch.peer} returned {got} lists for {len(b_lists)} sent")
    ch.step = "pjc-aggregate"
    slots = params.slots()
    chunks = -(-n // slots) if n else 0
    kinds = [COUNT, DISTINCT, *cols]
    if {e.split(":", 1)[1] for e in ext} - set(orders):
        raise ProtocolError(f"{ch.peer} asked for min/max without sending the rank order")
    shares: dict[tuple[int, int, str], Any] = {}
    for sg, w in enumerate(weights):
        accs = {(vg, k): he.Accumulator(ctx, params) for vg in range(vgroups)
                for k in kinds + ext}
        for ci in range(chunks):
            piece = d_vals[ci * slots:(ci + 1) * slots]
            times = [w.get(d, 0) for d in piece] + [0] * (slots - len(piece))
            if any(times):
                hit = [1 if x else 0 for x in times]
                for vg in range(vgroups):
                    for k in kinds:
                        key = (ci, vg, k)
                        if key not in cts:
                            raise ProtocolError(f"{ch.peer} did not send ciphertext {key}")
                        accs[(vg, k)].add(he.load_vector(ctx, params, cts[key]),
                                          hit if k == DISTINCT else times)
            progress("pjc-aggregate", sg * chunks + ci + 1, len(weights) * chunks)
        for e in ext:  # V's ciphertext times a one-hot at the group's first hit in rank order
            func, col = e.split(":", 1)
            ranks = orders[col] if func == "min" else reversed(orders[col])
            pos = next((p for p in ranks if d_vals[p] in w), None)
            if pos is not None:
                ci, slot = divmod(pos, slots)
                accs[(0, e)].add(he.load_vector(ctx, params, cts[(ci, 0, col)]),
                                 [int(i == slot) for i in range(slots)])
        for (vg, k), acc in accs.items():
            data, share = acc.masked()
            reveal = k in (COUNT, DISTINCT)
            shares[(sg, vg, k)] = share
            ch.send("pjc-agg", {"sg": sg, "vg": vg, "agg": k,
                                "share": share if reveal else None}, data)
    ch.send("pjc-agg-end")
    ch.step = "pjc-release"
    rel = ch.recv("pjc-release")
    s_keys = sum(len(v) for v in per_group.values())
    if rel.meta.get("receiver") == "value-holder":
        out = [{"sg": g["sg"], "vg": g["vg"],
                "shares": {c: shares[(int(g["sg"]), int(g["vg"]), c)] for c in cols + ext}}
               for g in rel.meta["groups"]]
        ch.send("pjc-shares", {"groups": out, "labels": labels if rows.groups else None})
        ch.recv("pjc-done")
        return JoinResult([], int(rel.meta["suppressed"]), n, s_keys, params.scheme)
    if not receive:
        raise ProtocolError(f"{ch.peer} sent the result to the selector, but the job names "
                            f"the value holder as the receiver")
    results: list[GroupResult] = []
    for g in rel.meta["groups"]:
        sg, vg = int(g["sg"]), int(g["vg"])
        sums = {c: float(he.unmask(params, g[c], shares[(sg, vg, c)])) for c in cols + ext}
        label = labels[sg] if rows.groups is not None else g.get("vlabel")
        results.append(GroupResult(label, float(g["count"]), sums, g.get("noise"),
                                   labels[sg] if rows.groups is not None else None,
                                   g.get("vlabel"), g.get("distinct")))
    ch.send("pjc-done")
    return JoinResult(results, int(rel.meta["suppressed"]), n, s_keys, params.scheme,
                      rel.meta.get("epsilon_left"))


def _rank_order(body: bytes, n: int, peer: str) -> array[int]:
    """V's rank order of a column: a permutation of its n row positions."""
    ranks = array("I")
    if len(body) != n * ranks.itemsize:
        raise ProtocolError(f"{peer} sent a rank order of {len(body)} bytes for {n} rows")
    ranks.frombytes(body)
    if len(set(ranks)) != n or (n and max(ranks) >= n):
        raise ProtocolError(f"{peer} sent a rank order that is not a permutation of its rows")
    return ranks
