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
async def serving(tmp: Path, limits: Limits, slow: asyncio.Event | None = None
                  ) -> AsyncIterator[tuple[GuardedSite, int, ssl.SSLContext]]:
    """A guarded TLS server on 127.0.0.1 port 0 answering GET /ok (and GET /slow once
    `slow` is set); (site, port, client context)."""
    d = certs.registry_tls(tmp, "127.0.0.1")
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def wait(request: web.Request) -> web.Response:
        assert slow is not None
        await slow.wait()
        return web.Response(text="ok")
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", wait)
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


class KeepAlive:
    """A raw HTTP/1.1 client over TLS that keeps its one connection open."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, client: ssl.SSLContext) -> KeepAlive:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                             server_hostname=certs.REGISTRY_NAME)
        return cls(r, w)

    def ask(self, path: str) -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    async def answer(self) -> bytes:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        return body

    async def closed_by_server(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.writer.close()


def test_idle_keepalive_connections_make_room_at_the_limit(tmp_path: Path) -> None:
    """At the limit with no connection waiting for its first request, a newcomer takes
    the place of the keep-alive connection idle the longest; a connection with a
    request in progress is never evicted, and when every one is busy the newcomer is
    refused."""
    async def main() -> None:
        limits = Limits(total=3, per_peer=256, header_timeout=30.0, idle=60.0)
        slow = asyncio.Event()
        async with serving(tmp_path, limits, slow) as (site, port, client):
            first, second, busy = [await KeepAlive.open(port, client) for _ in range(3)]
            for c in (first, second):  # answered, kept alive: idle
                c.ask("/ok")
                assert await c.answer() == b"ok"
            busy.ask("/slow")  # in progress until `slow` is set
            await until(lambda: site.guard.open == 3 and len(site.guard._waiting) == 0,
                        "three connections past their first request")
            assert await get_ok(port, client) == 200  # refused before: no room at all
            assert site.guard.evicted_idle == 1
            assert await first.closed_by_server()  # the longest idle made room
            second.ask("/ok")  # the others are served as before
            assert await second.answer() == b"ok"
            await until(lambda: site.guard.open == 2, "the newcomer's connection released")
            # every connection busy: a newcomer is refused, none is evicted
            extra = await KeepAlive.open(port, client)
            extra.ask("/slow")
            second.ask("/slow")
            await until(lambda: site.guard.open == 3 and not any(
                c.idle() for c in site.guard._started), "three requests in progress")
            refused = site.guard.refused
            try:
                status = await get_ok(port, client)
            except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
                status = 0
            assert status == 0 and site.guard.refused == refused + 1
            assert site.guard.evicted_idle == 1
            slow.set()
            for c in (busy, second, extra):
                assert await c.answer() == b"ok"
                c.close()
    asyncio.run(main())
