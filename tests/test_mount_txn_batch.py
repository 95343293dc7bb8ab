"""TxnBatcher: namespace changes of concurrent callers share one write transaction
(issue 16, durable untar); a lone change commits at once in its caller's thread;
an error reaches only the caller whose change raised it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gfs.errors import ExistsError
from gfs.meta import LmdbEngine, WriteTxn
from gfs.mount_txn_batch import TxnBatcher
from tests.test_mount_helpers import wait_for

DEADLINE = 30.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LmdbEngine]:
    e = LmdbEngine(str(tmp_path / "meta"))
    try:
        yield e
    finally:
        e.close()


def _put(key: str) -> Callable[[WriteTxn], str]:
    def fn(txn: WriteTxn) -> str:
        txn.set_meta(key, key.encode())
        return f"ok {key}"
    return fn


def test_a_lone_change_commits_at_once_in_its_callers_thread(engine: LmdbEngine) -> None:
    batcher = TxnBatcher(engine)
    threads: list[str] = []

    def fn(txn: WriteTxn) -> int:
        threads.append(threading.current_thread().name)
        txn.set_meta("k", b"v")
        return 7

    assert batcher.run(fn) == 7
    assert threads == [threading.current_thread().name]
    with engine.read() as txn:
        assert txn.get_meta("k") == b"v"
    assert (batcher.batches, batcher.changes) == (1, 1)


def _behind_a_held_commit(batcher: TxnBatcher, calls: list[Callable[[], None]]) -> None:
    """Run a first change that holds its transaction open until each of `calls`
    (each in a thread of its own) has queued its change; then let it commit and
    wait for every call to return."""
    inside, release = threading.Event(), threading.Event()

    def first(txn: WriteTxn) -> None:
        inside.set()
        assert release.wait(DEADLINE)
        txn.set_meta("first", b"1")

    t0 = threading.Thread(target=batcher.run, args=(first,))
    t0.start()
    assert inside.wait(DEADLINE)
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    wait_for(lambda: batcher.queued() == len(calls), "the changes queued", timeout=DEADLINE)
    release.set()
    for t in [t0, *threads]:
        t.join(DEADLINE)
        assert not t.is_alive()


def test_changes_queued_during_a_commit_share_the_next_transaction(
        engine: LmdbEngine) -> None:
    """While the first change's transaction is held open, 8 more callers queue; they
    are committed together in one more transaction, each getting its own result."""
    prelude_runs = []
    batcher = TxnBatcher(engine, lambda txn: prelude_runs.append(1))
    results: dict[str, object] = {}

    def call(key: str) -> Callable[[], None]:
        return lambda: results.update({key: batcher.run(_put(key))})

    _behind_a_held_commit(batcher, [call(f"k{i}") for i in range(8)])
    assert results == {f"k{i}": f"ok k{i}" for i in range(8)}
    assert (batcher.batches, batcher.changes) == (2, 9)
    assert len(prelude_runs) == 2  # once per transaction
    with engine.read() as txn:
        assert txn.get_meta("first") == b"1"
        assert all(txn.get_meta(f"k{i}") == f"k{i}".encode() for i in range(8))


def test_an_error_reaches_only_its_caller_and_the_rest_commit(engine: LmdbEngine) -> None:
    """A batch whose one change raises is committed change by change: that caller
    gets the error, nothing of its change is written, the others commit."""
    batcher = TxnBatcher(engine)

    def bad(txn: WriteTxn) -> None:
        txn.set_meta("bad", b"x")
        raise ExistsError("/taken")

    outcome: dict[str, object] = {}

    def call(name: str, fn: Callable[[WriteTxn], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                outcome[name] = batcher.run(fn)
            except ExistsError as e:
                outcome[name] = e
        return run

    _behind_a_held_commit(batcher, [call("a", _put("a")), call("bad", bad),
                                    call("b", _put("b"))])
    assert outcome["a"] == "ok a" and outcome["b"] == "ok b"
    assert isinstance(outcome["bad"], ExistsError)
    with engine.read() as txn:
        assert txn.get_meta("a") == b"a" and txn.get_meta("b") == b"b"
        assert txn.get_meta("bad") is None
