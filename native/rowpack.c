/* gfs._rowpack: the per-row loops of packed metadata blocks (gfs/meta/blocks.py).
 *
 * A block's body is its rows' key lengths (u16 little-endian), value lengths
 * (u32 little-endian), keys, then values (docs/format.md, "Packed blocks"); zstd
 * compresses it in Python. These loops ran once a row in Python (~3/4 of a put's
 * compaction at close); here they run once a row in C:
 *   sums(keys, values, c2, c6, last)  append running byte counts of rows (checked
 *                                ascending) to c2 and c6
 *   take(rows, n, keys, values)  up to n rows of an iterator into two lists
 *   body(keys, values, lo, hi)   the body of rows lo..hi
 *   split(raw, n)                a body back into (keys, values), checked
 *   merge(ck, cv, hk, hv, i, j)  a block's rows with hot rows hk[i:j] shadowing
 *   cut(...)                     the packer's blocks cut from its buffered rows
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The bytes of `o` (bytes, or any buffer: released with PyBuffer_Release). */
static int view(PyObject *o, Py_buffer *b) {
    return PyObject_GetBuffer(o, b, PyBUF_SIMPLE);
}

static Py_ssize_t size_of(PyObject *o) {
    if (PyBytes_CheckExact(o)) return PyBytes_GET_SIZE(o);
    Py_buffer b;
    if (view(o, &b) < 0) return -1;
    Py_ssize_t n = b.len;
    PyBuffer_Release(&b);
    return n;
}

/* Whether key a sorts strictly before key b (bytes order); -1 on an error. */
static int before(PyObject *a, PyObject *b) {
    if (PyBytes_CheckExact(a) && PyBytes_CheckExact(b)) {
        Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
        int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)(la < lb ? la : lb));
        return c < 0 || (c == 0 && la < lb);
    }
    return PyObject_RichCompareBool(a, b, Py_LT);
}

/* sums(keys, values, c2, c6, last): append, for each row, c2[-1] + len(key) +
 * len(value) + 2 to c2 and c6[-1] + ... + 6 to c6 (running sums); ValueError, changing
 * nothing, unless the keys ascend strictly (after `last`, unless it is None). */
static PyObject *sums(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *values, *c2, *c6, *last;
    if (!PyArg_ParseTuple(args, "OOO!O!O", &keys, &values, &PyList_Type, &c2, &PyList_Type, &c6,
                          &last))
        return NULL;
    PyObject *ks = PySequence_Fast(keys, "keys must be a sequence");
    if (!ks) return NULL;
    PyObject *vs = PySequence_Fast(values, "values must be a sequence");
    if (!vs) { Py_DECREF(ks); return NULL; }
    PyObject *ret = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ks), n2 = PyList_GET_SIZE(c2), n6 = PyList_GET_SIZE(c6);
    if (PySequence_Fast_GET_SIZE(vs) != n || !n2 || !n6) {
        PyErr_SetString(PyExc_ValueError, "keys and values differ in length, or no start sums");
        goto done;
    }
    PyObject *prev = last == Py_None ? NULL : last;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PySequence_Fast_GET_ITEM(ks, i);
        if (prev) {
            int lt = before(prev, k);
            if (lt < 0) goto done;
            if (!lt) {
                PyErr_SetString(PyExc_ValueError,
                                "block rows out of order (keys must be strictly ascending)");
                goto done;
            }
        }
        prev = k;
    }
    long long a = PyLong_AsLongLong(PyList_GET_ITEM(c2, n2 - 1));
    long long b = PyLong_AsLongLong(PyList_GET_ITEM(c6, n6 - 1));
    if (PyErr_Occurred()) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t kl = size_of(PySequence_Fast_GET_ITEM(ks, i));
        if (kl < 0) goto undo;
        Py_ssize_t vl = size_of(PySequence_Fast_GET_ITEM(vs, i));
        if (vl < 0) goto undo;
        a += kl + vl + 2;
        b += kl + vl + 6;
        PyObject *x = PyLong_FromLongLong(a);
        if (!x) goto undo;
        int bad = PyList_Append(c2, x);
        Py_DECREF(x);
        if (bad) goto undo;
        x = PyLong_FromLongLong(b);
        if (!x) goto undo;
        bad = PyList_Append(c6, x);
        Py_DECREF(x);
        if (bad) goto undo;
    }
    ret = Py_NewRef(Py_None);
    goto done;
undo: {  /* the sums as they were */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyList_SetSlice(c2, n2, PyList_GET_SIZE(c2), NULL);
        PyList_SetSlice(c6, n6, PyList_GET_SIZE(c6), NULL);
        PyErr_Restore(type, value, tb);
    }
done:
    Py_DECREF(ks);
    Py_DECREF(vs);
    return ret;
}

/* take(rows, n, keys, values): append the keys and values of up to n (key, value)
 * pairs from iterator `rows` to lists keys and values; how many it took. */
static PyObject *take(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rows, *keys, *values;
    Py_ssize_t n, got = 0;
    if (!PyArg_ParseTuple(args, "OnO!O!", &rows, &n, &PyList_Type, &keys, &PyList_Type, &values))
        return NULL;
    if (!PyIter_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "rows must be an iterator");
        return NULL;
    }
    while (got < n) {
        PyObject *row = PyIter_Next(rows);
        if (!row) break;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 2) {
            Py_DECREF(row);
            PyErr_SetString(PyExc_ValueError, "rows must be (key, value) pairs");
            return NULL;
        }
        int bad = PyList_Append(keys, PyTuple_GET_ITEM(row, 0))
                  || PyList_Append(values, PyTuple_GET_ITEM(row, 1));
        Py_DECREF(row);
        if (bad) return NULL;
        got++;
    }
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(got);
}

/* The block body of rows lo..hi of fast sequences ks, vs (new reference, or NULL with
 * an exception): OverflowError for a key of more than 65,535 bytes or a value of 2**32
 * or more. */
static PyObject *build_body(PyObject *ks, PyObject *vs, Py_ssize_t lo, Py_ssize_t hi) {
    PyObject *out = NULL;
    Py_buffer *bufs = NULL;
    Py_ssize_t got = 0, n = hi - lo;
    if (lo < 0 || n <= 0 || hi > PySequence_Fast_GET_SIZE(ks) || hi > PySequence_Fast_GET_SIZE(vs)) {
        PyErr_SetString(PyExc_IndexError, "row range out of the rows");
        return NULL;
    }
    bufs = PyMem_Calloc((size_t)(2 * n), sizeof(Py_buffer));
    if (!bufs) return PyErr_NoMemory();
    Py_ssize_t total = 6 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (view(PySequence_Fast_GET_ITEM(ks, lo + i), &bufs[got]) < 0) goto done;
        got++;
        if (view(PySequence_Fast_GET_ITEM(vs, lo + i), &bufs[got]) < 0) goto done;
        got++;
        if (bufs[2 * i].len > 0xFFFF || (uint64_t)bufs[2 * i + 1].len > 0xFFFFFFFFull) {
            PyErr_SetString(PyExc_OverflowError, "a key over 65,535 bytes or a value over 4 GiB");
            goto done;
        }
        total += bufs[2 * i].len + bufs[2 * i + 1].len;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t k = bufs[2 * i].len;
        *p++ = (unsigned char)k;
        *p++ = (unsigned char)(k >> 8);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)bufs[2 * i + 1].len;
        for (int sh = 0; sh < 32; sh += 8) *p++ = (unsigned char)(v >> sh);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(p, bufs[2 * i].buf, (size_t)bufs[2 * i].len);
        p += bufs[2 * i].len;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(p, bufs[2 * i + 1].buf, (size_t)bufs[2 * i + 1].len);
        p += bufs[2 * i + 1].len;
    }
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    return out;
}

/* body(keys, values, lo, hi): the block body of rows lo..hi (hi > lo). */
static PyObject *body(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *values;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOnn", &keys, &values, &lo, &hi)) return NULL;
    PyObject *ks = PySequence_Fast(keys, "keys must be a sequence");
    if (!ks) return NULL;
    PyObject *vs = PySequence_Fast(values, "values must be a sequence");
    if (!vs) { Py_DECREF(ks); return NULL; }
    PyObject *out = build_body(ks, vs, lo, hi);
    Py_DECREF(ks);
    Py_DECREF(vs);
    return out;
}

/* split(raw, n): (keys, values) of a block body of n rows (n >= 1), as tuples of bytes;
 * ValueError when the lengths do not add up to it or the keys are not ascending. */
static PyObject *split(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &b, &n)) return NULL;
    PyObject *keys = NULL, *values = NULL, *ret = NULL;
    const unsigned char *raw = b.buf;
    if (n < 1 || b.len / 6 < n) {
        PyErr_Format(PyExc_ValueError, "%zd bytes cannot hold the lengths of %zd rows", b.len, n);
        goto done;
    }
    unsigned long long end = 6ull * (unsigned long long)n;
    for (Py_ssize_t i = 0; i < n; i++)
        end += (unsigned long long)raw[2 * i] | (unsigned long long)raw[2 * i + 1] << 8;
    const unsigned char *vl = raw + 2 * n;
    for (Py_ssize_t i = 0; i < n; i++)
        end += (unsigned long long)vl[4 * i] | (unsigned long long)vl[4 * i + 1] << 8
               | (unsigned long long)vl[4 * i + 2] << 16 | (unsigned long long)vl[4 * i + 3] << 24;
    if (end != (unsigned long long)b.len) {
        PyErr_Format(PyExc_ValueError, "the rows take %llu bytes of %zd", end, b.len);
        goto done;
    }
    keys = PyTuple_New(n);
    values = keys ? PyTuple_New(n) : NULL;
    if (!values) goto done;
    const unsigned char *p = raw + 6 * n, *prev = NULL;
    size_t prevlen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t kl = (size_t)raw[2 * i] | (size_t)raw[2 * i + 1] << 8;
        if (prev) {
            size_t m = prevlen < kl ? prevlen : kl;
            int c = memcmp(prev, p, m);
            if (c > 0 || (c == 0 && prevlen >= kl)) {
                PyErr_SetString(PyExc_ValueError, "rows out of order");
                goto done;
            }
        }
        PyObject *k = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)kl);
        if (!k) goto done;
        PyTuple_SET_ITEM(keys, i, k);
        prev = p;
        prevlen = kl;
        p += kl;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t l = (size_t)vl[4 * i] | (size_t)vl[4 * i + 1] << 8 | (size_t)vl[4 * i + 2] << 16
                   | (size_t)vl[4 * i + 3] << 24;
        PyObject *v = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)l);
        if (!v) goto done;
        PyTuple_SET_ITEM(values, i, v);
        p += l;
    }
    ret = PyTuple_Pack(2, keys, values);
done:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    PyBuffer_Release(&b);
    return ret;
}

/* merge(ckeys, cvalues, hkeys, hvalues, i, j): ([keys], [values], shadowed) of the rows
 * of a block (ckeys ascending) and the hot rows hkeys[i:j] (ascending) in key order, a
 * hot row replacing a block row of the same key (shadowed: how many did). */
static PyObject *merge(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ck, *cv, *hk, *hv;
    Py_ssize_t i, j;
    if (!PyArg_ParseTuple(args, "OOOOnn", &ck, &cv, &hk, &hv, &i, &j)) return NULL;
    PyObject *cks = NULL, *cvs = NULL, *hks = NULL, *hvs = NULL, *ok = NULL, *ov = NULL;
    PyObject *ret = NULL;
    if (!(cks = PySequence_Fast(ck, "keys must be a sequence"))
        || !(cvs = PySequence_Fast(cv, "values must be a sequence"))
        || !(hks = PySequence_Fast(hk, "keys must be a sequence"))
        || !(hvs = PySequence_Fast(hv, "values must be a sequence")))
        goto done;
    Py_ssize_t cn = PySequence_Fast_GET_SIZE(cks);
    if (PySequence_Fast_GET_SIZE(cvs) != cn || i < 0 || j < i || j > PySequence_Fast_GET_SIZE(hks)
        || j > PySequence_Fast_GET_SIZE(hvs)) {
        PyErr_SetString(PyExc_ValueError, "rows of unequal lengths or a hot range out of them");
        goto done;
    }
    if (!(ok = PyList_New(0)) || !(ov = PyList_New(0))) goto done;
    Py_ssize_t a = 0, h = i, shadowed = 0;
    while (a < cn || h < j) {
        PyObject *k, *v;
        if (a < cn && h < j) {
            PyObject *x = PySequence_Fast_GET_ITEM(cks, a), *y = PySequence_Fast_GET_ITEM(hks, h);
            int lt = PyObject_RichCompareBool(y, x, Py_LT);
            if (lt < 0) goto done;
            int eq = lt ? 0 : PyObject_RichCompareBool(y, x, Py_EQ);
            if (eq < 0) goto done;
            if (lt || eq) {
                k = y;
                v = PySequence_Fast_GET_ITEM(hvs, h++);
                if (eq) { a++; shadowed++; }
            } else {
                k = x;
                v = PySequence_Fast_GET_ITEM(cvs, a++);
            }
        } else if (a < cn) {
            k = PySequence_Fast_GET_ITEM(cks, a);
            v = PySequence_Fast_GET_ITEM(cvs, a++);
        } else {
            k = PySequence_Fast_GET_ITEM(hks, h);
            v = PySequence_Fast_GET_ITEM(hvs, h++);
        }
        if (PyList_Append(ok, k) || PyList_Append(ov, v)) goto done;
    }
    ret = Py_BuildValue("(OOn)", ok, ov, shadowed);
done:
    Py_XDECREF(cks);
    Py_XDECREF(cvs);
    Py_XDECREF(hks);
    Py_XDECREF(hvs);
    Py_XDECREF(ok);
    Py_XDECREF(ov);
    return ret;
}

/* The packer's cut (gfs/meta/blocks.py, _Packer): rows lo..hi of a buffer, the page
 * being filled and the line guessing a block's frame bytes from its raw bytes. */
typedef struct {
    PyObject *keys, *values, *c2, *c6, *compress;
    long long target, max_block, page_room, min_fill, span;
    long long room, seen;
    double slope, base;
} Cut;

static int at(PyObject *list, Py_ssize_t i, long long *out) {
    *out = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static long long node(long long klen, long long dlen) { return 2 + ((8 + klen + dlen + 1) & ~1LL); }

/* A block of rows lo..hi: its row count (a varint), then its body's zstd frame. */
static PyObject *encode(Cut *c, Py_ssize_t lo, Py_ssize_t hi) {
    PyObject *raw = build_body(c->keys, c->values, lo, hi);
    if (!raw) return NULL;
    PyObject *frame = PyObject_CallOneArg(c->compress, raw);
    Py_DECREF(raw);
    if (!frame) return NULL;
    if (!PyBytes_Check(frame)) {
        Py_DECREF(frame);
        PyErr_SetString(PyExc_TypeError, "compress must return bytes");
        return NULL;
    }
    unsigned char head[10];
    int h = 0;
    for (unsigned long long n = (unsigned long long)(hi - lo);; n >>= 7) {
        head[h++] = (unsigned char)((n & 0x7F) | (n > 0x7F ? 0x80 : 0));
        if (n <= 0x7F) break;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, h + PyBytes_GET_SIZE(frame));
    if (out) {
        memcpy(PyBytes_AS_STRING(out), head, (size_t)h);
        memcpy(PyBytes_AS_STRING(out) + h, PyBytes_AS_STRING(frame), (size_t)PyBytes_GET_SIZE(frame));
    }
    Py_DECREF(frame);
    return out;
}

/* Put the line through an encode of `raw` bytes to `frame` bytes (as _Packer._learn). */
static void learn(Cut *c, long long raw, long long frame) {
    if (llabs(raw - c->seen) >= c->span) {
        double v = c->seen ? (((double)frame - c->base) - c->slope * (double)c->seen)
                                 / (double)(raw - c->seen)
                           : (double)frame / (double)raw;
        double lo = 0.05 > v ? 0.05 : v;  /* max(v, 0.05) */
        c->slope = 1.5 < lo ? 1.5 : lo;   /* min(.., 1.5) */
    }
    c->base = (double)frame - c->slope * (double)raw;
    c->seen = raw;
}

/* The most leading rows from s (to m) whose block's node fits `budget` (*n, 0 if none)
 * and that block (*best: a new reference or NULL); -1 on an error (as _Packer._fit). */
static int fit(Cut *c, Py_ssize_t s, Py_ssize_t m, long long budget, Py_ssize_t *n,
               PyObject **best) {
    Py_ssize_t lo = 0, hi = m - s + 1;
    long long c6s;
    *best = NULL;
    if (at(c->c6, s, &c6s)) return -1;
    for (int step = 0;; step++) {
        if (hi - lo <= 1) {
            *n = lo;
            return 0;
        }
        Py_ssize_t k;
        if (step < 4) {  /* the frame of k rows is about slope * raw(k) + base */
            Py_ssize_t kl = size_of(PyList_GET_ITEM(c->keys, s + lo));
            if (kl < 0) goto fail;
            double room = (double)(budget - 11 - kl) - c->base;
            double x = (double)c6s + room / c->slope;
            Py_ssize_t a = s + 1, b = m + 1;  /* bisect_right(c6, x, s + 1, m + 1) */
            while (a < b) {
                Py_ssize_t mid = a + (b - a) / 2;
                long long v;
                if (at(c->c6, mid, &v)) goto fail;
                if (x < (double)v) b = mid; else a = mid + 1;
            }
            k = a - s - 1;
            if (k < lo + 1) k = lo + 1;
            if (k > hi - 1) k = hi - 1;
        } else {
            k = (lo + hi) / 2;
        }
        PyObject *data = encode(c, s, s + k);
        if (!data) goto fail;
        long long end;
        if (at(c->c6, s + k, &end)) { Py_DECREF(data); goto fail; }
        learn(c, end - c6s, PyBytes_GET_SIZE(data));
        Py_ssize_t kl = size_of(PyList_GET_ITEM(c->keys, s + k - 1));
        if (kl < 0) { Py_DECREF(data); goto fail; }
        if (node(kl, PyBytes_GET_SIZE(data)) <= budget) {
            lo = k;
            Py_XSETREF(*best, data);
        } else {
            hi = k;
            Py_DECREF(data);
        }
    }
fail:
    Py_CLEAR(*best);
    return -1;
}

/* cut(keys, values, c2, c6, s, m, final, state, compress, limits): the blocks of the
 * buffered rows from s to m while they hold `target` bytes (all, if final), as
 * _Packer._emit cut them: (where the rows not cut start, [(block key, block)]).
 * state is [room, slope, base, seen], updated; limits (target, max_block, page_room,
 * min_fill, span). */
static PyObject *cut(PyObject *self, PyObject *args) {
    (void)self;
    Cut c;
    Py_ssize_t s, m;
    int final;
    PyObject *state;
    if (!PyArg_ParseTuple(args, "O!O!O!O!nnpO!O(LLLLL)", &PyList_Type, &c.keys, &PyList_Type,
                          &c.values, &PyList_Type, &c.c2, &PyList_Type, &c.c6, &s, &m, &final,
                          &PyList_Type, &state, &c.compress, &c.target, &c.max_block,
                          &c.page_room, &c.min_fill, &c.span))
        return NULL;
    Py_ssize_t rows = PyList_GET_SIZE(c.keys);
    if (PyList_GET_SIZE(state) != 4 || s < 0 || m < s || m > rows || PyList_GET_SIZE(c.values) != rows
        || PyList_GET_SIZE(c.c2) != rows + 1 || PyList_GET_SIZE(c.c6) != rows + 1) {
        PyErr_SetString(PyExc_ValueError, "cut: rows, sums or state of the wrong shape");
        return NULL;
    }
    c.room = PyLong_AsLongLong(PyList_GET_ITEM(state, 0));
    c.slope = PyFloat_AsDouble(PyList_GET_ITEM(state, 1));
    c.base = PyFloat_AsDouble(PyList_GET_ITEM(state, 2));
    c.seen = PyLong_AsLongLong(PyList_GET_ITEM(state, 3));
    if (PyErr_Occurred()) return NULL;
    long long c2m;
    if (at(c.c2, m, &c2m)) return NULL;
    PyObject *blocks = PyList_New(0);
    if (!blocks) return NULL;
    long long most = node(0, c.max_block);
    for (;;) {
        long long c2s;
        if (at(c.c2, s, &c2s)) goto fail;
        if (!(s < m && (final || c2m - c2s >= c.target))) break;
        if (c.room < c.min_fill) c.room = c.page_room;
        long long budget = most < c.room ? most : c.room;
        Py_ssize_t n;
        PyObject *data;
        if (fit(&c, s, m, budget, &n, &data)) goto fail;
        if (!n) {
            if (c.room < c.page_room) {  /* start a fresh page */
                c.room = c.page_room;
                continue;
            }
            n = 1;  /* one row larger than a page */
            if (!(data = encode(&c, s, s + 1))) goto fail;
        }
        PyObject *key = PyList_GET_ITEM(c.keys, s + n - 1);
        Py_ssize_t kl = size_of(key), dl = PyBytes_GET_SIZE(data);
        if (kl < 0) { Py_DECREF(data); goto fail; }
        long long taken = n > 1 || dl + kl <= c.max_block ? node(kl, dl) : node(kl, 8);
        if (taken > c.room) c.room = c.page_room;
        c.room -= taken;
        PyObject *pair = PyTuple_Pack(2, key, data);
        Py_DECREF(data);
        if (!pair) goto fail;
        int bad = PyList_Append(blocks, pair);
        Py_DECREF(pair);
        if (bad) goto fail;
        s += n;
    }
    PyObject *v[4] = {PyLong_FromLongLong(c.room), PyFloat_FromDouble(c.slope),
                      PyFloat_FromDouble(c.base), PyLong_FromLongLong(c.seen)};
    for (int i = 0; i < 4; i++) {
        if (!v[i]) {
            for (int j = 0; j < 4; j++) Py_XDECREF(v[j]);
            goto fail;
        }
    }
    for (int i = 0; i < 4; i++) PyList_SetItem(state, i, v[i]);  /* steals */
    PyObject *ret = Py_BuildValue("(nN)", s, blocks);
    return ret;
fail:
    Py_DECREF(blocks);
    return NULL;
}

static PyMethodDef methods[] = {
    {"sums", sums, METH_VARARGS, "Append ascending rows' running byte counts (+2, +6) to c2, c6."},
    {"body", body, METH_VARARGS, "The block body of rows lo..hi of keys and values."},
    {"split", split, METH_VARARGS, "(keys, values) of a block body of n rows, checked."},
    {"take", take, METH_VARARGS, "Append up to n (key, value) rows of an iterator to two lists."},
    {"cut", cut, METH_VARARGS, "Blocks cut from buffered rows as the packer cuts them."},
    {"merge", merge, METH_VARARGS, "A block's rows merged with hot rows hk[i:j] shadowing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfs._rowpack", "Per-row loops of packed metadata blocks.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowpack(void) { return PyModule_Create(&module); }
