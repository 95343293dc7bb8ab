"""A site's chunk answer parts (`Site.frames`): read straight into the buffer sent, the
same frames as the stored blobs one by one, and the one-by-one reading wherever the
fast path cannot read a chunk whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.codec import decode_blob
from gfs.errors import CorruptChunkError
from gfs.federation.http import BadRequestError
from gfs.federation.site import Site
from gfs.federation.testing import lone_site
from gfs.federation.wire import fit_frames, pack_frames, skip_frame, unpack_frames


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = lone_site(tmp_path / "s1")
    yield s
    s.close()


def test_frames_equal_the_blobs_read_one_by_one(site: Site) -> None:
    data = os.urandom(3 << 20)
    site.client.write_bytes("/bank-a/f", data)
    ids = [c.id for c in site.client.manifest("/bank-a/f").chunks]
    absent = bytes(16)
    part = [*ids[:8], absent, ids[0]]
    body, served = site.frames(part)
    assert bytes(body) == pack_frames([site.blob(c) for c in part])
    assert served == len(part) - 1
    got = unpack_frames(bytes(body))
    raw = b"".join(decode_blob(b, expect_id=c) for b, c in zip(got[:8], ids[:8], strict=True))
    assert raw == data[:len(raw)] and got[8] == b""


def test_a_part_with_an_unreadable_location_is_read_one_by_one(site: Site) -> None:
    site.client.write_bytes("/bank-a/g", os.urandom(1 << 20))
    ids = [c.id for c in site.client.manifest("/bank-a/g").chunks]
    with site.client.engine.read() as txn:
        loc = txn.get_chunk(ids[-1]).locations[0]  # type: ignore[union-attr]
    pack = next(p for p in (Path(site.client.state) / "pools").rglob("*")
                if p.is_file() and loc.pack.hex() in p.name)
    os.truncate(pack, loc.offset + 10)  # the last chunk's copy cut short
    body, served = site.frames(ids)
    assert bytes(body) == pack_frames([site.blob(c) for c in ids])
    last = unpack_frames(bytes(body))[-1]
    assert len(last) == 10 and served == len(ids)  # as stored: the reader refuses it
    with pytest.raises(CorruptChunkError):
        decode_blob(last, expect_id=ids[-1])


def test_a_frame_fitted_to_its_announced_size_reads_as_not_held() -> None:
    """`fit_frames`: a frame other than its announced size becomes a skip frame of that
    size, which a reader takes as not held; the frames that fit pass unchanged."""
    blobs = [b"a" * 40, b"b" * 50, None, b"c" * 60]
    body = pack_frames(blobs)
    announced = [4 + 40, 4 + 70, 4 + 30, 4]  # the 2nd changed, the 3rd gone, the 4th new
    fitted, changed = fit_frames(body, announced)
    assert len(fitted) == sum(announced) and changed == [1, 2, 3]
    assert unpack_frames(fitted) == [b"a" * 40, b"", b"", b""]
    assert fit_frames(body, [44, 54, 4, 64]) == (body, [])


def test_a_skip_frame_cut_short_is_a_truncated_body() -> None:
    with pytest.raises(BadRequestError, match="truncated frame"):
        unpack_frames(pack_frames([b"x" * 8]) + skip_frame(20)[:-1])
    with pytest.raises(ValueError, match="skip frame"):
        skip_frame(3)
