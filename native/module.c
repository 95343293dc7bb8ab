/* gfs._native: CPython binding of the FastCDC chunker (native/fastcdc.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fastcdc.h"

static int
init_params(fastcdc_params *p, unsigned long long min_size, unsigned long long avg_size,
            unsigned long long max_size)
{
    int status = fastcdc_params_init(p, min_size, avg_size, max_size);
    if (status != FASTCDC_OK) {
        PyErr_Format(PyExc_ValueError, "%s (min_size=%llu, avg_size=%llu, max_size=%llu)",
                     fastcdc_strerror(status), min_size, avg_size, max_size);
        return -1;
    }
    return 0;
}

/* Get a C-contiguous byte view of obj, with a clear error otherwise. */
static int
get_buffer(PyObject *obj, Py_buffer *view)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "cut_points() needs a bytes-like object (bytes, bytearray, "
                     "memoryview, mmap), not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_BufferError,
                     "cut_points() needs a C-contiguous buffer; this %.100s is not "
                     "contiguous (copy it with bytes() first)", Py_TYPE(obj)->tp_name);
    }
    return -1;
}

PyDoc_STRVAR(cut_points_doc,
"cut_points(buf, min_size, avg_size, max_size, eof=True, /) -> list[int]\n\n"
"Chunk end offsets (exclusive) of buf, a C-contiguous buffer, by FastCDC\n"
"(docs/format.md). With eof false, stop before the first chunk that has fewer\n"
"than max_size bytes from its start to the end of buf. The GIL is released\n"
"during the scan. Raises ValueError on bad sizes.");

static PyObject *
cut_points(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 4 || nargs > 5) {
        PyErr_Format(PyExc_TypeError,
                     "cut_points() takes 4 or 5 positional arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long long sizes[3];
    for (int k = 0; k < 3; k++) {
        sizes[k] = PyLong_AsUnsignedLongLong(args[k + 1]);
        if (sizes[k] == (unsigned long long)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "chunk sizes must be non-negative and < 2**64");
            }
            return NULL;
        }
    }
    int eof = 1;
    if (nargs == 5 && (eof = PyObject_IsTrue(args[4])) < 0)
        return NULL;
    fastcdc_params params;
    if (init_params(&params, sizes[0], sizes[1], sizes[2]) < 0)
        return NULL;

    Py_buffer view;
    if (get_buffer(args[0], &view) < 0)
        return NULL;
    const uint8_t *buf = (const uint8_t *)view.buf;
    const size_t len = (size_t)view.len;

    /* Room for the expected number of cuts; grown if the data chunks finer. */
    size_t cap = len / params.avg_size + 16;
    size_t count = 0;
    uint64_t *cuts = PyMem_RawMalloc(cap * sizeof(uint64_t));
    int nomem = cuts == NULL;
    Py_BEGIN_ALLOW_THREADS
    size_t start = 0;
    while (!nomem) {
        count += fastcdc_cut_points(buf, len, start, &params, eof, cuts + count,
                                    cap - count, &start);
        if (count < cap)
            break;
        uint64_t *bigger = PyMem_RawRealloc(cuts, 2 * cap * sizeof(uint64_t));
        if (bigger == NULL) {
            nomem = 1;
            break;
        }
        cuts = bigger;
        cap *= 2;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (nomem) {
        PyMem_RawFree(cuts);
        return PyErr_NoMemory();
    }

    PyObject *list = PyList_New((Py_ssize_t)count);
    for (size_t k = 0; list != NULL && k < count; k++) {
        PyObject *item = PyLong_FromUnsignedLongLong(cuts[k]);
        if (item == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)k, item);
    }
    PyMem_RawFree(cuts);
    return list;
}

PyDoc_STRVAR(check_params_doc,
"check_params(min_size, avg_size, max_size, /) -> None\n\n"
"Raise ValueError unless 64 <= min_size <= avg_size <= max_size <= 2**30\n"
"and avg_size is a power of two.");

static PyObject *
check_params(PyObject *Py_UNUSED(module), PyObject *args)
{
    unsigned long long min_size, avg_size, max_size;
    if (!PyArg_ParseTuple(args, "KKK:check_params", &min_size, &avg_size, &max_size))
        return NULL;
    fastcdc_params params;
    if (init_params(&params, min_size, avg_size, max_size) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(masks_doc,
"masks(min_size, avg_size, max_size, /) -> tuple[int, int]\n\n"
"(mask_s, mask_l) used for these sizes.");

static PyObject *
masks(PyObject *Py_UNUSED(module), PyObject *args)
{
    unsigned long long min_size, avg_size, max_size;
    if (!PyArg_ParseTuple(args, "KKK:masks", &min_size, &avg_size, &max_size))
        return NULL;
    fastcdc_params params;
    if (init_params(&params, min_size, avg_size, max_size) < 0)
        return NULL;
    return Py_BuildValue("(KK)", (unsigned long long)params.mask_s,
                         (unsigned long long)params.mask_l);
}

PyDoc_STRVAR(gear_table_doc,
"gear_table() -> tuple[int, ...]\n\n"
"The 256 entries of the gear table compiled into the chunker.");

static PyObject *
gear_table(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    const uint64_t *gear = fastcdc_gear_table();
    PyObject *out = PyTuple_New(256);
    for (Py_ssize_t k = 0; out != NULL && k < 256; k++) {
        PyObject *item = PyLong_FromUnsignedLongLong(gear[k]);
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, k, item);
    }
    return out;
}

static PyMethodDef native_methods[] = {
    {"cut_points", (PyCFunction)(void (*)(void))cut_points, METH_FASTCALL, cut_points_doc},
    {"check_params", check_params, METH_VARARGS, check_params_doc},
    {"masks", masks, METH_VARARGS, masks_doc},
    {"gear_table", gear_table, METH_NOARGS, gear_table_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gfs._native",
    .m_doc = "Native core of Hutong: the FastCDC chunker (see gfs.chunking).",
    .m_size = 0,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
