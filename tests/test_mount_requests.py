"""The FUSE requests the mount serves, counted per opcode (`user.hutong.requests`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_mount_helpers import Mounted, init_store, mount, needs_fuse

pytestmark = needs_fuse


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Mounted]:
    state = tmp_path / "state"
    init_store(state)
    # the timeouts the mount has by default (the helper turns attribute caching off)
    with mount(state, tmp_path / "mnt", "--attr-timeout", "1", "--sync-interval", "1s") as mounted:
        yield mounted


def requests(m: Mounted) -> dict[str, int]:
    """The requests served so far, by opcode (the read itself is one getxattr)."""
    counts: dict[str, int] = json.loads(os.getxattr(m.mnt, "user.hutong.requests"))
    return counts


def served(m: Mounted, fn: object, *args: object) -> dict[str, int]:
    """The requests `fn(*args)` made the mount serve."""
    assert callable(fn)
    before = requests(m)
    fn(*args)
    after = requests(m)
    after["getxattr"] -= 1  # the second read of the counts
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _create(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_counts_are_per_opcode(m: Mounted) -> None:
    (m.mnt / "d").mkdir()
    got = served(m, _create, m.mnt / "d" / "f", b"x" * 4096)
    # the kernel's requests for open(O_CREAT|O_TRUNC) + write + close of a new file:
    # the miss, the create, the attributes O_TRUNC invalidates, the
    # security.capability asked before a write, the write, close's flush, release
    assert set(got) <= {"lookup", "create", "getattr", "getxattr", "write", "flush",
                        "release"}, got
    assert got["create"] == 1 and got["write"] == 1 and got["flush"] == 1, got
    assert sum(got.values()) <= 7, got
    assert (m.mnt / "d" / "f").read_bytes() == b"x" * 4096


def test_a_miss_is_cached_as_a_negative_entry(m: Mounted) -> None:
    missing = m.mnt / "nope"

    def miss_twice() -> None:
        for _ in range(2):
            with pytest.raises(FileNotFoundError):
                os.stat(missing)
    assert served(m, miss_twice).get("lookup") == 1  # the second miss: the kernel's
    missing.write_bytes(b"here")  # a create through the mount replaces the miss
    assert missing.read_bytes() == b"here" and os.stat(missing).st_size == 4
    os.unlink(missing)
    with pytest.raises(FileNotFoundError):
        os.stat(missing)
