/* CPython binding `privacy._psi_ot`: the OT-PSI loops of psi_ot.h over bytes
 * buffers, GIL released. Sizes are checked here; a bad size raises ValueError. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "psi_ot.h"

#define KEYS_LEN (PSO_W * 16)

static int need(const Py_buffer *b, Py_ssize_t len, const char *what) {
    if (b->len != len) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", what, len, b->len);
        return -1;
    }
    return 0;
}

static int block_ok(Py_ssize_t start, Py_ssize_t rows) {
    if (start < 0 || rows <= 0 || start % 128 || rows % 128) {
        PyErr_Format(PyExc_ValueError, "OT rows [%zd, +%zd) must start and span multiples of 128",
                     start, rows);
        return -1;
    }
    return 0;
}

static int ob_ok(Py_ssize_t ob) {
    if (ob < 8 || ob > 32) {
        PyErr_Format(PyExc_ValueError, "output bytes must be 8..32, got %zd", ob);
        return -1;
    }
    return 0;
}

/* The buffer arguments of one entry point, parsed into an array so that one call
 * releases them all (PyArg_ParseTuple releases what it took if it fails). */
static void release(Py_buffer *b, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&b[i]);
}

/* A required length of one buffer argument. */
typedef struct {
    const Py_buffer *buf;
    Py_ssize_t len;
    const char *what;
} Size;

/* 0 if every buffer has its length, else ValueError naming the first that has not. */
static int sizes_ok(const Size *s, int n) {
    for (int i = 0; i < n; i++)
        if (need(s[i].buf, s[i].len, s[i].what) != 0) return -1;
    return 0;
}

/* 0 if b holds whole 16-byte ids, else ValueError naming `what`. */
static int whole_ids(const Py_buffer *b, const char *what) {
    if (b->len % PSO_ID) {
        PyErr_Format(PyExc_ValueError, "%s must be whole 16-byte items, got %zd bytes", what,
                     b->len);
        return -1;
    }
    return 0;
}

static PyObject *failed(void) {
    PyErr_SetString(PyExc_MemoryError, "OT-PSI: out of memory or an OpenSSL failure");
    return NULL;
}

static PyObject *py_hash_items(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b[3]; /* key, data, offsets */
    Py_buffer *key = &b[0], *data = &b[1], *offs = &b[2];
    int off64;
    Py_ssize_t start, n;
    if (!PyArg_ParseTuple(args, "y*y*y*pnn", key, data, offs, &off64, &start, &n)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t w = off64 ? 8 : 4;
    if (need(key, 32, "hash key") == 0) {
        if (start < 0 || n < 0 || (start + n + 1) * w > offs->len) {
            PyErr_SetString(PyExc_ValueError, "item range exceeds the offsets buffer");
        } else {
            /* every offset must lie inside data and be non-decreasing */
            const char *o = offs->buf;
            int bad = 0;
            for (Py_ssize_t i = start; i <= start + n && !bad; i++) {
                long long v = off64 ? ((const long long *)o)[i] : ((const int *)o)[i];
                long long prev = i == start ? 0 : (off64 ? ((const long long *)o)[i - 1]
                                                         : ((const int *)o)[i - 1]);
                if (v < 0 || v > data->len || (i > start && v < prev)) bad = 1;
            }
            if (bad) {
                PyErr_SetString(PyExc_ValueError, "string offsets out of range of the data");
            } else if ((res = PyBytes_FromStringAndSize(NULL, n * PSO_ID)) != NULL) {
                int rc;
                uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
                Py_BEGIN_ALLOW_THREADS
                rc = pso_hash_items(out, key->buf, data->buf, offs->buf, off64, (size_t)start,
                                    (size_t)n);
                Py_END_ALLOW_THREADS
                if (rc != 0) { Py_CLEAR(res); failed(); }
            }
        }
    }
    release(b, 3);
    return res;
}

static PyObject *py_transpose(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer in;
    Py_ssize_t nr, nc;
    if (!PyArg_ParseTuple(args, "y*nn", &in, &nr, &nc)) return NULL;
    PyObject *res = NULL;
    if (nr <= 0 || nc <= 0 || nr % 16 || nc % 8) {
        PyErr_SetString(PyExc_ValueError, "transpose needs rows % 16 == 0 and columns % 8 == 0");
    } else if (need(&in, nr * nc / 8, "matrix") == 0 &&
               (res = PyBytes_FromStringAndSize(NULL, nr * nc / 8)) != NULL) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
        Py_BEGIN_ALLOW_THREADS
        pso_transpose(in.buf, out, (size_t)nr, (size_t)nc);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&in);
    return res;
}

static PyObject *py_code(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b[2]; /* code key, ids */
    if (!PyArg_ParseTuple(args, "y*y*", &b[0], &b[1])) return NULL;
    PyObject *res = NULL;
    if (need(&b[0], 16, "code key") == 0 && whole_ids(&b[1], "ids") == 0 &&
        (res = PyBytes_FromStringAndSize(NULL, b[1].len / PSO_ID * PSO_ROW)) != NULL) {
        int rc;
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
        Py_BEGIN_ALLOW_THREADS
        rc = pso_code(out, b[0].buf, b[1].buf, (size_t)b[1].len / PSO_ID);
        Py_END_ALLOW_THREADS
        if (rc != 0) { Py_CLEAR(res); failed(); }
    }
    release(b, 2);
    return res;
}

static PyObject *py_prg_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer keys;
    Py_ssize_t start, rows;
    if (!PyArg_ParseTuple(args, "y*nn", &keys, &start, &rows)) return NULL;
    PyObject *res = NULL;
    if (need(&keys, KEYS_LEN, "OT keys") == 0 && block_ok(start, rows) == 0 &&
        (res = PyBytes_FromStringAndSize(NULL, rows * PSO_ROW)) != NULL) {
        int rc = -1;
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(res);
        Py_BEGIN_ALLOW_THREADS
        uint8_t *cols = malloc((size_t)rows * PSO_ROW);
        if (cols != NULL) {
            rc = pso_prg_columns(cols, keys.buf, PSO_W, (size_t)start, (size_t)rows);
            if (rc == 0) pso_transpose(cols, out, PSO_W, (size_t)rows);
            free(cols);
        }
        Py_END_ALLOW_THREADS
        if (rc != 0) { Py_CLEAR(res); failed(); }
    }
    PyBuffer_Release(&keys);
    return res;
}

static PyObject *py_cuckoo(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer ids;
    Py_ssize_t bins, stash;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "y*nnK", &ids, &bins, &stash, &seed)) return NULL;
    PyObject *res = NULL;
    if (whole_ids(&ids, "cuckoo ids") != 0) {
        /* the ValueError is set */
    } else if (bins <= 0 || stash < 0 || bins > 0x7fffffff || ids.len / PSO_ID > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "cuckoo: bins must be positive, below 2^31 items");
    } else if ((res = PyBytes_FromStringAndSize(NULL, (bins + stash) * 4)) != NULL) {
        int used;
        int32_t *t = (int32_t *)PyBytes_AS_STRING(res);
        Py_BEGIN_ALLOW_THREADS
        used = pso_cuckoo(t, (size_t)bins, (size_t)stash, ids.buf, (size_t)ids.len / PSO_ID,
                          seed);
        Py_END_ALLOW_THREADS
        PyObject *tup = Py_BuildValue("(Ni)", res, used);
        res = tup;
    }
    PyBuffer_Release(&ids);
    return res;
}

static PyObject *py_simple(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer ids;
    Py_ssize_t bins;
    if (!PyArg_ParseTuple(args, "y*n", &ids, &bins)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = ids.len / PSO_ID;
    if (whole_ids(&ids, "simple hashing ids") != 0) {
        /* the ValueError is set */
    } else if (bins <= 0 || n > 0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "simple hashing: bins must be positive");
    } else {
        PyObject *offs = PyBytes_FromStringAndSize(NULL, (bins + 1) * 8);
        PyObject *items = PyBytes_FromStringAndSize(NULL, 3 * n * 4 + 4);
        if (offs && items) {
            int rc;
            int64_t *o = (int64_t *)PyBytes_AS_STRING(offs);
            uint32_t *it = (uint32_t *)PyBytes_AS_STRING(items);
            Py_BEGIN_ALLOW_THREADS
            rc = pso_simple(o, it, ids.buf, (size_t)n, (size_t)bins);
            Py_END_ALLOW_THREADS
            if (rc == 0) res = Py_BuildValue("(OO)", offs, items);
            else failed();
        }
        Py_XDECREF(offs);
        Py_XDECREF(items);
    }
    PyBuffer_Release(&ids);
    return res;
}

static PyObject *py_recv_block(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b[4]; /* k0, k1, code key, bin inputs */
    Py_ssize_t start, rows, ob;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnn", &b[0], &b[1], &b[2], &b[3], &start, &rows, &ob))
        return NULL;
    PyObject *res = NULL;
    if (block_ok(start, rows) == 0 && ob_ok(ob) == 0 &&
        sizes_ok((Size[]){{&b[0], KEYS_LEN, "OT keys 0"}, {&b[1], KEYS_LEN, "OT keys 1"},
                          {&b[2], 16, "code key"}, {&b[3], rows * PSO_ID, "bin inputs"}},
                 4) == 0) {
        PyObject *u = PyBytes_FromStringAndSize(NULL, rows * PSO_ROW);
        PyObject *v = PyBytes_FromStringAndSize(NULL, rows * ob);
        if (u && v) {
            int rc;
            uint8_t *up = (uint8_t *)PyBytes_AS_STRING(u), *vp = (uint8_t *)PyBytes_AS_STRING(v);
            Py_BEGIN_ALLOW_THREADS
            rc = pso_recv_block(up, vp, (size_t)ob, b[0].buf, b[1].buf, b[2].buf, b[3].buf,
                                (size_t)start, (size_t)rows);
            Py_END_ALLOW_THREADS
            if (rc == 0) res = Py_BuildValue("(OO)", u, v);
            else failed();
        }
        Py_XDECREF(u);
        Py_XDECREF(v);
    }
    release(b, 4);
    return res;
}

static PyObject *py_send_block(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b[7]; /* ks, s, code key, U, bin offsets, bin items, ids */
    Py_buffer *offs = &b[4], *items = &b[5], *ids = &b[6];
    Py_ssize_t start, rows, bins, stash, ob;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nny*y*nny*n", &b[0], &b[1], &b[2], &b[3], &start, &rows,
                          offs, items, &bins, &stash, ids, &ob))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = ids->len / PSO_ID;
    if (block_ok(start, rows) == 0 && ob_ok(ob) == 0 &&
        sizes_ok((Size[]){{&b[0], KEYS_LEN, "OT keys"}, {&b[1], PSO_ROW, "choice bits"},
                          {&b[2], 16, "code key"}, {&b[3], rows * PSO_ROW, "U block"},
                          {offs, (bins + 1) * 8, "bin offsets"}},
                 5) == 0) {
        const int64_t *o = offs->buf;
        Py_ssize_t count = 0;
        for (Py_ssize_t j = start; j < start + rows; j++) {
            if (j < bins) count += (Py_ssize_t)(o[j + 1] - o[j]);
            else if (j < bins + stash) count += n;
        }
        if (ids->len % PSO_ID || o[bins] * 4 > items->len) {
            PyErr_SetString(PyExc_ValueError, "send block: ids or bin items malformed");
        } else if ((res = PyBytes_FromStringAndSize(NULL, count * ob)) != NULL) {
            long long got;
            uint8_t *vp = (uint8_t *)PyBytes_AS_STRING(res);
            Py_BEGIN_ALLOW_THREADS
            got = pso_send_block(vp, (size_t)ob, b[0].buf, b[1].buf, b[2].buf, b[3].buf,
                                 (size_t)start, (size_t)rows, o, items->buf, (size_t)bins,
                                 (size_t)stash, ids->buf, (size_t)n);
            Py_END_ALLOW_THREADS
            if (got != count) { Py_CLEAR(res); failed(); }
        }
    }
    release(b, 7);
    return res;
}

static PyObject *py_shuffle(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer v;
    Py_ssize_t ob;
    if (!PyArg_ParseTuple(args, "w*n", &v, &ob)) return NULL;
    int rc = 0;
    if (ob_ok(ob) != 0 || v.len % ob) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "shuffle: not whole records");
        rc = -2;
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = pso_shuffle(v.buf, (size_t)(v.len / ob), (size_t)ob);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v);
    if (rc == -2) return NULL;
    if (rc != 0) return failed();
    Py_RETURN_NONE;
}

static size_t slots_for(size_t n) {
    size_t s = 16;
    while (s < 2 * n) s <<= 1;
    return s;
}

static PyObject *py_match_build(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer v;
    Py_ssize_t ob;
    if (!PyArg_ParseTuple(args, "y*n", &v, &ob)) return NULL;
    PyObject *res = NULL;
    if (ob_ok(ob) == 0) {
        size_t n = (size_t)(v.len / ob), ns = slots_for(n);
        if (v.len % ob || n > 0x7fffffffULL) {
            PyErr_SetString(PyExc_ValueError, "match: not whole values");
        } else if ((res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(ns * 4))) != NULL) {
            uint32_t *sl = (uint32_t *)PyBytes_AS_STRING(res);
            Py_BEGIN_ALLOW_THREADS
            memset(sl, 0, ns * 4);
            pso_match_build(sl, ns, v.buf, n, (size_t)ob);
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&v);
    return res;
}

static PyObject *py_match_probe(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b[3]; /* table, values, received */
    Py_buffer *sl = &b[0], *v = &b[1], *recv = &b[2];
    Py_ssize_t ob;
    if (!PyArg_ParseTuple(args, "y*y*ny*", sl, v, &ob, recv)) return NULL;
    PyObject *res = NULL;
    if (ob_ok(ob) == 0) {
        size_t ns = (size_t)sl->len / 4, k = (size_t)(recv->len / ob);
        if (ns == 0 || (ns & (ns - 1)) || ns != slots_for((size_t)(v->len / ob)) ||
            recv->len % ob || v->len % ob) {
            PyErr_SetString(PyExc_ValueError, "match: table, values or batch malformed");
        } else if ((res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(k * 4))) != NULL) {
            size_t found;
            uint32_t *h = (uint32_t *)PyBytes_AS_STRING(res);
            Py_BEGIN_ALLOW_THREADS
            found = pso_match_probe(h, sl->buf, ns, v->buf, (size_t)ob, recv->buf, k);
            Py_END_ALLOW_THREADS
            _PyBytes_Resize(&res, (Py_ssize_t)(found * 4));
        }
    }
    release(b, 3);
    return res;
}

static PyMethodDef methods[] = {
    {"hash_items", py_hash_items, METH_VARARGS,
     "hash_items(key32, data, offsets, off64, start, n) -> 16-byte ids"},
    {"transpose", py_transpose, METH_VARARGS, "transpose(matrix, rows, cols) -> bytes"},
    {"code", py_code, METH_VARARGS, "code(key16, ids) -> 64-byte code words"},
    {"prg_rows", py_prg_rows, METH_VARARGS, "prg_rows(keys, start, rows) -> rows of PRG bits"},
    {"cuckoo", py_cuckoo, METH_VARARGS, "cuckoo(ids, bins, stash, seed) -> (int32 table, used)"},
    {"simple", py_simple, METH_VARARGS, "simple(ids, bins) -> (int64 offsets, uint32 items)"},
    {"recv_block", py_recv_block, METH_VARARGS,
     "recv_block(k0, k1, code_key, r, start, rows, ob) -> (u, values)"},
    {"send_block", py_send_block, METH_VARARGS,
     "send_block(ks, s, code_key, u, start, rows, offs, items, bins, stash, ids, ob) -> values"},
    {"shuffle", py_shuffle, METH_VARARGS, "shuffle(buffer, ob): in place"},
    {"match_build", py_match_build, METH_VARARGS, "match_build(values, ob) -> table"},
    {"match_probe", py_match_probe, METH_VARARGS,
     "match_probe(table, values, ob, received) -> uint32 indices found"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "privacy._psi_ot",
                                    "OT-extension PSI core loops (KKRT16).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__psi_ot(void) {
    if (pso_init() != 0) {
        PyErr_SetString(PyExc_ImportError, "privacy._psi_ot: OpenSSL lacks SHA2-256 or AES-128");
        return NULL;
    }
    return PyModule_Create(&moddef);
}
