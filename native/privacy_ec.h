/* Curve25519 group operations for ECDH-PSI (module privacy._ec).
 *
 * Contract:
 *  - Field elements and u-coordinates are 32-byte little-endian strings.
 *  - pec_map_to_curve: a 32-byte uniform string (a hash) -> the u-coordinate of
 *    the Elligator 2 map (RFC 9380 section 6.7.1, curve25519, Z = 2) of the field
 *    element it encodes (bit 255 cleared, reduced mod p). The result is always a
 *    point of the curve (never of the twist), possibly with a small-order component.
 *  - pec_ladder_batch: n X25519 scalar multiplications (RFC 7748 ladder, clamped
 *    scalar, constant time per point) by one scalar, with one shared field
 *    inversion for the batch. out receives `outlen` (1..32) leading bytes of each
 *    canonical result; a result at infinity is all zero bytes.
 *  - scratch must hold 3 * 5 * n uint64 values. No allocation; the only global
 *    state is the backend choice (pec_set_backend), made once before use.
 *  - Backends: "portable" (radix 2^51, one point at a time) and "ifma" (eight
 *    ladders at once with AVX-512 IFMA, privacy_ec_ifma.c), identical results.
 */
#ifndef HUTONG_PRIVACY_EC_H
#define HUTONG_PRIVACY_EC_H

#include <stddef.h>
#include <stdint.h>

void pec_map_to_curve(unsigned char u_out[32], const unsigned char h[32]);

void pec_ladder_batch(unsigned char *out, size_t outlen, const unsigned char scalar[32],
                      const unsigned char *points, size_t n, uint64_t *scratch);

/* 1 if this CPU can run the ifma backend. */
int pec_ifma_available(void);

/* Eight ladders with one clamped scalar; projective results in radix 2^52. */
void pec_ladder8_ifma(const unsigned char k[32], const unsigned char *points,
                      uint64_t x_out[8][5], uint64_t z_out[8][5]);

/* 0 = portable, 1 = ifma; returns -1 if ifma is asked for and unavailable. */
int pec_set_backend(int ifma);
int pec_get_backend(void);

#endif
