"""The shutdown of a mount (`Drain`), driven without FUSE: the order of refusing,
committing, waiting, freezing and ending the main loop; a second signal; errors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

from gfs.errors import NoSpaceError
from gfs.mount_shutdown import Drain


class Ops:
    """Request handlers as `Drain` sees them, recording what it does to them."""

    def __init__(self, writers: int, fail: bool = False) -> None:
        self.draining = False
        self.frozen = False
        self.writers = writers
        self.fail = fail
        self.events: list[str] = []
        self.closed = asyncio.Event()
        self.committed = threading.Event()

    def open_writers(self) -> int:
        return self.writers

    def commit_open(self) -> int:
        self.events.append(f"commit draining={self.draining} frozen={self.frozen}")
        self.committed.set()
        if self.fail:
            raise NoSpaceError("/pool")
        return self.writers

    async def writers_closed(self) -> None:
        await self.closed.wait()

    def close_all(self) -> None:
        self.writers = 0
        self.closed.set()


def run(ops: Ops, grace: float, script: Callable[[Drain, Ops], Awaitable[None]]
        ) -> tuple[Drain, list[str]]:
    ended: list[str] = []

    async def main() -> Drain:
        done = asyncio.Event()

        def terminate() -> None:
            ended.append(f"terminate after {len(ops.events)} commits")
            done.set()
        drain = Drain(ops, grace, terminate)
        await script(drain, ops)
        await asyncio.wait_for(done.wait(), 30)
        if drain.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(drain.task, 30)
        return drain
    return asyncio.run(main()), ended


def test_first_signal_commits_waits_for_writers_then_ends() -> None:
    async def script(drain: Drain, ops: Ops) -> None:
        drain.signal()
        assert await asyncio.to_thread(ops.committed.wait, 30)
        assert ops.draining and not ops.frozen
        ops.close_all()
    ops = Ops(writers=2)
    drain, ended = run(ops, 600, script)
    assert ops.events == ["commit draining=True frozen=False",
                          "commit draining=True frozen=True"]
    assert ended == ["terminate after 2 commits"] and not drain.forced and not drain.failed


def test_grace_ends_the_wait_for_writers_that_stay_open() -> None:
    async def script(drain: Drain, ops: Ops) -> None:
        drain.signal()
    ops = Ops(writers=1)
    drain, ended = run(ops, 0.01, script)
    assert ops.frozen and ops.writers == 1 and len(ops.events) == 2 and not drain.forced
    assert ended == ["terminate after 2 commits"]


def test_second_signal_ends_at_once() -> None:
    async def script(drain: Drain, ops: Ops) -> None:
        drain.signal()
        assert await asyncio.to_thread(ops.committed.wait, 30)
        drain.signal()
        drain.signal()  # a third changes nothing
    ops = Ops(writers=1)
    drain, ended = run(ops, 600, script)
    assert drain.forced and ended == ["terminate after 1 commits"]


def test_a_failed_commit_is_reported_and_the_mount_still_ends() -> None:
    async def script(drain: Drain, ops: Ops) -> None:
        drain.signal()
    ops = Ops(writers=1, fail=True)
    drain, ended = run(ops, 0.01, script)
    assert drain.failed and ended == ["terminate after 2 commits"]
