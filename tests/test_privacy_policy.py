"""Owner policies: parsing, refusals naming their rule, budgets, compute-to-data
release rules."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gfs.client import Client
from privacy import c2d
from privacy.errors import PolicyError, QueryError
from privacy.policy import Policy, ReleaseTerms
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


def test_dp_needs_clip_bounds() -> None:
    doc = open_policy("bank-a", "telco-b", T, columns=["income"], epsilon_per_release=1.0)
    with pytest.raises(PolicyError, match="rule clip"):
        Policy.from_dict(doc).check_aggregate("telco-b", T, None, [("sum", "income")], None)


@pytest.mark.parametrize("doc,msg", [
    ({"partners": {}}, "entity"),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"aggregates": ["median"]}}}}},
     "unknown aggregate"),
    ({"entity": "a", "partners": {"b": {"tables": {}, "min_group_size": 0}}}, "min_group_size"),
    ({"entity": "a", "partners": {"b": {"tables": {"/a/t": {"clip": {"x": [5, 1]}}}}}}, "lo <= hi"),
])
def test_bad_policies_are_refused(doc: dict[str, object], msg: str) -> None:
    with pytest.raises(QueryError, match=msg):
        Policy.from_dict(doc)


def test_no_policy_refuses_everything(fs: Client) -> None:
    with pytest.raises(PolicyError, match=r"rule policy: .*no privacy policy"):
        Policy.load(fs, "bank-a")


def test_compute_to_data_release_rules(fs: Client) -> None:
    put_table(fs, T, pa.table({
        "phone": ["1", "2", "3", "4", "4", "5", "6"],
        "region": ["n", "n", "n", "n", "n", "s", "s"],
        "balance": [10, 20, 30, 1000, 40, 5, 6]}))
    put_policy(fs, open_policy("bank-a", "telco-b", T, columns=["balance", "region"],
                               group_by=["region"], min_group_size=3,
                               table_extra={"clip": {"balance": [0, 100]}}))
    terms = Policy.load(fs, "bank-a").check_aggregate("telco-b", T, None,
                                                       [("count", None), ("sum", "balance")],
                                                       "region")
    rows, suppressed = c2d.evaluate(fs, T, "phone", [("count", None), ("sum", "balance"),
                                                     ("max", "balance")], "region", {}, terms)
    # group s has 2 distinct phones < 3: suppressed; 1000 is clipped to 100
    assert suppressed == 1
    assert rows == [{"group": "n", "count(*)": 5, "sum(balance)": 200.0,
                     "max(balance)": 100.0}]
    rows, _ = c2d.evaluate(fs, T, "phone", [("count", None)], None, {"region": "s"},
                           ReleaseTerms(1, None, {}))
    assert rows == [{"count(*)": 2}]
