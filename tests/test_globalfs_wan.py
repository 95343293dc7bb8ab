"""The global namespace across hosts, over the emulated WAN (40 ms RTT, 0.1% loss, 1 Gbit/s).

Host A runs the registry and bank-a's primary; host B telco-b's primary and
bank-a's second site (its mirror, kept by a replication rule); host C is the
client: `hutong mount --profile` and gfs:// in processes there. The FUSE mount
runs in C's network namespace only, so this process reads it. Slow: builds
namespaces, a delay line and five server processes per test.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import _federated
from bench._measure import hutong_cmd, mounted
from gfs.federation.testing import Federation
from gfs.testing.wan import Wan, wan_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OWNER = """
import json, sys, time
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
registry, keys, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with FederationClient(registry, keys=EntityKeys.load(keys), timeout=120) as fc:
    for d in spec.get("dirs", []):
        fc.mkdir(d, parents=True, exist_ok=True)
    for path, src in spec.get("files", {}).items():
        fc.write_bytes(path, open(src, "rb").read())
    for pattern, to in spec.get("grants", []):
        fc.grant(pattern, to, "read")
    for pattern, copies, where in spec.get("rules", []):
        fc.rule_add(pattern, copies, where)
    out = fc.reconcile(spec["entity"]) if spec.get("rules") else []
    end = time.monotonic() + 60
    while spec.get("ls"):  # the primary may be starting again: poll, bounded
        try:
            out = sorted(st.path.rsplit("/", 1)[-1] for st in fc.ls(spec["ls"]))
            break
        except ConnectionError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
print(json.dumps(out))
"""

GFS = """
import hashlib, json, sys
import fsspec
profile, op, url = sys.argv[1], sys.argv[2], sys.argv[3]
if op == "read":
    with fsspec.open(url, "rb", profile=profile) as f:
        data = f.read()
    print(json.dumps({"len": len(data), "sha": hashlib.sha256(data).hexdigest()}))
else:
    fs, path = fsspec.core.url_to_fs(url, profile=profile)
    print(json.dumps(sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))))
"""


@dataclass
class World:
    """The WAN, the federation on it and the profiles file of host C."""

    wan: Wan
    fed: Federation
    root: Path
    env: dict[str, str]

    def keys(self, site: str) -> str:
        return str(self.fed.sites[site]["state"] / "federation")

    def owner(self, host: str, site: str, spec: dict[str, object]) -> object:
        """Run OWNER in `host` with the keys of `site`'s entity."""
        out = self.wan.run(host, [sys.executable, "-c", OWNER, self.fed.registry_url,
                                  self.keys(site), json.dumps(spec)], timeout=240)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def profile(self, name: str, entity: str, site: str, *extra: str) -> None:
        subprocess.run([*hutong_cmd(), "profile", "add", name, "--registry",
                        self.fed.registry_url, "--entity", entity, "--keys", self.keys(site),
                        *extra], env=self.env, check=True, capture_output=True, timeout=60)

    def gfs(self, profile: str, op: str, url: str) -> object:
        """gfs:// on host C: `read` a file (length and digest) or `ls` a directory."""
        out = self.wan.run("c", [sys.executable, "-c", GFS, profile, op, url], env=self.env,
                           timeout=240, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    @contextlib.contextmanager
    def mount(self, profile: str) -> Iterator[Path]:
        """`hutong mount MP --profile NAME` in host C, for the block; yields MP."""
        mnt = self.root / f"mnt-{profile}"
        argv = self.wan["c"].net_argv([*hutong_cmd(), "mount", str(mnt), "--profile", profile])
        with mounted(argv, mnt, self.root / f"mount-{profile}.log", env=self.env):
            yield mnt


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    why = _federated.unavailable_reason()
    if why:
        pytest.skip(why)
    with wan_or_skip(("a", "b", "c"), rtt=0.040, loss=0.001, rate_bps=1e9) as wan, \
            Federation(tmp_path / "fed", wan=wan, heartbeat=0.3, ttl=3.0) as fed:
        fed.registry(netns="a")
        fed.site("a1", "bank-a", "cn-north", primary=True, netns="a")
        fed.site("b1", "telco-b", "cn-east", primary=True, netns="b")
        fed.site("a2", "bank-a", "cn-east", netns="b")
        env = {**os.environ, "HUTONG_PROFILES": str(tmp_path / "profiles.toml"),
               "HUTONG_DISK_CACHE": str(tmp_path / "cache")}
        yield World(wan, fed, tmp_path, env)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path, spec: dict[str, int]) -> dict[str, bytes]:
    """Random files of the given sizes, written under `root` (name -> content)."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, size in spec.items():
        out[name] = os.urandom(size)
        (root / name).write_bytes(out[name])
    return out


def test_mount_on_c_shows_own_tree_and_granted_part_and_gfs_reads_its_writes(
        world: World) -> None:
    src = world.root / "src"
    data = _files(src, {"shared.bin": 300_000, "private.bin": 1000, "own.bin": 70_000})
    world.owner("a", "a1", {"entity": "bank-a", "dirs": ["/bank-a/shared", "/bank-a/private"],
                            "files": {"/bank-a/shared/s.bin": str(src / "shared.bin"),
                                      "/bank-a/private/p.bin": str(src / "private.bin")},
                            "grants": [["/bank-a/shared/**", "telco-b"]]})
    world.owner("b", "b1", {"entity": "telco-b", "dirs": ["/telco-b/data"],
                            "files": {"/telco-b/data/own.bin": str(src / "own.bin")}})
    world.profile("tb", "telco-b", "b1")
    with world.mount("tb") as mnt:
        assert os.listdir(mnt) == ["telco-b", "bank-a"]  # its own entity first
        assert os.listdir(mnt / "bank-a") == ["shared"]  # the granted part only
        assert not (mnt / "bank-a" / "private").exists()
        with pytest.raises(FileNotFoundError):
            (mnt / "bank-a" / "private" / "p.bin").read_bytes()
        assert (mnt / "bank-a" / "shared" / "s.bin").read_bytes() == data["shared.bin"]
        assert (mnt / "telco-b" / "data" / "own.bin").read_bytes() == data["own.bin"]
        # a write through the mount on C, closed, then read by another door on C
        new = os.urandom(2_500_000)
        (mnt / "telco-b" / "out").mkdir()
        with open(mnt / "telco-b" / "out" / "x.bin", "wb") as f:
            f.write(new)
        got = world.gfs("tb", "read", "gfs://telco-b/out/x.bin")
        assert got == {"len": len(new), "sha": _sha(new)}
        assert world.gfs("tb", "ls", "gfs://bank-a") == ["shared"]
        assert world.gfs("tb", "read", "gfs://bank-a/shared/s.bin") == {
            "len": len(data["shared.bin"]), "sha": _sha(data["shared.bin"])}


def test_kill_9_of_the_primary_during_reads_on_c_reads_continue_from_the_mirror(
        world: World) -> None:
    src = world.root / "src"
    data = _files(src, {f"f{i}.bin": 4_000_000 for i in range(5)})
    rules = world.owner("a", "a1", {
        "entity": "bank-a", "dirs": ["/bank-a/ds"],
        "files": {f"/bank-a/ds/{n}": str(src / n) for n in data},
        "rules": [["/bank-a/ds/**", 2, "entity=bank-a"]]})
    assert isinstance(rules, list) and len(rules) == 1
    assert rules[0]["state"] == "ok" and sorted(rules[0]["sites"]) == ["a1", "a2"]
    world.profile("ba", "bank-a", "a1")
    first_read = threading.Event()
    killed = threading.Event()
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def reader(mnt: Path) -> None:
        try:
            for name in sorted(data):
                with open(mnt / "bank-a" / "ds" / name, "rb") as f:
                    parts = [f.read(1 << 20)]
                    first_read.set()
                    if name == "f0.bin":  # the primary dies while this file is open
                        assert killed.wait(60)
                    while block := f.read(1 << 20):
                        parts.append(block)
                got[name] = _sha(b"".join(parts))
        except BaseException as e:
            errors.append(e)

    with world.mount("ba") as mnt:
        t = threading.Thread(target=reader, args=(mnt,))
        t.start()
        assert first_read.wait(120)  # f0.bin is open, one block read: the kill lands mid-read
        proc = world.fed.procs["a1"].popen
        world.fed.kill("a1")
        assert proc.returncode == -signal.SIGKILL
        killed.set()
        t.join(240)
        assert not t.is_alive(), "reads hung after the primary died"
        assert not errors, errors
        assert got == {n: _sha(d) for n, d in data.items()}
        # writes to the entity whose primary is down fail at once, not a hang: replacing
        # a file is EROFS; creating one fails too (EROFS, or EHOSTUNREACH when the mount
        # cannot tell whether the name exists: a mirror holds files, not listings)
        f0 = mnt / "bank-a" / "ds" / "f0.bin"
        start = time.monotonic()
        with pytest.raises(OSError) as e, open(f0, "wb") as f:
            f.write(b"x" * 1000)
        assert e.value.errno == errno.EROFS, e.value
        with pytest.raises(OSError) as e, open(mnt / "bank-a" / "ds" / "new.bin", "wb") as f:
            f.write(b"x" * 1000)
        assert e.value.errno in (errno.EROFS, errno.EHOSTUNREACH), e.value
        assert time.monotonic() - start < 60
        assert _sha(f0.read_bytes()) == _sha(data["f0.bin"])  # from the mirror
        world.fed.start("a1")  # back: neither write left anything behind
    assert world.owner("c", "a1", {"entity": "bank-a", "ls": "/bank-a/ds"}) == sorted(data)
    with world.mount("ba") as mnt:
        assert _sha((mnt / "bank-a" / "ds" / "f0.bin").read_bytes()) == _sha(data["f0.bin"])
