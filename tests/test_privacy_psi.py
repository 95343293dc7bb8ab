"""ECDH-PSI halves over an authenticated socket pair: known intersections."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from gfs.client import Client
from privacy import psi
from privacy.errors import ProtocolError, QueryError
from privacy.testing import put_table, run_pair


def run(x: list[str], y: list[str], output: str = "intersection",
        batch: int = 1000) -> psi.PsiResult:
    r, s, _ = run_pair(lambda ch, pool: psi.receiver(ch, x, "j", output, pool, batch_rows=batch),
                       lambda ch, pool: psi.sender(ch, y, "j", output, pool, batch_rows=batch),
                       workers=1)
    if isinstance(r, BaseException):
        raise r
    assert isinstance(s, psi.PsiResult)
    assert s.receiver_count == len(x) and s.intersection is None
    assert isinstance(r, psi.PsiResult)
    return r


@pytest.mark.parametrize("case", ["random", "empty-left", "empty-both", "identical", "disjoint"])
def test_known_intersections(case: str) -> None:
    rnd = random.Random(case)
    pool = [f"k{rnd.randrange(10**9)}" for _ in range(3000)]
    pool = list(dict.fromkeys(pool))
    x, y = {
        "random": (pool[:1700], pool[900:2600]),
        "empty-left": ([], pool[:500]),
        "empty-both": ([], []),
        "identical": (pool[:1200], list(reversed(pool[:1200]))),
        "disjoint": (pool[:1000], pool[1000:2100]),
    }[case]
    r = run(x, y)
    want = set(x) & set(y)
    assert r.size == len(want)
    assert r.intersection == sorted(want)
    assert (r.receiver_count, r.sender_count) == (len(x), len(y))


def test_cardinality_only_reveals_no_members() -> None:
    x = [str(i) for i in range(2500)]
    y = [str(i) for i in range(2000, 4000)]
    r = run(x, y, "cardinality")
    assert r.size == 500 and r.intersection is None


def test_duplicate_and_null_keys_count_once(fs: Client) -> None:
    put_table(fs, "/a/t.parquet", pa.table({"phone": ["1", "2", "2", None, "3", "3", "3"]}))
    put_table(fs, "/b/t.parquet", pa.table({"phone": [2, 2, 3, 4, None]}))
    x = psi.load_keys(fs, "/a/t.parquet", "phone", batch_rows=2)
    y = psi.load_keys(fs, "/b/t.parquet", "phone", batch_rows=2)
    assert x == ["1", "2", "3"] and y == ["2", "3", "4"]
    r = run(x, y)
    assert r.size == 2 and r.intersection == ["2", "3"]


def test_float_keys_are_refused(fs: Client) -> None:
    put_table(fs, "/a/f.parquet", pa.table({"phone": [1.5, 2.0]}))
    with pytest.raises(QueryError, match="floating point"):
        psi.load_keys(fs, "/a/f.parquet", "phone")
    with pytest.raises(QueryError, match="no column 'msisdn'"):
        psi.load_keys(fs, "/a/f.parquet", "msisdn")


def test_bad_output_is_refused_before_anything_is_sent() -> None:
    r, s, _ = run_pair(lambda ch, pool: psi.receiver(ch, ["a"], "j", "everything", pool),
                       lambda ch, pool: psi.sender(ch, ["a"], "j", "cardinality", pool),
                       timeout=20, workers=1)
    assert isinstance(r, QueryError)
    assert isinstance(s, ProtocolError) and "aborted" in str(s)
