"""TxnBatcher: namespace changes of concurrent callers share one write transaction
(issue 16, durable untar); a lone change commits at once in its caller's thread;
an error reaches only the caller whose change raised it."""

from __future__ import annotations

import asyncio
import contextlib
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


# -- submit: a coroutine's change, committed by the batcher's committer thread ---------
def _submit_behind_a_held_commit(batcher: TxnBatcher,
                                 changes: list[Callable[[WriteTxn], object]]
                                 ) -> list[object]:
    """On an event loop: a first submitted change holds its transaction open until each
    of `changes` (submitted concurrently) has queued; returns their outcomes (a result
    or the exception raised)."""
    inside, release = threading.Event(), threading.Event()

    def first(txn: WriteTxn) -> str:
        inside.set()
        assert release.wait(DEADLINE)
        txn.set_meta("first", threading.current_thread().name.encode())
        return "first"

    async def main() -> list[object]:
        head = asyncio.ensure_future(batcher.submit(first))
        while not inside.is_set():  # the loop stays free while the commit runs
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(fn)) for fn in changes]
        while batcher.queued() < len(changes):
            await asyncio.sleep(0.001)
        release.set()
        assert await head == "first"
        return list(await asyncio.gather(*rest, return_exceptions=True))

    return asyncio.run(asyncio.wait_for(main(), DEADLINE))


def test_submitted_changes_share_transactions_off_the_loop(engine: LmdbEngine) -> None:
    """16 changes submitted from an event loop while a first one commits share the next
    transaction, committed by the batcher's own thread (the loop never waits)."""
    batcher = TxnBatcher(engine)
    try:
        got = _submit_behind_a_held_commit(batcher, [_put(f"k{i}") for i in range(16)])
    finally:
        batcher.close()
    assert got == [f"ok k{i}" for i in range(16)]
    assert (batcher.batches, batcher.changes) == (2, 17)
    with engine.read() as txn:
        assert txn.get_meta("first") == b"hutong-txn_0"
        assert all(txn.get_meta(f"k{i}") == f"k{i}".encode() for i in range(16))


def test_a_submitted_error_reaches_only_its_caller(engine: LmdbEngine) -> None:
    batcher = TxnBatcher(engine)

    def bad(txn: WriteTxn) -> None:
        txn.set_meta("bad", b"x")
        raise ExistsError("/taken")

    try:
        got = _submit_behind_a_held_commit(batcher, [_put("a"), bad, _put("b")])
    finally:
        batcher.close()
    assert got[0] == "ok a" and got[2] == "ok b"
    assert isinstance(got[1], ExistsError)
    with engine.read() as txn:
        assert txn.get_meta("a") == b"a" and txn.get_meta("b") == b"b"
        assert txn.get_meta("bad") is None


def _held(key: str, inside: threading.Event, release: threading.Event
          ) -> Callable[[WriteTxn], None]:
    """A change that says it is inside its transaction, then waits for `release`."""
    def held(txn: WriteTxn) -> None:
        inside.set()
        assert release.wait(DEADLINE)
        txn.set_meta(key, b"1")
    return held


def test_a_threads_commit_hands_submitted_changes_to_the_committer(
        engine: LmdbEngine) -> None:
    """A change submitted while a thread's `run` commits is committed after it (by the
    committer thread: the thread returns once its own change is committed), and a
    thread's change queued behind a submitted one is committed too."""
    batcher = TxnBatcher(engine)
    inside, release = threading.Event(), threading.Event()
    first = _held("first", inside, release)

    async def main() -> str:
        t = threading.Thread(target=batcher.run, args=(first,))
        t.start()
        while not inside.is_set():
            await asyncio.sleep(0.001)
        sub = asyncio.ensure_future(batcher.submit(_put("async")))
        while batcher.queued() < 1:
            await asyncio.sleep(0.001)
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, t.join, DEADLINE)
        assert not t.is_alive()
        late = await asyncio.get_running_loop().run_in_executor(None, batcher.run,
                                                                _put("late"))
        assert late == "ok late"
        return await sub

    try:
        assert asyncio.run(asyncio.wait_for(main(), DEADLINE)) == "ok async"
    finally:
        batcher.close()
    with engine.read() as txn:
        assert [txn.get_meta(k) for k in ("first", "async", "late")] == \
            [b"1", b"async", b"late"]


def test_a_cancelled_submit_still_commits_its_change(engine: LmdbEngine) -> None:
    """An interrupted request's change may be in a transaction already: it commits, and
    its outcome is dropped (nothing awaits it)."""
    batcher = TxnBatcher(engine)
    inside, release = threading.Event(), threading.Event()
    held = _held("held", inside, release)

    async def main() -> None:
        fut = asyncio.ensure_future(batcher.submit(held))
        while not inside.is_set():
            await asyncio.sleep(0.001)
        fut.cancel()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await fut
        assert await batcher.submit(_put("next")) == "ok next"

    try:
        asyncio.run(asyncio.wait_for(main(), DEADLINE))
    finally:
        batcher.close()
    with engine.read() as txn:
        assert txn.get_meta("held") == b"1" and txn.get_meta("next") == b"next"


def test_a_failure_outside_the_transaction_reaches_the_submitters(
        engine: LmdbEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should committing fail outside the transaction (a bug), the callers awaiting
    the batch get the error instead of waiting forever, and the next change commits."""
    batcher = TxnBatcher(engine)
    calls = []

    def broken(batch: object) -> None:
        calls.append(batch)
        raise RuntimeError("broken commit")

    async def main() -> None:
        with monkeypatch.context() as m:
            m.setattr(batcher, "_commit", broken)
            with pytest.raises(RuntimeError, match="broken commit"):
                await batcher.submit(_put("a"))
        assert await batcher.submit(_put("b")) == "ok b"

    try:
        asyncio.run(asyncio.wait_for(main(), DEADLINE))
    finally:
        batcher.close()
    assert len(calls) == 1


def test_a_failure_outside_the_transaction_reaches_a_thread_caller(
        engine: LmdbEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a caller on a thread that leads its batch (`run`): it gets the
    error, the batcher is not left busy, and the next change, from a thread or the
    loop, commits."""
    batcher = TxnBatcher(engine)
    try:
        with monkeypatch.context() as m:
            m.setattr(batcher, "_commit", lambda batch: (_ for _ in ()).throw(
                RuntimeError("broken commit")))
            with pytest.raises(RuntimeError, match="broken commit"):
                batcher.run(_put("a"))
        done: list[str] = []
        worker = threading.Thread(target=lambda: done.append(batcher.run(_put("b"))),
                                  daemon=True)  # (a regression: it would wait for ever)
        worker.start()
        worker.join(DEADLINE)
        assert done == ["ok b"]
        assert asyncio.run(asyncio.wait_for(batcher.submit(_put("c")), DEADLINE)) == "ok c"
    finally:
        batcher.close()
