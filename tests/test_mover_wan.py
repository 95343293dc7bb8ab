"""The chunk mover across the emulated WAN (gfs.testing.wan): latency, loss, a cut.

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
