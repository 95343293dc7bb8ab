/* gfs._native: CPython binding of the FastCDC chunker (native/fastcdc.h), of
 * the chunk-id hashing (native/chunkid.h), of the super-features
 * (native/superfeat.h) and of the metadata record encodings (native/metarec.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunkid.h"
#include "fastcdc.h"
#include "localscan.h"
#include "metarec.h"
#include "restore.h"
#include "superfeat.h"

/* Buffers smaller than this are scanned without releasing the GIL. */
#define GIL_RELEASE_MIN (256u * 1024u)

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

/* Scan buf with params into a malloc'd array of cut points; no Python calls, so it
 * may run without the GIL. Returns the count, or (size_t)-1 when out of memory. */
static size_t
scan_cuts(const uint8_t *buf, size_t len, const fastcdc_params *params, int eof,
          uint64_t **out)
{
    size_t cap = len / params->avg_size + 16;
    size_t count = 0;
    size_t start = 0;
    uint64_t *cuts = PyMem_RawMalloc(cap * sizeof(uint64_t));
    while (cuts != NULL) {
        count += fastcdc_cut_points(buf, len, start, params, eof, cuts + count,
                                    cap - count, &start);
        if (count < cap) {
            *out = cuts;
            return count;
        }
        uint64_t *bigger = PyMem_RawRealloc(cuts, 2 * cap * sizeof(uint64_t));
        if (bigger == NULL)
            PyMem_RawFree(cuts);
        cuts = bigger;
        cap *= 2;
    }
    return (size_t)-1;
}

static PyObject *
cuts_to_list(const uint64_t *cuts, size_t count)
{
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (size_t k = 0; list != NULL && k < count; k++) {
        PyObject *item = PyLong_FromUnsignedLongLong(cuts[k]);
        if (item == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)k, item);
    }
    return list;
}

PyDoc_STRVAR(cut_points_doc,
"cut_points(buf, min_size, avg_size, max_size, eof=True, /) -> list[int]\n\n"
"Chunk end offsets (exclusive) of buf, a C-contiguous buffer, by FastCDC\n"
"(docs/format.md). With eof false, stop before the first chunk that has fewer\n"
"than max_size bytes from its start to the end of buf. The GIL is released\n"
"during the scan of buffers of 256 KiB or more. Raises ValueError on bad sizes.");

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

    uint64_t *cuts = NULL;
    size_t count;
    PyThreadState *released = len >= GIL_RELEASE_MIN ? PyEval_SaveThread() : NULL;
    count = scan_cuts(buf, len, &params, eof, &cuts);
    if (released != NULL)
        PyEval_RestoreThread(released);
    PyBuffer_Release(&view);
    if (count == (size_t)-1)
        return PyErr_NoMemory();
    PyObject *list = cuts_to_list(cuts, count);
    PyMem_RawFree(cuts);
    return list;
}

PyDoc_STRVAR(chunk_ids_doc,
"chunk_ids(buf, cuts, /) -> bytes\n\n"
"The xxh3-128 ids (16 bytes each, canonical order) of the chunks of buf that\n"
"end at the offsets in cuts (increasing, within buf), concatenated. The GIL\n"
"is released while hashing.");

/* Read the cut points of seq (increasing, within a buffer of len bytes) into a
 * PyMem_RawMalloc'd array. Returns the array (count in *n), or NULL with an
 * exception set. what names the calling function in messages. */
static uint64_t *
parse_cuts(PyObject *seq, Py_ssize_t len, const char *what, Py_ssize_t *n)
{
    PyObject *fast = PySequence_Fast(seq, "needs a sequence of cut points");
    if (fast == NULL)
        return NULL;
    *n = PySequence_Fast_GET_SIZE(fast);
    uint64_t *cuts = PyMem_RawMalloc(((size_t)*n + 1) * sizeof(uint64_t));
    if (cuts == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    uint64_t prev = 0;
    for (Py_ssize_t k = 0; k < *n; k++) {
        unsigned long long c = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, k));
        if (c == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        if (c < prev || c > (unsigned long long)len) {
            PyErr_Format(PyExc_ValueError, "%s(): cut %zd (%llu) is not increasing "
                         "within the buffer of %zd bytes", what, k, c, len);
            goto fail;
        }
        cuts[k] = prev = c;
    }
    Py_DECREF(fast);
    return cuts;
fail:
    PyMem_RawFree(cuts);
    Py_DECREF(fast);
    return NULL;
}

static PyObject *
chunk_ids(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *obj, *seq;
    if (!PyArg_ParseTuple(args, "OO:chunk_ids", &obj, &seq))
        return NULL;
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    Py_ssize_t n;
    uint64_t *cuts = parse_cuts(seq, view.len, "chunk_ids", &n);
    PyObject *out = NULL;
    if (cuts != NULL)
        out = PyBytes_FromStringAndSize(NULL, n * CHUNKID_LEN);
    if (out != NULL) {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        const uint8_t *buf = (const uint8_t *)view.buf;
        PyThreadState *released =
            (size_t)view.len >= GIL_RELEASE_MIN ? PyEval_SaveThread() : NULL;
        chunkid_many(buf, cuts, (size_t)n, dst);
        if (released != NULL)
            PyEval_RestoreThread(released);
    }
    PyMem_RawFree(cuts);
    PyBuffer_Release(&view);
    return out;
}

/* Write n values as u64 little-endian (the byte order the Python side unpacks). */
static void
pack_u64le(uint8_t *dst, const uint64_t *src, size_t n)
{
    for (size_t k = 0; k < n; k++)
        for (int b = 0; b < 8; b++)
            dst[8 * k + (size_t)b] = (uint8_t)(src[k] >> (8 * b));
}

PyDoc_STRVAR(superfeatures_doc,
"superfeatures(buf, cuts, /) -> bytes\n\n"
"The 3 super-features (docs/format.md, \"Resemblance and delta chunks\") of\n"
"each chunk of buf ending at the offsets in cuts (increasing, within buf), as\n"
"u64 little-endian, 24 bytes per chunk. The GIL is released while scanning.");

static PyObject *
superfeatures(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *obj, *seq;
    if (!PyArg_ParseTuple(args, "OO:superfeatures", &obj, &seq))
        return NULL;
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    Py_ssize_t n;
    uint64_t *cuts = parse_cuts(seq, view.len, "superfeatures", &n);
    uint64_t *sf = cuts == NULL ? NULL
        : PyMem_RawMalloc(((size_t)n * SUPERFEAT_SUPER + 1) * sizeof(uint64_t));
    PyObject *out = NULL;
    if (cuts != NULL && sf == NULL)
        PyErr_NoMemory();
    if (sf != NULL)
        out = PyBytes_FromStringAndSize(NULL, n * SUPERFEAT_SUPER * 8);
    if (out != NULL) {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        PyThreadState *released =
            (size_t)view.len >= GIL_RELEASE_MIN ? PyEval_SaveThread() : NULL;
        superfeat_many((const uint8_t *)view.buf, cuts, (size_t)n, sf);
        pack_u64le(dst, sf, (size_t)n * SUPERFEAT_SUPER);
        if (released != NULL)
            PyEval_RestoreThread(released);
    }
    PyMem_RawFree(sf);
    PyMem_RawFree(cuts);
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(index_keys_many_doc,
"index_keys_many(chunks, /) -> list[list[bytes]]\n\n"
"The resemblance index keys of each chunk of chunks (a sequence of buffers, each\n"
"taken as one chunk): for each non-zero super-feature j, the 9 bytes j, then the\n"
"super-feature as u64 big-endian (docs/format.md, \"Resemblance and delta\n"
"chunks\"); an empty list for an empty chunk. The GIL is released while the\n"
"batch is scanned, once for all chunks, when they hold 64 KiB or more.");

/* Bytes of chunks from which index_keys_many scans without the GIL. */
#define KEYS_GIL_RELEASE_MIN (64u * 1024u)

static PyObject *
index_keys_many(PyObject *Py_UNUSED(module), PyObject *arg)
{
    PyObject *fast = PySequence_Fast(arg, "index_keys_many() wants a sequence of buffers");
    if (fast == NULL)
        return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Py_buffer *views = PyMem_Calloc((size_t)n + 1, sizeof(Py_buffer));
    uint64_t *sf = PyMem_RawMalloc(((size_t)n * SUPERFEAT_SUPER + 1) * sizeof(uint64_t));
    PyObject *out = NULL;
    Py_ssize_t got = 0;
    size_t total = 0;
    if (views == NULL || sf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        if (get_buffer(PySequence_Fast_GET_ITEM(fast, got), &views[got]) < 0)
            goto done;
        total += (size_t)views[got].len;
    }
    PyThreadState *released = total >= KEYS_GIL_RELEASE_MIN ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t f[SUPERFEAT_FEATURES];  /* all 0 for a chunk without samples */
        superfeat_features((const uint8_t *)views[k].buf, (size_t)views[k].len, f);
        superfeat_group(f, sf + SUPERFEAT_SUPER * (size_t)k);
    }
    if (released != NULL)
        PyEval_RestoreThread(released);
    out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        const uint64_t *s = sf + SUPERFEAT_SUPER * (size_t)k;
        Py_ssize_t nonzero = 0;
        for (int j = 0; j < SUPERFEAT_SUPER; j++)
            nonzero += s[j] != 0;
        PyObject *keys = PyList_New(nonzero);
        for (int j = 0, at = 0; keys != NULL && j < SUPERFEAT_SUPER; j++) {
            if (s[j] == 0)
                continue;
            uint8_t key[9];
            key[0] = (uint8_t)j;
            for (int b = 0; b < 8; b++)
                key[1 + b] = (uint8_t)(s[j] >> (56 - 8 * b));
            PyObject *item = PyBytes_FromStringAndSize((const char *)key, 9);
            if (item == NULL)
                Py_CLEAR(keys);
            else
                PyList_SET_ITEM(keys, at++, item);
        }
        if (keys == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, keys);
    }
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_RawFree(sf);
    Py_DECREF(fast);
    return out;
}

PyDoc_STRVAR(cut_superfeatures_doc,
"cut_superfeatures(buf, min_size, avg_size, max_size, /) -> tuple[list[int], bytes]\n\n"
"cut_points(buf, ...) and superfeatures(buf, cuts) of the whole buffer in one\n"
"pass (native/superfeat.h, superfeat_chunk). The GIL is released during the\n"
"scan of buffers of 256 KiB or more. Raises ValueError on bad sizes.");

/* Chunk buf whole with features into malloc'd arrays; no Python calls. Returns the
 * chunk count, or (size_t)-1 when out of memory. */
static size_t
scan_cut_superfeatures(const uint8_t *buf, size_t len, const fastcdc_params *params,
                       uint64_t **cuts_out, uint64_t **sf_out)
{
    size_t cap = len / params->avg_size + 16, count = 0, start = 0;
    uint64_t *cuts = PyMem_RawMalloc(cap * sizeof(uint64_t));
    uint64_t *sf = PyMem_RawMalloc(cap * SUPERFEAT_SUPER * sizeof(uint64_t));
    while (cuts != NULL && sf != NULL && start < len) {
        if (count == cap) {
            uint64_t *c2 = PyMem_RawRealloc(cuts, 2 * cap * sizeof(uint64_t));
            cuts = c2 != NULL ? c2 : (PyMem_RawFree(cuts), NULL);
            uint64_t *s2 = PyMem_RawRealloc(sf, 2 * cap * SUPERFEAT_SUPER * sizeof(uint64_t));
            sf = s2 != NULL ? s2 : (PyMem_RawFree(sf), NULL);
            cap *= 2;
            continue;
        }
        uint64_t f[SUPERFEAT_FEATURES];
        start += superfeat_chunk(buf + start, len - start, params, f);
        superfeat_group(f, sf + SUPERFEAT_SUPER * count);
        cuts[count++] = (uint64_t)start;
    }
    if (cuts == NULL || sf == NULL) {
        PyMem_RawFree(cuts);
        PyMem_RawFree(sf);
        return (size_t)-1;
    }
    *cuts_out = cuts;
    *sf_out = sf;
    return count;
}

static PyObject *
cut_superfeatures(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *obj;
    unsigned long long min_size, avg_size, max_size;
    if (!PyArg_ParseTuple(args, "OKKK:cut_superfeatures", &obj, &min_size, &avg_size,
                          &max_size))
        return NULL;
    fastcdc_params params;
    if (init_params(&params, min_size, avg_size, max_size) < 0)
        return NULL;
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    uint64_t *cuts = NULL, *sf = NULL;
    const size_t len = (size_t)view.len;
    PyThreadState *released = len >= GIL_RELEASE_MIN ? PyEval_SaveThread() : NULL;
    size_t count = scan_cut_superfeatures((const uint8_t *)view.buf, len, &params, &cuts, &sf);
    if (released != NULL)
        PyEval_RestoreThread(released);
    PyBuffer_Release(&view);
    if (count == (size_t)-1)
        return PyErr_NoMemory();
    PyObject *list = cuts_to_list(cuts, count);
    PyObject *raw = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(count * SUPERFEAT_SUPER * 8));
    if (raw != NULL) {
        pack_u64le((uint8_t *)PyBytes_AS_STRING(raw), sf, count * SUPERFEAT_SUPER);
    }
    PyMem_RawFree(cuts);
    PyMem_RawFree(sf);
    PyObject *out = list != NULL && raw != NULL ? PyTuple_Pack(2, list, raw) : NULL;
    Py_XDECREF(list);
    Py_XDECREF(raw);
    return out;
}

PyDoc_STRVAR(features_doc,
"features(buf, /) -> tuple[int, ...]\n\n"
"The 12 features of buf taken as one chunk (for tests against the reference).");

static PyObject *
features(PyObject *Py_UNUSED(module), PyObject *obj)
{
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    uint64_t f[SUPERFEAT_FEATURES];
    superfeat_features((const uint8_t *)view.buf, (size_t)view.len, f);
    PyBuffer_Release(&view);
    PyObject *out = PyTuple_New(SUPERFEAT_FEATURES);
    for (Py_ssize_t k = 0; out != NULL && k < SUPERFEAT_FEATURES; k++) {
        PyObject *item = PyLong_FromUnsignedLongLong(f[k]);
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, k, item);
    }
    return out;
}

/* One file of a load_chunked_many batch, filled without the GIL. */
typedef struct {
    const char *path;
    int err;          /* errno of a failed open, fstat or read; 0 if none */
    int too_big;      /* larger than the limit: not read */
    uint8_t *buf;     /* the bytes read (PyMem_RawMalloc) */
    size_t got;       /* bytes read */
    uint64_t *cuts;   /* cut points (PyMem_RawMalloc by scan_cuts) */
    size_t count;     /* chunks; (size_t)-1 when out of memory */
    uint8_t *ids;     /* count * CHUNKID_LEN bytes of ids */
} loaded_file;

/* Read, cut and hash one file into `f` (no Python objects: runs without the GIL). */
static void
load_one(loaded_file *f, const fastcdc_params *params, unsigned long long limit)
{
    struct stat st;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        f->err = errno;
        if (fd >= 0)
            close(fd);
        return;
    }
    if ((unsigned long long)st.st_size > limit) {
        f->too_big = 1;
        close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    f->buf = PyMem_RawMalloc(size + 1);
    if (f->buf == NULL) {
        f->count = (size_t)-1;
        close(fd);
        return;
    }
    while (f->got < size) {
        ssize_t n = read(fd, f->buf + f->got, size - f->got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            f->err = errno;
            break;
        }
        if (n == 0)
            break; /* the file shrank: keep what is there */
        f->got += (size_t)n;
    }
    close(fd);
    if (f->err)
        return;
    f->count = scan_cuts(f->buf, f->got, params, 1, &f->cuts);
    if (f->count == (size_t)-1)
        return;
    f->ids = PyMem_RawMalloc(f->count * CHUNKID_LEN + 1);
    if (f->ids == NULL) {
        f->count = (size_t)-1;
        return;
    }
    chunkid_many(f->buf, f->cuts, f->count, f->ids);
}

/* The Python result of one loaded file: (data, cuts, ids), None, or an OSError. */
static PyObject *
loaded_result(const loaded_file *f, PyObject *path_obj)
{
    if (f->err) {  /* the message decoded by locale, as PyErr_SetFromErrno does */
        PyObject *msg = PyUnicode_DecodeLocale(strerror(f->err), "surrogateescape");
        PyObject *e = msg == NULL ? NULL
            : PyObject_CallFunction(PyExc_OSError, "iOO", f->err, msg, path_obj);
        Py_XDECREF(msg);
        return e;
    }
    if (f->too_big)
        Py_RETURN_NONE;
    if (f->count == (size_t)-1)
        return PyErr_NoMemory();
    PyObject *data = PyBytes_FromStringAndSize((const char *)f->buf, (Py_ssize_t)f->got);
    PyObject *list = cuts_to_list(f->cuts, f->count);
    PyObject *idb = PyBytes_FromStringAndSize((const char *)f->ids,
                                              (Py_ssize_t)(f->count * CHUNKID_LEN));
    PyObject *out = data != NULL && list != NULL && idb != NULL
                        ? PyTuple_Pack(3, data, list, idb) : NULL;
    Py_XDECREF(data);
    Py_XDECREF(list);
    Py_XDECREF(idb);
    return out;
}

PyDoc_STRVAR(load_chunked_many_doc,
"load_chunked_many(paths, min_size, avg_size, max_size, limit, budget, /)\n"
"    -> list[tuple[bytes, list[int], bytes] | None | OSError]\n\n"
"Read each file whole, cut it into chunks and hash them: (data, cut points,\n"
"concatenated 16-byte ids), or None for a file over limit bytes; in order, in\n"
"one call that releases the GIL for\n"
"the whole batch (small files each take less time than a GIL hand-over).\n"
"A file that cannot be read gives its OSError (errno, message, path) in its\n"
"place instead of raising, so the caller meets it at that file's turn.\n"
"Files are read whole only while the batch holds less than `budget` bytes:\n"
"the rest give None (too big: stream them), so a batch holds at most\n"
"budget + limit bytes however the files grew since the caller sized it.");

static PyObject *
load_chunked_many(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *seq;
    unsigned long long min_size, avg_size, max_size, limit, budget;
    if (!PyArg_ParseTuple(args, "OKKKKK:load_chunked_many", &seq, &min_size, &avg_size,
                          &max_size, &limit, &budget))
        return NULL;
    fastcdc_params params;
    if (init_params(&params, min_size, avg_size, max_size) < 0)
        return NULL;
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "load_chunked_many needs a list or tuple of paths");
        return NULL;
    }
    /* a tuple copy: a path's __fspath__ cannot change the length under us */
    PyObject *paths = PySequence_Tuple(seq);
    if (paths == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(paths);
    PyObject *names = PyList_New(n); /* the paths as bytes, alive while C reads them */
    loaded_file *files = PyMem_Calloc((size_t)n + 1, sizeof(loaded_file));
    PyObject *out = NULL;
    if (names == NULL || files == NULL) {
        if (files == NULL)
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(paths, k), &b))
            goto done;
        PyList_SET_ITEM(names, k, b);
        files[k].path = PyBytes_AS_STRING(b);
    }
    Py_BEGIN_ALLOW_THREADS
    unsigned long long held = 0; /* bytes read whole so far in this batch */
    for (Py_ssize_t k = 0; k < n; k++) {
        if (held >= budget) {  /* files that grew since the walk: the rest stream */
            files[k].too_big = 1;
            continue;
        }
        load_one(&files[k], &params, limit);
        held += files[k].got;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        PyObject *item = loaded_result(&files[k], PyList_GET_ITEM(names, k));
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, item);
    }
done:
    if (files != NULL) {
        for (Py_ssize_t k = 0; k < n; k++) {
            PyMem_RawFree(files[k].buf);
            PyMem_RawFree(files[k].cuts);
            PyMem_RawFree(files[k].ids);
        }
        PyMem_Free(files);
    }
    Py_XDECREF(names);
    Py_DECREF(paths);
    return out;
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

/* -- metadata records (native/metarec.h) ------------------------------------ */

/* Convert an int argument; 0 on success, -1 (error cleared) when it is not an
 * int in range: the caller then returns None and the reference decides. */
static int
arg_u64(PyObject *obj, uint64_t *v)
{
    unsigned long long x = PyLong_AsUnsignedLongLong(obj);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *v = x;
    return 0;
}

static int
arg_i64(PyObject *obj, int64_t *v)
{
    long long x = PyLong_AsLongLong(obj);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *v = x;
    return 0;
}

/* 0 when a METH_FASTCALL function `fn` got `want` arguments, else -1 with a TypeError. */
static int
want_args(const char *fn, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fn, want, nargs);
    return -1;
}

PyDoc_STRVAR(inode_compact_doc,
"inode_compact(kind, mode, uid, gid, parent, size, version, atime_ns, mtime_ns,\n"
"              ctime_ns, nlink, rdev, target, /) -> bytes | None\n\n"
"The compact `inodes` value of these fields (target: UTF-8 bytes), or None when a\n"
"field is not an int in its range (gfs.meta.encoding's reference then raises).");

static PyObject *
inode_compact(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("inode_compact", nargs, 13) < 0)
        return NULL;
    metarec_inode in;
    uint64_t kind;
    Py_buffer target;
    if (arg_u64(args[0], &kind) || kind == 0 || kind > 0x0F || arg_u64(args[1], &in.mode)
        || arg_u64(args[2], &in.uid) || arg_u64(args[3], &in.gid)
        || arg_u64(args[4], &in.parent) || arg_u64(args[5], &in.size)
        || arg_u64(args[6], &in.version) || arg_i64(args[7], &in.atime_ns)
        || arg_i64(args[8], &in.mtime_ns) || arg_i64(args[9], &in.ctime_ns)
        || arg_u64(args[10], &in.nlink) || arg_u64(args[11], &in.rdev))
        Py_RETURN_NONE;
    in.kind = (uint8_t)kind;
    uint8_t head[METAREC_INODE_HEAD_MAX];
    size_t n;
    if (metarec_inode_compact(&in, head, &n) != METAREC_OK)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(args[12], &target, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n + target.len);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        memcpy(p, head, n);
        if (target.len)
            memcpy(p + n, target.buf, (size_t)target.len);
    }
    PyBuffer_Release(&target);
    return out;
}

PyDoc_STRVAR(inode_fields_doc,
"inode_fields(data, /) -> tuple | None\n\n"
"(kind, mode, uid, gid, parent, size, version, atime_ns, mtime_ns, ctime_ns, nlink,\n"
"rdev, target) of the compact `inodes` value `data` (target decoded from UTF-8), or\n"
"None for another form or a record the reference rejects (it then raises).");

static PyObject *
inode_fields(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *buf = view.buf;
    Py_ssize_t len = view.len;
    metarec_inode in;
    size_t end;
    PyObject *target = NULL;
    if (metarec_inode_decode((const uint8_t *)buf, (size_t)len, &in, &end) == METAREC_OK) {
        target = PyUnicode_DecodeUTF8(buf + end, len - (Py_ssize_t)end, "strict");
        if (target == NULL)
            PyErr_Clear();
    }
    PyBuffer_Release(&view);
    if (target == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(BKKKKKKLLLKKN)", in.kind, (unsigned long long)in.mode,
                         (unsigned long long)in.uid, (unsigned long long)in.gid,
                         (unsigned long long)in.parent, (unsigned long long)in.size,
                         (unsigned long long)in.version, (long long)in.atime_ns,
                         (long long)in.mtime_ns, (long long)in.ctime_ns,
                         (unsigned long long)in.nlink, (unsigned long long)in.rdev, target);
}

PyDoc_STRVAR(chunk_refcount_doc,
"chunk_refcount(cid, data, delta, /) -> bytes | None\n\n"
"The compact or folded-member `chunks` value `data` of chunk `cid` with its refcount\n"
"changed by `delta`, or None for another form, a damaged record or a refcount out of\n"
"range (gfs.meta.encoding's reference then handles it).");

static PyObject *
chunk_refcount(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("chunk_refcount", nargs, 3) < 0)
        return NULL;
    int64_t delta;
    if (arg_i64(args[2], &delta))
        Py_RETURN_NONE;
    Py_buffer cid, data;
    if (PyObject_GetBuffer(args[0], &cid, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&cid);
        return NULL;
    }
    PyObject *out = NULL;
    uint8_t small[256];
    size_t cap = (size_t)data.len + 16, n;
    uint8_t *buf = cap <= sizeof small ? small : PyMem_Malloc(cap);
    if (buf == NULL) {
        PyErr_NoMemory();
    } else if (cid.len != CHUNKID_LEN
               || metarec_chunk_refcount(cid.buf, data.buf, (size_t)data.len, delta, buf, &n)
                      != METAREC_OK) {
        out = Py_NewRef(Py_None);
    } else {
        out = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)n);
    }
    if (buf != small)
        PyMem_Free(buf);
    PyBuffer_Release(&data);
    PyBuffer_Release(&cid);
    return out;
}

/* The (id, length) pairs of a sequence of ChunkRef-like objects: 0 and filled
 * arrays (free with PyMem_Free), or -1 when an entry is not a 16-byte bytes id
 * and an int length under 2^32 (error cleared: the reference decides). */
static int
manifest_pairs(PyObject *chunks, Py_ssize_t *n_out, uint8_t **ids_out, uint32_t **lens_out)
{
    static PyObject *s_id, *s_length;
    if (s_id == NULL && (s_id = PyUnicode_InternFromString("id")) == NULL)
        return -2;
    if (s_length == NULL && (s_length = PyUnicode_InternFromString("length")) == NULL)
        return -2;
    PyObject *seq = PySequence_Fast(chunks, "chunks must be a sequence");
    if (seq == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if ((unsigned long long)n >= (1ull << 32)) {
        Py_DECREF(seq);
        return -1;
    }
    uint8_t *ids = PyMem_Malloc((size_t)n * CHUNKID_LEN + 1);
    uint32_t *lens = PyMem_Malloc((size_t)n * sizeof *lens + 1);
    int status = ids == NULL || lens == NULL ? -2 : 0;
    if (status == -2)
        PyErr_NoMemory();
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; status == 0 && k < n; k++) {
        PyObject *id = PyObject_GetAttr(items[k], s_id);
        PyObject *length = id == NULL ? NULL : PyObject_GetAttr(items[k], s_length);
        uint64_t v;
        if (length == NULL || !PyBytes_CheckExact(id) || PyBytes_GET_SIZE(id) != CHUNKID_LEN
            || arg_u64(length, &v) || v >> 32) {
            PyErr_Clear();
            status = -1;
        } else {
            memcpy(ids + k * CHUNKID_LEN, PyBytes_AS_STRING(id), CHUNKID_LEN);
            lens[k] = (uint32_t)v;
        }
        Py_XDECREF(id);
        Py_XDECREF(length);
    }
    Py_DECREF(seq);
    if (status != 0) {
        PyMem_Free(ids);
        PyMem_Free(lens);
        return status;
    }
    *n_out = n;
    *ids_out = ids;
    *lens_out = lens;
    return 0;
}

static PyObject *
manifest_value(PyObject *const *args, Py_ssize_t nargs, int compact)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "manifest encoders take 2 arguments (%zd given)", nargs);
        return NULL;
    }
    uint64_t version;
    Py_ssize_t n;
    uint8_t *ids;
    uint32_t *lens;
    if (arg_u64(args[0], &version))
        Py_RETURN_NONE;
    int status = manifest_pairs(args[1], &n, &ids, &lens);
    if (status == -1)
        Py_RETURN_NONE;
    if (status < 0)
        return NULL;
    size_t cap = compact ? METAREC_MANIFEST_COMPACT_MAX(n) : 12 + 20 * (size_t)n;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (out != NULL) {
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
        size_t len = compact ? metarec_manifest_compact(version, (size_t)n, ids, lens, p)
                             : metarec_manifest_fixed(version, (size_t)n, ids, lens, p);
        if (len != cap)
            _PyBytes_Resize(&out, (Py_ssize_t)len);
    }
    PyMem_Free(ids);
    PyMem_Free(lens);
    return out;
}

PyDoc_STRVAR(manifest_fixed_doc,
"manifest_fixed(version, chunks, /) -> bytes | None\n\n"
"The fixed `manifests` value of `version` and `chunks` (objects with a 16-byte bytes\n"
"`id` and an int `length`), or None when a field is out of range (gfs.meta.encoding's\n"
"reference then raises).");

static PyObject *
manifest_fixed(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return manifest_value(args, nargs, 0);
}

PyDoc_STRVAR(manifest_compact_doc,
"manifest_compact(version, chunks, /) -> bytes | None\n\n"
"The compact `manifests` value of `version` and `chunks`, or None as manifest_fixed.");

static PyObject *
manifest_compact(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return manifest_value(args, nargs, 1);
}

PyDoc_STRVAR(manifest_entries_doc,
"manifest_entries(data, /) -> tuple | None\n\n"
"(version, ((id, length), ...)) of the compact `manifests` value `data`, or None for\n"
"another form or a record the reference rejects (gfs.meta.encoding then decides).");

static PyObject *
manifest_entries(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *data = view.buf;
    size_t len = (size_t)view.len, cap = len / 17 + 1, n;
    uint64_t version;
    size_t *id_at = PyMem_Malloc(cap * sizeof *id_at);
    uint32_t *lens = PyMem_Malloc(cap * sizeof *lens);
    PyObject *out = NULL, *entries = NULL;
    if (id_at == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (metarec_manifest_compact_decode(data, len, &version, &n, id_at, lens) != METAREC_OK) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    entries = PyTuple_New((Py_ssize_t)n);
    for (size_t k = 0; entries != NULL && k < n; k++) {
        PyObject *pair = Py_BuildValue("(y#k)", (const char *)data + id_at[k],
                                       (Py_ssize_t)CHUNKID_LEN, (unsigned long)lens[k]);
        if (pair == NULL)
            Py_CLEAR(entries);
        else
            PyTuple_SET_ITEM(entries, (Py_ssize_t)k, pair);
    }
    if (entries != NULL)
        out = Py_BuildValue("(KN)", (unsigned long long)version, entries);
done:
    PyMem_Free(id_at);
    PyMem_Free(lens);
    PyBuffer_Release(&view);
    return out;
}

/* One new regular file's rows (see new_file_rows_doc) into a 5-tuple; NULL with
 * no error set when the reference must decide, NULL with an error on failure. */
static PyObject *
new_file_row(PyObject *f, uint64_t parent, uint64_t ino, int64_t now, uint8_t kind,
             uint64_t share_min, uint64_t max_key)
{
    uint64_t mode, uid, gid;
    int64_t mtime;
    if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 6
        || !PyUnicode_CheckExact(PyTuple_GET_ITEM(f, 0))
        || !PyLong_Check(PyTuple_GET_ITEM(f, 2))
        || arg_u64(PyTuple_GET_ITEM(f, 3), &uid)
        || arg_u64(PyTuple_GET_ITEM(f, 4), &gid) || arg_i64(PyTuple_GET_ITEM(f, 5), &mtime))
        return NULL;
    /* the permission bits of any int, as the reference's `mode & 0o7777` */
    mode = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(f, 2));
    Py_ssize_t name_len;
    const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(f, 0), &name_len);
    if (name == NULL) {  /* not UTF-8 (a surrogate): the reference raises */
        PyErr_Clear();
        return NULL;
    }
    if (name_len == 0 || (uint64_t)name_len + 8 > max_key)
        return NULL;
    Py_ssize_t n;
    uint8_t *ids;
    uint32_t *lens;
    int status = manifest_pairs(PyTuple_GET_ITEM(f, 1), &n, &ids, &lens);
    if (status == -1)
        return NULL;
    if (status < 0)
        return NULL;  /* error set */
    metarec_inode in = {.kind = kind, .mode = mode & 07777, .uid = uid, .gid = gid,
                        .parent = parent, .size = 0, .version = 1, .nlink = 1, .rdev = 0,
                        .atime_ns = now, .mtime_ns = mtime, .ctime_ns = now};
    for (Py_ssize_t k = 0; k < n; k++)
        in.size += lens[k];
    uint8_t head[METAREC_INODE_HEAD_MAX], key[8], dval[8];
    size_t head_len, dlen = 1;
    PyObject *row = NULL;
    if (metarec_inode_compact(&in, head, &head_len) != METAREC_OK)
        goto done;
    for (int b = 0; b < 8; b++)
        key[b] = (uint8_t)(ino >> (56 - 8 * b));
    while (dlen < 8 && ino >> (8 * dlen))
        dlen++;
    for (size_t b = 0; b < dlen; b++)
        dval[b] = (uint8_t)(ino >> (8 * (dlen - 1 - b)));
    PyObject *dkey = PyBytes_FromStringAndSize(NULL, 8 + name_len);
    if (dkey != NULL) {
        char *p = PyBytes_AS_STRING(dkey);
        for (int b = 0; b < 8; b++)
            p[b] = (char)(parent >> (56 - 8 * b));
        memcpy(p + 8, name, (size_t)name_len);
    }
    PyObject *mval;
    if ((uint64_t)n < share_min) {
        mval = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)METAREC_MANIFEST_COMPACT_MAX(n));
        if (mval != NULL) {
            size_t len = metarec_manifest_compact(1, (size_t)n, ids, lens,
                                                  (uint8_t *)PyBytes_AS_STRING(mval));
            if (len != METAREC_MANIFEST_COMPACT_MAX(n))
                _PyBytes_Resize(&mval, (Py_ssize_t)len);
        }
    } else {
        mval = Py_NewRef(Py_None);
    }
    PyObject *dv = PyBytes_FromStringAndSize((const char *)dval, (Py_ssize_t)dlen);
    PyObject *ik = PyBytes_FromStringAndSize((const char *)key, 8);
    PyObject *iv = PyBytes_FromStringAndSize((const char *)head, (Py_ssize_t)head_len);
    if (dkey != NULL && mval != NULL && dv != NULL && ik != NULL && iv != NULL) {
        row = PyTuple_Pack(5, dkey, dv, ik, iv, mval);
    }
    Py_XDECREF(dkey);
    Py_XDECREF(mval);
    Py_XDECREF(dv);
    Py_XDECREF(ik);
    Py_XDECREF(iv);
done:
    PyMem_Free(ids);
    PyMem_Free(lens);
    return row;
}

PyDoc_STRVAR(new_file_rows_doc,
"new_file_rows(parent, first_ino, now, kind, share_min, max_key, files, /)\n"
"    -> list | None\n\n"
"The rows of new regular files linked in directory `parent` (a put's run of names\n"
"not there yet), numbered first_ino, first_ino + 1, ... and made at `now`: for each\n"
"of `files` ((name, refs, mode, uid, gid, mtime_ns); kind is Kind.FILE's value), a\n"
"tuple (dirents key, dirents value, inode key, inodes value, compact manifests value,\n"
"or None when it has share_min refs or more: a shared body). None when a field is out\n"
"of range or a name is empty, not UTF-8 or makes a key over max_key bytes:\n"
"gfs.meta.encoding.new_file_rows_reference then raises the precise error.");

static PyObject *
new_file_rows(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("new_file_rows", nargs, 7) < 0)
        return NULL;
    uint64_t parent, first, kind, share_min, max_key;
    int64_t now;
    if (!PyList_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "new_file_rows(): files must be a list");
        return NULL;
    }
    PyObject *files = args[6];
    Py_ssize_t n = PyList_GET_SIZE(files);
    if (arg_u64(args[0], &parent) || arg_u64(args[1], &first) || arg_i64(args[2], &now)
        || arg_u64(args[3], &kind) || kind == 0 || kind > 0x0F
        || arg_u64(args[4], &share_min) || arg_u64(args[5], &max_key)
        || (n > 0 && first + (uint64_t)(n - 1) < first))
        Py_RETURN_NONE;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *row = new_file_row(PyList_GET_ITEM(files, k), parent, first + (uint64_t)k,
                                     now, (uint8_t)kind, share_min, max_key);
        if (row == NULL) {
            Py_DECREF(out);
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, k, row);
    }
    return out;
}

static PyMethodDef native_methods[] = {
    {"cut_points", (PyCFunction)(void (*)(void))cut_points, METH_FASTCALL, cut_points_doc},
    {"check_params", check_params, METH_VARARGS, check_params_doc},
    {"masks", masks, METH_VARARGS, masks_doc},
    {"gear_table", gear_table, METH_NOARGS, gear_table_doc},
    {"chunk_ids", chunk_ids, METH_VARARGS, chunk_ids_doc},
    {"load_chunked_many", load_chunked_many, METH_VARARGS, load_chunked_many_doc},
    {"superfeatures", superfeatures, METH_VARARGS, superfeatures_doc},
    {"features", features, METH_O, features_doc},
    {"index_keys_many", index_keys_many, METH_O, index_keys_many_doc},
    {"cut_superfeatures", cut_superfeatures, METH_VARARGS, cut_superfeatures_doc},
    {"write_files", native_write_files, METH_O, WRITE_FILES_DOC},
    {"make_dirs", native_make_dirs, METH_O, MAKE_DIRS_DOC},
    {"scan_dir", native_scan_dir, METH_O, SCAN_DIR_DOC},
    {"scan_entries", native_scan_entries, METH_VARARGS, SCAN_ENTRIES_DOC},
    {"set_dir_attrs", native_set_dir_attrs, METH_O, SET_DIR_ATTRS_DOC},
    {"inode_compact", (PyCFunction)(void (*)(void))inode_compact, METH_FASTCALL,
     inode_compact_doc},
    {"inode_fields", inode_fields, METH_O, inode_fields_doc},
    {"chunk_refcount", (PyCFunction)(void (*)(void))chunk_refcount, METH_FASTCALL,
     chunk_refcount_doc},
    {"manifest_fixed", (PyCFunction)(void (*)(void))manifest_fixed, METH_FASTCALL,
     manifest_fixed_doc},
    {"manifest_compact", (PyCFunction)(void (*)(void))manifest_compact, METH_FASTCALL,
     manifest_compact_doc},
    {"new_file_rows", (PyCFunction)(void (*)(void))new_file_rows, METH_FASTCALL,
     new_file_rows_doc},
    {"manifest_entries", manifest_entries, METH_O, manifest_entries_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, localscan_add_types},
    {0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gfs._native",
    .m_doc = "Native core of Hutong: the FastCDC chunker (see gfs.chunking).",
    .m_size = 0,
    .m_methods = native_methods,
    .m_slots = native_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
