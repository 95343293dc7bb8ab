/*
 * Super-features of a chunk, for resemblance detection (docs/format.md,
 * "Resemblance and delta chunks"; gfs/superfeatures_reference.py is the
 * executable form). In short, over the chunk's bytes:
 *
 *   fp = 0
 *   for each byte b: fp = (fp << 1) + GEAR[b]              (mod 2^64)
 *                    if (fp & SUPERFEAT_SAMPLE_MASK) == 0:
 *                        for k < 12: f[k] = max(f[k], M[k] * fp + A[k])
 *   sf[j] = XXH3_64bits(f[4j .. 4j+3] as 32 little-endian bytes), j < 3
 *           (0 when those 4 features are all 0: no samples)
 *
 * GEAR is the chunker's gear table (fastcdc.h); M[k], A[k] are outputs 2k and
 * 2k + 1 of splitmix64 seeded with ASCII "HutongSF", M[k] forced odd.
 *
 * Nothing here allocates, locks or touches Python: the functions may run
 * without the GIL on buffers the caller keeps alive.
 */
#ifndef HUTONG_SUPERFEAT_H
#define HUTONG_SUPERFEAT_H

#include <stddef.h>
#include <stdint.h>

#include "fastcdc.h"

#define SUPERFEAT_FEATURES 12
#define SUPERFEAT_SUPER 3
#define SUPERFEAT_PER_SUPER (SUPERFEAT_FEATURES / SUPERFEAT_SUPER)
/* 7 bits (56..62): one sample position in 128 on random data; bit 63 is left
 * out so that two bytes can be fed per step (as in fastcdc.c). */
#define SUPERFEAT_SAMPLE_MASK 0x7F00000000000000ULL
#define SUPERFEAT_SEED 0x4875746F6E675346ULL /* "HutongSF" */

/* The 12 features of buf[0:len) (all zero when no byte is a sample position). */
void superfeat_features(const uint8_t *buf, size_t len, uint64_t features[SUPERFEAT_FEATURES]);

/* The 3 super-features of 12 features. */
void superfeat_group(const uint64_t features[SUPERFEAT_FEATURES], uint64_t sf[SUPERFEAT_SUPER]);

/* Super-features of the n chunks of buf ending at cuts[0..n) (increasing,
 * within buf, the first chunk starting at 0): 3 values per chunk into out. */
void superfeat_many(const uint8_t *buf, const uint64_t *cuts, size_t n, uint64_t *out);

/* Chunking and features in one pass: the length of the chunk starting at buf[0]
 * (exactly fastcdc_chunk_length(buf, len, p)) and its 12 features (exactly
 * superfeat_features of those bytes). The chunker's hash is reused for the
 * features from byte min_size + 63 on, where the two hashes agree. */
size_t superfeat_chunk(const uint8_t *buf, size_t len, const fastcdc_params *p,
                       uint64_t features[SUPERFEAT_FEATURES]);

/* The multipliers (12) and addends (12) of the feature transforms. */
const uint64_t *superfeat_multipliers(void);
const uint64_t *superfeat_addends(void);

#endif /* HUTONG_SUPERFEAT_H */
