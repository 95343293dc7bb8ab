"""What a cold read keeps on the wire: the site's TCP connections sampled with `ss`
while the read runs (bench globalfs).

Every SAMPLE_S seconds, `ss -tin` in the site's network namespace lists the
established connections from the site's port with their unacknowledged segments;
the summary says how many connections carried the read, and the bytes in flight
(unacknowledged segments x MSS, summed over the connections) at the median and
largest sample with any (the read on the wire: a warm re-read after it sends
nothing), to set beside the link's bandwidth-delay product: a read whose bytes in
flight stay well above it is not limited by its pipeline's depth.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
from dataclasses import dataclass
from types import TracebackType

from gfs.testing.wan import Wan

#: Seconds between two samples.
SAMPLE_S = 0.25
#: Bytes a connection must have carried to count as one the read used.
CARRIED = 1 << 20

_NUM = re.compile(r"\b(unacked|mss|bytes_acked):(\d+)")


@dataclass(frozen=True)
class Flight:
    """The summary of one sampled read."""

    connections: int
    """Connections from the site's port that carried at least CARRIED bytes."""
    median_bytes: float
    max_bytes: float
    samples: int

    def describe(self, bdp: float) -> str:
        return (f"{self.connections} connections; in flight median "
                f"{self.median_bytes / 1e6:.1f} MB, max {self.max_bytes / 1e6:.1f} MB "
                f"(BDP {bdp / 1e6:.1f} MB; {self.samples} samples)")


def parse(out: str) -> dict[str, tuple[int, int]]:
    """(bytes in flight, bytes acked) by peer, from `ss -tinH` output (two lines each)."""
    lines = out.splitlines()
    got: dict[str, tuple[int, int]] = {}
    for head, info in zip(lines[0::2], lines[1::2], strict=False):
        fields = head.split()
        if not fields:
            continue
        nums = {k: int(v) for k, v in _NUM.findall(info)}
        got[fields[-1]] = (nums.get("unacked", 0) * nums.get("mss", 1448),
                           nums.get("bytes_acked", 0))
    return got


class FlightSampler:
    """Samples the connections from `port` in WAN host `host` while the block runs."""

    def __init__(self, wan: Wan, host: str, port: int) -> None:
        self.argv = wan[host].argv(["ss", "-tinH", "state", "established",
                                    f"( sport = :{port} )"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-flight", daemon=True)
        self._inflight: list[int] = []
        self._acked: dict[str, int] = {}

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            out = subprocess.run(self.argv, capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            conns = parse(out)
            total = sum(f for f, _ in conns.values())
            if total:
                self._inflight.append(total)
            for peer, (_, acked) in conns.items():
                self._acked[peer] = max(acked, self._acked.get(peer, 0))

    def __enter__(self) -> FlightSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)

    def summary(self) -> Flight | None:
        """The summary (None before any sample)."""
        if not self._inflight:
            return None
        return Flight(sum(a >= CARRIED for a in self._acked.values()),
                      statistics.median(self._inflight), max(self._inflight),
                      len(self._inflight))


__all__ = ["Flight", "FlightSampler", "parse"]
