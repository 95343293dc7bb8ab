"""`Written`: the byte ranges a create wrote, kept as a merged interval set."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.mount_overlay import Written

_ops = st.lists(st.tuples(st.booleans(), st.integers(0, 300), st.integers(0, 40)),
                max_size=60)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_written_ranges_match_a_naive_byte_model(ops: list[tuple[bool, int, int]]) -> None:
    """After any writes and truncates the ranges cover exactly the bytes a naive
    per-byte model says were written, sorted, disjoint and never touching."""
    written, model = Written(), set[int]()
    for write, off, n in ops:
        if write:
            written.wrote(off, n)
            model.update(range(off, off + n))
        else:
            written.truncated(off)
            model = {b for b in model if b < off}
    r = written.ranges
    assert all(a < b for a, b in r)
    assert all(b1 < a2 for (_, b1), (a2, _) in pairwise(r))
    assert {b for a, e in r for b in range(a, e)} == model


def test_random_rewrites_of_the_same_bytes_keep_few_ranges() -> None:
    """SQLite-style rewrites of pages in random order: one range per run of written
    bytes, not one per write."""
    written = Written()
    for i in range(10_000):
        page = (i * 7919) % 256
        written.wrote(page * 4096, 4096)
    assert written.ranges == [(0, 256 * 4096)]
