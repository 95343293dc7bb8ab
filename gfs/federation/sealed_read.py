"""Opening an owner's sealed blobs read back from another entity's site, sealed deltas
included (docs/format.md "Sealed delta blobs"): a delta's base (or both bases of a
two-base delta) is fetched from the same site by the keyed id in its clear header,
decrypted and verified against the plain base id inside the delta, and the delta is
then rebuilt and verified against its own id.

    opened = open_sealed(blobs, lambda kids: site.get(kids, owner="bank-a"), keys)
    opened.raws[cid]; opened.errors[cid]; opened.bad_bases   # bases to repair whole
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gfs.codec import decode_encrypted_blob, keyed_chunk_id, sealed_bases
from gfs.delta import BaseChunkError
from gfs.errors import CorruptChunkError
from gfs.federation.auth import EntityKeys

#: Fetches sealed blobs by keyed id from the site that returned the deltas (None: absent).
GetSealed = Callable[[list[bytes]], list[bytes | None]]


@dataclass
class Opened:
    """What `open_sealed` made of the blobs: verified raw chunks, the error of each chunk
    that could not be opened, and the plain ids of bases found damaged or missing."""

    raws: dict[bytes, bytes] = field(default_factory=dict)
    errors: dict[bytes, CorruptChunkError] = field(default_factory=dict)
    bad_bases: set[bytes] = field(default_factory=set)


def open_sealed(blobs: Mapping[bytes, bytes], get: GetSealed, keys: EntityKeys) -> Opened:
    """Decrypt and verify `blobs` (plain chunk id -> sealed blob); the bases of sealed
    deltas not among `blobs` are fetched with one `get`. A delta whose base is damaged
    or missing is reported (`BaseChunkError`) against the delta, naming the base."""
    out = Opened()
    by_kid = {keyed_chunk_id(c, keys.id_key): b for c, b in blobs.items()}
    wanted: set[bytes] = set()
    for cid, blob in blobs.items():
        try:
            named = sealed_bases(blob)
        except CorruptChunkError as e:
            out.errors[cid] = e
            continue
        wanted.update(b for b in named if b not in by_kid)
    if wanted:
        kids = sorted(wanted)
        by_kid |= {k: b for k, b in zip(kids, get(kids), strict=True) if b}

    bases: dict[bytes, bytes] = {}  # opened once, however many deltas share them

    def read_base(base: bytes) -> bytes:
        if base in bases:
            return bases[base]
        blob = by_kid.get(keyed_chunk_id(base, keys.id_key))
        try:
            if blob is None:
                raise CorruptChunkError(f"chunk {base.hex()}", "the site does not hold it")
            bases[base] = decode_encrypted_blob(blob, base, keys.enc_key, keys.id_key)
            return bases[base]
        except CorruptChunkError as e:
            out.bad_bases.add(base)
            raise BaseChunkError(f"base {base.hex()}", "base chunk of a sealed delta is "
                                 f"unreadable: {e.strerror}") from e

    for cid, blob in blobs.items():
        if cid in out.errors:
            continue
        try:
            out.raws[cid] = decode_encrypted_blob(blob, cid, keys.enc_key, keys.id_key,
                                                  read_base)
        except BaseChunkError as e:
            out.errors[cid] = BaseChunkError(
                f"chunk {cid.hex()}", f"sealed delta against {e.filename}: {e.strerror}")
        except CorruptChunkError as e:
            out.errors[cid] = e
    return out
