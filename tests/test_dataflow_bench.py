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


def test_overlapping_jobs_queue_on_links_for_every_policy() -> None:
    """Two jobs arriving together: the second one's flows wait behind what the first
    has still to move (measured the same way for a baseline and for the planner), and
    every in-flight reservation is released once the trace is done."""
    import random

    rnd = random.Random(3)
    truth, seen = schedule.build_topology(rnd, 3)
    world = schedule.build_world(rnd, truth, families=2, files=4, units=4, versions=1)
    trace = [schedule.Job(1.0, tuple(schedule.Task(f"t{i}", (world.files[p],))
                                     for i, p in enumerate(fam[0])), f"scan fam{n}")
             for n, fam in enumerate(world.families)]
    central = "north-hpc0"
    alone = schedule.simulate("central", trace[:1], truth, seen, world, central, False)
    both = schedule.simulate("central", trace, truth, seen, world, central, False)
    assert alone.queued == 0 and both.queued > 0
    assert both.makespan > alone.makespan
    both_planner = schedule.simulate("planner", trace, truth, seen, world, central, True)
    assert both_planner.makespan > 0
    assert truth.backlog() == {} and seen.backlog() == {}


def _need_wan() -> None:
    from gfs.testing.wan import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
def test_real_run_in_emulated_wan(tmp_path: Path) -> None:
    _need_wan()
    res = schedule.run_real(tmp_path, quick=True)
    assert res is not None
    _ok, figures = res
    assert figures.get("real") != "failed"
    assert float(figures["measured_s"]) > 0                # type: ignore[arg-type]


@pytest.mark.slow
def test_two_driver_run_in_emulated_wan(tmp_path: Path) -> None:
    """Two driver processes over the shared link a -> c: with leases the second job
    plans with the first's load (a queue on its flows) and the first is re-estimated;
    blind, neither sees the other."""
    _need_wan()
    res = schedule.run_two(tmp_path, quick=True)
    assert res is not None
    _ok, figures = res
    assert float(figures["leases_makespan_s"]) > 0        # type: ignore[arg-type]
    assert figures["leases_wan_mib"] == figures["blind_wan_mib"]
    assert figures.get("leases_job1_reestimated")
    assert not figures["blind_job1_reestimated"]
    assert float(figures["leases_job2_queue_s"]) > 0       # type: ignore[arg-type]
    assert figures["blind_job2_queue_s"] == 0
