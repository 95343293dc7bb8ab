/* Hutong chunk mover: AEAD records (see mover_record.h, docs/format.md "Records"). */
#include "mover_record.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HUTONG_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "mover.h"

/* The first libcrypto error of this thread as text (and the queue cleared). */
static int
ossl_fail(char *msg, size_t msglen, int status, const char *what)
{
    char reason[160] = "no reason given";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return mv_setmsg(msg, msglen, status, "%s: %s", what, reason);
}

int
mv_cipher_choose(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul"))
        return MV_CIPHER_AES128GCM;
    return MV_CIPHER_CHACHA20;
#else
    return MV_CIPHER_AES128GCM;
#endif
}

const char *
mv_cipher_name(int cipher)
{
    switch (cipher) {
    case MV_CIPHER_NONE: return "none";
    case MV_CIPHER_AES128GCM: return "aes-128-gcm";
    case MV_CIPHER_AES256GCM: return "aes-256-gcm";
    case MV_CIPHER_CHACHA20: return "chacha20-poly1305";
    default: return "unknown";
    }
}

size_t
mv_cipher_keylen(int cipher)
{
    switch (cipher) {
    case MV_CIPHER_AES128GCM: return 16;
    case MV_CIPHER_AES256GCM:
    case MV_CIPHER_CHACHA20: return 32;
    default: return 0;
    }
}

#ifdef HUTONG_IPSEC_MB
/* intel-ipsec-mb's manager: only its function table is used (the GCM calls
 * keep their state in the caller's gcm_context_data), so one serves every thread. */
static IMB_MGR *imb;
static pthread_once_t imb_once = PTHREAD_ONCE_INIT;

static void
imb_setup(void)
{
    /* Without AES instructions intel-ipsec-mb would emulate AES in software:
     * OpenSSL keeps those CPUs (which "auto" gives ChaCha20-Poly1305 anyway). */
    if (mv_cipher_choose() != MV_CIPHER_AES128GCM)
        return;
    IMB_MGR *m = alloc_mb_mgr(0);
    IMB_ARCH arch;
    if (!m)
        return;
    init_mb_mgr_auto(m, &arch);
    if (imb_get_errno(m) != 0) {
        free_mb_mgr(m);
        return;
    }
    imb = m;
}

static IMB_MGR *
imb_mgr(void)
{
    pthread_once(&imb_once, imb_setup);
    return imb;
}
#else
/* Built without intel-ipsec-mb (not packaged for this architecture): every
 * cipher runs on OpenSSL. */
static void *
imb_mgr(void)
{
    return NULL;
}
#endif

const char *
mv_cipher_backend(int cipher)
{
    if (cipher == MV_CIPHER_NONE)
        return "none";
    if (cipher != MV_CIPHER_CHACHA20 && imb_mgr())
        return "intel-ipsec-mb";
    return OpenSSL_version(OPENSSL_VERSION);
}

static const EVP_CIPHER *
evp_cipher(int cipher)
{
    if (cipher == MV_CIPHER_AES128GCM)
        return EVP_aes_128_gcm();
    if (cipher == MV_CIPHER_AES256GCM)
        return EVP_aes_256_gcm();
    if (cipher == MV_CIPHER_CHACHA20)
        return EVP_chacha20_poly1305();
    return NULL;
}

int
mv_kx_new(void **key, uint8_t pub[MV_KX_LEN], char *msg, size_t msglen)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    size_t n = MV_KX_LEN;
    if (!k || EVP_PKEY_get_raw_public_key(k, pub, &n) != 1 || n != MV_KX_LEN) {
        EVP_PKEY_free(k);
        return ossl_fail(msg, msglen, MV_ERR_NOMEM, "X25519 key generation");
    }
    *key = k;
    return MV_OK;
}

int
mv_kx_shared(void *key, const uint8_t peer[MV_KX_LEN], uint8_t out[MV_KX_LEN], char *msg,
             size_t msglen)
{
    EVP_PKEY *theirs = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, MV_KX_LEN);
    EVP_PKEY_CTX *ctx = theirs ? EVP_PKEY_CTX_new(key, NULL) : NULL;
    size_t n = MV_KX_LEN;
    /* OpenSSL refuses a shared secret of all zeros (a low-order peer key). */
    int ok = ctx && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, theirs) == 1 &&
             EVP_PKEY_derive(ctx, out, &n) == 1 && n == MV_KX_LEN;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(theirs);
    if (!ok)
        return ossl_fail(msg, msglen, MV_ERR_AUTH, "X25519 exchange with the peer's key");
    return MV_OK;
}

void
mv_kx_free(void *key)
{
    EVP_PKEY_free(key);
}

/* HKDF-SHA256(secret || dh, salt = cn || sn, info = label || op || cipher) -> key || iv,
 * the key as long as the cipher's (the info's cipher byte keeps ciphers apart). */
static int
hkdf(EVP_KDF_CTX *kctx, const uint8_t *ikm, size_t ikmlen, const uint8_t *salt,
     const char *label, int op, int cipher, mv_dir_keys *out)
{
    uint8_t info[16], okm[MV_KEY_LEN + MV_IV_LEN];
    size_t ll = strlen(label), kl = mv_cipher_keylen(cipher);
    if (!kl)
        return 0;
    memcpy(info, label, ll);
    info[ll] = (uint8_t)op;
    info[ll + 1] = (uint8_t)cipher;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
                                          2 * MV_NONCE_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, ll + 2),
        OSSL_PARAM_construct_end()};
    int ok = EVP_KDF_derive(kctx, okm, kl + MV_IV_LEN, params) == 1;
    if (ok) {
        memset(out->key, 0, MV_KEY_LEN);
        memcpy(out->key, okm, kl);
        memcpy(out->iv, okm + kl, MV_IV_LEN);
    }
    OPENSSL_cleanse(okm, sizeof okm);
    return ok;
}

int
mv_rec_derive(const uint8_t *secret, size_t slen, const uint8_t *dh, const uint8_t *cn,
              const uint8_t *sn, int op, int cipher, mv_dir_keys *c2s, mv_dir_keys *s2c,
              char *msg, size_t msglen)
{
    uint8_t salt[2 * MV_NONCE_LEN], ikm[MV_MAX_SECRET + MV_KX_LEN];
    if (slen > MV_MAX_SECRET)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "session secret of %zu bytes", slen);
    if (!mv_cipher_keylen(cipher))
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "no record keys for cipher %d", cipher);
    memcpy(salt, cn, MV_NONCE_LEN);
    memcpy(salt + MV_NONCE_LEN, sn, MV_NONCE_LEN);
    memcpy(ikm, secret, slen);
    memcpy(ikm + slen, dh, MV_KX_LEN);
    size_t ikmlen = slen + MV_KX_LEN;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    int ok = kctx && hkdf(kctx, ikm, ikmlen, salt, "HTMV2 c2s", op, cipher, c2s) &&
             hkdf(kctx, ikm, ikmlen, salt, "HTMV2 s2c", op, cipher, s2c);
    OPENSSL_cleanse(ikm, sizeof ikm);
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    if (!ok)
        return ossl_fail(msg, msglen, MV_ERR_NOMEM, "HKDF key derivation");
    return MV_OK;
}

int
mv_rec_init(mv_rec_dir *d, int cipher, const mv_dir_keys *k, int seal, char *msg,
            size_t msglen)
{
    memset(d, 0, sizeof *d);
    const EVP_CIPHER *c = evp_cipher(cipher);
    if (!c)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "unknown cipher %d", cipher);
    d->keylen = (int)mv_cipher_keylen(cipher);
    memcpy(d->iv, k->iv, MV_IV_LEN);
    d->seal = seal;
#ifdef HUTONG_IPSEC_MB
    IMB_MGR *m = cipher == MV_CIPHER_CHACHA20 ? NULL : imb_mgr();
    if (m) {
        struct gcm_key_data *g = aligned_alloc(64, sizeof *g);
        if (!g)
            return mv_setmsg(msg, msglen, MV_ERR_NOMEM, "no memory for an AES-GCM key");
        if (d->keylen == 16)
            IMB_AES128_GCM_PRE(m, k->key, g);
        else
            IMB_AES256_GCM_PRE(m, k->key, g);
        d->gcm = g;
        return MV_OK;
    }
#endif
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return ossl_fail(msg, msglen, MV_ERR_NOMEM, "cipher context");
    /* The key is set once; each record sets only its nonce. */
    if (EVP_CipherInit_ex(ctx, c, NULL, k->key, NULL, seal) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return ossl_fail(msg, msglen, MV_ERR_NOMEM, "cipher key set-up");
    }
    d->ctx = ctx;
    return MV_OK;
}

void
mv_rec_free(mv_rec_dir *d)
{
    EVP_CIPHER_CTX_free(d->ctx);
    d->ctx = NULL;
#ifdef HUTONG_IPSEC_MB
    if (d->gcm) {
        OPENSSL_cleanse(d->gcm, sizeof(struct gcm_key_data));
        free(d->gcm);
        d->gcm = NULL;
    }
#endif
    OPENSSL_cleanse(d->iv, sizeof d->iv);
}

static void
le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
rdle(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The nonce of record `seq`: the IV with seq (LE) XORed into its last 8 bytes. */
static void
record_nonce(const mv_rec_dir *d, uint64_t seq, uint8_t nonce[MV_IV_LEN])
{
    memcpy(nonce, d->iv, MV_IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)(seq >> (8 * i));
}

#ifdef HUTONG_IPSEC_MB
/* One AES-GCM pass of intel-ipsec-mb over n bytes (in place allowed): the
 * header as associated data, the 16-byte tag computed into tag. */
static void
gcm_pass(const mv_rec_dir *d, const uint8_t *h, const uint8_t *in, size_t n, uint8_t *out,
         uint8_t tag[MV_RECORD_TAG])
{
    uint8_t nonce[MV_IV_LEN];
    struct gcm_context_data gctx;
    record_nonce(d, d->seq, nonce);
    if (d->keylen == 16 && d->seal)
        IMB_AES128_GCM_ENC(imb, d->gcm, &gctx, out, in, n, nonce, h, MV_RECORD_HEADER, tag,
                           MV_RECORD_TAG);
    else if (d->keylen == 16)
        IMB_AES128_GCM_DEC(imb, d->gcm, &gctx, out, in, n, nonce, h, MV_RECORD_HEADER, tag,
                           MV_RECORD_TAG);
    else if (d->seal)
        IMB_AES256_GCM_ENC(imb, d->gcm, &gctx, out, in, n, nonce, h, MV_RECORD_HEADER, tag,
                           MV_RECORD_TAG);
    else
        IMB_AES256_GCM_DEC(imb, d->gcm, &gctx, out, in, n, nonce, h, MV_RECORD_HEADER, tag,
                           MV_RECORD_TAG);
    OPENSSL_cleanse(&gctx, sizeof gctx);
}
#endif

/* Set the nonce of record `seq` and feed the header as associated data. */
static int
start_record(mv_rec_dir *d, uint64_t seq, const uint8_t *h)
{
    uint8_t nonce[MV_IV_LEN];
    record_nonce(d, seq, nonce);
    int outl;
    return EVP_CipherInit_ex(d->ctx, NULL, NULL, NULL, nonce, d->seal) == 1 &&
           EVP_CipherUpdate(d->ctx, NULL, &outl, h, MV_RECORD_HEADER) == 1;
}

int
mv_rec_seal_parts(mv_rec_dir *d, uint8_t h[MV_RECORD_HEADER], const uint8_t *pt, size_t n,
                  uint8_t *ct, uint8_t tag[MV_RECORD_TAG], char *msg, size_t msglen)
{
    if (n == 0 || n > MV_RECORD_MAX)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "record of %zu bytes", n);
    if (d->seq >= MV_RECORD_LIMIT)
        return mv_setmsg(msg, msglen, MV_ERR_REKEY,
                         "stream sealed %llu records under one key; resume on a new stream",
                         (unsigned long long)d->seq);
    memcpy(h, MV_RECORD_MAGIC, 4);
    le32(h + 4, (uint32_t)n);
    for (int i = 0; i < 8; i++)
        h[8 + i] = (uint8_t)(d->seq >> (8 * i));
    int outl = 0, fin = 0;
#ifdef HUTONG_IPSEC_MB
    if (d->gcm) {
        gcm_pass(d, h, pt, n, ct, tag);
        d->seq++;
        return MV_OK;
    }
#endif
    if (!start_record(d, d->seq, h) || EVP_CipherUpdate(d->ctx, ct, &outl, pt, (int)n) != 1 ||
        EVP_CipherFinal_ex(d->ctx, ct + outl, &fin) != 1 || (size_t)(outl + fin) != n ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, MV_RECORD_TAG, tag) != 1)
        return ossl_fail(msg, msglen, MV_ERR_RECORD, "sealing a record");
    d->seq++;
    return MV_OK;
}

int
mv_rec_seal(mv_rec_dir *d, const uint8_t *pt, size_t n, uint8_t *out, char *msg, size_t msglen)
{
    return mv_rec_seal_parts(d, out, pt, n, out + MV_RECORD_HEADER, out + MV_RECORD_HEADER + n,
                             msg, msglen);
}

int
mv_rec_header(const mv_rec_dir *d, const uint8_t *h, size_t *n, char *msg, size_t msglen)
{
    if (memcmp(h, MV_RECORD_MAGIC, 4) != 0)
        return mv_setmsg(msg, msglen, MV_ERR_RECORD,
                         "record %llu: bad magic %02x%02x%02x%02x (injected or corrupted bytes)",
                         (unsigned long long)d->seq, h[0], h[1], h[2], h[3]);
    uint32_t len = (uint32_t)rdle(h + 4, 4);
    if (len == 0 || len > MV_RECORD_MAX)
        return mv_setmsg(msg, msglen, MV_ERR_RECORD,
                         "record %llu: length %u outside 1..%u (injected or corrupted bytes)",
                         (unsigned long long)d->seq, len, MV_RECORD_MAX);
    uint64_t seq = rdle(h + 8, 8);
    if (seq != d->seq)
        return mv_setmsg(msg, msglen, MV_ERR_RECORD,
                         "record %llu arrived where record %llu was expected (a record was "
                         "dropped, replayed or reordered in transit)",
                         (unsigned long long)seq, (unsigned long long)d->seq);
    *n = len;
    return MV_OK;
}

int
mv_rec_open(mv_rec_dir *d, const uint8_t *rec, size_t n, uint8_t *pt, char *msg, size_t msglen)
{
    int outl = 0, fin = 0;
    const uint8_t *ct = rec + MV_RECORD_HEADER;
#ifdef HUTONG_IPSEC_MB
    if (d->gcm) {
        uint8_t tag[MV_RECORD_TAG];
        gcm_pass(d, rec, ct, n, pt, tag);
        if (CRYPTO_memcmp(tag, ct + n, MV_RECORD_TAG) != 0)
            return mv_setmsg(msg, msglen, MV_ERR_RECORD,
                             "record %llu failed authentication (tampered with or injected in "
                             "transit, or sealed with another key)", (unsigned long long)d->seq);
        d->seq++;
        return MV_OK;
    }
#endif
    if (!start_record(d, d->seq, rec) || EVP_CipherUpdate(d->ctx, pt, &outl, ct, (int)n) != 1 ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, MV_RECORD_TAG,
                            (void *)(ct + n)) != 1) {
        return ossl_fail(msg, msglen, MV_ERR_RECORD, "opening a record");
    }
    if (EVP_CipherFinal_ex(d->ctx, pt + outl, &fin) != 1 || (size_t)(outl + fin) != n) {
        ERR_clear_error();
        return mv_setmsg(msg, msglen, MV_ERR_RECORD,
                         "record %llu failed authentication (tampered with or injected in "
                         "transit, or sealed with another key)", (unsigned long long)d->seq);
    }
    d->seq++;
    return MV_OK;
}

int
mv_check_records(int cipher, const mv_dir_keys *k, const uint8_t *buf, size_t len,
                 size_t *nrec, char *msg, size_t msglen)
{
    mv_rec_dir d;
    size_t off = 0, count = 0;
    int st = mv_rec_init(&d, cipher, k, 0, msg, msglen);
    uint8_t *pt = st ? NULL : OPENSSL_malloc(MV_RECORD_MAX);
    if (!st && !pt)
        st = mv_setmsg(msg, msglen, MV_ERR_NOMEM, "no memory for a record");
    while (!st && off < len) {
        size_t n;
        if (len - off < MV_RECORD_HEADER) {
            st = mv_setmsg(msg, msglen, MV_ERR_CLOSED, "truncated record header at offset %zu",
                           off);
            break;
        }
        if ((st = mv_rec_header(&d, buf + off, &n, msg, msglen)))
            break;
        if (len - off < n + MV_RECORD_OVERHEAD) {
            st = mv_setmsg(msg, msglen, MV_ERR_CLOSED, "truncated record at offset %zu", off);
            break;
        }
        if ((st = mv_rec_open(&d, buf + off, n, pt, msg, msglen)))
            break;
        off += n + MV_RECORD_OVERHEAD;
        count++;
    }
    OPENSSL_free(pt);
    mv_rec_free(&d);  /* safe on the zeroed struct a failed init leaves */
    if (nrec)
        *nrec = count;
    return st;
}

double
mv_rec_rate(int cipher, double seconds)
{
    mv_dir_keys k;
    mv_rec_dir d;
    char msg[64];
    memset(&k, 7, sizeof k);
    uint8_t *buf = malloc(MV_RECORD_MAX + MV_RECORD_OVERHEAD);
    if (!buf || mv_rec_init(&d, cipher, &k, 1, msg, sizeof msg) != MV_OK) {
        free(buf);
        return 0.0;
    }
    memset(buf, 1, MV_RECORD_MAX + MV_RECORD_OVERHEAD);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double el = 0.0;
    uint64_t n = 0;
    do {
        uint8_t *body = buf + MV_RECORD_HEADER;
        if (mv_rec_seal_parts(&d, buf, body, MV_RECORD_MAX, body, body + MV_RECORD_MAX, msg,
                              sizeof msg) != MV_OK)
            break;
        n++;
        clock_gettime(CLOCK_MONOTONIC, &t);
        el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9;
    } while (el < seconds);
    mv_rec_free(&d);
    free(buf);
    return el > 0 ? (double)n * MV_RECORD_MAX / el : 0.0;
}
