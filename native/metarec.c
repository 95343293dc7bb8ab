/* Metadata record encodings (native/metarec.h). */
#include "metarec.h"

#include <string.h>

#define COMPACT_BIT 0x20u
#define ATIME_IS_CTIME 0x10u
#define HAS_LINKS 0x80u
#define CHUNK_COMPACT 0xFDu
#define CHUNK_MEMBER 0xFCu
#define MEMBER_CODEC 3u
#define ID_LEN 16u
#define LOCATION_SIZE 30u   /* pool u16, pack 16 B, offset u64, length u32 */
#define FIXED_CHUNK 18u     /* the fixed form's length modulo LOCATION_SIZE */

static size_t
put_varint(uint8_t *out, unsigned __int128 v)
{
    size_t n = 0;
    while (v > 0x7F) {
        out[n++] = (uint8_t)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

static unsigned __int128
zigzag(__int128 v)
{
    return v >= 0 ? (unsigned __int128)v << 1 : ((unsigned __int128)(-v) << 1) - 1;
}

int
metarec_inode_compact(const metarec_inode *in, uint8_t *out, size_t *len)
{
    if (in->mode >= (1u << 16) || in->uid >> 32 || in->gid >> 32 || in->nlink >> 32)
        return METAREC_DEFER;
    int same = in->atime_ns == in->ctime_ns;
    int links = in->nlink != 1 || in->rdev != 0;
    size_t n = 0;
    out[n++] = (uint8_t)(in->kind | COMPACT_BIT | (same ? ATIME_IS_CTIME : 0)
                         | (links ? HAS_LINKS : 0));
    const uint64_t head[6] = {in->mode, in->uid, in->gid, in->parent, in->size, in->version};
    for (int k = 0; k < 6; k++)
        n += put_varint(out + n, head[k]);
    uint64_t mtime = (uint64_t)in->mtime_ns;
    for (int k = 0; k < 8; k++)
        out[n++] = (uint8_t)(mtime >> (8 * k));
    n += put_varint(out + n, zigzag((__int128)in->ctime_ns - in->mtime_ns));
    if (!same)
        n += put_varint(out + n, zigzag((__int128)in->atime_ns - in->ctime_ns));
    if (links) {
        n += put_varint(out + n, in->nlink);
        n += put_varint(out + n, in->rdev);
    }
    *len = n;
    return METAREC_OK;
}

/* One varint of at most 10 bytes that fits in 64 bits (the reference reads up
 * to 70 bits and rejects the extra later, or fails on an encode: defer). */
static int
get_varint(const uint8_t *data, size_t len, size_t *pos, uint64_t *v)
{
    uint64_t value = 0;
    for (unsigned shift = 0; shift <= 63; shift += 7) {
        if (*pos >= len)
            return METAREC_DEFER;
        uint8_t b = data[(*pos)++];
        uint64_t part = b & 0x7Fu;
        if (shift == 63 && part > 1)
            return METAREC_DEFER;
        value |= part << shift;
        if (b < 0x80) {
            *v = value;
            return METAREC_OK;
        }
    }
    return METAREC_DEFER;
}

static __int128
unzigzag(uint64_t z)
{
    return (z & 1u) ? -(((__int128)z + 1) >> 1) : (__int128)(z >> 1);
}

int
metarec_inode_decode(const uint8_t *data, size_t len, metarec_inode *out, size_t *end)
{
    if (len < 1 || !(data[0] & COMPACT_BIT))
        return METAREC_DEFER;
    uint8_t flags = data[0];
    size_t pos = 1;
    uint64_t head[6], tail[2] = {0, 0}, links[2] = {1, 0};
    for (int k = 0; k < 6; k++)
        if (get_varint(data, len, &pos, &head[k]) != METAREC_OK)
            return METAREC_DEFER;
    if (pos + 8 > len)
        return METAREC_DEFER;
    uint64_t mtime = 0;
    for (int k = 0; k < 8; k++)
        mtime |= (uint64_t)data[pos + k] << (8 * k);
    pos += 8;
    int ntail = (flags & ATIME_IS_CTIME) ? 1 : 2;
    for (int k = 0; k < ntail; k++)
        if (get_varint(data, len, &pos, &tail[k]) != METAREC_OK)
            return METAREC_DEFER;
    if (flags & HAS_LINKS)
        for (int k = 0; k < 2; k++)
            if (get_varint(data, len, &pos, &links[k]) != METAREC_OK)
                return METAREC_DEFER;
    __int128 ctime = (__int128)(int64_t)mtime + unzigzag(tail[0]);
    __int128 atime = ntail > 1 ? ctime + unzigzag(tail[1]) : ctime;
    if (head[0] >= (1u << 16) || head[1] >> 32 || head[2] >> 32 || links[0] >> 32
        || ctime < INT64_MIN || ctime > INT64_MAX || atime < INT64_MIN || atime > INT64_MAX)
        return METAREC_DEFER;
    out->kind = (uint8_t)(flags & ~(COMPACT_BIT | ATIME_IS_CTIME | HAS_LINKS));
    out->mode = head[0];
    out->uid = head[1];
    out->gid = head[2];
    out->parent = head[3];
    out->size = head[4];
    out->version = head[5];
    out->mtime_ns = (int64_t)mtime;
    out->ctime_ns = (int64_t)ctime;
    out->atime_ns = (int64_t)atime;
    out->nlink = links[0];
    out->rdev = links[1];
    *end = pos;
    return METAREC_OK;
}

static int
new_refcount(uint64_t old, int64_t delta, uint64_t *out)
{
    __int128 r = (__int128)old + delta;
    if (r < 0 || r > (__int128)UINT64_MAX)
        return METAREC_DEFER;
    *out = (uint64_t)r;
    return METAREC_OK;
}

/* The record ended at `pos`: the padding byte must follow exactly when the
 * length would be FIXED_CHUNK modulo LOCATION_SIZE (as the reference checks). */
static int
check_end(const uint8_t *data, size_t len, size_t pos)
{
    int padded = pos % LOCATION_SIZE == FIXED_CHUNK;
    if (len != pos + (size_t)padded || (padded && data[pos]))
        return METAREC_DEFER;
    return METAREC_OK;
}

static size_t
pad(uint8_t *out, size_t n)
{
    if (n % LOCATION_SIZE == FIXED_CHUNK)
        out[n++] = 0;
    return n;
}

static int
compact_refcount(const uint8_t *data, size_t len, int64_t delta, uint8_t *out, size_t *out_len)
{
    size_t pos = 1, n = 1;
    uint64_t refcount, raw, stored, refs;
    if (get_varint(data, len, &pos, &refcount) || get_varint(data, len, &pos, &raw)
        || get_varint(data, len, &pos, &stored) || raw >> 32 || stored >> 32
        || pos + 2 > len || new_refcount(refcount, delta, &refs))
        return METAREC_DEFER;
    out[0] = CHUNK_COMPACT;
    n += put_varint(out + n, refs);
    n += put_varint(out + n, raw);
    n += put_varint(out + n, stored);
    uint8_t codec = data[pos], count = data[pos + 1];
    pos += 2;
    out[n++] = codec;
    out[n++] = count;
    for (unsigned k = 0; k < count; k++) {
        uint64_t pool, offset, length;
        if (get_varint(data, len, &pos, &pool) || pool >> 16 || len - pos < ID_LEN)
            return METAREC_DEFER;
        n += put_varint(out + n, pool);
        memcpy(out + n, data + pos, ID_LEN);
        n += ID_LEN;
        pos += ID_LEN;
        if (get_varint(data, len, &pos, &offset) || get_varint(data, len, &pos, &length)
            || length >> 32)
            return METAREC_DEFER;
        n += put_varint(out + n, offset);
        n += put_varint(out + n, length);
    }
    if (check_end(data, len, pos))
        return METAREC_DEFER;
    *out_len = pad(out, n);
    return METAREC_OK;
}

static int
member_refcount(const uint8_t *cid, const uint8_t *data, size_t len, int64_t delta,
                uint8_t *out, size_t *out_len)
{
    size_t pos = 1, n = 1;
    uint64_t refcount, raw, offset, refs;
    if (get_varint(data, len, &pos, &refcount) || get_varint(data, len, &pos, &raw)
        || len - pos < ID_LEN)
        return METAREC_DEFER;
    const uint8_t *group = data + pos;
    pos += ID_LEN;
    if (get_varint(data, len, &pos, &offset) || check_end(data, len, pos) || raw >> 32
        || offset >> 32 || memcmp(group, cid, ID_LEN) == 0
        || new_refcount(refcount, delta, &refs))
        return METAREC_DEFER;
    out[0] = CHUNK_MEMBER;
    n += put_varint(out + n, refs);
    n += put_varint(out + n, raw);
    memcpy(out + n, group, ID_LEN);
    n += ID_LEN;
    n += put_varint(out + n, offset);
    *out_len = pad(out, n);
    return METAREC_OK;
}

int
metarec_chunk_refcount(const uint8_t *cid, const uint8_t *data, size_t len, int64_t delta,
                       uint8_t *out, size_t *out_len)
{
    if (len == 0 || len % LOCATION_SIZE == FIXED_CHUNK)
        return METAREC_DEFER;   /* empty, or the fixed form: the reference's */
    if (data[0] == CHUNK_COMPACT)
        return compact_refcount(data, len, delta, out, out_len);
    if (data[0] == CHUNK_MEMBER)
        return member_refcount(cid, data, len, delta, out, out_len);
    return METAREC_DEFER;
}

static void
put_le(uint8_t *out, uint64_t v, int bytes)
{
    for (int k = 0; k < bytes; k++)
        out[k] = (uint8_t)(v >> (8 * k));
}

size_t
metarec_manifest_fixed(uint64_t version, size_t n, const uint8_t *ids, const uint32_t *lens,
                       uint8_t *out)
{
    put_le(out, version, 8);
    put_le(out + 8, n, 4);
    uint8_t *p = out + 12;
    for (size_t k = 0; k < n; k++, p += ID_LEN + 4) {
        memcpy(p, ids + k * ID_LEN, ID_LEN);
        put_le(p + ID_LEN, lens[k], 4);
    }
    return 12 + 20 * n;
}

size_t
metarec_manifest_compact(uint64_t version, size_t n, const uint8_t *ids, const uint32_t *lens,
                         uint8_t *out)
{
    size_t len = 0;
    out[len++] = 0xFD;
    len += put_varint(out + len, version);
    len += put_varint(out + len, n);
    for (size_t k = 0; k < n; k++) {
        len += put_varint(out + len, lens[k]);
        memcpy(out + len, ids + k * ID_LEN, ID_LEN);
        len += ID_LEN;
    }
    if (len % 20 == 8 || len % 20 == 12)
        out[len++] = 0;
    return len;
}

int
metarec_manifest_compact_decode(const uint8_t *data, size_t len, uint64_t *version,
                                size_t *count, size_t *id_at, uint32_t *lens)
{
    size_t pos = 1;
    uint64_t n, length;
    if (len < 1 || data[0] != 0xFD || get_varint(data, len, &pos, version) != METAREC_OK
        || get_varint(data, len, &pos, &n) != METAREC_OK || n > (len - pos) / 17)
        return METAREC_DEFER;
    for (uint64_t k = 0; k < n; k++) {
        if (get_varint(data, len, &pos, &length) != METAREC_OK || length >> 32
            || len - pos < 16)
            return METAREC_DEFER;
        lens[k] = (uint32_t)length;
        id_at[k] = pos;
        pos += 16;
    }
    size_t padded = pos % 20 == 8 || pos % 20 == 12;
    if (len != pos + padded || (padded && data[pos]))
        return METAREC_DEFER;
    *count = (size_t)n;
    return METAREC_OK;
}
