/* xxh3-128 chunk ids over a buffer and its cut points (see chunkid.h). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "chunkid.h"

void
chunkid_many(const uint8_t *buf, const uint64_t *cuts, size_t n, uint8_t *out)
{
    uint64_t start = 0;
    for (size_t k = 0; k < n; k++) {
        XXH128_hash_t h = XXH3_128bits(buf + start, (size_t)(cuts[k] - start));
        XXH128_canonicalFromHash((XXH128_canonical_t *)(void *)(out + CHUNKID_LEN * k), h);
        start = cuts[k];
    }
}
