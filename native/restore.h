#ifndef HUTONG_RESTORE_H
#define HUTONG_RESTORE_H

#include <Python.h>

/* write_files(items, /) -> (done, errno): see native/restore.c. */
PyObject *native_write_files(PyObject *module, PyObject *arg);

#define WRITE_FILES_DOC \
    "write_files(items, /) -> tuple[int, int]\n\n" \
    "Write restored files without the GIL. Each item is (tmp, path, blocks, mode,\n" \
    "atime_ns, mtime_ns): tmp is created exclusively (0600), the blocks written,\n" \
    "mode and times set, and tmp renamed to path. Stops at the first failure,\n" \
    "removing that file's tmp. Returns (files done, errno of the failure or 0)."

#endif
