/* Core loops of the OT-extension PSI (KKRT16 OPRF), module privacy._psi_ot.
 *
 * Contract:
 *  - An item id is 16 bytes. A code word and an OT row are PSO_W / 8 = 64 bytes.
 *    Bit c of a row is (row[c / 8] >> (c % 8)) & 1 (least significant first).
 *  - Bin i of an id for hash function h (0..2) is (le32(id + 4h) * bins) >> 32.
 *  - PRG(k) is AES-128-CTR under key k from a zero IV over zero bytes; a column
 *    block for rows [start, start + rows) is its bytes [start / 8, (start + rows) / 8).
 *    start and rows must be multiples of 128.
 *  - C(x) (the pseudorandom code) is AES-128-ECB under the code key of the four
 *    blocks x ^ e_0 .. x ^ e_3 (e_i: byte 15 xor i), concatenated.
 *  - H(j, v) is the first `ob` bytes of SHA-256(le64(j) || v), v a 64-byte row.
 *  - Functions return 0 on success and -1 on an OpenSSL or allocation failure,
 *    except where stated. None keeps state between calls; none takes the GIL.
 */
#ifndef HUTONG_PSI_OT_H
#define HUTONG_PSI_OT_H

#include <stddef.h>
#include <stdint.h>

#define PSO_W 512
#define PSO_ROW (PSO_W / 8)
#define PSO_ID 16

/* Fetch the OpenSSL algorithms; call once before anything else (module init). */
int pso_init(void);

/* SHA-256(key || item) truncated to 16 bytes for items [start, start + n) of an
 * Arrow string array (offsets are int32, or int64 when off64). */
int pso_hash_items(uint8_t *out, const uint8_t key[32], const uint8_t *data,
                   const void *offsets, int off64, size_t start, size_t n);

/* in: nr rows of nc bits; out: nc rows of nr bits. nr % 16 == 0, nc % 8 == 0. */
void pso_transpose(const uint8_t *in, uint8_t *out, size_t nr, size_t nc);

/* The PRG blocks of `w` keys (16 bytes each) as a w x rows bit matrix. */
int pso_prg_columns(uint8_t *cols, const uint8_t *keys, size_t w, size_t start, size_t rows);

/* C(x) of n ids into n rows. */
int pso_code(uint8_t *out, const uint8_t code_key[16], const uint8_t *ids, size_t n);

/* Cuckoo hashing of n ids into bins + stash slots: table[j] is the item index in
 * bin j (or stash slot j - bins), -1 if empty. Returns the number of stash slots
 * used, -1 if more than `stash` were needed (the caller reports failure), -2 on
 * an allocation failure. The eviction walk is a function of `seed`. */
int pso_cuckoo(int32_t *table, size_t bins, size_t stash, const uint8_t *ids, size_t n,
               uint64_t seed);

/* Simple hashing: each item in each of its distinct bins. offs (bins + 1 entries)
 * and items (capacity 3n) in CSR form. -1 if out of memory. */
int pso_simple(int64_t *offs, uint32_t *items, const uint8_t *ids, size_t n, size_t bins);

/* Receiver, rows [start, start + rows): U = PRG(k0) ^ PRG(k1) ^ C(r) row-wise into
 * u (rows x 64 bytes), and H(j, PRG(k0)_j) into vals (rows x ob). r: rows ids. */
int pso_recv_block(uint8_t *u, uint8_t *vals, size_t ob, const uint8_t *k0, const uint8_t *k1,
                   const uint8_t code_key[16], const uint8_t *r, size_t start, size_t rows);

/* Sender, rows [start, start + rows): Q_j = PRG(ks)_j ^ (U_j & s); for each item y
 * of bin j (j < bins: CSR offs/items; bins <= j < bins + stash: every item),
 * H(j, Q_j ^ (C(y) & s)) appended to vals. Returns the count written (the caller
 * sizes vals from the CSR), or -1 on failure. */
long long pso_send_block(uint8_t *vals, size_t ob, const uint8_t *ks, const uint8_t s[PSO_ROW],
                         const uint8_t code_key[16], const uint8_t *u, size_t start, size_t rows,
                         const int64_t *offs, const uint32_t *items, size_t bins, size_t stash,
                         const uint8_t *ids, size_t n);

/* Fisher-Yates shuffle of n records of ob bytes with OpenSSL randomness. */
int pso_shuffle(uint8_t *vals, size_t n, size_t ob);

/* Open-addressing set of n values (nslots a power of two >= 2n, slots zeroed). */
void pso_match_build(uint32_t *slots, size_t nslots, const uint8_t *vals, size_t n, size_t ob);

/* Indices (into the built values) of the k received values found; returns the count. */
size_t pso_match_probe(uint32_t *hits, const uint32_t *slots, size_t nslots, const uint8_t *vals,
                       size_t ob, const uint8_t *recv, size_t k);

#endif
