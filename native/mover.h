/* Hutong chunk mover: framed TCP transfer of blobs between two stores.
 *
 * The wire format is docs/format.md, "Mover protocol". This file knows no
 * Python: the binding (native/mover_module.c) supplies the callbacks that
 * hold policy (where a chunk's blob is, which chunks a store lacks, how a
 * spool file is verified and committed).
 *
 * Contract
 *  - C owns the bytes: framing, the HMAC-SHA256 handshake (with an
 *    ephemeral X25519 exchange on encrypted streams), the AEAD record
 *    layer every frame after the handshake travels in (mover_record.h),
 *    socket I/O, sendfile / pread+send from pack files (pread+send on an
 *    encrypted stream), and spooling received blobs to
 *    temporary files. It never makes a received blob visible: it hands a
 *    closed spool file and its complete entries to the spool callback, which
 *    verifies and commits (or deletes) it. Bytes after the last complete
 *    entry (a cut mid-blob) are never listed.
 *  - Memory per stream is bounded by one batch of ids (MV_MAX_BATCH), two
 *    fixed I/O buffers (MV_IO_BUF) and, for a receiver with cfg.direct, the
 *    spool buffers (MV_DIRECT_NBUF x MV_DIRECT_BUF), whatever the blob or
 *    transfer size.
 *  - cfg.direct (receivers): spool files are opened O_DIRECT; blob bytes are
 *    received straight into aligned spool buffers (no copy through rbuf, none
 *    into the page cache), hashed there, and written by MV_DIRECT_WRITERS
 *    threads per stream while the stream receives the next buffer. The spool
 *    holds the same bytes as without it (the tail is padded to MV_DIRECT_ALIGN
 *    for the last write, then cut back with ftruncate before the hand-over,
 *    which waits for every write). A file system without O_DIRECT fails the
 *    stream (MV_ERR_IO): the caller chooses.
 *  - Senders resolve a batch MV_RESOLVE_STEP ids at a time, each step sent
 *    before the next is resolved.
 *  - Every blocking socket call has a deadline (cfg.timeout seconds); a
 *    stall past it ends the stream with MV_ERR_TIMEOUT.
 *  - Callbacks may be called from any mover thread, concurrently; they
 *    return 0 on success, anything else aborts the stream (MV_ERR_CALLBACK).
 *  - Functions return a status code (MV_OK or MV_ERR_*) and, where there is
 *    a message buffer, a one-line message naming the peer and the problem.
 */
#ifndef HUTONG_MOVER_H
#define HUTONG_MOVER_H

#include <stddef.h>
#include <stdint.h>

#define MV_MAGIC "HTMV"
#define MV_VERSION 2
#define MV_HEADER_LEN 12
#define MV_ID_LEN 16
#define MV_NONCE_LEN 32
#define MV_MAC_LEN 32
/* HELLO: nonce, op, cipher, 2 zero bytes, X25519 public key; CHALLENGE:
 * nonce, proof, X25519 public key (zeros on a plaintext stream). */
#define MV_HELLO_LEN (MV_NONCE_LEN + 4 + 32)
#define MV_CHALLENGE_LEN (MV_NONCE_LEN + MV_MAC_LEN + 32)
#define MV_MAX_BATCH 4096            /* ids per WANT / OFFER / NEED */
#define MV_RESOLVE_STEP 256          /* ids per resolve callback of a sender */
#define MV_MAX_ERROR_TEXT 1024
#define MV_DEFAULT_MAX_BLOB (64u << 20)
#define MV_BLOB_HEADER_LEN 36
#define MV_SPOOL_RESERVE 32          /* bytes kept free at the start of a spool */
#define MV_IO_BUF (1u << 20)
#define MV_WRITEBACK (8u << 20)      /* start writeback of a spool every 8 MiB */
#define MV_DIRECT_BUF (4u << 20)     /* one O_DIRECT spool write */
#define MV_DIRECT_NBUF 4             /* spool buffers per stream (one filling, the rest queued) */
#define MV_DIRECT_WRITERS 2          /* spool writer threads per stream (writes in flight) */
#define MV_DIRECT_ALIGN 4096         /* offset, length and address alignment of O_DIRECT */
#define MV_MIN_SECRET 16
#define MV_MAX_SECRET 64
#define MV_REPLAY_RING 4096
#define MV_FLAG_DELTA 1              /* HELLO byte 34: the client takes part in delta transfer */
#define MV_MAX_PAIRS 4096            /* (chunk id, base id) pairs per BASES */

/* cfg.use_sendfile: sendfile() unless the peer is on this host. Over loopback
 * both ends share the CPUs, and pread + send (the sender reads the packs,
 * the receiver copies from bytes still in cache) moves more than sendfile
 * (the receiver copies from page-cache pages it reads from memory). */
#define MV_SENDFILE_AUTO 2

/* Frame types. */
enum {
    MV_HELLO = 1, MV_CHALLENGE = 2, MV_AUTH = 3, MV_READY = 4, MV_WANT = 5,
    MV_DATA = 6, MV_MISSING = 7, MV_END = 8, MV_OFFER = 9, MV_NEED = 10,
    MV_ACK = 11, MV_ERROR = 12, MV_BYE = 13, MV_BASES = 14, MV_HAVE = 15,
};

/* Operations named in HELLO. */
enum { MV_OP_FETCH = 1, MV_OP_SEND = 2 };

/* Status codes. */
enum {
    MV_OK = 0,
    MV_ERR_IO = 1,        /* socket or file error (errno in the message) */
    MV_ERR_TIMEOUT = 2,   /* the peer stalled past the deadline */
    MV_ERR_CLOSED = 3,    /* the peer closed the stream mid-session */
    MV_ERR_PROTOCOL = 4,  /* malformed frame, wrong type for the state */
    MV_ERR_LIMIT = 5,     /* a length or count past its limit */
    MV_ERR_AUTH = 6,      /* handshake failed: wrong secret, bad proof, replay */
    MV_ERR_CANCELLED = 7, /* the transfer was cancelled */
    MV_ERR_CALLBACK = 8,  /* a callback failed (its error is kept by the binding) */
    MV_ERR_PEER = 9,      /* the peer sent ERROR (its message follows) */
    MV_ERR_NOMEM = 10,
    MV_ERR_ARG = 11,      /* bad argument (host, port, secret size) */
    MV_ERR_RECORD = 12,   /* a record failed authentication, or arrived out of sequence */
    MV_ERR_REKEY = 13,    /* a stream's key sealed its limit of records: resume on a new one */
};

const char *mv_strerror(int status);

/* Format a one-line message into msg (unless it holds one already); returns status. */
int mv_setmsg(char *msg, size_t msglen, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Where the blob of one chunk is: `length` bytes at `offset` of file `path`
 * (malloc'd by the resolve callback, freed by the mover). path NULL: the
 * sender does not hold the chunk. */
typedef struct {
    char *path;
    uint64_t offset;
    uint32_t length;
} mv_source;

/* One complete blob in a spool file. flags MV_ENTRY_VERIFIED: the mover
 * checked it already (a raw blob: header, lengths, id, xxh3-128 of the
 * payload); the spool callback must verify every other entry itself. */
#define MV_ENTRY_VERIFIED 1u
typedef struct {
    uint8_t id[MV_ID_LEN];
    uint64_t offset;
    uint32_t length;
    uint32_t flags;
} mv_entry;

/* Fill out[0..count) for the ids (16 bytes each). */
typedef int (*mv_resolve_fn)(void *ctx, const uint8_t *ids, size_t count, mv_source *out);
/* Write to need (room for count ids) the ids the store lacks, in order; set *nneed. */
typedef int (*mv_need_fn)(void *ctx, const uint8_t *ids, size_t count, uint8_t *need,
                          size_t *nneed);
/* Take ownership of a closed spool file: verify, commit or delete it. */
typedef int (*mv_spool_fn)(void *ctx, const char *path, const mv_entry *entries, size_t n,
                           uint32_t *committed, uint32_t *rejected);

/* Delta transfer (format.md, "Delta transfer on the mover"). Senders: write
 * to pairs (room for MV_MAX_PAIRS) the (chunk id, candidate base id) pairs
 * of the batch's ids worth a delta, in batch order; set *npairs (0: none). */
typedef int (*mv_bases_fn)(void *ctx, const uint8_t *ids, size_t count, uint8_t *pairs,
                           size_t *npairs);
/* Receivers: held[i] = 1 if the store holds base id i (16 bytes each), else 0. */
typedef int (*mv_holds_fn)(void *ctx, const uint8_t *ids, size_t count, uint8_t *held);
/* Senders: for each (chunk id, base id) pair the receiver holds, the delta
 * blob of the chunk against that base (path NULL: send the chunk whole). */
typedef int (*mv_deltas_fn)(void *ctx, const uint8_t *pairs, size_t npairs, mv_source *out);

typedef struct {
    double timeout;         /* seconds per blocking call; <= 0 means 30 */
    uint32_t max_blob;      /* largest blob accepted; 0 means MV_DEFAULT_MAX_BLOB */
    uint64_t spool_limit;   /* hand a spool over once it holds this many bytes */
    const char *spool_dir;  /* where spool files are created (receivers) */
    int use_sendfile;       /* senders: sendfile() (1), pread + send (0), or MV_SENDFILE_AUTO */
    int sndbuf, rcvbuf;     /* socket buffers; 0 keeps the kernel's auto-tuning */
    char congestion[16];    /* TCP congestion control of every socket ("" keeps the
                               system default; the caller checked it with mv_check_congestion) */
    mv_resolve_fn resolve;
    mv_need_fn need;
    mv_spool_fn spool;
    void *ctx;
    int direct;             /* receivers: O_DIRECT spools written from aligned buffers */
    int cipher;             /* clients: MV_CIPHER_* asked for (MV_CIPHER_AUTO: by CPU);
                               MV_CIPHER_NONE is a plaintext stream */
    int allow_plaintext;    /* servers: accept clients that ask for MV_CIPHER_NONE */
    /* Servers, against idle and slow peers (0 keeps each default): */
    int max_conns;          /* connections served at once (MV_DEFAULT_MAX_CONNS); at the
                               limit the oldest not-yet-authenticated connection of the
                               address holding the most of them is dropped, else the new one */
    double handshake_timeout;  /* seconds a peer has to authenticate (MV_DEFAULT_HANDSHAKE) */
    uint32_t min_rate;      /* bytes/s a frame must arrive at, once begun: a frame of n
                               bytes gets timeout + n / min_rate s (MV_DEFAULT_MIN_RATE) */
    /* Delta transfer: a sender without `bases` and `deltas` sends every chunk
     * whole; a receiver without `holds` answers that it holds no base. */
    mv_bases_fn bases;
    mv_holds_fn holds;
    mv_deltas_fn deltas;
    int delta;              /* clients: set MV_FLAG_DELTA in HELLO (BASES/HAVE allowed) */
} mv_config;

#define MV_DEFAULT_MAX_CONNS 256
#define MV_DEFAULT_HANDSHAKE 10.0
#define MV_DEFAULT_MIN_RATE 65536u

/* Ids shared by the streams of a transfer: each stream claims the next
 * `batch` ids when it has room for another request, so a stream slowed by
 * loss takes less of the work and all streams finish together. */
typedef struct {
    const uint8_t *ids;     /* 16 bytes each */
    size_t count;
    size_t batch;           /* ids per claim, 1 .. MV_MAX_BATCH */
    size_t next;            /* next unclaimed index (atomic) */
} mv_queue;

/* One client stream of a transfer. Fill the inputs, run it on a thread. */
typedef struct {
    /* inputs */
    const char *host;
    int port;
    const uint8_t *secret;
    size_t secret_len;
    int op;                 /* MV_OP_FETCH or MV_OP_SEND */
    const uint8_t *ids;     /* this stream's ids, 16 bytes each */
    size_t count;
    mv_queue *queue;        /* or, if not NULL, ids claimed from this shared queue */
    const mv_config *cfg;
    volatile int *cancel;   /* shared by the streams of a transfer */
    /* progress (read while running with __atomic loads) */
    uint64_t bytes, chunks, missing, committed, rejected;
    /* result */
    int cipher;             /* the stream's cipher (MV_CIPHER_*) once the handshake is done */
    int status;
    char message[256];
    int fd;                 /* the socket while connected, else -1 */
} mv_stream;

/* Run one stream to completion (blocking). Returns and stores the status. */
int mv_stream_run(mv_stream *s);

/* Interrupt a running stream (from another thread): it ends MV_ERR_CANCELLED
 * once *s->cancel is set. */
void mv_stream_interrupt(mv_stream *s);

typedef struct mv_server mv_server;

/* Listen on host:port (port 0: any) and serve fetch and send sessions, one
 * thread per connection (at most cfg->max_conns; see mv_config for the
 * deadlines against idle and slow peers), until mv_server_stop. */
int mv_server_start(const char *host, int port, const uint8_t *secret, size_t secret_len,
                    const mv_config *cfg, mv_server **out, char *msg, size_t msglen);
int mv_server_port(const mv_server *srv);
/* Counters: connections, auth failures (handshakes this server refused and
 * records it found altered), chunks served, chunks received, bytes sent,
 * connections dropped (over the limit, or too slow to authenticate or to send). */
void mv_server_counters(const mv_server *srv, uint64_t out[6]);
/* Close the listener and every connection, join every thread, free. */
void mv_server_stop(mv_server *srv);

/* Check a byte string as the frames a server reads after the handshake
 * (fuzzing and tests): returns MV_OK or the status of the first bad frame. */
int mv_check_frames(const uint8_t *buf, size_t len, uint32_t max_blob, size_t *nframes,
                    char *msg, size_t msglen);

/* MV_OK if this process may use TCP congestion control `name` (e.g. "bbr"). */
int mv_check_congestion(const char *name, char *msg, size_t msglen);

/* HMAC-SHA256 (libcrypto), as the handshake uses it. */
void mv_hmac_sha256(const uint8_t *key, size_t keylen, const uint8_t *msg, size_t msglen,
                    uint8_t out[32]);

#endif
