"""A put's delta planner looks the resemblance index up once per read batch
(`DeltaPlanner.look_ahead`): the same bases are chosen and the same bytes stored as
when each chunk looked its keys up alone, with far fewer index lookups (real LMDB,
real pools, real local trees)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gfs import delta, resemblance
from gfs.client import Client
from gfs.meta.lmdb_engine import _LmdbRead
from tests.similar_data import mutate, text


def _trees(root: Path) -> tuple[Path, Path]:
    """Two versions of a tree of 60 similar text files (some with small-chunk tails)."""
    rng = random.Random(17)
    v1, v2 = root / "v1", root / "v2"
    for d in range(6):
        for f in range(10):
            a = text(rng, rng.randrange(20_000, 160_000))
            for tree, data in ((v1, a), (v2, mutate(a, rng, 6))):
                p = tree / f"d{d}" / f"f{f}.txt"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
    return v1, v2


def _put_both(state: Path, v1: Path, v2: Path) -> tuple[dict[bytes, bytes], int, int]:
    """Put v1 then v2; the delta records (chunk -> base), stored bytes, and the index
    keys read one at a time during the put of v2."""
    with Client.init(state, pack_size=1 << 20, workers=2, delta=True) as fs:
        fs.put(v1, "/v1")
        single: list[bytes] = []
        real = _LmdbRead.get_value

        def counting(self: _LmdbRead, table: str, key: bytes) -> bytes | None:
            if table == resemblance.TABLE:
                single.append(key)
            return real(self, table, key)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_LmdbRead, "get_value", counting)
            fs.put(v2, "/v2")
        with fs.engine.read() as txn:
            deltas = dict(txn.iter_values(delta.DELTAS))
        for tree, name in ((v1, "/v1"), (v2, "/v2")):
            for p in tree.rglob("*.txt"):
                assert fs.read_bytes(f"{name}/{p.relative_to(tree)}") == p.read_bytes()
        assert fs.fsck().ok
        return deltas, fs.du("/").stored_bytes, len(single)


def test_looked_up_ahead_the_same_bases_and_bytes_with_fewer_lookups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _trees(tmp_path / "src")
    ahead = _put_both(tmp_path / "ahead", v1, v2)
    monkeypatch.setattr(delta.DeltaPlanner, "look_ahead", lambda *a: None)
    alone = _put_both(tmp_path / "alone", v1, v2)
    assert ahead[0] and ahead[0] == alone[0]  # deltas made, against the same bases
    assert ahead[1] == alone[1]
    assert alone[2] > 50 and ahead[2] < alone[2] // 4
