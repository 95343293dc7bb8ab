/* Curve25519 arithmetic for ECDH-PSI: field mod p = 2^255 - 19 in five 51-bit
 * limbs, the Elligator 2 map (RFC 9380 6.7.1) and the X25519 Montgomery ladder
 * (RFC 7748 section 5) with batched inversion. See privacy_ec.h. */
#include "privacy_ec.h"

#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[5]; } fe;

#define MASK51 ((uint64_t)0x7ffffffffffffULL)

static uint64_t load64(const unsigned char *s) {
    uint64_t r = 0;
    for (int i = 7; i >= 0; i--) r = (r << 8) | s[i];
    return r;
}

static void fe_frombytes(fe *h, const unsigned char s[32]) {
    h->v[0] = load64(s) & MASK51;
    h->v[1] = (load64(s + 6) >> 3) & MASK51;
    h->v[2] = (load64(s + 12) >> 6) & MASK51;
    h->v[3] = (load64(s + 19) >> 1) & MASK51;
    h->v[4] = (load64(s + 24) >> 12) & MASK51;
}

static void fe_carry(fe *h) {
    uint64_t c;
    c = h->v[0] >> 51; h->v[0] &= MASK51; h->v[1] += c;
    c = h->v[1] >> 51; h->v[1] &= MASK51; h->v[2] += c;
    c = h->v[2] >> 51; h->v[2] &= MASK51; h->v[3] += c;
    c = h->v[3] >> 51; h->v[3] &= MASK51; h->v[4] += c;
    c = h->v[4] >> 51; h->v[4] &= MASK51; h->v[0] += 19 * c;
    c = h->v[0] >> 51; h->v[0] &= MASK51; h->v[1] += c;
}

static void fe_tobytes(unsigned char s[32], const fe *f) {
    fe h = *f;
    fe_carry(&h);
    fe_carry(&h);
    /* h < 2^255 + small; subtract p if h >= p */
    uint64_t q = (h.v[0] + 19) >> 51;
    q = (h.v[1] + q) >> 51;
    q = (h.v[2] + q) >> 51;
    q = (h.v[3] + q) >> 51;
    q = (h.v[4] + q) >> 51;
    h.v[0] += 19 * q;
    uint64_t c;
    c = h.v[0] >> 51; h.v[0] &= MASK51; h.v[1] += c;
    c = h.v[1] >> 51; h.v[1] &= MASK51; h.v[2] += c;
    c = h.v[2] >> 51; h.v[2] &= MASK51; h.v[3] += c;
    c = h.v[3] >> 51; h.v[3] &= MASK51; h.v[4] += c;
    h.v[4] &= MASK51;
    uint64_t w[4];
    w[0] = h.v[0] | (h.v[1] << 51);
    w[1] = (h.v[1] >> 13) | (h.v[2] << 38);
    w[2] = (h.v[2] >> 26) | (h.v[3] << 25);
    w[3] = (h.v[3] >> 39) | (h.v[4] << 12);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) s[8 * i + j] = (unsigned char)(w[i] >> (8 * j));
}

static void fe_0(fe *h) { memset(h, 0, sizeof *h); }
static void fe_1(fe *h) { fe_0(h); h->v[0] = 1; }

static void fe_add(fe *h, const fe *f, const fe *g) {
    for (int i = 0; i < 5; i++) h->v[i] = f->v[i] + g->v[i];
}

/* f - g for g with limbs below 2^52: add 4p first. */
static void fe_sub(fe *h, const fe *f, const fe *g) {
    h->v[0] = f->v[0] + 0x1fffffffffffb4ULL - g->v[0];
    for (int i = 1; i < 5; i++) h->v[i] = f->v[i] + 0x1ffffffffffffcULL - g->v[i];
    fe_carry(h);
}

static void fe_mul(fe *h, const fe *f, const fe *g) {
    const uint64_t a0 = f->v[0], a1 = f->v[1], a2 = f->v[2], a3 = f->v[3], a4 = f->v[4];
    const uint64_t b0 = g->v[0], b1 = g->v[1], b2 = g->v[2], b3 = g->v[3], b4 = g->v[4];
    const uint64_t b1_19 = 19 * b1, b2_19 = 19 * b2, b3_19 = 19 * b3, b4_19 = 19 * b4;
    u128 r0 = (u128)a0 * b0 + (u128)a1 * b4_19 + (u128)a2 * b3_19 + (u128)a3 * b2_19 + (u128)a4 * b1_19;
    u128 r1 = (u128)a0 * b1 + (u128)a1 * b0 + (u128)a2 * b4_19 + (u128)a3 * b3_19 + (u128)a4 * b2_19;
    u128 r2 = (u128)a0 * b2 + (u128)a1 * b1 + (u128)a2 * b0 + (u128)a3 * b4_19 + (u128)a4 * b3_19;
    u128 r3 = (u128)a0 * b3 + (u128)a1 * b2 + (u128)a2 * b1 + (u128)a3 * b0 + (u128)a4 * b4_19;
    u128 r4 = (u128)a0 * b4 + (u128)a1 * b3 + (u128)a2 * b2 + (u128)a3 * b1 + (u128)a4 * b0;
    uint64_t c;
    r1 += (uint64_t)(r0 >> 51); uint64_t h0 = (uint64_t)r0 & MASK51;
    r2 += (uint64_t)(r1 >> 51); uint64_t h1 = (uint64_t)r1 & MASK51;
    r3 += (uint64_t)(r2 >> 51); uint64_t h2 = (uint64_t)r2 & MASK51;
    r4 += (uint64_t)(r3 >> 51); uint64_t h3 = (uint64_t)r3 & MASK51;
    c = (uint64_t)(r4 >> 51); uint64_t h4 = (uint64_t)r4 & MASK51;
    h0 += c * 19;
    c = h0 >> 51; h0 &= MASK51; h1 += c;
    h->v[0] = h0; h->v[1] = h1; h->v[2] = h2; h->v[3] = h3; h->v[4] = h4;
}

static void fe_sq(fe *h, const fe *f) {
    const uint64_t a0 = f->v[0], a1 = f->v[1], a2 = f->v[2], a3 = f->v[3], a4 = f->v[4];
    const uint64_t d0 = 2 * a0, d1 = 2 * a1, d2 = 2 * a2;
    const uint64_t a3_19 = 19 * a3, a4_19 = 19 * a4;
    u128 r0 = (u128)a0 * a0 + (u128)d1 * a4_19 + (u128)d2 * a3_19;
    u128 r1 = (u128)d0 * a1 + (u128)d2 * a4_19 + (u128)a3 * a3_19;
    u128 r2 = (u128)d0 * a2 + (u128)a1 * a1 + (u128)(2 * a3) * a4_19;
    u128 r3 = (u128)d0 * a3 + (u128)d1 * a2 + (u128)a4 * a4_19;
    u128 r4 = (u128)d0 * a4 + (u128)d1 * a3 + (u128)a2 * a2;
    uint64_t c;
    r1 += (uint64_t)(r0 >> 51); uint64_t h0 = (uint64_t)r0 & MASK51;
    r2 += (uint64_t)(r1 >> 51); uint64_t h1 = (uint64_t)r1 & MASK51;
    r3 += (uint64_t)(r2 >> 51); uint64_t h2 = (uint64_t)r2 & MASK51;
    r4 += (uint64_t)(r3 >> 51); uint64_t h3 = (uint64_t)r3 & MASK51;
    c = (uint64_t)(r4 >> 51); uint64_t h4 = (uint64_t)r4 & MASK51;
    h0 += c * 19;
    c = h0 >> 51; h0 &= MASK51; h1 += c;
    h->v[0] = h0; h->v[1] = h1; h->v[2] = h2; h->v[3] = h3; h->v[4] = h4;
}

static void fe_sqn(fe *h, const fe *f, int n) {
    fe_sq(h, f);
    for (int i = 1; i < n; i++) fe_sq(h, h);
}

static void fe_mul_small(fe *h, const fe *f, uint64_t k) {
    u128 r[5];
    for (int i = 0; i < 5; i++) r[i] = (u128)f->v[i] * k;
    uint64_t c = 0;
    for (int i = 0; i < 5; i++) {
        r[i] += c;
        h->v[i] = (uint64_t)r[i] & MASK51;
        c = (uint64_t)(r[i] >> 51);
    }
    h->v[0] += 19 * c;
    c = h->v[0] >> 51; h->v[0] &= MASK51; h->v[1] += c;
}

/* t250 = z^(2^250 - 1), z11 = z^11, z2 = z^2 */
static void fe_pow_base(fe *t250, fe *z11, fe *z2, const fe *z) {
    fe t0, z9, t, z5, z10, z20, z50, z100;
    fe_sq(z2, z);
    fe_sqn(&t0, z2, 2);          /* z^8 */
    fe_mul(&z9, &t0, z);         /* z^9 */
    fe_mul(z11, &z9, z2);        /* z^11 */
    fe_sq(&t0, z11);             /* z^22 */
    fe_mul(&z5, &t0, &z9);       /* z^(2^5 - 1) */
    fe_sqn(&t, &z5, 5);
    fe_mul(&z10, &t, &z5);       /* 2^10 - 1 */
    fe_sqn(&t, &z10, 10);
    fe_mul(&z20, &t, &z10);      /* 2^20 - 1 */
    fe_sqn(&t, &z20, 20);
    fe_mul(&t, &t, &z20);        /* 2^40 - 1 */
    fe_sqn(&t, &t, 10);
    fe_mul(&z50, &t, &z10);      /* 2^50 - 1 */
    fe_sqn(&t, &z50, 50);
    fe_mul(&z100, &t, &z50);     /* 2^100 - 1 */
    fe_sqn(&t, &z100, 100);
    fe_mul(&t, &t, &z100);       /* 2^200 - 1 */
    fe_sqn(&t, &t, 50);
    fe_mul(t250, &t, &z50);      /* 2^250 - 1 */
}

static void fe_invert(fe *out, const fe *z) {
    fe t250, z11, z2;
    fe_pow_base(&t250, &z11, &z2, z);
    fe_sqn(&t250, &t250, 5);     /* 2^255 - 32 */
    fe_mul(out, &t250, &z11);    /* 2^255 - 21 = p - 2 */
}

/* 1 if z is a square (including 0), else 0: z^((p-1)/2) in {0, 1}. */
static int fe_is_square(const fe *z) {
    fe t250, z11, z2, z4, z6, r;
    fe_pow_base(&t250, &z11, &z2, z);
    fe_sqn(&t250, &t250, 4);     /* 2^254 - 16 */
    fe_sq(&z4, &z2);
    fe_mul(&z6, &z4, &z2);
    fe_mul(&r, &t250, &z6);      /* 2^254 - 10 = (p - 1) / 2 */
    unsigned char b[32];
    fe_tobytes(b, &r);
    unsigned char acc = 0;
    for (int i = 1; i < 32; i++) acc |= b[i];
    return acc == 0 && b[0] <= 1;
}

static void fe_cmov(fe *f, const fe *g, uint64_t b) {
    uint64_t m = (uint64_t)0 - b;
    for (int i = 0; i < 5; i++) f->v[i] ^= m & (f->v[i] ^ g->v[i]);
}

static void fe_cswap(fe *f, fe *g, uint64_t b) {
    uint64_t m = (uint64_t)0 - b;
    for (int i = 0; i < 5; i++) {
        uint64_t t = m & (f->v[i] ^ g->v[i]);
        f->v[i] ^= t;
        g->v[i] ^= t;
    }
}

static int fe_is_zero(const fe *f) {
    unsigned char b[32];
    fe_tobytes(b, f);
    unsigned char acc = 0;
    for (int i = 0; i < 32; i++) acc |= b[i];
    return acc == 0;
}

void pec_map_to_curve(unsigned char u_out[32], const unsigned char h[32]) {
    static const uint64_t A = 486662;
    fe r, tv1, one, den, inv, x1, x2, gx1, t, neg_a;
    unsigned char hb[32];
    memcpy(hb, h, 32);
    hb[31] &= 0x7f;
    fe_frombytes(&r, hb);
    fe_1(&one);
    fe_sq(&tv1, &r);
    fe_add(&tv1, &tv1, &tv1);            /* Z * r^2, Z = 2 */
    fe_carry(&tv1);
    fe_add(&den, &one, &tv1);            /* 1 + Z r^2 */
    uint64_t exceptional = (uint64_t)fe_is_zero(&den);
    fe_cmov(&den, &one, exceptional);    /* tv1 == -1: use x1 = -A */
    fe_invert(&inv, &den);
    fe_0(&neg_a);
    fe_0(&t);
    t.v[0] = A;
    fe_sub(&neg_a, &neg_a, &t);          /* -A */
    fe_mul(&x1, &neg_a, &inv);           /* x1 = -A / (1 + Z r^2) */
    /* gx1 = x1 (x1^2 + A x1 + 1) */
    fe_sq(&t, &x1);
    fe ax1;
    fe_mul_small(&ax1, &x1, A);
    fe_add(&t, &t, &ax1);
    fe_add(&t, &t, &one);
    fe_carry(&t);
    fe_mul(&gx1, &t, &x1);
    uint64_t sq = (uint64_t)fe_is_square(&gx1);
    fe_sub(&x2, &neg_a, &x1);            /* x2 = -x1 - A */
    fe_cmov(&x2, &x1, sq);
    fe_tobytes(u_out, &x2);
}

static int use_ifma = 0;

int pec_set_backend(int ifma) {
    if (ifma && !pec_ifma_available()) return -1;
    use_ifma = ifma ? 1 : 0;
    return 0;
}

int pec_get_backend(void) { return use_ifma; }

/* radix-2^52 limbs (limbs 0..3 < 2^52, limb 4 < 2^48) -> fe */
static void fe_from_r52(fe *h, const uint64_t l[5]) {
    uint64_t w0 = l[0] | (l[1] << 52);
    uint64_t w1 = (l[1] >> 12) | (l[2] << 40);
    uint64_t w2 = (l[2] >> 24) | (l[3] << 28);
    uint64_t w3 = (l[3] >> 36) | (l[4] << 16);
    h->v[0] = w0 & MASK51;
    h->v[1] = ((w0 >> 51) | (w1 << 13)) & MASK51;
    h->v[2] = ((w1 >> 38) | (w2 << 26)) & MASK51;
    h->v[3] = ((w2 >> 25) | (w3 << 39)) & MASK51;
    h->v[4] = (w3 >> 12) & MASK51;
    h->v[0] += 19 * (w3 >> 63);
}

void pec_ladder_batch(unsigned char *out, size_t outlen, const unsigned char scalar[32],
                      const unsigned char *points, size_t n, uint64_t *scratch) {
    unsigned char k[32];
    memcpy(k, scalar, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    fe *xs = (fe *)scratch;          /* x2 per point */
    fe *zs = xs + n;                 /* z2 per point, then inverses */
    fe *pre = zs + n;                /* prefix products */
    size_t start = 0;
    if (use_ifma) {
        uint64_t xl[8][5], zl[8][5];
        for (; start + 8 <= n; start += 8) {
            pec_ladder8_ifma(k, points + 32 * start, xl, zl);
            for (int lane = 0; lane < 8; lane++) {
                fe_from_r52(&xs[start + lane], xl[lane]);
                fe_from_r52(&zs[start + lane], zl[lane]);
                if (fe_is_zero(&zs[start + lane])) {
                    fe_0(&xs[start + lane]);
                    fe_1(&zs[start + lane]);
                }
            }
        }
    }
    for (size_t i = start; i < n; i++) {
        unsigned char ub[32];
        memcpy(ub, points + 32 * i, 32);
        ub[31] &= 0x7f;
        fe x1, x2, z2, x3, z3, A, AA, B, BB, E, C, D, DA, CB, t;
        fe_frombytes(&x1, ub);
        fe_1(&x2); fe_0(&z2);
        x3 = x1; fe_1(&z3);
        uint64_t swap = 0;
        for (int pos = 254; pos >= 0; pos--) {
            uint64_t bit = (k[pos >> 3] >> (pos & 7)) & 1;
            swap ^= bit;
            fe_cswap(&x2, &x3, swap);
            fe_cswap(&z2, &z3, swap);
            swap = bit;
            fe_add(&A, &x2, &z2);
            fe_sub(&B, &x2, &z2);
            fe_add(&C, &x3, &z3);
            fe_sub(&D, &x3, &z3);
            fe_sq(&AA, &A);
            fe_sq(&BB, &B);
            fe_mul(&DA, &D, &A);
            fe_mul(&CB, &C, &B);
            fe_sub(&E, &AA, &BB);
            fe_add(&t, &DA, &CB);
            fe_sq(&x3, &t);
            fe_sub(&t, &DA, &CB);
            fe_sq(&t, &t);
            fe_mul(&z3, &x1, &t);
            fe_mul(&x2, &AA, &BB);
            fe_mul_small(&t, &E, 121665);
            fe_add(&t, &t, &AA);
            fe_mul(&z2, &E, &t);
        }
        fe_cswap(&x2, &x3, swap);
        fe_cswap(&z2, &z3, swap);
        if (fe_is_zero(&z2)) {           /* infinity: result 0, keep the batch invertible */
            fe_0(&x2);
            fe_1(&z2);
        }
        xs[i] = x2;
        zs[i] = z2;
    }
    if (n == 0) return;
    /* Montgomery's trick: one inversion for the batch. */
    pre[0] = zs[0];
    for (size_t i = 1; i < n; i++) fe_mul(&pre[i], &pre[i - 1], &zs[i]);
    fe inv;
    fe_invert(&inv, &pre[n - 1]);
    for (size_t i = n - 1; i > 0; i--) {
        fe zi;
        fe_mul(&zi, &inv, &pre[i - 1]);  /* 1 / z_i */
        fe_mul(&inv, &inv, &zs[i]);
        zs[i] = zi;
    }
    zs[0] = inv;
    for (size_t i = 0; i < n; i++) {
        fe r;
        unsigned char b[32];
        fe_mul(&r, &xs[i], &zs[i]);
        fe_tobytes(b, &r);
        memcpy(out + outlen * i, b, outlen);
    }
}
