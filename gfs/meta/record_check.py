"""Which metadata records do not decode, each named (fsck's pass after a read failed).

Reads stop at the first record that does not follow docs/format.md (a
`FormatError`); fsck then walks every record table row by row with the same
decoders and lists each damaged record by table and key, so one damaged record
does not hide the others.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator

from gfs.errors import FormatError
from gfs.meta import blocks
from gfs.meta import encoding as enc
from gfs.meta.block_dicts import BlockDict

__all__ = ["DECODE_ERRORS", "RECORD_DECODERS", "damaged_blocks", "damaged_rows", "reason"]

#: What a decoder raises on bytes that are not its record.
DECODE_ERRORS = (ValueError, IndexError, struct.error, OverflowError, RecursionError)

Decoder = Callable[[bytes, bytes], object]

#: Decoders of the record tables whose rows are (key, encoded record) in both engines;
#: manifests are checked by the engine (a shared body is read through it).
RECORD_DECODERS: dict[str, Decoder] = {
    "inodes": lambda k, v: enc.decode_inode(enc.decode_ino(k), v),
    "chunks": enc.decode_chunk,
    "packs": enc.decode_pack,
    "pending": enc.decode_pending,
    "pools": lambda k, v: enc.decode_pool(enc.decode_pool_key(k), v),
}


def _dirent(key: bytes, value: bytes) -> object:
    enc.decode_dirent_key(key)
    return enc.decode_dirent_ino(value)


#: The embedded engine's dirents are encoded rows too (PostgreSQL's are typed columns).
DIRENT_DECODER: Decoder = _dirent


#: The advice a decoder's message ends with (to run fsck), dropped in fsck's own list.
_ADVICE = re.compile(r"[;,] the metadata is damaged[;,] run `hutong fsck`$")


def reason(e: BaseException) -> str:
    return _ADVICE.sub("", str(e))


def damaged_rows(table: str, rows: Iterable[tuple[bytes, bytes]], decode: Decoder
                 ) -> Iterator[str]:
    """A line for each of `rows` that `decode` refuses: its table, key and error."""
    for key, value in rows:
        try:
            decode(key, value)
        except DECODE_ERRORS as e:
            yield f"damaged metadata record: table {table}, key {key.hex()}: {reason(e)}"


def damaged_blocks(table: str, packed: Iterable[tuple[bytes, bytes]], decode: Decoder,
                   dictionary: BlockDict | None = None) -> Iterator[str]:
    """A line for each packed block of `table` (whose block dictionary is `dictionary`)
    that does not decode, and for each row of a block that does whose record `decode`
    refuses."""
    for bkey, data in packed:
        try:
            keys, values = blocks.decode_block(table, bkey, data, dictionary)
        except FormatError as e:
            yield f"damaged metadata block: {reason(e)}"
            continue
        yield from damaged_rows(table, zip(keys, values, strict=True), decode)
