"""Packet-level delay line on a TUN device (native/delayline.c), for gfs.testing.wan."""

from collections.abc import Sequence

def open_tun(name: str) -> int:
    """Create TUN device `name` (IFF_TUN | IFF_NO_PI); return its non-blocking fd."""

def run(fd: int, stop_fd: int, rules: Sequence[tuple[int, bytes, int, int]], *,
        mtu: int = 1500, slots: int = 16384) -> dict[str, int]:
    """Delay every packet of `fd` by delay(src) + delay(dst) until `stop_fd` is readable."""
