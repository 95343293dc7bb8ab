/* Hutong chunk mover: the AEAD record layer (docs/format.md, "Records").
 *
 * After the handshake every byte of a mover stream travels in records:
 *
 *   magic "HTMR" | length u32 LE | sequence u64 LE | ciphertext (length) | tag (16)
 *
 * sealed with AES-128-GCM or AES-256-GCM (intel-ipsec-mb's GCM on CPUs with
 * AES instructions, its VAES and AVX-512 code where they exist: over twice
 * OpenSSL 3.0's speed; OpenSSL's EVP elsewhere) or ChaCha20-Poly1305
 * (OpenSSL libcrypto, EVP). The
 * 16-byte header is the associated data; the nonce is the direction's IV
 * XOR the sequence number (little-endian, into the last 8 bytes), so a nonce
 * is never reused under a key. Keys and IVs come from HKDF-SHA256 over the
 * session secret and an ephemeral X25519 exchange (both public keys bound
 * into the handshake's proofs), salted with both handshake nonces: one key
 * and IV per direction of each stream, none recoverable from the secret
 * alone once the stream's ephemeral keys are gone.
 *
 * Contract
 *  - mv_rec_open never releases plaintext of a record whose tag, sequence
 *    number or header is wrong: the caller gets a status and a one-line
 *    message, and the output buffer's bytes are not to be used.
 *  - A record whose sequence number is not the next one expected (dropped,
 *    replayed, reordered) fails with MV_ERR_RECORD before any decryption;
 *    one that fails its tag (tampered, injected) fails with MV_ERR_RECORD.
 *  - A direction seals at most MV_RECORD_LIMIT records (then MV_ERR_REKEY:
 *    the caller resumes on a new stream, with new keys).
 *  - Every libcrypto return value is checked; a failure is MV_ERR_NOMEM or
 *    MV_ERR_RECORD with OpenSSL's reason in the message. AES-GCM tags are
 *    compared in constant time (CRYPTO_memcmp).
 */
#ifndef HUTONG_MOVER_RECORD_H
#define HUTONG_MOVER_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define MV_RECORD_MAGIC "HTMR"
#define MV_RECORD_HEADER 16
#define MV_RECORD_TAG 16
#define MV_RECORD_OVERHEAD (MV_RECORD_HEADER + MV_RECORD_TAG)
#define MV_RECORD_MAX (256u << 10)   /* plaintext bytes per record */
/* Records per direction and key: 2^20 full records (256 GiB) keep AES-GCM
 * within the confidentiality margin TLS 1.3 allows a key (RFC 8446, 5.5:
 * 2^24.5 records of 16 KiB, the same number of cipher blocks). */
#define MV_RECORD_LIMIT (1ull << 20)
#define MV_KEY_LEN 32                /* the longest key; AES-128-GCM uses the first 16 */
#define MV_IV_LEN 12
#define MV_KX_LEN 32                 /* X25519 public key and shared secret */

/* Ciphers named in HELLO (byte 33). */
enum {
    MV_CIPHER_NONE = 0,
    MV_CIPHER_AES256GCM = 1,
    MV_CIPHER_CHACHA20 = 2,
    MV_CIPHER_AES128GCM = 3,
};
/* Clients: AES-128-GCM (TLS 1.3's default suite) where the CPU has AES and
 * carry-less multiply instructions, ChaCha20-Poly1305 elsewhere. */
#define MV_CIPHER_AUTO (-1)

/* Key and IV of one direction. */
typedef struct {
    uint8_t key[MV_KEY_LEN];
    uint8_t iv[MV_IV_LEN];
} mv_dir_keys;

/* One direction of a stream: its cipher context and the next sequence number. */
typedef struct {
    void *ctx;        /* EVP_CIPHER_CTX, keyed once (ChaCha20-Poly1305) */
    void *gcm;        /* intel-ipsec-mb expanded AES-GCM key (AES-GCM) */
    int keylen;       /* the cipher's key length */
    uint8_t iv[MV_IV_LEN];
    uint64_t seq;
    int seal;         /* 1: this side seals, 0: it opens */
} mv_rec_dir;

/* The cipher a client asks for when it was given MV_CIPHER_AUTO. */
int mv_cipher_choose(void);
/* The library that seals and opens records of `cipher` on this build and CPU. */
const char *mv_cipher_backend(int cipher);
const char *mv_cipher_name(int cipher);
/* The key length of a cipher in bytes (16 or 32), 0 for none or an unknown one. */
size_t mv_cipher_keylen(int cipher);

/* A fresh ephemeral X25519 key (*key, freed with mv_kx_free) and its public half. */
int mv_kx_new(void **key, uint8_t pub[MV_KX_LEN], char *msg, size_t msglen);
/* The X25519 shared secret of `key` and the peer's public key (a low-order
 * peer key, whose secret would be all zero, is refused: MV_ERR_AUTH). */
int mv_kx_shared(void *key, const uint8_t peer[MV_KX_LEN], uint8_t out[MV_KX_LEN], char *msg,
                 size_t msglen);
void mv_kx_free(void *key);

/* Derive both directions' keys (c2s: client to server, s2c: server to
 * client) from the session secret, the X25519 shared secret `dh` and the
 * handshake's nonces, op and cipher: mv_cipher_keylen(cipher) key bytes
 * (the rest of key[] zero) and the IV from one HKDF output whose info names
 * the cipher, so no two ciphers ever share a key. */
int mv_rec_derive(const uint8_t *secret, size_t slen, const uint8_t *dh, const uint8_t *cn,
                  const uint8_t *sn, int op, int cipher, mv_dir_keys *c2s, mv_dir_keys *s2c,
                  char *msg, size_t msglen);

/* Key a direction (seal: 1 to seal, 0 to open). Wipes nothing of `k`. */
int mv_rec_init(mv_rec_dir *d, int cipher, const mv_dir_keys *k, int seal, char *msg,
                size_t msglen);
void mv_rec_free(mv_rec_dir *d);

/* Seal n (1..MV_RECORD_MAX) plaintext bytes into out (n + MV_RECORD_OVERHEAD bytes). */
int mv_rec_seal(mv_rec_dir *d, const uint8_t *pt, size_t n, uint8_t *out, char *msg,
                size_t msglen);
/* The same with the record's parts apart: header h, ciphertext ct (n bytes;
 * ct == pt seals in place, so the sender needs no second buffer) and tag. */
int mv_rec_seal_parts(mv_rec_dir *d, uint8_t h[MV_RECORD_HEADER], const uint8_t *pt, size_t n,
                      uint8_t *ct, uint8_t tag[MV_RECORD_TAG], char *msg, size_t msglen);

/* Check a record header: MV_OK and *n the ciphertext length, or the status
 * of a bad magic, length or sequence number. */
int mv_rec_header(const mv_rec_dir *d, const uint8_t *h, size_t *n, char *msg, size_t msglen);

/* Open the record at rec (header, n ciphertext bytes, tag; header already
 * checked) into pt (n bytes; may not overlap rec). */
int mv_rec_open(mv_rec_dir *d, const uint8_t *rec, size_t n, uint8_t *pt, char *msg,
                size_t msglen);

/* Bytes per second of sealing MV_RECORD_MAX-byte records in place with `cipher`
 * on this thread for about `seconds` (the record layer's own ceiling). */
double mv_rec_rate(int cipher, double seconds);

/* Check a byte string as the records one direction of a stream reads
 * (fuzzing and tests): returns MV_OK or the status of the first bad record;
 * *nrec counts the records that opened. */
int mv_check_records(int cipher, const mv_dir_keys *k, const uint8_t *buf, size_t len,
                     size_t *nrec, char *msg, size_t msglen);

#endif
