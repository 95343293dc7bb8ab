/* CPython binding `gfs._sealed`: a new bytes object filled in place by a Python
 * callable, for reads of sealed pool objects (gfs/pools/sealed.py) that decrypt
 * straight into the bytes they return.
 *
 * A large read made as a bytearray and then copied into bytes touches twice the
 * fresh memory, and page faults are what such a read costs most; C code makes
 * the bytes with PyBytes_FromStringAndSize(NULL, n) and writes into it before
 * anyone else sees it. This does the same for Python: `fill` gets a writable
 * memoryview of the new object and must keep neither it nor a slice of it; the
 * view is released before the object is handed out. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyDoc_STRVAR(filled_bytes_doc,
"filled_bytes(n, fill) -> bytes\n"
"\n"
"A new bytes object of n bytes whose contents fill(view) wrote through a\n"
"writable memoryview of it; fill returns how many bytes it wrote, which must\n"
"be n (else ValueError: no byte of uninitialised memory is handed out). The\n"
"view is released when fill returns (BufferError if fill still holds a buffer\n"
"exported from it); fill must keep no slice of it either, since bytes are\n"
"immutable once handed out.");

static PyObject *
filled_bytes(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    PyObject *fill;
    (void)self;
    if (!PyArg_ParseTuple(args, "nO:filled_bytes", &n, &fill))
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "filled_bytes: size %zd is negative", n);
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    if (!result)
        return NULL;
    PyObject *view = PyMemoryView_FromMemory(PyBytes_AS_STRING(result), n, PyBUF_WRITE);
    if (!view) {
        Py_DECREF(result);
        return NULL;
    }
    PyObject *r = PyObject_CallOneArg(fill, view);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);  /* fill's error, kept across the release */
    PyObject *released = PyObject_CallMethod(view, "release", NULL);
    Py_DECREF(view);
    if (type) {
        Py_XDECREF(released);
        released = NULL;
        PyErr_Restore(type, value, tb);
    }
    if (!r || !released) {
        Py_XDECREF(r);
        Py_XDECREF(released);
        Py_DECREF(result);
        return NULL;
    }
    Py_ssize_t wrote = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    Py_DECREF(released);
    if (wrote != n) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "filled_bytes: fill wrote %zd of %zd bytes", wrote,
                         n);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"filled_bytes", filled_bytes, METH_VARARGS, filled_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfs._sealed",
    "A new bytes object filled in place (reads of sealed pool objects).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sealed(void)
{
    return PyModule_Create(&module);
}
