"""Federation connections use BBR where the kernel has it (gfs.federation.tcp), whatever
the host's default: a listener's choice passes to the connections it accepts, and in
network namespaces whose default is reno (loss-based, as cubic) the site daemon's
connections and its clients' run BBR on both ends."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.federation.tcp import CONGESTION, congestion_of, prefer_bbr
from gfs.federation.testing import Federation
from gfs.testing.wan import Link, Wan, wan_or_skip


def _has_bbr() -> bool:
    try:
        avail = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
    except OSError:
        return False
    return CONGESTION in avail.split()


needs_bbr = pytest.mark.skipif(not _has_bbr(), reason="this kernel has no BBR loaded")


@needs_bbr
def test_a_listener_that_prefers_bbr_passes_it_to_accepted_connections() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst:
        if not prefer_bbr(lst):
            pytest.skip("BBR is refused to this user (not in tcp_allowed_congestion_control)")
        with socket.create_connection(lst.getsockname(), timeout=10) as c:
            peer, _ = lst.accept()
            with peer:
                assert congestion_of(peer) == CONGESTION
                assert prefer_bbr(c) and congestion_of(c) == CONGESTION


def test_a_socket_that_is_not_tcp_keeps_its_defaults() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        assert not prefer_bbr(u)
    a, b = socket.socketpair()
    with a, b:
        assert not prefer_bbr(a)


CLIENT = """
import json, subprocess, sys
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
registry, keys, port, site_ss = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
fc = FederationClient(registry, keys=EntityKeys.load(keys))
fc.write_bytes("/bank-a/x.bin", b"x" * 300_000)
conn = fc.site("a1").http._conn()  # the kept connection the write used, still open
conn.request("GET", "/v1/health")
conn.getresponse().read()
ss = ["ss", "-tinH", "state", "established"]
print(json.dumps({  # both ends while the connection is open
    "client": subprocess.run([*ss, "( dport = :" + port + " )"], capture_output=True,
                             text=True, check=True).stdout,
    "site": subprocess.run([*site_ss, *ss, "( sport = :" + port + " )"],
                           capture_output=True, text=True, check=True).stdout}))
"""


@pytest.fixture
def reno_wan() -> Iterator[Wan]:
    with wan_or_skip({"reg": Link(0.001), "site": Link(0.001), "client": Link(0.001)},
                     congestion="reno") as w:
        yield w


@needs_bbr
@pytest.mark.slow
def test_site_and_client_connections_run_bbr_where_the_default_is_reno(
        reno_wan: Wan, tmp_path: Path) -> None:
    assert reno_wan.run("client", ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]
                        ).stdout.strip() == "reno"
    with Federation(tmp_path / "fed", wan=reno_wan, heartbeat=0.5, ttl=5.0) as fed:
        fed.registry(netns="reg")
        url = fed.site("a1", "bank-a", "cn-west", primary=True, netns="site")
        port = url.rsplit(":", 1)[1].strip("/")
        keys = str(fed.sites["a1"]["state"] / "federation")
        site_ss = reno_wan["site"].net_argv([])
        out = reno_wan.run("client", [sys.executable, "-c", CLIENT, fed.registry_url, keys,
                                      port, json.dumps(site_ss)], timeout=120).stdout
        ends = json.loads(out.strip().splitlines()[-1])
        for end in ("client", "site"):
            info = ends[end]
            assert info.strip(), f"no open connection seen at the {end}'s end"
            assert " bbr " in f" {info} " and "reno" not in info, (end, info)
