"""A dashboard samples only while watched (gfs.gateway.dashboard): a site's picture
walks its whole namespace, so a dashboard nobody asks costs nothing; asking its API
starts the samples, and an answer is never older than two intervals."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gfs.gateway import dashboard
from gfs.gateway.dashboard import Dashboard, add_routes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dash(clock: Clock) -> tuple[Dashboard, list[int]]:
    calls: list[int] = []

    def picture() -> dict[str, Any]:
        calls.append(1)
        return {"usage": {}, "tiers": [], "n": len(calls)}
    return Dashboard(picture, [], 5.0, watched_s=60.0, clock=clock), calls


async def _turns(dash: Dashboard, turns: int) -> None:
    """Run the sampling loop for `turns` turns (its sleeps counted, not slept)."""
    done = 0

    async def sleep(_: float) -> None:
        nonlocal done
        done += 1
        if done >= turns:
            raise asyncio.CancelledError
    with mock.patch.object(dashboard.asyncio, "sleep", sleep), \
            contextlib.suppress(asyncio.CancelledError):
        await dash.loop()


def test_nobody_watching_nothing_sampled_then_sampled_while_watched() -> None:
    clock = Clock()
    dash, calls = _dash(clock)
    asyncio.run(_turns(dash, 3))
    assert calls == []  # nobody asked
    dash.asked()
    asyncio.run(_turns(dash, 3))
    assert len(calls) == 3 and len(dash.series) == 3
    clock.now += 61  # nobody asked for longer than watched_s
    asyncio.run(_turns(dash, 3))
    assert len(calls) == 3


def test_the_api_answers_fresh_and_starts_the_samples() -> None:
    clock = Clock()
    dash, calls = _dash(clock)

    async def scenario() -> None:
        app = web.Application()
        add_routes(app, dash)
        async with TestClient(TestServer(app)) as client:  # its loop's first turn
            await asyncio.sleep(0)
            assert calls == []  # nobody asked yet
            got = await (await client.get("/api/state")).json()
            assert got["n"] == 1  # the first answer is sampled for it
            assert dash.watched()
            got = await (await client.get("/api/state")).json()
            assert got["n"] == 1  # fresh: not sampled again
            dash.state["sampled_at"] = time.time() - 3600  # an old sample
            got = await (await client.get("/api/state")).json()
            assert got["n"] == 2 and time.time() - got["sampled_at"] < 60
    asyncio.run(scenario())


def test_requests_that_find_the_state_stale_together_share_one_sample() -> None:
    """Eight API requests arrive while the store is being walked: one walk, all eight
    answered with its result (each started its own walk before)."""
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def picture() -> dict[str, Any]:
        calls.append(1)
        started.set()
        release.wait(10)
        return {"usage": {}, "tiers": [], "n": len(calls)}
    dash = Dashboard(picture, [], 5.0, watched_s=60.0)

    async def go() -> list[dict[str, Any]]:
        waiting = [asyncio.ensure_future(dash.sample()) for _ in range(8)]
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        await asyncio.sleep(0.05)  # all eight are waiting now
        release.set()
        await asyncio.gather(*waiting)
        return [dash.state for _ in waiting]
    states = asyncio.run(go())
    dash.pool.shutdown()
    assert len(calls) == 1 and all(s["n"] == 1 for s in states)
