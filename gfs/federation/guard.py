"""Connection limits and a header deadline in front of an aiohttp server (slowloris).

    site = GuardedSite(runner, host, 0, limits=Limits())
    await site.start()

Each accepted connection passes `ConnectionGuard.admit`: at most `per_peer` open
connections from one address and `total` in all, so descriptors never run out. At
`total`, a new connection takes the place of the oldest one that has not yet sent its
first request (an idle flood cannot lock clients out), else of the keep-alive connection
idle the longest (its requests all answered, none in progress: a flood of clients that
make one request each and keep the connection cannot either); only when every
connection is busy is the new one closed at once, before aiohttp sees it. The first request's
headers must be complete within `header_timeout` seconds of the connection, or it is
closed. With TLS, the handshake (and its ~256 KiB of buffers) starts only once the
client has sent its first bytes, so idle connections cost a socket, not memory. Idle
keep-alive connections are closed by aiohttp's `keepalive_timeout` (`Limits.idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("gfs.federation.guard")
EARLY_LIMIT = 1 << 20
"""Bytes kept that arrive between a TLS handshake and the handler taking over."""


@dataclass(frozen=True)
class Limits:
    """How many connections a server keeps open and how long it waits for them."""

    total: int = 4096
    per_peer: int = 256
    header_timeout: float = 10.0
    idle: float = 15.0


class ConnectionGuard:
    """Counts open connections per peer address; refuses beyond the limits, or at the
    total limit closes the oldest connection still waiting for its first request."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: dict[str, int] = {}
        self._total = 0
        self._waiting: OrderedDict[_Guarded, None] = OrderedDict()
        self._started: set[_Guarded] = set()
        """Connections past their first request (keep-alive ones among them)."""
        self.refused = 0
        self.expired = 0
        self.evicted = 0
        self.evicted_idle = 0
        """Keep-alive connections (past their first request) evicted for newcomers."""
        self._lock = threading.Lock()

    def admit(self, peer: str, conn: _Guarded | None = None) -> bool:
        """Whether a new connection from `peer` may stay open; `conn` (if given) counts as
        waiting for its first request until `started`."""
        victim = None
        with self._lock:
            if self._open.get(peer, 0) >= self.limits.per_peer:
                self.refused += 1
                return False
            if self._total >= self.limits.total:
                if self._waiting:
                    victim, _ = self._waiting.popitem(last=False)
                else:  # at the limit, rarely: a scan of the open connections is fine
                    idle = [c for c in self._started if c.idle()]
                    if not idle:
                        self.refused += 1
                        return False
                    victim = min(idle, key=lambda c: c.last_active)
                    self._started.discard(victim)
                    self.evicted_idle += 1
                self.evicted += 1
            self._open[peer] = self._open.get(peer, 0) + 1
            self._total += 1
            if conn is not None:
                self._waiting[conn] = None
        if victim is not None:
            victim.evict()
        return True

    def started(self, conn: _Guarded) -> None:
        """`conn` sent its first request: it is no longer evicted for a newcomer."""
        with self._lock:
            if conn in self._waiting:
                self._waiting.pop(conn)
                self._started.add(conn)

    def release(self, peer: str, conn: _Guarded | None = None) -> None:
        with self._lock:
            if conn is not None:
                self._waiting.pop(conn, None)
                self._started.discard(conn)
            left = self._open.get(peer, 0) - 1
            if left > 0:
                self._open[peer] = left
            else:
                self._open.pop(peer, None)
            self._total -= 1

    @property
    def open(self) -> int:
        return self._total


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's request handler: admission, then (with TLS) the handshake, then
    the first header deadline, which counts from the connection, handshake included."""

    def __init__(self, make: Callable[[], asyncio.Protocol], guard: ConnectionGuard,
                 tls: ssl.SSLContext | None = None) -> None:
        self._make, self._guard, self._tls = make, guard, tls
        self._inner: asyncio.Protocol | None = None
        self._peer = ""
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Future[None] | None = None
        self._early = b""
        self._watch = -1  # a duplicate of the socket watched for the first bytes (TLS)
        self.last_active = 0.0
        """Loop time of the last bytes received (the last request, once idle)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        self._transport = transport
        self._admitted = True
        if not self._guard.admit(self._peer, self):
            self._admitted = False
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.header_timeout, self._expire)
        if self._tls is None:
            self._start(transport)
            return
        # admitted before the handshake: a half-open TLS connection counts too. The
        # ClientHello waits for start_tls; until it arrives only a duplicate descriptor
        # is watched (the transport owns the socket's), so an idle connection holds no
        # TLS buffers.
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        try:
            self._watch = os.dup(sock.fileno())
            loop.add_reader(self._watch, self._hello)
        except OSError:  # out of descriptors: handshake at once
            self._unwatch()
            self._hello()

    def _hello(self) -> None:
        """The client sent its first bytes (or closed): run the TLS handshake."""
        self._unwatch()
        if self._transport is not None and self._task is None and self._admitted:
            self._task = asyncio.ensure_future(self._handshake(self._transport))

    def _unwatch(self) -> None:
        if self._watch >= 0:
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown
                asyncio.get_running_loop().remove_reader(self._watch)
            os.close(self._watch)
            self._watch = -1

    def idle(self) -> bool:
        """Whether this connection is kept alive with nothing to do: past its first
        request, aiohttp's handler has no request in progress and none queued (read from
        the handler; an aiohttp without these fields makes no connection idle)."""
        inner = self._inner
        transport = self._transport
        return (inner is not None and self._timer is None and transport is not None
                and not transport.is_closing()
                and getattr(inner, "_request_in_progress", True) is False
                and not getattr(inner, "_messages", True))

    def evict(self) -> None:
        """Close this connection (waiting for its first request, or idle) for a
        newcomer."""
        self._release()
        if self._transport is not None:
            self._transport.abort()

    async def _handshake(self, raw: asyncio.Transport) -> None:
        assert self._tls is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw, self, self._tls, server_side=True,
                ssl_handshake_timeout=self._guard.limits.header_timeout)
        except OSError as e:  # ssl.SSLError, ConnectionError and TimeoutError too
            log.debug("TLS handshake from %s failed: %s", self._peer, e)
            raw.abort()
            self._release()
            return
        if tls is None or tls.is_closing():
            self._release()
            return
        self._transport = tls
        self._start(tls)

    def _start(self, transport: asyncio.Transport) -> None:
        self._inner = self._make()
        self._inner.connection_made(transport)
        early, self._early = self._early, b""
        if early:  # sent right after the handshake, before start_tls returned
            self._inner.data_received(early)

    def _expire(self) -> None:
        self._timer = None
        self._guard.expired += 1
        if self._transport is not None:
            self._transport.abort()

    def _release(self) -> None:
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self._guard.release(self._peer, self)

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        if self._timer is not None:
            seen = self._tail + data[:4096]
            if b"\r\n\r\n" in seen or b"\r\n\r\n" in data:
                self._timer.cancel()
                self._timer = None
                self._guard.started(self)
            else:
                self._tail = seen[-3:]
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._admitted:
            self._early += data
            if len(self._early) > EARLY_LIMIT and self._transport is not None:
                self._transport.abort()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None


class GuardedSite(web.TCPSite):
    """A TCP site whose connections pass a `ConnectionGuard` before aiohttp's handler."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 limits: Limits | None = None, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        """With `ssl_context`, connections speak TLS (the handshake within the header
        deadline)."""
        super().__init__(runner, host, port)
        self.guard = ConnectionGuard(limits or Limits())
        self.tls = ssl_context

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self.guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server, guard, self.tls), self._host, self._port,
            backlog=self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1]
