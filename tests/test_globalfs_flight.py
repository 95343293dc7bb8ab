"""The globalfs bench's bytes-in-flight sampler: `ss -tin` output parsed per peer."""

from __future__ import annotations

from bench._globalfs_flight import CARRIED, Flight, parse

SS = (
    "0      0      10.77.2.2:41643 10.77.3.2:33392\n"
    "\t bbr wscale:7,7 rto:244 rtt:43.1/1.2 mss:1448 pmtu:1500 cwnd:660 bytes_sent:38000000 "
    "bytes_acked:37100000 segs_out:26000 unacked:285 notsent:0\n"
    "0      0      10.77.2.2:41643 10.77.3.2:33402\n"
    "\t bbr wscale:7,7 rto:244 rtt:43.0/1.0 mss:1448 cwnd:10 bytes_acked:1 segs_out:3\n"
)


def test_ss_output_gives_bytes_in_flight_and_acked_per_peer() -> None:
    got = parse(SS)
    assert got == {"10.77.3.2:33392": (285 * 1448, 37_100_000), "10.77.3.2:33402": (0, 1)}


def test_the_summary_names_connections_and_bytes_in_flight() -> None:
    text = Flight(8, 6.5e6, 14e6, 40).describe(4.5e6)
    assert "8 connections" in text and "median 6.5 MB" in text and "BDP 4.5 MB" in text
    assert CARRIED == 1 << 20
