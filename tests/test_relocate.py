"""The pack-relocation primitive (gfs.relocate): faults between the pack write and
the switch, delta bases moved under their dependents, repairs that change a
blob's codec (real LMDB, real local pools, a real kill -9)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gfs import delta
from gfs.client import Client
from gfs.codec import CODEC_DELTA, encode_blob, parse_blob_header
from gfs.gc import collect
from gfs.meta import Location
from gfs.packs import pack_key
from gfs.relocate import Move, relocate
from gfs.testing.faults import flip_byte
from tests.similar_data import two_versions


class Stop(Exception):
    """Raised by a hook to stop a relocation at a step."""


def _sparse(fs: Client, tmp_path: Path) -> dict[str, bytes]:
    """Files whose pack is sparse once /one/junk is removed; returns the survivors."""
    rng = random.Random(21)
    src = tmp_path / "src"
    src.mkdir()
    keep = {f"k{i}": rng.randbytes(40_000) for i in range(5)}
    for name, data in keep.items():
        (src / name).write_bytes(data)
    (src / "junk").write_bytes(rng.randbytes(600_000))
    fs.put(str(src), "/one")
    fs.rm("/one/junk")
    return {f"/one/{name}": data for name, data in keep.items()}


def _packs(fs: Client) -> set[bytes]:
    with fs.engine.read() as txn:
        return {p.id for p in txn.iter_packs()}


def _intact_then_reclaimed(fs: Client, files: dict[str, bytes], orphans: int) -> None:
    """Every file reads back and fsck is clean with `orphans` orphan packs; after a gc,
    with none."""
    for expect in (orphans, 0):
        report = fs.fsck()
        assert report.ok, report.problems
        assert report.orphan_packs == expect
        for p, data in files.items():
            assert fs.read_bytes(p) == data
        fs.gc()


@pytest.mark.parametrize("step", ["written", "switched"])
def test_a_raise_around_the_switch_loses_nothing(tmp_path: Path, step: str) -> None:
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    try:
        files = _sparse(fs, tmp_path)
        before = _packs(fs)

        def hook(name: str, n: int) -> None:
            if name == step:
                raise Stop(name)

        with pytest.raises(Stop):
            collect(fs.store, hook=hook)
        # before the switch the old pack is still the one recorded; after it, the new
        # (either way one pack object is an orphan for gc)
        assert (_packs(fs) == before) == (step == "written")
        _intact_then_reclaimed(fs, files, orphans=1)
    finally:
        fs.close()


KILLER = textwrap.dedent("""
    import os, signal, sys
    from gfs.client import Client
    from gfs.gc import collect
    def hook(name, n):
        if name == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)
    fs = Client(sys.argv[1])
    collect(fs.store, hook=hook)
    print("finished without reaching the step", flush=True)
""")


@pytest.mark.parametrize("step", ["written", "switched"])
def test_kill9_around_the_switch_leaves_fsck_clean(tmp_path: Path, step: str) -> None:
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    files = _sparse(fs, tmp_path)
    before = _packs(fs)
    fs.close()
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "state"), step],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    fs = Client(tmp_path / "state")
    try:
        assert (_packs(fs) == before) == (step == "written")  # the kill landed there
        _intact_then_reclaimed(fs, files, orphans=1)
    finally:
        fs.close()


def test_a_relocated_base_keeps_its_dependents_readable(dfs: Client) -> None:
    a, b = two_versions(dfs, 22, 300_000, 10)
    with dfs.engine.read() as txn:
        bases = set(dict(txn.iter_values(delta.DELTAS)).values())
        olds = {cid: txn.get_chunk(cid).locations[0] for cid in bases}  # type: ignore[union-attr]
    assert bases
    moves = [Move(cid, loc, dfs.store.source.blob_at(loc, cid)[0]) for cid, loc in olds.items()]
    pool_id = next(iter(olds.values())).pool
    with dfs.store.writer():
        done = relocate(dfs.store, moves, pool_id)
    assert done.switched == len(bases) and done.packs_written == 1
    with dfs.engine.read() as txn:
        for cid, old in olds.items():
            assert txn.get_chunk(cid).locations[0] != old  # type: ignore[union-attr]
    assert dfs.read_bytes("/a") == a and dfs.read_bytes("/b") == b
    assert dfs.fsck().ok
    dfs.rm("/a")
    dfs.gc()  # the moved bases stay: their dependents still reference them
    assert dfs.read_bytes("/b") == b
    assert dfs.fsck().ok


def test_a_move_whose_copy_moved_meanwhile_is_skipped(dfs: Client) -> None:
    data = random.Random(23).randbytes(200_000)
    dfs.write_bytes("/f", data)
    with dfs.engine.read() as txn:
        rec = next(iter(txn.iter_chunks()))
    loc = rec.locations[0]
    blob = dfs.store.source.blob_at(loc, rec.id)[0]
    gone = Location(loc.pool, b"\x00" * len(loc.pack), loc.offset, loc.length)
    with dfs.store.writer():
        done = relocate(dfs.store, [Move(rec.id, gone, blob)], loc.pool)
    assert (done.switched, done.skipped) == (0, 1)
    with dfs.engine.read() as txn:
        assert txn.get_chunk(rec.id).locations == rec.locations  # type: ignore[union-attr]
    assert dfs.fsck().ok  # the new pack is recorded with nothing live
    dfs.gc()
    assert dfs.read_bytes("/f") == data and dfs.fsck().ok


def test_a_repair_that_stores_a_delta_whole_releases_its_base(dfs: Client) -> None:
    _, b = two_versions(dfs, 24, 300_000, 10)
    with dfs.engine.read() as txn:
        cid, base = next(iter(txn.iter_values(delta.DELTAS)))
        rec = txn.get_chunk(cid)
        brec = txn.get_chunk(base)
    assert rec is not None and brec is not None and rec.codec == CODEC_DELTA
    raw = dfs.store.read_chunk(cid)
    loc = rec.locations[0]
    flip_byte(dfs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length - 1)
    header, payload = encode_blob(raw, 3, cid)
    assert dfs.store.replace_copies({cid: header + payload}) == 1
    with dfs.engine.read() as txn:
        assert txn.get_value(delta.DELTAS, cid) is None  # no longer a delta
        fixed = txn.get_chunk(cid)
        after = txn.get_chunk(base)
    assert fixed is not None and fixed.codec == parse_blob_header(header).codec
    assert after is not None and after.refcount == brec.refcount - 1  # base released
    assert dfs.read_bytes("/b") == b
    report = dfs.fsck()
    assert report.ok, report.problems
