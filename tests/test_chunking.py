"""gfs.chunking and the native FastCDC chunker against the reference (gfs.cdc_reference)."""

from __future__ import annotations

import io
import mmap
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import _native, cdc_reference, chunking
from gfs.chunking import ChunkParams
from gfs.errors import ConfigError

SMALL = ChunkParams(256, 1024, 4096)


def ref_cuts(data: bytes, p: ChunkParams, eof: bool = True) -> list[int]:
    return cdc_reference.cut_points(data, p.min_size, p.avg_size, p.max_size, eof)


@st.composite
def params(draw: st.DrawFn) -> ChunkParams:
    avg = 1 << draw(st.integers(6, 12))
    lo = draw(st.integers(64, avg))
    hi = draw(st.integers(avg, 8 * avg))
    return ChunkParams(lo, avg, hi)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- format constants -------------------------------------------------------


def test_gear_table_matches_reference() -> None:
    assert int.from_bytes(b"HutongCD", "big") == cdc_reference.GEAR_SEED
    assert list(_native.gear_table()) == cdc_reference.GEAR
    assert len(set(cdc_reference.GEAR)) == 256
    assert (cdc_reference.GEAR[0], cdc_reference.GEAR[255]) == (  # as docs/format.md says
        0xF7CD63742A9C1F1D, 0x91B71B9C2214D68B
    )


def test_masks_match_reference_and_spec() -> None:
    for b in range(6, 31):
        avg = 1 << b
        mask_s, mask_l = _native.masks(64, avg, avg)
        assert (mask_s, mask_l) == cdc_reference.masks(avg)
        assert mask_s.bit_count() == b + 2
        assert mask_l.bit_count() == b - 2
        assert mask_s < 1 << 63 and mask_l < 1 << 63  # bit 63 free: two-bytes-per-step loop
        assert mask_l & ~((1 << 63) - (1 << 15)) == 0
    assert _native.masks(16384, 65536, 262144) == (0x5252525252520000, 0x4912244912240000)


# --- native == reference ----------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params(), seed=st.integers(0, 2**32),
       size=st.one_of(st.integers(0, 5000), st.integers(50_000, 300_000)), eof=st.booleans())
def test_native_equals_reference(p: ChunkParams, seed: int, size: int, eof: bool) -> None:
    data = data_of(seed, size)
    assert chunking.cut_points(data, p, eof=eof) == ref_cuts(data, p, eof)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4095,
                                  4096, 4097, 300_000])
def test_native_equals_reference_sizes(size: int) -> None:
    data = data_of(size, size)
    for eof in (True, False):
        assert chunking.cut_points(data, SMALL, eof=eof) == ref_cuts(data, SMALL, eof)


def test_native_equals_reference_low_entropy() -> None:
    # Repeated and constant data: long runs without cuts, forced cuts at max.
    text = b"the quick brown fox jumps over the lazy dog\n" * 3000
    for data in (bytes(50_000), b"\xff" * 50_000, text, bytes(range(256)) * 200):
        for p in (SMALL, ChunkParams(64, 64, 64), ChunkParams(100, 128, 129)):
            assert chunking.cut_points(data, p) == ref_cuts(data, p)


def test_defaults_on_reference() -> None:
    data = data_of(7, 300_000)
    assert chunking.cut_points(data) == ref_cuts(data, chunking.DEFAULT_PARAMS)


# --- properties -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(p=params(), seed=st.integers(0, 2**32),
       size=st.one_of(st.integers(0, 5000), st.integers(50_000, 200_000)))
def test_bounds(p: ChunkParams, seed: int, size: int) -> None:
    data = data_of(seed, size)
    cuts = chunking.cut_points(data, p)
    assert cuts == sorted(set(cuts))
    assert (cuts[-1] if cuts else 0) == size
    lengths = [end - start for start, end in chunking.spans(cuts)]
    for n in lengths[:-1]:
        assert p.min_size <= n <= p.max_size
    if lengths:
        assert 0 < lengths[-1] <= p.max_size


def test_mean_chunk_size_near_avg() -> None:
    data = data_of(3, 16 << 20)
    cuts = chunking.cut_points(data)
    mean = len(data) / len(cuts)
    assert 50_000 < mean < 100_000  # normalised chunking: close to avg_size (64 KiB)


@settings(max_examples=40, deadline=None)
@given(p=params(), seed=st.integers(0, 2**32),
       size=st.one_of(st.integers(0, 5000), st.integers(50_000, 200_000)),
       block=st.integers(1, 50_000), use_read=st.booleans())
def test_streaming_equals_whole(p: ChunkParams, seed: int, size: int, block: int,
                                use_read: bool) -> None:
    data = data_of(seed, size)

    class ReadOnly:  # a stream without readinto (exercises read())
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.inner.read(min(n, 777) if n > 0 else n)

    f = ReadOnly() if use_read else io.BufferedReader(io.BytesIO(data), 4096)
    chunks = list(chunking.iter_stream_chunks(f, p, block_size=block))  # type: ignore[arg-type]
    assert all(isinstance(c, bytes) for c in chunks)
    assert [bytes(v) for v in chunking.iter_chunks(data, p)] == chunks


@settings(max_examples=40, deadline=None)
@given(p=params(), seed=st.integers(0, 2**32), size=st.integers(0, 300_000),
       block=st.integers(1, 60_000))
def test_stream_blocks_hold_their_chunks(p: ChunkParams, seed: int, size: int,
                                         block: int) -> None:
    """Every block's cuts are the whole content's, and slices of a block kept while the
    later ones are read still hold their chunks (each block is a fresh buffer)."""
    data = data_of(seed, size)
    kept: list[memoryview] = []
    offset = 0
    cuts: list[int] = []
    for view, block_cuts in chunking.iter_stream_blocks(io.BytesIO(data), p, block):
        assert block_cuts and block_cuts[-1] == len(view) and view.readonly
        kept += [view[a:b] for a, b in chunking.spans(block_cuts)]
        cuts += [offset + c for c in block_cuts]
        offset += len(view)
    assert cuts == chunking.cut_points(data, p)
    assert b"".join(kept) == data


def test_incremental_eof_false_matches_whole() -> None:
    data = data_of(11, 500_000)
    whole = chunking.cut_points(data, SMALL)
    got: list[int] = []
    start = 0
    for stop in range(10_000, len(data) + 10_000, 10_000):
        end = min(stop, len(data))
        part = chunking.cut_points(memoryview(data)[start:end], SMALL, eof=end == len(data))
        got += [start + c for c in part]
        if part:
            start += part[-1]
        assert start == 0 or len(data) - start < SMALL.max_size or end - start < SMALL.max_size
    assert got == whole


@pytest.mark.parametrize("edit", ["insert", "delete", "replace"])
def test_shift_resistance(edit: str) -> None:
    p = SMALL
    rnd = random.Random(edit)
    data = rnd.randbytes(2 << 20)
    at = len(data) // 2
    if edit == "insert":
        new, delta = data[:at] + b"hello" + data[at:], 5
    elif edit == "delete":
        new, delta = data[:at] + data[at + 3:], -3
    else:
        new, delta = data[:at] + b"XYZ" + data[at + 3:], 0
    old_cuts = chunking.cut_points(data, p)
    new_cuts = chunking.cut_points(new, p)
    # Every chunk that ends before the edit is unchanged.
    before = [c for c in old_cuts if c <= at]
    assert new_cuts[: len(before)] == before
    # Re-synchronisation: from a cut soon after the edit on, all cuts are the old ones shifted.
    after_old = [c + delta for c in old_cuts if c > at]
    after_new = [c for c in new_cuts if c > at]
    shared = set(after_old) & set(after_new)
    first = min(shared)
    assert first - at <= 2 * p.max_size
    assert [c for c in after_new if c >= first] == [c for c in after_old if c >= first]
    assert len(shared) >= len(after_old) - 3
    # A fixed-size chunker would share nothing after an insert or delete: the test has teeth.
    if delta:
        fixed_old = {c + delta for c in range(p.avg_size, len(data), p.avg_size) if c > at}
        fixed_new = set(range(p.avg_size, len(new), p.avg_size))
        assert not fixed_old & fixed_new


# --- buffers ----------------------------------------------------------------


def test_all_buffer_types_agree(tmp_path: Path) -> None:
    data = data_of(5, 1 << 20)
    want = chunking.cut_points(data, SMALL)
    assert chunking.cut_points(bytearray(data), SMALL) == want
    assert chunking.cut_points(memoryview(data), SMALL) == want
    padded = b"0123456789" + data + b"tail"
    assert chunking.cut_points(memoryview(padded)[10:-4], SMALL) == want
    assert chunking.cut_points(memoryview(bytearray(padded))[10:-4], SMALL) == want
    words = memoryview(data).cast("Q")  # itemsize 8: still chunked as bytes
    assert chunking.cut_points(words, SMALL) == want
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert chunking.cut_points(m, SMALL) == want
    sub = data[123:456_789]
    assert chunking.cut_points(memoryview(data)[123:456_789], SMALL) == chunking.cut_points(
        sub, SMALL
    )


def test_iter_chunks_zero_copy() -> None:
    data = bytearray(data_of(9, 100_000))
    views = list(chunking.iter_chunks(data, SMALL))
    assert b"".join(views) == data
    assert all(v.readonly for v in views)
    data[0] ^= 0xFF  # a view sees the underlying buffer: nothing was copied
    assert views[0][0] == data[0]
    for v in views:
        v.release()


def test_non_contiguous_rejected() -> None:
    data = data_of(1, 10_000)
    with pytest.raises(BufferError, match="contiguous"):
        chunking.cut_points(memoryview(data)[::2], SMALL)
    with pytest.raises(TypeError, match="bytes-like"):
        chunking.cut_points("text", SMALL)  # type: ignore[arg-type]


# --- parameters -------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_size": 63, "avg_size": 64, "max_size": 64}, "min_size"),
    ({"min_size": 0}, "min_size"),
    ({"min_size": 131072}, "min_size"),
    ({"avg_size": 65535}, "avg_size"),
    ({"avg_size": 100_000, "max_size": 300_000}, "avg_size"),
    ({"max_size": 65535}, "max_size"),
    ({"min_size": 64, "avg_size": 1 << 30, "max_size": (1 << 30) + 1}, "max_size"),
    ({"max_size": 2.5e5}, "max_size"),
    ({"avg_size": True}, "avg_size"),
])
def test_bad_params(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ChunkParams(**kwargs)  # type: ignore[arg-type]


def test_native_rejects_bad_params() -> None:
    for sizes in [(63, 64, 64), (64, 100, 200), (64, 128, 127), (64, 1 << 30, 1 << 31)]:
        with pytest.raises(ValueError):
            _native.check_params(*sizes)
        with pytest.raises(ValueError):
            _native.cut_points(b"x" * 1000, *sizes)
    with pytest.raises(ValueError):
        _native.cut_points(b"", -1, 64, 64)
    _native.check_params(64, 64, 64)
    _native.check_params(64, 1 << 30, 1 << 30)


def test_extreme_params() -> None:
    data = data_of(2, 100_000)
    p = ChunkParams(64, 64, 64)
    assert chunking.cut_points(data, p) == [*range(64, 100_000, 64), 100_000]
    big = ChunkParams(1 << 20, 1 << 30, 1 << 30)
    assert chunking.cut_points(data, big) == [100_000]
    assert chunking.cut_points(data, big, eof=False) == []
    assert chunking.cut_points(b"", SMALL) == []


def test_finer_chunks_than_expected_grow_output() -> None:
    # Constant data never cuts before max; with max == min the native output buffer must grow.
    p = ChunkParams(64, 4096, 4096)
    data = bytes(1 << 20)
    cuts = chunking.cut_points(data, ChunkParams(64, 64, 64))
    assert len(cuts) == (1 << 20) // 64
    assert chunking.cut_points(data, p) == ref_cuts(data[: 1 << 16], p) + [
        c + (1 << 16) for c in chunking.cut_points(data[1 << 16:], p)
    ]


# --- files ------------------------------------------------------------------


def test_open_chunked_and_chunk_file(tmp_path: Path) -> None:
    data = data_of(4, 300_000)
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    with chunking.open_chunked(path, SMALL) as (view, cuts):
        assert cuts == chunking.cut_points(data, SMALL)
        assert view.readonly
        assert b"".join(bytes(view[s:e]) for s, e in chunking.spans(cuts)) == data
    assert [bytes(v) for v in chunking.chunk_file(path, SMALL)] == [
        bytes(v) for v in chunking.iter_chunks(data, SMALL)
    ]
    kept = []
    with chunking.open_chunked(path, SMALL) as (view, cuts):
        kept.append(view[: cuts[0]])  # a slice kept past the block: no error, still readable
    assert bytes(kept[0]) == data[: len(kept[0])]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with chunking.open_chunked(empty, SMALL) as (view, cuts):
        assert (len(view), cuts) == (0, [])
    assert list(chunking.chunk_file(empty, SMALL)) == []


def test_missing_extension_is_an_error() -> None:
    code = (
        "import sys; sys.modules['gfs._native'] = None\n"
        "try:\n    import gfs.chunking\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    assert out.startswith("NativeExtensionMissing") and "build_ext --inplace" in out


# --- concurrency -------------------------------------------------------------


def test_gil_released_during_scan() -> None:
    """A pure-Python thread advances while native scans run in two other threads.

    With a huge switch interval the interpreter never preempts a thread, so the
    counter can only advance between a worker's two reads if the native call
    released the GIL. No wall-clock assertion: we only need one overlap.
    """
    data = data_of(8, 64 << 20)
    counter = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal counter
        while not stop.wait(1e-4):  # blocks briefly, so it never starves the workers
            counter += 1

    advanced: list[int] = []
    barrier = threading.Barrier(2)

    def work() -> None:
        barrier.wait()
        before = counter
        chunking.cut_points(data)
        advanced.append(counter - before)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    counter_thread = threading.Thread(target=count)
    try:
        counter_thread.start()
        for _ in range(5):
            workers = [threading.Thread(target=work) for _ in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            if any(advanced):
                break
    finally:
        stop.set()
        sys.setswitchinterval(old)
        counter_thread.join()
    assert any(a > 0 for a in advanced), advanced
