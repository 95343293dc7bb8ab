"""Reference FastCDC (normalised, level 2): plain Python, one byte at a time.

This is the executable form of docs/format.md, section "Content-defined
chunking". It is slow and used only by the tests, which check that the native
chunker (`gfs._native`) gives exactly the same boundaries.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1

#: Initial state of the splitmix64 generator of the gear table: ASCII "HutongCD".
GEAR_SEED = 0x4875746F_6E674344
GOLDEN_GAMMA = 0x9E3779B97F4A7C15

MIN_SIZE_LIMIT = 64
MAX_SIZE_LIMIT = 1 << 30


def splitmix64(count: int, seed: int) -> list[int]:
    """The first `count` outputs of a splitmix64 generator started at `seed`."""
    out = []
    state = seed
    for _ in range(count):
        state = (state + GOLDEN_GAMMA) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


GEAR: list[int] = splitmix64(256, GEAR_SEED)


def spread_mask(nbits: int) -> int:
    """A mask of `nbits` (1..48) bits: bit `62 - (k * 48) // nbits` for k in 0..nbits-1."""
    mask = 0
    for k in range(nbits):
        mask |= 1 << (62 - (k * 48) // nbits)
    return mask


def masks(avg_size: int) -> tuple[int, int]:
    """(mask_s, mask_l) for `avg_size` = 2**b: b + 2 and b - 2 bits."""
    b = avg_size.bit_length() - 1
    return spread_mask(b + 2), spread_mask(b - 2)


def check_params(min_size: int, avg_size: int, max_size: int) -> None:
    """Raise ValueError unless 64 <= min <= avg <= max <= 2**30 and avg is a power of two."""
    if not MIN_SIZE_LIMIT <= min_size <= avg_size:
        raise ValueError(f"min_size must be in [{MIN_SIZE_LIMIT}, avg_size], got {min_size}")
    if avg_size & (avg_size - 1):
        raise ValueError(f"avg_size must be a power of two, got {avg_size}")
    if not avg_size <= max_size <= MAX_SIZE_LIMIT:
        raise ValueError(f"max_size must be in [avg_size, {MAX_SIZE_LIMIT}], got {max_size}")


def chunk_length(data: bytes, start: int, end: int, min_size: int, avg_size: int,
                 max_size: int) -> int:
    """Length of the chunk that starts at `start`, given that the data ends at `end`."""
    mask_s, mask_l = masks(avg_size)
    n = min(end - start, max_size)
    if n <= min_size:
        return n
    fp = 0
    for i in range(min_size, n):
        fp = ((fp << 1) + GEAR[data[start + i]]) & MASK64
        mask = mask_s if i < avg_size else mask_l
        if fp & mask == 0:
            return i + 1
    return n


def cut_points(data: bytes, min_size: int, avg_size: int, max_size: int,
               eof: bool = True) -> list[int]:
    """Chunk end offsets (exclusive) of `data`.

    With `eof` false the data is a prefix of a longer input: a chunk is only
    emitted if at least `max_size` bytes follow its start.
    """
    check_params(min_size, avg_size, max_size)
    cuts = []
    start = 0
    end = len(data)
    while start < end and (eof or end - start >= max_size):
        start += chunk_length(data, start, end, min_size, avg_size, max_size)
        cuts.append(start)
    return cuts
