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


class _Buf:
    """A bytearray with the two pread conventions (their file's and the spool's)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    @property
    def size(self) -> int:
        return len(self.data)

    def pread(self, a: int, b: int) -> bytes:  # (off, size) for theirs; see below
        return bytes(self.data[a:a + b])

    def pwrite(self, data: bytes, off: int) -> int:
        if len(self.data) < off:
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(data)] = data
        return len(data)

    def truncate(self, size: int) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))


class _Spool(_Buf):
    def pread(self, size: int, off: int) -> bytes:
        return bytes(self.data[off:off + size])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.binary(min_size=1, max_size=50), max_size=8),
       st.integers(1, 64))
def test_appends_go_after_their_content(theirs: bytes, lines: list[bytes], step: int,
                                        ) -> None:
    """Writes at the end of a new file (O_APPEND) only, laid after their file: their
    content whole, then every byte written here, in order (any copy step)."""
    import gfs.mount_overlay as overlay

    written, ours = Written(), _Spool()
    for line in lines:
        written.wrote(ours.size, len(line))
        ours.pwrite(line, ours.size)
    assert written.appends_only(ours.size)
    into = _Spool()
    old, overlay.STEP = overlay.STEP, step
    try:
        size = written.append(_Buf(theirs), ours, ours.size, into)
    finally:
        overlay.STEP = old
    assert bytes(into.data) == theirs + b"".join(lines) and size == len(into.data)


def test_a_truncate_or_a_gap_is_not_appends_only() -> None:
    w = Written()
    w.wrote(0, 10)
    assert w.appends_only(10) and not w.appends_only(12)
    w.truncated(4)
    assert not w.appends_only(4)
    gap = Written()
    gap.wrote(5, 5)
    assert not gap.appends_only(10)
    assert Written().appends_only(0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 250), st.integers(0, 250), st.integers(0, 50))
def test_copy_span_copies_exactly_or_names_where_the_source_ended(
        src: bytes, a: int, b: int, to: int) -> None:
    """`copy_span` copies [a, b) to `to` when the source holds it; a source that ends
    early is EIO naming the offset (it used to spin on empty reads for ever), or, with
    `short_ok`, a copy of what there is."""
    import errno

    import pytest

    from gfs.mount_overlay import copy_span

    a, b = min(a, b), max(a, b)
    into = _Spool()
    src_read = _Buf(src).pread
    if b <= len(src) or a == b:
        assert copy_span(src_read, into.pwrite, a, b, to=to) == b - a
        assert bytes(into.data[to:to + b - a]) == src[a:b]
    else:
        with pytest.raises(OSError) as e:
            copy_span(src_read, into.pwrite, a, b, to=to)
        assert e.value.errno == errno.EIO and f"{max(a, len(src)):,}" in str(e.value)
        got = copy_span(src_read, _Spool().pwrite, a, b, to=to, short_ok=True)
        assert got == max(0, len(src) - a)


def test_a_spool_shorter_than_its_written_ranges_is_an_io_error() -> None:
    """A merge whose own spool lost bytes (a damaged temporary file) fails with EIO
    instead of looping: the close reports the error and commits nothing."""
    import errno

    import pytest

    w, ours = Written(), _Spool()
    w.wrote(0, 100)
    ours.pwrite(b"x" * 40, 0)  # 60 of the 100 written bytes are gone
    with pytest.raises(OSError) as e:
        w.merge(_Buf(b"theirs"), ours, 100, _Spool())
    assert e.value.errno == errno.EIO
