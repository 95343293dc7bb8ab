"""Content-defined chunking (normalised FastCDC), backed by the C core `gfs._native`.

The boundaries are part of the on-disk format (docs/format.md, "Content-defined
chunking"). A chunking is given by its *cut points*: the end offsets
(exclusive) of the chunks, in order; the last one is the length of the data.

* `cut_points(buf, params)`: the cut points of any C-contiguous buffer
  (bytes, bytearray, memoryview, mmap), without copying and without the GIL.
* `iter_chunks(buf, params)`: zero-copy `memoryview` slices of `buf`.
* `iter_stream_chunks(f, params)`: chunks of a binary stream as `bytes`, with
  memory bounded by about `block_size + max_size` and the same boundaries as
  one call on the whole content; `iter_stream_blocks(f, params)` gives the
  stream's blocks with their cut points instead (no copy of each chunk).
* `open_chunked(path, params)`: a regular file memory-mapped, for ingest::

      with open_chunked(path, params) as (view, cuts):
          for start, end in spans(cuts):
              store(view[start:end])

  `view` is a read-only memoryview of the file and stays valid inside the
  block; on exit the view is released and the file unmapped. Slices taken of
  `view` must not be kept past the block (copy them with `bytes()`); if some
  are, the mapping lives on until the last one is garbage-collected.
* `chunk_file(path, params)`: the same as an iterator of memoryviews.

There is no pure-Python fallback: without the extension, importing this module
raises `NativeExtensionMissing` (`gfs.cdc_reference` is for the tests only).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from gfs.errors import ConfigError, NativeExtensionMissing

try:
    import gfs._native as _native
except ImportError as exc:  # pragma: no cover - depends on the build
    raise NativeExtensionMissing(
        "the C extension gfs._native is not built; run `make setup` or "
        "`.venv/bin/python setup.py build_ext --inplace` in the source tree "
        f"({exc})"
    ) from exc

__all__ = [
    "DEFAULT_PARAMS",
    "MAX_SIZE_LIMIT",
    "MIN_SIZE_LIMIT",
    "Buffer",
    "ChunkParams",
    "chunk_file",
    "cut_points",
    "iter_chunks",
    "iter_stream_blocks",
    "iter_stream_chunks",
    "open_chunked",
    "spans",
]

#: What the chunker accepts: any C-contiguous buffer of bytes.
Buffer = bytes | bytearray | memoryview | mmap.mmap

MIN_SIZE_LIMIT = 64
MAX_SIZE_LIMIT = 1 << 30


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """Chunk sizes: 64 <= min_size <= avg_size <= max_size <= 2**30, avg_size a power of 2."""

    min_size: int = 16384
    avg_size: int = 65536
    max_size: int = 262144

    def __post_init__(self) -> None:
        for name in ("min_size", "avg_size", "max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"chunking {name} must be an integer, got {value!r}")
        if not MIN_SIZE_LIMIT <= self.min_size <= self.avg_size:
            raise ConfigError(
                f"chunking min_size must be in [{MIN_SIZE_LIMIT}, avg_size={self.avg_size}], "
                f"got {self.min_size}"
            )
        if self.avg_size & (self.avg_size - 1):
            raise ConfigError(f"chunking avg_size must be a power of two, got {self.avg_size}")
        if not self.avg_size <= self.max_size <= MAX_SIZE_LIMIT:
            raise ConfigError(
                f"chunking max_size must be in [avg_size={self.avg_size}, {MAX_SIZE_LIMIT}], "
                f"got {self.max_size}"
            )


DEFAULT_PARAMS = ChunkParams()


def cut_points(buf: Buffer, params: ChunkParams = DEFAULT_PARAMS, *,
               eof: bool = True) -> list[int]:
    """Chunk end offsets (exclusive, increasing) of `buf`; `[]` for empty data.

    With `eof=False`, `buf` is a prefix of a longer input: chunking stops before
    the first chunk that has fewer than `max_size` bytes from its start to the
    end of `buf`, so continuing from the last cut with more data gives the
    boundaries of the whole input. Raises BufferError if `buf` is not
    C-contiguous.
    """
    return _native.cut_points(buf, params.min_size, params.avg_size, params.max_size, eof)


def chunk_ids(buf: Buffer, cuts: list[int]) -> bytes:
    """The xxh3-128 ids of the chunks of `buf` ending at `cuts`, 16 bytes each, concatenated
    (equal to `gfs.codec.chunk_id` of each chunk; computed in C without the GIL)."""
    return _native.chunk_ids(buf, cuts)


def superfeatures(buf: Buffer, cuts: list[int]) -> bytes:
    """The resemblance super-features of the chunks ending at `cuts`: 3 u64 LE per
    chunk (docs/format.md, "Resemblance and delta chunks"; see gfs.resemblance)."""
    return _native.superfeatures(buf, cuts)


def index_keys_many(chunks: Sequence[Buffer]) -> list[list[bytes]]:
    """The resemblance index keys of each buffer of `chunks` taken as one chunk (see
    gfs.resemblance.index_keys), in one native call that releases the GIL for the batch."""
    return _native.index_keys_many(chunks)


def cut_superfeatures(buf: Buffer, params: ChunkParams = DEFAULT_PARAMS
                      ) -> tuple[list[int], bytes]:
    """`cut_points(buf, params)` and `superfeatures` of those chunks, in one native pass."""
    return _native.cut_superfeatures(buf, params.min_size, params.avg_size, params.max_size)


def load_chunked_many(paths: Sequence[str | os.PathLike[str]],
                      params: ChunkParams = DEFAULT_PARAMS, limit: int = 8 << 20,
                      budget: int = 1 << 62,
                      ) -> list[tuple[bytes, list[int], bytes] | OSError | None]:
    """Each file read whole, cut and hashed: (data, cuts, ids), or None if it is larger
    than `limit` (chunk it as a stream instead); in order, in one C call without the
    GIL for the whole batch; a file that cannot be read gives its OSError in its place (raised
    by the caller at that file's turn). Files are read whole (held in memory) only
    while the batch has read less than `budget` bytes; the rest give None, as a file
    over `limit` does (the caller streams them): at most `budget + limit` bytes."""
    return _native.load_chunked_many([os.fspath(p) for p in paths], params.min_size,
                                     params.avg_size, params.max_size, limit, budget)


def spans(cuts: list[int], start: int = 0) -> Iterator[tuple[int, int]]:
    """`(start, end)` of each chunk, from cut points that follow offset `start`."""
    for end in cuts:
        yield start, end
        start = end


def iter_chunks(buf: Buffer, params: ChunkParams = DEFAULT_PARAMS) -> Iterator[memoryview]:
    """The chunks of `buf` as zero-copy read-only memoryview slices."""
    view = memoryview(buf).cast("B").toreadonly()
    for start, end in spans(cut_points(view, params)):
        yield view[start:end]


def iter_stream_blocks(f: BinaryIO, params: ChunkParams = DEFAULT_PARAMS,
                       block_size: int = 8 << 20) -> Iterator[tuple[memoryview, list[int]]]:
    """Stream `f` (read to its end) in blocks: `(block, cuts)`, the cut points (relative to
    the block) of the chunks each block completes, the same as those of `cut_points` on
    the whole content.

    Each block is a read-only view of a fresh buffer of at most `block_size + max_size`
    bytes, so slices of it may be kept after the next one is read (they keep its
    buffer alive); the bytes past its last cut begin the next block.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be positive, got {block_size}")
    readinto = getattr(f, "readinto", None)
    carry = b""
    eof = False
    while not eof:
        buf = bytearray(block_size + params.max_size)
        view = memoryview(buf)
        fill = len(carry)
        view[:fill] = carry
        while not eof and fill < len(buf):
            if readinto is not None:
                n = readinto(view[fill:]) or 0
            else:
                data = f.read(len(buf) - fill)
                n = len(data)
                view[fill:fill + n] = data
            eof = n == 0
            fill += n
        cuts = cut_points(view[:fill], params, eof=eof)
        if cuts:
            yield view[:cuts[-1]].toreadonly(), cuts
        carry = bytes(view[cuts[-1] if cuts else 0:fill])


def iter_stream_chunks(f: BinaryIO, params: ChunkParams = DEFAULT_PARAMS,
                       block_size: int = 8 << 20) -> Iterator[bytes]:
    """The chunks of stream `f` (read to its end) as `bytes`.

    Holds at most about `block_size + max_size` bytes of input; the boundaries equal
    those of `cut_points` on the whole content (`iter_stream_blocks`).
    """
    for block, cuts in iter_stream_blocks(f, params, block_size):
        for start, end in spans(cuts):
            yield bytes(block[start:end])


@contextlib.contextmanager
def open_chunked(path: str | os.PathLike[str],
                 params: ChunkParams = DEFAULT_PARAMS) -> Iterator[tuple[memoryview, list[int]]]:
    """Map the file at `path` and chunk it: yields `(view, cuts)`.

    `view` is a read-only memoryview of the whole file (empty for an empty
    file) and `cuts` its cut points; see the module docstring for lifetime.
    Files that cannot be mapped (pipes, devices) are read into memory. The
    file must not be truncated while mapped (reading a vanished page is a
    SIGBUS).
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            data = memoryview(f.read()).toreadonly()
            try:
                yield data, cut_points(data, params)
            finally:
                data.release()
            return
        if st.st_size == 0:
            yield memoryview(b""), []
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        yield view, cut_points(view, params)
    finally:
        view.release()
        # BufferError: the caller kept slices; the mapping is closed when they go.
        with contextlib.suppress(BufferError):
            mapped.close()


def chunk_file(path: str | os.PathLike[str],
               params: ChunkParams = DEFAULT_PARAMS) -> Iterator[memoryview]:
    """The chunks of the file at `path` as memoryviews of a mapping of it.

    The file is unmapped when the iterator finishes or is closed; views kept
    after that keep the mapping alive until they are garbage-collected.
    """
    with open_chunked(path, params) as (view, cuts):
        for start, end in spans(cuts):
            yield view[start:end]
