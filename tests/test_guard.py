"""The connection guard in front of the federation servers (gfs/federation/guard.py), from
the attacker's side (`python -m bench load` found both holes): an idle flood at the
connection limit locked every new client out, and each idle TLS connection held the
TLS layer's ~256 KiB of buffers (1.3 GiB of site RSS under 20,000 idle connections)."""

from __future__ import annotations

import asyncio
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from gfs.federation import certs
from gfs.federation.guard import GuardedSite, Limits
from gfs.federation.tls import ServerTls


@asynccontextmanager
async def serving(tmp: Path, limits: Limits) -> AsyncIterator[tuple[GuardedSite, int,
                                                                       ssl.SSLContext]]:
    """A guarded TLS server on 127.0.0.1 port 0 answering GET /ok; (site, port, client
    context)."""
    d = certs.registry_tls(tmp, "127.0.0.1")
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, keepalive_timeout=limits.idle)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, limits=limits,
                       ssl_context=ServerTls(d).context)
    await site.start()
    client = ssl.create_default_context(cafile=str(d / certs.CA_CERT))
    try:
        yield site, runner.addresses[0][1], client
    finally:
        await runner.cleanup()


async def get_ok(port: int, client: ssl.SSLContext) -> int:
    async with aiohttp.ClientSession() as s, s.get(
            f"https://127.0.0.1:{port}/ok", ssl=client,
            server_hostname=certs.REGISTRY_NAME) as r:
        return r.status


async def until(check: object, what: str, timeout: float = 10.0) -> None:
    """Poll `check()` (a callable) until true, at most `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def test_idle_flood_at_the_limit_does_not_lock_clients_out(tmp_path: Path) -> None:
    async def main() -> None:
        limits = Limits(total=8, per_peer=256, header_timeout=30.0, idle=15.0)
        async with serving(tmp_path, limits) as (site, port, client):
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
            await until(lambda: site.guard.open == 8, "8 idle connections admitted")
            assert await get_ok(port, client) == 200  # refused before: connection reset
            assert site.guard.evicted >= 1
            # the oldest idle connection made room: the server closed it
            reader = idle[0][0]
            assert await asyncio.wait_for(reader.read(1), 10) == b""
            for _, w in idle:
                w.close()
    asyncio.run(main())


def test_idle_tls_connections_hold_no_tls_buffers(tmp_path: Path) -> None:
    async def main() -> None:
        limits = Limits(total=1024, per_peer=1024, header_timeout=30.0, idle=15.0)
        async with serving(tmp_path, limits) as (site, port, client):
            assert await get_ok(port, client) == 200  # warm: contexts and caches made
            n = 200
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
                await until(lambda: site.guard.open >= n, f"{n} idle connections admitted")
                await asyncio.sleep(0)  # let the server run what it scheduled for them
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            # before: ~256 KiB each (51 MB for 200); now a socket and a few objects
            assert grown < n * (32 << 10), f"{grown / n:.0f} bytes per idle connection"
            # an idle connection that then speaks TLS is served as usual
            assert await get_ok(port, client) == 200
            for _, w in idle:
                w.close()
    asyncio.run(main())
