"""The gateway benchmark's machinery on tiny sizes against our gateway only (SeaweedFS
is left to `python -m bench gateway`)."""

from __future__ import annotations

from pathlib import Path

from bench.gateway import _data, hutong, measure
from gfs.client import Client


def test_bench_gateway_machinery(tmp_path: Path) -> None:
    big, small = _data(tmp_path, 24 << 20, 40, 4096)
    assert big.stat().st_size == 24 << 20 and len(small) == 40
    with hutong(tmp_path / "h") as (ep, state):
        seconds = measure(ep, big, 2, small)
        assert set(seconds) == {"put_big", "get_big", "put_small", "get_small"}
        assert all(s > 0 for s in seconds.values())
        with Client(state) as fs:
            du = fs.du("/bench")
    assert du.files == 42 and du.logical_bytes == 2 * (24 << 20) + sum(map(len, small))
    assert du.dedup_ratio > 1.8  # the second large object is stored once
