/* Eight X25519 ladders at once with AVX-512 IFMA (one lane per point, one scalar
 * for all lanes, so the ladder's swap pattern is the same in every lane).
 *
 * Field elements mod p = 2^255 - 19 are five 52-bit limbs per lane. Invariant
 * between operations: limbs 0..3 < 2^52, limb 4 < 2^47 + 2 (value < 2^255 + small),
 * because vpmadd52 uses only the low 52 bits of its inputs. Products fold the
 * columns above 2^260 with 2^260 = 608 (mod p) and the bits above 2^255 with
 * 2^255 = 19 (mod p). Compiled for the ifma target only; callers check
 * pec_ifma_available() first. */
#include "privacy_ec.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512ifma")))

typedef struct { __m512i l[5]; } vfe;

TGT static inline __m512i mask52(void) { return _mm512_set1_epi64((long long)((1ULL << 52) - 1)); }

/* Carry chain and fold of bits >= 255; inputs limbs < 2^62. */
TGT static inline void vcarry(vfe *v) {
    const __m512i m = mask52();
    const __m512i m47 = _mm512_set1_epi64((long long)((1ULL << 47) - 1));
    __m512i c;
    for (int i = 0; i < 4; i++) {
        c = _mm512_srli_epi64(v->l[i], 52);
        v->l[i] = _mm512_and_si512(v->l[i], m);
        v->l[i + 1] = _mm512_add_epi64(v->l[i + 1], c);
    }
    c = _mm512_srli_epi64(v->l[4], 47);
    v->l[4] = _mm512_and_si512(v->l[4], m47);
    /* v0 += 19 c */
    v->l[0] = _mm512_add_epi64(v->l[0], _mm512_add_epi64(_mm512_add_epi64(
        _mm512_slli_epi64(c, 4), _mm512_slli_epi64(c, 1)), c));
    for (int i = 0; i < 4; i++) {
        c = _mm512_srli_epi64(v->l[i], 52);
        v->l[i] = _mm512_and_si512(v->l[i], m);
        v->l[i + 1] = _mm512_add_epi64(v->l[i + 1], c);
    }
}

TGT static inline void vadd(vfe *h, const vfe *f, const vfe *g) {
    for (int i = 0; i < 5; i++) h->l[i] = _mm512_add_epi64(f->l[i], g->l[i]);
    vcarry(h);
}

/* f - g + 4p */
TGT static inline void vsub(vfe *h, const vfe *f, const vfe *g) {
    const __m512i p0 = _mm512_set1_epi64((long long)(4 * ((1ULL << 52) - 19)));
    const __m512i pm = _mm512_set1_epi64((long long)(4 * ((1ULL << 52) - 1)));
    const __m512i p4 = _mm512_set1_epi64((long long)(4 * ((1ULL << 47) - 1)));
    h->l[0] = _mm512_sub_epi64(_mm512_add_epi64(f->l[0], p0), g->l[0]);
    for (int i = 1; i < 4; i++) h->l[i] = _mm512_sub_epi64(_mm512_add_epi64(f->l[i], pm), g->l[i]);
    h->l[4] = _mm512_sub_epi64(_mm512_add_epi64(f->l[4], p4), g->l[4]);
    vcarry(h);
}

TGT static void vmul(vfe *h, const vfe *f, const vfe *g) {
    const __m512i z = _mm512_setzero_si512();
    const __m512i m = mask52();
    __m512i t[11];
    for (int i = 0; i < 11; i++) t[i] = z;
    for (int i = 0; i < 5; i++) {
        for (int j = 0; j < 5; j++) {
            t[i + j] = _mm512_madd52lo_epu64(t[i + j], f->l[i], g->l[j]);
            t[i + j + 1] = _mm512_madd52hi_epu64(t[i + j + 1], f->l[i], g->l[j]);
        }
    }
    /* carry the high columns t4..t9 into 52-bit limbs, overflow into t10 */
    for (int k = 4; k < 10; k++) {
        __m512i c = _mm512_srli_epi64(t[k], 52);
        t[k] = _mm512_and_si512(t[k], m);
        t[k + 1] = _mm512_add_epi64(t[k + 1], c);
    }
    const __m512i c608 = _mm512_set1_epi64(608);
    /* fold columns 5..9 (weight 2^260 * 2^(52(k-5))) with 608 */
    __m512i hi9 = z;
    for (int k = 5; k < 10; k++) {
        t[k - 5] = _mm512_madd52lo_epu64(t[k - 5], t[k], c608);
        if (k < 9) t[k - 4] = _mm512_madd52hi_epu64(t[k - 4], t[k], c608);
        else hi9 = _mm512_madd52hi_epu64(z, t[k], c608);
    }
    /* hi9 has weight 2^260, t10 weight 2^520 = 608^2 */
    t[0] = _mm512_madd52lo_epu64(t[0], hi9, c608);
    const __m512i c608sq = _mm512_set1_epi64(608 * 608);
    t[1] = _mm512_madd52hi_epu64(t[1], t[10], c608sq);
    t[0] = _mm512_madd52lo_epu64(t[0], t[10], c608sq);
    for (int i = 0; i < 5; i++) h->l[i] = t[i];
    vcarry(h);
}

TGT static inline void vcswap(vfe *a, vfe *b, __mmask8 swap) {
    for (int i = 0; i < 5; i++) {
        __m512i x = _mm512_mask_blend_epi64(swap, a->l[i], b->l[i]);
        __m512i y = _mm512_mask_blend_epi64(swap, b->l[i], a->l[i]);
        a->l[i] = x;
        b->l[i] = y;
    }
}

int pec_ifma_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
}

/* k: clamped scalar. points: 8 u-coordinates (32 bytes each, bit 255 ignored).
 * x_out, z_out: 8 x 5 radix-2^52 limbs (lane-major) of the projective result. */
TGT void pec_ladder8_ifma(const unsigned char k[32], const unsigned char *points,
                          uint64_t x_out[8][5], uint64_t z_out[8][5]) {
    uint64_t in[5][8];
    for (int lane = 0; lane < 8; lane++) {
        uint64_t w[4];
        for (int i = 0; i < 4; i++) {
            uint64_t r = 0;
            for (int b = 7; b >= 0; b--) r = (r << 8) | points[32 * lane + 8 * i + b];
            w[i] = r;
        }
        w[3] &= 0x7fffffffffffffffULL;
        const uint64_t M = (1ULL << 52) - 1;
        in[0][lane] = w[0] & M;
        in[1][lane] = ((w[0] >> 52) | (w[1] << 12)) & M;
        in[2][lane] = ((w[1] >> 40) | (w[2] << 24)) & M;
        in[3][lane] = ((w[2] >> 28) | (w[3] << 36)) & M;
        in[4][lane] = w[3] >> 16;
    }
    vfe x1, x2, z2, x3, z3, A, AA, B, BB, E, C, D, DA, CB, t, a24;
    const __m512i zero = _mm512_setzero_si512();
    for (int i = 0; i < 5; i++) {
        x1.l[i] = _mm512_loadu_si512((const void *)in[i]);
        x2.l[i] = zero; z2.l[i] = zero; z3.l[i] = zero; a24.l[i] = zero;
    }
    x2.l[0] = _mm512_set1_epi64(1);
    z3.l[0] = _mm512_set1_epi64(1);
    a24.l[0] = _mm512_set1_epi64(121665);
    x3 = x1;
    unsigned swap = 0;
    for (int pos = 254; pos >= 0; pos--) {
        unsigned bit = (k[pos >> 3] >> (pos & 7)) & 1;
        swap ^= bit;
        __mmask8 msk = (__mmask8)(0u - swap);
        vcswap(&x2, &x3, msk);
        vcswap(&z2, &z3, msk);
        swap = bit;
        vadd(&A, &x2, &z2);
        vsub(&B, &x2, &z2);
        vadd(&C, &x3, &z3);
        vsub(&D, &x3, &z3);
        vmul(&AA, &A, &A);
        vmul(&BB, &B, &B);
        vmul(&DA, &D, &A);
        vmul(&CB, &C, &B);
        vsub(&E, &AA, &BB);
        vadd(&t, &DA, &CB);
        vmul(&x3, &t, &t);
        vsub(&t, &DA, &CB);
        vmul(&t, &t, &t);
        vmul(&z3, &x1, &t);
        vmul(&x2, &AA, &BB);
        vmul(&t, &E, &a24);
        vadd(&t, &t, &AA);
        vmul(&z2, &E, &t);
    }
    __mmask8 msk = (__mmask8)(0u - swap);
    vcswap(&x2, &x3, msk);
    vcswap(&z2, &z3, msk);
    uint64_t ox[5][8], oz[5][8];
    for (int i = 0; i < 5; i++) {
        _mm512_storeu_si512((void *)ox[i], x2.l[i]);
        _mm512_storeu_si512((void *)oz[i], z2.l[i]);
    }
    for (int lane = 0; lane < 8; lane++)
        for (int i = 0; i < 5; i++) {
            x_out[lane][i] = ox[i][lane];
            z_out[lane][i] = oz[i][lane];
        }
}

#else
int pec_ifma_available(void) { return 0; }
void pec_ladder8_ifma(const unsigned char k[32], const unsigned char *points,
                      uint64_t x_out[8][5], uint64_t z_out[8][5]) {
    (void)k; (void)points; (void)x_out; (void)z_out;
}
#endif
