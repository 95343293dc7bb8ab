/* Chunk ids: xxh3-128 of each chunk, in the canonical (big-endian) byte order
 * that docs/format.md defines and xxhash.xxh3_128().digest() returns.
 *
 * Contract: `cuts` holds `n` strictly increasing chunk end offsets into `buf`
 * (the last one <= the buffer's length); `out` has room for 16 * n bytes.
 * No allocation, no I/O, no Python: safe to call without the GIL. */
#ifndef HUTONG_CHUNKID_H
#define HUTONG_CHUNKID_H

#include <stddef.h>
#include <stdint.h>

#define CHUNKID_LEN 16

void chunkid_many(const uint8_t *buf, const uint64_t *cuts, size_t n, uint8_t *out);

#endif
