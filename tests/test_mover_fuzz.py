"""Fuzzing the mover's frame parser with atheris (bounded).

Run directly for a fuzzing session (`make fuzz-mover` runs it for 30 s):

    python tests/test_mover_fuzz.py -max_total_time=30 -rss_limit_mb=2048

The native parsers (`mv_check_frames`, the same header and batch checks the
server applies to a live stream, and `mv_check_records`, the record opener
every encrypted stream reads through, fed the same bytes and valid records
spliced in front) must return a status for any input, never crash, hang or
read past the buffer. Atheris drives it with libFuzzer's
mutator; the C code is not coverage-instrumented (no clang here), so the
mutations are guided by the Python harness only. A short run is a slow test.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest


def _frame(ftype: int, payload: bytes = b"") -> bytes:
    return b"HTMV" + struct.pack("<BBHI", 2, ftype, 0, len(payload)) + payload


KEY, IV = bytes(range(32)), bytes(range(12))


def _records(n: int) -> bytes:
    from gfs import mover_reference as ref

    seal = ref.Direction(ref.CIPHER_AES256GCM, ref.DirKeys(KEY, IV))
    return b"".join(seal.seal(bytes([i]) * (40 + i)) for i in range(n))


SEEDS = [
    _frame(5, struct.pack("<I", 2) + bytes(32)) + _frame(8, bytes(8)) + _frame(13),
    _frame(6, bytes(16) + bytes(36)) + _frame(12, struct.pack("<I", 4) + b"oops"),
    _frame(9, struct.pack("<I", 1) + bytes(16)) + _frame(13),
]


def one_input(data: bytes) -> None:
    from gfs import _mover

    max_blob = 0
    if data:
        max_blob = (0, 64, 4096, 1 << 20)[data[0] & 3]
    # Splice a valid stream in front so deep states are reached too.
    buf = SEEDS[data[0] % len(SEEDS)] + data[1:] if data else data
    for candidate in (data, buf):
        status, n, msg = _mover.check_frames(candidate, max_blob)
        if not (0 <= status <= _mover.ERR_REKEY and n >= 0 and (status == 0) == (msg == "")):
            raise AssertionError(f"bad parser result {status}, {n}, {msg!r}")
    for candidate in (data, _records(2) + data[1:]):
        status, n, msg = _mover.check_records(_mover.CIPHER_AES256GCM, KEY, IV, candidate)
        if status not in (0, _mover.ERR_RECORD, _mover.ERR_CLOSED) or (status == 0) != (
                msg == "") or n > 2 + len(candidate) // 33:
            raise AssertionError(f"bad record parser result {status}, {n}, {msg!r}")


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_atheris_fuzz_frame_parser_bounded(tmp_path: object) -> None:
    pytest.importorskip("atheris")
    corpus = os.path.join(str(tmp_path), "corpus")
    os.makedirs(corpus)
    for i, seed in enumerate(SEEDS):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    proc = subprocess.run(
        [sys.executable, __file__, "-max_total_time=15", "-rss_limit_mb=2048",
         "-max_len=4096", corpus], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done" in proc.stderr or "done" in proc.stderr.lower()


if __name__ == "__main__":
    main()
