"""Waiting for FUSE requests with the descriptor kept watched (`gfs.mount_loop`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pyfuse3.asyncio
import pytest

from gfs.mount_loop import FuseReadable
from tests.test_mount_helpers import init_store, needs_fuse, serve_child


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # let the loop poll and run its callbacks


def test_a_request_wakes_the_waiter_and_the_descriptor_stays_watched(
        pipe: tuple[int, int]) -> None:
    r, w = pipe

    async def read(waiter: FuseReadable) -> bytes:
        await waiter.wait_readable(r)
        return os.read(r, 1)  # at once, as pyfuse3's reader does

    async def run() -> None:
        waiter = FuseReadable()
        for _ in range(3):
            task = asyncio.create_task(read(waiter))
            await _turns()
            assert not task.done()  # nothing to read yet
            os.write(w, b"x")
            assert await asyncio.wait_for(task, 10) == b"x"
        loop = asyncio.get_running_loop()
        assert loop.remove_reader(r)  # still registered after three requests
    asyncio.run(run())


def test_a_stale_event_does_not_wake_the_waiter(pipe: tuple[int, int]) -> None:
    """An event the loop saw before the last request was read must not hand the
    waiter an empty descriptor (its blocking read would stall the loop)."""
    r, w = pipe

    async def run() -> None:
        waiter = FuseReadable()
        task = asyncio.create_task(waiter.wait_readable(r))
        await _turns()
        waiter._ready(r)  # what a stale readiness event delivers
        await _turns()
        assert not task.done()
        os.write(w, b"x")
        await asyncio.wait_for(task, 10)
    asyncio.run(run())


def test_an_event_with_nobody_waiting_stops_the_watch(pipe: tuple[int, int]) -> None:
    r, w = pipe

    async def run() -> None:
        waiter = FuseReadable()
        task = asyncio.create_task(waiter.wait_readable(r))
        os.write(w, b"ab")
        await asyncio.wait_for(task, 10)
        await _turns()  # readable, nobody waiting: unwatched, so the loop does not spin
        loop = asyncio.get_running_loop()
        assert not loop.remove_reader(r)
        task = asyncio.create_task(waiter.wait_readable(r))  # watched again
        await asyncio.wait_for(task, 10)
    asyncio.run(run())


def test_closing_wakes_the_waiter_with_closed_resource(pipe: tuple[int, int]) -> None:
    r, _ = pipe

    async def run() -> None:
        waiter = FuseReadable()
        task = asyncio.create_task(waiter.wait_readable(r))
        await _turns()
        waiter.notify_closing(r)
        with pytest.raises(pyfuse3.asyncio.ClosedResourceError):
            await asyncio.wait_for(task, 10)
        assert not asyncio.get_running_loop().remove_reader(r)
    asyncio.run(run())


@needs_fuse
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_mount_does_not_reregister_its_descriptor_per_request(tmp_path: Path) -> None:
    """50 creates (about 350 requests) cost a few epoll_ctl calls, not two per request."""
    state, mnt, trace = tmp_path / "state", tmp_path / "mnt", tmp_path / "trace.txt"
    init_store(state)
    argv = ["strace", "--seccomp-bpf", "-f", "-o", str(trace), "-e", "trace=epoll_ctl",
            sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt)]
    with serve_child(argv, state, mnt) as m:
        (mnt / "d").mkdir()
        before = len(re.findall(r"epoll_ctl\(", trace.read_text()))
        for i in range(50):
            (mnt / "d" / f"f{i}").write_bytes(b"x" * 4096)
        after = len(re.findall(r"epoll_ctl\(", trace.read_text()))
        assert (mnt / "d" / "f49").read_bytes() == b"x" * 4096
    m.proc.wait(30)
    assert after - before < 50, (before, after)
