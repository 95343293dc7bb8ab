"""Our side of the globalfs bench: a federation filled with the data set, its profile,
the global mount and gfs:// reads, on the emulated WAN or on loopback.

Every hutong process gets `HUTONG_PROFILES` (a profiles file in the work
directory, never the user's) and a profile of its own whose disk cache is a new
directory, so that a cold read really starts cold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench._fsops import Dataset, Timing, fill_client
from bench._measure import hutong_cmd
from gfs.client import Client
from gfs.federation.testing import Federation

BLOCK = 8 << 20
PROFILES_ENV = "HUTONG_PROFILES"

GFS_READ = """
import json, sys, time
import fsspec
url, profile, block, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
labels = sys.argv[5].split(",")
fs, path = fsspec.core.url_to_fs(url, profile=profile)
out = []
for label in labels:
    t = time.perf_counter()
    n = 0
    with fs.open(path, "rb", block_size=block, cache_type="none") as f:
        while data := f.read(block):
            n += len(data)
    out.append({"label": label, "seconds": time.perf_counter() - t, "bytes": n})
    sizer, fc = getattr(fs.ns, "sizer", None), getattr(fs.ns, "fc", None)
    if sizer is not None and fc is not None:  # what the remote fetch kept in flight
        out[-1]["depth"], out[-1]["link"] = sizer.last_depth, fc.link.estimate()
    if n != size:
        sys.exit(f"gfs:// read {n} bytes of {url}, expected {size}")
print(json.dumps(out))
"""


def unavailable_reason() -> str | None:
    """Why our federated rows cannot run in this build (None when they can)."""
    checks = ((["profile", "--help"], "profile", "`hutong profile` (profiles)"),
              (["mount", "--help"], "--profile", "`hutong mount --profile` (the global mount)"))
    for args, needle, what in checks:
        try:
            out = subprocess.run([*hutong_cmd(), *args], capture_output=True, text=True,
                                 timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"hutong does not start: {e}"
        if out.returncode or needle not in out.stdout:
            return f"{what} is not in this build"
    return None


class Ours:
    """The profiles and processes of our side, all under `work`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, PROFILES_ENV: str(work / "profiles.toml")}
        self._profiles = 0

    def add_profile(self, fed: Federation, entity: str, near: str) -> str:
        """`hutong profile add` of a new profile acting for `entity` with its keys, reading
        near site `near`, with an empty disk cache; returns its name."""
        self._profiles += 1
        name = f"p{self._profiles}"
        cache = self.work / f"cache-{name}"
        keys = fed.sites[near]["state"] / "federation"
        subprocess.run([*hutong_cmd(), "profile", "add", name, "--registry", fed.registry_url,
                        "--entity", entity, "--keys", str(keys), "--near", near,
                        "--cache-dir", str(cache)],
                       env=self.env, check=True, capture_output=True, timeout=60)
        return name

    def mount_argv(self, profile: str, mnt: Path) -> list[str]:
        """`hutong mount MNT --profile NAME` (foreground)."""
        return [*hutong_cmd(), "mount", str(mnt), "--profile", profile]

    def gfs_reads(self, prefix: Sequence[str], url: str, profile: str,
                  size: int, *, warm: bool = True) -> tuple[Timing, Timing | None]:
        """Cold then (with `warm`) warm sequential read of `url` through gfs:// in one
        fresh process (run under `prefix`, e.g. a WAN site's nsenter)."""
        out = subprocess.run([*prefix, sys.executable, "-c", GFS_READ, url, profile,
                              str(BLOCK), str(size), "cold,warm" if warm else "cold"],
                             env=self.env,
                             capture_output=True, text=True, timeout=1800, check=False)
        if out.returncode:
            raise SystemExit(f"bench: gfs:// read of {url} failed: {out.stderr.strip()[-800:]}")
        cold, *rest = json.loads(out.stdout.strip().splitlines()[-1])
        if "depth" in cold:
            rate, rtt, chunk = cold["link"]
            print(f"bench: gfs:// cold read of {url}: {cold['depth'] / 1e6:.1f} MB in flight "
                  f"(link measured {rate / 1e6:.1f} MB/s, first byte {rtt * 1e3:.0f} ms, "
                  f"{chunk} B per chunk)", file=sys.stderr)
        return (Timing(cold["seconds"], 1, 1, cold["bytes"]),
                Timing(rest[0]["seconds"], 1, 1, rest[0]["bytes"]) if rest else None)


def fill_site(fed: Federation, site: str, prefix: str, ds: Dataset) -> Path:
    """Stop `site`, put the data set under `prefix` of its store, start it again; returns
    its pools directory (to drop from the page cache before cold reads)."""
    fed.kill(site, signal.SIGTERM)
    state = Path(fed.sites[site]["state"])
    with Client(state) as c:
        fill_client(c, prefix, ds)
    fed.start(site)
    return state / "pools"
