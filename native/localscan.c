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
    size_t child;   /* tree_scan: the index of this directory's own listing, or NO_CHILD */
} scan_entry;

#define NO_CHILD ((size_t)-1)

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
    e->child = NO_CHILD;
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

/* One directory of a tree_scan: its path (malloc'd), its listing or errno. */
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
 * and no more directories once the listings hold `max_entries` entries, with no
 * Python call. Returns the count, or (size_t)-1 when out of memory. */
static size_t
tree_scan(const char *root, size_t max_dirs, size_t max_entries, tree_dir **out)
{
    tree_dir *dirs = calloc(max_dirs, sizeof *dirs);
    if (dirs == NULL || (dirs[0].path = strdup(root)) == NULL) {
        free(dirs);
        return (size_t)-1;
    }
    size_t n = 1, entries = 0;
    for (size_t k = 0; k < n; k++) {
        tree_dir *d = &dirs[k];
        d->rc = scan_all(d->path, &d->l);
        if (d->rc < 0)
            goto oom;
        if (d->rc > 0)
            continue;
        entries += d->l.count;
        if (entries >= max_entries)
            continue; /* listed, but nothing more below it is queued */
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
            d->l.entries[j].child = n;
            dirs[n++].path = p;
        }
    }
    *out = dirs;
    return n;
oom:
    tree_free(dirs, max_dirs);
    return (size_t)-1;
}

/* ---- scan_entries: the walk's entries made here, not in Python ------------------- */

static PyStructSequence_Field local_stat_fields[] = {
    {"st_mode", "lstat's st_mode"},
    {"st_uid", "owner"},
    {"st_gid", "group"},
    {"st_size", "size in bytes"},
    {"st_atime_ns", "access time, ns since the epoch"},
    {"st_mtime_ns", "modification time, ns since the epoch"},
    {NULL, NULL},
};

static PyStructSequence_Desc local_stat_desc = {
    "gfs._native.LocalStat",
    "The fields of a local entry's lstat that a put uses: about 100 bytes, where an\n"
    "os.stat_result (with its float times) takes about 560.",
    local_stat_fields, 6,
};

static PyStructSequence_Field local_entry_fields[] = {
    {"rel", "its path below the walk's top, as names"},
    {"path", "its local path"},
    {"st", "its LocalStat"},
    {NULL, NULL},
};

static PyStructSequence_Desc local_entry_desc = {
    "gfs._native.LocalEntry",
    "One entry of a put's local tree: its path below the top, its local path, its stat.",
    local_entry_fields, 3,
};

static PyTypeObject LocalStatType, LocalEntryType;
static int types_ready;

int
localscan_add_types(PyObject *module)
{
    if (!types_ready) {
        if (PyStructSequence_InitType2(&LocalStatType, &local_stat_desc) < 0
            || PyStructSequence_InitType2(&LocalEntryType, &local_entry_desc) < 0)
            return -1;
        types_ready = 1;
    }
    Py_INCREF(&LocalStatType);
    if (PyModule_AddObject(module, "LocalStat", (PyObject *)&LocalStatType) < 0) {
        Py_DECREF(&LocalStatType);
        return -1;
    }
    Py_INCREF(&LocalEntryType);
    if (PyModule_AddObject(module, "LocalEntry", (PyObject *)&LocalEntryType) < 0) {
        Py_DECREF(&LocalEntryType);
        return -1;
    }
    return 0;
}

/* Whether `s` (n bytes) is a name a put takes as it is: valid UTF-8 (no surrogates,
 * overlong forms or code points past U+10FFFF), at most 255 bytes, not "." or "..",
 * no NUL or '/' (gfs.paths.check_name); any other name goes through the Python walk,
 * which raises what check_name raises. */
static int
plain_name(const unsigned char *s, size_t n)
{
    if (n == 0 || n > 255 || (s[0] == '.' && (n == 1 || (n == 2 && s[1] == '.'))))
        return 0;
    for (size_t k = 0; k < n;) {
        unsigned char c = s[k];
        if (c < 0x80) {
            if (c == 0 || c == '/')
                return 0;
            k++;
            continue;
        }
        size_t len;
        unsigned int cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (k + len > n)
            return 0;
        for (size_t j = 1; j < len; j++) {
            if ((s[k + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[k + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        k += len;
    }
    return 1;
}

/* The names buffer qsort compares through (one listing at a time, under the GIL). */
static const char *sort_names;

static int
by_name(const void *a, const void *b)
{
    const scan_entry *x = *(const scan_entry *const *)a, *y = *(const scan_entry *const *)b;
    return strcmp(sort_names + x->name, sort_names + y->name);
}

/* rel + (name,) as a new tuple. */
static PyObject *
rel_with(PyObject *rel, PyObject *name)
{
    Py_ssize_t n = PyTuple_GET_SIZE(rel);
    PyObject *out = PyTuple_New(n + 1);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyTuple_GET_ITEM(rel, k);
        Py_INCREF(item);
        PyTuple_SET_ITEM(out, k, item);
    }
    Py_INCREF(name);
    PyTuple_SET_ITEM(out, n, name);
    return out;
}

/* The LocalEntry of entry e of directory d (rel: the directory's), new reference. */
static PyObject *
make_entry(const tree_dir *d, const scan_entry *e, PyObject *rel, PyObject *name)
{
    const char *dpath = d->path;
    size_t plen = strlen(dpath);
    int sep = plen > 0 && dpath[plen - 1] == '/';
    char *full = malloc(plen + 1 + e->len + 1);
    if (full == NULL)
        return PyErr_NoMemory();
    memcpy(full, dpath, plen);
    size_t at = plen;
    if (!sep)
        full[at++] = '/';
    memcpy(full + at, d->l.names + e->name, e->len + 1);
    PyObject *path = PyUnicode_DecodeFSDefaultAndSize(full, (Py_ssize_t)(at + e->len));
    free(full);
    PyObject *st = PyStructSequence_New(&LocalStatType);
    PyObject *erel = rel_with(rel, name);
    PyObject *entry = PyStructSequence_New(&LocalEntryType);
    if (path == NULL || st == NULL || erel == NULL || entry == NULL)
        goto fail;
    PyObject *f[6] = {
        PyLong_FromUnsignedLong((unsigned long)e->st.st_mode),
        PyLong_FromUnsignedLong((unsigned long)e->st.st_uid),
        PyLong_FromUnsignedLong((unsigned long)e->st.st_gid),
        PyLong_FromLongLong((long long)e->st.st_size),
        PyLong_FromLongLong(ns_of(e->st.st_atim)),
        PyLong_FromLongLong(ns_of(e->st.st_mtim)),
    };
    int bad = 0;
    for (int k = 0; k < 6; k++) {
        if (f[k] == NULL)
            bad = 1;
        PyStructSequence_SET_ITEM(st, k, f[k]);
    }
    if (bad)
        goto fail;
    PyStructSequence_SET_ITEM(entry, 0, erel);
    PyStructSequence_SET_ITEM(entry, 1, path);
    PyStructSequence_SET_ITEM(entry, 2, st);
    return entry;
fail:
    if (entry == NULL) {
        Py_XDECREF(erel);
        Py_XDECREF(path);
        Py_XDECREF(st);
    } else {  /* owns what was set in it */
        if (erel != NULL)
            PyStructSequence_SET_ITEM(entry, 0, erel);
        if (path != NULL)
            PyStructSequence_SET_ITEM(entry, 1, path);
        if (st != NULL)
            PyStructSequence_SET_ITEM(entry, 2, st);
        Py_DECREF(entry);
    }
    return NULL;
}

/* (path, errno or rows, entries or None) of listed directory d, whose rel is rels[k];
 * sets rels[] of the directories below it that the scan listed. */
static PyObject *
dir_result(tree_dir *d, PyObject **rels, size_t k)
{
    PyObject *path = PyUnicode_DecodeFSDefault(d->path);
    if (path == NULL)
        return NULL;
    if (d->rc)
        return Py_BuildValue("(NiO)", path, d->rc, Py_None);
    const scan_list *l = &d->l;
    int plain = 1;
    for (size_t j = 0; plain && j < l->count; j++) {
        const scan_entry *e = &l->entries[j];
        plain = !e->err && e->readable
            && plain_name((const unsigned char *)l->names + e->name, e->len);
    }
    PyObject *listing = PyList_New((Py_ssize_t)l->count);
    const scan_entry **order = malloc((l->count + 1) * sizeof *order);
    if (listing == NULL || order == NULL) {
        free(order);
        Py_XDECREF(listing);
        Py_DECREF(path);
        return listing == NULL ? NULL : PyErr_NoMemory();
    }
    for (size_t j = 0; j < l->count; j++)
        order[j] = &l->entries[j];
    if (plain) {  /* entries in name order (bytes order: code points, for UTF-8) */
        sort_names = l->names;
        qsort(order, l->count, sizeof *order, by_name);
    }
    for (size_t j = 0; j < l->count; j++) {
        const scan_entry *e = order[j];
        PyObject *name = PyUnicode_DecodeFSDefaultAndSize(l->names + e->name,
                                                          (Py_ssize_t)e->len);
        PyObject *item = NULL;
        if (name != NULL)
            item = plain ? make_entry(d, e, rels[k], name) : scan_row(l, e);
        if (item != NULL && e->child != NO_CHILD) {
            PyObject *crel = plain ? PyStructSequence_GET_ITEM(item, 0) : rel_with(rels[k], name);
            if (plain)
                Py_XINCREF(crel);
            rels[e->child] = crel;
            if (crel == NULL)
                Py_CLEAR(item);
        }
        Py_XDECREF(name);
        if (item == NULL) {
            free(order);
            Py_DECREF(listing);
            Py_DECREF(path);
            return NULL;
        }
        PyList_SET_ITEM(listing, (Py_ssize_t)j, item);
    }
    free(order);
    return plain ? Py_BuildValue("(NON)", path, Py_None, listing)
                 : Py_BuildValue("(NNO)", path, listing, Py_None);
}

PyObject *
native_scan_entries(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *arg, *rel;
    Py_ssize_t max_dirs, max_entries = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "OO!n|n:scan_entries", &arg, &PyTuple_Type, &rel, &max_dirs,
                          &max_entries))
        return NULL;
    if (max_dirs < 1 || max_entries < 1) {
        PyErr_SetString(PyExc_ValueError, "scan_entries needs max_dirs and max_entries >= 1");
        return NULL;
    }
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path))
        return NULL;
    tree_dir *dirs = NULL;
    size_t n;
    Py_BEGIN_ALLOW_THREADS
    n = tree_scan(PyBytes_AS_STRING(path), (size_t)max_dirs, (size_t)max_entries, &dirs);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (n == (size_t)-1)
        return PyErr_NoMemory();
    PyObject **rels = calloc(n, sizeof *rels);
    PyObject *out = rels == NULL ? PyErr_NoMemory() : PyList_New((Py_ssize_t)n);
    if (out != NULL) {
        Py_INCREF(rel);
        rels[0] = rel;
    }
    /* breadth first: a directory's rel is set (by its parent's listing) before its turn */
    for (size_t k = 0; out != NULL && k < n; k++) {
        PyObject *item = rels[k] == NULL ? NULL : dir_result(&dirs[k], rels, k);
        if (item == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "scan_entries: a listing has no rel");
            Py_CLEAR(out);
        } else {
            PyList_SET_ITEM(out, (Py_ssize_t)k, item);
        }
    }
    for (size_t k = 0; rels != NULL && k < n; k++)
        Py_XDECREF(rels[k]);
    free(rels);
    tree_free(dirs, (size_t)max_dirs);
    return out;
}
