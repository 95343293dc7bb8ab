"""Pure-Python reference of the mover's handshake proofs, key schedule, records and
delta-transfer frames (BASES, HAVE).

The native mover (native/mover.c, native/mover_record.c) is what runs; this
module states the same wire format (docs/format.md, "Mover protocol") in a
few lines of Python with `cryptography`, so that tests can check the C side
against it and speak the protocol as a peer or an attacker would.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CIPHER_NONE: Final = 0
CIPHER_AES256GCM: Final = 1
CIPHER_CHACHA20: Final = 2
CIPHER_AES128GCM: Final = 3
KEY_LEN: Final = {CIPHER_AES128GCM: 16, CIPHER_AES256GCM: 32, CIPHER_CHACHA20: 32}
RECORD_MAGIC: Final = b"HTMR"
RECORD_HEADER: Final = struct.Struct("<4sIQ")  # magic, ciphertext length, sequence number
TAG_LEN: Final = 16
RECORD_MAX: Final = 256 << 10
FLAG_DELTA: Final = 1
BASES: Final = 14
HAVE: Final = 15
MAX_PAIRS: Final = 4096
ID_LEN: Final = 16


def proof(secret: bytes, side: str, cn: bytes, sn: bytes, op: int, cipher: int,
          cpub: bytes, spub: bytes, flags: int = 0) -> bytes:
    """HMAC-SHA256 proof of `side` ("server" or "client") for one handshake; `cpub` and
    `spub` are the two ephemeral X25519 public keys (zeros on a plaintext stream);
    `flags`, the HELLO flags byte, is appended when not 0."""
    msg = f"HTMV2 {side}".encode() + cn + sn + bytes([op, cipher]) + cpub + spub
    if flags:
        msg += bytes([flags])
    return hmac.new(secret, msg, "sha256").digest()


class FrameError(ValueError):
    """A BASES or HAVE payload the protocol refuses."""


def bases_payload(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The payload of a BASES frame: count, then (chunk id, base id) pairs."""
    return struct.pack("<I", len(pairs)) + b"".join(c + b for c, b in pairs)


def parse_bases(payload: bytes, batch: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The pairs of a BASES payload about `batch` (the WANT or NEED ids, in order), or
    FrameError: 1 .. MAX_PAIRS pairs, chunk ids of the batch in its order, no chunk as
    its own base."""
    if len(payload) < 4:
        raise FrameError("BASES shorter than its count")
    n = struct.unpack_from("<I", payload)[0]
    if not 0 < n <= MAX_PAIRS or len(payload) != 4 + 2 * ID_LEN * n:
        raise FrameError(f"BASES of {n} pairs in {len(payload)} bytes")
    pairs = [(payload[k : k + ID_LEN], payload[k + ID_LEN : k + 2 * ID_LEN])
             for k in range(4, len(payload), 2 * ID_LEN)]
    pos = 0
    for cid, base in pairs:
        if cid == base:
            raise FrameError("BASES names a chunk as its own base")
        while pos < len(batch) and batch[pos] != cid:
            pos += 1
        if pos == len(batch):
            raise FrameError("BASES names a chunk not in the batch (or out of order)")
    return pairs


def have_payload(held: list[bool]) -> bytes:
    """The payload of a HAVE frame: count, then a bitmap (bit i: pair i's base held)."""
    bits = bytearray((len(held) + 7) // 8)
    for i, h in enumerate(held):
        if h:
            bits[i // 8] |= 1 << (i % 8)
    return struct.pack("<I", len(held)) + bytes(bits)


def parse_have(payload: bytes, npairs: int) -> list[bool]:
    """The bits of a HAVE payload answering a BASES of `npairs` pairs, or FrameError."""
    if len(payload) < 4:
        raise FrameError("HAVE shorter than its count")
    n = struct.unpack_from("<I", payload)[0]
    if not 0 < n <= MAX_PAIRS or n != npairs or len(payload) != 4 + (n + 7) // 8:
        raise FrameError(f"HAVE of {n} bits in {len(payload)} bytes answers {npairs} pairs")
    bits = payload[4:]
    if n % 8 and bits[-1] >> (n % 8):
        raise FrameError("HAVE sets bits past its count")
    return [bool(bits[i // 8] >> (i % 8) & 1) for i in range(n)]


def ephemeral() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key and its 32-byte public key."""
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def shared(key: X25519PrivateKey, peer: bytes) -> bytes:
    """The X25519 shared secret with the peer's public key."""
    return key.exchange(X25519PublicKey.from_public_bytes(peer))


@dataclass(frozen=True)
class DirKeys:
    """Key and IV of one direction of a stream."""

    key: bytes
    iv: bytes


def record_keys(secret: bytes, dh: bytes, cn: bytes, sn: bytes, op: int, cipher: int
                ) -> tuple[DirKeys, DirKeys]:
    """(client-to-server, server-to-client) keys: HKDF-SHA256(secret || dh, salt cn || sn,
    info "HTMV2 c2s"/"HTMV2 s2c" || op || cipher), the cipher's key bytes (16 or 32) then
    12 IV bytes."""
    n = KEY_LEN[cipher]
    out = []
    for label in (b"HTMV2 c2s", b"HTMV2 s2c"):
        okm = HKDF(hashes.SHA256(), n + 12, cn + sn, label + bytes([op, cipher])).derive(
            secret + dh)
        out.append(DirKeys(okm[:n], okm[n:]))
    return out[0], out[1]


class RecordError(ValueError):
    """A record that does not open: bad header, wrong sequence number or failed tag."""


class Direction:
    """One direction of a stream: seals or opens its records in sequence."""

    def __init__(self, cipher: int, keys: DirKeys) -> None:
        self._aead = ChaCha20Poly1305(keys.key) if cipher == CIPHER_CHACHA20 else AESGCM(
            keys.key)
        self._iv = keys.iv
        self.seq = 0

    def _nonce(self, seq: int) -> bytes:
        mask = bytes(4) + seq.to_bytes(8, "little")
        return bytes(a ^ b for a, b in zip(self._iv, mask, strict=True))

    def seal(self, plaintext: bytes) -> bytes:
        """The next record carrying `plaintext` (1 .. RECORD_MAX bytes)."""
        head = RECORD_HEADER.pack(RECORD_MAGIC, len(plaintext), self.seq)
        body = self._aead.encrypt(self._nonce(self.seq), plaintext, head)
        self.seq += 1
        return head + body

    def open(self, record: bytes) -> bytes:
        """The plaintext of the next record, or RecordError."""
        magic, length, seq = RECORD_HEADER.unpack_from(record)
        if magic != RECORD_MAGIC or not 0 < length <= RECORD_MAX:
            raise RecordError(f"bad record header {record[:16].hex()}")
        if seq != self.seq:
            raise RecordError(f"record {seq} where {self.seq} was expected")
        try:
            out = self._aead.decrypt(self._nonce(seq), record[16:16 + length + TAG_LEN],
                                     record[:16])
        except InvalidTag:
            raise RecordError(f"record {seq} failed authentication") from None
        self.seq += 1
        return out


def split_records(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete records at the start of `buf`, and the bytes after them."""
    out = []
    while len(buf) >= RECORD_HEADER.size:
        length = RECORD_HEADER.unpack_from(buf)[1]
        end = RECORD_HEADER.size + length + TAG_LEN
        if len(buf) < end:
            break
        out.append(buf[:end])
        buf = buf[end:]
    return out, buf
