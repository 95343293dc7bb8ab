"""The globalfs bench's round-trip count: frames parsed from the capture, flights on
each connection, and concurrent flights counted as one sequential round trip."""

from __future__ import annotations

import struct

from bench._globalfs_trips import Packet, count, parse_frames

ME, PEER = "10.0.0.3", "10.0.0.2"
RTT = 0.040


def _frame(at: float, src: str, dst: str, sport: int, dport: int, flags: int,
           payload: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + payload, 0, 0, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 0, 0, 0)
    frame = b"\0" * 12 + b"\x08\x00" + ip + tcp  # headers only, as the capture keeps them
    return struct.pack("<dH", at, len(frame)) + frame


def _conn(t0: float, port: int, requests: int) -> list[bytes]:
    """A new TLS connection from ME: TCP and TLS handshakes, then `requests` requests."""
    out = [_frame(t0, ME, PEER, port, 443, 0x02, 0),             # SYN
           _frame(t0 + RTT, PEER, ME, 443, port, 0x12, 0),       # SYN-ACK
           _frame(t0 + RTT, ME, PEER, port, 443, 0x18, 300),     # ClientHello
           _frame(t0 + 2 * RTT, PEER, ME, 443, port, 0x18, 2000)]  # ServerHello..Finished
    t = t0 + 2 * RTT
    for _ in range(requests):
        out += [_frame(t, ME, PEER, port, 443, 0x10, 0),          # a bare ACK: no flight
                _frame(t, ME, PEER, port, 443, 0x18, 200),        # the request
                _frame(t + 0.001, ME, PEER, port, 443, 0x18, 200),  # its second segment
                _frame(t + RTT, PEER, ME, 443, port, 0x18, 5000)]
        t += RTT
    return out


def test_a_new_connection_costs_two_round_trips_before_its_request() -> None:
    packets = list(parse_frames(b"".join(_conn(0.0, 40000, 1)), ME))
    assert all(isinstance(p, Packet) for p in packets) and len(packets) == 8
    trips = count(packets, RTT)
    assert (trips.round_trips, trips.flights, trips.connections) == (3, 3, 1)
    assert trips.to(PEER) == 3 and trips.to("10.0.0.1") == 0


def test_requests_on_a_kept_connection_are_one_round_trip_each() -> None:
    frames = _conn(0.0, 40000, 3)[4:]  # the connection existed before the capture
    trips = count(parse_frames(b"".join(frames), ME), RTT)
    assert (trips.round_trips, trips.flights, trips.connections) == (3, 3, 0)


def test_concurrent_flights_are_one_sequential_round_trip() -> None:
    frames = _conn(0.0, 40000, 1)[4:] + _conn(0.0, 40001, 1)[4:] + _conn(0.005, 40002, 1)[4:]
    trips = count(parse_frames(b"".join(frames), ME), RTT)
    assert (trips.round_trips, trips.flights) == (1, 3)


def test_frames_of_other_hosts_and_protocols_are_left_out() -> None:
    other = _frame(0.0, "10.0.0.9", PEER, 1, 443, 0x18, 100)
    udp = bytearray(_frame(0.0, ME, PEER, 1, 443, 0x18, 100))
    udp[10 + 14 + 9] = 17
    assert list(parse_frames(other + bytes(udp) + b"\x01", ME)) == []


def test_round_trips_to_each_peer_are_counted_apart() -> None:
    """A background renewal to another host between two requests to the site is a
    round trip of the link, not of the site."""
    other = "10.0.0.1"
    frames = _conn(0.0, 40000, 2)[4:]
    frames += [_frame(0.5 * RTT, ME, other, 40010, 443, 0x18, 100),
               _frame(1.5 * RTT, other, ME, 443, 40010, 0x18, 100)]
    trips = count(parse_frames(b"".join(frames), ME), RTT)
    assert trips.round_trips == 3 and trips.to(PEER) == 2 and trips.to(other) == 1
