"""What SIGINT/SIGTERM do to a running mount: drain, commit, unmount.

The rules are in docs/architecture.md ("The FUSE mount", shutting down). No FUSE
here: the mount passes its handlers (`Drainable`) and the call that ends its main
loop (`pyfuse3.terminate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("hutong.mount")


class Drainable(Protocol):
    """What `Drain` needs of the mount's request handlers."""

    #: New opens and namespace changes are refused.
    draining: bool
    #: Writes are refused.
    frozen: bool

    def open_writers(self) -> int:
        """Handles open for writing."""
        ...

    def commit_open(self) -> int:
        """Commit what every open file holds (blocking); how many files were committed."""
        ...

    async def writers_closed(self) -> None:
        """Return once no handle is open for writing."""
        ...


class Drain:
    """The shutdown of a mount: the first `signal` drains it, a second forces it."""

    def __init__(self, ops: Drainable, grace: float, terminate: Callable[[], None]) -> None:
        self.ops = ops
        self.grace = grace
        self.terminate = terminate
        self.task: asyncio.Task[None] | None = None
        self.forced = False
        self.failed = False

    def signal(self) -> None:
        """The first signal drains and unmounts; a second one unmounts at once."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.drain())
            return
        if not self.forced:
            self.forced = True
            log.warning("second signal: unmounting now; what open files wrote since the "
                        "first signal is not committed")
            self.task.cancel()  # a commit already running on a thread still finishes
            self.terminate()

    async def _commit_open(self) -> int:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.ops.commit_open)
        except Exception as e:
            self.failed = True
            log.error("could not commit the open files: %s", e)
            return 0

    async def drain(self) -> None:
        """Refuse new opens, commit every open file, wait up to `grace` seconds for the
        writers to close, commit what they wrote meanwhile, then end the main loop."""
        self.ops.draining = True
        done = await self._commit_open()
        log.warning("shutting down: committed %d open files; waiting up to %g s for %d "
                    "writers to close them (signal again to unmount now)", done, self.grace,
                    self.ops.open_writers())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ops.writers_closed(), self.grace)
        self.ops.frozen = True
        left = self.ops.open_writers()
        done = await self._commit_open()
        if left:
            log.warning("%d files still open for writing: committed what was written to "
                        "them (%d files); their later writes and closes fail", left, done)
        if not self.forced:
            self.terminate()


__all__ = ["Drain", "Drainable"]
