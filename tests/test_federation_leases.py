"""Open leases and change notices (docs/leases.md): the site's lease table alone, then
real sites on loopback, from the writer's, the holder's and the attacker's side."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import tests.test_federated_namespace as fedns
from gfs.errors import NotFoundError
from gfs.federation.auth import AuthError
from gfs.federation.http import HttpClient
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.notices import ACK_PATH, LEASE_SECONDS, NOTICES_PATH, RENEW_PATH
from gfs.federation.notices_site import LeaseTable
from gfs.federation.site_client import SiteClient
from gfs.federation.testing import Federation, lone_site
from tests.test_mount_helpers import wait_for


# -- the site's lease table --------------------------------------------------------------
def _broken_by(table: LeaseTable, changed: list[str], subtree: bool = False
               ) -> dict[str, list[str]]:
    """What each holder is sent when `changed` changes (acknowledged at once)."""
    sent: dict[str, list[str]] = {}

    async def run() -> None:
        async def ack_all() -> None:
            for h in list(table.holders.values()):
                while not h.outbox.empty():
                    msg = h.outbox.get_nowait()
                    sent[h.id] = msg["break"]
                    assert table.ack(h.id, h.owner, msg["seq"])
        task = asyncio.ensure_future(table.broken(changed, subtree=subtree))
        await asyncio.sleep(0)  # (let it queue its breaks: a yield, not a wait)
        await ack_all()
        await asyncio.wait_for(task, 5)
    asyncio.run(run())
    return sent


def test_a_change_breaks_its_path_the_two_above_and_everything_below_only() -> None:
    table = LeaseTable(ttl=30)
    h = table.join("telco")
    for p in ("/e/a/b/f", "/e/a/b", "/e/a", "/e", "/e/a/b/sibling", "/e/a/b/f/x/y"):
        assert table.promise(h.id, "telco", p) == 30
    sent = _broken_by(table, ["/e/a/b/f"])
    assert sent == {h.id: ["/e/a", "/e/a/b", "/e/a/b/f"]}  # not /e, the sibling, below
    sent = _broken_by(table, ["/e/a/b/f"], subtree=True)  # a directory removed: below too
    assert sent == {h.id: ["/e/a/b/f/x/y"]}
    assert sorted(h.leases) == ["/e", "/e/a/b/sibling"]


def test_a_lease_is_only_for_the_owner_of_the_stream() -> None:
    now = [0.0]
    table = LeaseTable(ttl=30, clock=lambda: now[0])
    h = table.join("telco")
    assert table.promise(h.id, "bank", "/bank/x") is None  # another's stream: no lease
    assert table.promise("not an id", "telco", "/telco/x") is None
    assert not table.ack(h.id, "bank", 1) and table.renew(h.id, "bank") is None
    assert h.leases == {}
    # an id chosen by a client before its stream came: its holder waits for the stream,
    # bound to the principal that first used it
    early = "ab" * 16
    assert table.promise(early, "telco", "/telco/x") == 30
    assert table.promise(early, "bank", "/bank/x") is None
    with pytest.raises(web.HTTPConflict):
        table.join("bank", early)  # nobody else may attach to it
    assert table.join("telco", early).leases.keys() == {"/telco/x"}
    with pytest.raises(web.HTTPConflict):
        table.join("telco", early)  # streaming already
    late = "cd" * 16
    table.promise(late, "telco", "/telco/y")
    now[0] = 31.0  # its stream never came: its leases ended, and it goes
    table.join("telco")
    assert late not in table.holders and early in table.holders


def test_a_writer_waits_for_the_ack_or_at_most_until_the_lease_expires() -> None:
    table = LeaseTable(ttl=0.5)
    h = table.join("telco")
    table.promise(h.id, "telco", "/t/f")

    async def unacknowledged() -> float:
        t0 = time.monotonic()
        await table.broken(["/t/f"])
        return time.monotonic() - t0
    waited = asyncio.run(unacknowledged())
    assert 0.3 <= waited < 2.0, waited  # waited for the lease, and no longer
    assert h.outbox.get_nowait()["break"] == ["/t/f"]
    assert h.outbox.get_nowait() == {"end": True}  # dropped: it may renew nothing
    assert h.id not in table.holders and table.renew(h.id, "telco") is None
    table2 = LeaseTable(ttl=30)
    h2 = table2.join("telco")
    table2.promise(h2.id, "telco", "/t/f")
    t0 = time.monotonic()
    assert _broken_by(table2, ["/t/f"]) == {h2.id: ["/t/f"]}
    assert time.monotonic() - t0 < 5  # acknowledged: not the 30 s of the lease


# -- real sites ----------------------------------------------------------------------------
#: bank (primary bank-1) grants telco (telco-1) /bank/shared read; /bank/secret is not
fed = fedns.fed


def _ns(fed: Federation, entity: str) -> FederatedNamespace:
    return FederatedNamespace(fed.registry_url, keys=fed.keys(entity))


def _requests(fed: Federation, site: str) -> Counter[str]:
    """Requests `site` answered so far, by route (its /metrics), less the count's own
    and the notice streams."""
    out: Counter[str] = Counter()
    for line in fed.metrics(site, timeout=10).decode().splitlines():
        if "_http_requests_total{" in line and 'route="' in line:
            route = line.split('route="', 1)[1].split('"', 1)[0]
            out[route] += int(float(line.rsplit(" ", 1)[1]))
    del out["/metrics"]
    del out[NOTICES_PATH]  # (counted as a stream ends: other tests' streams)
    return out


class RawStream:
    """A notice stream opened by hand, whose breaks are read and never acknowledged."""

    def __init__(self, http: HttpClient) -> None:
        self.conn: HTTPConnection = http.connection(timeout=10)
        self.conn.request("GET", NOTICES_PATH, headers=http.headers("GET", NOTICES_PATH, b""))
        self.resp: HTTPResponse = self.conn.getresponse()
        assert self.resp.status == 200
        self.holder = str(self.next()["holder"])
        self.ended = False

    def next(self) -> dict[str, Any]:
        line = self.resp.readline()
        msg: dict[str, Any] = json.loads(line) if line else {"eof": True}
        return msg

    def breaks(self, seconds: float = 2.5) -> list[list[str]]:
        """The breaks sent so far and in the next `seconds` (heartbeats come every
        second, so no read blocks for long)."""
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            msg = self.next()
            if "break" in msg:
                out.append(msg["break"])
            self.ended = self.ended or "eof" in msg
            if self.ended:
                break
        return out

    def close(self) -> None:
        self.conn.close()


def test_a_reopen_under_a_lease_asks_nothing_and_sees_the_next_closed_write(
        fed: Federation) -> None:
    """Close-to-open with leases: a client holding a lease re-opens an unchanged file
    with no request at all; another client's closed write is acknowledged only after
    the holder's lease is broken, so the holder's very next open reads the new bytes."""
    with fed.client("telco") as writer, _ns(fed, "telco") as reader:
        writer.write_bytes("/telco/leased.txt", b"one")
        assert reader.read_bytes("/telco/leased.txt") == b"one"
        wait_for(lambda: reader.read_bytes("/telco/leased.txt") == b"one" and
                 reader.leased("/telco/leased.txt") is not None, "a lease", timeout=10)
        before = _requests(fed, "telco-1")
        for _ in range(3):
            assert reader.read_bytes("/telco/leased.txt") == b"one"
        assert reader.stat("/telco/leased.txt").size == 3
        assert sum((_requests(fed, "telco-1") - before).values()) == 0
        for i in range(3):
            new = f"version {i}".encode()
            writer.write_bytes("/telco/leased.txt", new)  # closed: answered after the break
            assert reader.read_bytes("/telco/leased.txt") == new
        acks = _requests(fed, "telco-1") - before
        assert acks[ACK_PATH] >= 3, acks  # each write broke the lease, and waited for it


def test_a_holder_that_never_acknowledges_delays_a_writer_by_at_most_the_lease(
        fed: Federation) -> None:
    keys = fed.keys("telco")
    http = fed.http("telco-1", keys=keys)
    stream = RawStream(http)
    try:
        site = SiteClient(http.base_url, keys=keys, tls=http.tls, site="telco-1")
        with fed.client("telco") as writer:
            writer.write_bytes("/telco/stalled.txt", b"x")
            st, ttl = site.stat_leased("/telco/stalled.txt", stream.holder)
            assert ttl == LEASE_SECONDS and st.size == 1
            t0 = time.monotonic()
            writer.write_bytes("/telco/stalled.txt", b"yy")
            waited = time.monotonic() - t0
        assert waited < LEASE_SECONDS + 3, waited  # the lease bounds the wait
        assert waited > LEASE_SECONDS / 2, waited  # it did wait for the holder
        assert stream.breaks() == [["/telco/stalled.txt"]]
        assert stream.ended  # dropped, with every lease it held
    finally:
        stream.close()
        http.close()


def test_no_lease_and_no_notice_about_what_the_caller_cannot_read(fed: Federation) -> None:
    """The attacker's side: telco, granted /bank/shared only, gets no lease on a secret
    path, none with bank's stream, and its breaks name only the paths it leased, never
    the path that changed."""
    tk = fed.keys("telco")
    bk = fed.keys("bank")
    th, bh = fed.http("bank-1", keys=tk), fed.http("bank-1", keys=bk)
    telco_stream, bank_stream = RawStream(th), RawStream(bh)
    try:
        site = SiteClient(th.base_url, keys=tk, tls=th.tls, site="bank-1")
        with pytest.raises((AuthError, NotFoundError)):
            site.stat_leased("/bank/secret/keys.txt", telco_stream.holder)
        with pytest.raises((AuthError, NotFoundError)):
            site.manifest("/bank/secret/keys.txt", lease=telco_stream.holder)
        with pytest.raises((AuthError, NotFoundError)):
            site.list_dir("/bank/secret", lease=telco_stream.holder)
        # bank's stream named by telco: answered (telco may read it), but no lease
        assert site.stat_leased("/bank/shared/q1/data.csv", bank_stream.holder)[1] is None
        with pytest.raises(Exception, match=r"no_such_break|no break"):
            th.call("POST", ACK_PATH, {"holder": bank_stream.holder, "seq": 1})
        assert site.stat_leased("/bank/shared/q1/data.csv", telco_stream.holder)[1]
        with fed.client("bank") as bank:
            bank.write_bytes("/bank/secret/keys.txt", b"still secret")
            bank.mkdir("/bank/secret/new")
            bank.write_bytes("/bank/shared/q1/data.csv", b"a,b\n3,4\n")
        # telco hears of its own leased path only: nothing of the secret writes
        assert telco_stream.breaks() == [["/bank/shared/q1/data.csv"]]
        assert bank_stream.breaks() == []
    finally:
        telco_stream.close()
        bank_stream.close()
        th.close()
        bh.close()


def test_a_dropped_notice_stream_makes_the_next_open_ask(fed: Federation) -> None:
    with fed.client("telco") as writer, _ns(fed, "telco") as reader:
        writer.write_bytes("/telco/dropped.txt", b"before")
        assert reader.read_bytes("/telco/dropped.txt") == b"before"
        wait_for(lambda: reader.read_bytes("/telco/dropped.txt") == b"before" and
                 reader.leased("/telco/dropped.txt") is not None, "a lease", timeout=10)
        (stream,) = reader.leases._streams.values()
        conn = stream._conn
        assert conn is not None and conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)  # the network drops it
        wait_for(lambda: reader.leased("/telco/dropped.txt") is None, "the drop noticed",
                 timeout=10)
        before = _requests(fed, "telco-1")
        assert reader.read_bytes("/telco/dropped.txt") == b"before"
        asked = _requests(fed, "telco-1") - before
        assert asked["/v1/ns/manifest"] == 1, asked  # revalidated, not taken on trust


def test_leases_in_use_are_renewed_past_the_lease_time(fed: Federation) -> None:
    """A reader that keeps using its leases keeps them (one renewal request per stream
    now and then), so an open long after the one that brought the lease (a warm re-read
    after a long cold read) still asks nothing."""
    with fed.client("telco") as writer, _ns(fed, "telco") as reader:
        writer.write_bytes("/telco/renewed.txt", b"kept")
        wait_for(lambda: reader.read_bytes("/telco/renewed.txt") == b"kept" and
                 reader.leased("/telco/renewed.txt") is not None, "a lease", timeout=10)
        before = _requests(fed, "telco-1")
        end = time.monotonic() + 2.5 * LEASE_SECONDS
        while time.monotonic() < end:  # past two lease times, the lease held throughout
            assert reader.leased("/telco/renewed.txt") is not None
            time.sleep(0.2)
        assert reader.read_bytes("/telco/renewed.txt") == b"kept"
        asked = _requests(fed, "telco-1") - before
        assert asked[RENEW_PATH] >= 2, asked
        assert sum(asked.values()) == asked[RENEW_PATH], asked  # nothing else asked


def test_a_renewal_extends_only_the_callers_own_stream() -> None:
    now = [100.0]
    table = LeaseTable(ttl=5, clock=lambda: now[0])
    h = table.join("telco")
    table.promise(h.id, "telco", "/t/f")
    now[0] = 104.0
    assert table.renew(h.id, "bank") is None and h.leases["/t/f"] == 105.0
    assert table.renew(h.id, "telco") == 5 and h.leases["/t/f"] == 109.0
    loop = asyncio.new_event_loop()
    h.acks[1] = loop.create_future()  # a break not acknowledged yet
    assert table.renew(h.id, "telco") is None and h.leases["/t/f"] == 109.0
    loop.close()


mirrored = fedns.mirrored


def test_a_mirror_promises_no_lease(mirrored: Federation) -> None:
    """A mirror's copy changes by replication, which breaks no lease: it must not
    promise one (the primary does)."""
    fedns._replicate(mirrored, {"/lab/d/f.txt": b"one"})
    keys = mirrored.keys("lab")
    for site, leased in (("lab-1", True), ("lab-2", False)):
        http = mirrored.http(site, keys=keys)
        stream = RawStream(http)
        try:
            sc = SiteClient(http.base_url, keys=keys, tls=http.tls, site=site)
            listing = sc.list_dir("/lab/d", mirror=site == "lab-2", lease=stream.holder)
            assert [e.name for e in listing.entries or ()] == ["f.txt"]
            assert (listing.lease is not None) is leased, (site, listing.lease)
        finally:
            stream.close()
            http.close()


def test_a_daemon_on_a_shared_database_promises_no_lease(tmp_path: Path,
                                                          pg_url: str) -> None:
    """Several daemons of one entity on one PostgreSQL namespace: a change through
    another daemon breaks nothing here, so none of them promises a lease."""
    embedded, shared = lone_site(tmp_path / "a"), lone_site(tmp_path / "b", meta=pg_url)
    try:
        assert embedded.grants_leases and not shared.grants_leases
    finally:
        embedded.close()
        shared.close()
