"""The gateway benchmark's machinery on tiny sizes against our gateway only (SeaweedFS
is left to `python -m bench gateway`)."""

from __future__ import annotations

from pathlib import Path

from bench.gateway import PHASES, _data, _timed, hutong, phases
from gfs.client import Client


def test_bench_gateway_machinery(tmp_path: Path) -> None:
    big, small = _data(tmp_path, 24 << 20, 40, 4096)
    assert big.stat().st_size == 24 << 20 and len(small) == 40
    with hutong(tmp_path / "h") as (ep, state):
        runs = phases(ep, big, 2, small)
        assert tuple(runs) == PHASES
        assert all(_timed(runs[op]) > 0 for op in PHASES)
        with Client(state) as fs:
            du = fs.du("/bench")
    assert du.files == 42 and du.logical_bytes == 2 * (24 << 20) + sum(map(len, small))
    assert du.dedup_ratio > 1.8  # the second large object is stored once
