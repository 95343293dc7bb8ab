"""Owner policies: parsing, refusals naming their rule, budgets, compute-to-data
release rules."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from privacy import c2d
from privacy.errors import PolicyError, QueryError
from privacy.policy import Policy, ReleaseTerms, complementary_suppression, policy_path
from privacy.testing import open_policy, put_policy, put_table

T = "/bank-a/customers.parquet"


def policy(**extra: object) -> Policy:
    doc = open_policy("bank-a", "telco-b", T, columns=["balance", "region"],
                      group_by=["region"], min_group_size=3,
                      table_extra={"clip": {"balance": [0, 100]},
                                   "aggregates": ["count", "mean"],
                                   "psi_outputs": ["cardinality"]}, **extra)
    return Policy.from_dict(doc)


@pytest.mark.parametrize("call,rule", [
    (lambda p: p.check_psi("telco-x", T, "phone", "cardinality"), "partners"),
    (lambda p: p.check_psi("telco-b", "/bank-a/other.parquet", "phone", "cardinality"), "tables"),
    (lambda p: p.check_psi("telco-b", T, "balance", "cardinality"), "key_columns"),
    (lambda p: p.check_psi("telco-b", T, "phone", "intersection"), "psi_outputs"),
    (lambda p: p.check_aggregate("telco-b", T, "phone", [("sum", "balance")], None), "aggregates"),
    (lambda p: p.check_aggregate("telco-b", T, "phone", [("mean", "name")], None), "columns"),
    (lambda p: p.check_aggregate("telco-b", T, "phone", [("count", None)], "name"), "group_by"),
    (lambda p: p.check_aggregate("telco-b", T, None, [("count", None)], None, ["name"]),
     "columns"),
])
def test_refusals_name_the_rule(call: object, rule: str) -> None:
    assert callable(call)
    with pytest.raises(PolicyError) as ei:
        call(policy())
    assert ei.value.rule == rule and str(ei.value).startswith(f"rule {rule}: ")
    assert isinstance(ei.value, PermissionError)


def test_allowed_job_gets_release_terms() -> None:
    terms = policy().check_aggregate("telco-b", T, "phone", [("mean", "balance")], "region")
    assert terms == ReleaseTerms(3, None, {"balance": (0.0, 100.0)})


def test_budget_is_enforced() -> None:
    p = policy(epsilon_per_release=1.0, epsilon_budget=2.0)
    p.check_aggregate("telco-b", T, "phone", [("mean", "balance")], None, spent=1.0)
    with pytest.raises(PolicyError, match="rule epsilon_budget"):
        p.check_aggregate("telco-b", T, "phone", [("mean", "balance")], None, spent=1.5)


def test_releases_without_noise_are_capped() -> None:
    p = policy(max_releases=2)
    p.check_aggregate("telco-b", T, "phone", [("count", None)], None, releases=1)
    with pytest.raises(PolicyError, match="rule max_releases"):
        p.check_aggregate("telco-b", T, "phone", [("count", None)], None, releases=2)
    noisy = policy(max_releases=2, epsilon_per_release=1.0)  # with DP the budget decides
    noisy.check_aggregate("telco-b", T, "phone", [("count", None)], None, releases=5)


def test_dp_needs_clip_bounds() -> None:
    doc = open_policy("bank-a", "telco-b", T, columns=["income"], epsilon_per_release=1.0)
    with pytest.raises(PolicyError, match="rule clip"):
        Policy.from_dict(doc).check_aggregate("telco-b", T, None, [("sum", "income")], None)


@pytest.mark.parametrize("doc,msg", [
    ({"partners": {}}, "entity: required key missing"),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"aggregates": ["median"]}}}}},
     "aggregates[0]: input should be 'count'"),
    ({"entity": "a", "partners": {"b": {"tables": {}, "min_group_size": 0}}},
     "partners.b.min_group_size: "),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"clip": {"x": [5, 1]}}}}}},
     "lo <= hi"),
    # issue 11: a misspelt key used to be ignored (suppression fell back to 1)
    ({"entity": "a", "partners": {"b": {"tables": {}, "min_group_sise": 10}}},
     "unknown key 'partners.b.min_group_sise'; did you mean 'min_group_size'"),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"colums": ["x"]}}}}},
     "unknown key 'partners.b.tables./a/t.colums'; did you mean 'columns'"),
    ({"entity": "a", "partners": {}, "partner": {}}, "did you mean 'partners'"),
    # ... and a string epsilon or a boolean group size were coerced
    ({"entity": "a", "partners": {"b": {"tables": {}, "epsilon_per_release": "1.0"}}},
     "partners.b.epsilon_per_release: input should be a valid number"),
    ({"entity": "a", "partners": {"b": {"tables": {}, "min_group_size": True}}},
     "partners.b.min_group_size: input should be a valid integer"),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"key_columns": "phone"}}}}},
     "key_columns"),
])
def test_bad_policies_are_refused(doc: dict[str, object], msg: str) -> None:
    with pytest.raises(QueryError) as ei:
        Policy.from_dict(doc, "p.json")
    assert str(ei.value).startswith("p.json: ") and msg in str(ei.value)
    assert "\n" not in str(ei.value)


def test_misspelt_policy_in_store_refuses_the_job(fs: Client) -> None:
    doc = open_policy("bank-a", "telco-b", T, min_group_sise=10)
    put_policy(fs, doc)
    with pytest.raises(QueryError, match=r"^/bank-a/.privacy/policy.json: unknown key "
                                         r"'partners.telco-b.min_group_sise'"):
        Policy.load(fs, "bank-a")


def test_cli_refuses_a_bad_policy_and_stores_nothing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    Client.init(state).close()
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps(open_policy("bank-a", "telco-b", T, epsilon_per_release="0.5")))
    assert hutong(["--state", str(state), "privacy", "policy", "bank-a", str(bad)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "epsilon_per_release" in err and "Traceback" not in err
    with Client(state) as fs:
        assert not fs.exists(policy_path("bank-a"))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(open_policy("bank-a", "telco-b", T, min_group_size=10)))
    assert hutong(["--state", str(state), "privacy", "policy", "bank-a", str(good)]) == 0
    with Client(state) as fs:
        assert Policy.load(fs, "bank-a").partners["telco-b"].min_group_size == 10


def test_no_policy_refuses_everything(fs: Client) -> None:
    with pytest.raises(PolicyError, match=r"rule policy: .*no privacy policy"):
        Policy.load(fs, "bank-a")


def test_compute_to_data_release_rules(fs: Client) -> None:
    put_table(fs, T, pa.table({
        "phone": ["1", "2", "3", "4", "4", "5", "6", "7", "8", "9", "10"],
        "region": ["n", "n", "n", "n", "n", "s", "s", "e", "w", "w", "w"],
        "balance": [10, 20, 30, 1000, 40, 5, 6, 7, 1, 2, 3]}))
    put_policy(fs, open_policy("bank-a", "telco-b", T, columns=["balance", "region"],
                               group_by=["region"], min_group_size=3,
                               table_extra={"clip": {"balance": [0, 100]}}))
    terms = Policy.load(fs, "bank-a").check_aggregate("telco-b", T, None,
                                                       [("count", None), ("sum", "balance")],
                                                       "region")
    rel = c2d.evaluate(fs, T, "phone", [("count", None), ("sum", "balance"),
                                        ("max", "balance")], "region", {}, terms)
    # s (2 phones) and e (1) are below 3: suppressed; together they reach 3, so no more
    # is suppressed; 1000 is clipped to 100
    assert rel.suppressed == 2
    assert rel.rows == [{"group": "n", "count(*)": 5, "sum(balance)": 200.0,
                         "max(balance)": 100.0},
                        {"group": "w", "count(*)": 3, "sum(balance)": 6.0, "max(balance)": 3.0}]
    rel = c2d.evaluate(fs, T, "phone", [("count", None)], None, {"region": "s"},
                       ReleaseTerms(1, None, {}))
    assert rel.rows == [{"count(*)": 2}]


def test_complementary_suppression() -> None:
    assert complementary_suppression({"a": 10, "b": 2, "c": 5}, 3) == {"b", "c"}
    assert complementary_suppression({"a": 10, "b": 2, "c": 1}, 3) == {"b", "c"}
    assert complementary_suppression({"a": 10, "b": 4}, 3) == set()
    assert complementary_suppression({"a": 1}, 3) == {"a"}
