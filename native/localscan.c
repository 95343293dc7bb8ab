/* scan_dir: a put's walk lists each local directory in one call (gfs.put_walk.list_local).
 *
 * What os.scandir, DirEntry.stat(follow_symlinks=False) and os.access(R_OK) give the
 * walk, without a Python object per system call: the names are read (getdents returns
 * many at once), then each entry is lstat'ed (fstatat relative to the directory) and,
 * if a regular file, checked with faccessat (real ids, as access), all without the GIL:
 * the walk runs on its own thread (gfs.put_walk) beside the put's Python, which a
 * listing held up when its system calls kept the GIL. */
#include "localscan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    size_t name;    /* offset of the NUL-terminated name in the names buffer */
    size_t len;     /* its length */
    struct stat st;
    int err;        /* errno of a failed fstatat, else 0 */
    int readable;   /* 1, or 0 for a regular file faccessat(R_OK) refuses */
} scan_entry;

typedef struct {
    scan_entry *entries;
    size_t count, cap;
    char *names;
    size_t used, room;
} scan_list;

static void
scan_free(scan_list *l)
{
    free(l->entries);
    free(l->names);
}

/* Append one name; 0, or -1 when out of memory. */
static int
scan_add(scan_list *l, const char *name)
{
    size_t len = strlen(name);
    if (l->count == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        scan_entry *e = realloc(l->entries, cap * sizeof *e);
        if (e == NULL)
            return -1;
        l->entries = e;
        l->cap = cap;
    }
    if (l->used + len + 1 > l->room) {
        size_t room = l->room ? 2 * l->room : 4096;
        while (room < l->used + len + 1)
            room *= 2;
        char *n = realloc(l->names, room);
        if (n == NULL)
            return -1;
        l->names = n;
        l->room = room;
    }
    memcpy(l->names + l->used, name, len + 1);
    scan_entry *e = &l->entries[l->count++];
    memset(e, 0, sizeof *e);
    e->name = l->used;
    e->len = len;
    l->used += len + 1;
    return 0;
}

static void
scan_stat(int dfd, scan_list *l)
{
    for (size_t k = 0; k < l->count; k++) {
        scan_entry *e = &l->entries[k];
        const char *name = l->names + e->name;
        int rc;
        while ((rc = fstatat(dfd, name, &e->st, AT_SYMLINK_NOFOLLOW)) < 0 && errno == EINTR)
            ;
        if (rc < 0) {
            e->err = errno;
            continue;
        }
        e->readable = 1;
        if (S_ISREG(e->st.st_mode)) {
            while ((rc = faccessat(dfd, name, R_OK, 0)) < 0 && errno == EINTR)
                ;
            e->readable = rc == 0;
        }
    }
}

static long long
ns_of(struct timespec t)
{
    return (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec;
}

static PyObject *
scan_row(const scan_list *l, const scan_entry *e)
{
    PyObject *name = PyUnicode_DecodeFSDefaultAndSize(l->names + e->name, (Py_ssize_t)e->len);
    if (name == NULL)
        return NULL;
    if (e->err)
        return Py_BuildValue("(Niiiiiii)", name, -1, 0, 0, 0, 0, 0, e->err);
    return Py_BuildValue("(NIkkLLLi)", name, (unsigned int)e->st.st_mode,
                         (unsigned long)e->st.st_uid, (unsigned long)e->st.st_gid,
                         (long long)e->st.st_size, ns_of(e->st.st_atim),
                         ns_of(e->st.st_mtim), e->readable);
}

/* List, lstat and access-check directory `dir` into l, with no Python call (the GIL
 * is released around it). Returns 0, an errno, or -1 when out of memory. */
static int
scan_all(const char *dir_path, scan_list *l)
{
    int fd;
    do {
        fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int err = errno;
        close(fd);
        return err;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (de == NULL) {
            rc = errno;
            break;
        }
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        if (scan_add(l, n) < 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0)
        scan_stat(dirfd(dir), l);
    closedir(dir);
    return rc;
}

PyObject *
native_scan_dir(PyObject *Py_UNUSED(module), PyObject *arg)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path))
        return NULL;
    scan_list l = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = scan_all(PyBytes_AS_STRING(path), &l);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    PyObject *out = NULL;
    if (rc < 0) {
        PyErr_NoMemory();
    } else if (rc > 0) {
        errno = rc;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    } else {
        out = PyList_New((Py_ssize_t)l.count);
        for (size_t k = 0; out != NULL && k < l.count; k++) {
            PyObject *row = scan_row(&l, &l.entries[k]);
            if (row == NULL)
                Py_CLEAR(out);
            else
                PyList_SET_ITEM(out, (Py_ssize_t)k, row);
        }
    }
    scan_free(&l);
    return out;
}

/* One directory of a scan_tree: its path (malloc'd), its listing or errno. */
typedef struct {
    char *path;
    scan_list l;
    int rc;
} tree_dir;

static void
tree_free(tree_dir *dirs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(dirs[k].path);
        scan_free(&dirs[k].l);
    }
    free(dirs);
}

/* List `root` and, breadth first, the directories below it, up to `max_dirs` in all,
 * with no Python call. Returns the count, or (size_t)-1 when out of memory. */
static size_t
tree_scan(const char *root, size_t max_dirs, tree_dir **out)
{
    tree_dir *dirs = calloc(max_dirs, sizeof *dirs);
    if (dirs == NULL || (dirs[0].path = strdup(root)) == NULL) {
        free(dirs);
        return (size_t)-1;
    }
    size_t n = 1;
    for (size_t k = 0; k < n; k++) {
        tree_dir *d = &dirs[k];
        d->rc = scan_all(d->path, &d->l);
        if (d->rc < 0)
            goto oom;
        if (d->rc > 0)
            continue;
        size_t plen = strlen(d->path);
        int sep = plen > 0 && d->path[plen - 1] == '/';
        for (size_t j = 0; j < d->l.count && n < max_dirs; j++) {
            const scan_entry *e = &d->l.entries[j];
            if (e->err || !S_ISDIR(e->st.st_mode))
                continue;
            char *p = malloc(plen + 1 + e->len + 1);
            if (p == NULL)
                goto oom;
            memcpy(p, d->path, plen);
            size_t at = plen;
            if (!sep)
                p[at++] = '/';
            memcpy(p + at, d->l.names + e->name, e->len + 1);
            dirs[n++].path = p;
        }
    }
    *out = dirs;
    return n;
oom:
    tree_free(dirs, max_dirs);
    return (size_t)-1;
}

PyObject *
native_scan_tree(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *arg;
    Py_ssize_t max_dirs;
    if (!PyArg_ParseTuple(args, "On:scan_tree", &arg, &max_dirs))
        return NULL;
    if (max_dirs < 1) {
        PyErr_SetString(PyExc_ValueError, "scan_tree needs max_dirs >= 1");
        return NULL;
    }
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path))
        return NULL;
    tree_dir *dirs = NULL;
    size_t n;
    Py_BEGIN_ALLOW_THREADS
    n = tree_scan(PyBytes_AS_STRING(path), (size_t)max_dirs, &dirs);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (n == (size_t)-1)
        return PyErr_NoMemory();
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t k = 0; out != NULL && k < n; k++) {
        tree_dir *d = &dirs[k];
        PyObject *rows;
        if (d->rc) {
            rows = PyLong_FromLong(d->rc);
        } else {
            rows = PyList_New((Py_ssize_t)d->l.count);
            for (size_t j = 0; rows != NULL && j < d->l.count; j++) {
                PyObject *row = scan_row(&d->l, &d->l.entries[j]);
                if (row == NULL)
                    Py_CLEAR(rows);
                else
                    PyList_SET_ITEM(rows, (Py_ssize_t)j, row);
            }
        }
        PyObject *item = rows == NULL ? NULL
            : Py_BuildValue("(NN)", PyUnicode_DecodeFSDefault(d->path), rows);
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, (Py_ssize_t)k, item);
    }
    tree_free(dirs, (size_t)max_dirs);
    return out;
}
