/* Core loops of the OT-extension PSI; see psi_ot.h for the contract and
 * docs/privacy.md for the protocol (KKRT16). Portable x86-64: SSE2 for the bit
 * transpose, AES and SHA-256 through OpenSSL EVP (AES-NI / SHA-NI when present). */
#include "psi_ot.h"

#include <emmintrin.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static size_t bin_of(const uint8_t *id, int h, size_t bins) {
    return (size_t)(((uint64_t)le32(id + 4 * h) * (uint64_t)bins) >> 32);
}

/* Algorithms fetched once (pso_init): OpenSSL 3 looks a legacy EVP_sha256() up again
 * on every init, which tripled the cost of hashing one 72-byte message. */
static EVP_MD *SHA256_MD;
static EVP_CIPHER *AES_CTR, *AES_ECB;

int pso_init(void) {
    if (SHA256_MD == NULL) SHA256_MD = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    if (AES_CTR == NULL) AES_CTR = EVP_CIPHER_fetch(NULL, "AES-128-CTR", NULL);
    if (AES_ECB == NULL) AES_ECB = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
    return SHA256_MD && AES_CTR && AES_ECB ? 0 : -1;
}

/* Streaming hash contexts are reused: one EVP_MD_CTX per call of a bulk function. */
static int sha256_prefix(EVP_MD_CTX *ctx, uint8_t *out, size_t ob,
                         const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    uint8_t d[32];
    unsigned int dl = 0;
    if (EVP_DigestInit_ex2(ctx, SHA256_MD, NULL) != 1 || EVP_DigestUpdate(ctx, a, alen) != 1 ||
        EVP_DigestUpdate(ctx, b, blen) != 1 || EVP_DigestFinal_ex(ctx, d, &dl) != 1)
        return -1;
    memcpy(out, d, ob);
    return 0;
}

int pso_hash_items(uint8_t *out, const uint8_t key[32], const uint8_t *data,
                   const void *offsets, int off64, size_t start, size_t n) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = ctx == NULL ? -1 : 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        size_t a, b;
        if (off64) {
            a = (size_t)((const int64_t *)offsets)[start + i];
            b = (size_t)((const int64_t *)offsets)[start + i + 1];
        } else {
            a = (size_t)((const int32_t *)offsets)[start + i];
            b = (size_t)((const int32_t *)offsets)[start + i + 1];
        }
        rc = sha256_prefix(ctx, out + PSO_ID * i, PSO_ID, key, 32, data + a, b - a);
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

void pso_transpose(const uint8_t *in, uint8_t *out, size_t nr, size_t nc) {
    size_t inb = nc / 8, outb = nr / 8;
    uint8_t g[16];
    for (size_t rr = 0; rr < nr; rr += 16) {
        for (size_t cb = 0; cb < inb; cb++) {
            for (int i = 0; i < 16; i++) g[i] = in[(rr + (size_t)i) * inb + cb];
            __m128i x = _mm_loadu_si128((const __m128i *)g);
            for (int k = 7; k >= 0; k--) {
                int m = _mm_movemask_epi8(x);  /* bit 7 of each byte: column cb*8+k */
                uint8_t *o = out + (cb * 8 + (size_t)k) * outb + rr / 8;
                o[0] = (uint8_t)m;
                o[1] = (uint8_t)(m >> 8);
                x = _mm_slli_epi64(x, 1);
            }
        }
    }
}

static const uint8_t ZERO[PSO_ROW * 128];

int pso_prg_columns(uint8_t *cols, const uint8_t *keys, size_t w, size_t start, size_t rows) {
    size_t nb = rows / 8;
    uint8_t iv[16] = {0};
    uint64_t ctr = (uint64_t)(start / 128);  /* 128 rows = 16 bytes = one AES block */
    for (int i = 0; i < 8; i++) iv[15 - i] = (uint8_t)(ctr >> (8 * i));
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return -1;
    int rc = 0;
    for (size_t c = 0; c < w && rc == 0; c++) {
        if (EVP_EncryptInit_ex2(ctx, AES_CTR, keys + 16 * c, iv, NULL) != 1) {
            rc = -1;
            break;
        }
        for (size_t off = 0; off < nb && rc == 0; off += sizeof ZERO) {
            int len = 0;
            size_t take = nb - off < sizeof ZERO ? nb - off : sizeof ZERO;
            if (EVP_EncryptUpdate(ctx, cols + c * nb + off, &len, ZERO, (int)take) != 1)
                rc = -1;
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int pso_code(uint8_t *out, const uint8_t code_key[16], const uint8_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            memcpy(out + PSO_ROW * i + 16 * b, ids + PSO_ID * i, 16);
            out[PSO_ROW * i + 16 * b + 15] ^= (uint8_t)b;
        }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return -1;
    int rc = EVP_EncryptInit_ex2(ctx, AES_ECB, code_key, NULL, NULL) == 1 ? 0 : -1;
    if (rc == 0) EVP_CIPHER_CTX_set_padding(ctx, 0);
    size_t total = n * PSO_ROW, step = (size_t)1 << 24;
    for (size_t off = 0; off < total && rc == 0; off += step) {
        int len = 0;
        size_t take = total - off < step ? total - off : step;
        if (EVP_EncryptUpdate(ctx, out + off, &len, out + off, (int)take) != 1) rc = -1;
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* xorshift64*: only steers the eviction walk, which is public. */
static uint64_t next_rand(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

#define MAX_KICKS 512

int pso_cuckoo(int32_t *table, size_t bins, size_t stash, const uint8_t *ids, size_t n,
               uint64_t seed) {
    for (size_t j = 0; j < bins + stash; j++) table[j] = -1;
    uint64_t st = seed | 1;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t cur = (int32_t)i;
        int placed = 0;
        size_t last = (size_t)-1;
        for (int kick = 0; kick < MAX_KICKS && !placed; kick++) {
            const uint8_t *id = ids + PSO_ID * (size_t)cur;
            for (int h = 0; h < 3; h++) {
                size_t b = bin_of(id, h, bins);
                if (table[b] < 0) {
                    table[b] = cur;
                    placed = 1;
                    break;
                }
            }
            if (placed) break;
            size_t b;  /* evict from a random bin of cur other than the one it left */
            do {
                b = bin_of(id, (int)(next_rand(&st) % 3), bins);
            } while (b == last && !(bin_of(id, 0, bins) == bin_of(id, 1, bins) &&
                                    bin_of(id, 1, bins) == bin_of(id, 2, bins)));
            int32_t out = table[b];
            table[b] = cur;
            cur = out;
            last = b;
        }
        if (!placed) {
            if (used == stash) return -1;
            table[bins + used++] = cur;
        }
    }
    return (int)used;
}

int pso_simple(int64_t *offs, uint32_t *items, const uint8_t *ids, size_t n, size_t bins) {
    memset(offs, 0, (bins + 1) * sizeof *offs);
    for (size_t i = 0; i < n; i++) {
        size_t b[3];
        for (int h = 0; h < 3; h++) {
            b[h] = bin_of(ids + PSO_ID * i, h, bins);
            if ((h >= 1 && b[h] == b[0]) || (h == 2 && b[2] == b[1])) continue;
            offs[b[h] + 1]++;
        }
    }
    for (size_t j = 0; j < bins; j++) offs[j + 1] += offs[j];
    int64_t *fill = malloc(bins * sizeof *fill);
    if (fill == NULL) return -1;
    memcpy(fill, offs, bins * sizeof *fill);
    for (size_t i = 0; i < n; i++) {
        size_t b[3];
        for (int h = 0; h < 3; h++) {
            b[h] = bin_of(ids + PSO_ID * i, h, bins);
            if ((h >= 1 && b[h] == b[0]) || (h == 2 && b[2] == b[1])) continue;
            items[fill[b[h]]++] = (uint32_t)i;
        }
    }
    free(fill);
    return 0;
}

/* PRG(keys) rows [start, start + rows) into `out` (rows x 64), via a scratch column matrix. */
static int prg_rows(uint8_t *out, uint8_t *cols, const uint8_t *keys, size_t start, size_t rows) {
    if (pso_prg_columns(cols, keys, PSO_W, start, rows) != 0) return -1;
    pso_transpose(cols, out, PSO_W, rows);
    return 0;
}

static int hash_rows(EVP_MD_CTX *ctx, uint8_t *out, size_t ob, size_t j, const uint8_t *row) {
    uint8_t jb[8];
    uint64_t jj = (uint64_t)j;
    memcpy(jb, &jj, 8);
    return sha256_prefix(ctx, out, ob, jb, 8, row, PSO_ROW);
}

int pso_recv_block(uint8_t *u, uint8_t *vals, size_t ob, const uint8_t *k0, const uint8_t *k1,
                   const uint8_t code_key[16], const uint8_t *r, size_t start, size_t rows) {
    size_t sz = rows * PSO_ROW;
    uint8_t *cols = malloc(sz), *t = malloc(sz), *d = malloc(sz);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = (cols && t && d && ctx) ? 0 : -1;
    if (rc == 0) rc = prg_rows(t, cols, k0, start, rows);
    if (rc == 0) rc = prg_rows(u, cols, k1, start, rows);
    if (rc == 0) rc = pso_code(d, code_key, r, rows);
    if (rc == 0) {
        for (size_t i = 0; i < sz; i++) u[i] ^= t[i] ^ d[i];
        for (size_t j = 0; j < rows && rc == 0; j++)
            rc = hash_rows(ctx, vals + ob * j, ob, start + j, t + PSO_ROW * j);
    }
    EVP_MD_CTX_free(ctx);
    free(cols);
    free(t);
    free(d);
    return rc;
}

#define CODE_BATCH 4096

/* H(j, Q_j ^ (C(y) & s)) for a batch of (bin j, item id y) pairs. */
static int flush_codes(EVP_MD_CTX *ctx, uint8_t *vals, size_t ob, long long *written,
                       const uint8_t *q, const uint8_t *s, const uint8_t *code_key,
                       const uint8_t *bid, const size_t *bj, uint8_t *code, size_t fill,
                       size_t start) {
    if (pso_code(code, code_key, bid, fill) != 0) return -1;
    for (size_t i = 0; i < fill; i++) {
        uint8_t row[PSO_ROW];
        const uint8_t *qj = q + PSO_ROW * (bj[i] - start);
        for (size_t c = 0; c < PSO_ROW; c++) row[c] = qj[c] ^ (code[PSO_ROW * i + c] & s[c]);
        if (hash_rows(ctx, vals + ob * (size_t)*written, ob, bj[i], row) != 0) return -1;
        (*written)++;
    }
    return 0;
}

long long pso_send_block(uint8_t *vals, size_t ob, const uint8_t *ks, const uint8_t s[PSO_ROW],
                         const uint8_t code_key[16], const uint8_t *u, size_t start, size_t rows,
                         const int64_t *offs, const uint32_t *items, size_t bins, size_t stash,
                         const uint8_t *ids, size_t n) {
    size_t sz = rows * PSO_ROW;
    uint8_t *cols = malloc(sz), *q = malloc(sz);
    uint8_t *bid = malloc(CODE_BATCH * PSO_ID), *code = malloc(CODE_BATCH * PSO_ROW);
    size_t *bj = malloc(CODE_BATCH * sizeof *bj);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    long long written = 0;
    int rc = (cols && q && bid && code && bj && ctx) ? 0 : -1;
    if (rc == 0) rc = prg_rows(q, cols, ks, start, rows);
    if (rc == 0)
        for (size_t j = 0; j < rows; j++)
            for (size_t c = 0; c < PSO_ROW; c++) q[PSO_ROW * j + c] ^= u[PSO_ROW * j + c] & s[c];
    size_t fill = 0;
    for (size_t j = start; j < start + rows && rc == 0; j++) {
        size_t lo, hi;
        int all = 0;
        if (j < bins) {
            lo = (size_t)offs[j];
            hi = (size_t)offs[j + 1];
        } else if (j < bins + stash) {
            lo = 0;
            hi = n;
            all = 1;
        } else {
            break;
        }
        for (size_t p = lo; p < hi && rc == 0; p++) {
            size_t y = all ? p : items[p];
            memcpy(bid + PSO_ID * fill, ids + PSO_ID * y, PSO_ID);
            bj[fill++] = j;
            if (fill == CODE_BATCH) {
                rc = flush_codes(ctx, vals, ob, &written, q, s, code_key, bid, bj, code, fill,
                                 start);
                fill = 0;
            }
        }
    }
    if (rc == 0 && fill > 0)
        rc = flush_codes(ctx, vals, ob, &written, q, s, code_key, bid, bj, code, fill, start);
    EVP_MD_CTX_free(ctx);
    free(cols);
    free(q);
    free(bid);
    free(code);
    free(bj);
    return rc == 0 ? written : -1;
}

int pso_shuffle(uint8_t *vals, size_t n, size_t ob) {
    enum { RB = 4096 };
    uint64_t rnd[RB];
    size_t have = 0;
    uint8_t tmp[64];
    if (ob > sizeof tmp) return -1;
    for (size_t i = n; i > 1; i--) {
        if (have == 0) {
            if (RAND_bytes((unsigned char *)rnd, sizeof rnd) != 1) return -1;
            have = RB;
        }
        /* Lemire's multiply-shift: bias at most i / 2^64 */
        size_t k = (size_t)(((unsigned __int128)rnd[--have] * i) >> 64);
        if (k != i - 1) {
            memcpy(tmp, vals + ob * k, ob);
            memcpy(vals + ob * k, vals + ob * (i - 1), ob);
            memcpy(vals + ob * (i - 1), tmp, ob);
        }
    }
    return 0;
}

void pso_match_build(uint32_t *slots, size_t nslots, const uint8_t *vals, size_t n, size_t ob) {
    (void)ob;
    size_t mask = nslots - 1;
    for (size_t i = 0; i < n; i++) {
        size_t p = (size_t)le64(vals + ob * i) & mask;
        while (slots[p] != 0) p = (p + 1) & mask;
        slots[p] = (uint32_t)(i + 1);
    }
}

size_t pso_match_probe(uint32_t *hits, const uint32_t *slots, size_t nslots, const uint8_t *vals,
                       size_t ob, const uint8_t *recv, size_t k) {
    size_t mask = nslots - 1, found = 0;
    for (size_t i = 0; i < k; i++) {
        const uint8_t *v = recv + ob * i;
        size_t p = (size_t)le64(v) & mask;
        while (slots[p] != 0) {
            uint32_t idx = slots[p] - 1;
            if (memcmp(vals + ob * idx, v, ob) == 0) {
                hits[found++] = idx;
                break;
            }
            p = (p + 1) & mask;
        }
    }
    return found;
}
