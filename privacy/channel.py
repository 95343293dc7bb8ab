"""The authenticated channel between the two parties of a privacy job.

Handshake (both sides, over one TCP connection):

1. each sends a hello frame: ``MAGIC || JSON {entity, role, job}`` followed by
   a 32-byte nonce and a 32-byte ephemeral X25519 public key;
2. each checks the peer's entity name and job digest, then sends an Ed25519
   signature, by its entity key, over ``role || BLAKE2b(hello_initiator ||
   hello_responder)``; each verifies the peer's signature with the public key
   it has *pinned* for that entity;
3. per-direction keys are BLAKE2b(X25519 shared secret || transcript hash).

Every later frame is ``u32 length || XSalsa20-Poly1305 box`` whose nonce is a
per-direction counter: an altered, replayed, dropped or reordered frame fails
to open. A message is ``u32 header length || JSON header || body``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions
import nacl.secret
import nacl.signing

from privacy.errors import AuthError, ProtocolError

MAGIC = b"HUTONG-PRIV/1\n"
MAX_FRAME = 1 << 30
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Identity:
    """An entity's name and Ed25519 signing key (its entity key)."""

    entity: str
    key: nacl.signing.SigningKey

    @property
    def public_hex(self) -> str:
        """The public key, hex, as a peer pins it."""
        return bytes(self.key.verify_key).hex()


@dataclass
class Message:
    """One message: a kind, a JSON header and a binary body."""

    kind: str
    meta: dict[str, Any]
    body: bytes = b""


@dataclass
class Channel:
    """A handshaken connection; `send`/`recv` whole messages."""

    sock: socket.socket
    peer: str
    _tx: nacl.secret.SecretBox
    _rx: nacl.secret.SecretBox
    bytes_sent: int = 0
    bytes_received: int = 0
    _tx_n: int = 0
    _rx_n: int = 0
    step: str = field(default="start")

    def send(self, kind: str, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
        """Send one message ("kind" is reserved in `meta`)."""
        if meta and "kind" in meta:
            raise ValueError("the header key 'kind' is reserved for the message kind")
        head = json.dumps({**(meta or {}), "kind": kind}, separators=(",", ":")).encode()
        payload = _LEN.pack(len(head)) + head + body
        nonce = self._tx_n.to_bytes(24, "little")
        self._tx_n += 1
        box = self._tx.encrypt(payload, nonce).ciphertext
        try:
            self.sock.sendall(_LEN.pack(len(box)) + box)
        except OSError as e:
            raise ProtocolError(f"lost the connection to {self.peer} while sending {kind!r} "
                                f"(step {self.step}): {e}") from e
        self.bytes_sent += len(box) + 4

    def recv(self, *kinds: str) -> Message:
        """Receive one message; an `error` message from the peer, or a kind not in
        `kinds`, raises ProtocolError."""
        n = _LEN.unpack(_read_exact(self.sock, 4, self.peer, self.step))[0]
        if n > MAX_FRAME:
            raise ProtocolError(f"frame of {n} bytes from {self.peer} exceeds the limit")
        box = _read_exact(self.sock, n, self.peer, self.step)
        nonce = self._rx_n.to_bytes(24, "little")
        self._rx_n += 1
        try:
            payload = self._rx.decrypt(box, nonce)
        except nacl.exceptions.CryptoError as e:
            raise ProtocolError(f"a frame from {self.peer} failed authentication "
                                f"(step {self.step}); the job is aborted") from e
        self.bytes_received += n + 4
        hl = _LEN.unpack_from(payload)[0]
        meta = json.loads(payload[4:4 + hl])
        kind = str(meta.pop("kind"))
        if kind == "error":
            raise ProtocolError(f"{self.peer} aborted the job at step {meta.get('step')}: "
                                f"{meta.get('message')}")
        if kinds and kind not in kinds:
            raise ProtocolError(f"expected {' or '.join(kinds)} from {self.peer} at step "
                                f"{self.step}, got {kind!r}")
        return Message(kind, meta, payload[4 + hl:])

    def abort(self, message: str) -> None:
        """Tell the peer the job failed here (best effort)."""
        with contextlib.suppress(ProtocolError):
            self.send("error", {"step": self.step, "message": message})

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_exact(sock: socket.socket, n: int, peer: str, step: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError as e:
            raise ProtocolError(f"{peer} did not answer in time (step {step}); "
                                f"the job is aborted") from e
        except OSError as e:
            raise ProtocolError(f"lost the connection to {peer} (step {step}): {e}") from e
        if not chunk:
            raise ProtocolError(f"{peer} closed the connection during step {step}; "
                                f"the job is aborted and nothing was released")
        buf += chunk
    return bytes(buf)


def _send_raw(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_raw(sock: socket.socket, peer: str, limit: int = 4096) -> bytes:
    n = _LEN.unpack(_read_exact(sock, 4, peer, "handshake"))[0]
    if n > limit:
        raise AuthError(f"handshake frame from {peer} too long ({n} bytes)")
    return _read_exact(sock, n, peer, "handshake")


def handshake(sock: socket.socket, me: Identity, role: str, peer: str, peer_key_hex: str,
              job_digest: str, *, initiator: bool) -> Channel:
    """Authenticate both ends of `sock`: we are `me` in `role`; the peer must be
    entity `peer` holding the key `peer_key_hex` and agree on `job_digest`."""
    eph_sk = os.urandom(32)
    eph_pk = sodium.crypto_scalarmult_base(eph_sk)
    info = json.dumps({"entity": me.entity, "role": role, "job": job_digest}).encode()
    hello = MAGIC + info + b"\n" + os.urandom(32) + eph_pk
    _send_raw(sock, hello)
    theirs = _recv_raw(sock, peer)
    if not theirs.startswith(MAGIC):
        raise AuthError(f"peer {peer} does not speak {MAGIC.strip().decode()}")
    try:
        t_info = json.loads(theirs[len(MAGIC):-65])
    except ValueError as e:
        raise AuthError(f"malformed hello from {peer}") from e
    if t_info.get("entity") != peer:
        raise AuthError(f"expected entity {peer!r} on the other end, got "
                        f"{t_info.get('entity')!r}")
    if t_info.get("job") != job_digest:
        raise AuthError(f"{peer} is running a different job (spec digest differs)")
    first, second = (hello, theirs) if initiator else (theirs, hello)
    th = hashlib.blake2b(first + second, digest_size=32).digest()
    _send_raw(sock, me.key.sign(role.encode() + th).signature)
    sig = _recv_raw(sock, peer)
    try:
        vk = nacl.signing.VerifyKey(bytes.fromhex(peer_key_hex))
        vk.verify(str(t_info.get("role", "")).encode() + th, sig)
    except (ValueError, nacl.exceptions.BadSignatureError) as e:
        raise AuthError(f"{peer} failed to prove its entity key (pinned key "
                        f"{peer_key_hex[:16]}...); check the key with `hutong privacy keys`") from e
    shared = sodium.crypto_scalarmult(eph_sk, theirs[-32:])
    k_i = hashlib.blake2b(shared + th, digest_size=32, person=b"hutong-i2r").digest()
    k_r = hashlib.blake2b(shared + th, digest_size=32, person=b"hutong-r2i").digest()
    tx, rx = (k_i, k_r) if initiator else (k_r, k_i)
    return Channel(sock, peer, nacl.secret.SecretBox(tx), nacl.secret.SecretBox(rx))
