"""What a third host on the path sees (issue 13): the registry and two sites of
bank-a in their own network namespaces, a user's host in a fourth, and tcpdump on
the router between them capturing every packet while the user writes a file over
TLS, replication copies it to the other site through the mover, and a holder of a
prefix token reads it back. No 32-byte window of the file and no part of the token
may appear in the capture. A control sent in the clear through the same router
shows that the capture and the search would have found them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.federation.testing import Federation
from gfs.testing.wan import Link, Wan, wan_or_skip

pytestmark = pytest.mark.timeout(300)

WINDOW = 32
CLIENT = """
import sys
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
from gfs.federation.tls import Trust
registry, keys, src = sys.argv[1], sys.argv[2], sys.argv[3]
fc = FederationClient(registry, keys=EntityKeys.load(keys), near="a1")
fc.mkdir("/bank-a/ds", parents=True, exist_ok=True)
fc.write_bytes("/bank-a/ds/x.bin", open(src, "rb").read())
fc.rule_add("/bank-a/ds/**", 2, "entity=bank-a")
[rule] = fc.reconcile("bank-a")
assert rule["state"] == "ok" and sorted(rule["sites"]) == ["a1", "a2"], rule
token = fc.keys.mint_token("eve-watched", "read", "/bank-a/ds", 600)
open(sys.argv[4], "w").write(token)
user = FederationClient(registry, token=token, near="a2",
                        tls=Trust(registry, open(sys.argv[5], "rb").read()))
assert user.read_bytes("/bank-a/ds/x.bin") == open(src, "rb").read()
print("ok")
"""
CONTROL = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(open(sys.argv[3], "rb").read())
s.close()
"""
SINK = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while conn.recv(1 << 16):
    pass
"""


@pytest.fixture
def wan() -> Iterator[Wan]:
    links = {n: Link(0.0005) for n in ("reg", "west", "east", "user")}
    with wan_or_skip(links) as w:
        yield w


class Capture:
    """tcpdump on every interface of the router namespace, whole packets, to a file."""

    def __init__(self, wan: Wan, path: Path) -> None:
        if not _has("tcpdump"):
            pytest.skip("tcpdump is not installed (Debian package tcpdump; make setup)")
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", wan.router, "tcpdump", "-i", "any", "-s", "0", "-U",
             "-w", str(path)], stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        lines = [self.proc.stderr.readline() for _ in range(1)]
        while "listening" not in lines[-1] and lines[-1] and len(lines) < 10:
            lines.append(self.proc.stderr.readline())  # "listening on any" once it captures
        if "listening" not in lines[-1]:
            self.proc.kill()  # never left running, whatever it said
            self.proc.wait(30)
            raise AssertionError(f"tcpdump did not start capturing: {lines}")

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return self.path.read_bytes()


def _has(tool: str) -> bool:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is not None


def _windows(data: bytes) -> list[bytes]:
    """Every 4 KiB, one WINDOW-byte slice of `data` (random bytes: no false match)."""
    return [data[i:i + WINDOW] for i in range(0, len(data) - WINDOW, 4096)]


def test_a_third_host_on_the_path_sees_no_file_byte_and_no_token(
        wan: Wan, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    cap = Capture(wan, tmp_path / "wire.pcap")
    try:
        with Federation(tmp_path / "fed", wan=wan, heartbeat=0.5, ttl=5.0) as fed:
            fed.registry(netns="reg")
            fed.site("a1", "bank-a", "cn-west", primary=True, netns="west")
            fed.site("a2", "bank-a", "cn-east", netns="east")
            keys = str(fed.sites["a1"]["state"] / "federation")
            token_file = tmp_path / "token"
            r = wan.run("user", [sys.executable, "-c", CLIENT, fed.registry_url, keys,
                                 str(src), str(token_file), str(fed.registry_ca_file)],
                        timeout=180, check=False)
            assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
        # the control: the same file's first 64 KiB in the clear, user -> west
        control = tmp_path / "control.bin"
        control.write_bytes(data[:65536])
        sink = wan.popen("west", [sys.executable, "-c", SINK, wan["west"].address],
                         stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        port = sink.stdout.readline().strip()
        wan.run("user", [sys.executable, "-c", CONTROL, wan["west"].address, port,
                         str(control)], timeout=60)
        sink.wait(30)
        time.sleep(0.5)  # tcpdump -U writes each packet as it comes; let the last land
    finally:
        wire = cap.stop()
    token = token_file.read_text().strip()
    windows = _windows(data)
    control_windows = _windows(data[:65536])
    seen_control = sum(w in wire for w in control_windows)
    # the capture holds the whole exchange, and would have shown plaintext
    assert len(wire) > 2 * len(data)
    assert seen_control >= len(control_windows) // 2, seen_control
    leaked = [i for i, w in enumerate(windows[len(control_windows):]) if w in wire]
    assert leaked == [], f"{len(leaked)} windows of the file are on the wire in the clear"
    pieces = [token[i:i + 24] for i in range(0, len(token) - 24, 12)]
    assert not [p for p in pieces if p.encode() in wire], "the token is on the wire"
