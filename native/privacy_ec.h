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
 *  - scratch must hold 3 * 5 * n uint64 values. No allocation, no global state:
 *    callers may run it on several threads at once.
 */
#ifndef HUTONG_PRIVACY_EC_H
#define HUTONG_PRIVACY_EC_H

#include <stddef.h>
#include <stdint.h>

void pec_map_to_curve(unsigned char u_out[32], const unsigned char h[32]);

void pec_ladder_batch(unsigned char *out, size_t outlen, const unsigned char scalar[32],
                      const unsigned char *points, size_t n, uint64_t *scratch);

#endif
