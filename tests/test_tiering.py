"""Tiered storage: policy, planner properties, the tierer end to end, and its faults."""

from __future__ import annotations

import logging
import math
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from gfs.cli import main
from gfs.client import Client
from gfs.errors import ConfigError, ExistsError
from gfs.tiering.heat import chunk_heat, decode
from gfs.tiering.planner import ChunkState, plan
from gfs.tiering.policy import TierPolicy
from gfs.tiering.tierer import run, tier_usage

# -- policy -------------------------------------------------------------------------


def test_policy_validation_and_pins() -> None:
    for bad in ({"low": 0.95, "high": 0.9}, {"write_tier": "tepid"}, {"pins": {"rel": "hot"}},
                {"prices": {"lukewarm": 1.0}}, {"cold_level": 40}, {"promote_reads": 0}):
        with pytest.raises(ConfigError):
            TierPolicy(**bad)  # type: ignore[arg-type]
    p = TierPolicy(pins={"/a": "hot", "/a/b": "cold", "/": "warm"})
    assert p.pinned_tier("/a/x") == "hot" and p.pinned_tier("/a/b/c") == "cold"
    assert p.pinned_tier("/ab") == "warm" and p.pinned_tier("/a") == "hot"
    assert TierPolicy.from_json(p.to_json()) == p
    with pytest.raises(ConfigError):
        TierPolicy.from_json(b'{"nonsense": 1}')


# -- planner ------------------------------------------------------------------------

states = st.lists(
    st.builds(ChunkState,
              id=st.binary(min_size=16, max_size=16),
              size=st.integers(1, 1000),
              tier=st.sampled_from(["hot", "warm", "cold"]),
              score=st.floats(0, 20),
              idle=st.one_of(st.floats(0, 1e6), st.just(math.inf)),
              pin=st.one_of(st.none(), st.sampled_from(["hot", "warm", "cold"]))),
    max_size=60, unique_by=lambda c: c.id)


@settings(max_examples=200, deadline=None)
@given(chunks=states, hot_cap=st.integers(0, 20000), warm_cap=st.integers(0, 20000))
def test_plan_properties(chunks: list[ChunkState], hot_cap: int, warm_cap: int) -> None:
    policy = TierPolicy(promote_reads=3, demote_idle=1000, high=0.9, low=0.7)
    moves = plan(chunks, {"hot": hot_cap, "warm": warm_cap}, policy)
    final = {c.id: c.tier for c in chunks}
    for m in moves:
        assert m.src != m.dst and final[m.id] == m.src
        final[m.id] = m.dst
    by_id = {c.id: c for c in chunks}
    for cid, tier in final.items():
        c = by_id[cid]
        if c.pin is not None:
            assert tier == c.pin  # pins always win
        elif tier == "hot":
            assert c.score >= policy.promote_reads / 2  # nothing cold-scored is hot
    if hot_cap:
        unpinned_hot = sum(by_id[i].size for i, t in final.items()
                           if t == "hot" and by_id[i].pin is None)
        pinned_hot = sum(c.size for c in chunks if c.pin == "hot")
        assert unpinned_hot + pinned_hot <= hot_cap * policy.high or unpinned_hot == 0
    # running the plan again on its own result asks for nothing more
    after = [ChunkState(c.id, c.size, final[c.id], c.score, c.idle, c.pin) for c in chunks]
    assert plan(after, {"hot": hot_cap, "warm": warm_cap}, policy) == []


def test_plan_promotes_hottest_first_within_capacity() -> None:
    chunks = [ChunkState(bytes([i]) * 16, 100, "warm", float(i)) for i in range(10)]
    moves = plan(chunks, {"hot": 400}, TierPolicy(promote_reads=2, high=1.0, low=0.5))
    assert sorted(m.id[0] for m in moves if m.dst == "hot") == [6, 7, 8, 9]


# -- the tierer on a real store -------------------------------------------------------


@pytest.fixture
def tiered(tmp_path: Path) -> Client:
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    fs.add_pool("fast", str(tmp_path / "hot"), tier="hot", capacity=4 << 20)
    fs.add_pool("archive", str(tmp_path / "cold"), tier="cold")
    return fs


def _fill(fs: Client, n: int = 12, size: int = 200_000) -> dict[str, bytes]:
    rnd = random.Random(7)
    files = {}
    for i in range(n):
        text = " ".join(f"word{rnd.randrange(5000)}" for _ in range(size // 9)).encode()
        files[f"/data/f{i}"] = text[:size]
    for p, data in files.items():
        fs.mkdir("/data", exist_ok=True)
        fs.write_bytes(p, data)
    return files


def test_pools_bad_input_changes_nothing(tiered: Client, tmp_path: Path) -> None:
    before = tiered.pools()
    for kwargs in ({"tier": "tepid"}, {"capacity": -1}):
        with pytest.raises(ConfigError):
            tiered.add_pool("x", str(tmp_path / "x"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        tiered.add_pool("bad name!", str(tmp_path / "y"))
    with pytest.raises(ConfigError):
        tiered.add_pool("weird", "nosuchproto://bucket")
    with pytest.raises(ExistsError):
        tiered.add_pool("fast", str(tmp_path / "z"))
    assert tiered.pools() == before


def test_reads_make_chunks_hot_and_idle_ones_go_cold(tiered: Client) -> None:
    files = _fill(tiered)
    with tiered.engine.write() as txn:
        TierPolicy(promote_reads=2, window=3600, demote_idle=1e-3, cold_level=19).save(txn)
    for _ in range(3):
        assert tiered.read_bytes("/data/f0") == files["/data/f0"]
    tiered.store.observer.flush()
    ino = tiered.stat("/data/f0").ino
    with tiered.engine.read() as txn:
        m = txn.get_manifest(ino)
        assert m is not None
        h = chunk_heat(txn, m.chunks[0].id)
        f = txn.get_value("heat", b"f" + ino.to_bytes(8, "big"))
    assert h is not None and h.reads >= 3
    assert f is not None and decode(f).reads == 3
    stored_before = tiered.du("/").stored_bytes
    report = run(tiered.store)
    assert report.directions.get("warm->hot", 0) == len(m.chunks)
    assert report.directions.get("warm->cold", 0) > 0
    usage = tier_usage(tiered.store)
    assert usage["hot"] > 0 and usage["cold"] > 0 and usage["warm"] == 0
    assert tiered.du("/").stored_bytes < stored_before  # recompressed at level 19 for cold
    for p, data in files.items():  # reads from every tier verify
        assert tiered.read_bytes(p) == data
    fsck = tiered.fsck()
    assert fsck.ok, fsck.problems
    assert run(tiered.store).moved == 0  # the placement is stable
    tiered.gc()
    assert tiered.fsck().ok


def test_pins_and_full_write_tier(tiered: Client, caplog: pytest.LogCaptureFixture) -> None:
    with tiered.engine.write() as txn:
        TierPolicy(write_tier="hot", pins={"/keep": "hot"}).save(txn)
    big = random.Random(3).randbytes(3 << 20)
    tiered.write_bytes("/keep", big[: 1 << 20])
    with caplog.at_level(logging.WARNING, logger="hutong.store"):
        tiered.write_bytes("/spill", big)  # 3 MiB more than the 4 MiB hot pool can take
        tiered.write_bytes("/spill2", big[::-1])
    assert any("is full" in r.getMessage() for r in caplog.records)
    usage = {rec.name: used for rec, used in tiered.pools()}
    assert usage["fast"] <= 4 << 20 and usage["default"] > 0
    run(tiered.store)
    assert tiered.read_bytes("/spill") == big and tiered.read_bytes("/keep") == big[: 1 << 20]
    assert tiered.fsck().ok


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from gfs.client import Client
    from gfs.tiering.tierer import run
    step, count = sys.argv[2], int(sys.argv[3])
    def hook(name, n):
        if name == step and n >= count:
            os.kill(os.getpid(), signal.SIGKILL)
    fs = Client(sys.argv[1], pack_size=1 << 18)
    run(fs.store, hook=hook)
    print("finished without reaching the step", flush=True)
""")


@pytest.mark.parametrize("step", ["copied", "written", "switched", "released"])
def test_kill_tierer_mid_move(tmp_path: Path, step: str) -> None:
    fs = Client.init(tmp_path / "state", pack_size=1 << 18)
    fs.add_pool("archive", str(tmp_path / "cold"), tier="cold")
    files = _fill(fs, n=10)
    with fs.engine.write() as txn:
        TierPolicy(demote_idle=1e-3).save(txn)
    fs.close()
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path / "state"), step, "3"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    # the cold pool lies outside the state directory (shared): no grace, so gc
    # takes the killed tierer's pack for an orphan at once
    fs = Client(tmp_path / "state", gc_grace=0)
    try:
        assert fs.fsck().ok  # nothing lost, nothing half-switched
        for p, data in files.items():
            assert fs.read_bytes(p) == data
        run(fs.store)  # the next run finishes the moves
        assert tier_usage(fs.store)["warm"] == 0
        fs.gc()
        after = fs.fsck()
        assert after.ok and after.orphan_packs == 0 and after.temporaries == 0
        for p, data in files.items():
            assert fs.read_bytes(p) == data
    finally:
        fs.close()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = ["--state", str(tmp_path / "s")]
    assert main([*s, "init"]) == 0
    assert main([*s, "pool", "add", "fast", str(tmp_path / "hot"), "--tier", "hot",
                 "--capacity", "1G"]) == 0
    assert main([*s, "tier", "policy", "set", "--promote-reads", "2", "--window", "30m",
                 "--pin", "/models=hot", "--price", "hot=0.2"]) == 0
    assert main([*s, "tier", "policy", "set", "--pin", "models=hot"]) == 2
    with pytest.raises(SystemExit) as bad:
        main([*s, "tier", "policy", "set", "--window", "soon"])
    assert bad.value.code == 2 and "e.g. 45s" in capsys.readouterr().err
    assert main([*s, "tier", "policy", "set", "--window", "1h30m", "--rate", "1.5M"]) == 0
    capsys.readouterr()
    assert main([*s, "tier", "policy", "show"]) == 0
    shown = capsys.readouterr().out
    assert '"/models": "hot"' in shown and '"window": 5400.0' in shown
    assert f'"rate": {3 << 19}' in shown
    assert main([*s, "tier", "run"]) == 0
    assert main([*s, "tier", "status", "--json"]) == 0
    assert '"hot"' in capsys.readouterr().out
    assert main([*s, "pool", "ls"]) == 0
