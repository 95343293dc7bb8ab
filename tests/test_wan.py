"""The emulated WAN fixture (gfs.testing.wan): latency, loss, rate, teardown.

Each test is bounded (a few seconds of probes or iperf3) and skips, naming
the reason, where network namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from gfs.testing import wan as wanmod
from gfs.testing.wan import Link, emulated_wan, measure_udp, wan_or_skip


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.split()}


def test_rtt_matches_configured_delays() -> None:
    links = {"a": Link(delay=0.005, rate_bps=None), "b": Link(delay=0.010, rate_bps=None),
             "c": Link(delay=0.0, rate_bps=None)}
    with wan_or_skip(links) as wan:
        for src, dst in (("a", "b"), ("a", "c")):
            r = measure_udp(wan, src, dst, count=20, interval=0.01)
            want = wan.rtt(src, dst)
            assert r["received"] >= 18, r
            assert min(r["rtts"]) >= 0.95 * want  # never early
            assert statistics.median(r["rtts"]) < want * 1.5 + 0.005, (want, r["rtts"])
        assert wan.rtt("a", "b") == pytest.approx(0.030)
    assert wan.counters["in"] > 0 and wan.counters["dropped_full"] == 0


def test_loss_matches_configured() -> None:
    with wan_or_skip(("a", "b"), rtt=0.002, rate_bps=None, loss=0.05) as wan:
        r = measure_udp(wan, "a", "b", count=1000, interval=0.002)
    # Each probe crosses the lossy hop twice: 1 - 0.95**2 = 9.75% lost round trip.
    assert 0.06 <= r["loss"] <= 0.14, r["loss"]


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (Debian iperf3)")
def test_rate_matches_configured() -> None:
    rate = 100e6
    with wan_or_skip(("a", "b"), rtt=0.010, rate_bps=rate) as wan:
        wan.popen("b", ["iperf3", "-s"], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
        wan.wait_tcp("a", wan["b"].address, 5201)
        out = wan.run("a", ["iperf3", "-c", wan["b"].address, "-t", "3", "-J", "-R"],
                      timeout=30)
    got = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
    assert 0.6 * rate <= got <= 1.05 * rate, got


def test_teardown_on_error_removes_namespaces_and_processes() -> None:
    before = _netns()
    proc = None
    with pytest.raises(RuntimeError, match="boom"), wan_or_skip(("a", "b")) as wan:
        proc = wan.popen("a", ["sleep", "60"])
        assert {s.netns for s in wan.sites.values()} <= _netns()
        raise RuntimeError("boom")
    assert proc is not None and proc.poll() is not None
    assert _netns() - before == set()


def test_stale_namespaces_of_dead_processes_are_swept() -> None:
    if wanmod.unavailable_reason():
        pytest.skip(wanmod.unavailable_reason() or "")
    stale = f"{wanmod.PREFIX}999999999-0-r"  # no such pid
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in wanmod.sweep_stale()
        assert stale not in _netns()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)


def test_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wanmod, "unavailable_reason", lambda: "no netns here")
    with pytest.raises(wanmod.WanUnavailableError, match="no netns here"), emulated_wan():
        pass
    with pytest.raises(pytest.skip.Exception, match="no netns here"), wan_or_skip():
        pass


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="loss"):
        Link(loss=1.5)
    with pytest.raises(ValueError, match="2 to 200 sites"), emulated_wan(("a",)):
        pass


def test_cut_and_restore_a_site() -> None:
    with wan_or_skip(("a", "b"), rtt=0.002, rate_bps=None) as wan:
        wan.cut("b")
        assert measure_udp(wan, "a", "b", count=5, interval=0.01)["loss"] == 1.0
        wan.restore("b")
        assert measure_udp(wan, "a", "b", count=5, interval=0.01)["loss"] == 0.0


_SINK = """
import socket, sys, time
want, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 16 << 20)
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind(("0.0.0.0", 40009))
s.settimeout(0.2)
print("ready", flush=True)
got, end = 0, time.monotonic() + seconds
while got < want and time.monotonic() < end:
    try:
        s.recv(2048)
        got += 1
    except TimeoutError:
        pass
print(got, flush=True)
"""

_BURST = """
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(bytes(1200), (host, 40009))
    if i % 100 == 99:
        time.sleep(0.002)  # the veth's backlog is not what this test measures
"""


def _delay_line_pid(wan: wanmod.Wan) -> int:
    """The delay line's process: the one serving the TUN device in the router namespace."""
    router = os.stat(f"/run/netns/{wan.router}").st_ino
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"delay0" in (p / "cmdline").read_bytes() \
                    and (p / "ns" / "net").stat().st_ino == router:
                return int(p.name)
        except OSError:
            continue
    raise AssertionError("no delay line process in the router namespace")


def test_a_burst_waits_in_the_device_queue_while_the_delay_line_is_off_the_cpu() -> None:
    """On a loaded machine another process may keep the delay line off the CPU for a
    few ms; what a link sends meanwhile waits in the TUN device's queue (the link's
    configured loss only, not 15% dropped there as with the kernel's 500 packets)."""
    count = 2000
    with wan_or_skip(("a", "b"), rtt=0.002, rate_bps=None) as wan:
        sink = wan.popen("b", [sys.executable, "-c", _SINK, str(count), "10"],
                         stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        pid = _delay_line_pid(wan)
        os.kill(pid, signal.SIGSTOP)
        try:
            wan.run("a", [sys.executable, "-c", _BURST, wan["b"].address, str(count)])
        finally:
            os.kill(pid, signal.SIGCONT)
        got = int(sink.stdout.readline())
    assert got == count, f"{count - got} of {count} datagrams dropped"
