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

PyObject *native_scan_entries(PyObject *module, PyObject *args);

#define SCAN_ENTRIES_DOC \
    "scan_entries(path, rel, max_dirs, max_entries=<no limit>, /)\n" \
    "    -> list[tuple[str, int | list[tuple[...]] | None, list[LocalEntry] | None]]\n\n" \
    "scan_dir of directory path and, breadth first, of the directories below it, up\n" \
    "to max_dirs directories in all (none queued once the listings hold max_entries\n" \
    "entries), path first (the paths below it joined with '/'\n" \
    "as a walk joins them), in one release of the GIL; each listing's entries are\n" \
    "made here too: (directory\n" \
    "path, None, its LocalEntry objects in name order) when every entry was lstat'ed,\n" \
    "is readable and has a name a put takes as it is (valid UTF-8, at most 255\n" \
    "bytes); else (directory path, its scan_dir rows, in no order, or the errno\n" \
    "listing it failed with, None). rel is path's\n" \
    "own rel (names below the walk's top); those below it are rel plus their names."

/* Add the LocalStat and LocalEntry types to the module; 0, or -1 with an exception. */
int localscan_add_types(PyObject *module);

#endif
