"""The authenticated channel: pinned entity keys, job agreement, and frames that
fail to open when altered, replayed or cut."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import nacl.signing
import pytest

from privacy.channel import Channel, Identity, handshake
from privacy.errors import AuthError, ProtocolError

BANK = Identity("bank-a", nacl.signing.SigningKey.generate())
TELCO = Identity("telco-b", nacl.signing.SigningKey.generate())


def connect(left_args: dict[str, Any], right_args: dict[str, Any],
            ) -> tuple[Channel | BaseException, Channel | BaseException]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    out: dict[str, Channel | BaseException] = {}

    def run(name: str, sock: socket.socket, kw: dict[str, Any]) -> None:
        try:
            out[name] = handshake(sock, **kw)
        except Exception as e:
            out[name] = e
            sock.close()

    t = threading.Thread(target=run, args=("right", b, right_args))
    t.start()
    run("left", a, left_args)
    t.join()
    return out["left"], out["right"]


def args(me: Identity, peer: Identity, role: str, *, key: str | None = None, job: str = "j",
         ) -> dict[str, Any]:
    return {"me": me, "role": role, "peer": peer.entity, "peer_key_hex": key or peer.public_hex,
            "job_digest": job, "initiator": role == "left"}


def pair() -> tuple[Channel, Channel]:
    left, right = connect(args(BANK, TELCO, "left"), args(TELCO, BANK, "right"))
    assert isinstance(left, Channel) and isinstance(right, Channel)
    return left, right


def test_messages_round_trip_both_ways() -> None:
    left, right = pair()
    left.send("hello", {"n": 3}, b"\x00" * 100_000)
    m = right.recv("hello")
    assert (m.kind, m.meta, len(m.body)) == ("hello", {"n": 3}, 100_000)
    right.send("reply", {"kind_of": "x"})
    assert left.recv("reply").meta == {"kind_of": "x"}
    with pytest.raises(ValueError, match="reserved"):
        left.send("x", {"kind": "spoof"})


@pytest.mark.parametrize("make", [
    lambda: (args(BANK, TELCO, "left", key=Identity("x", nacl.signing.SigningKey.generate())
                  .public_hex), args(TELCO, BANK, "right")),
    lambda: (args(BANK, TELCO, "left"), args(TELCO, Identity("bank-z", BANK.key), "right")),
    lambda: (args(BANK, TELCO, "left", job="j1"), args(TELCO, BANK, "right", job="j2")),
])
def test_handshake_refuses_wrong_peers(make: Callable[[], tuple[dict[str, Any],
                                                                   dict[str, Any]]]) -> None:
    left, right = connect(*make())
    assert isinstance(left, AuthError) or isinstance(right, AuthError)


def raw_frames(ch: Channel, peer: Channel, n: int) -> list[bytes]:
    """Send n messages and capture their raw frames off the peer's socket."""
    for i in range(n):
        ch.send("m", {"i": i})
    frames = []
    for _ in range(n):
        (size,) = struct.unpack(">I", peer.sock.recv(4, socket.MSG_WAITALL))
        frames.append(struct.pack(">I", size) + peer.sock.recv(size, socket.MSG_WAITALL))
    return frames


@pytest.mark.parametrize("attack", ["flip", "replay", "reorder"])
def test_altered_replayed_or_reordered_frames_fail(attack: str) -> None:
    left, right = pair()
    frames = raw_frames(left, right, 2)
    a, b = socket.socketpair()
    right.sock = b
    if attack == "flip":
        f = bytearray(frames[0])
        f[-1] ^= 1
        a.sendall(bytes(f))
    elif attack == "replay":
        a.sendall(frames[0] + frames[0])
        assert right.recv("m").meta == {"i": 0}
    else:
        a.sendall(frames[1])
    with pytest.raises(ProtocolError, match="failed authentication"):
        right.recv("m")


def test_peer_closing_mid_message_is_a_clear_error() -> None:
    left, right = pair()
    right.step = "psi-match"
    left.sock.sendall(struct.pack(">I", 1000) + b"x" * 10)
    left.sock.close()
    with pytest.raises(ProtocolError, match="closed the connection during step psi-match"):
        right.recv("m")


def test_oversized_frame_is_refused() -> None:
    left, right = pair()
    left.sock.sendall(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        right.recv("m")
