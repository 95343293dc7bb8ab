"""min/max and count(distinct key) in private joins: equal to DuckDB on integer
data, released only for groups above the threshold (noisy under DP), and from
the attacker's side: the selector learns only the value holder's rank order,
the value holder learns nothing of which rows matched (docs/privacy.md)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from privacy import he, pjc
from privacy.errors import QueryError
from privacy.jobs import JobSpec, parse_aggs, run_job
from privacy.testing import run_pair
from tests.test_privacy_adversary import Recorder
from tests.test_privacy_sql import DIM, FACT, check, reference
from tests.test_privacy_sql import world as world  # the shared fixture

World = tuple[Path, dict[str, Any]]


def test_min_max_distinct_from_the_dimension_grouped_by_the_fact(world: World) -> None:
    state, t = world
    ans = run_job(JobSpec("join", FACT, DIM, "k", group_by="g,h",
                          aggs="count(*),min(v),max(v),count(distinct k)"), state).answer
    want = reference(t, 'SELECT g, h, count(*) AS "count(*)", min(v) AS "min(v)", '
                        'max(v) AS "max(v)", count(DISTINCT k) AS "count(distinct k)" '
                        "FROM fact JOIN dim USING (k) GROUP BY g, h")
    check(ans["groups"], want, ["g", "h"])


def test_min_max_from_the_fact_grouped_by_the_dimension_at_the_value_holder(
        world: World) -> None:
    state, t = world
    ans = run_job(JobSpec("join", FACT, DIM, "k", group_by="region", receiver="left",
                          aggs="min(amt),max(amt),count(distinct k)"), state).answer
    assert ans["role"] == "value-holder"
    want = reference(t, 'SELECT region, min(amt) AS "min(amt)", max(amt) AS "max(amt)", '
                        'count(DISTINCT k) AS "count(distinct k)" '
                        "FROM fact JOIN dim USING (k) GROUP BY region")
    check(ans["groups"], want, ["region"])


def test_min_over_the_value_holders_own_groups_is_refused(world: World) -> None:
    state, _ = world
    with pytest.raises(QueryError, match="ungrouped"):
        run_job(JobSpec("join", FACT, DIM, "k", group_by="region", aggs="min(v)"), state)


def test_distinct_of_a_non_key_column_is_refused_before_anything_runs() -> None:
    with pytest.raises(QueryError, match="join key"):
        JobSpec("join", FACT, DIM, "k", aggs="count(distinct g)").validate()
    with pytest.raises(QueryError, match="distinct goes with count"):
        parse_aggs("sum(distinct v)")
    assert parse_aggs("COUNT(DISTINCT k)") == [("count_distinct", "k")]


# -- the pjc halves directly: thresholds, DP, the adversary's view ----------------------
def _rows(n: int, seed: int, values: list[int] | None = None
          ) -> tuple[pjc.ValueRows, pjc.SelectRows]:
    rnd = random.Random(seed)
    vk: list[str | None] = [f"k{i}" for i in range(n)]
    vals = values or [rnd.randrange(-1000, 1000) for _ in range(n)]
    sk: list[str | None] = [f"k{i}" for i in range(0, n, 2)] + ["zz"]
    groups = [{0: "tiny", 10: "tiny2"}.get(i % 20, "big") for i in range(0, n, 2)] + ["big"]
    return pjc.ValueRows(vk, {"bal": vals}), pjc.SelectRows(sk, groups)


def _join(v: pjc.ValueRows, s: pjc.SelectRows, rules: pjc.ReleaseRules,
          rec: dict[str, Recorder] | None = None, receive_v: bool = False,
          ) -> tuple[pjc.JoinResult, pjc.JoinResult]:
    rec = {} if rec is None else rec

    def vh(ch: Any, pool: Any) -> Any:
        rec["v"] = Recorder(ch)
        return pjc.value_holder(rec["v"], v, "j", he.HeParams("bfv"), rules, pool,
                                receive=receive_v, extremes=[("min", "bal"), ("max", "bal")],
                                with_distinct=True)

    def sel(ch: Any, pool: Any) -> Any:
        rec["s"] = Recorder(ch)
        return pjc.selector(rec["s"], s, "j", pool, receive=not receive_v)
    vr, sr, _ = run_pair(vh, sel, timeout=120, workers=1)
    for x in (vr, sr):
        if isinstance(x, BaseException):
            raise x
    return vr, sr


def test_small_groups_release_no_extreme_and_big_ones_are_exact() -> None:
    v, s = _rows(200, 1)
    _, sr = _join(v, s, pjc.ReleaseRules(min_distinct=15))
    matched = {g: [v.values["bal"][int(k[1:])] for k, gg in zip(s.keys, s.groups or [],
                                                                strict=True)
                   if gg == g and k != "zz" and k is not None] for g in ("big", "tiny")}
    assert len(matched["tiny"]) == 10 and sr.suppressed == 2
    (big,) = sr.groups
    assert big.group == "big" and big.distinct == len(matched["big"])
    assert big.sums["min:bal"] == min(matched["big"])
    assert big.sums["max:bal"] == max(matched["big"])


def test_dp_noise_on_min_max_uses_the_range_as_sensitivity() -> None:
    # groups of 50 and 400 keys: the noisy distinct count (Laplace, scale 5) suppresses
    # one below 1 with odds under 1e-4 (with 10-key groups a run in ~30 lost them all)
    v, s = _rows(1000, 2)
    v.values["bal"] = [max(-1000, min(1000, x)) for x in v.values["bal"]]
    _, sr = _join(v, s, pjc.ReleaseRules(min_distinct=1, epsilon=1.0,
                                         bounds={"bal": 1000.0}, max_rows_per_key=1))
    assert sr.suppressed == 0 and len(sr.groups) == 3
    for g in sr.groups:
        assert g.noise is not None
        part = 1.0 / (2 + 1 + 2)  # threshold, count, sum of bal, min, max
        assert g.noise["min:bal"]["scale"] == pytest.approx(2000 / part)
        assert g.noise["bal"]["scale"] == pytest.approx(1000 / part)
        assert g.noise["distinct"]["epsilon"] == pytest.approx(part)


def test_the_selector_sees_only_the_rank_order_of_the_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two value columns with the same order (x and 7x + 3) give the selector the
    same rank-order message; a different order gives a different one."""
    monkeypatch.setattr(pjc, "shuffled", lambda n: list(range(n)))
    base = random.Random(3).sample(range(-5000, 5000), 120)

    def order_seen(values: list[int]) -> bytes:
        v, s = _rows(120, 3, values)
        rec: dict[str, Recorder] = {}
        _join(v, s, pjc.ReleaseRules(), rec)
        (m,) = [m for m in rec["s"].received if m.kind == "pjc-order"]
        assert sorted(m.meta) == ["column"]
        return m.body
    same = order_seen(base)
    assert order_seen([7 * x + 3 for x in base]) == same
    assert order_seen([-x for x in base]) != same


def test_the_value_holder_cannot_read_the_extremes_it_sends_back() -> None:
    """When the selector receives, the value holder decrypts the min/max only under
    the selector's share: the number it sees is none of its own values (else it
    would know which of its rows matched)."""
    v, s = _rows(150, 4)
    rec: dict[str, Recorder] = {}
    _, sr = _join(v, s, pjc.ReleaseRules(), rec)
    assert sr.groups[0].sums["min:bal"] in v.values["bal"]
    seen = [m for m in rec["v"].received if m.kind == "pjc-agg"
            and str(m.meta["agg"]).startswith(("min:", "max:"))]
    assert seen and all(m.meta["share"] is None for m in seen)
    released = next(m for k, m, _ in rec["v"].sent if k == "pjc-release")["groups"]
    own = set(v.values["bal"])
    for g in released:
        for e in ("min:bal", "max:bal"):
            t = he.HeParams("bfv").plain_modulus()
            masked = g[e] % t
            assert masked not in own and masked - t not in own
