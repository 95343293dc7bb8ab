/* gfs._rowpack: the per-row loops of packed metadata blocks (gfs/meta/blocks.py).
 *
 * A block's body is its rows' key lengths (u16 little-endian), value lengths
 * (u32 little-endian), keys, then values (docs/format.md, "Packed blocks"); zstd
 * compresses it in Python. These loops ran once a row in Python (~3/4 of a put's
 * compaction at close); here they run once a row in C:
 *   sums(keys, values, c2, c6)   append running byte counts of rows to c2 and c6
 *   body(keys, values, lo, hi)   the body of rows lo..hi
 *   split(raw, n)                a body back into (keys, values), checked
 *   merge(ck, cv, hk, hv, i, j)  a block's rows with hot rows hk[i:j] shadowing
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

/* sums(keys, values, c2, c6): append, for each row, c2[-1] + len(key) + len(value) + 2
 * to c2 and c6[-1] + ... + 6 to c6 (running sums). */
static PyObject *sums(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *values, *c2, *c6;
    if (!PyArg_ParseTuple(args, "OOO!O!", &keys, &values, &PyList_Type, &c2, &PyList_Type, &c6))
        return NULL;
    PyObject *ks = PySequence_Fast(keys, "keys must be a sequence");
    if (!ks) return NULL;
    PyObject *vs = PySequence_Fast(values, "values must be a sequence");
    if (!vs) { Py_DECREF(ks); return NULL; }
    PyObject *ret = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ks);
    if (PySequence_Fast_GET_SIZE(vs) != n || !PyList_GET_SIZE(c2) || !PyList_GET_SIZE(c6)) {
        PyErr_SetString(PyExc_ValueError, "keys and values differ in length, or no start sums");
        goto done;
    }
    long long a = PyLong_AsLongLong(PyList_GET_ITEM(c2, PyList_GET_SIZE(c2) - 1));
    long long b = PyLong_AsLongLong(PyList_GET_ITEM(c6, PyList_GET_SIZE(c6) - 1));
    if (PyErr_Occurred()) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t kl = size_of(PySequence_Fast_GET_ITEM(ks, i));
        if (kl < 0) goto done;
        Py_ssize_t vl = size_of(PySequence_Fast_GET_ITEM(vs, i));
        if (vl < 0) goto done;
        a += kl + vl + 2;
        b += kl + vl + 6;
        PyObject *x = PyLong_FromLongLong(a);
        if (!x) goto done;
        int bad = PyList_Append(c2, x);
        Py_DECREF(x);
        if (bad) goto done;
        x = PyLong_FromLongLong(b);
        if (!x) goto done;
        bad = PyList_Append(c6, x);
        Py_DECREF(x);
        if (bad) goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    Py_DECREF(ks);
    Py_DECREF(vs);
    return ret;
}

/* body(keys, values, lo, hi): the block body of rows lo..hi (hi > lo). OverflowError
 * for a key of more than 65,535 bytes or a value of 2**32 or more. */
static PyObject *body(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *values;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "OOnn", &keys, &values, &lo, &hi)) return NULL;
    PyObject *ks = PySequence_Fast(keys, "keys must be a sequence");
    if (!ks) return NULL;
    PyObject *vs = PySequence_Fast(values, "values must be a sequence");
    if (!vs) { Py_DECREF(ks); return NULL; }
    PyObject *out = NULL;
    Py_buffer *bufs = NULL;
    Py_ssize_t got = 0, n = hi - lo;
    if (lo < 0 || n <= 0 || hi > PySequence_Fast_GET_SIZE(ks) || hi > PySequence_Fast_GET_SIZE(vs)) {
        PyErr_SetString(PyExc_IndexError, "row range out of the rows");
        goto done;
    }
    bufs = PyMem_Calloc((size_t)(2 * n), sizeof(Py_buffer));
    if (!bufs) { PyErr_NoMemory(); goto done; }
    Py_ssize_t total = 6 * n;
    for (Py_ssize_t i = 0; i < n; i++, got += 2) {
        if (view(PySequence_Fast_GET_ITEM(ks, lo + i), &bufs[2 * i]) < 0) goto done;
        if (view(PySequence_Fast_GET_ITEM(vs, lo + i), &bufs[2 * i + 1]) < 0) {
            got += 1;
            goto done;
        }
        if (bufs[2 * i].len > 0xFFFF || (uint64_t)bufs[2 * i + 1].len > 0xFFFFFFFFull) {
            got += 2;
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
        for (int s = 0; s < 32; s += 8) *p++ = (unsigned char)(v >> s);
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
    if (bufs) {
        for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
        PyMem_Free(bufs);
    }
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

static PyMethodDef methods[] = {
    {"sums", sums, METH_VARARGS, "Append rows' running byte counts (+2, +6 a row) to c2, c6."},
    {"body", body, METH_VARARGS, "The block body of rows lo..hi of keys and values."},
    {"split", split, METH_VARARGS, "(keys, values) of a block body of n rows, checked."},
    {"merge", merge, METH_VARARGS, "A block's rows merged with hot rows hk[i:j] shadowing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfs._rowpack", "Per-row loops of packed metadata blocks.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowpack(void) { return PyModule_Create(&module); }
