/* gfs._mover: CPython binding of the chunk mover (native/mover.h).
 *
 * Policy lives in Python callbacks (gfs/mover.py); this file converts
 * between them and the C contract. Every mover thread takes the GIL only to
 * run a callback; all socket and file I/O runs with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "mover.h"
#include "mover_record.h"

#define ENTRY_LEN 32 /* one spool entry handed to Python: "<16sQII" */

/* ------------------------------------------------------------------ */
/* Callbacks                                                            */

/* The current exception as one object (traceback attached); clears it. */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* Raise an exception object taken by take_exception (steals the reference). */
static void
raise_exception(PyObject *value)
{
    PyErr_SetObject((PyObject *)Py_TYPE(value), value);
    Py_DECREF(value);
}

typedef struct {
    PyObject *resolve, *need, *spool;  /* borrowed from the owner, which keeps them alive */
    PyObject *error;                   /* first exception of a client transfer (owned) */
    int keep_error;                    /* client: keep it; server: report it unraisable */
    pthread_mutex_t lock;
    PyObject *bases, *holds, *deltas;  /* delta transfer (borrowed), or NULL */
} cb_ctx;

static void
cb_failed(cb_ctx *ctx)
{
    /* GIL held, an exception set. */
    if (ctx->keep_error) {
        pthread_mutex_lock(&ctx->lock);
        if (ctx->error == NULL) {
            ctx->error = take_exception();
        } else {
            PyErr_Clear();
        }
        pthread_mutex_unlock(&ctx->lock);
    } else {
        PyErr_WriteUnraisable(ctx->spool);
    }
}

/* A callback's list of `count` sources: None or (path, offset, length) each. */
static int
parse_sources(PyObject *res, size_t count, mv_source *out, const char *name)
{
    if (!PyList_Check(res) || PyList_GET_SIZE(res) != (Py_ssize_t)count) {
        PyErr_Format(PyExc_TypeError, "%s() must return a list of %zu items", name, count);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(res, (Py_ssize_t)i);
        if (item == Py_None)
            continue;
        const char *path;
        unsigned long long off;
        unsigned int len;
        if (!PyArg_ParseTuple(item, "sKI:source item", &path, &off, &len))
            return -1;
        out[i].path = strdup(path);
        if (out[i].path == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        out[i].offset = off;
        out[i].length = len;
    }
    return 0;
}

/* Call fn(bytes of buf) with the GIL and hand its result to take(res, arg);
 * 0 on success, -1 after keeping (client) or reporting (server) the error. */
static int
call_cb(cb_ctx *ctx, PyObject *fn, const uint8_t *buf, size_t len,
        int (*take)(PyObject *res, void *arg), void *arg)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *res = PyObject_CallFunction(fn, "y#", (const char *)buf, (Py_ssize_t)len);
    int rc = res != NULL && take(res, arg) == 0 ? 0 : -1;
    if (rc)
        cb_failed(ctx);
    Py_XDECREF(res);
    PyGILState_Release(g);
    return rc;
}

typedef struct {
    size_t count;
    uint8_t *out;
    size_t *nout;
    mv_source *src;
    const char *name;
} cb_out;

static int
take_sources(PyObject *res, void *arg)
{
    cb_out *o = arg;
    return parse_sources(res, o->count, o->src, o->name);
}

static int
c_resolve(void *vctx, const uint8_t *ids, size_t count, mv_source *out)
{
    cb_out o = {count, NULL, NULL, out, "resolve"};
    cb_ctx *ctx = vctx;
    return call_cb(ctx, ctx->resolve, ids, count * MV_ID_LEN, take_sources, &o);
}

/* A bytes result of whole `unit`-byte items, at most `count` of them, copied to out. */
static int
take_items(PyObject *res, cb_out *o, size_t unit, const char *what)
{
    if (!PyBytes_Check(res) || PyBytes_GET_SIZE(res) % (Py_ssize_t)unit ||
        (size_t)PyBytes_GET_SIZE(res) > o->count * unit) {
        PyErr_Format(PyExc_TypeError, "%s", what);
        return -1;
    }
    memcpy(o->out, PyBytes_AS_STRING(res), (size_t)PyBytes_GET_SIZE(res));
    *o->nout = (size_t)PyBytes_GET_SIZE(res) / unit;
    return 0;
}

static int
take_need(PyObject *res, void *arg)
{
    return take_items(res, arg, MV_ID_LEN, "need() must return bytes: a subset of the ids");
}

static int
c_need(void *vctx, const uint8_t *ids, size_t count, uint8_t *need, size_t *nneed)
{
    cb_out o = {count, need, nneed, NULL, "need"};
    cb_ctx *ctx = vctx;
    return call_cb(ctx, ctx->need, ids, count * MV_ID_LEN, take_need, &o);
}

static int
take_bases(PyObject *res, void *arg)
{
    return take_items(res, arg, 2 * MV_ID_LEN,
                      "bases() must return bytes: at most MAX_PAIRS pairs of ids");
}

/* bases(ids: bytes) -> bytes: (chunk id, base id) pairs, 32 bytes each. */
static int
c_bases(void *vctx, const uint8_t *ids, size_t count, uint8_t *pairs, size_t *npairs)
{
    cb_out o = {MV_MAX_PAIRS, pairs, npairs, NULL, "bases"};
    cb_ctx *ctx = vctx;
    return call_cb(ctx, ctx->bases, ids, count * MV_ID_LEN, take_bases, &o);
}

static int
take_holds(PyObject *res, void *arg)
{
    cb_out *o = arg;
    if (!PyBytes_Check(res) || PyBytes_GET_SIZE(res) != (Py_ssize_t)o->count) {
        PyErr_Format(PyExc_TypeError, "holds() must return %zu bytes", o->count);
        return -1;
    }
    for (size_t i = 0; i < o->count; i++)
        o->out[i] = PyBytes_AS_STRING(res)[i] != 0;
    return 0;
}

/* holds(ids: bytes) -> bytes: one byte per id, 1 when the store holds it. */
static int
c_holds(void *vctx, const uint8_t *ids, size_t count, uint8_t *held)
{
    cb_out o = {count, held, NULL, NULL, "holds"};
    cb_ctx *ctx = vctx;
    return call_cb(ctx, ctx->holds, ids, count * MV_ID_LEN, take_holds, &o);
}

/* deltas(pairs: bytes) -> list of None or (path, offset, length), one per pair. */
static int
c_deltas(void *vctx, const uint8_t *pairs, size_t npairs, mv_source *out)
{
    cb_out o = {npairs, NULL, NULL, out, "deltas"};
    cb_ctx *ctx = vctx;
    return call_cb(ctx, ctx->deltas, pairs, npairs * 2 * MV_ID_LEN, take_sources, &o);
}

/* Set the delta callbacks of cfg from ctx (None: not used). */
static void
delta_callbacks(mv_config *cfg, cb_ctx *ctx)
{
    if (ctx->bases == Py_None)
        ctx->bases = NULL;
    if (ctx->holds == Py_None)
        ctx->holds = NULL;
    if (ctx->deltas == Py_None)
        ctx->deltas = NULL;
    cfg->bases = ctx->bases ? c_bases : NULL;
    cfg->holds = ctx->holds ? c_holds : NULL;
    cfg->deltas = ctx->deltas ? c_deltas : NULL;
}

static int
c_spool(void *vctx, const char *path, const mv_entry *e, size_t n, uint32_t *committed,
        uint32_t *rejected)
{
    cb_ctx *ctx = vctx;
    int rc = -1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *res = NULL;
    /* Entries as little-endian "<16sQII" records (32 bytes each). */
    PyObject *buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * ENTRY_LEN));
    if (buf == NULL)
        goto fail;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(buf);
    for (size_t i = 0; i < n; i++, p += ENTRY_LEN) {
        memcpy(p, e[i].id, 16);
        for (int k = 0; k < 8; k++)
            p[16 + k] = (uint8_t)(e[i].offset >> (8 * k));
        for (int k = 0; k < 4; k++) {
            p[24 + k] = (uint8_t)(e[i].length >> (8 * k));
            p[28 + k] = (uint8_t)(e[i].flags >> (8 * k));
        }
    }
    res = PyObject_CallFunction(ctx->spool, "sO", path, buf);
    Py_DECREF(buf);
    if (res == NULL)
        goto fail;
    unsigned int com, rej;
    if (!PyArg_ParseTuple(res, "II:spool result", &com, &rej))
        goto fail;
    *committed = com;
    *rejected = rej;
    rc = 0;
    goto done;
fail:
    cb_failed(ctx);
done:
    Py_XDECREF(res);
    PyGILState_Release(g);
    return rc;
}

static int
check_congestion(const char *name)
{
    char msg[256] = "";
    if (strlen(name) >= 16) {
        PyErr_Format(PyExc_ValueError, "congestion control name too long: %s", name);
        return -1;
    }
    if (mv_check_congestion(name, msg, sizeof msg) != MV_OK) {
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    return 0;
}

static int
get_secret(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len < MV_MIN_SECRET || view->len > MV_MAX_SECRET) {
        PyErr_Format(PyExc_ValueError, "session secret must be %d to %d bytes, got %zd",
                     MV_MIN_SECRET, MV_MAX_SECRET, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Server                                                               */

typedef struct {
    PyObject_HEAD
    mv_server *srv;
    cb_ctx ctx;
    PyObject *resolve, *need, *spool, *bases, *holds, *deltas;
} ServerObject;

static void
server_close_impl(ServerObject *self)
{
    if (self->srv) {
        mv_server *srv = self->srv;
        self->srv = NULL;
        Py_BEGIN_ALLOW_THREADS
        mv_server_stop(srv);
        Py_END_ALLOW_THREADS
    }
}

static int
Server_init(ServerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"host", "port", "secret", "resolve", "need", "spool", "spool_dir",
                             "spool_limit", "timeout", "max_blob", "sendfile", "sndbuf",
                             "rcvbuf", "congestion", "direct", "allow_plaintext",
                             "max_conns", "handshake_timeout", "min_rate", "bases", "holds",
                             "deltas", NULL};
    const char *host, *spool_dir, *congestion = "";
    int port, use_sendfile = 1, sndbuf = 0, rcvbuf = 0, direct = 0, allow_plaintext = 0;
    int max_conns = MV_DEFAULT_MAX_CONNS;
    PyObject *secret, *resolve, *need, *spool, *bases = Py_None, *holds = Py_None;
    PyObject *deltas = Py_None;
    unsigned long long spool_limit = 16u << 20;
    double timeout = 30.0, handshake_timeout = MV_DEFAULT_HANDSHAKE;
    unsigned int max_blob = MV_DEFAULT_MAX_BLOB, min_rate = MV_DEFAULT_MIN_RATE;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "siOOOOs|KdIiiisppidIOOO:Server", kwlist, &host,
                                     &port, &secret, &resolve, &need, &spool, &spool_dir,
                                     &spool_limit, &timeout, &max_blob, &use_sendfile,
                                     &sndbuf, &rcvbuf, &congestion, &direct, &allow_plaintext,
                                     &max_conns, &handshake_timeout, &min_rate, &bases,
                                     &holds, &deltas))
        return -1;
    if (max_conns < 1 || handshake_timeout <= 0 || min_rate < 1) {
        PyErr_Format(PyExc_ValueError,
                     "max_conns, handshake_timeout and min_rate must be positive "
                     "(got %d, %g, %u)", max_conns, handshake_timeout, min_rate);
        return -1;
    }
    if (check_congestion(congestion) < 0)
        return -1;
    if (use_sendfile < 0 || use_sendfile > MV_SENDFILE_AUTO) {
        PyErr_Format(PyExc_ValueError, "sendfile must be 0, 1 or SENDFILE_AUTO, not %d",
                     use_sendfile);
        return -1;
    }
    if (self->srv) {
        PyErr_SetString(PyExc_RuntimeError, "server already started");
        return -1;
    }
    Py_buffer sec;
    if (get_secret(secret, &sec) < 0)
        return -1;
    Py_XSETREF(self->resolve, Py_NewRef(resolve));
    Py_XSETREF(self->need, Py_NewRef(need));
    Py_XSETREF(self->spool, Py_NewRef(spool));
    Py_XSETREF(self->bases, Py_NewRef(bases));
    Py_XSETREF(self->holds, Py_NewRef(holds));
    Py_XSETREF(self->deltas, Py_NewRef(deltas));
    self->ctx.bases = self->bases;
    self->ctx.holds = self->holds;
    self->ctx.deltas = self->deltas;
    self->ctx.resolve = self->resolve;
    self->ctx.need = self->need;
    self->ctx.spool = self->spool;
    self->ctx.keep_error = 0;
    mv_config cfg = {timeout, max_blob, spool_limit, spool_dir, use_sendfile, sndbuf, rcvbuf,
                     "", c_resolve, c_need, c_spool, &self->ctx, 0, MV_CIPHER_NONE, 0,
                     0, 0.0, 0, NULL, NULL, NULL, 0};
    snprintf(cfg.congestion, sizeof cfg.congestion, "%s", congestion);
    delta_callbacks(&cfg, &self->ctx);
    cfg.direct = direct;
    cfg.allow_plaintext = allow_plaintext;
    cfg.max_conns = max_conns;
    cfg.handshake_timeout = handshake_timeout;
    cfg.min_rate = min_rate;
    char msg[256] = "";
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = mv_server_start(host, port, sec.buf, (size_t)sec.len, &cfg, &self->srv, msg,
                         sizeof msg);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&sec);
    if (st) {
        PyErr_Format(st == MV_ERR_ARG ? PyExc_ValueError : PyExc_OSError, "mover server: %s",
                     msg[0] ? msg : mv_strerror(st));
        return -1;
    }
    return 0;
}

static void
Server_dealloc(ServerObject *self)
{
    PyObject_GC_UnTrack(self);
    server_close_impl(self);
    pthread_mutex_destroy(&self->ctx.lock);
    Py_CLEAR(self->resolve);
    Py_CLEAR(self->need);
    Py_CLEAR(self->spool);
    Py_CLEAR(self->bases);
    Py_CLEAR(self->holds);
    Py_CLEAR(self->deltas);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Server_traverse(ServerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->resolve);
    Py_VISIT(self->need);
    Py_VISIT(self->spool);
    Py_VISIT(self->bases);
    Py_VISIT(self->holds);
    Py_VISIT(self->deltas);
    return 0;
}

static PyObject *
Server_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw))
{
    ServerObject *self = (ServerObject *)type->tp_alloc(type, 0);
    if (self)
        pthread_mutex_init(&self->ctx.lock, NULL);
    return (PyObject *)self;
}

static PyObject *
Server_close(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    server_close_impl(self);
    Py_RETURN_NONE;
}

static PyObject *
Server_port(ServerObject *self, void *Py_UNUSED(closure))
{
    if (!self->srv) {
        PyErr_SetString(PyExc_ValueError, "mover server is closed");
        return NULL;
    }
    return PyLong_FromLong(mv_server_port(self->srv));
}

static PyObject *
Server_counters(ServerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->srv) {
        PyErr_SetString(PyExc_ValueError, "mover server is closed");
        return NULL;
    }
    uint64_t c[6];
    mv_server_counters(self->srv, c);
    return Py_BuildValue("{sKsKsKsKsKsK}", "connections", (unsigned long long)c[0],
                         "auth_failures", (unsigned long long)c[1], "chunks_served",
                         (unsigned long long)c[2], "chunks_received", (unsigned long long)c[3],
                         "bytes", (unsigned long long)c[4], "dropped",
                         (unsigned long long)c[5]);
}

static PyMethodDef Server_methods[] = {
    {"close", (PyCFunction)Server_close, METH_NOARGS,
     "Stop listening, close every connection and join every thread (idempotent)."},
    {"counters", (PyCFunction)Server_counters, METH_NOARGS,
     "Counters: connections, auth_failures, chunks_served, chunks_received, bytes."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Server_getset[] = {
    {"port", (getter)Server_port, NULL, "The TCP port the server listens on.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ServerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gfs._mover.Server",
    .tp_basicsize = sizeof(ServerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Server(host, port, secret, resolve, need, spool, spool_dir, spool_limit=16 MiB,"
              " timeout=30.0, max_blob=64 MiB, sendfile=1, sndbuf=0, rcvbuf=0, congestion='',"
              " direct=False, allow_plaintext=False)\n\n"
              "A mover server on its own threads (docs/format.md, 'Mover protocol').",
    .tp_new = Server_new,
    .tp_init = (initproc)Server_init,
    .tp_dealloc = (destructor)Server_dealloc,
    .tp_traverse = (traverseproc)Server_traverse,
    .tp_methods = Server_methods,
    .tp_getset = Server_getset,
};

/* ------------------------------------------------------------------ */
/* Client transfers                                                     */

typedef struct {
    mv_stream *s;
    pthread_mutex_t *lock;
    pthread_cond_t *cond;
    int *running;
} stream_job;

static void *
stream_main(void *arg)
{
    stream_job *job = arg;
    mv_stream_run(job->s);
    pthread_mutex_lock(job->lock);
    (*job->running)--;
    pthread_cond_signal(job->cond);
    pthread_mutex_unlock(job->lock);
    return NULL;
}

PyDoc_STRVAR(transfer_doc,
"transfer(op, host, port, secret, ids, *, resolve=None, spool=None, spool_dir='.',\n"
"         spool_limit=16 MiB, timeout=30.0, max_blob=64 MiB, sendfile=1,\n"
"         progress=None, tick=0.1, sndbuf=0, rcvbuf=0, streams=0,\n"
"         batch=64, congestion='', direct=False, cipher=CIPHER_AUTO) -> list[tuple]\n\n"
"Run one stream per item of ids (bytes of 16-byte chunk ids) in parallel:\n"
"op 1 fetches (spool called per spool file), op 2 sends (resolve called per\n"
"batch). With streams=N, ids is [all ids] and N streams claim them `batch`\n"
"at a time from a shared queue. sendfile: 1 sendfile, 0 pread + send,\n"
"SENDFILE_AUTO pread + send to a peer on this host and sendfile otherwise.\n"
"direct=True: spools are written with O_DIRECT\n"
"from aligned buffers (native/mover.h). progress(bytes, chunks) is called every tick\n"
"seconds; if it raises (or a signal handler does), every stream is cancelled\n"
"and the exception is\n"
"raised once all have stopped. cipher: CIPHER_AUTO (AES-128-GCM with AES-NI,\n"
"else ChaCha20-Poly1305), a CIPHER_* constant, or CIPHER_NONE (plaintext; the\n"
"server must allow it). Returns per stream (status, message, bytes, chunks,\n"
"missing, committed, rejected, cipher name).");

static PyObject *
transfer(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"op", "host", "port", "secret", "ids", "resolve", "spool",
                             "spool_dir", "spool_limit", "timeout", "max_blob", "sendfile",
                             "progress", "tick", "sndbuf", "rcvbuf", "streams", "batch",
                             "congestion", "direct", "cipher", "bases", "holds", "deltas",
                             NULL};
    int op, port, use_sendfile = 1, sndbuf = 0, rcvbuf = 0, nshared = 0, batch = 64, direct = 0;
    int cipher = MV_CIPHER_AUTO;
    const char *host, *spool_dir = ".", *congestion = "";
    PyObject *secret, *ids, *resolve = Py_None, *spool = Py_None, *progress = Py_None;
    PyObject *bases = Py_None, *holds = Py_None, *deltas = Py_None;
    unsigned long long spool_limit = 16u << 20;
    double timeout = 30.0, tick = 0.1;
    unsigned int max_blob = MV_DEFAULT_MAX_BLOB;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "isiOO!|$OOsKdIiOdiiiispiOOO:transfer", kwlist, &op,
                                     &host, &port, &secret, &PyList_Type, &ids, &resolve,
                                     &spool, &spool_dir, &spool_limit, &timeout, &max_blob,
                                     &use_sendfile, &progress, &tick, &sndbuf, &rcvbuf,
                                     &nshared, &batch, &congestion, &direct, &cipher, &bases,
                                     &holds, &deltas))
        return NULL;
    if (cipher != MV_CIPHER_AUTO && cipher != MV_CIPHER_NONE && !mv_cipher_keylen(cipher))
        return PyErr_Format(PyExc_ValueError, "unknown cipher %d: use a CIPHER_* constant",
                            cipher);
    if (check_congestion(congestion) < 0)
        return NULL;
    if (use_sendfile < 0 || use_sendfile > MV_SENDFILE_AUTO)
        return PyErr_Format(PyExc_ValueError, "sendfile must be 0, 1 or SENDFILE_AUTO, not %d",
                            use_sendfile);
    if (op != MV_OP_FETCH && op != MV_OP_SEND)
        return PyErr_Format(PyExc_ValueError, "op must be 1 (fetch) or 2 (send), not %d", op);
    if (op == MV_OP_FETCH && !PyCallable_Check(spool))
        return PyErr_Format(PyExc_TypeError, "fetch needs a callable spool");
    if (op == MV_OP_SEND && !PyCallable_Check(resolve))
        return PyErr_Format(PyExc_TypeError, "send needs a callable resolve");
    Py_ssize_t n = PyList_GET_SIZE(ids);
    if (nshared && (PyList_GET_SIZE(ids) != 1 || batch < 1 || batch > MV_MAX_BATCH))
        return PyErr_Format(PyExc_ValueError, "streams=N shares one bytes of ids (ids=[all]) "
                            "in batches of 1 to %d ids", MV_MAX_BATCH);
    if (nshared)
        n = nshared;
    if (n < 1 || n > 64)
        return PyErr_Format(PyExc_ValueError, "1 to 64 streams, got %zd", n);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ids); i++) {
        PyObject *b = PyList_GET_ITEM(ids, i);
        if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) % MV_ID_LEN)
            return PyErr_Format(PyExc_ValueError,
                                "ids[%zd] must be bytes holding 16-byte chunk ids", i);
    }
    Py_buffer sec;
    if (get_secret(secret, &sec) < 0)
        return NULL;
    ids = PyList_GetSlice(ids, 0, PyList_GET_SIZE(ids));  /* our own references */
    if (ids == NULL) {
        PyBuffer_Release(&sec);
        return NULL;
    }
    cb_ctx ctx = {resolve, Py_None, spool, NULL, 1, PTHREAD_MUTEX_INITIALIZER, bases, holds,
                  deltas};
    mv_config cfg = {timeout, max_blob, spool_limit, spool_dir, use_sendfile, sndbuf, rcvbuf,
                     "", c_resolve, c_need, c_spool, &ctx, 0, MV_CIPHER_AUTO, 0, 0, 0.0, 0,
                     NULL, NULL, NULL, 0};
    snprintf(cfg.congestion, sizeof cfg.congestion, "%s", congestion);
    delta_callbacks(&cfg, &ctx);
    /* a client that sends deltas (send) or takes them (fetch) says so in HELLO */
    cfg.delta = op == MV_OP_SEND ? cfg.bases && cfg.deltas : cfg.holds != NULL;
    cfg.direct = direct;
    cfg.cipher = cipher;
    volatile int cancel = 0;
    mv_stream *streams = PyMem_Calloc((size_t)n, sizeof *streams);
    stream_job *jobs = PyMem_Calloc((size_t)n, sizeof *jobs);
    pthread_t *threads = PyMem_Calloc((size_t)n, sizeof *threads);
    PyObject *result = NULL, *perr = NULL;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    int running = 0;
    Py_ssize_t started = 0;
    if (!streams || !jobs || !threads) {
        PyErr_NoMemory();
        goto out;
    }
    PyObject *first = PyList_GET_ITEM(ids, 0);
    mv_queue queue = {(const uint8_t *)PyBytes_AS_STRING(first),
                      (size_t)PyBytes_GET_SIZE(first) / MV_ID_LEN, (size_t)batch, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(ids, nshared ? 0 : i);
        mv_stream *s = &streams[i];
        s->host = host;
        s->port = port;
        s->secret = sec.buf;
        s->secret_len = (size_t)sec.len;
        s->op = op;
        s->ids = (const uint8_t *)PyBytes_AS_STRING(b);
        s->count = (size_t)PyBytes_GET_SIZE(b) / MV_ID_LEN;
        s->queue = nshared ? &queue : NULL;
        s->cfg = &cfg;
        s->cancel = &cancel;
        s->fd = -1;
        jobs[i] = (stream_job){s, &lock, &cond, &running};
    }
    pthread_mutex_lock(&lock);
    for (; started < n; started++) {
        running++;
        if (pthread_create(&threads[started], NULL, stream_main, &jobs[started]) != 0) {
            running--;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    if (started < n) {
        cancel = 1;
        PyErr_SetString(PyExc_OSError, "cannot start mover threads");
        perr = take_exception();
    }
    for (;;) {
        int left;
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (long)(tick * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_mutex_lock(&lock);
        if (running)
            pthread_cond_timedwait(&cond, &lock, &ts);
        left = running;
        pthread_mutex_unlock(&lock);
        Py_END_ALLOW_THREADS
        if (!left)
            break;
        if (perr == NULL) {
            int failed = PyErr_CheckSignals() < 0;
            if (!failed && progress != Py_None) {
                unsigned long long bytes = 0, chunks = 0;
                for (Py_ssize_t i = 0; i < n; i++) {
                    bytes += __atomic_load_n(&streams[i].bytes, __ATOMIC_RELAXED);
                    chunks += __atomic_load_n(&streams[i].chunks, __ATOMIC_RELAXED);
                }
                PyObject *r = PyObject_CallFunction(progress, "KK", bytes, chunks);
                failed = r == NULL;
                Py_XDECREF(r);
            }
            if (failed) {
                perr = take_exception();
                __atomic_store_n(&cancel, 1, __ATOMIC_RELAXED);
                for (Py_ssize_t i = 0; i < n; i++)
                    mv_stream_interrupt(&streams[i]);
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    Py_END_ALLOW_THREADS
    if (perr) {
        raise_exception(perr);
        Py_CLEAR(ctx.error);
        goto out;
    }
    if (ctx.error) {
        raise_exception(ctx.error);
        ctx.error = NULL;
        goto out;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        mv_stream *s = &streams[i];
        PyObject *t = Py_BuildValue("(isKKKKKs)", s->status, s->message,
                                    (unsigned long long)s->bytes, (unsigned long long)s->chunks,
                                    (unsigned long long)s->missing,
                                    (unsigned long long)s->committed,
                                    (unsigned long long)s->rejected, mv_cipher_name(s->cipher));
        if (t == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, t);
    }
out:
    PyMem_Free(streams);
    PyMem_Free(jobs);
    PyMem_Free(threads);
    Py_DECREF(ids);
    PyBuffer_Release(&sec);
    return result;
}

/* ------------------------------------------------------------------ */
/* Helpers for tests and fuzzing                                        */

static PyObject *
hmac_sha256(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer key, msg;
    if (!PyArg_ParseTuple(args, "y*y*:hmac_sha256", &key, &msg))
        return NULL;
    uint8_t out[32];
    mv_hmac_sha256(key.buf, (size_t)key.len, msg.buf, (size_t)msg.len, out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&msg);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *
check_frames(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer buf;
    unsigned int max_blob = 0;
    if (!PyArg_ParseTuple(args, "y*|I:check_frames", &buf, &max_blob))
        return NULL;
    char msg[256] = "";
    size_t n = 0;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = mv_check_frames(buf.buf, (size_t)buf.len, max_blob, &n, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return Py_BuildValue("(ins)", st, (Py_ssize_t)n, msg);
}

/* Both directions' keys of a handshake: (c2s key, c2s iv, s2c key, s2c iv). */
static PyObject *
record_keys(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer secret, dh, cn, sn;
    int op, cipher;
    if (!PyArg_ParseTuple(args, "y*y*y*y*ii:record_keys", &secret, &dh, &cn, &sn, &op, &cipher))
        return NULL;
    PyObject *res = NULL;
    char msg[256] = "";
    mv_dir_keys c2s, s2c;
    if (cn.len != MV_NONCE_LEN || sn.len != MV_NONCE_LEN || dh.len != MV_KX_LEN)
        PyErr_Format(PyExc_ValueError, "nonces and the shared secret must be %d bytes",
                     MV_NONCE_LEN);
    else if (mv_rec_derive(secret.buf, (size_t)secret.len, dh.buf, cn.buf, sn.buf, op, cipher,
                           &c2s, &s2c, msg, sizeof msg) != MV_OK)
        PyErr_SetString(PyExc_OSError, msg);
    else
        res = Py_BuildValue("(y#y#y#y#)", c2s.key, (Py_ssize_t)mv_cipher_keylen(cipher), c2s.iv,
                            (Py_ssize_t)MV_IV_LEN, s2c.key, (Py_ssize_t)mv_cipher_keylen(cipher),
                            s2c.iv, (Py_ssize_t)MV_IV_LEN);
    PyBuffer_Release(&secret);
    PyBuffer_Release(&dh);
    PyBuffer_Release(&cn);
    PyBuffer_Release(&sn);
    return res;
}

/* A direction's key and IV from Python buffers, checked against the cipher's key
 * length: 1, or 0 with ValueError set. */
static int
dir_keys(int cipher, const Py_buffer *key, const Py_buffer *iv, mv_dir_keys *k)
{
    size_t kl = mv_cipher_keylen(cipher);
    if (!kl || (size_t)key->len != kl || iv->len != MV_IV_LEN) {
        PyErr_Format(PyExc_ValueError, "cipher %d takes a key of %zu bytes and an iv of %d",
                     cipher, kl, MV_IV_LEN);
        return 0;
    }
    memset(k->key, 0, MV_KEY_LEN);
    memcpy(k->key, key->buf, kl);
    memcpy(k->iv, iv->buf, MV_IV_LEN);
    return 1;
}

static PyObject *
check_records(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer key, iv, buf;
    int cipher;
    if (!PyArg_ParseTuple(args, "iy*y*y*:check_records", &cipher, &key, &iv, &buf))
        return NULL;
    PyObject *res = NULL;
    mv_dir_keys k;
    if (dir_keys(cipher, &key, &iv, &k)) {
        char msg[256] = "";
        size_t n = 0;
        int st;
        Py_BEGIN_ALLOW_THREADS
        st = mv_check_records(cipher, &k, buf.buf, (size_t)buf.len, &n, msg, sizeof msg);
        Py_END_ALLOW_THREADS
        res = Py_BuildValue("(ins)", st, (Py_ssize_t)n, msg);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&buf);
    return res;
}

/* One record sealed by C at sequence number seq: (status, record, message). */
static PyObject *
seal_record(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer key, iv, pt;
    int cipher;
    unsigned long long seq;
    if (!PyArg_ParseTuple(args, "iy*y*Ky*:seal_record", &cipher, &key, &iv, &seq, &pt))
        return NULL;
    PyObject *res = NULL;
    uint8_t *out = NULL;
    mv_dir_keys k;
    if (dir_keys(cipher, &key, &iv, &k) &&
        !(out = PyMem_Malloc((size_t)pt.len + MV_RECORD_OVERHEAD)))
        PyErr_NoMemory();
    if (out) {
        char msg[256] = "";
        mv_rec_dir d;
        int st = mv_rec_init(&d, cipher, &k, 1, msg, sizeof msg);
        if (!st) {
            d.seq = seq;
            st = mv_rec_seal(&d, pt.buf, (size_t)pt.len, out, msg, sizeof msg);
            mv_rec_free(&d);
        }
        res = Py_BuildValue("(iy#s)", st, (const char *)out,
                            st ? (Py_ssize_t)0 : (Py_ssize_t)(pt.len + MV_RECORD_OVERHEAD), msg);
    }
    PyMem_Free(out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&pt);
    return res;
}

static PyObject *
cipher_name(PyObject *Py_UNUSED(module), PyObject *args)
{
    int cipher;
    if (!PyArg_ParseTuple(args, "i:cipher_name", &cipher))
        return NULL;
    return PyUnicode_FromString(mv_cipher_name(cipher == MV_CIPHER_AUTO ? mv_cipher_choose()
                                                                        : cipher));
}

static PyObject *
cipher_backend(PyObject *Py_UNUSED(module), PyObject *args)
{
    int cipher;
    if (!PyArg_ParseTuple(args, "i:cipher_backend", &cipher))
        return NULL;
    return PyUnicode_FromString(
        mv_cipher_backend(cipher == MV_CIPHER_AUTO ? mv_cipher_choose() : cipher));
}

static PyObject *
cipher_rate(PyObject *Py_UNUSED(module), PyObject *args)
{
    int cipher;
    double seconds, rate;
    if (!PyArg_ParseTuple(args, "id:cipher_rate", &cipher, &seconds))
        return NULL;
    if (!mv_cipher_keylen(cipher) || seconds <= 0 || seconds > 10)
        return PyErr_Format(PyExc_ValueError, "cipher_rate needs a cipher (not none) and "
                            "0 < seconds <= 10");
    Py_BEGIN_ALLOW_THREADS
    rate = mv_rec_rate(cipher, seconds);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(rate);
}

static PyObject *
strerror_(PyObject *Py_UNUSED(module), PyObject *args)
{
    int st;
    if (!PyArg_ParseTuple(args, "i:strerror", &st))
        return NULL;
    return PyUnicode_FromString(mv_strerror(st));
}

static PyMethodDef methods[] = {
    {"transfer", (PyCFunction)(void (*)(void))transfer, METH_VARARGS | METH_KEYWORDS,
     transfer_doc},
    {"hmac_sha256", hmac_sha256, METH_VARARGS,
     "hmac_sha256(key, msg, /) -> bytes\n\nHMAC-SHA256 as used by the handshake."},
    {"check_frames", check_frames, METH_VARARGS,
     "check_frames(buf, max_blob=0, /) -> (status, nframes, message)\n\n"
     "Parse buf as the frames a server reads after the handshake."},
    {"strerror", strerror_, METH_VARARGS, "strerror(status, /) -> str"},
    {"record_keys", record_keys, METH_VARARGS,
     "record_keys(secret, dh, cn, sn, op, cipher, /) -> (c2s_key, c2s_iv, s2c_key, s2c_iv)\n\n"
     "The record keys a handshake derives (HKDF-SHA256; docs/format.md, 'Records')."},
    {"check_records", check_records, METH_VARARGS,
     "check_records(cipher, key, iv, buf, /) -> (status, nrecords, message)\n\n"
     "Open buf as the records one direction of a stream reads."},
    {"seal_record", seal_record, METH_VARARGS,
     "seal_record(cipher, key, iv, seq, plaintext, /) -> (status, record, message)\n\n"
     "Seal one record as a stream does at sequence number seq (tests)."},
    {"cipher_rate", cipher_rate, METH_VARARGS,
     "cipher_rate(cipher, seconds, /) -> float\n\nBytes per second of sealing full records "
     "in place with a CIPHER_* on one thread (the record layer's ceiling)."},
    {"cipher_backend", cipher_backend, METH_VARARGS,
     "cipher_backend(cipher, /) -> str\n\nThe library sealing records of a CIPHER_* on this "
     "build and CPU: 'intel-ipsec-mb', an OpenSSL version, or 'none'."},
    {"cipher_name", cipher_name, METH_VARARGS,
     "cipher_name(cipher, /) -> str\n\nThe name of a CIPHER_* (CIPHER_AUTO: the one this CPU "
     "gets)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "gfs._mover",
    "Native chunk mover (native/mover.h; wire format in docs/format.md).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__mover(void)
{
    if (PyType_Ready(&ServerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Server", (PyObject *)&ServerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const struct { const char *name; int value; } consts[] = {
        {"OK", MV_OK}, {"ERR_IO", MV_ERR_IO}, {"ERR_TIMEOUT", MV_ERR_TIMEOUT},
        {"ERR_CLOSED", MV_ERR_CLOSED}, {"ERR_PROTOCOL", MV_ERR_PROTOCOL},
        {"ERR_LIMIT", MV_ERR_LIMIT}, {"ERR_AUTH", MV_ERR_AUTH},
        {"ERR_CANCELLED", MV_ERR_CANCELLED}, {"ERR_CALLBACK", MV_ERR_CALLBACK},
        {"ERR_PEER", MV_ERR_PEER}, {"ERR_NOMEM", MV_ERR_NOMEM}, {"ERR_ARG", MV_ERR_ARG},
        {"OP_FETCH", MV_OP_FETCH}, {"OP_SEND", MV_OP_SEND}, {"MAX_BATCH", MV_MAX_BATCH},
        {"MAX_PAIRS", MV_MAX_PAIRS}, {"FLAG_DELTA", MV_FLAG_DELTA},
        {"SPOOL_RESERVE", MV_SPOOL_RESERVE}, {"DEFAULT_MAX_BLOB", (int)MV_DEFAULT_MAX_BLOB},
        {"ENTRY_LEN", ENTRY_LEN}, {"ENTRY_VERIFIED", MV_ENTRY_VERIFIED},
        {"SENDFILE_AUTO", MV_SENDFILE_AUTO}, {"ERR_RECORD", MV_ERR_RECORD},
        {"ERR_REKEY", MV_ERR_REKEY}, {"CIPHER_NONE", MV_CIPHER_NONE},
        {"CIPHER_AES128GCM", MV_CIPHER_AES128GCM}, {"CIPHER_AES256GCM", MV_CIPHER_AES256GCM},
        {"CIPHER_CHACHA20", MV_CIPHER_CHACHA20},
        {"CIPHER_AUTO", MV_CIPHER_AUTO}, {"RECORD_MAX", (int)MV_RECORD_MAX},
        {"DEFAULT_MAX_CONNS", MV_DEFAULT_MAX_CONNS},
        {"DEFAULT_MIN_RATE", (int)MV_DEFAULT_MIN_RATE}};
    if (PyModule_AddObject(m, "DEFAULT_HANDSHAKE_TIMEOUT",
                           PyFloat_FromDouble(MV_DEFAULT_HANDSHAKE)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++) {
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
