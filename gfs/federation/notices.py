"""Open leases, the client's half: one notice stream per site, and the leases it keeps
(protocol: docs/leases.md).

    leases = Leases()
    holder, ticket = leases.ticket(site.http)       # before sending a stat or manifest
    st, ttl = site.stat_leased(path, holder)
    ticket.grant(path, st, ttl)                     # kept only if no break came between
    leases.find(path)                               # the lease, while it holds

A lease is the site's promise to tell this client (a *break* on the stream) before it
acknowledges a change of the leased path, so while it holds, the path's stat (and a
directory's listing) is known without asking. It holds until `ttl` seconds after the
request was *sent* (minus LEASE_MARGIN, for clock rates), and only while the stream that
carries its breaks is connected: a stream that drops, or is silent for longer than
STREAM_SILENCE, voids every lease it carried (a restarted site forgets its promises).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection

from gfs.federation.http import HttpClient
from gfs.namespace_api import Stat

log = logging.getLogger("gfs.federation.notices")

#: Seconds a site promises a lease for (its answer says so; a writer waits at most this
#: long for a client that does not acknowledge a break).
LEASE_SECONDS = 5.0
#: Seconds between the site's heartbeats on a quiet stream.
HEARTBEAT_SECONDS = 1.0
#: Seconds of silence after which a client holds its stream dropped.
STREAM_SILENCE = 3.0
#: Seconds taken off every lease on the client (clock rates, the answer's own delay).
LEASE_MARGIN = 0.5
#: Leases a client keeps per site (least recently granted out first).
MAX_LEASES = 4096
#: Seconds before a dropped stream is opened again.
RECONNECT_SECONDS = 1.0
#: Seconds after the last use of a lease during which a stream's leases are renewed.
RENEW_WHILE_USED = 60.0
#: Path of the notice stream, of its acknowledgements, and of lease renewal.
NOTICES_PATH = "/v1/ns/notices"
ACK_PATH = "/v1/ns/notices/ack"
RENEW_PATH = "/v1/ns/notices/renew"


@dataclass
class Lease:
    """What a lease promises: `stat` of the path (and a directory's `entries`, by name,
    when it was listed) until `until` (monotonic clock)."""

    stat: Stat
    until: float
    entries: dict[str, Stat] | None = None


@dataclass(frozen=True)
class Ticket:
    """Taken before a request that may bring a lease: the stream, its connection and
    break count then, and when the request was sent."""

    stream: NoticeStream
    generation: int
    breaks: int
    sent: float

    def grant(self, path: str, stat: Stat, ttl: float | None,
              entries: list[Stat] | None = None, *, unchanged: bool = False) -> None:
        """`NoticeStream.grant` with this ticket."""
        self.stream.grant(self, path, stat, ttl, entries, unchanged=unchanged)


@dataclass
class _State:
    #: The stream's holder id, chosen here (a new one at each connection), so that the
    #: first requests ask for leases while the stream is still being opened.
    holder: str = field(default_factory=lambda: secrets.token_hex(16))
    up: bool = False
    generation: int = 0
    breaks: int = 0
    heard: float = 0.0
    used: float = float("-inf")
    leases: OrderedDict[str, Lease] = field(default_factory=OrderedDict)


class NoticeStream:
    """The notice stream to one site (a thread reading it, reconnecting when it drops)
    and the leases it carries."""

    def __init__(self, http: HttpClient, *, clock: Callable[[], float] = time.monotonic,
                 on_break: Callable[[list[str]], None] | None = None) -> None:
        self.http = http
        self.clock = clock
        self.on_break = on_break
        self._lock = threading.Lock()
        self._s = _State()
        self._stop = threading.Event()
        self._conn: HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="hutong-notices", daemon=True)
        self._thread.start()
        self._renewer = threading.Thread(target=self._renew_loop, name="hutong-renew",
                                         daemon=True)
        self._renewer.start()
        #: acknowledgements are sent from here, so that reading never waits for one
        #: (a stream read late under load would be taken for a silent one)
        self._acks = ThreadPoolExecutor(1, thread_name_prefix="hutong-ack")

    def close(self) -> None:
        """Stop reading (every lease is void)."""
        self._stop.set()
        self._acks.shutdown(wait=False, cancel_futures=True)
        self._dropped()
        conn = self._conn
        if conn is not None:
            conn.close()

    # -- the stream --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_stream()
            except Exception as e:  # any failure: dropped, every lease void
                log.debug("notice stream of %s: %s", self.http.base_url, e)
            self._dropped()
            self._stop.wait(RECONNECT_SECONDS)

    def _read_stream(self) -> None:
        conn = self.http.connection(timeout=STREAM_SILENCE)
        self._conn = conn
        with self._lock:
            target = f"{NOTICES_PATH}?holder={self._s.holder}"
        try:
            headers = self.http.headers("GET", target, b"")
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise ConnectionError(f"notice stream refused: {resp.status} "
                                      f"{resp.read(300)!r}")
            while not self._stop.is_set():
                line = resp.readline(1 << 20)
                if not line:
                    raise ConnectionError("notice stream closed by the site")
                self._message(json.loads(line))
        finally:
            conn.close()
            self._conn = None

    def _message(self, msg: dict[str, object]) -> None:
        now = self.clock()
        if "holder" in msg:
            with self._lock:
                if msg["holder"] != self._s.holder:
                    raise ConnectionError("the site answered for another notice stream")
                self._s.up = True
                self._s.heard = now
            return
        broken = msg.get("break")
        if isinstance(broken, list):
            with self._lock:
                self._s.breaks += 1
                for p in broken:
                    self._s.leases.pop(str(p), None)
                holder = self._s.holder
                self._s.heard = now
            if self.on_break is not None:
                self.on_break([str(p) for p in broken])
            with contextlib.suppress(RuntimeError):  # (closed meanwhile)
                self._acks.submit(self._ack, holder, msg.get("seq"))
            return
        with self._lock:  # a heartbeat
            self._s.heard = now

    def _ack(self, holder: str, seq: object) -> None:
        try:
            self.http.call("POST", ACK_PATH, {"holder": holder, "seq": seq})
        except Exception as e:  # the writer waits for the lease to end instead
            log.debug("acknowledgement to %s: %s", self.http.base_url, e)

    def _renew_loop(self) -> None:
        """Renew every lease of the stream (one request: `POST /v1/ns/notices/renew`)
        a third of the lease time before it ends, while leases were used lately (a
        reader that keeps re-opening files never waits for a renewal)."""
        while not self._stop.wait(LEASE_SECONDS / 3):
            with self._lock:
                holder, gen = self._s.holder, self._s.generation
                wanted = bool(self._s.leases) and self.clock() - self._s.used < RENEW_WHILE_USED
            if not wanted:
                continue
            sent = self.clock()
            try:
                ttl = float(self.http.call("POST", RENEW_PATH, {"holder": holder})["ttl"])
            except Exception as e:  # the leases end on their own
                log.debug("lease renewal at %s: %s", self.http.base_url, e)
                continue
            with self._lock:
                if self._s.generation != gen or ttl <= LEASE_MARGIN:
                    continue
                until = sent + min(ttl, LEASE_SECONDS * 12) - LEASE_MARGIN
                for lease in self._s.leases.values():
                    lease.until = max(lease.until, until)

    def _dropped(self) -> None:
        with self._lock:
            had = list(self._s.leases)
            self._s = _State(generation=self._s.generation + 1)
        if had and self.on_break is not None:
            self.on_break(had)

    # -- leases ------------------------------------------------------------------------
    def _live(self) -> bool:
        return self._s.up and self.clock() - self._s.heard < STREAM_SILENCE

    def ticket(self) -> tuple[str | None, Ticket]:
        """(the holder id to name in a request; the ticket `grant` takes with the
        answer). A lease granted before the stream is up is used once it is."""
        with self._lock:
            return self._s.holder, Ticket(self, self._s.generation, self._s.breaks,
                                          self.clock())

    def grant(self, ticket: Ticket, path: str, stat: Stat, ttl: float | None,
              entries: list[Stat] | None = None, *, unchanged: bool = False) -> None:
        """Keep the lease an answer brought (`ttl` seconds, None: none), unless a break
        came or the stream dropped since the ticket was taken. An `unchanged` listing
        keeps the entries of the lease it renews, if that was of the same version."""
        if ttl is None or ttl <= LEASE_MARGIN:
            return
        with self._lock:
            s = self._s
            if (s.generation, s.breaks) != (ticket.generation, ticket.breaks):
                return
            names = None if entries is None else {e.name: e for e in entries}
            if unchanged:
                old = s.leases.get(path)
                if old is not None and old.stat.version == stat.version:
                    names = old.entries
            s.leases[path] = Lease(stat, ticket.sent + ttl - LEASE_MARGIN, names)
            s.used = self.clock()
            s.leases.move_to_end(path)
            while len(s.leases) > MAX_LEASES:
                s.leases.popitem(last=False)

    def lease(self, path: str) -> Lease | None:
        """The lease on `path` while it holds."""
        with self._lock:
            if not self._live():
                return None
            got = self._s.leases.get(path)
            now = self.clock()
            if got is None or got.until <= now:
                return None
            self._s.used = now
            return got


class Leases:
    """The notice streams of one client, one per site (opened at first use)."""

    def __init__(self, *, on_break: Callable[[list[str]], None] | None = None) -> None:
        self.on_break = on_break
        self._lock = threading.Lock()
        self._streams: dict[str, NoticeStream] = {}
        self._closed = False

    def ticket(self, http: HttpClient) -> tuple[str | None, Ticket | None]:
        """Before a request to the site `http` reaches: the holder id to name in it
        (None while its stream is not up: it is opened now) and the ticket to grant the
        answer's lease with (None once closed)."""
        with self._lock:
            if self._closed:
                return None, None
            s = self._streams.get(http.base_url)
            if s is None:
                s = self._streams[http.base_url] = NoticeStream(http, on_break=self._broken)
        return s.ticket()

    def _broken(self, paths: list[str]) -> None:
        if self.on_break is not None:
            self.on_break(paths)

    def find(self, path: str) -> Lease | None:
        """The lease on `path` from any site, while it holds."""
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            got = s.lease(path)
            if got is not None:
                return got
        return None

    def close(self) -> None:
        """Close every stream."""
        with self._lock:
            self._closed = True
            streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            s.close()


__all__ = ["ACK_PATH", "LEASE_SECONDS", "NOTICES_PATH", "Lease", "Leases", "NoticeStream",
           "Ticket"]
