/* CPython binding `privacy._ec`: batched Elligator 2 and X25519 over bytes buffers,
 * GIL released during the arithmetic. See privacy_ec.h for the contract. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "privacy_ec.h"

static int get_scalar(Py_buffer *b) {
    if (b->len != 32) {
        PyErr_Format(PyExc_ValueError, "scalar must be 32 bytes, got %zd", b->len);
        return -1;
    }
    return 0;
}

static int get_points(Py_buffer *b, const char *what) {
    if (b->len % 32 != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a multiple of 32 bytes, got %zd", what, b->len);
        return -1;
    }
    return 0;
}

/* map + (optional) ladder over n inputs; result of n * outlen bytes. */
static PyObject *run(Py_buffer *scalar, Py_buffer *in, Py_ssize_t outlen, int map_first) {
    size_t n = (size_t)in->len / 32;
    PyObject *res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * outlen);
    if (res == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(res);
    const unsigned char *src = (const unsigned char *)in->buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    unsigned char *mapped = NULL;
    uint64_t *scratch = NULL;
    if (map_first) {
        mapped = PyMem_RawMalloc(n * 32 + 1);
        if (mapped == NULL) failed = 1;
        else {
            for (size_t i = 0; i < n; i++) pec_map_to_curve(mapped + 32 * i, src + 32 * i);
            src = mapped;
        }
    }
    if (!failed && scalar != NULL) {
        scratch = PyMem_RawMalloc((3 * 5 * n + 1) * sizeof(uint64_t));
        if (scratch == NULL) failed = 1;
        else pec_ladder_batch(out, (size_t)outlen, (const unsigned char *)scalar->buf, src, n,
                              scratch);
    } else if (!failed) {
        for (size_t i = 0; i < n; i++) memcpy(out + outlen * i, src + 32 * i, (size_t)outlen);
    }
    PyMem_RawFree(scratch);
    PyMem_RawFree(mapped);
    Py_END_ALLOW_THREADS
    if (failed) {
        Py_DECREF(res);
        return PyErr_NoMemory();
    }
    return res;
}

static PyObject *ec_map_to_curve(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer in;
    if (!PyArg_ParseTuple(args, "y*:map_to_curve", &in)) return NULL;
    PyObject *r = NULL;
    if (get_points(&in, "hashes") == 0) r = run(NULL, &in, 32, 1);
    PyBuffer_Release(&in);
    return r;
}

static PyObject *ec_mul(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer sc, in;
    Py_ssize_t outlen = 32;
    if (!PyArg_ParseTuple(args, "y*y*|n:mul", &sc, &in, &outlen)) return NULL;
    PyObject *r = NULL;
    if (outlen < 1 || outlen > 32) PyErr_SetString(PyExc_ValueError, "outlen must be 1..32");
    else if (get_scalar(&sc) == 0 && get_points(&in, "points") == 0) r = run(&sc, &in, outlen, 0);
    PyBuffer_Release(&sc);
    PyBuffer_Release(&in);
    return r;
}

static PyObject *ec_hash_mul(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer sc, in;
    Py_ssize_t outlen = 32;
    if (!PyArg_ParseTuple(args, "y*y*|n:hash_mul", &sc, &in, &outlen)) return NULL;
    PyObject *r = NULL;
    if (outlen < 1 || outlen > 32) PyErr_SetString(PyExc_ValueError, "outlen must be 1..32");
    else if (get_scalar(&sc) == 0 && get_points(&in, "hashes") == 0) r = run(&sc, &in, outlen, 1);
    PyBuffer_Release(&sc);
    PyBuffer_Release(&in);
    return r;
}

static PyObject *ec_backend(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyUnicode_FromString(pec_get_backend() ? "ifma" : "portable");
}

static PyObject *ec_set_backend(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_backend", &name)) return NULL;
    int want;
    if (strcmp(name, "portable") == 0) want = 0;
    else if (strcmp(name, "ifma") == 0) want = 1;
    else if (strcmp(name, "auto") == 0) want = pec_ifma_available();
    else {
        PyErr_Format(PyExc_ValueError, "unknown backend %s (portable, ifma or auto)", name);
        return NULL;
    }
    if (pec_set_backend(want) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "the ifma backend needs a CPU with AVX-512 IFMA");
        return NULL;
    }
    return PyUnicode_FromString(want ? "ifma" : "portable");
}

static PyMethodDef methods[] = {
    {"backend", ec_backend, METH_NOARGS, "backend() -> str: 'ifma' or 'portable'."},
    {"set_backend", ec_set_backend, METH_VARARGS,
     "set_backend(name) -> str: 'portable', 'ifma' or 'auto' (the best available)."},
    {"map_to_curve", ec_map_to_curve, METH_VARARGS,
     "map_to_curve(hashes) -> bytes: Elligator 2 u-coordinate of each 32-byte hash."},
    {"mul", ec_mul, METH_VARARGS,
     "mul(scalar, points, outlen=32) -> bytes: X25519(scalar, u) of each 32-byte point, "
     "first outlen bytes of each."},
    {"hash_mul", ec_hash_mul, METH_VARARGS,
     "hash_mul(scalar, hashes, outlen=32) -> bytes: X25519(scalar, map_to_curve(h))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "privacy._ec",
    "Curve25519 group operations for ECDH-PSI (Elligator 2, batched X25519).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ec(void) {
    pec_set_backend(pec_ifma_available());
    return PyModule_Create(&moddef);
}
