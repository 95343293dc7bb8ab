"""The chunk mover across the emulated WAN (gfs.testing.wan): latency, loss, a cut, and
what a router on the path sees of an encrypted transfer.

Bounded: a few MiB over a 100 Mbit/s link; skips where network namespaces
cannot be created.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfs import mover
from gfs.client import Client
from gfs.testing.wan import Wan, wan_or_skip

pytestmark = pytest.mark.timeout(120)

SECRET = bytes(range(32))
REPO = Path(__file__).resolve().parent.parent

_FETCH = """
import json, sys
from gfs import mover
from gfs.client import Client
dest, host, port, idsfile, streams, timeout = sys.argv[1:7]
raw = open(idsfile, "rb").read()
ids = [raw[k : k + 16] for k in range(0, len(raw), 16)]
with Client(dest) as dst:
    s = mover.fetch(dst, (host, int(port)), ids, bytes(range(32)), streams=int(streams),
                    timeout=float(timeout), retries=5)
print(json.dumps({"committed": s.committed, "chunks": s.chunks, "retries": s.retries,
                  "missing": len(s.missing)}))
"""


def _stores(tmp_path: Path) -> tuple[list[bytes], Path, dict[str, str]]:
    rnd = random.Random(3)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}").write_bytes(rnd.randbytes(1 << 20))
    with Client.init(tmp_path / "src") as src:
        src.put(str(data), "/d")
        ids = mover.tree_chunks(src, "/d")
    Client.init(tmp_path / "dst").close()
    idsfile = tmp_path / "ids"
    idsfile.write_bytes(b"".join(ids))
    env = {**os.environ, "HUTONG_MOVER_SECRET": SECRET.hex(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return ids, idsfile, env


def _serve(wan: Wan, tmp_path: Path, env: dict[str, str]) -> None:
    wan.popen("src", [sys.executable, "-m", "gfs.cli", "mover", "serve", "--state",
                      str(tmp_path / "src"), "--host", "0.0.0.0", "--port", "7070", "--quiet"],
              env=env, stdout=subprocess.DEVNULL)
    wan.wait_tcp("dst", wan["src"].address, 7070)


def _check(tmp_path: Path, ids: list[bytes]) -> None:
    with Client(tmp_path / "dst") as dst, dst.engine.read() as txn:
        assert all(txn.get_chunk(cid) is not None for cid in ids)
    assert list((tmp_path / "dst").rglob("mover-*.tmp")) == []


def test_fetch_across_lossy_wan_commits_everything(tmp_path: Path) -> None:
    ids, idsfile, env = _stores(tmp_path)
    with wan_or_skip(("dst", "src"), rtt=0.020, rate_bps=100e6, loss=0.01) as wan:
        _serve(wan, tmp_path, env)
        out = wan.run("dst", [sys.executable, "-c", _FETCH, str(tmp_path / "dst"),
                              wan["src"].address, "7070", str(idsfile), "3", "5"], env=env,
                      timeout=90)
    r = json.loads(out.stdout)
    assert r["committed"] == len(set(ids)) and r["missing"] == 0, r
    _check(tmp_path, ids)


def test_fetch_survives_a_cut_link(tmp_path: Path) -> None:
    """The link is pulled mid-transfer for longer than the stream timeout: the
    stalled streams fail, the retry after the link is back moves the rest."""
    ids, idsfile, env = _stores(tmp_path)
    with wan_or_skip(("dst", "src"), rtt=0.020, rate_bps=20e6) as wan:
        _serve(wan, tmp_path, env)
        fetch = wan.popen("dst", [sys.executable, "-c", _FETCH, str(tmp_path / "dst"),
                                  wan["src"].address, "7070", str(idsfile), "2", "1.0"],
                          env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(0.6)
        wan.cut("src")
        time.sleep(2.0)
        wan.restore("src")
        out, _ = fetch.communicate(timeout=60)
    r = json.loads(out)
    assert r["committed"] == len(set(ids)) and r["missing"] == 0, r
    assert r["retries"] >= 1, r
    _check(tmp_path, ids)


_CAPTURE = """
import signal, socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # every frame
sock.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
total, limit = 0, int(sys.argv[2])
with open(sys.argv[1], "wb") as out:
    print("ready", flush=True)
    while not stop and total < limit:
        try:
            frame = sock.recv(1 << 16)
        except (TimeoutError, InterruptedError):
            continue
        out.write(frame)
        total += len(frame)
"""

_FETCH_WITH = """
import sys
from gfs import mover
from gfs.client import Client
dest, host, port, idsfile, cipher = sys.argv[1:6]
raw = open(idsfile, "rb").read()
with Client.init(dest) as dst:
    s = mover.fetch(dst, (host, int(port)), [raw[k : k + 16] for k in range(0, len(raw), 16)],
                    bytes(range(32)), streams=2, cipher=cipher)
print(s.committed, s.cipher)
"""


def test_router_between_sites_sees_no_chunk_bytes(tmp_path: Path) -> None:
    """A third host on the path (the WAN's router) captures every frame of a transfer:
    plaintext streams show the file's bytes, encrypted ones (the default) do not."""
    marker = b"hutong-wan-marker-" + bytes(range(70, 116))  # 64 bytes
    rnd = random.Random(9)
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"".join(rnd.randbytes(16320) + marker for _ in range(64)))
    with Client.init(tmp_path / "src") as src:
        src.put(str(data), "/d")
        ids = mover.tree_chunks(src, "/d")
    idsfile = tmp_path / "ids"
    idsfile.write_bytes(b"".join(ids))
    env = {**os.environ, "HUTONG_MOVER_SECRET": SECRET.hex(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    captures = {}
    with wan_or_skip(("dst", "src"), rtt=0.010, rate_bps=200e6) as wan:
        wan.popen("src", [sys.executable, "-m", "gfs.cli", "mover", "serve", "--state",
                          str(tmp_path / "src"), "--host", "0.0.0.0", "--port", "7070",
                          "--quiet", "--allow-plaintext"], env=env, stdout=subprocess.DEVNULL)
        wan.wait_tcp("dst", wan["src"].address, 7070)
        for cipher in ("none", "auto"):
            path = tmp_path / f"capture-{cipher}"
            cap = subprocess.Popen(["ip", "netns", "exec", wan.router, sys.executable, "-c",
                                    _CAPTURE, str(path), str(64 << 20)],
                                   stdout=subprocess.PIPE, text=True)
            try:
                assert cap.stdout is not None and cap.stdout.readline() == "ready\n"
                out = wan.run("dst", [sys.executable, "-c", _FETCH_WITH,
                                      str(tmp_path / f"dst-{cipher}"), wan["src"].address,
                                      "7070", str(idsfile), cipher], env=env, timeout=90)
            finally:
                cap.terminate()
                cap.wait(10)
            committed, used = out.stdout.split()
            assert int(committed) == len(ids) and (used == "none") == (cipher == "none")
            captures[cipher] = path.read_bytes()
    assert len(captures["auto"]) > (data / "f").stat().st_size  # the transfer was seen
    assert marker in captures["none"]  # the capture does see the chunks' bytes in the clear
    assert marker not in captures["auto"] and marker[:24] not in captures["auto"]
