"""A raw mover peer and an attacking relay for the mover tests (loopback, bounded).

`RawClient` speaks the wire format of docs/format.md through the pure-Python
reference (gfs.mover_reference): handshake, then frames sealed in records.
`Relay` sits between a client and a server, passes the handshake, and can
flip, replay, drop, reorder, inject or cut the records of one direction while
it keeps a capture of every byte it forwarded.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gfs import mover
from gfs import mover_reference as ref
from gfs.client import Client
from gfs.mover import TransferStats
from gfs.testing.relay import TcpRelay

OP_FETCH, OP_SEND = 1, 2
ERROR = 12


def small_store(path: Path) -> Client:
    """A store of small chunks (many chunks from little data) and 1 MiB packs."""
    return Client.init(path, min_size=1024, avg_size=4096, max_size=16384,
                       pack_size=1 << 20)


def store_with(root: Path, name: str, files: Mapping[str, bytes] | None = None) -> Client:
    """A small store at root/name, holding `files` (name -> bytes) under /data if given."""
    c = small_store(root / name)
    if files:
        data = root / f"{name}-data"
        data.mkdir()
        for fname, body in files.items():
            (data / fname).write_bytes(body)
        c.put(str(data), "/data")
    return c


def assert_clean(c: Client) -> None:
    """fsck finds nothing wrong and no temporary is left in the default pool."""
    report = c.fsck()
    assert report.ok, report.problems
    assert os.listdir(c.state / "pools" / "default" / "tmp") == []


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """One mover frame (version 2)."""
    return b"HTMV" + struct.pack("<BBHI", 2, ftype, 0, len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = sock.recv(n - len(out))
        if not more:
            raise ConnectionError("closed")
        out += more
    return out


def read_plain_frame(sock: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(sock, 12)
    assert head[:4] == b"HTMV", head
    return head[5], recv_exact(sock, struct.unpack_from("<I", head, 8)[0])


class Framed:
    """Frames over a socket, sealed in records once `tx`/`rx` are set (the reference)."""

    sock: socket.socket
    tx: ref.Direction | None = None
    rx: ref.Direction | None = None
    _plain = b""

    def send(self, data: bytes) -> None:
        """Send frame bytes (sealed in one record once the record layer is on)."""
        self.sock.sendall(self.tx.seal(data) if self.tx else data)

    def read_record(self) -> bytes:
        """The plaintext of the next record from the peer."""
        assert self.rx is not None
        head = recv_exact(self.sock, 16)
        length = struct.unpack_from("<I", head, 4)[0]
        return self.rx.open(head + recv_exact(self.sock, length + 16))

    def read_frame(self) -> tuple[int, bytes]:
        if self.rx is None:
            return read_plain_frame(self.sock)
        while len(self._plain) < 12 or len(self._plain) < 12 + struct.unpack_from(
                "<I", self._plain, 8)[0]:
            self._plain += self.read_record()
        n = 12 + struct.unpack_from("<I", self._plain, 8)[0]
        out, self._plain = self._plain[:n], self._plain[n:]
        return out[5], out[12:]

    def expect_error(self, code: int) -> str:
        """Read the ERROR the peer sends and check that it then closes."""
        ftype, payload = self.read_frame()
        assert ftype == ERROR, (ftype, payload[:64])
        assert struct.unpack_from("<I", payload)[0] == code, payload
        assert self.sock.recv(1) == b""
        self.sock.close()
        return payload[4:].decode()

    def close(self) -> None:
        self.sock.close()


class RawClient(Framed):
    """A mover client by hand: the handshake, then sealed frames (or plaintext)."""

    def __init__(self, port: int, secret: bytes, *, op: int = OP_FETCH,
                 cipher: int = ref.CIPHER_AES256GCM, cn: bytes | None = None,
                 auth: bytes | None = None, pub: bytes | None = None,
                 flags: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.cn = cn or os.urandom(32)
        self.proof = b""
        key, cpub = ref.ephemeral()
        cpub = pub if pub is not None else cpub  # another public key, as an attacker sends
        self.sock.sendall(frame(1, self.cn + bytes([op, cipher, flags, 0]) + cpub))
        self.last, payload = read_plain_frame(self.sock)
        if self.last != 2:  # not a CHALLENGE
            self.error = payload
            return
        sn, spub = payload[:32], payload[64:]
        assert payload[32:64] == ref.proof(secret, "server", self.cn, sn, op, cipher, cpub,
                                           spub, flags)
        self.proof = auth or ref.proof(secret, "client", self.cn, sn, op, cipher, cpub, spub,
                                       flags)
        self.sock.sendall(frame(3, self.proof))
        self.last, self.error = read_plain_frame(self.sock)
        if self.last == 4 and cipher:  # READY: records from now on
            c2s, s2c = ref.record_keys(secret, ref.shared(key, spub), self.cn, sn, op, cipher)
            self.tx, self.rx = ref.Direction(cipher, c2s), ref.Direction(cipher, s2c)


class ServerConn(Framed):
    """The server end of one connection by hand: the handshake as the reference states
    it (`flags` is what the client's HELLO carried), then sealed frames."""

    def __init__(self, sock: socket.socket, secret: bytes) -> None:
        self.sock = sock
        _, hello = read_plain_frame(sock)
        cn, op, cipher, self.flags, cpub = hello[:32], hello[32], hello[33], hello[34], \
            hello[36:68]
        sn = os.urandom(32)
        key, spub = ref.ephemeral()
        sock.sendall(frame(2, sn + ref.proof(secret, "server", cn, sn, op, cipher, cpub, spub,
                                             self.flags) + spub))
        _, auth = read_plain_frame(sock)
        assert auth == ref.proof(secret, "client", cn, sn, op, cipher, cpub, spub, self.flags)
        sock.sendall(frame(4))
        c2s, s2c = ref.record_keys(secret, ref.shared(key, cpub), cn, sn, op, cipher)
        self.tx, self.rx = ref.Direction(cipher, s2c), ref.Direction(cipher, c2s)


class RawServer:
    """A mover server by hand on loopback: each connection (at most `connections`, one at a
    time, on a thread) runs `script` after the handshake; `errors` keeps what a script
    raised."""

    def __init__(self, secret: bytes, script: Callable[[ServerConn], None],
                 connections: int = 4) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.errors: list[BaseException] = []
        self.conns: list[ServerConn] = []
        self._thread = threading.Thread(target=self._serve, args=(secret, script, connections),
                                        daemon=True)
        self._thread.start()

    def _serve(self, secret: bytes, script: Callable[[ServerConn], None], n: int) -> None:
        for _ in range(n):
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(10)
            try:
                conn = ServerConn(sock, secret)
                self.conns.append(conn)
                script(conn)
            except (OSError, AssertionError, ref.RecordError) as e:
                self.errors.append(e)
            finally:
                sock.close()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(timeout=30)


Action = Literal["flip", "replay", "drop", "swap", "inject", "forge", "cut", "pass"]


@dataclass
class Tamper:
    """What the relay does to record `index` of `direction` on the first connection."""

    direction: Literal["c2s", "s2c"]
    index: int
    action: Action


@dataclass
class Relay(TcpRelay):
    """Forwards connections to `target`, tampering as told; keeps a bounded capture.

    `budget`: each connection is cut after that many bytes from the server
    (`cuts` counts the cuts), wherever they fall.
    """

    target: tuple[str, int]
    tamper: Tamper = field(default_factory=lambda: Tamper("s2c", 0, "pass"))
    budget: int | None = None
    limit: int = 64 << 20
    captures: dict[tuple[int, str], bytearray] = field(default_factory=dict)
    """Bytes forwarded, by (connection number, direction), `limit` bytes in all."""
    done: threading.Event = field(default_factory=threading.Event)
    hits: int = 0
    cuts: int = 0

    def __post_init__(self) -> None:
        TcpRelay.__init__(self, self.target, connect_timeout=30)

    def pump_ended(self, direction: str, number: int) -> None:
        self.done.set()

    def _keep(self, key: tuple[int, str], data: bytes) -> None:
        with self._lock:
            room = self.limit - sum(len(c) for c in self.captures.values())
            self.captures.setdefault(key, bytearray()).extend(data[:max(0, room)])

    def capture(self) -> bytes:
        """Every byte forwarded, both directions, all connections."""
        with self._lock:
            return b"".join(bytes(c) for c in self.captures.values())

    def pump(self, a: socket.socket, b: socket.socket, direction: str, number: int) -> None:
        buf, frames, index, held, plain = b"", 2, 0, b"", False
        mine = number == 0 and self.tamper.direction == direction
        left = self.budget if direction == "s2c" else None
        while True:
            data = a.recv(1 << 16)
            if not data:
                break
            self._keep((number, direction), data)
            self.count(len(data))
            buf += data
            out = b""
            while frames and len(buf) >= 12:  # two handshake frames pass untouched
                end = 12 + struct.unpack_from("<I", buf, 8)[0]
                if len(buf) < end:
                    break
                out, buf, frames = out + buf[:end], buf[end:], frames - 1
            plain = plain or (not frames and buf[:4] == b"HTMV")  # a plaintext stream
            if plain:
                out, buf = out + buf, b""
            elif not frames:
                records, buf = ref.split_records(buf)
                for rec in records:
                    if mine and index == self.tamper.index:
                        rec, held = self._apply(rec)
                        if self.tamper.action == "cut":
                            b.sendall(out + rec)
                            return
                    elif held:
                        rec, held = rec + held, b""  # swap: the later record first
                    out += rec
                    index += 1
            if left is not None and len(out) >= left:
                b.sendall(out[:left])
                self.cuts += 1
                return
            if left is not None:
                left -= len(out)
            b.sendall(out)

    def _apply(self, rec: bytes) -> tuple[bytes, bytes]:
        """(bytes to forward now, bytes held for after the next record)."""
        self.hits += 1
        action = self.tamper.action
        if action == "flip":
            pos = 16 + (len(rec) - 32) // 2
            return rec[:pos] + bytes([rec[pos] ^ 0x10]) + rec[pos + 1:], b""
        if action == "replay":
            return rec + rec, b""
        if action == "drop":
            return b"", b""
        if action == "swap":
            return b"", rec
        if action == "inject":
            return os.urandom(200) + rec, b""
        if action == "forge":  # a well-formed record with the right sequence number
            head = rec[:16]
            return head + os.urandom(len(rec) - 16), b""
        if action == "cut":
            return rec[: len(rec) // 2], b""
        return rec, b""

    def close(self, *, join: float = 0.0) -> None:
        super().close(join=join)


def relayed_fetch(dst: Client, target: tuple[str, int], ids: list[bytes], secret: bytes,
                  **kw: Any) -> tuple[TransferStats, Relay]:
    """`mover.fetch` into `dst` from the server at `target` through a passing `Relay`
    (closed again), and the relay with its capture."""
    relay = Relay(target)
    try:
        return mover.fetch(dst, relay.address, ids, secret, **kw), relay
    finally:
        relay.close()
