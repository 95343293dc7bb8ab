/*
 * Normalised FastCDC (level 2): content-defined chunk boundaries.
 *
 * The boundaries are part of the on-disk format; docs/format.md, section
 * "Content-defined chunking", is the contract and gfs/cdc_reference.py its
 * executable form. In short, for a chunk starting at s (all offsets relative
 * to s, n = min(bytes left, max_size)):
 *
 *   if n <= min_size the chunk is n bytes long; otherwise
 *   fp = 0
 *   for i in [min_size, n):
 *       fp = (fp << 1) + GEAR[byte i]                  (mod 2^64)
 *       if (fp & (i < avg_size ? mask_s : mask_l)) == 0: chunk is i + 1 bytes
 *   chunk is n bytes                                    (forced cut)
 *
 * GEAR is the first 256 outputs of splitmix64 seeded with ASCII "HutongCD";
 * with b = log2(avg_size), mask_s = fastcdc_spread_mask(b + 2) and
 * mask_l = fastcdc_spread_mask(b - 2), where fastcdc_spread_mask(k) sets bit
 * 62 - (j * 48) / k for j in [0, k). Bit 63 is never used, so a hash shifted
 * left by one can be tested against a mask shifted left by one (the two bytes
 * per step trick of FastCDC 2020).
 *
 * Nothing here allocates, locks or touches Python: the functions may run
 * without the GIL on buffers the caller keeps alive.
 */
#ifndef HUTONG_FASTCDC_H
#define HUTONG_FASTCDC_H

#include <stddef.h>
#include <stdint.h>

/* Bounds of the parameters: 64 <= min <= avg <= max <= 2^30, avg = 2^b. */
#define FASTCDC_MIN_SIZE_LIMIT 64u
#define FASTCDC_MAX_SIZE_LIMIT (1u << 30)

/* Status codes of fastcdc_params_init. */
#define FASTCDC_OK 0
#define FASTCDC_EMIN (-1) /* min_size < 64 or min_size > avg_size */
#define FASTCDC_EAVG (-2) /* avg_size is not a power of two */
#define FASTCDC_EMAX (-3) /* max_size < avg_size or max_size > 2^30 */

typedef struct {
    size_t min_size;
    size_t avg_size;
    size_t max_size;
    uint64_t mask_s;  /* tested at offsets [min_size, avg_size) */
    uint64_t mask_l;  /* tested at offsets [avg_size, max_size) */
} fastcdc_params;

/* Validate the sizes and fill *p (masks included). Returns FASTCDC_OK or one
 * of the FASTCDC_E* codes; *p is only written on success. */
int fastcdc_params_init(fastcdc_params *p, uint64_t min_size, uint64_t avg_size,
                        uint64_t max_size);

/* Human-readable text of a status code (static storage). */
const char *fastcdc_strerror(int status);

/* The mask with k bits (1 <= k <= 48) described above. */
uint64_t fastcdc_spread_mask(unsigned k);

/* The gear table (256 entries). */
const uint64_t *fastcdc_gear_table(void);

/* The gear table shifted left by one (256 entries: GEAR[i] << 1 mod 2^64). */
const uint64_t *fastcdc_gear_ls_table(void);

/* Length of the chunk starting at buf[0] when the data ends at buf[len]
 * (len > 0): a value in [1, min(len, max_size)]. */
size_t fastcdc_chunk_length(const uint8_t *buf, size_t len, const fastcdc_params *p);

/* Chunk the data buf[start:len), start being a chunk boundary (0 at first).
 * Writes up to out_cap chunk end offsets (exclusive, relative to buf, strictly
 * increasing) to out and returns how many it wrote; *next is set to the start
 * of the first chunk not emitted (the last end written, or start).
 *
 * With eof != 0 the data ends at len: chunking goes on to len. With eof == 0
 * buf is a prefix of a longer input and a chunk is emitted only if at least
 * max_size bytes follow its start, so that calling again with more data from
 * *next gives the same boundaries as one call on the whole input.
 * If the return value equals out_cap, call again from *next for more. */
size_t fastcdc_cut_points(const uint8_t *buf, size_t len, size_t start,
                          const fastcdc_params *p, int eof, uint64_t *out,
                          size_t out_cap, size_t *next);

#endif /* HUTONG_FASTCDC_H */
