"""bench schedule: the simulation runs and meets its target; the real run (slow, root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import schedule


def test_simulation_quick_meets_target(capsys: pytest.CaptureFixture[str]) -> None:
    met, figures = schedule.run_simulation(quick=True, seed=1)
    out = capsys.readouterr().out
    assert "dask-like + chunk mover" in out and "planner" in out
    assert met and float(figures["wan_ratio"]) >= 2.0    # type: ignore[arg-type]
    assert float(figures["makespan_ratio"]) > 1.0         # type: ignore[arg-type]


@pytest.mark.slow
def test_real_run_in_emulated_wan(tmp_path: Path) -> None:
    from gfs.testing.wan import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    res = schedule.run_real(tmp_path, quick=True)
    assert res is not None
    _ok, figures = res
    assert figures.get("real") != "failed"
    assert float(figures["measured_s"]) > 0                # type: ignore[arg-type]
