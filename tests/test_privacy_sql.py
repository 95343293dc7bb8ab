"""Private joins answer the plaintext SQL: inner join with duplicate keys on either
or both sides, count/sum/mean over either party's column, grouped by columns of
either party, filters on each party's own columns, the result at either party.
DuckDB computes the reference on the plaintext tables (exact for integers)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from privacy.jobs import JobSpec, run_job
from privacy.policy import Policy
from privacy.testing import open_policy, put_policy, put_table

FACT, DIM, DIM2 = "/shop-a/fact.parquet", "/ref-b/dim.parquet", "/ref-b/dim2.parquet"
KEYS = 60


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, pa.Table]]]:
    """A fact table (many rows per key) at shop-a; a dimension table (one row per
    key) and a second one with duplicate keys (many-to-many) at ref-b."""
    rnd = random.Random(14)
    n = 900
    fact = pa.table({"k": [rnd.randrange(KEYS + 10) for _ in range(n)],
                     "g": [rnd.choice(["a", "b", "c"]) for _ in range(n)],
                     "h": [rnd.randrange(2) for _ in range(n)],
                     "seg": [rnd.choice(["x", "y"]) for _ in range(n)],
                     "amt": [rnd.randrange(-50, 1000) for _ in range(n)]})
    dim = pa.table({"k": list(range(KEYS)), "v": [rnd.randrange(0, 500) for _ in range(KEYS)],
                    "region": [("north", "south")[k % 2] for k in range(KEYS)],
                    "flag": [str(k % 3 == 0) for k in range(KEYS)]})
    dup = [k for k in range(KEYS) for _ in range(1 + k % 3)]  # 1 to 3 rows per key
    dim2 = pa.table({"k": dup, "w": [rnd.randrange(0, 100) for _ in dup],
                     "zone": [("east", "west")[k % 2] for k in dup]})
    state = tmp_path_factory.mktemp("sql") / "state"
    with Client.init(state) as fs:
        put_table(fs, FACT, fact)
        put_table(fs, DIM, dim)
        put_table(fs, DIM2, dim2)
        put_policy(fs, open_policy("shop-a", "ref-b", FACT, key="k",
                                   columns=["amt", "g", "h", "seg"], group_by=["g", "h"]))
        doc = open_policy("ref-b", "shop-a", DIM, key="k", columns=["v", "region", "flag"],
                          group_by=["region"])
        doc["partners"]["shop-a"]["tables"][DIM2] = {
            "key_columns": ["k"], "columns": ["w", "zone"], "group_by": ["zone"],
            "aggregates": ["count", "sum", "mean"]}
        put_policy(fs, doc)
    yield state, {"fact": fact, "dim": dim, "dim2": dim2}


def reference(tables: dict[str, pa.Table], sql: str) -> list[dict[str, Any]]:
    con = duckdb.connect()
    for name, t in tables.items():
        con.register(name, t)
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def check(got: list[dict[str, Any]], want: list[dict[str, Any]], groups: list[str]) -> None:
    """Equal row by row: group values as strings, counts and integer sums exactly,
    means within 1e-9 relative."""
    key = lambda r: tuple(str(r[g]) for g in groups)  # noqa: E731
    got_by, want_by = {key(r): r for r in got}, {key(r): r for r in want}
    assert set(got_by) == set(want_by)
    for k, w in want_by.items():
        g = got_by[k]
        for name, value in w.items():
            if name in groups:
                continue
            if name.startswith("mean"):
                assert g[name] == pytest.approx(float(value), rel=1e-9), (k, name)
            else:
                assert g[name] == value, (k, name, g[name], value)


def test_issue_case_group_from_fact_mean_from_dim(world: tuple[Path, dict[str, pa.Table]]
                                                  ) -> None:
    """SELECT g, count(*), avg(v) FROM fact JOIN dim USING (k) GROUP BY g: g from the
    fact table, v from the dimension table (issue 14: was off by up to 35%)."""
    state, t = world
    ans = run_job(JobSpec("join", FACT, DIM, "k", aggs="count(*),mean(v)", group_by="g"),
                  state).answer
    assert ans["role"] == "selector" and ans["entity"] == "shop-a"
    want = reference(t, 'SELECT g, count(*) AS "count(*)", avg(v) AS "mean(v)" '
                        "FROM fact JOIN dim USING (k) GROUP BY g")
    check(ans["groups"], want, ["g"])


def test_many_to_many_groups_from_both_sides(world: tuple[Path, dict[str, pa.Table]]) -> None:
    state, t = world
    ans = run_job(JobSpec("join", FACT, DIM2, "k", aggs="count(*),sum(amt),mean(amt)",
                          group_by="zone,g"), state).answer
    want = reference(t, 'SELECT zone, g, count(*) AS "count(*)", sum(amt) AS "sum(amt)", '
                        'avg(amt) AS "mean(amt)" FROM fact JOIN dim2 USING (k) GROUP BY zone, g')
    check(ans["groups"], want, ["zone", "g"])


def test_two_group_columns_filters_on_both_sides_result_at_the_value_holder(
        world: tuple[Path, dict[str, pa.Table]]) -> None:
    state, t = world
    res = run_job(JobSpec("join", FACT, DIM, "k", aggs="count(*),sum(v)", group_by="g,h",
                          where={"seg": "x", "flag": "True"}, receiver="right"), state)
    assert res.right["role"] == "value-holder" and res.right["receiver"] is True
    assert "groups" not in res.left  # the selector learns no aggregate
    want = reference(t, 'SELECT g, h, count(*) AS "count(*)", sum(v) AS "sum(v)" '
                        "FROM fact JOIN dim USING (k) WHERE seg = 'x' AND flag = 'True' "
                        "GROUP BY g, h")
    check(res.answer["groups"], want, ["g", "h"])


def test_value_from_the_fact_side_grouped_by_the_dimension(
        world: tuple[Path, dict[str, pa.Table]]) -> None:
    state, t = world
    ans = run_job(JobSpec("join", FACT, DIM, "k", aggs="count(*),sum(amt),mean(amt)",
                          group_by="region", receiver="right"), state).answer
    assert ans["entity"] == "ref-b"
    want = reference(t, 'SELECT region, count(*) AS "count(*)", sum(amt) AS "sum(amt)", '
                        'avg(amt) AS "mean(amt)" FROM fact JOIN dim USING (k) GROUP BY region')
    check(ans["groups"], want, ["region"])


def test_real_valued_mean_within_the_stated_bound(world: tuple[Path, dict[str, pa.Table]],
                                                  tmp_path: Path) -> None:
    """Reals go through CKKS: each sum within 0.05 + 1e-9 |sum| of the SQL answer."""
    state, t = world
    dimf = t["dim"].append_column("vf", pa.array([v / 7 for v in t["dim"]["v"].to_pylist()]))
    path = "/ref-b/dimf.parquet"
    with Client(state) as fs:
        put_table(fs, path, dimf)
        doc = open_policy("ref-b", "shop-a", path, key="k", columns=["vf"])
        doc["partners"]["shop-a"]["tables"].update(
            Policy.load(fs, "ref-b").model_dump()["partners"]["shop-a"]["tables"])
        put_policy(fs, doc)
    ans = run_job(JobSpec("join", FACT, path, "k", aggs="count(*),sum(vf)", group_by="g"),
                  state).answer
    want = reference({"fact": t["fact"], "dimf": dimf},
                     'SELECT g, count(*) AS n, sum(vf) AS s FROM fact JOIN dimf USING (k) '
                     "GROUP BY g")
    got = {r["g"]: r for r in ans["groups"]}
    assert set(got) == {w["g"] for w in want}
    for w in want:
        assert got[w["g"]]["count(*)"] == w["n"]
        assert abs(got[w["g"]]["sum(vf)"] - w["s"]) <= 0.05 + 1e-9 * abs(w["s"])


def test_cli_where_and_receiver(world: tuple[Path, dict[str, pa.Table]],
                                capsys: pytest.CaptureFixture[str]) -> None:
    state, t = world
    assert hutong(["--state", str(state), "-q", "join", "--left", FACT, "--right", DIM,
                   "--on", "k", "--agg", "count(*),sum(v)", "--group-by", "region,g",
                   "--where", "seg=y", "--receiver", "right", "--json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    assert ans["entity"] == "ref-b" and ans["role"] == "value-holder"
    want = reference(t, 'SELECT region, g, count(*) AS "count(*)", sum(v) AS "sum(v)" '
                        "FROM fact JOIN dim USING (k) WHERE seg = 'y' GROUP BY region, g")
    check(ans["groups"], want, ["region", "g"])
    assert hutong(["--state", str(state), "join", "--left", FACT, "--right", DIM, "--on", "k",
                   "--where", "nosuch=1"]) == 2  # a wrong request
    assert "nosuch" in capsys.readouterr().err
