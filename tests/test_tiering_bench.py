"""The tiering evaluation runs and reports sane figures (so the benchmark cannot rot)."""

from __future__ import annotations

import random

import pytest

from bench.tiering import main, run_hutong, run_lru, run_static, trace
from gfs.tiering.policy import TierPolicy


def test_replay_figures_are_sane() -> None:
    rnd = random.Random(0)
    sizes = [rnd.randrange(16 << 10, 256 << 10) for _ in range(300)]
    reads = trace("mix", 300, 3000, seed=1)
    assert len(reads) == 3000 and all(0 <= r < 300 for r in reads)
    policy = TierPolicy(window=2000)
    cap = sum(sizes) // 8
    for res in (run_hutong(sizes, reads, cap, policy, 100), run_lru(sizes, reads, cap, policy),
                run_static(sizes, reads, cap, policy)):
        assert res.reads == 3000 and 0 <= res.hit_ratio <= 1 and res.moved >= 0
        assert res.cost > 0


def test_quick_run_prints_headline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--period", "400"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("tiering: ") and "target=" in last
