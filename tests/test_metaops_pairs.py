"""The interleaved pairing of `bench metaops`'s mount rows (bench._metaops_pairs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import _metaops_pairs as pairs
from bench._metaops_clients import PHASES

ROOT = Path(__file__).resolve().parent.parent


def test_schedule_alternates_which_system_runs_first() -> None:
    assert pairs.schedule(4) == [(0, 0), (0, 1), (1, 1), (1, 0),
                                 (2, 0), (2, 1), (3, 1), (3, 0)]
    assert pairs.schedule(1) == [(0, 0), (0, 1)]
    with pytest.raises(ValueError, match="at least 1"):
        pairs.schedule(0)


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    # drift: both systems slow down together in round 1; per-round ratios stay 2
    p = pairs.Paired(a=(200.0, 20.0, 180.0), b=(100.0, 10.0, 90.0))
    assert p.ratios == (2.0, 2.0, 2.0)
    assert p.ratio == 2.0
    assert (p.a_median, p.b_median) == (180.0, 90.0)
    odd = pairs.Paired(a=(100.0, 300.0), b=(100.0, 100.0))
    assert odd.ratio == 2.0  # median of 1 and 3


def test_team_runs_every_phase_on_both_roots_in_turn(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    team = pairs.Team(2)
    try:
        got, failed = pairs.measure(team, [str(r) for r in roots], 5, 2)
    finally:
        team.close()
    assert failed == 0
    assert set(got) == set(PHASES)
    assert all(len(p.a) == len(p.b) == 2 and min(p.a + p.b) > 0 for p in got.values())
    # each round worked in its own directories and the unlink phase emptied them
    for root in roots:
        assert sorted(p.name for p in root.iterdir()) == ["r0", "r1"]
        for r in ("r0", "r1"):
            assert sorted(p.name for p in (root / r).iterdir()) == ["c0", "c1"]
            assert not any((root / r / "c0").iterdir())


def test_measure_refuses_other_than_two_systems(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two systems"):
        pairs.measure(None, [str(tmp_path)], 1, 1)  # type: ignore[arg-type]


def test_the_verdict_needs_every_mount_pair_at_16_clients_at_least_even() -> None:
    from bench.metaops import pairs_met

    even = {("lmdb", 16): {"create": 1.0, "rename": 1.4},
            ("postgresql", 16): {"create": 2.0, "rename": 1.1}}
    assert pairs_met(even)
    assert pairs_met({**even, ("lmdb", 1): {"rename": 0.99}})  # judged at 16 clients
    assert not pairs_met({**even, ("lmdb", 16): {"create": 1.2, "rename": 0.99}})
    assert not pairs_met({**even, ("postgresql", 16): {"stat": 0.5}})
    assert pairs_met({("lmdb", 4): {"rename": 1.0}})  # a run of 4 clients: judged at 4
    assert not pairs_met({})  # nothing measured is not a pass


def test_a_scale_only_run_ends_with_its_verdict_line() -> None:
    """`--only scale` is a partial run too: it ends with the `metaops: ... target=` line
    of the scale curve (it ended with no verdict at all)."""
    done = subprocess.run([sys.executable, "-m", "bench", "metaops", "--only", "scale",
                           "--scale-min", "1000", "--scale-max", "1000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("metaops: ") and "scale_max=1000" in last, last
    assert last.endswith("target=met")  # one point: flat by definition
