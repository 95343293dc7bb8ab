"""Round trips a client host makes on its link during one operation, counted from
the packets.

The issue's target ("within 3 round trips of the link for the whole listing")
is about the link, not the local work of FUSE and `ls`. A capture in the client's
network namespace (an AF_PACKET socket; headers only) sees every TCP packet the
client sends and receives while the operation runs. On each connection, a
*flight* starts when the client sends (data, or a SYN) after the other end last
spoke, or first: a request, a TLS handshake message or a TCP handshake, each
waiting one round trip for its answer. Flights that start within half an RTT of
each other (on any connection) travel together: they are one *sequential* round
trip. The figure is the number of such waves, in all (background renewals of
what the client keeps included: the registry's records, what it may see) and
to each peer host alone (the site holding the directory: what the operation
itself waited on).
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gfs.testing.wan import Wan

_T = TypeVar("_T")

#: Bytes of each frame kept: Ethernet, IPv4 and TCP headers with options.
SNAP = 160
#: Frames kept at most per capture (the listing phases send a few hundred).
MAX_FRAMES = 200_000

_CAPTURE = """
import signal, socket, struct, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # every frame, both ways
sock.settimeout(0.1)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
snap, limit = int(sys.argv[2]), int(sys.argv[3])
n = 0
with open(sys.argv[1], "wb") as out:
    print("ready", flush=True)
    while not stop and n < limit:
        try:
            frame = sock.recv(snap)
        except (TimeoutError, InterruptedError):
            continue
        out.write(struct.pack("<dH", time.monotonic(), len(frame)) + frame)
        n += 1
"""


@dataclass(frozen=True)
class Packet:
    """One TCP packet seen at the client: when, its connection and what it carried."""

    at: float
    outgoing: bool
    conn: tuple[str, int, str, int]
    """(client address, client port, peer address, peer port)."""
    syn: bool
    payload: int


@dataclass(frozen=True)
class Trips:
    """What one operation sent over the client's link."""

    round_trips: int
    """Sequential round trips: waves of flights (module docstring)."""
    flights: int
    """Flights in all (requests, TLS and TCP handshakes; concurrent ones each)."""
    connections: int
    """TCP connections the client opened."""
    by_peer: dict[str, int] = field(default_factory=dict)
    """Sequential round trips to each peer host alone."""

    def to(self, peer: str) -> int:
        """Sequential round trips to host `peer`."""
        return self.by_peer.get(peer, 0)

    def describe(self) -> str:
        return f"{self.flights} flights, {self.connections} new connection(s)"


def parse_frames(data: bytes, me: str) -> Iterator[Packet]:
    """The TCP packets of a capture file (`_CAPTURE`'s records) to or from address `me`."""
    off = 0
    while off + 10 <= len(data):
        at, n = struct.unpack_from("<dH", data, off)
        frame = data[off + 10:off + 10 + n]
        off += 10 + n
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[0] >> 4 != 4 or ip[9] != 6 or len(ip) < ihl + 14:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:]
        sport, dport = struct.unpack_from("!HH", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13]
        payload = total - ihl - doff
        if src == me and dst != me:
            yield Packet(at, True, (src, sport, dst, dport), bool(flags & 0x02), payload)
        elif dst == me and src != me:
            yield Packet(at, False, (dst, dport, src, sport), bool(flags & 0x02), payload)


def count(packets: Iterable[Packet], rtt: float) -> Trips:
    """Flights and sequential round trips of `packets` (module docstring), in all and
    to each peer host."""
    spoke: dict[tuple[str, int, str, int], bool] = {}  # conn -> the client spoke last
    starts: list[tuple[float, str]] = []
    conns = 0
    for p in sorted(packets, key=lambda p: p.at):
        if not (p.syn or p.payload > 0):
            continue  # a bare ACK: nobody waits for it
        if p.outgoing:
            if p.syn:
                conns += 1
            if not spoke.get(p.conn, False):
                starts.append((p.at, p.conn[2]))
            spoke[p.conn] = True
        else:
            spoke[p.conn] = False
    peers = sorted({peer for _, peer in starts})
    return Trips(_waves([t for t, _ in starts], rtt), len(starts), conns,
                 {peer: _waves([t for t, h in starts if h == peer], rtt) for peer in peers})


def _waves(starts: list[float], rtt: float) -> int:
    """Flights starting within half an RTT of a wave's first travel with it."""
    waves = 0
    wave_start = float("-inf")
    for t in starts:
        if t - wave_start > rtt / 2:
            waves += 1
            wave_start = t
    return waves


class TripCounter:
    """Counts the round trips host `client` of `wan` makes on its link (RTT `rtt`)."""

    def __init__(self, wan: Wan, client: str, rtt: float) -> None:
        self.wan, self.client, self.rtt = wan, client, rtt

    def around(self, op: Callable[[], _T]) -> tuple[_T, Trips]:
        """Run `op` while capturing the client's packets; its result and its trips."""
        with tempfile.TemporaryDirectory(prefix="hutong-trips-") as d:
            path = Path(d) / "capture"
            cap = subprocess.Popen(self.wan[self.client].argv(
                [sys.executable, "-c", _CAPTURE, str(path), str(SNAP), str(MAX_FRAMES)]),
                stdout=subprocess.PIPE, text=True)
            try:
                assert cap.stdout is not None
                if cap.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the packet capture on {self.client} did not start")
                result = op()
            finally:
                cap.send_signal(signal.SIGTERM)
                try:
                    cap.wait(30)
                except subprocess.TimeoutExpired:
                    cap.kill()
                    cap.wait(10)
            packets = list(parse_frames(path.read_bytes(), self.wan[self.client].address))
        return result, count(packets, self.rtt)


__all__ = ["MAX_FRAMES", "Packet", "TripCounter", "Trips", "count", "parse_frames"]
