"""Join-and-aggregate with real TenSEAL ciphertexts: results equal the plaintext
computation (exact for BFV; CKKS within 0.05 + 1e-9 |sum|), SQL inner-join
semantics with duplicate keys, suppression of small groups."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from privacy import dp, he, pjc
from privacy.errors import PolicyError
from privacy.testing import run_pair

CKKS_TOL_ABS = 5e-2
CKKS_TOL_REL = 1e-9


def plaintext(v: pjc.ValueRows, s: pjc.SelectRows, col: str) -> dict[Any, tuple[int, float]]:
    """SQL inner-join semantics: every (V row, S row) pair with equal keys counts."""
    s_mult: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    for i, k in enumerate(s.keys):
        if k is not None:
            s_mult[k][s.groups[i] if s.groups is not None else None] += 1
    out: dict[Any, list[float]] = defaultdict(lambda: [0, 0.0])
    for i, k in enumerate(v.keys):
        if k is None:
            continue
        for g, m in s_mult.get(k, {}).items():
            label = v.groups[i] if v.groups is not None else g
            out[label][0] += m
            out[label][1] += v.values[col][i] * m
    return {g: (int(c), s_) for g, (c, s_) in out.items()}


def join(v: pjc.ValueRows, s: pjc.SelectRows, scheme: str,
         rules: pjc.ReleaseRules | None = None) -> pjc.JoinResult:
    r = rules or pjc.ReleaseRules()
    vr, sr, _ = run_pair(
        lambda ch, pool: pjc.value_holder(ch, v, "j", he.HeParams(scheme), r, pool),
        lambda ch, pool: pjc.selector(ch, s, "j", pool), timeout=120, workers=1)
    for x in (vr, sr):
        if isinstance(x, BaseException):
            raise x
    assert isinstance(sr, pjc.JoinResult)
    return sr


def data(n: int, seed: int, real: bool) -> tuple[pjc.ValueRows, pjc.SelectRows]:
    rnd = random.Random(seed)
    vk: list[str | None] = [str(rnd.randrange(n)) for _ in range(n)]  # duplicates on both sides
    vk[0] = None
    vals = [rnd.uniform(-50, 1000) if real else rnd.randrange(-50, 100000) for _ in range(n)]
    sk: list[str | None] = [str(rnd.randrange(n)) for _ in range(n)]
    return (pjc.ValueRows(vk, {"bal": vals}, [rnd.choice("xyz") for _ in range(n)]),
            pjc.SelectRows(sk, [("north", "south")[int(k or 0) % 2] for k in sk]))


@pytest.mark.parametrize("group_side", ["none", "selector", "holder"])
def test_bfv_equals_plaintext_exactly(group_side: str) -> None:
    v, s = data(5000, 1, real=False)
    if group_side != "holder":
        v.groups = None
    if group_side != "selector":
        s.groups = None
    res = join(v, s, "bfv")
    want = plaintext(v, s, "bal")
    got = {g.group: (g.count, g.sums["bal"]) for g in res.groups}
    assert got == {g: (float(c), float(t)) for g, (c, t) in want.items()}
    assert res.scheme == "bfv" and res.suppressed == 0


def test_ckks_within_tolerance() -> None:
    v, s = data(3000, 2, real=True)
    v.groups = None
    res = join(v, s, "ckks")
    want = plaintext(v, s, "bal")
    assert {g.group for g in res.groups} == set(want)
    for g in res.groups:
        c, total = want[g.group]
        assert g.count == c
        assert abs(g.sums["bal"] - total) <= CKKS_TOL_ABS + CKKS_TOL_REL * abs(total)
        assert g.mean("bal") == pytest.approx(total / c, abs=1e-5)


def test_duplicate_key_semantics() -> None:
    # V: key k1 twice (two accounts), k2 once; S: k1 three times in one group, k2 in
    # another: as in SQL, every pair of rows with equal keys counts (2 x 3 for k1).
    v = pjc.ValueRows(["k1", "k1", "k2", "k3"], {"bal": [10, 20, 5, 7]})
    s = pjc.SelectRows(["k1", "k1", "k1", "k2"], ["a", "a", "a", "b"])
    res = join(v, s, "bfv")
    got = {g.group: (g.count, g.sums["bal"]) for g in res.groups}
    assert got == {"a": (6.0, 90.0), "b": (1.0, 5.0)}


def test_overlapping_selector_groups_are_refused() -> None:
    """The overlapping-group attack (issue 14): X = A u B and Y = A both pass the
    threshold, and sum(X) - sum(Y) is the suppressed group B. The value holder sees
    the same blinded key in two of S's lists and refuses before anything is released."""
    v = pjc.ValueRows([str(i) for i in range(40)], {"bal": list(range(40))})
    a = [str(i) for i in range(30)]
    s = pjc.SelectRows([*a, "30", "31", *a], ["X"] * 32 + ["Y"] * 30)
    seen: list[Any] = []
    rules = pjc.ReleaseRules(min_distinct=5, on_release=lambda rel, sup: seen.append(rel))
    with pytest.raises(PolicyError, match=r"rule groups: .*groups 0 and 1 share keys"):
        join(v, s, "bfv", rules)
    assert seen == []


def test_overlapping_groups_far_apart_are_sql_and_allowed_without_dp() -> None:
    """A key in two groups is ordinary SQL (many-to-many); it is allowed while the
    groups differ by at least the minimum, and refused under DP (a key's
    contribution would count in several groups)."""
    v = pjc.ValueRows([str(i) for i in range(40)], {"bal": list(range(40))})
    s = pjc.SelectRows([*map(str, range(20)), *map(str, range(10, 40))], ["X"] * 20 + ["Y"] * 30)
    res = join(v, s, "bfv", pjc.ReleaseRules(min_distinct=5))
    got = {g.group: (g.count, g.sums["bal"]) for g in res.groups}
    assert got == {"X": (20.0, float(sum(range(20)))), "Y": (30.0, float(sum(range(10, 40))))}
    with pytest.raises(PolicyError, match=r"share keys under DP"):
        join(v, s, "bfv", pjc.ReleaseRules(min_distinct=5, epsilon=1.0, bounds={"bal": 40.0}))


def test_small_groups_are_suppressed_and_never_released() -> None:
    v = pjc.ValueRows([str(i) for i in range(40)], {"bal": list(range(40))})
    s = pjc.SelectRows([str(i) for i in range(40)], ["big"] * 35 + ["tiny"] * 3 + ["two"] * 2)
    seen: list[Any] = []
    rules = pjc.ReleaseRules(min_distinct=5,
                             on_release=lambda rel, sup: seen.append((rel, sup)))
    res = join(v, s, "bfv", rules)
    assert [g.group for g in res.groups] == ["big"] and res.suppressed == 2
    assert res.groups[0].count == 35 and res.groups[0].sums["bal"] == sum(range(35))
    assert len(seen) == 1 and len(seen[0][1]) == 2


def test_total_minus_released_never_isolates_a_small_group() -> None:
    """Complementary suppression: with one small group suppressed, the total (from a
    job without groups) minus the released groups would be that group; so the next
    smallest group is suppressed too."""
    v = pjc.ValueRows([str(i) for i in range(40)], {"bal": list(range(40))})
    s = pjc.SelectRows([str(i) for i in range(40)], ["big"] * 27 + ["mid"] * 10 + ["tiny"] * 3)
    res = join(v, s, "bfv", pjc.ReleaseRules(min_distinct=5))
    assert [g.group for g in res.groups] == ["big"] and res.suppressed == 2


def test_bfv_range_is_checked_before_anything_is_sent() -> None:
    v = pjc.ValueRows(["a", "b"], {"bal": [he.BFV_T, 1]})
    s = pjc.SelectRows(["a"])
    with pytest.raises(Exception, match="beyond the exact BFV range"):
        join(v, s, "bfv")


def test_dp_noise_is_added_at_the_holder() -> None:
    v = pjc.ValueRows([str(i) for i in range(200)], {"bal": [100] * 200})
    s = pjc.SelectRows([str(i) for i in range(200)])
    res = join(v, s, "bfv", pjc.ReleaseRules(epsilon=1.0, bounds={"bal": 100.0},
                                             epsilon_left=2.0))
    g = res.groups[0]
    assert g.noise is not None and g.noise["count"]["mechanism"] == dp.MECHANISM_INT
    assert g.noise["bal"] == {"mechanism": dp.MECHANISM_INT, "epsilon": 1.0 / 3,
                              "scale": 300.0}
    assert g.count == int(g.count) and g.sums["bal"] == int(g.sums["bal"])  # discrete
    assert abs(g.count - 200) < 200 and abs(g.sums["bal"] - 20000) < 20000
    assert res.epsilon_left == 2.0


def test_value_holders_duplicates_are_clipped() -> None:
    """Contribution bound: 575 rows of one key count as max_rows_per_key rows."""
    v = pjc.ValueRows(["hot"] * 575 + [str(i) for i in range(20)], {"bal": [1] * 595})
    s = pjc.SelectRows(["hot"] + [str(i) for i in range(20)])
    res = join(v, s, "bfv", pjc.ReleaseRules(max_rows_per_key=2))
    assert (res.groups[0].count, res.groups[0].sums["bal"]) == (22.0, 22.0)


def test_many_ciphertexts_accumulate() -> None:
    v, s = data(20000, 4, real=False)  # three BFV ciphertexts per vector
    v.groups = None
    res = join(v, s, "bfv")
    want = plaintext(v, s, "bal")
    assert {g.group: (g.count, g.sums["bal"]) for g in res.groups} == {
        g: (float(c), float(t)) for g, (c, t) in want.items()}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_large_ring_and_many_rows(scheme: str) -> None:
    v, s = data(60000, 5, real=scheme == "ckks")
    v.groups = None
    vr, sr, _ = run_pair(
        lambda ch, pool: pjc.value_holder(ch, v, "j", he.HeParams(scheme, 16384),
                                          pjc.ReleaseRules(), pool),
        lambda ch, pool: pjc.selector(ch, s, "j", pool), timeout=600)
    assert isinstance(sr, pjc.JoinResult), (vr, sr)
    want = plaintext(v, s, "bal")
    for g in sr.groups:
        c, total = want[g.group]
        assert g.count == c
        tol = 0 if scheme == "bfv" else CKKS_TOL_ABS + CKKS_TOL_REL * abs(total)
        assert abs(g.sums["bal"] - total) <= tol
