/* One local directory listed with lstat and access for a put's walk (gfs.put_walk). */
#ifndef HUTONG_LOCALSCAN_H
#define HUTONG_LOCALSCAN_H

#include <Python.h>

PyObject *native_scan_dir(PyObject *module, PyObject *arg);

#define SCAN_DIR_DOC \
    "scan_dir(path, /) -> list[tuple[str, int, int, int, int, int, int, int]]\n\n" \
    "The entries of local directory path (not . and ..), in no order: (name,\n" \
    "st_mode, st_uid, st_gid, st_size, st_atime_ns, st_mtime_ns, flag) from lstat,\n" \
    "flag 1, or 0 for a regular file access(R_OK) refuses. An entry lstat fails on\n" \
    "has st_mode -1 and its errno as flag. Names are decoded as os.fsdecode does.\n" \
    "OSError (with path as its filename) when the directory cannot be read. Every\n" \
    "system call runs without the GIL."

PyObject *native_scan_tree(PyObject *module, PyObject *args);

#define SCAN_TREE_DOC \
    "scan_tree(path, max_dirs, /) -> list[tuple[str, list[tuple[...]] | int]]\n\n" \
    "scan_dir of directory path and, breadth first, of the directories below it, up\n" \
    "to max_dirs directories in all: (directory path, its scan_dir rows or the errno\n" \
    "that listing it failed with), path first. The paths below path are joined with\n" \
    "'/' as a walk joins them. All system calls run in one release of the GIL."

#endif
