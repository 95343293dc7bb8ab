/* Hutong chunk mover: see mover.h for the contract, docs/format.md for the wire. */
#define _GNU_SOURCE
#include "mover.h"

/* xxh3 with its AVX2 kernel compiled in beside the SSE2 one (the way
 * xxh_x86dispatch.c does it) and chosen at run time: twice the hashing speed
 * of the received blobs, and no -mavx2 needed for the whole extension. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XXH_X86DISPATCH 1
#define XXH_DISPATCH_AVX2 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
#define MV_XXH_AVX2 1
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "mover_record.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* HMAC-SHA256 (libcrypto) and the handshake's proofs                  */

void
mv_hmac_sha256(const uint8_t *key, size_t keylen, const uint8_t *msg, size_t msglen,
               uint8_t out[32])
{
    unsigned int n = 32;
    static const uint8_t none[1];
    /* HMAC() fails only without memory; a zeroed proof then never matches. */
    if (!HMAC(EVP_sha256(), keylen ? key : none, (int)keylen, msg, msglen, out, &n))
        memset(out, 0, 32);
}

/* What both ends of a handshake know (format.md, "Handshake"). */
typedef struct {
    uint8_t cn[MV_NONCE_LEN], sn[MV_NONCE_LEN];
    uint8_t cpub[MV_KX_LEN], spub[MV_KX_LEN];  /* ephemeral X25519 keys (zero: plaintext) */
    int op, cipher, flags;                      /* flags: HELLO byte 34 (MV_FLAG_*) */
    void *kx;                                   /* this end's ephemeral key, or NULL */
} mv_hs;

/* Free the ephemeral key and wipe what the handshake held. */
static void
hs_forget(mv_hs *hs)
{
    mv_kx_free(hs->kx);
    OPENSSL_cleanse(hs, sizeof *hs);
}

/* The proofs of the handshake: both bind the operation, the cipher, both
 * ephemeral public keys and the HELLO flags (appended when not 0, so a
 * handshake without flags proves exactly as before), so a man in the middle
 * can change none of them. */
static void
proof(const uint8_t *secret, size_t slen, const char *label, const mv_hs *hs, uint8_t out[32])
{
    uint8_t m[12 + 2 * MV_NONCE_LEN + 3 + 2 * MV_KX_LEN];
    size_t ll = strlen(label), n = 0;
    memcpy(m, label, ll);
    n = ll;
    memcpy(m + n, hs->cn, MV_NONCE_LEN);
    n += MV_NONCE_LEN;
    memcpy(m + n, hs->sn, MV_NONCE_LEN);
    n += MV_NONCE_LEN;
    m[n++] = (uint8_t)hs->op;
    m[n++] = (uint8_t)hs->cipher;
    memcpy(m + n, hs->cpub, MV_KX_LEN);
    n += MV_KX_LEN;
    memcpy(m + n, hs->spub, MV_KX_LEN);
    n += MV_KX_LEN;
    if (hs->flags)
        m[n++] = (uint8_t)hs->flags;
    mv_hmac_sha256(secret, slen, m, n, out);
}

/* ------------------------------------------------------------------ */
/* Status text and frame checks                                        */

const char *
mv_strerror(int status)
{
    switch (status) {
    case MV_OK: return "ok";
    case MV_ERR_IO: return "i/o error";
    case MV_ERR_TIMEOUT: return "timed out (peer stalled)";
    case MV_ERR_CLOSED: return "connection closed by peer";
    case MV_ERR_PROTOCOL: return "protocol error";
    case MV_ERR_LIMIT: return "length past limit";
    case MV_ERR_AUTH: return "authentication failed";
    case MV_ERR_CANCELLED: return "cancelled";
    case MV_ERR_CALLBACK: return "callback failed";
    case MV_ERR_PEER: return "peer reported an error";
    case MV_ERR_NOMEM: return "out of memory";
    case MV_ERR_ARG: return "bad argument";
    case MV_ERR_RECORD: return "record failed authentication";
    case MV_ERR_REKEY: return "stream key used up";
    default: return "unknown status";
    }
}

static uint32_t
rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void
put_header(uint8_t *h, int type, uint32_t len)
{
    memcpy(h, MV_MAGIC, 4);
    h[4] = MV_VERSION;
    h[5] = (uint8_t)type;
    h[6] = h[7] = 0;
    wr32(h + 8, len);
}

int
mv_setmsg(char *msg, size_t msglen, int status, const char *fmt, ...)
{
    if (msg && msglen && !msg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* Check a frame header; on success set *type and *len. */
static int
check_header(const uint8_t *h, uint32_t max_blob, int *type, uint32_t *len, char *msg,
             size_t msglen)
{
    if (memcmp(h, MV_MAGIC, 4) != 0)
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "bad frame magic %02x%02x%02x%02x",
                      h[0], h[1], h[2], h[3]);
    if (h[4] != MV_VERSION)
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "unsupported protocol version %u", h[4]);
    if (h[6] || h[7])
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "frame flags %02x%02x must be 0", h[6], h[7]);
    int t = h[5];
    uint32_t n = rd32(h + 8);
    uint32_t lo, hi;
    switch (t) {
    case MV_HELLO: lo = hi = MV_HELLO_LEN; break;
    case MV_CHALLENGE: lo = hi = MV_CHALLENGE_LEN; break;
    case MV_AUTH: lo = hi = 32; break;
    case MV_READY: case MV_BYE: lo = hi = 0; break;
    case MV_WANT: case MV_OFFER: lo = 4 + MV_ID_LEN; hi = 4 + MV_ID_LEN * MV_MAX_BATCH; break;
    case MV_NEED: lo = 4; hi = 4 + MV_ID_LEN * MV_MAX_BATCH; break;
    case MV_DATA: lo = MV_ID_LEN + MV_BLOB_HEADER_LEN; hi = MV_ID_LEN + max_blob; break;
    case MV_MISSING: lo = hi = MV_ID_LEN; break;
    case MV_END: case MV_ACK: lo = hi = 8; break;
    case MV_ERROR: lo = 4; hi = 4 + MV_MAX_ERROR_TEXT; break;
    case MV_BASES: lo = 4 + 2 * MV_ID_LEN; hi = 4 + 2 * MV_ID_LEN * MV_MAX_PAIRS; break;
    case MV_HAVE: lo = 5; hi = 4 + MV_MAX_PAIRS / 8; break;
    default:
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "unknown frame type %d", t);
    }
    if (n < lo || n > hi)
        return mv_setmsg(msg, msglen, n > hi ? MV_ERR_LIMIT : MV_ERR_PROTOCOL,
                      "frame type %d has length %u, allowed %u..%u", t, n, lo, hi);
    *type = t;
    *len = n;
    return MV_OK;
}

/* Check a WANT / OFFER / NEED payload: count u32 then count ids. */
static int
check_batch(const uint8_t *p, uint32_t len, uint32_t *count, char *msg, size_t msglen)
{
    uint32_t c = rd32(p);
    if (c > MV_MAX_BATCH)
        return mv_setmsg(msg, msglen, MV_ERR_LIMIT, "batch of %u ids exceeds the limit of %d",
                      c, MV_MAX_BATCH);
    if ((uint64_t)4 + (uint64_t)c * MV_ID_LEN != len)
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL,
                      "batch says %u ids but its frame has %u bytes", c, len);
    *count = c;
    return MV_OK;
}

/* Check a BASES payload (count u32, count x (chunk id, base id)) against the
 * batch of `bn` ids it is about: 1 .. MV_MAX_PAIRS pairs, each naming a chunk
 * of the batch, in batch order, and a base other than the chunk. With no batch
 * (bn 0), only the lengths are checked. */
static int
check_bases(const uint8_t *p, uint32_t len, const uint8_t *batch, size_t bn, uint32_t *npairs,
            char *msg, size_t msglen)
{
    uint32_t n = rd32(p);
    if (n > MV_MAX_PAIRS)
        return mv_setmsg(msg, msglen, MV_ERR_LIMIT, "BASES of %u pairs exceeds the limit of %d",
                         n, MV_MAX_PAIRS);
    if (n == 0 || (uint64_t)4 + (uint64_t)n * 2 * MV_ID_LEN != len)
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL,
                         "BASES says %u pairs but its frame has %u bytes", n, len);
    size_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *pair = p + 4 + (size_t)i * 2 * MV_ID_LEN;
        if (memcmp(pair, pair + MV_ID_LEN, MV_ID_LEN) == 0)
            return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "BASES names a chunk as its own base");
        if (!batch)
            continue;
        while (pos < bn && memcmp(batch + pos * MV_ID_LEN, pair, MV_ID_LEN) != 0)
            pos++;
        if (pos == bn)
            return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL,
                             "BASES names a chunk that is not in the batch (or out of order)");
    }
    *npairs = n;
    return MV_OK;
}

/* Check a HAVE payload (count u32, then a bitmap of count bits, unused bits 0)
 * answering a BASES of `npairs` pairs (0: any count). */
static int
check_have(const uint8_t *p, uint32_t len, uint32_t npairs, char *msg, size_t msglen)
{
    uint32_t n = rd32(p);
    if (n == 0 || n > MV_MAX_PAIRS || (npairs && n != npairs) || len != 4 + (n + 7) / 8)
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL,
                         "HAVE of %u bits in %u bytes does not answer a BASES of %u pairs", n,
                         len, npairs);
    if (n % 8 && p[4 + n / 8] >> (n % 8))
        return mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "HAVE sets bits past its count");
    return MV_OK;
}

int
mv_check_frames(const uint8_t *buf, size_t len, uint32_t max_blob, size_t *nframes, char *msg,
                size_t msglen)
{
    size_t off = 0, n = 0;
    if (!max_blob)
        max_blob = MV_DEFAULT_MAX_BLOB;
    int st = MV_OK;
    while (off < len) {
        if (len - off < MV_HEADER_LEN) {
            st = mv_setmsg(msg, msglen, MV_ERR_CLOSED, "truncated frame header at offset %zu", off);
            break;
        }
        int type;
        uint32_t flen;
        st = check_header(buf + off, max_blob, &type, &flen, msg, msglen);
        if (st)
            break;
        off += MV_HEADER_LEN;
        if (len - off < flen) {
            st = mv_setmsg(msg, msglen, MV_ERR_CLOSED, "truncated frame payload at offset %zu", off);
            break;
        }
        const uint8_t *p = buf + off;
        uint32_t count;
        switch (type) {
        case MV_WANT: case MV_OFFER:
            st = check_batch(p, flen, &count, msg, msglen);
            if (!st && count == 0)
                st = mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "empty batch");
            break;
        case MV_BASES:
            st = check_bases(p, flen, NULL, 0, &count, msg, msglen);
            break;
        case MV_HAVE:
            st = check_have(p, flen, 0, msg, msglen);
            break;
        case MV_DATA: case MV_END: case MV_BYE: case MV_ERROR:
            break;
        default:
            st = mv_setmsg(msg, msglen, MV_ERR_PROTOCOL, "frame type %d not allowed from a client",
                        type);
        }
        if (st)
            break;
        off += flen;
        n++;
    }
    if (nframes)
        *nframes = n;
    return st;
}

/* ------------------------------------------------------------------ */
/* Connections: buffered reads and writes with deadlines               */

/* A blob of at least MV_CUT_MIN bytes is records of its own, cut before and
 * after it (so a receiver opens them straight into its spool buffer, with no
 * frame header of the next blob in them); smaller ones share. */
#define MV_CUT_MIN 32768u
#define MV_MAX_CUTS (2 * (MV_IO_BUF / MV_CUT_MIN) + 2)
/* Records sealed in place in wbuf and sent by one sendmsg (header, body, tag each). */
#define MV_SEND_RECS 32

typedef struct {
    int fd;
    volatile int *cancel;
    uint8_t *rbuf, *wbuf;
    size_t rstart, rend, wlen;
    int sendfile;         /* this connection's choice: sendfile (1) or pread + send (0) */
    char *msg;
    size_t msglen;
    uint32_t max_blob;
    uint64_t *bytes_out;  /* progress counter of blob bytes sent/received, or NULL */
    char lastpath[4096];  /* cached pack file for senders */
    int lastfd;
    /* The record layer, on once the handshake is done (rec_on): every frame is
     * then sealed into records on its way out of wbuf, and opened into rbuf. */
    int rec_on;
    mv_rec_dir tx, rx;
    uint8_t *cbuf;        /* received record bytes not yet opened (MV_IO_BUF) */
    size_t cstart, cend;
    uint8_t rhead[MV_SEND_RECS][MV_RECORD_OVERHEAD];  /* headers and tags of records being sent */
    uint32_t cuts[MV_MAX_CUTS];  /* wbuf offsets where a record must start (ascending) */
    size_t ncuts;
    int peer_error;       /* the status came from the peer's ERROR frame */
    /* Deadlines (CLOCK_MONOTONIC ns, 0: none) against peers that send slowly:
     * `frame_by` for the frame being read (armed at its first byte),
     * `hard_by` for the whole handshake. */
    uint64_t frame_by, hard_by;
    uint64_t frame_ns;    /* time a frame gets from its first byte (+ its length / min_rate) */
    int arm_frame;        /* arm frame_by at the next byte received */
    uint32_t min_rate;
} mv_conn;

static uint64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int
conn_init(mv_conn *c, int fd, volatile int *cancel, const mv_config *cfg, char *msg,
          size_t msglen)
{
    memset(c, 0, sizeof *c);
    uint32_t max_blob = cfg->max_blob;
    c->frame_ns = (uint64_t)((cfg->timeout > 0 ? cfg->timeout : 30.0) * 1e9);
    c->min_rate = cfg->min_rate ? cfg->min_rate : MV_DEFAULT_MIN_RATE;
    c->fd = fd;
    c->cancel = cancel;
    c->msg = msg;
    c->msglen = msglen;
    c->max_blob = max_blob ? max_blob : MV_DEFAULT_MAX_BLOB;
    c->lastfd = -1;
    c->rbuf = malloc(MV_IO_BUF);
    c->wbuf = malloc(MV_IO_BUF);
    if (!c->rbuf || !c->wbuf)
        return mv_setmsg(msg, msglen, MV_ERR_NOMEM, "no memory for stream buffers");
    return MV_OK;
}

static void
conn_free(mv_conn *c)
{
    free(c->rbuf);
    free(c->wbuf);
    c->rbuf = c->wbuf = NULL;
    free(c->cbuf);
    c->cbuf = NULL;
    if (c->tx.ctx)
        mv_rec_free(&c->tx);
    if (c->rx.ctx)
        mv_rec_free(&c->rx);
    c->rec_on = 0;
    if (c->lastfd >= 0)
        close(c->lastfd);
    c->lastfd = -1;
}

static int
cancelled(mv_conn *c)
{
    return c->cancel && __atomic_load_n(c->cancel, __ATOMIC_RELAXED);
}

static int
io_error(mv_conn *c, const char *what, int err)
{
    if (cancelled(c))
        return mv_setmsg(c->msg, c->msglen, MV_ERR_CANCELLED, "transfer cancelled");
    if (err == EAGAIN || err == EWOULDBLOCK)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_TIMEOUT, "%s: peer stalled past the timeout",
                      what);
    if (err == EPIPE || err == ECONNRESET)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_CLOSED, "%s: connection reset by peer", what);
    return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "%s: %s", what, strerror(err));
}

static int
send_all(mv_conn *c, const uint8_t *p, size_t n, int more)
{
    while (n) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (k < 0) {
            if (errno == EINTR && !cancelled(c))
                continue;
            return io_error(c, "send", errno);
        }
        p += k;
        n -= (size_t)k;
    }
    return MV_OK;
}

/* Send iov[0..n) whole (sendmsg; MSG_MORE if more follows). */
static int
sendmsg_all(mv_conn *c, struct iovec *iov, size_t n, int more)
{
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    while (n) {
        mh.msg_iov = iov;
        mh.msg_iovlen = n;
        ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (k < 0) {
            if (errno == EINTR && !cancelled(c))
                continue;
            return io_error(c, "send", errno);
        }
        while (n && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n) {
            iov->iov_base = (uint8_t *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    return MV_OK;
}

/* Send what wbuf holds: as it is, or, once the record layer is on, sealed in
 * place into records of up to MV_RECORD_MAX bytes (wbuf holds their bodies,
 * rhead their headers and tags; one sendmsg sends up to MV_SEND_RECS). */
static int
wb_flush(mv_conn *c, int more)
{
    if (!c->rec_on) {
        int st = send_all(c, c->wbuf, c->wlen, more);
        c->wlen = 0;
        return st;
    }
    struct iovec iov[3 * MV_SEND_RECS];
    size_t nrec = 0, at = 0, pending = 0;
    int st = MV_OK;
    for (size_t k = 0; k <= c->ncuts && !st; k++) {
        size_t end = k < c->ncuts ? c->cuts[k] : c->wlen;
        while (at < end && !st) {
            size_t n = end - at < MV_RECORD_MAX ? end - at : MV_RECORD_MAX;
            uint8_t *h = c->rhead[nrec], *body = c->wbuf + at;
            st = mv_rec_seal_parts(&c->tx, h, body, n, body, h + MV_RECORD_HEADER, c->msg,
                                   c->msglen);
            iov[3 * nrec] = (struct iovec){h, MV_RECORD_HEADER};
            iov[3 * nrec + 1] = (struct iovec){body, n};
            iov[3 * nrec + 2] = (struct iovec){h + MV_RECORD_HEADER, MV_RECORD_TAG};
            nrec++;
            pending += n;
            at += n;
            /* Send every record's worth at once: the peer opens it while the
             * next one is sealed. */
            if (!st && (pending >= MV_RECORD_MAX || nrec == MV_SEND_RECS)) {
                st = sendmsg_all(c, iov, 3 * nrec, 1);
                nrec = pending = 0;
            }
        }
    }
    c->wlen = c->ncuts = 0;
    return st ? st : sendmsg_all(c, iov, 3 * nrec, more);
}

/* Bytes a sender gathers in wbuf before it flushes: records are sealed and
 * sent while their bytes are still in cache. */
static size_t
wb_cap(const mv_conn *c)
{
    return c->rec_on ? MV_RECORD_MAX : MV_IO_BUF;
}

/* Start a record at the current end of wbuf (record layer on, room for a cut). */
static void
wb_cut(mv_conn *c)
{
    if (c->rec_on && c->wlen && c->ncuts < MV_MAX_CUTS &&
        (!c->ncuts || c->cuts[c->ncuts - 1] < c->wlen))
        c->cuts[c->ncuts++] = (uint32_t)c->wlen;
}

static int
wb_put(mv_conn *c, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        if (c->wlen == MV_IO_BUF) {
            int st = wb_flush(c, 1);
            if (st)
                return st;
        }
        size_t take = MV_IO_BUF - c->wlen < n ? MV_IO_BUF - c->wlen : n;
        memcpy(c->wbuf + c->wlen, b, take);
        c->wlen += take;
        b += take;
        n -= take;
    }
    return MV_OK;
}

static int
wb_frame(mv_conn *c, int type, const void *payload, uint32_t len)
{
    uint8_t h[MV_HEADER_LEN];
    put_header(h, type, len);
    int st = wb_put(c, h, sizeof h);
    return st ? st : wb_put(c, payload, len);
}

/* Receive at least one byte (at most cap) into p; *got says how many. */
static int
recv_some(mv_conn *c, uint8_t *p, size_t cap, size_t *got, const char *closed)
{
    for (;;) {
        if (cancelled(c))
            return mv_setmsg(c->msg, c->msglen, MV_ERR_CANCELLED, "transfer cancelled");
        uint64_t by = c->frame_by && (!c->hard_by || c->frame_by < c->hard_by) ? c->frame_by
                                                                               : c->hard_by;
        if (by) {  /* a deadline: wait for the bytes at most until then */
            uint64_t now = mono_ns();
            int ms = now >= by ? 0 : (int)((by - now + 999999) / 1000000);
            struct pollfd pf = {.fd = c->fd, .events = POLLIN};
            int r = ms > 0 ? poll(&pf, 1, ms) : 0;
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0)
                return mv_setmsg(c->msg, c->msglen, MV_ERR_TIMEOUT,
                                 by == c->hard_by ? "peer did not authenticate in time"
                                                  : "peer sends too slowly (a frame past its "
                                                    "deadline)");
        }
        ssize_t k = recv(c->fd, p, cap, 0);
        if (k > 0) {
            if (c->arm_frame) {
                c->frame_by = mono_ns() + c->frame_ns;
                c->arm_frame = 0;
            }
            *got = (size_t)k;
            return MV_OK;
        }
        if (k == 0)
            return mv_setmsg(c->msg, c->msglen, MV_ERR_CLOSED, "%s", closed);
        if (errno != EINTR)
            return io_error(c, "recv", errno);
    }
}

/* Move the unread bytes buf[*start..*end) to the front of buf. */
static void
shift(uint8_t *buf, size_t *start, size_t *end)
{
    memmove(buf, buf + *start, *end - *start);
    *end -= *start;
    *start = 0;
}

/* Make n (<= MV_IO_BUF) received record bytes available at cbuf + cstart. */
static int
cb_need(mv_conn *c, size_t n)
{
    if (c->cstart + n > MV_IO_BUF)
        shift(c->cbuf, &c->cstart, &c->cend);
    while (c->cend - c->cstart < n) {
        size_t got;
        int st = recv_some(c, c->cbuf + c->cend, MV_IO_BUF - c->cend, &got,
                           c->cend > c->cstart
                               ? "connection closed by peer mid-record (truncated in transit)"
                               : "connection closed by peer");
        if (st)
            return st;
        c->cend += got;
    }
    return MV_OK;
}

/* Open the next record into rbuf at rend. Its plaintext becomes readable
 * (rend moves) only once its header, sequence number and tag are verified. */
static int
rec_more(mv_conn *c)
{
    size_t n;
    int st;
    if ((st = cb_need(c, MV_RECORD_HEADER)) ||
        (st = mv_rec_header(&c->rx, c->cbuf + c->cstart, &n, c->msg, c->msglen)) ||
        (st = cb_need(c, n + MV_RECORD_OVERHEAD)))
        return st;
    if (MV_IO_BUF - c->rend < n)
        shift(c->rbuf, &c->rstart, &c->rend);
    /* Callers ask for more only with less than a frame header and a batch
     * pending (< 64 KiB), so a record always fits; checked all the same. */
    if (MV_IO_BUF - c->rend < n)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_LIMIT, "no room for a record of %zu bytes",
                         n);
    if ((st = mv_rec_open(&c->rx, c->cbuf + c->cstart, n, c->rbuf + c->rend, c->msg,
                          c->msglen)))
        return st;
    c->cstart += n + MV_RECORD_OVERHEAD;
    c->rend += n;
    return MV_OK;
}

/* Receive more bytes into rbuf (at least one). */
static int
rb_more(mv_conn *c)
{
    if (c->rstart == c->rend)
        c->rstart = c->rend = 0;
    else if (c->rend == MV_IO_BUF)
        shift(c->rbuf, &c->rstart, &c->rend);
    if (c->rec_on)
        return rec_more(c);
    size_t got;
    int st = recv_some(c, c->rbuf + c->rend, MV_IO_BUF - c->rend, &got,
                       "connection closed by peer");
    if (!st)
        c->rend += got;
    return st;
}

/* Turn the record layer on (after the handshake): frames are sealed with
 * `tx` and opened with `rx` from now on. Bytes already received after the
 * last handshake frame are the peer's first records. */
static int
conn_records(mv_conn *c, int cipher, const mv_dir_keys *tx, const mv_dir_keys *rx)
{
    int st;
    c->cbuf = malloc(MV_IO_BUF);
    if (!c->cbuf)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for record buffers");
    if ((st = mv_rec_init(&c->tx, cipher, tx, 1, c->msg, c->msglen)) ||
        (st = mv_rec_init(&c->rx, cipher, rx, 0, c->msg, c->msglen)))
        return st;
    c->cend = c->rend - c->rstart;
    memcpy(c->cbuf, c->rbuf + c->rstart, c->cend);
    c->cstart = 0;
    c->rstart = c->rend = 0;
    c->rec_on = 1;
    c->sendfile = 0;  /* sealed bytes pass through user space */
    return MV_OK;
}

/* Complete the key exchange, derive the stream's keys and turn the record
 * layer on (plaintext: nothing). */
static int
conn_secure(mv_conn *c, const uint8_t *secret, size_t slen, const mv_hs *hs, int server)
{
    if (hs->cipher == MV_CIPHER_NONE)
        return MV_OK;
    mv_dir_keys c2s, s2c;
    uint8_t dh[MV_KX_LEN];
    int st = mv_kx_shared(hs->kx, server ? hs->cpub : hs->spub, dh, c->msg, c->msglen);
    if (!st)
        st = mv_rec_derive(secret, slen, dh, hs->cn, hs->sn, hs->op, hs->cipher, &c2s, &s2c,
                           c->msg, c->msglen);
    if (!st)
        st = server ? conn_records(c, hs->cipher, &s2c, &c2s)
                    : conn_records(c, hs->cipher, &c2s, &s2c);
    OPENSSL_cleanse(dh, sizeof dh);
    OPENSSL_cleanse(&c2s, sizeof c2s);
    OPENSSL_cleanse(&s2c, sizeof s2c);
    return st;
}

/* Make n bytes (n <= MV_IO_BUF) available at rbuf + rstart. */
static int
rb_need(mv_conn *c, size_t n)
{
    if (c->rstart + n > MV_IO_BUF)
        shift(c->rbuf, &c->rstart, &c->rend);
    while (c->rend - c->rstart < n) {
        int st = rb_more(c);
        if (st)
            return st;
    }
    return MV_OK;
}

/* Read a frame header and its payload (for every type but DATA, whose blob is
 * streamed by the caller). The payload is at rbuf + rstart, consumed by the
 * caller with c->rstart += len. */
static int
read_frame(mv_conn *c, int *type, uint32_t *len)
{
    /* Waiting for a frame is idle time (the socket timeout); once its first
     * byte is here, the frame must be complete within frame_ns plus its
     * length at min_rate (a DATA frame's blob, streamed by the caller, too). */
    c->frame_by = 0;
    c->arm_frame = 1;
    int st = rb_need(c, MV_HEADER_LEN);
    if (st)
        return st;
    if (c->arm_frame) {  /* the header was already buffered */
        c->frame_by = mono_ns() + c->frame_ns;
        c->arm_frame = 0;
    }
    st = check_header(c->rbuf + c->rstart, c->max_blob, type, len, c->msg, c->msglen);
    if (st)
        return st;
    c->frame_by += (uint64_t)*len * 1000000000u / (c->min_rate ? c->min_rate : 1);
    c->rstart += MV_HEADER_LEN;
    if (*type == MV_DATA)
        return rb_need(c, MV_ID_LEN);
    st = rb_need(c, *len);
    if (st)
        return st;
    if (*type == MV_ERROR) {
        const uint8_t *p = c->rbuf + c->rstart;
        uint32_t code = rd32(p);
        int tl = (int)(*len - 4);
        mv_setmsg(c->msg, c->msglen, MV_ERR_PEER, "peer error (%s): %.*s", mv_strerror((int)code),
               tl, (const char *)p + 4);
        c->rstart += *len;
        c->peer_error = 1;
        /* Kept as they are: the peer refused our proof or cipher, or found a
         * record of ours altered (not worth a retry); its key reached its
         * record limit (resume on new streams). */
        if (code == MV_ERR_RECORD || code == MV_ERR_AUTH || code == MV_ERR_REKEY)
            return (int)code;
        return MV_ERR_PEER;
    }
    return MV_OK;
}

static void
send_error(mv_conn *c, int status)
{
    uint8_t p[4 + MV_MAX_ERROR_TEXT];
    wr32(p, (uint32_t)status);
    size_t n = c->msg ? strnlen(c->msg, MV_MAX_ERROR_TEXT) : 0;
    memcpy(p + 4, c->msg, n);
    c->wlen = c->ncuts = 0;
    if (wb_frame(c, MV_ERROR, p, (uint32_t)(4 + n)) == MV_OK)
        wb_flush(c, 0);
}

static void
set_sock_opts(int fd, const mv_config *cfg)
{
    double t = cfg->timeout > 0 ? cfg->timeout : 30.0;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg->sndbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &cfg->sndbuf, sizeof cfg->sndbuf);
    if (cfg->rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &cfg->rcvbuf, sizeof cfg->rcvbuf);
    if (cfg->congestion[0])
        setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cfg->congestion, strlen(cfg->congestion));
}

int
mv_check_congestion(const char *name, char *msg, size_t msglen)
{
    if (!name[0])
        return MV_OK;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mv_setmsg(msg, msglen, MV_ERR_IO, "socket: %s", strerror(errno));
    int rc = setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, strlen(name));
    int err = errno;
    close(fd);
    if (rc != 0)
        return mv_setmsg(msg, msglen, MV_ERR_ARG,
                      "TCP congestion control \"%s\" is not usable here (%s): choose one of "
                      "/proc/sys/net/ipv4/tcp_allowed_congestion_control", name, strerror(err));
    return MV_OK;
}

/* ------------------------------------------------------------------ */
/* Sending blobs from pack files                                        */

/* Whether the peer of socket fd is on this host: a loopback address, or the
 * socket's own address. */
static int
peer_is_local(int fd)
{
    struct sockaddr_storage peer, self;
    socklen_t pl = sizeof peer, sl = sizeof self;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 ||
        getsockname(fd, (struct sockaddr *)&self, &sl) != 0)
        return 0;
    if (peer.ss_family == AF_INET) {
        const struct in_addr *a = &((struct sockaddr_in *)&peer)->sin_addr;
        return (ntohl(a->s_addr) >> 24) == 127 ||
               a->s_addr == ((struct sockaddr_in *)&self)->sin_addr.s_addr;
    }
    if (peer.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&peer)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a) ||
            memcmp(a, &((struct sockaddr_in6 *)&self)->sin6_addr, sizeof *a) == 0)
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* Whether a sender uses sendfile on connection fd (cfg.use_sendfile). */
static int
choose_sendfile(const mv_config *cfg, int fd)
{
    if (cfg->use_sendfile == MV_SENDFILE_AUTO)
        return !peer_is_local(fd);
    return cfg->use_sendfile != 0;
}

static int
open_cached(mv_conn *c, const char *path)
{
    if (c->lastfd >= 0 && strcmp(c->lastpath, path) == 0)
        return c->lastfd;
    if (c->lastfd >= 0)
        close(c->lastfd);
    c->lastfd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->lastfd >= 0)
        snprintf(c->lastpath, sizeof c->lastpath, "%s", path);
    return c->lastfd;
}

/* Send one DATA frame whose blob is `src`. A file that cannot be opened or is
 * shorter than the source says is reported as status MV_ERR_IO before any
 * byte of the frame is sent, so the caller can send MISSING instead. */
static int
send_blob(mv_conn *c, const uint8_t *id, const mv_source *src, int use_sendfile)
{
    int fd = open_cached(c, src->path);
    if (fd < 0)
        return MV_ERR_IO;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < src->offset + src->length ||
        src->length < MV_BLOB_HEADER_LEN || src->length > c->max_blob)
        return MV_ERR_IO;
    uint8_t h[MV_HEADER_LEN + MV_ID_LEN];
    put_header(h, MV_DATA, MV_ID_LEN + src->length);
    memcpy(h + MV_HEADER_LEN, id, MV_ID_LEN);
    int s = wb_put(c, h, sizeof h);
    if (s)
        return s;
    uint64_t off = src->offset, left = src->length;
    if (src->length >= MV_CUT_MIN)
        wb_cut(c);
    if (use_sendfile) {
        if ((s = wb_flush(c, 1)))
            return s;
        while (left) {
            off_t o = (off_t)off;
            ssize_t k = sendfile(c->fd, fd, &o, left > (1u << 30) ? (1u << 30) : left);
            if (k < 0) {
                if (errno == EINTR && !cancelled(c))
                    continue;
                return io_error(c, "sendfile", errno);
            }
            if (k == 0)
                return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "pack file %s shrank while sending",
                              src->path);
            off += (uint64_t)k;
            left -= (uint64_t)k;
        }
    } else {
        while (left) {
            if (c->wlen >= wb_cap(c) && (s = wb_flush(c, 1)))
                return s;
            size_t room = wb_cap(c) - c->wlen;
            size_t want = left < room ? (size_t)left : room;
            ssize_t k = pread(fd, c->wbuf + c->wlen, want, (off_t)off);
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "read %s: %s", src->path,
                              strerror(errno));
            }
            if (k == 0)
                return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "pack file %s shrank while sending",
                              src->path);
            c->wlen += (size_t)k;
            off += (uint64_t)k;
            left -= (uint64_t)k;
        }
        if (src->length >= MV_CUT_MIN)
            wb_cut(c);
    }
    if (c->bytes_out)
        __atomic_fetch_add(c->bytes_out, src->length, __ATOMIC_RELAXED);
    return MV_OK;
}

/* Send DATA or MISSING for each id of a batch; returns the counts. The ids
 * are resolved MV_RESOLVE_STEP at a time, each step sent before the next is
 * resolved: the socket buffer keeps the peer busy while a step resolves.
 * `over` (or NULL): per id, a delta blob to send instead (path NULL: none);
 * those ids are not resolved. */
static int
send_batch(mv_conn *c, const mv_config *cfg, const uint8_t *ids, size_t count,
           const mv_source *over, uint32_t *ndata, uint32_t *nmissing, uint64_t *chunks_ctr,
           int missing_frames)
{
    size_t room = count < MV_RESOLVE_STEP ? count : MV_RESOLVE_STEP;
    mv_source *src = calloc(room ? room : 1, sizeof *src);
    uint8_t *sub = over ? malloc((room ? room : 1) * MV_ID_LEN) : NULL;
    if (!src || (over && !sub)) {
        free(src);
        free(sub);
        return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for a batch");
    }
    int st = MV_OK;
    *ndata = *nmissing = 0;
    for (size_t at = 0; at < count && !st; at += room) {
        size_t n = count - at < room ? count - at : room, k = n;
        memset(src, 0, n * sizeof *src);
        const uint8_t *ask = ids + at * MV_ID_LEN;
        if (over) {  /* resolve only the ids not sent as deltas */
            k = 0;
            for (size_t i = 0; i < n; i++)
                if (!over[at + i].path)
                    memcpy(sub + k++ * MV_ID_LEN, ids + (at + i) * MV_ID_LEN, MV_ID_LEN);
            ask = sub;
        }
        if (k && cfg->resolve(cfg->ctx, ask, k, src))
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "resolve callback failed");
        for (size_t i = 0, j = 0; i < n && !st; i++) {
            const uint8_t *id = ids + (at + i) * MV_ID_LEN;
            const mv_source *one = over && over[at + i].path ? &over[at + i] : &src[j++];
            int s = one->path ? send_blob(c, id, one, c->sendfile) : MV_ERR_IO;
            if (s == MV_OK) {
                (*ndata)++;
                if (chunks_ctr)
                    __atomic_fetch_add(chunks_ctr, 1, __ATOMIC_RELAXED);
            } else if (s == MV_ERR_IO && (!one->path || c->msg[0] == 0)) {
                (*nmissing)++;  /* not held (or unreadable before any byte was sent) */
                if (missing_frames)
                    st = wb_frame(c, MV_MISSING, id, MV_ID_LEN);
            } else {
                st = s;
            }
        }
        for (size_t i = 0; i < k; i++) {
            free(src[i].path);
            src[i].path = NULL;
        }
    }
    free(src);
    free(sub);
    return st;
}

static void
sources_free(mv_source *src, size_t n)
{
    if (!src)
        return;
    for (size_t i = 0; i < n; i++)
        free(src[i].path);
    free(src);
}

/* A WANT a fetch server read while it waited for a HAVE (the client pipelines
 * up to two batches, so at most one arrives in between). */
typedef struct {
    uint8_t *ids;
    uint32_t count;
    int full;
} mv_stash;

/* The sender's half of delta transfer for one batch (format.md, "Delta
 * transfer on the mover"): ask cfg->bases for candidate pairs; if there are
 * any, send BASES, read the receiver's HAVE and ask cfg->deltas for a delta
 * blob per chunk against the first base it holds. *over is then NULL (every
 * chunk whole) or `count` sources, a delta blob's where path is set. A fetch
 * server passes `stash` for a pipelined WANT arriving before the HAVE. */
static int
offer_bases(mv_conn *c, const mv_config *cfg, const uint8_t *ids, size_t count,
            mv_stash *stash, mv_source **over)
{
    *over = NULL;
    if (!cfg->bases || !cfg->deltas || !count)
        return MV_OK;
    uint8_t *buf = malloc(4 + (size_t)MV_MAX_PAIRS * 2 * MV_ID_LEN);
    mv_source *dsrc = NULL, *out = NULL;
    size_t np = 0, nheld = 0;
    int st = MV_OK, type;
    uint32_t len, checked;
    if (!buf)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for delta bases");
    uint8_t *pairs = buf + 4;  /* the BASES payload: count, then the pairs */
    if (cfg->bases(cfg->ctx, ids, count, pairs, &np) || np > MV_MAX_PAIRS) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "bases callback failed");
        goto done;
    }
    if (!np)
        goto done;
    uint8_t head[MV_HEADER_LEN];
    uint32_t blen = 4 + (uint32_t)np * 2 * MV_ID_LEN;
    put_header(head, MV_BASES, blen);
    wr32(buf, (uint32_t)np);
    if (check_bases(buf, blen, ids, count, &checked, c->msg, c->msglen)) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK,
                       "bases callback returned pairs not of the batch, in its order");
        goto done;
    }
    if ((st = wb_put(c, head, sizeof head)) || (st = wb_put(c, buf, blen)) ||
        (st = wb_flush(c, 0)))
        goto done;
    for (;;) {
        if ((st = read_frame(c, &type, &len)))
            goto done;
        if (type == MV_HAVE)
            break;
        if (type == MV_WANT && stash && !stash->full) {
            if ((st = check_batch(c->rbuf + c->rstart, len, &stash->count, c->msg, c->msglen)))
                goto done;
            memcpy(stash->ids, c->rbuf + c->rstart + 4, (size_t)stash->count * MV_ID_LEN);
            stash->full = 1;
            c->rstart += len;
            continue;
        }
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                       "expected HAVE after BASES, got frame type %d", type);
        goto done;
    }
    const uint8_t *bits = c->rbuf + c->rstart + 4;
    if ((st = check_have(c->rbuf + c->rstart, len, (uint32_t)np, c->msg, c->msglen)))
        goto done;
    for (size_t i = 0; i < np; i++)
        if (bits[i / 8] >> (i % 8) & 1)
            memmove(pairs + nheld++ * 2 * MV_ID_LEN, pairs + i * 2 * MV_ID_LEN, 2 * MV_ID_LEN);
    c->rstart += len;
    if (!nheld)
        goto done;
    dsrc = calloc(nheld, sizeof *dsrc);
    out = calloc(count, sizeof *out);
    if (!dsrc || !out) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for delta sources");
        goto done;
    }
    if (cfg->deltas(cfg->ctx, pairs, nheld, dsrc)) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "deltas callback failed");
        goto done;
    }
    for (size_t i = 0, pos = 0; i < nheld; i++) {
        const uint8_t *cid = pairs + i * 2 * MV_ID_LEN;
        while (pos < count && memcmp(ids + pos * MV_ID_LEN, cid, MV_ID_LEN) != 0)
            pos++;
        if (pos < count && !out[pos].path && dsrc[i].path) {
            out[pos] = dsrc[i];
            dsrc[i].path = NULL;
        }
    }
    *over = out;
    out = NULL;
done:
    sources_free(dsrc, nheld);
    sources_free(out, count);
    free(buf);
    return st;
}

/* The receiver's half: answer the BASES frame at c->rbuf + c->rstart (about
 * the batch `batch` of `bn` ids) with HAVE, a bit per pair set when the store
 * holds its base (cfg->holds). */
static int
answer_bases(mv_conn *c, const mv_config *cfg, uint32_t len, const uint8_t *batch, size_t bn)
{
    uint32_t np;
    int st = check_bases(c->rbuf + c->rstart, len, batch, bn, &np, c->msg, c->msglen);
    if (st)
        return st;
    uint8_t *bases = malloc((size_t)np * MV_ID_LEN), *held = calloc(np, 1);
    uint8_t have[MV_HEADER_LEN + 4 + MV_MAX_PAIRS / 8] = {0};
    if (!bases || !held) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for delta bases");
        goto done;
    }
    for (uint32_t i = 0; i < np; i++)
        memcpy(bases + (size_t)i * MV_ID_LEN,
               c->rbuf + c->rstart + 4 + (size_t)i * 2 * MV_ID_LEN + MV_ID_LEN, MV_ID_LEN);
    c->rstart += len;
    if (cfg->holds && cfg->holds(cfg->ctx, bases, np, held)) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "holds callback failed");
        goto done;
    }
    uint32_t hlen = 4 + (np + 7) / 8;
    put_header(have, MV_HAVE, hlen);
    wr32(have + MV_HEADER_LEN, np);
    for (uint32_t i = 0; i < np; i++)
        if (held[i])
            have[MV_HEADER_LEN + 4 + i / 8] |= (uint8_t)(1u << (i % 8));
    if ((st = wb_put(c, have, MV_HEADER_LEN + hlen)) == MV_OK)
        st = wb_flush(c, 0);
done:
    free(bases);
    free(held);
    return st;
}

/* ------------------------------------------------------------------ */
/* Receiving blobs into spool files                                     */

/* O_DIRECT spools (cfg.direct): a ring of aligned buffers. The stream fills
 * job[head % NBUF].buf; MV_DIRECT_WRITERS threads take the queued jobs in
 * order and write them (two writes in flight keep a virtual disk busier). */
#define MV_HUGE_ALIGN (2u << 20)

typedef struct {
    uint8_t *buf;           /* MV_DIRECT_BUF bytes, MV_HUGE_ALIGN-aligned */
    int fd;
    uint64_t off;           /* file offset of buf[0] */
    size_t len;             /* bytes to write (a multiple of MV_DIRECT_ALIGN) */
    int busy;               /* queued or being written */
} mv_wjob;

typedef struct {
    pthread_t thread[MV_DIRECT_WRITERS];
    int nthreads;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mv_wjob job[MV_DIRECT_NBUF];
    uint64_t head, take, done;  /* jobs submitted, taken by a writer, written (or failed) */
    int stop;
    int err;                /* errno of the first failed write, until drained */
} mv_writer;

typedef struct {
    const mv_config *cfg;
    char path[4096];
    int fd;
    uint64_t off;           /* end of the last complete entry */
    uint64_t synced;        /* spool bytes whose writeback was started */
    mv_entry *e;
    size_t n, cap;
    uint32_t committed, rejected;
    XXH3_state_t *xxh;      /* digest of the raw blob being received */
    uint8_t head[MV_BLOB_HEADER_LEN];
    size_t nhead;
    int raw;                /* -1 header incomplete, 1 raw blob being hashed, 0 not checked */
    mv_writer *w;           /* direct: the writer thread and its buffers */
    uint8_t *cur;           /* direct: the buffer being filled */
    uint64_t cur_base;      /* direct: file offset of cur[0] */
    size_t cur_fill;        /* direct: bytes of cur filled (spool bytes cur_base..+fill) */
} mv_spool;

static uint64_t spool_seq;

static void
spool_init(mv_spool *sp, const mv_config *cfg)
{
    memset(sp, 0, sizeof *sp);
    sp->cfg = cfg;
    sp->fd = -1;
}

/* Start writeback of what the spool holds past `synced`, in steps of
 * MV_WRITEBACK bytes (or all of it with `all`), so that the commit's fsync
 * finds little left to write: the disk works while the network delivers. */
static void
spool_writeback(mv_spool *sp, int all)
{
    if (sp->fd < 0 || sp->w || (!all && sp->off < sp->synced + MV_WRITEBACK))
        return;
    (void)sync_file_range(sp->fd, (off_t)sp->synced, (off_t)(sp->off - sp->synced),
                          SYNC_FILE_RANGE_WRITE);
    sp->synced = sp->off;
}

/* The 36-byte blob header: magic, version 1, codec, flags, raw and payload
 * lengths, chunk id, xxh32 of the first 32 bytes (docs/format.md, "Blobs").
 * Returns 1 if `h` is a valid header of a raw blob of `blob_len` bytes whose
 * id is `id`: its payload can then be verified by its xxh3-128 alone. */
static int
raw_header_ok(const uint8_t *h, uint64_t blob_len, const uint8_t *id)
{
    if (memcmp(h, "HTCB", 4) != 0 || h[4] != 1 || h[5] != 0 || h[6] != 0 || h[7] != 0)
        return 0;
    uint32_t raw_len = rd32(h + 8), payload_len = rd32(h + 12);
    if (raw_len != payload_len || (uint64_t)payload_len + MV_BLOB_HEADER_LEN != blob_len)
        return 0;
    if (memcmp(h + 16, id, MV_ID_LEN) != 0)
        return 0;
    return rd32(h + 32) == XXH32(h, 32, 0);
}

static int
pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

static void *
writer_main(void *arg)
{
    mv_writer *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->take == w->head && !w->stop)
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->take == w->head)
            break;
        mv_wjob *j = &w->job[w->take++ % MV_DIRECT_NBUF];
        int err = w->err;
        pthread_mutex_unlock(&w->lock);
        if (!err && pwrite_all(j->fd, j->buf, j->len, j->off) != 0)
            err = errno ? errno : EIO;
        pthread_mutex_lock(&w->lock);
        if (err && !w->err)
            w->err = err;
        j->busy = 0;
        w->done++;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* Spool buffers kept for the next stream (up to MV_BUF_POOL): a new buffer's
 * pages are faulted in and zeroed by the kernel (a huge page at a time), which
 * cost about a fifth of a stream's CPU when every stream allocated its own. */
#define MV_BUF_POOL 16
static pthread_mutex_t buf_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *buf_pool[MV_BUF_POOL];
static int buf_pooled;

static uint8_t *
buf_get(void)
{
    uint8_t *b = NULL;
    pthread_mutex_lock(&buf_pool_lock);
    if (buf_pooled)
        b = buf_pool[--buf_pooled];
    pthread_mutex_unlock(&buf_pool_lock);
    if (b)
        return b;
    if (posix_memalign((void **)&b, MV_HUGE_ALIGN, MV_DIRECT_BUF) != 0)
        return NULL;
    (void)madvise(b, MV_DIRECT_BUF, MADV_HUGEPAGE);
    return b;
}

static void
buf_put(uint8_t *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&buf_pool_lock);
    if (buf_pooled < MV_BUF_POOL) {
        buf_pool[buf_pooled++] = b;
        b = NULL;
    }
    pthread_mutex_unlock(&buf_pool_lock);
    free(b);
}

static void
writer_free(mv_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->nthreads; i++)
        pthread_join(w->thread[i], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    for (int i = 0; i < MV_DIRECT_NBUF; i++)
        buf_put(w->job[i].buf);
    free(w);
}

static int
writer_new(mv_writer **out)
{
    mv_writer *w = calloc(1, sizeof *w);
    if (!w)
        return ENOMEM;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    int rc = 0;
    /* Huge-page aligned and advised: fewer TLB misses for the receive copy and
     * far fewer pages for O_DIRECT to pin per write. */
    for (int i = 0; i < MV_DIRECT_NBUF && !rc; i++)
        if (!(w->job[i].buf = buf_get()))
            rc = ENOMEM;
    for (int i = 0; i < MV_DIRECT_WRITERS && !rc; i++)
        if ((rc = pthread_create(&w->thread[i], NULL, writer_main, w)) == 0)
            w->nthreads++;
    if (rc) {
        writer_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* Queue cur[0..len) (padded with zeros to the alignment) for writing at
 * cur_base; then wait for a free buffer and make it cur, at `next_base`. */
static int
direct_submit(mv_spool *sp, mv_conn *c, size_t len, uint64_t next_base)
{
    mv_writer *w = sp->w;
    size_t alen = (len + MV_DIRECT_ALIGN - 1) & ~(size_t)(MV_DIRECT_ALIGN - 1);
    memset(sp->cur + len, 0, alen - len);
    pthread_mutex_lock(&w->lock);
    mv_wjob *j = &w->job[w->head % MV_DIRECT_NBUF];
    j->fd = sp->fd;
    j->off = sp->cur_base;
    j->len = alen;
    j->busy = 1;
    w->head++;
    pthread_cond_broadcast(&w->cond);
    while (w->job[w->head % MV_DIRECT_NBUF].busy)
        pthread_cond_wait(&w->cond, &w->lock);
    int err = w->err;
    pthread_mutex_unlock(&w->lock);
    sp->cur = w->job[w->head % MV_DIRECT_NBUF].buf;
    sp->cur_base = next_base;
    sp->cur_fill = 0;
    if (err)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "write spool %s: %s", sp->path,
                      strerror(err));
    return MV_OK;
}

/* Wait until every queued write is done; the first error of the spool, or 0. */
static int
direct_drain(mv_spool *sp)
{
    mv_writer *w = sp->w;
    pthread_mutex_lock(&w->lock);
    while (w->done != w->head)
        pthread_cond_wait(&w->cond, &w->lock);
    int err = w->err;
    w->err = 0;
    pthread_mutex_unlock(&w->lock);
    return err;
}

static int
spool_open(mv_spool *sp, mv_conn *c)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint32_t)time(NULL);
    uint64_t seq = __atomic_fetch_add(&spool_seq, 1, __ATOMIC_RELAXED);
    snprintf(sp->path, sizeof sp->path, "%s/mover-%ld-%08x-%llu.tmp", sp->cfg->spool_dir,
             (long)getpid(), r, (unsigned long long)seq);
    if (sp->cfg->direct && !sp->w) {
        int rc = writer_new(&sp->w);
        if (rc)
            return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no spool writer: %s",
                          strerror(rc));
    }
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (sp->cfg->direct ? O_DIRECT : 0);
    sp->fd = open(sp->path, flags, 0644);
    if (sp->fd < 0)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "create spool %s%s: %s", sp->path,
                      sp->cfg->direct ? " (O_DIRECT)" : "", strerror(errno));
    sp->off = sp->synced = MV_SPOOL_RESERVE;
    sp->n = 0;
    if (sp->w) {
        sp->cur = sp->w->job[sp->w->head % MV_DIRECT_NBUF].buf;
        sp->cur_base = 0;
        memset(sp->cur, 0, MV_SPOOL_RESERVE);
        sp->cur_fill = MV_SPOOL_RESERVE;
    }
    return MV_OK;
}

/* Close the spool file: direct, write its tail and wait for every write,
 * then cut it after the last complete entry. Returns 0 or an errno. */
static int
spool_close(mv_spool *sp, mv_conn *c)
{
    int err = 0;
    if (sp->w) {
        if (sp->cur_fill)
            direct_submit(sp, c, sp->cur_fill, 0);
        err = direct_drain(sp);
        if (!err && ftruncate(sp->fd, (off_t)sp->off) != 0)
            err = errno;
    }
    close(sp->fd);
    sp->fd = -1;
    return err;
}

/* Hand the spool to the callback (which owns the file from then on). */
static int
spool_handover(mv_spool *sp, mv_conn *c)
{
    if (sp->fd < 0)
        return MV_OK;
    int err = spool_close(sp, c);
    if (err || sp->n == 0) {
        unlink(sp->path);
        sp->n = 0;
        return err ? mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "write spool %s: %s", sp->path,
                            strerror(err))
                   : MV_OK;
    }
    uint32_t com = 0, rej = 0;
    int st = sp->cfg->spool(sp->cfg->ctx, sp->path, sp->e, sp->n, &com, &rej);
    sp->n = 0;
    if (st)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "spool callback failed");
    sp->committed += com;
    sp->rejected += rej;
    return MV_OK;
}

static void
spool_free(mv_spool *sp)
{
    if (sp->fd >= 0) {
        if (sp->w)
            direct_drain(sp);
        close(sp->fd);
        unlink(sp->path);
        sp->fd = -1;
    }
    writer_free(sp->w);
    sp->w = NULL;
    free(sp->e);
    sp->e = NULL;
    if (sp->xxh)
        XXH3_freeState(sp->xxh);
    sp->xxh = NULL;
}

#ifdef MV_XXH_AVX2
__attribute__((__target__("avx2"))) static void
xxh3_update_avx2(XXH3_state_t *st, const uint8_t *p, size_t n)
{
    (void)XXH3_update(st, p, n, XXH3_accumulate_512_avx2, XXH3_scrambleAcc_avx2);
}
#endif

static void
xxh3_update(XXH3_state_t *st, const uint8_t *p, size_t n)
{
#ifdef MV_XXH_AVX2
    if (__builtin_cpu_supports("avx2")) {
        xxh3_update_avx2(st, p, n);
        return;
    }
#endif
    (void)XXH3_128bits_update(st, p, n);
}

/* Check and hash the next `take` bytes of the blob of entry `ent`. */
static void
blob_update(mv_spool *sp, const mv_entry *ent, const uint8_t *p, size_t take)
{
    size_t skip = 0;
    if (sp->raw < 0) {
        skip = MV_BLOB_HEADER_LEN - sp->nhead < take ? MV_BLOB_HEADER_LEN - sp->nhead : take;
        memcpy(sp->head + sp->nhead, p, skip);
        sp->nhead += skip;
        if (sp->nhead == MV_BLOB_HEADER_LEN) {
            sp->raw = raw_header_ok(sp->head, ent->length, ent->id);
            if (sp->raw)
                XXH3_128bits_reset(sp->xxh);
        }
    }
    if (sp->raw == 1 && take > skip)
        xxh3_update(sp->xxh, p + skip, take - skip);
}

/* Receive `left` blob bytes straight into the spool buffers (direct). When
 * the blob's last bytes are asked for, the next frame's header and id are
 * received into rbuf by the same call. */
static int
recv_direct(mv_spool *sp, mv_conn *c, const mv_entry *ent, uint64_t left)
{
    int st;
    while (left) {
        if (sp->cur_fill == MV_DIRECT_BUF &&
            (st = direct_submit(sp, c, MV_DIRECT_BUF, sp->cur_base + MV_DIRECT_BUF)))
            return st;
        size_t room = MV_DIRECT_BUF - sp->cur_fill;
        size_t want = left < room ? (size_t)left : room, got;
        uint8_t *dst = sp->cur + sp->cur_fill;
        if (c->rstart < c->rend) {
            got = c->rend - c->rstart < want ? c->rend - c->rstart : want;
            memcpy(dst, c->rbuf + c->rstart, got);
            c->rstart += got;
        } else if (c->rec_on) {
            /* A record made only of this blob's bytes is opened straight into the
             * spool buffer (counted only once its tag verified); any other is
             * opened into rbuf and copied from there next round. */
            size_t n;
            if ((st = cb_need(c, MV_RECORD_HEADER)) ||
                (st = mv_rec_header(&c->rx, c->cbuf + c->cstart, &n, c->msg, c->msglen)))
                return st;
            if (n > want) {
                if ((st = rb_more(c)))
                    return st;
                continue;
            }
            if ((st = cb_need(c, n + MV_RECORD_OVERHEAD)) ||
                (st = mv_rec_open(&c->rx, c->cbuf + c->cstart, n, dst, c->msg, c->msglen)))
                return st;
            c->cstart += n + MV_RECORD_OVERHEAD;
            got = n;
        } else {
            c->rstart = c->rend = 0;
            struct iovec iov[2] = {{dst, want}, {c->rbuf, MV_HEADER_LEN + MV_ID_LEN}};
            struct msghdr mh;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = iov;
            mh.msg_iovlen = want == left ? 2 : 1;
            ssize_t k;
            for (;;) {
                if (cancelled(c))
                    return mv_setmsg(c->msg, c->msglen, MV_ERR_CANCELLED, "transfer cancelled");
                k = recvmsg(c->fd, &mh, 0);
                if (k > 0)
                    break;
                if (k == 0)
                    return mv_setmsg(c->msg, c->msglen, MV_ERR_CLOSED,
                                  "connection closed by peer");
                if (errno != EINTR)
                    return io_error(c, "recv", errno);
            }
            got = (size_t)k < want ? (size_t)k : want;
            c->rend = (size_t)k - got;
        }
        blob_update(sp, ent, dst, got);
        sp->cur_fill += got;
        left -= got;
        if (c->bytes_out)
            __atomic_fetch_add(c->bytes_out, got, __ATOMIC_RELAXED);
    }
    return MV_OK;
}

/* Receive `left` blob bytes through rbuf into the spool file (buffered). */
static int
recv_buffered(mv_spool *sp, mv_conn *c, const mv_entry *ent, uint64_t left)
{
    int st;
    uint64_t off = ent->offset;
    while (left) {
        if (c->rstart == c->rend && (st = rb_more(c)))
            return st;
        size_t avail = c->rend - c->rstart;
        size_t take = avail < left ? avail : (size_t)left;
        const uint8_t *p = c->rbuf + c->rstart;
        if (pwrite_all(sp->fd, p, take, off) != 0)
            return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "write spool %s: %s", sp->path,
                          strerror(errno));
        blob_update(sp, ent, p, take);
        c->rstart += take;
        off += take;
        left -= take;
        if (c->bytes_out)
            __atomic_fetch_add(c->bytes_out, take, __ATOMIC_RELAXED);
    }
    return MV_OK;
}

/* Stream the blob of a DATA frame (len - 16 bytes after the id, which is at
 * rbuf + rstart) into the spool; list it only once complete. A raw blob is
 * verified on the way (header, then xxh3-128 of the payload against the id,
 * over bytes still in cache) and flagged MV_ENTRY_VERIFIED; any other blob,
 * or one that fails, is left to the spool callback to verify (and reject). */
static int
spool_recv(mv_spool *sp, mv_conn *c, uint32_t len)
{
    int st;
    if (sp->fd < 0 && (st = spool_open(sp, c)))
        return st;
    if (!sp->xxh && !(sp->xxh = XXH3_createState()))
        return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for a digest state");
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? 2 * sp->cap : 256;
        mv_entry *e = realloc(sp->e, cap * sizeof *e);
        if (!e)
            return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for spool entries");
        sp->e = e;
        sp->cap = cap;
    }
    mv_entry *ent = &sp->e[sp->n];
    memcpy(ent->id, c->rbuf + c->rstart, MV_ID_LEN);
    c->rstart += MV_ID_LEN;
    uint64_t left = len - MV_ID_LEN;
    ent->offset = sp->off;
    ent->length = (uint32_t)left;
    ent->flags = 0;
    sp->nhead = 0;
    sp->raw = -1;
    st = sp->w ? recv_direct(sp, c, ent, left) : recv_buffered(sp, c, ent, left);
    if (st)
        return st;
    if (sp->raw == 1) {
        XXH128_canonical_t digest;
        XXH128_canonicalFromHash(&digest, XXH3_128bits_digest(sp->xxh));
        if (memcmp(digest.digest, ent->id, MV_ID_LEN) == 0)
            ent->flags = MV_ENTRY_VERIFIED;
    }
    sp->off += left;
    sp->n++;
    if (sp->off - MV_SPOOL_RESERVE >= sp->cfg->spool_limit) {
        spool_writeback(sp, 1);
        return spool_handover(sp, c);
    }
    spool_writeback(sp, 0);
    return MV_OK;
}

/* ------------------------------------------------------------------ */
/* Server                                                               */

typedef struct mv_sconn {
    struct mv_sconn *next;
    mv_server *srv;
    pthread_t thread;
    int fd;
    int done;
    int authed;                 /* the handshake succeeded */
    int dropped;                /* shut down to make room for a newer connection */
    uint64_t since;             /* accepted (CLOCK_MONOTONIC ns) */
    uint8_t addr[16];           /* the peer's address (IPv4 mapped into IPv6) */
} mv_sconn;

struct mv_server {
    int lfd, port;
    uint8_t secret[MV_MAX_SECRET];
    size_t secret_len;
    mv_config cfg;
    char spool_dir[4096];
    pthread_t accept_thread;
    pthread_mutex_t lock;
    mv_sconn *conns;
    int stopping;
    uint8_t (*seen)[MV_NONCE_LEN];
    size_t nseen, seen_pos;
    uint64_t counters[6];
};

static int
server_hs(mv_server *srv, mv_conn *c, mv_hs *hs)
{
    int type, st;
    uint32_t len;
    if ((st = read_frame(c, &type, &len)))
        return st;
    if (type != MV_HELLO)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "expected HELLO, got frame type %d",
                      type);
    uint8_t mac[MV_MAC_LEN];
    const uint8_t *p = c->rbuf + c->rstart;
    memcpy(hs->cn, p, MV_NONCE_LEN);
    memcpy(hs->cpub, p + 36, MV_KX_LEN);
    int op = hs->op = p[32];
    int cipher = hs->cipher = p[33], flags = hs->flags = p[34], pad = p[35];
    uint8_t *cn = hs->cn, *sn = hs->sn;
    c->rstart += len;
    if ((op != MV_OP_FETCH && op != MV_OP_SEND) || pad)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "HELLO names unknown operation %d",
                      op);
    if (flags & ~MV_FLAG_DELTA)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "HELLO has unknown flags %02x",
                         flags);
    if (cipher != MV_CIPHER_NONE && !mv_cipher_keylen(cipher))
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "HELLO names unknown cipher %d",
                         cipher);
    if (cipher == MV_CIPHER_NONE && !srv->cfg.allow_plaintext)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_AUTH,
                         "client asked for a plaintext stream; this server requires encrypted "
                         "streams (cipher auto)");
    int replay = 0;
    pthread_mutex_lock(&srv->lock);
    for (size_t i = 0; i < srv->nseen && !replay; i++)
        replay = memcmp(srv->seen[i], cn, MV_NONCE_LEN) == 0;
    if (!replay) {
        memcpy(srv->seen[srv->seen_pos], cn, MV_NONCE_LEN);
        srv->seen_pos = (srv->seen_pos + 1) % MV_REPLAY_RING;
        if (srv->nseen < MV_REPLAY_RING)
            srv->nseen++;
    }
    pthread_mutex_unlock(&srv->lock);
    if (replay)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_AUTH, "replayed handshake (client nonce reused)");
    if (getrandom(sn, sizeof sn, 0) != sizeof sn)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "getrandom: %s", strerror(errno));
    if (cipher != MV_CIPHER_NONE && (st = mv_kx_new(&hs->kx, hs->spub, c->msg, c->msglen)))
        return st;
    uint8_t ch[MV_CHALLENGE_LEN];
    memcpy(ch, sn, MV_NONCE_LEN);
    proof(srv->secret, srv->secret_len, "HTMV2 server", hs, ch + MV_NONCE_LEN);
    memcpy(ch + MV_NONCE_LEN + MV_MAC_LEN, hs->spub, MV_KX_LEN);
    if ((st = wb_frame(c, MV_CHALLENGE, ch, sizeof ch)) || (st = wb_flush(c, 0)))
        return st;
    if ((st = read_frame(c, &type, &len)))
        return st;
    if (type != MV_AUTH)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "expected AUTH, got frame type %d",
                      type);
    proof(srv->secret, srv->secret_len, "HTMV2 client", hs, mac);
    int ok = CRYPTO_memcmp(mac, c->rbuf + c->rstart, MV_MAC_LEN) == 0;
    c->rstart += len;
    if (!ok)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_AUTH, "wrong client proof (bad secret)");
    if ((st = wb_frame(c, MV_READY, NULL, 0)) || (st = wb_flush(c, 0)))
        return st;
    return conn_secure(c, srv->secret, srv->secret_len, hs, 1);
}

static int
server_handshake(mv_server *srv, mv_conn *c, int *op, int *flags)
{
    mv_hs hs = {.kx = NULL};
    int st = server_hs(srv, c, &hs);
    *op = hs.op;
    *flags = hs.flags;
    hs_forget(&hs);
    return st;
}

static int
server_session(mv_server *srv, mv_conn *c, mv_spool *sp, int *authed)
{
    int op = 0, flags = 0, st, type;
    uint32_t len, count;
    double hs = srv->cfg.handshake_timeout > 0 ? srv->cfg.handshake_timeout
                                               : MV_DEFAULT_HANDSHAKE;
    c->hard_by = mono_ns() + (uint64_t)(hs * 1e9);
    if ((st = server_handshake(srv, c, &op, &flags)))
        return st;
    c->hard_by = 0;
    __atomic_store_n(authed, 1, __ATOMIC_RELAXED);
    uint8_t *ids = malloc(MV_ID_LEN * MV_MAX_BATCH), *need = malloc(MV_ID_LEN * MV_MAX_BATCH);
    mv_stash stash = {malloc(MV_ID_LEN * MV_MAX_BATCH), 0, 0};
    int delta = flags & MV_FLAG_DELTA;
    if (!ids || !need || !stash.ids) {
        st = mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for a batch");
        goto out;
    }
    for (;;) {
        if ((st = read_frame(c, &type, &len)))
            break;
        if (type == MV_BYE)
            break;
        if (type == MV_WANT && op == MV_OP_FETCH) {
            if ((st = check_batch(c->rbuf + c->rstart, len, &count, c->msg, c->msglen)))
                break;
            memcpy(ids, c->rbuf + c->rstart + 4, (size_t)count * MV_ID_LEN);
            c->rstart += len;
            for (;;) {  /* this batch, then a WANT read while waiting for its HAVE */
                uint32_t nd, nm;
                mv_source *over = NULL;
                if (delta && (st = offer_bases(c, &srv->cfg, ids, count, &stash, &over)))
                    break;
                st = send_batch(c, &srv->cfg, ids, count, over, &nd, &nm, &srv->counters[2], 1);
                sources_free(over, count);
                if (st)
                    break;
                uint8_t end[8];
                wr32(end, nd);
                wr32(end + 4, nm);
                if ((st = wb_frame(c, MV_END, end, 8)) || (st = wb_flush(c, 0)) || !stash.full)
                    break;
                memcpy(ids, stash.ids, (size_t)stash.count * MV_ID_LEN);
                count = stash.count;
                stash.full = 0;
            }
            if (st)
                break;
        } else if (type == MV_OFFER && op == MV_OP_SEND) {
            if ((st = check_batch(c->rbuf + c->rstart, len, &count, c->msg, c->msglen)))
                break;
            memcpy(ids, c->rbuf + c->rstart + 4, (size_t)count * MV_ID_LEN);
            c->rstart += len;
            size_t nneed = 0;
            if (srv->cfg.need(srv->cfg.ctx, ids, count, need + 4, &nneed) || nneed > count) {
                st = mv_setmsg(c->msg, c->msglen, MV_ERR_CALLBACK, "need callback failed");
                break;
            }
            /* NEED payload: count then ids; `need` has 4 spare bytes in front... */
            uint8_t cnt[4];
            wr32(cnt, (uint32_t)nneed);
            uint8_t h[MV_HEADER_LEN];
            put_header(h, MV_NEED, (uint32_t)(4 + nneed * MV_ID_LEN));
            if ((st = wb_put(c, h, sizeof h)) || (st = wb_put(c, cnt, 4)) ||
                (st = wb_put(c, need + 4, nneed * MV_ID_LEN)) || (st = wb_flush(c, 0)))
                break;
            /* DATA frames for needed ids, in order (some may be skipped), then END. */
            size_t pos = 0;
            uint32_t ndata = 0;
            int asked = 0;
            sp->committed = sp->rejected = 0;
            for (;;) {
                if ((st = read_frame(c, &type, &len)))
                    break;
                if (type == MV_END) {
                    c->rstart += len;
                    break;
                }
                if (type == MV_BASES && delta && !asked && !ndata && nneed) {
                    asked = 1;  /* once per batch, before its first DATA */
                    if ((st = answer_bases(c, &srv->cfg, len, need + 4, nneed)))
                        break;
                    continue;
                }
                if (type != MV_DATA) {
                    st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                                "expected DATA or END, got frame type %d", type);
                    break;
                }
                const uint8_t *id = c->rbuf + c->rstart;
                while (pos < nneed && memcmp(need + 4 + pos * MV_ID_LEN, id, MV_ID_LEN) != 0)
                    pos++;
                if (pos == nneed) {
                    st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                                "DATA for a chunk that was not asked for (or out of order)");
                    break;
                }
                pos++;
                if ((st = spool_recv(sp, c, len)))
                    break;
                ndata++;
                __atomic_fetch_add(&srv->counters[3], 1, __ATOMIC_RELAXED);
            }
            if (st)
                break;
            if ((st = spool_handover(sp, c)))
                break;
            uint8_t ack[8];
            wr32(ack, sp->committed);
            wr32(ack + 4, sp->rejected);
            if ((st = wb_frame(c, MV_ACK, ack, 8)) || (st = wb_flush(c, 0)))
                break;
        } else {
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                        "frame type %d not allowed in a %s session", type,
                        op == MV_OP_FETCH ? "fetch" : "send");
            break;
        }
    }
out:
    free(ids);
    free(need);
    free(stash.ids);
    return st;
}

static void *
server_conn_main(void *arg)
{
    mv_sconn *sc = arg;
    mv_server *srv = sc->srv;
    char msg[256] = "";
    mv_conn c;
    mv_spool sp;
    spool_init(&sp, &srv->cfg);
    int st = conn_init(&c, sc->fd, &srv->stopping, &srv->cfg, msg, sizeof msg);
    c.bytes_out = &srv->counters[4];
    c.sendfile = choose_sendfile(&srv->cfg, sc->fd);
    if (!st)
        st = server_session(srv, &c, &sp, &sc->authed);
    if (st == MV_ERR_TIMEOUT || __atomic_load_n(&sc->dropped, __ATOMIC_RELAXED))
        __atomic_fetch_add(&srv->counters[5], 1, __ATOMIC_RELAXED);
    /* Handshakes this server refused, and records it found altered. */
    if ((st == MV_ERR_AUTH || st == MV_ERR_RECORD) && !c.peer_error)
        __atomic_fetch_add(&srv->counters[1], 1, __ATOMIC_RELAXED);
    if (st && st != MV_ERR_CLOSED && st != MV_ERR_PEER && st != MV_ERR_CANCELLED)
        send_error(&c, st);
    /* A send batch cut before its END is not committed: drop its spool. */
    spool_free(&sp);
    conn_free(&c);
    pthread_mutex_lock(&srv->lock);
    shutdown(sc->fd, SHUT_RDWR);
    close(sc->fd);
    sc->fd = -1;
    sc->done = 1;
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

static void
reap(mv_server *srv, int all)
{
    for (;;) {
        mv_sconn *victim = NULL, **pp;
        pthread_mutex_lock(&srv->lock);
        for (pp = &srv->conns; *pp; pp = &(*pp)->next) {
            if ((*pp)->done || all) {
                victim = *pp;
                *pp = victim->next;
                break;
            }
        }
        pthread_mutex_unlock(&srv->lock);
        if (!victim)
            return;
        pthread_join(victim->thread, NULL);
        free(victim);
    }
}

/* The peer's address of `fd` as 16 bytes (IPv4 mapped into IPv6). */
static void
peer_addr(int fd, uint8_t out[16])
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(out, 0, 16);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET6) {
        memcpy(out, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    } else if (ss.ss_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    }
}

/* With srv->lock held and max_conns connections live: shut down the oldest
 * connection that has not authenticated yet, from the address holding the
 * most of those (so a flood from one address cannot starve the others).
 * Returns whether one was found (it ends on its own thread). */
static int
drop_unauthenticated(mv_server *srv)
{
    mv_sconn *victim = NULL;
    int best = 0;
    for (mv_sconn *a = srv->conns; a; a = a->next) {
        if (a->done || a->dropped || __atomic_load_n(&a->authed, __ATOMIC_RELAXED))
            continue;
        int same = 0;
        mv_sconn *oldest = a;
        for (mv_sconn *b = srv->conns; b; b = b->next)
            if (!b->done && !b->dropped && !__atomic_load_n(&b->authed, __ATOMIC_RELAXED) &&
                memcmp(a->addr, b->addr, 16) == 0) {
                same++;
                if (b->since < oldest->since)
                    oldest = b;
            }
        if (same > best) {
            best = same;
            victim = oldest;
        }
    }
    if (!victim || victim->fd < 0)
        return 0;
    __atomic_store_n(&victim->dropped, 1, __ATOMIC_RELAXED);
    shutdown(victim->fd, SHUT_RDWR);
    return 1;
}

static void *
accept_main(void *arg)
{
    mv_server *srv = arg;
    while (!__atomic_load_n(&srv->stopping, __ATOMIC_RELAXED)) {
        int fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
                if (errno == EMFILE || errno == ENFILE)
                    usleep(10000);
                continue;
            }
            break;
        }
        reap(srv, 0);
        __atomic_fetch_add(&srv->counters[0], 1, __ATOMIC_RELAXED);
        set_sock_opts(fd, &srv->cfg);
        mv_sconn *sc = calloc(1, sizeof *sc);
        if (!sc) {
            close(fd);
            continue;
        }
        sc->srv = srv;
        sc->fd = fd;
        sc->since = mono_ns();
        peer_addr(fd, sc->addr);
        int limit = srv->cfg.max_conns > 0 ? srv->cfg.max_conns : MV_DEFAULT_MAX_CONNS;
        pthread_mutex_lock(&srv->lock);
        int stop = srv->stopping, live = 0;
        for (mv_sconn *o = srv->conns; o; o = o->next)
            live += !o->done && !o->dropped;
        if (live >= limit && !drop_unauthenticated(srv)) {
            __atomic_fetch_add(&srv->counters[5], 1, __ATOMIC_RELAXED);
            stop = 1;  /* full of authenticated streams: refuse the newcomer */
        }
        if (!stop && pthread_create(&sc->thread, NULL, server_conn_main, sc) == 0) {
            sc->next = srv->conns;
            srv->conns = sc;
            sc = NULL;
        }
        pthread_mutex_unlock(&srv->lock);
        if (sc) {
            close(fd);
            free(sc);
        }
    }
    return NULL;
}

static int
resolve_addr(const char *host, int port, int passive, struct addrinfo **res, char *msg,
             size_t msglen)
{
    char pbuf[16];
    snprintf(pbuf, sizeof pbuf, "%d", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    int rc = getaddrinfo(host, pbuf, &hints, res);
    if (rc)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "cannot resolve %s:%d: %s", host, port,
                      gai_strerror(rc));
    return MV_OK;
}

int
mv_server_start(const char *host, int port, const uint8_t *secret, size_t secret_len,
                const mv_config *cfg, mv_server **out, char *msg, size_t msglen)
{
    if (secret_len < MV_MIN_SECRET || secret_len > MV_MAX_SECRET)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "session secret must be %d to %d bytes, got %zu",
                      MV_MIN_SECRET, MV_MAX_SECRET, secret_len);
    if (port < 0 || port > 65535)
        return mv_setmsg(msg, msglen, MV_ERR_ARG, "port %d out of range", port);
    mv_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return MV_ERR_NOMEM;
    srv->seen = calloc(MV_REPLAY_RING, MV_NONCE_LEN);
    if (!srv->seen) {
        free(srv);
        return MV_ERR_NOMEM;
    }
    memcpy(srv->secret, secret, secret_len);
    srv->secret_len = secret_len;
    srv->cfg = *cfg;
    snprintf(srv->spool_dir, sizeof srv->spool_dir, "%s", cfg->spool_dir ? cfg->spool_dir : ".");
    srv->cfg.spool_dir = srv->spool_dir;
    pthread_mutex_init(&srv->lock, NULL);
    struct addrinfo *res;
    int st = resolve_addr(host, port, 1, &res, msg, msglen);
    if (st)
        goto fail;
    srv->lfd = -1;
    for (struct addrinfo *ai = res; ai && srv->lfd < 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            srv->lfd = fd;
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            srv->port = ntohs(ss.ss_family == AF_INET6
                                  ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                  : ((struct sockaddr_in *)&ss)->sin_port);
        } else {
            mv_setmsg(msg, msglen, MV_ERR_IO, "cannot listen on %s:%d: %s", host, port,
                   strerror(errno));
            close(fd);
        }
    }
    freeaddrinfo(res);
    if (srv->lfd < 0) {
        st = mv_setmsg(msg, msglen, MV_ERR_IO, "cannot listen on %s:%d", host, port);
        goto fail;
    }
    if (pthread_create(&srv->accept_thread, NULL, accept_main, srv) != 0) {
        close(srv->lfd);
        st = mv_setmsg(msg, msglen, MV_ERR_IO, "cannot start the accept thread");
        goto fail;
    }
    *out = srv;
    return MV_OK;
fail:
    pthread_mutex_destroy(&srv->lock);
    free(srv->seen);
    free(srv);
    return st ? st : MV_ERR_IO;
}

int
mv_server_port(const mv_server *srv)
{
    return srv->port;
}

void
mv_server_counters(const mv_server *srv, uint64_t out[6])
{
    for (int i = 0; i < 6; i++)
        out[i] = __atomic_load_n(&srv->counters[i], __ATOMIC_RELAXED);
}

void
mv_server_stop(mv_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    __atomic_store_n(&srv->stopping, 1, __ATOMIC_RELAXED);
    shutdown(srv->lfd, SHUT_RDWR);
    for (mv_sconn *sc = srv->conns; sc; sc = sc->next)
        if (sc->fd >= 0)
            shutdown(sc->fd, SHUT_RDWR);
    pthread_mutex_unlock(&srv->lock);
    pthread_join(srv->accept_thread, NULL);
    close(srv->lfd);
    reap(srv, 1);
    pthread_mutex_destroy(&srv->lock);
    free(srv->seen);
    memset(srv->secret, 0, sizeof srv->secret);
    free(srv);
}

/* ------------------------------------------------------------------ */
/* Client streams                                                       */

static pthread_mutex_t fd_lock = PTHREAD_MUTEX_INITIALIZER;

void
mv_stream_interrupt(mv_stream *s)
{
    pthread_mutex_lock(&fd_lock);
    if (s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR);
    pthread_mutex_unlock(&fd_lock);
}

static int
client_connect(mv_stream *s, int *fdout)
{
    struct addrinfo *res;
    int st = resolve_addr(s->host, s->port, 0, &res, s->message, sizeof s->message);
    if (st)
        return st;
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        set_sock_opts(fd, s->cfg);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return mv_setmsg(s->message, sizeof s->message,
                      err == EINPROGRESS || err == EAGAIN ? MV_ERR_TIMEOUT : MV_ERR_IO,
                      "cannot connect to %s:%d: %s", s->host, s->port, strerror(err));
    *fdout = fd;
    return MV_OK;
}

static int
client_hs(mv_stream *s, mv_conn *c, mv_hs *hs)
{
    uint8_t hello[MV_HELLO_LEN] = {0}, mac[MV_MAC_LEN];
    int st, type;
    uint32_t len;
    if (getrandom(hs->cn, MV_NONCE_LEN, 0) != MV_NONCE_LEN)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_IO, "getrandom: %s", strerror(errno));
    hs->op = s->op;
    hs->cipher = s->cfg->cipher == MV_CIPHER_AUTO ? mv_cipher_choose() : s->cfg->cipher;
    if (hs->cipher != MV_CIPHER_NONE && (st = mv_kx_new(&hs->kx, hs->cpub, c->msg, c->msglen)))
        return st;
    memcpy(hello, hs->cn, MV_NONCE_LEN);
    hello[32] = (uint8_t)hs->op;
    hello[33] = (uint8_t)hs->cipher;
    hs->flags = s->cfg->delta ? MV_FLAG_DELTA : 0;
    hello[34] = (uint8_t)hs->flags;
    memcpy(hello + 36, hs->cpub, MV_KX_LEN);
    if ((st = wb_frame(c, MV_HELLO, hello, sizeof hello)) || (st = wb_flush(c, 0)))
        return st;
    if ((st = read_frame(c, &type, &len)))
        return st;
    if (type != MV_CHALLENGE)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                      "expected CHALLENGE, got frame type %d", type);
    const uint8_t *p = c->rbuf + c->rstart;
    memcpy(hs->sn, p, MV_NONCE_LEN);
    memcpy(hs->spub, p + MV_NONCE_LEN + MV_MAC_LEN, MV_KX_LEN);
    proof(s->secret, s->secret_len, "HTMV2 server", hs, mac);
    int ok = CRYPTO_memcmp(mac, p + MV_NONCE_LEN, MV_MAC_LEN) == 0;
    c->rstart += len;
    if (!ok)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_AUTH,
                      "server %s:%d failed to prove the session secret", s->host, s->port);
    proof(s->secret, s->secret_len, "HTMV2 client", hs, mac);
    if ((st = wb_frame(c, MV_AUTH, mac, MV_MAC_LEN)) || (st = wb_flush(c, 0)))
        return st;
    if ((st = read_frame(c, &type, &len)))
        return st;
    if (type != MV_READY)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "expected READY, got frame type %d",
                      type);
    s->cipher = hs->cipher;
    return conn_secure(c, s->secret, s->secret_len, hs, 0);
}

static int
client_handshake(mv_stream *s, mv_conn *c)
{
    mv_hs hs = {.kx = NULL};
    int st = client_hs(s, c, &hs);
    hs_forget(&hs);
    return st;
}

static int
send_ids(mv_conn *c, int type, const uint8_t *ids, size_t count)
{
    uint8_t h[MV_HEADER_LEN], cnt[4];
    put_header(h, type, (uint32_t)(4 + count * MV_ID_LEN));
    wr32(cnt, (uint32_t)count);
    int st;
    if ((st = wb_put(c, h, sizeof h)) || (st = wb_put(c, cnt, 4)) ||
        (st = wb_put(c, ids, count * MV_ID_LEN)))
        return st;
    return wb_flush(c, 0);
}

/* The next batch of a stream's ids: from its own list, or claimed from the
 * queue its transfer shares. Returns the batch size (0: no more). */
static size_t
next_batch(mv_stream *s, size_t *own, const uint8_t **ids)
{
    if (s->queue) {
        mv_queue *q = s->queue;
        size_t start = __atomic_fetch_add(&q->next, q->batch, __ATOMIC_RELAXED);
        if (start >= q->count)
            return 0;
        *ids = q->ids + start * MV_ID_LEN;
        return q->count - start < q->batch ? q->count - start : q->batch;
    }
    if (*own >= s->count)
        return 0;
    *ids = s->ids + *own * MV_ID_LEN;
    size_t n = s->count - *own < MV_MAX_BATCH ? s->count - *own : MV_MAX_BATCH;
    *own += n;
    return n;
}

static int
client_fetch(mv_stream *s, mv_conn *c, mv_spool *sp)
{
    /* Up to two WANT batches in flight (pipelining), answered in order. */
    struct { const uint8_t *ids; size_t n; } fl[2];
    size_t own = 0, pos = 0;
    int head = 0, nfl = 0, st = MV_OK, type, asked = 0;
    uint32_t len;
    while (nfl < 2 && !st) {
        const uint8_t *ids;
        size_t n = next_batch(s, &own, &ids);
        if (!n)
            break;
        st = send_ids(c, MV_WANT, ids, n);
        fl[(head + nfl) % 2].ids = ids;
        fl[(head + nfl) % 2].n = n;
        nfl++;
    }
    while (nfl && !st) {
        if ((st = read_frame(c, &type, &len)))
            break;
        size_t bn = fl[head].n;
        const uint8_t *expect = fl[head].ids + pos * MV_ID_LEN;
        if (type == MV_BASES && s->cfg->delta && !asked && pos == 0) {
            asked = 1;  /* once per batch, before its first answer */
            st = answer_bases(c, s->cfg, len, fl[head].ids, bn);
        } else if (type == MV_DATA || type == MV_MISSING) {
            if (pos >= bn || memcmp(c->rbuf + c->rstart, expect, MV_ID_LEN) != 0) {
                st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                            "server sent a chunk that was not asked for (or out of order)");
                break;
            }
            pos++;
            if (type == MV_MISSING) {
                c->rstart += len;
                __atomic_fetch_add(&s->missing, 1, __ATOMIC_RELAXED);
            } else {
                if ((st = spool_recv(sp, c, len)))
                    break;
                __atomic_fetch_add(&s->chunks, 1, __ATOMIC_RELAXED);
            }
        } else if (type == MV_END) {
            uint32_t nd = rd32(c->rbuf + c->rstart), nm = rd32(c->rbuf + c->rstart + 4);
            c->rstart += len;
            if (pos != bn || (uint64_t)nd + nm != bn) {
                st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                            "END after %zu of %zu answers (counts %u + %u)", pos, bn, nd, nm);
                break;
            }
            head = (head + 1) % 2;
            nfl--;
            pos = 0;
            asked = 0;
            const uint8_t *ids;
            size_t n = next_batch(s, &own, &ids);
            if (n) {
                st = send_ids(c, MV_WANT, ids, n);
                fl[(head + nfl) % 2].ids = ids;
                fl[(head + nfl) % 2].n = n;
                nfl++;
            }
        } else {
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL,
                        "frame type %d not allowed in a fetch answer", type);
        }
    }
    return st;
}

static int
client_send(mv_stream *s, mv_conn *c)
{
    uint8_t *need = malloc(MV_ID_LEN * MV_MAX_BATCH);
    if (!need)
        return mv_setmsg(c->msg, c->msglen, MV_ERR_NOMEM, "no memory for a batch");
    int st = MV_OK, type;
    uint32_t len, nneed;
    size_t own = 0, bn;
    const uint8_t *ids;
    while (!st && (bn = next_batch(s, &own, &ids)) != 0) {
        if ((st = send_ids(c, MV_OFFER, ids, bn)) || (st = read_frame(c, &type, &len)))
            break;
        if (type != MV_NEED) {
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "expected NEED, got frame type %d",
                        type);
            break;
        }
        if ((st = check_batch(c->rbuf + c->rstart, len, &nneed, c->msg, c->msglen)))
            break;
        if (nneed > bn) {
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "NEED names more ids than offered");
            break;
        }
        memcpy(need, c->rbuf + c->rstart + 4, (size_t)nneed * MV_ID_LEN);
        c->rstart += len;
        uint32_t nd = 0, nm = 0;
        mv_source *over = NULL;
        if (nneed && s->cfg->delta && (st = offer_bases(c, s->cfg, need, nneed, NULL, &over)))
            break;
        if (nneed)
            st = send_batch(c, s->cfg, need, nneed, over, &nd, &nm, &s->chunks, 0);
        sources_free(over, nneed);
        if (st)
            break;
        __atomic_fetch_add(&s->missing, nm, __ATOMIC_RELAXED);
        uint8_t end[8];
        wr32(end, nd);
        wr32(end + 4, nm);
        if ((st = wb_frame(c, MV_END, end, 8)) || (st = wb_flush(c, 0)) ||
            (st = read_frame(c, &type, &len)))
            break;
        if (type != MV_ACK) {
            st = mv_setmsg(c->msg, c->msglen, MV_ERR_PROTOCOL, "expected ACK, got frame type %d",
                        type);
            break;
        }
        __atomic_fetch_add(&s->committed, rd32(c->rbuf + c->rstart), __ATOMIC_RELAXED);
        __atomic_fetch_add(&s->rejected, rd32(c->rbuf + c->rstart + 4), __ATOMIC_RELAXED);
        c->rstart += len;
    }
    free(need);
    return st;
}

int
mv_stream_run(mv_stream *s)
{
    s->message[0] = 0;
    s->status = MV_OK;
    s->fd = -1;
    s->cipher = -1;
    if (s->secret_len < MV_MIN_SECRET || s->secret_len > MV_MAX_SECRET)
        return s->status = mv_setmsg(s->message, sizeof s->message, MV_ERR_ARG,
                                  "session secret must be %d to %d bytes", MV_MIN_SECRET,
                                  MV_MAX_SECRET);
    if (s->queue ? s->queue->count == 0 : s->count == 0)
        return MV_OK;
    int fd = -1;
    int st = client_connect(s, &fd);
    if (st)
        return s->status = st;
    pthread_mutex_lock(&fd_lock);
    s->fd = fd;
    pthread_mutex_unlock(&fd_lock);
    mv_conn c;
    mv_spool sp;
    spool_init(&sp, s->cfg);
    st = conn_init(&c, fd, s->cancel, s->cfg, s->message, sizeof s->message);
    c.bytes_out = &s->bytes;
    c.sendfile = choose_sendfile(s->cfg, fd);
    if (!st)
        st = client_handshake(s, &c);
    if (!st)
        st = s->op == MV_OP_FETCH ? client_fetch(s, &c, &sp) : client_send(s, &c);
    if (!st && (st = wb_frame(&c, MV_BYE, NULL, 0)) == MV_OK)
        st = wb_flush(&c, 0);
    if (st && st != MV_ERR_CLOSED && st != MV_ERR_PEER && st != MV_ERR_CANCELLED &&
        st != MV_ERR_TIMEOUT)
        send_error(&c, st);
    pthread_mutex_lock(&fd_lock);
    s->fd = -1;
    shutdown(fd, SHUT_RDWR);
    close(fd);
    pthread_mutex_unlock(&fd_lock);
    /* Complete blobs are handed over even after an error: resume keeps them. */
    int hs = spool_handover(&sp, &c);
    if (!st)
        st = hs;
    s->committed += sp.committed;
    s->rejected += sp.rejected;
    spool_free(&sp);
    conn_free(&c);
    return s->status = st;
}
