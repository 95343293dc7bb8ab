"""Super-features: native against the reference, frozen values, and what they find."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import _native, chunking, resemblance
from gfs import superfeatures_reference as ref
from gfs.cdc_reference import splitmix64
from gfs.codec import CODEC_ZSTD
from gfs.meta import LmdbEngine, WriteTxn
from gfs.meta.records import ChunkRecord, Location

#: Super-features of random.Random(7).randbytes(N) taken as one chunk: part of
#: the format (docs/format.md, "Resemblance and delta chunks"), since indexes
#: store them. Computed with gfs.superfeatures_reference; a change here is a
#: format change, not a refactoring.
GOLDEN: dict[int, tuple[int, int, int]] = {
    4096: (0xD84849D55E6A5EB1, 0x1088A4D77F55AC3C, 0x093C5E0FE041A941),
    65536: (0x102AD7A4131AE6A8, 0x5CBF51269557C61E, 0x3082F738112E3BAD),
}


def _data(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def test_transform_constants_follow_the_format() -> None:
    out = splitmix64(24, 0x4875746F_6E675346)
    assert [out[2 * k] | 1 for k in range(12)] == ref.MULT
    assert [out[2 * k + 1] for k in range(12)] == ref.ADD
    assert ref.MULT[0] == 0x15C2FA8A27BB80EB and ref.ADD[11] == 0x8B7782EE00095EC2


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_native_features_equal_reference(data: bytes) -> None:
    assert _native.features(data) == ref.features(data)


@pytest.mark.parametrize("n", [1, 2, 3, 63, 64, 65, 1001, 4096, 70_001])
def test_native_superfeatures_equal_reference(n: int) -> None:
    data = _data(n)
    assert resemblance.chunk_superfeatures(data) == ref.superfeatures(data)


def test_many_chunks_equal_one_by_one() -> None:
    data = _data(300_000)
    cuts = chunking.cut_points(data)
    got = resemblance.superfeatures(data, cuts)
    starts = [0, *cuts[:-1]]
    assert got == [ref.superfeatures(data[s:e]) for s, e in zip(starts, cuts, strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=6000) | st.sampled_from([b"", bytes(5000)]), max_size=12),
       st.integers(0, 2))
def test_batch_index_keys_equal_the_reference_per_chunk(chunks: list[bytes], pad: int) -> None:
    # as buffers of any kind and offset (memoryview slices of a larger buffer)
    views = [memoryview(b"x" * pad + c)[pad:] for c in chunks]
    want = [[bytes([j]) + sf.to_bytes(8, "big") for j, sf in enumerate(ref.superfeatures(c))
             if sf] for c in chunks]
    assert resemblance.chunk_index_keys(views) == want


def test_batch_index_keys_of_a_batch_large_enough_to_let_the_gil_go() -> None:
    data = _data(400_000)
    cuts = chunking.cut_points(data)
    starts = [0, *cuts[:-1]]
    pieces = [memoryview(data)[s:e] for s, e in zip(starts, cuts, strict=True)]
    assert resemblance.chunk_index_keys(pieces) == [
        resemblance.index_keys(sfs) for sfs in resemblance.superfeatures(data, cuts)]


def test_batch_index_keys_refuse_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        resemblance.chunk_index_keys([b"abc", "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        resemblance.chunk_index_keys(5)  # type: ignore[arg-type]


_PARAMS = [chunking.ChunkParams(64, 64, 256), chunking.ChunkParams(64, 128, 512),
           chunking.ChunkParams(100, 128, 128), chunking.ChunkParams(256, 1024, 4096),
           chunking.DEFAULT_PARAMS]


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=20_000), params=st.sampled_from(_PARAMS),
       zeros=st.integers(0, 5000))
def test_one_pass_equals_chunking_then_features(data: bytes, params: chunking.ChunkParams,
                                                zeros: int) -> None:
    """The fused scan reuses the chunker's hash: same cuts, same super-features."""
    buf = bytes(zeros) + data  # zeros: long runs without cuts or samples
    cuts, sfs = resemblance.cut_superfeatures(buf, params)
    assert cuts == chunking.cut_points(buf, params)
    assert sfs == resemblance.superfeatures(buf, cuts)


def test_one_pass_on_large_random_data() -> None:
    buf = _data(3_000_000, seed=9)
    cuts, sfs = resemblance.cut_superfeatures(buf)
    assert cuts == chunking.cut_points(buf)
    assert sfs == resemblance.superfeatures(buf, cuts)


def test_golden() -> None:
    for n, expected in GOLDEN.items():
        assert resemblance.chunk_superfeatures(_data(n)) == expected
        assert ref.superfeatures(_data(n)) == expected


def test_no_samples_means_zero_features_and_no_keys() -> None:
    assert _native.features(bytes(5000)) == (0,) * 12
    assert resemblance.index_keys(resemblance.chunk_superfeatures(bytes(5000))) == []


def test_bad_cuts_are_refused() -> None:
    with pytest.raises(ValueError, match="superfeatures"):
        _native.superfeatures(b"abc", [5])
    with pytest.raises(TypeError):
        _native.superfeatures("abc", [1])  # type: ignore[arg-type]


def _edited(base: bytes, rng: random.Random, edits: int) -> bytes:
    out = bytearray(base)
    for _ in range(edits):
        at = rng.randrange(len(out) - 64)
        out[at:at + 16] = rng.randbytes(rng.randrange(1, 32))  # replace, insert or delete
    return bytes(out)


def test_similar_chunks_share_a_superfeature_unrelated_do_not() -> None:
    rng = random.Random(11)
    shared = unrelated = 0
    trials = 40
    for _ in range(trials):
        base = rng.randbytes(64 << 10)
        near = _edited(base, rng, 3)
        other = rng.randbytes(64 << 10)
        a = set(resemblance.index_keys(resemblance.chunk_superfeatures(base)))
        shared += bool(a & set(resemblance.index_keys(resemblance.chunk_superfeatures(near))))
        unrelated += bool(a & set(resemblance.index_keys(resemblance.chunk_superfeatures(other))))
    assert shared >= trials * 0.9, shared
    assert unrelated == 0


def test_superfeature_bytes_are_little_endian_u64() -> None:
    data = _data(10_000)
    raw = _native.superfeatures(data, [10_000])
    assert struct.unpack("<3Q", raw) == ref.superfeatures(data)


def _record_one_key_at_a_time(txn: WriteTxn, new: list[tuple[bytes, list[bytes]]]) -> None:
    """The index's rule, a key at a time: a key takes the chunk unless it names a live
    base (`find_base`)."""
    for cid, keys in new:
        for key in keys:
            if resemblance.find_base(txn, (key,)) is None:
                txn.put_value(resemblance.TABLE, key, cid)


@pytest.mark.parametrize("batched", [True, False])
def test_recording_bases_in_one_lookup_keeps_the_rule_of_one_key_at_a_time(
        tmp_path: Path, batched: bool) -> None:
    """Live bases keep their keys, stale and missing ones are taken, and a key two new
    chunks share goes to the later (neither has a record yet in the commit): the same
    index whether the keys are read in one get_values or one at a time."""
    def cid(n: int) -> bytes:
        return bytes([n]) * 16

    keys = [bytes([j]) + bytes([k]) * 8 for j in range(3) for k in range(1, 4)]
    eng = LmdbEngine(str(tmp_path / ("a" if batched else "b")), sync=False,
                     compact_at_close=False)
    try:
        with eng.write() as w:
            w.put_chunk(ChunkRecord(cid(1), 5000, 900, CODEC_ZSTD, 1,
                                    (Location(0, b"p" * 16, 0, 940),)))  # live, whole
            w.put_chunk(ChunkRecord(cid(2), 5000, 900, CODEC_ZSTD, 1, ()))  # lost: no copy
            w.put_value(resemblance.TABLE, keys[0], cid(1))
            w.put_value(resemblance.TABLE, keys[1], cid(2))
            w.put_value(resemblance.TABLE, keys[2], cid(9))  # gone
        new = [(cid(5), keys[0:4]), (cid(6), []), (cid(7), keys[3:6]), (cid(8), keys[5:7])]
        with eng.write() as w:
            if batched:
                resemblance.record_bases(w, new)
            else:
                _record_one_key_at_a_time(w, new)
        with eng.read() as r:
            index = dict(r.iter_values(resemblance.TABLE))
    finally:
        eng.close()
    assert index == {keys[0]: cid(1), keys[1]: cid(5), keys[2]: cid(5), keys[3]: cid(7),
                     keys[4]: cid(7), keys[5]: cid(8), keys[6]: cid(8)}
