/* Metadata records of docs/format.md ("Metadata") in C: the compact inode record
 * and the refcount change of a compact or folded-member chunk record, the two
 * encodings a put's commit runs once per file (gfs/meta/encoding.py keeps the
 * Python reference, which the tests compare these against byte for byte).
 *
 * Contract: pure functions over caller buffers; no allocation, no I/O, no
 * Python. Each either produces exactly the bytes the reference produces, or
 * returns METAREC_DEFER without writing a meaningful result: the caller then
 * runs the reference, which raises the precise error (a field out of range, a
 * damaged record) or handles a form C does not (the fixed chunk record). */
#ifndef HUTONG_METAREC_H
#define HUTONG_METAREC_H

#include <stddef.h>
#include <stdint.h>

#define METAREC_OK 0
#define METAREC_DEFER 1

/* Bytes of a compact inode record without its target: kind byte, six varints
 * (at most 10 bytes each), mtime i64, four varints of up to 66 bits. */
#define METAREC_INODE_HEAD_MAX (1 + 6 * 10 + 8 + 4 * 10)

/* An inode's fields as the compact record stores them. Unsigned fields carry
 * the bound the format gives them; the caller checked nothing. */
typedef struct {
    uint8_t kind;           /* Kind value (1..7), checked by the caller */
    uint64_t mode, uid, gid, parent, size, version, nlink, rdev;
    int64_t atime_ns, mtime_ns, ctime_ns;
} metarec_inode;

/* Write the compact record of `in` without its target to `out` (room for
 * METAREC_INODE_HEAD_MAX bytes); set *len. METAREC_DEFER when a field is out of
 * its range (mode >= 2^16, uid, gid or nlink >= 2^32). */
int metarec_inode_compact(const metarec_inode *in, uint8_t *out, size_t *len);
/* The fields of the compact inode record `data` (len bytes) into `out`, and in
 * *end the offset of its target. METAREC_DEFER for any other form and for a
 * record the reference rejects (truncated, a varint over 64 bits, a field out
 * of its range); the kind is not checked (the caller maps it). */
int metarec_inode_decode(const uint8_t *data, size_t len, metarec_inode *out, size_t *end);

/* The `chunks` value `data` (compact 0xFD or folded member 0xFC form) of chunk
 * `cid` (16 bytes) with its refcount changed by `delta`, re-encoded to `out`
 * (room for len + 16 bytes); set *out_len. METAREC_DEFER for any other form, a
 * record the reference would reject, a varint over 64 bits, or a refcount that
 * would leave [0, 2^64). */
int metarec_chunk_refcount(const uint8_t *cid, const uint8_t *data, size_t len, int64_t delta,
                           uint8_t *out, size_t *out_len);

/* Manifest values (docs/format.md, "manifests"): `n` entries of chunk id
 * ids[k] (16 bytes each, consecutive) and raw length lens[k].
 * metarec_manifest_fixed: version u64 LE, count u32 LE, then per entry the id
 * and the length u32 LE; `out` has room for 12 + 20 * n bytes; returns that.
 * metarec_manifest_compact: the marker 0xFD, version and count as varints,
 * per entry its length as a varint and its id, one zero byte of padding when
 * the length would be 8 or 12 modulo 20; `out` has room for
 * METAREC_MANIFEST_COMPACT_MAX(n) bytes; returns the length written.
 * The caller checked n < 2^32. */
#define METAREC_MANIFEST_COMPACT_MAX(n) (1 + 10 + 5 + (size_t)(n) * (5 + 16) + 1)
size_t metarec_manifest_fixed(uint64_t version, size_t n, const uint8_t *ids,
                              const uint32_t *lens, uint8_t *out);
size_t metarec_manifest_compact(uint64_t version, size_t n, const uint8_t *ids,
                                const uint32_t *lens, uint8_t *out);

/* The entries of the compact manifest value `data` (len bytes): its version, its
 * count, and per entry the offset of its id in `data` (id_at) and its length
 * (lens); both arrays have room for len / 17 entries (an entry takes at least 17
 * bytes). METAREC_DEFER for anything the reference rejects (truncated, a varint
 * over 64 bits, a length of 2^32 or more, wrong padding) or reads past 64 bits. */
int metarec_manifest_compact_decode(const uint8_t *data, size_t len, uint64_t *version,
                                    size_t *count, size_t *id_at, uint32_t *lens);

#endif
