/* Hutong WAN emulation: a packet-level delay line on a TUN device.
 *
 * Module gfs._delayline, used by gfs/testing/wan.py. The kernel routes the
 * packets of an emulated link into a TUN device; `run` reads each packet,
 * holds it for a fixed delay and writes it back to the same device, where
 * the kernel forwards it on to its destination. Unlike a proxy that delays a
 * byte stream, every IP packet (data, ACK, retransmission) is delayed, so TCP
 * sees a real round-trip time.
 *
 * Contract
 *  - The delay of a packet is delay(source) + delay(destination), each the
 *    delay of the first rule whose prefix matches the address (0 if none):
 *    with sites joined in a star, 2 * (delay(a) + delay(b)) is the RTT a-b.
 *  - Packets keep their order within one delay value. A packet that finds
 *    the buffer full is dropped and counted (tail drop), never blocks.
 *  - Memory: `slots` packet buffers of `mtu` bytes, allocated once.
 *  - `run` releases the GIL and returns when `stop_fd` becomes readable or
 *    hangs up (the parent closes the pipe or dies), with its counters.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define DL_MAX_RULES 64
#define DL_MAX_CLASSES 64
#define DL_READ_BURST 256

typedef struct {
    int family;      /* 4 or 6 */
    uint8_t prefix[16];
    int bits;
    uint64_t delay_ns;
} dl_rule;

typedef struct {
    uint64_t delay_ns;
    uint32_t *ring;  /* slot indices, FIFO */
    uint32_t head, count;
} dl_class;

typedef struct {
    int fd, stop_fd;
    uint32_t mtu, slots;
    uint8_t *buf;        /* slots * mtu */
    uint32_t *len;       /* per slot */
    uint64_t *due;       /* per slot, CLOCK_MONOTONIC ns */
    uint32_t *free_stack;
    uint32_t nfree;
    dl_rule rules[DL_MAX_RULES];
    int nrules;
    dl_class classes[DL_MAX_CLASSES];
    int nclasses;
    uint64_t in, out, dropped_full, dropped_other, bytes;
    uint32_t max_queued;
} dl_state;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int prefix_match(const uint8_t *addr, const dl_rule *r) {
    int full = r->bits / 8, rest = r->bits % 8;
    if (memcmp(addr, r->prefix, (size_t)full) != 0)
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((addr[full] & mask) != (r->prefix[full] & mask))
            return 0;
    }
    return 1;
}

static uint64_t addr_delay(const dl_state *st, int family, const uint8_t *addr) {
    for (int i = 0; i < st->nrules; i++)
        if (st->rules[i].family == family && prefix_match(addr, &st->rules[i]))
            return st->rules[i].delay_ns;
    return 0;
}

static uint64_t packet_delay(const dl_state *st, const uint8_t *p, size_t n) {
    if (n >= 20 && (p[0] >> 4) == 4)
        return addr_delay(st, 4, p + 12) + addr_delay(st, 4, p + 16);
    if (n >= 40 && (p[0] >> 4) == 6)
        return addr_delay(st, 6, p + 8) + addr_delay(st, 6, p + 24);
    return 0;
}

static dl_class *class_for(dl_state *st, uint64_t delay) {
    for (int i = 0; i < st->nclasses; i++)
        if (st->classes[i].delay_ns == delay)
            return &st->classes[i];
    if (st->nclasses == DL_MAX_CLASSES)
        return NULL;
    dl_class *c = &st->classes[st->nclasses];
    c->ring = malloc(sizeof(uint32_t) * st->slots);
    if (!c->ring)
        return NULL;
    c->delay_ns = delay;
    c->head = c->count = 0;
    st->nclasses++;
    return c;
}

/* Write every packet due by `now`; return the earliest due time left (0: none). */
static uint64_t flush_due(dl_state *st, uint64_t now) {
    uint64_t next = 0;
    for (int i = 0; i < st->nclasses; i++) {
        dl_class *c = &st->classes[i];
        while (c->count) {
            uint32_t slot = c->ring[c->head];
            if (st->due[slot] > now) {
                if (!next || st->due[slot] < next)
                    next = st->due[slot];
                break;
            }
            ssize_t w = write(st->fd, st->buf + (size_t)slot * st->mtu, st->len[slot]);
            if (w < 0 && errno == EAGAIN) {
                /* The device queue is full: retry soon rather than drop. */
                if (!next || now + 20000 < next)
                    next = now + 20000;
                break;
            }
            if (w < 0)
                st->dropped_other++;
            else {
                st->out++;
                st->bytes += (uint64_t)w;
            }
            c->head = (c->head + 1) % st->slots;
            c->count--;
            st->free_stack[st->nfree++] = slot;
        }
    }
    return next;
}

/* Read what the device holds (up to a burst); 0, or -1 with errno on a fatal error. */
static int read_burst(dl_state *st) {
    uint8_t scratch[65536];
    for (int k = 0; k < DL_READ_BURST; k++) {
        uint8_t *dst = st->nfree ? st->buf + (size_t)st->free_stack[st->nfree - 1] * st->mtu
                                 : scratch;
        size_t cap = st->nfree ? st->mtu : sizeof scratch;
        ssize_t n = read(st->fd, dst, cap);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return -1;
        }
        st->in++;
        if (!st->nfree) {
            st->dropped_full++;
            continue;
        }
        uint64_t delay = packet_delay(st, dst, (size_t)n);
        dl_class *c = class_for(st, delay);
        if (!c) {
            st->dropped_other++;
            continue;
        }
        uint32_t slot = st->free_stack[--st->nfree];
        st->len[slot] = (uint32_t)n;
        st->due[slot] = now_ns() + delay;
        c->ring[(c->head + c->count) % st->slots] = slot;
        c->count++;
        uint32_t queued = st->slots - st->nfree;
        if (queued > st->max_queued)
            st->max_queued = queued;
    }
    return 0;
}

static int run_loop(dl_state *st) {
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct pollfd pfd[2] = {{st->fd, POLLIN, 0}, {st->stop_fd, POLLIN, 0}};
    for (;;) {
        uint64_t now = now_ns();
        uint64_t next = flush_due(st, now);
        struct timespec ts, *tsp = NULL;
        if (next) {
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000u);
            ts.tv_nsec = (long)(wait % 1000000000u);
            tsp = &ts;
        }
        int r = ppoll(pfd, 2, tsp, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (pfd[1].revents)
            return 0;
        if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            errno = EIO;
            return -1;
        }
        if ((pfd[0].revents & POLLIN) && read_burst(st) < 0)
            return -1;
    }
}

static PyObject *py_open_tun(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    if (strlen(name) >= IFNAMSIZ) {
        PyErr_Format(PyExc_ValueError, "TUN device name %R is longer than %d bytes", args,
                     IFNAMSIZ - 1);
        return NULL;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(fd);
}

static int parse_rules(dl_state *st, PyObject *rules) {
    PyObject *seq = PySequence_Fast(rules, "rules must be a sequence of (family, prefix, bits, delay_ns)");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > DL_MAX_RULES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d delay rules, got %zd", DL_MAX_RULES, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        dl_rule *r = &st->rules[i];
        const char *prefix;
        Py_ssize_t plen;
        unsigned long long delay;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iy#iK", &r->family, &prefix,
                              &plen, &r->bits, &delay)) {
            Py_DECREF(seq);
            return -1;
        }
        Py_ssize_t need = r->family == 4 ? 4 : 16;
        if ((r->family != 4 && r->family != 6) || plen != need || r->bits < 0 ||
            r->bits > need * 8) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "delay rule %zd: bad family, prefix or length", i);
            return -1;
        }
        memset(r->prefix, 0, sizeof r->prefix);
        memcpy(r->prefix, prefix, (size_t)plen);
        r->delay_ns = delay;
    }
    st->nrules = (int)n;
    Py_DECREF(seq);
    return 0;
}

static PyObject *py_run(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *names[] = {"fd", "stop_fd", "rules", "mtu", "slots", NULL};
    dl_state st;
    memset(&st, 0, sizeof st);
    PyObject *rules;
    unsigned int mtu = 1500, slots = 16384;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiO|II", names, &st.fd, &st.stop_fd, &rules,
                                     &mtu, &slots))
        return NULL;
    if (mtu < 576 || mtu > 65535 || slots < 16 || slots > (1u << 22)) {
        PyErr_SetString(PyExc_ValueError, "mtu must be 576..65535 and slots 16..4194304");
        return NULL;
    }
    if (parse_rules(&st, rules) < 0)
        return NULL;
    st.mtu = mtu;
    st.slots = slots;
    st.buf = malloc((size_t)slots * mtu);
    st.len = malloc(sizeof(uint32_t) * slots);
    st.due = malloc(sizeof(uint64_t) * slots);
    st.free_stack = malloc(sizeof(uint32_t) * slots);
    PyObject *result = NULL;
    if (!st.buf || !st.len || !st.due || !st.free_stack) {
        PyErr_NoMemory();
        goto done;
    }
    for (uint32_t i = 0; i < slots; i++)
        st.free_stack[i] = slots - 1 - i;
    st.nfree = slots;
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = run_loop(&st);
    if (rc < 0)
        err = errno;
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = err;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "delay line TUN device");
        goto done;
    }
    result = Py_BuildValue("{sKsKsKsKsKsI}", "in", (unsigned long long)st.in, "out",
                           (unsigned long long)st.out, "dropped_full",
                           (unsigned long long)st.dropped_full, "dropped_other",
                           (unsigned long long)st.dropped_other, "bytes",
                           (unsigned long long)st.bytes, "max_queued", st.max_queued);
done:
    for (int i = 0; i < st.nclasses; i++)
        free(st.classes[i].ring);
    free(st.buf);
    free(st.len);
    free(st.due);
    free(st.free_stack);
    return result;
}

static PyMethodDef methods[] = {
    {"open_tun", py_open_tun, METH_VARARGS,
     "open_tun(name) -> fd: create TUN device `name` (IFF_TUN | IFF_NO_PI), non-blocking."},
    {"run", (PyCFunction)(void (*)(void))py_run, METH_VARARGS | METH_KEYWORDS,
     "run(fd, stop_fd, rules, mtu=1500, slots=16384) -> counters: delay every packet of the "
     "TUN device `fd` until `stop_fd` is readable. rules: (family 4|6, prefix bytes, bits, "
     "delay_ns); a packet waits delay(src) + delay(dst)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfs._delayline",
    "Packet-level delay line on a TUN device (native/delayline.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__delayline(void) { return PyModule_Create(&module); }
