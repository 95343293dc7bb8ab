"""SpillTable's per-table bounds: how many rows it buffers in Python before an insert."""

from __future__ import annotations

import pytest

from gfs import spill
from gfs.get_plan import PLAN_BATCH, GetPlan
from gfs.spill import SpillTable


def _stored(t: SpillTable) -> int:
    return int(t._db.execute("SELECT count(*) FROM t").fetchone()[0])


def test_a_table_buffers_at_most_its_batch_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "FETCH", 2)  # a query fetches 2 rows at a time
    with SpillTable("a INTEGER", batch=3) as t:
        t.add_many((i,) for i in range(5))
        assert (_stored(t), len(t._buffer), t.rows) == (3, 2, 5)
        assert [a for (a,) in t.query("SELECT a FROM t ORDER BY a")] == [0, 1, 2, 3, 4]
    with SpillTable("a INTEGER") as t:  # the module default
        t.add_many((i,) for i in range(5))
        assert (_stored(t), len(t._buffer)) == (0, 5)


def test_a_get_plan_buffers_few_rows() -> None:
    """A get's plan (its own block file, tests/test_get_plan.py) holds fewer entries in
    memory than a SpillTable buffers."""
    with GetPlan() as plan:
        assert plan._buffer == [] and PLAN_BATCH < spill.BATCH
