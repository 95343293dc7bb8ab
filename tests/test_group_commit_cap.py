"""GroupCommitter's batch cap (the S3 gateway's small PUTs use it): items queued while
a batch commits form the next batches, none larger than `max_items` or, but for its
last item, `max_bytes`; each batch failure still reaches only the item that caused it."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from gfs.group_commit import GroupCommitter


def _blocked(max_items: int | None, max_bytes: int | None
             ) -> tuple[GroupCommitter[bytes], list[list[bytes]], threading.Event,
                        threading.Event]:
    batches: list[list[bytes]] = []
    entered, gate = threading.Event(), threading.Event()

    def commit(batch: list[bytes]) -> None:
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        if b"bad" in batch:
            raise ValueError("bad item")
        batches.append(list(batch))

    g: GroupCommitter[bytes] = GroupCommitter(commit, max_items=max_items,
                                              max_bytes=max_bytes, size=len)
    return g, batches, entered, gate


def _fill(g: GroupCommitter[bytes], entered: threading.Event,
          items: list[bytes]) -> list[Future[None]]:
    """Submit a first item, wait until its commit runs (and blocks), then queue `items`
    behind it: they are all waiting when the gate opens."""
    first = g.submit_future(b"first")
    assert entered.wait(30)
    return [first] + [g.submit_future(it) for it in items]


def test_batches_stop_at_the_item_cap() -> None:
    g, batches, entered, gate = _blocked(max_items=4, max_bytes=None)
    futs = _fill(g, entered, [b"%03d" % i for i in range(10)])
    gate.set()
    for f in futs:
        f.result(30)
    g.close()
    assert [len(b) for b in batches] == [1, 4, 4, 2]
    assert [it for b in batches for it in b] == [b"first"] + [b"%03d" % i for i in range(10)]


def test_batches_stop_at_the_byte_cap() -> None:
    g, batches, entered, gate = _blocked(max_items=None, max_bytes=10)
    futs = _fill(g, entered, [b"x" * 4] * 7)
    gate.set()
    for f in futs:
        f.result(30)
    g.close()
    assert [sum(map(len, b)) for b in batches] == [5, 12, 12, 4]  # 4+4+4 reaches 10
    assert all(sum(map(len, b[:-1])) < 10 for b in batches)


def test_a_failing_item_in_a_capped_batch_fails_alone() -> None:
    g, batches, entered, gate = _blocked(max_items=3, max_bytes=None)
    futs = _fill(g, entered, [b"a", b"bad", b"c", b"d"])
    gate.set()
    with pytest.raises(ValueError, match="bad item"):
        futs[2].result(30)
    for i in (0, 1, 3, 4):
        assert futs[i].result(30) is None
    g.close()
    assert [it for b in batches for it in b] == [b"first", b"a", b"c", b"d"]


def test_a_byte_cap_needs_the_size_of_an_item() -> None:
    with pytest.raises(ValueError, match="max_bytes needs size"):
        GroupCommitter(lambda batch: None, max_bytes=10)
