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
#define SUPERFEAT_PREFETCH_AT(p) __builtin_prefetch(p)
/* As in fastcdc.c: keeps GEAR[x] << 1 + GEAR[y] off the loop-carried chain. */
#define SUPERFEAT_OPAQUE(x) __asm__("" : "+r"(x))
#else
#define SUPERFEAT_PREFETCH_AT(p) ((void)0)
#define SUPERFEAT_OPAQUE(x) ((void)0)
#define SUPERFEAT_UNLIKELY(x) (x)
#define SUPERFEAT_NOINLINE
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

/* Feed bytes q[k], q[k + 1] to fp, two bytes per step as in fastcdc.c: with h
 * the hash before x, y, (h1 << 1) = (h << 2) + (GEAR[x] << 1) and
 * h2 = (h << 2) + ((GEAR[x] << 1) + GEAR[y]); h1 is tested through h1 << 1
 * against the mask << 1 (the mask has no bit 63). */
#define SF_STEP2(k)                                                               \
    do {                                                                          \
        const uint64_t gx = gear[q[(k)]] << 1;                                    \
        uint64_t t = gx + gear[q[(k) + 1]];                                       \
        SUPERFEAT_OPAQUE(t);                                                      \
        const uint64_t base = fp << 2;                                            \
        const uint64_t old = fp;                                                  \
        fp = base + t;                                                            \
        if (SUPERFEAT_UNLIKELY(!((base + gx) & mask_ls)))                         \
            sample((old << 1) + gear[q[(k)]], f);                                 \
        if (SUPERFEAT_UNLIKELY(!(fp & SUPERFEAT_SAMPLE_MASK)))                    \
            sample(fp, f);                                                        \
    } while (0)

void superfeat_features(const uint8_t *buf, size_t len, uint64_t features[SUPERFEAT_FEATURES])
{
    const uint64_t *gear = fastcdc_gear_table();
    /* Values only grow from 0, so a chunk without samples keeps 12 zeros. */
    uint64_t f[SUPERFEAT_FEATURES] = {0};
    uint64_t fp = 0;
    const uint64_t mask_ls = SUPERFEAT_SAMPLE_MASK << 1;
    const uint8_t *q = buf;
    const uint8_t *const stop = buf + len;
    if (len & 1) {
        fp = gear[*q++];
        if (!(fp & SUPERFEAT_SAMPLE_MASK))
            sample(fp, f);
    }
    while (stop - q >= SUPERFEAT_BLOCK) {
        SUPERFEAT_PREFETCH_AT(q + SUPERFEAT_PREFETCH);
        const uint8_t *const block_end = q + SUPERFEAT_BLOCK;
        do {
            SF_STEP2(0);
            SF_STEP2(2);
            SF_STEP2(4);
            SF_STEP2(6);
            q += 8;
        } while (q != block_end);
    }
    for (; q != stop; q += 2)
        SF_STEP2(0);
    memcpy(features, f, sizeof f);
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
