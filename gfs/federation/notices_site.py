"""Open leases, the site's half: who holds a lease on which path, the notice streams
that carry breaks, and the wait for their acknowledgements (docs/leases.md).

All of it runs on the site's event loop. A change of path X breaks the leases on X,
on every path below X (a removed or renamed directory), and on X's parent and
grandparent (whose stat and listing show X); a grant change breaks every lease.
Before the change is acknowledged to its writer, each holder is sent its own leased
paths that broke (never the path that changed) and the writer waits for the holders'
acknowledgements, at most until their leases would have expired anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gfs import paths
from gfs.federation.notices import HEARTBEAT_SECONDS, LEASE_SECONDS, MAX_LEASES

#: Notice streams a site keeps open at once (a new one beyond: 503).
MAX_HOLDERS = 1024
#: What a holder id a client chooses looks like (128 random bits).
HOLDER_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(eq=False)
class Holder:
    """One client's notice stream: its owner, its leases (path -> expiry, monotonic
    clock), the breaks to send, and the acknowledgements awaited by sequence number."""

    id: str
    owner: object
    #: Whether its stream is open (False: made by a lease asked for before the stream
    #: came; its breaks wait in the outbox, and it goes when its leases would end).
    attached: bool = True
    born: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    seq: int = 0
    open: bool = True


class LeaseTable:
    """The leases of one site and the holders of its notice streams."""

    def __init__(self, *, ttl: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.holders: dict[str, Holder] = {}
        self._by_path: dict[str, set[Holder]] = {}

    # -- holders -----------------------------------------------------------------------
    def join(self, owner: object, holder_id: str | None = None) -> Holder:
        """The holder of `owner`'s (a principal's) new stream: `holder_id`, the id the
        client chose (its leases asked for before the stream came are kept), or a new
        one. An id already streaming, or another principal's, is refused (409)."""
        if holder_id is not None:
            h = self.holders.get(holder_id)
            if h is not None:
                if h.owner != owner or h.attached:
                    raise web.HTTPConflict(text=f"notice stream {holder_id[:8]}... is in "
                                           "use; choose another id")
                h.attached = True
                return h
        return self._new(owner, holder_id or secrets.token_hex(16), attached=True)

    def _new(self, owner: object, holder_id: str, *, attached: bool) -> Holder:
        now = self.clock()
        for old in [h for h in self.holders.values()
                    if not h.attached and h.born + self.ttl < now]:
            self.leave(old)  # its stream never came: its leases have ended
        if len(self.holders) >= MAX_HOLDERS:
            raise web.HTTPServiceUnavailable(text=f"more than {MAX_HOLDERS} notice streams "
                                             "are open at this site; retry later")
        h = Holder(holder_id, owner, attached=attached, born=now)
        self.holders[h.id] = h
        return h

    def leave(self, h: Holder) -> None:
        """`h`'s stream is gone: its leases with it, and nobody waits for it."""
        h.open = False
        self.holders.pop(h.id, None)
        for p in h.leases:
            self._unindex(p, h)
        h.leases.clear()
        for fut in h.acks.values():
            if not fut.done():
                fut.set_result(None)
        h.acks.clear()

    def _holder(self, holder_id: str, owner: object) -> Holder | None:
        h = self.holders.get(holder_id)
        return h if h is not None and h.open and h.owner == owner else None

    def _unindex(self, path: str, h: Holder) -> None:
        hs = self._by_path.get(path)
        if hs is not None:
            hs.discard(h)
            if not hs:
                del self._by_path[path]

    # -- leases ------------------------------------------------------------------------
    def promise(self, holder_id: str | None, owner: object, path: str) -> float | None:
        """Record a lease of `owner`'s stream `holder_id` on `path` BEFORE the access
        check and the read it covers (a change after this breaks it); its seconds, or
        None (no such stream of this owner: no lease)."""
        if not holder_id:
            return None
        h = self._holder(holder_id, owner)
        if h is None:
            if holder_id in self.holders or not HOLDER_ID.fullmatch(holder_id):
                return None  # another's, or not an id a client chose
            try:  # a stream about to be opened: its breaks wait for it
                h = self._new(owner, holder_id, attached=False)
            except web.HTTPServiceUnavailable:
                return None
        norm = paths.normalize(path)
        if norm not in h.leases and len(h.leases) >= MAX_LEASES:
            oldest = min(h.leases, key=h.leases.__getitem__)
            del h.leases[oldest]
            self._unindex(oldest, h)
        h.leases[norm] = self.clock() + self.ttl
        self._by_path.setdefault(norm, set()).add(h)
        return self.ttl

    def withdraw(self, holder_id: str | None, owner: object, path: str) -> None:
        """Forget a lease promised for a request that then failed."""
        h = None if not holder_id else self._holder(holder_id, owner)
        if h is not None:
            norm = paths.normalize(path)
            if h.leases.pop(norm, None) is not None:
                self._unindex(norm, h)

    def renew(self, holder_id: str, owner: object) -> float | None:
        """Extend every lease of `owner`'s stream `holder_id` to `ttl` from now; the
        seconds, or None (no such stream of this owner, or breaks it has not
        acknowledged: a client that did not get a break must not extend the lease it
        names beyond the writer's wait)."""
        h = self._holder(holder_id, owner)
        if h is None or h.acks:
            return None
        until = self.clock() + self.ttl
        for p in h.leases:
            h.leases[p] = until
        return self.ttl

    def ack(self, holder_id: str, owner: object, seq: int) -> bool:
        """A holder acknowledged break `seq`; False if no such stream or break."""
        h = self._holder(holder_id, owner)
        fut = None if h is None else h.acks.pop(seq, None)
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(None)
        return True

    def _hit(self, changed: Iterable[str], subtree: bool) -> dict[Holder, list[str]]:
        hit: dict[Holder, set[str]] = {}
        for x in changed:
            norm = paths.normalize(x)
            parent = paths.parent_of(norm)
            for p in {norm, parent, paths.parent_of(parent)}:
                for h in self._by_path.get(p, ()):
                    hit.setdefault(h, set()).add(p)
            if subtree:
                below = norm.rstrip("/") + "/"
                for p, hs in self._by_path.items():
                    if p.startswith(below):
                        for h in hs:
                            hit.setdefault(h, set()).add(p)
        return {h: sorted(ps) for h, ps in hit.items()}

    async def broken(self, changed: Iterable[str] = (), *, subtree: bool = False,
                     everything: bool = False) -> None:
        """Break the leases a change of `changed` touches (`everything`: all of them),
        and wait until their holders acknowledge or the leases expire."""
        if everything:
            hit = {h: sorted(h.leases) for h in self.holders.values() if h.leases}
        else:
            hit = self._hit(changed, subtree)
        now = self.clock()
        waits: list[asyncio.Future[None]] = []
        deadline = now
        for h, ps in hit.items():
            live = [p for p in ps if h.leases.get(p, 0.0) > now]
            if live:
                deadline = max(deadline, *(h.leases[p] for p in live))
            for p in ps:
                h.leases.pop(p, None)
                self._unindex(p, h)
            if not live or not h.open:
                continue
            h.seq += 1
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            h.acks[h.seq] = fut
            waits.append(fut)
            h.outbox.put_nowait({"seq": h.seq, "break": live})
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), deadline - now)
            for h in list(hit):  # a holder that did not acknowledge in time goes, with
                if h.acks and h.open:  # every lease it holds (it may not renew them)
                    h.outbox.put_nowait({"end": True})
                    self.leave(h)

    def close(self) -> None:
        """Drop every holder (the site is stopping)."""
        for h in list(self.holders.values()):
            h.outbox.put_nowait({"end": True})
            self.leave(h)


async def stream(request: web.Request, table: LeaseTable, owner: object) -> web.StreamResponse:
    """Serve one notice stream: a hello naming the holder, then breaks and heartbeats,
    one JSON object a line, until the client goes."""
    chosen = request.query.get("holder")
    if chosen is not None and not HOLDER_ID.fullmatch(chosen):
        raise web.HTTPBadRequest(text="query parameter 'holder' must be 32 lower-case hex "
                                 "digits (a random id the client chose)")
    h = table.join(owner, chosen)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                       "Cache-Control": "no-store"})
    try:
        await resp.prepare(request)
        await resp.write(_line({"holder": h.id, "ttl": table.ttl,
                                "heartbeat": HEARTBEAT_SECONDS}))
        while h.open:
            try:
                msg = await asyncio.wait_for(h.outbox.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                msg = {}
            if msg.get("end"):
                break
            await resp.write(_line(msg))
    except ConnectionError:
        pass
    finally:
        table.leave(h)
    return resp


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


__all__ = ["MAX_HOLDERS", "Holder", "LeaseTable", "stream"]
