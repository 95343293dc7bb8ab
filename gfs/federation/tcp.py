"""TCP options of federation connections: BBR congestion control where the kernel has it.

Between sites, links are long and lose packets now and then. A loss-based congestion
control (cubic, the usual default) halves its window at each loss: at 40 ms RTT and
0.1% loss one cubic stream carries about MSS / RTT x 1.22 / sqrt(p) = 1.4 MB/s,
whatever the link's rate. BBR paces at the measured bottleneck rate and does not
take random loss for congestion. It is chosen per socket (`TCP_CONGESTION`), on the
site's listening socket (accepted connections inherit it: the site sends the chunk
answers) and on every client connection (its uploads); where the kernel lacks BBR or
refuses it to this user, the system's default stays.
"""

from __future__ import annotations

import contextlib
import socket

#: The congestion control federation sockets ask for.
CONGESTION = "bbr"


def prefer_bbr(sock: socket.socket) -> bool:
    """Ask for BBR on TCP socket `sock`; whether it now uses it (False: the kernel has
    no BBR, refuses it to this user, or `sock` is not TCP — its default stays)."""
    opt = getattr(socket, "TCP_CONGESTION", None)
    if opt is None or sock.type != socket.SOCK_STREAM or \
            sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, opt, CONGESTION.encode())
    return congestion_of(sock) == CONGESTION


def congestion_of(sock: socket.socket) -> str | None:
    """The congestion control of TCP socket `sock` (None where it cannot be read)."""
    opt = getattr(socket, "TCP_CONGESTION", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, opt, 16)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


__all__ = ["CONGESTION", "congestion_of", "prefer_bbr"]
