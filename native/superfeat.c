/* Super-features of chunks (see superfeat.h). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <string.h>

#include "fastcdc.h"
#include "superfeat.h"

/* splitmix64 outputs of SUPERFEAT_SEED: MULT[k] = output 2k | 1, ADD[k] =
 * output 2k + 1 (a test checks them against gfs/superfeatures_reference.py). */
static const uint64_t MULT[SUPERFEAT_FEATURES] = {
    0x15c2fa8a27bb80ebULL, 0x3e8979167fbbf509ULL, 0x62fc55ef28b7e18fULL,
    0x81a70041ee054f5fULL, 0xc1525ea1f3d73469ULL, 0x3c4e39f66d7ccdddULL,
    0xa69ff192a0cab8b7ULL, 0xa2ad6bfff8c09fddULL, 0xfd58c2356905f11dULL,
    0x3e7188781727da8fULL, 0xb9d0c6b248b49a3bULL, 0x759fda5c98d7fb5bULL};
static const uint64_t ADD[SUPERFEAT_FEATURES] = {
    0x1713aa0c6f0a90aaULL, 0x11d2d3b52ccb09a3ULL, 0x9b38925f34a459daULL,
    0xd217c120828751a8ULL, 0xb6972b654559e204ULL, 0x0da5979974ebd2efULL,
    0x2ded88ed6865cebbULL, 0x1609f3acecbf1b48ULL, 0xb199f7dcafaa8e80ULL,
    0x63563de9a561e406ULL, 0xf1481a6e6f76df9cULL, 0x8b7782ee00095ec2ULL};

const uint64_t *superfeat_multipliers(void) { return MULT; }
const uint64_t *superfeat_addends(void) { return ADD; }

#if defined(__GNUC__)
#define SUPERFEAT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SUPERFEAT_NOINLINE __attribute__((noinline))
#define SUPERFEAT_ALWAYS_INLINE inline __attribute__((always_inline))
#define SUPERFEAT_PREFETCH_AT(p) __builtin_prefetch(p)
#else
#define SUPERFEAT_PREFETCH_AT(p) ((void)0)
#define SUPERFEAT_UNLIKELY(x) (x)
#define SUPERFEAT_NOINLINE
#define SUPERFEAT_ALWAYS_INLINE inline
#endif

#define SUPERFEAT_BLOCK 64
#define SUPERFEAT_PREFETCH 2048

/* Rare (1 byte in 128): kept out of line so the scan loop stays small. */
static SUPERFEAT_NOINLINE void sample(uint64_t fp, uint64_t *f)
{
    for (int k = 0; k < SUPERFEAT_FEATURES; k++) {
        const uint64_t v = MULT[k] * fp + ADD[k];
        f[k] = v > f[k] ? v : f[k];
    }
}

/* Feed buf[i:end) to the gear hash fp (its value before byte i): with
 * `cutting`, test each byte's hash against the chunker's cut mask (fastcdc.c);
 * with `sampling`, sample features into f. The flags are constants at each
 * call, so each use compiles to its own loop. Two bytes per step, as in
 * fastcdc.c: with h the hash before x, y, fp first holds (h1 << 1) = (h << 2) +
 * GEAR_LS[x], tested against a mask << 1 (no mask has bit 63), then h2 = (h1 <<
 * 1) + GEAR[y]; a sample at x takes h1 itself, (h << 1) + GEAR[x], from the
 * kept h. Per byte the sample test comes before the cut test, so a cut leaves
 * the bytes after it unsampled. Returns the chunk length at the first cut hit,
 * else 0 with *fpp the hash after byte end - 1. */
#define SF_FSTEP2(k)                                                              \
    do {                                                                          \
        const uint64_t old = fp;                                                  \
        fp = (fp << 2) + gear_ls[q[(k)]];                                         \
        if (sampling && SUPERFEAT_UNLIKELY(!(fp & smask_ls)))                     \
            sample((old << 1) + gear[q[(k)]], f);                                 \
        if (cutting && SUPERFEAT_UNLIKELY(!(fp & cmask_ls)))                      \
            return (size_t)(q - buf) + (k) + 1;                                   \
        fp += gear[q[(k) + 1]];                                                   \
        if (sampling && SUPERFEAT_UNLIKELY(!(fp & SUPERFEAT_SAMPLE_MASK)))        \
            sample(fp, f);                                                        \
        if (cutting && SUPERFEAT_UNLIKELY(!(fp & cmask)))                         \
            return (size_t)(q - buf) + (k) + 2;                                   \
    } while (0)

static SUPERFEAT_ALWAYS_INLINE size_t
scan_fused(const uint8_t *restrict buf, size_t i, size_t end, uint64_t *restrict fpp,
           uint64_t cmask, uint64_t *restrict f, const int sampling, const int cutting)
{
    const uint64_t *gear = fastcdc_gear_table();
    const uint64_t *gear_ls = fastcdc_gear_ls_table();
    const uint64_t cmask_ls = cmask << 1;
    const uint64_t smask_ls = SUPERFEAT_SAMPLE_MASK << 1;
    uint64_t fp = *fpp;
    const uint8_t *q = buf + i;
    if ((end - i) & 1) {
        fp = (fp << 1) + gear[*q];
        if (sampling && !(fp & SUPERFEAT_SAMPLE_MASK))
            sample(fp, f);
        if (cutting && !(fp & cmask))
            return i + 1;
        q++;
    }
    const uint8_t *const stop = buf + end;
    while (stop - q >= SUPERFEAT_BLOCK) {
        SUPERFEAT_PREFETCH_AT(q + SUPERFEAT_PREFETCH);
        const uint8_t *const block_end = q + SUPERFEAT_BLOCK;
        do {
            SF_FSTEP2(0);
            SF_FSTEP2(2);
            SF_FSTEP2(4);
            SF_FSTEP2(6);
            q += 8;
        } while (q != block_end);
    }
    for (; q != stop; q += 2)
        SF_FSTEP2(0);
    *fpp = fp;
    return 0;
}

/* The window the chunker's hash covers: from byte min_size + 63 of a chunk on,
 * its hash (started at min_size) equals the feature hash (started at 0). */
#define SUPERFEAT_WINDOW 64

void superfeat_features(const uint8_t *buf, size_t len, uint64_t features[SUPERFEAT_FEATURES])
{
    /* Values only grow from 0, so a chunk without samples keeps 12 zeros. */
    uint64_t f[SUPERFEAT_FEATURES] = {0};
    uint64_t fp = 0;
    if (len)
        scan_fused(buf, 0, len, &fp, 0, f, 1, 0);
    memcpy(features, f, sizeof f);
}

size_t superfeat_chunk(const uint8_t *buf, size_t len, const fastcdc_params *p,
                       uint64_t features[SUPERFEAT_FEATURES])
{
    const size_t n = len < p->max_size ? len : p->max_size;
    if (n <= p->min_size) {
        superfeat_features(buf, n, features);
        return n;
    }
    const size_t normal = p->avg_size < n ? p->avg_size : n;
    size_t pre = p->min_size + SUPERFEAT_WINDOW - 1;
    if (pre > n)
        pre = n;
    uint64_t fp = 0;
    /* Bytes [min_size, pre): the chunker alone (the features take them below). */
    size_t cut = scan_fused(buf, p->min_size, pre < normal ? pre : normal, &fp, p->mask_s,
                            NULL, 0, 1);
    if (!cut && pre > normal)
        cut = scan_fused(buf, normal, pre, &fp, p->mask_l, NULL, 0, 1);
    superfeat_features(buf, cut ? cut : pre, features);
    if (cut)
        return cut;
    /* Bytes [pre, n): one pass for both. */
    if (pre < normal)
        cut = scan_fused(buf, pre, normal, &fp, p->mask_s, features, 1, 1);
    if (!cut)
        cut = scan_fused(buf, pre > normal ? pre : normal, n, &fp, p->mask_l, features, 1, 1);
    return cut ? cut : n;
}

void superfeat_group(const uint64_t features[SUPERFEAT_FEATURES], uint64_t sf[SUPERFEAT_SUPER])
{
    for (int j = 0; j < SUPERFEAT_SUPER; j++) {
        uint8_t bytes[8 * SUPERFEAT_PER_SUPER];
        for (int k = 0; k < SUPERFEAT_PER_SUPER; k++) {
            const uint64_t v = features[j * SUPERFEAT_PER_SUPER + k];
            for (int b = 0; b < 8; b++)
                bytes[8 * k + b] = (uint8_t)(v >> (8 * b));
        }
        uint64_t any = 0;
        for (int k = 0; k < SUPERFEAT_PER_SUPER; k++)
            any |= features[j * SUPERFEAT_PER_SUPER + k];
        sf[j] = any ? XXH3_64bits(bytes, sizeof bytes) : 0;
    }
}

void superfeat_many(const uint8_t *buf, const uint64_t *cuts, size_t n, uint64_t *out)
{
    uint64_t start = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t f[SUPERFEAT_FEATURES];
        superfeat_features(buf + start, (size_t)(cuts[i] - start), f);
        superfeat_group(f, out + SUPERFEAT_SUPER * i);
        start = cuts[i];
    }
}
