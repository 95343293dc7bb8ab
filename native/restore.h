#ifndef HUTONG_RESTORE_H
#define HUTONG_RESTORE_H

#include <Python.h>

/* write_files(items, /) -> (done, errno): see native/restore.c. */
PyObject *native_write_files(PyObject *module, PyObject *arg);
/* make_dirs(paths, /) -> (done, errno); set_dir_attrs(items, /) -> (done, errno). */
PyObject *native_make_dirs(PyObject *module, PyObject *arg);
PyObject *native_set_dir_attrs(PyObject *module, PyObject *arg);

#define WRITE_FILES_DOC \
    "write_files(items, /) -> tuple[int, int]\n\n" \
    "Write restored files without the GIL. Each item is (tmp, path, blocks, mode,\n" \
    "atime_ns, mtime_ns): tmp is created exclusively (0600), the blocks written,\n" \
    "mode and times set, and tmp renamed to path. Stops at the first failure,\n" \
    "removing that file's tmp. Returns (files done, errno of the failure or 0)."

#define MAKE_DIRS_DOC \
    "make_dirs(paths, /) -> tuple[int, int]\n\n" \
    "mkdir each path (0777 less the umask) without the GIL, in order; one that is\n" \
    "already a directory is kept. Stops at the first failure. Returns (paths done,\n" \
    "errno of the failure or 0)."

#define SET_DIR_ATTRS_DOC \
    "set_dir_attrs(items, /) -> tuple[int, int]\n\n" \
    "For each (path, mode, atime_ns, mtime_ns): chmod and utimensat (following\n" \
    "symlinks, as os.chmod and os.utime do) without the GIL, in order. Stops at the\n" \
    "first failure. Returns (items done, errno of the failure or 0)."

#endif
