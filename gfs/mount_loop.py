"""Waiting for FUSE requests on asyncio with the /dev/fuse descriptor kept watched.

pyfuse3's asyncio layer registers the descriptor with the event loop before each
request and removes it after (two epoll_ctl calls and the selector's bookkeeping
per request). `FuseReadable` keeps it registered: a readiness event counts only if a
zero-timeout poll(2) confirms a request is there (the loop may deliver an event
observed before the previous request was read, and a read of the blocking
descriptor with nothing to read would stall the loop); it then wakes the waiting
reader. With nobody waiting at two events in a row (every reader busy), it
unregisters the descriptor until a reader waits again, so the loop never spins.

`enable()` installs it where pyfuse3 looks (`pyfuse3.asyncio.lowlevel`), after
`pyfuse3.asyncio.enable()`.
"""

from __future__ import annotations

import asyncio
import select
import types
from typing import Any

import pyfuse3.asyncio


class FuseReadable:
    """`wait_readable` / `notify_closing` of one event loop (pyfuse3 calls them with
    its session descriptor; its read lock lets one task wait at a time)."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._watched: dict[int, asyncio.AbstractEventLoop] = {}
        self._polls: dict[int, select.poll] = {}
        #: Descriptors with a request nobody waited for at the last event.
        self._unclaimed: set[int] = set()

    def _ready(self, fd: int) -> None:
        if not self._polls[fd].poll(0):  # an event the last read already consumed
            return
        fut = self._waiters.get(fd)
        if fut is None or fut.done():
            # nobody to hand it to; a reader usually comes back within a turn of the
            # loop (pyfuse3's next worker is queued on its lock): stop watching only
            # if nobody waits by the second such event
            if fd in self._unclaimed:
                self._unwatch(fd)
            else:
                self._unclaimed.add(fd)
            return
        self._unclaimed.discard(fd)
        fut.set_result(None)

    def _unwatch(self, fd: int) -> None:
        self._unclaimed.discard(fd)
        loop = self._watched.pop(fd, None)
        if loop is not None:
            loop.remove_reader(fd)

    async def wait_readable(self, fd: int) -> None:
        """Return once `fd` has a request to read."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[fd] = fut
        if fd not in self._polls:
            p = select.poll()
            p.register(fd, select.POLLIN)
            self._polls[fd] = p
        if fd not in self._watched:
            loop.add_reader(fd, self._ready, fd)
            self._watched[fd] = loop
        try:
            await fut
        finally:
            if self._waiters.get(fd) is fut:
                del self._waiters[fd]

    def notify_closing(self, fd: int) -> None:
        """Wake the waiter of `fd` with pyfuse3's ClosedResourceError; stop watching."""
        self._unwatch(fd)
        self._polls.pop(fd, None)
        fut = self._waiters.pop(fd, None)
        if fut is not None and not fut.done():
            fut.set_exception(pyfuse3.asyncio.ClosedResourceError())


def enable() -> FuseReadable:
    """Switch pyfuse3 to asyncio with the descriptor kept watched; returns the waiter."""
    pyfuse3.asyncio.enable()
    waiter = FuseReadable()
    fake_trio: Any = pyfuse3.asyncio
    fake_trio.lowlevel = types.SimpleNamespace(
        wait_readable=waiter.wait_readable, notify_closing=waiter.notify_closing,
        current_trio_token=pyfuse3.asyncio.current_trio_token,
        current_task=pyfuse3.asyncio.current_task)
    return waiter


__all__ = ["FuseReadable", "enable"]
