"""Periodic background work of a server (heartbeats, rule reconciliation, tiering) that
outlives any failure of one round.

    await every("heartbeat", 5.0, step, log)

A round that raises anything (an EMFILE, a garbled answer, a bug) is logged in one line
and retried after an exponential backoff; only cancellation ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

MAX_BACKOFF = 30.0
"""Longest wait (seconds) between failed rounds, unless the interval itself is longer."""


def backoff(interval: float, failures: int, cap: float = MAX_BACKOFF) -> float:
    """Seconds to wait before the next round after `failures` failed ones in a row."""
    if failures <= 0:
        return interval
    return min(interval * 2.0 ** min(failures, 30), max(interval, cap))


async def every(name: str, interval: float, step: Callable[[], Awaitable[object]],
                log: logging.Logger) -> None:
    """Run `step` every `interval` seconds until cancelled; failures back off."""
    failures = 0
    while True:
        await asyncio.sleep(backoff(interval, failures))
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure of one round: log it, keep the loop alive
            failures += 1
            log.warning("%s failed (%d in a row, next try in %.1f s): %s: %s", name,
                        failures, backoff(interval, failures), type(e).__name__, e)
        else:
            if failures:
                log.warning("%s works again after %d failed rounds", name, failures)
            failures = 0
