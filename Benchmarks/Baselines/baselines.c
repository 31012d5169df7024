/*
 * baselines.c: raw C baselines for the LoadProcessManager benchmarks.
 *
 * Build:  gcc -O2 -Wall -Wextra -o baselines baselines.c
 * Usage:
 *   baselines pingpong N             2 processes, AF_UNIX stream socketpair, 64 B round trip,
 *                                     blocking read/write; average ns per round trip
 *   baselines echo N                 pipelined echo to 2 children, 256 x 64 B in flight each,
 *                                     epoll + batched reads/writes; messages per second
 *   baselines spawn N PATH [ARGS...] posix_spawn PATH with a socketpair end on fd 3
 *                                     (LPM_CHANNEL_FD=3) until the first byte arrives, then
 *                                     SIGKILL + reap; average microseconds
 *   baselines spawn N --self-child   the same, spawning this program as the child
 *   baselines ring-pingpong N MODE   2 processes, shared-memory rings (docs/PROTOCOL.md), 64 B
 *                                     round trip; MODE poll (busy polling) or bell (eventfd
 *                                     doorbells, sleeping at once); average ns per round trip
 *   baselines ring-echo N MODE       pipelined echo through the rings to 1 child, 64 B
 *                                     messages; messages per second
 *
 * Each subcommand prints exactly one line on stdout:
 *   name=<name> value=<number> unit=<unit>
 * Diagnostics go to stderr. The program never pins itself; use taskset from outside.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MSG 64                /* message size in bytes */
#define INFLIGHT 256          /* messages in flight per child in the echo benchmark */
#define NCHILD 2              /* children in the echo benchmark */
#define RBUF (256 * 1024)     /* read buffer size for the echo benchmark */

static void die(const char *what) {
    fprintf(stderr, "baselines: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *what) {
    fprintf(stderr, "baselines: %s\n", what);
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long parse_count(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v <= 0) {
        fprintf(stderr, "baselines: bad count '%s'\n", s);
        exit(2);
    }
    return v;
}

/* Returns 0 on success, 1 on EOF before anything was read; exits on error or short EOF. */
static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r > 0) { got += (size_t)r; continue; }
        if (r == 0) {
            if (got == 0) return 1;
            fail("unexpected EOF mid-message");
        }
        if (errno == EINTR) continue;
        die("read");
    }
    return 0;
}

static void write_full(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w > 0) { put += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        die("write");
    }
}

static void reap(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) die("waitpid");
    }
}

/* ------------------------------------------------------------------ pingpong */

static int cmd_pingpong(long n) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        char buf[MSG];
        while (read_full(sv[1], buf, MSG) == 0) write_full(sv[1], buf, MSG);
        _exit(0);
    }
    close(sv[1]);
    int fd = sv[0];
    char buf[MSG];
    memset(buf, 0xA5, sizeof buf);

    long warm = n / 10 < 1000 ? 1000 : n / 10;
    if (warm > 10000) warm = 10000;
    for (long i = 0; i < warm; i++) {
        write_full(fd, buf, MSG);
        if (read_full(fd, buf, MSG)) fail("child closed");
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        write_full(fd, buf, MSG);
        if (read_full(fd, buf, MSG)) fail("child closed");
    }
    uint64_t t1 = now_ns();
    close(fd);
    reap(pid);
    printf("name=c_pingpong_socketpair_64B value=%.1f unit=ns/rt\n", (double)(t1 - t0) / (double)n);
    return 0;
}

/* ------------------------------------------------------------------ echo */

/*
 * Messages are frames of MSG bytes: a 4-byte little-endian payload length (MSG - 4) and the
 * payload. Both sides parse lengths, so this costs about what a minimal framing layer costs.
 */
static size_t complete_bytes(const unsigned char *p, size_t n, size_t *count) {
    size_t off = 0, c = 0;
    while (n - off >= 4) {
        uint32_t len;
        memcpy(&len, p + off, 4);
        if (len != MSG - 4) fail("bad frame length");
        if (n - off < 4 + (size_t)len) break;
        off += 4 + len;
        c++;
    }
    *count = c;
    return off;
}

static void echo_child(int fd) {
    unsigned char *buf = malloc(RBUF);
    if (!buf) fail("malloc");
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, RBUF - have);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            die("child read");
        }
        have += (size_t)r;
        size_t cnt;
        size_t whole = complete_bytes(buf, have, &cnt);
        if (whole) write_full(fd, buf, whole);       /* all complete messages in one write */
        if (whole < have) memmove(buf, buf + whole, have - whole);
        have -= whole;
    }
    _exit(0);
}

struct peer {
    int fd;
    pid_t pid;
    long target;      /* messages to send in total */
    long sent;        /* messages handed to the write queue (includes pending) */
    long received;    /* complete messages received back */
    size_t pending;   /* bytes queued but not yet written */
    uint64_t written; /* bytes written so far (position in the periodic source buffer) */
    size_t rhave;     /* partial-message bytes kept in rbuf */
    int want_out;     /* EPOLLOUT currently registered */
    unsigned char *rbuf;
};

static unsigned char *srcbuf; /* (INFLIGHT + 1) messages, periodic with period MSG */

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
}

static void update_events(int ep, struct peer *p, int idx) {
    int want = p->pending > 0;
    if (want == p->want_out) return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)idx };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, p->fd, &ev) < 0) die("epoll_ctl mod");
    p->want_out = want;
}

/* Write as much of the pending bytes as the socket takes, in one write call when possible. */
static void flush(struct peer *p) {
    while (p->pending > 0) {
        size_t off = (size_t)(p->written % MSG);
        ssize_t w = write(p->fd, srcbuf + off, p->pending);
        if (w > 0) {
            p->pending -= (size_t)w;
            p->written += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return;
        die("parent write");
    }
}

static void queue_msgs(struct peer *p, long k) {
    long left = p->target - p->sent;
    if (k > left) k = left;
    if (k <= 0) return;
    p->sent += k;
    p->pending += (size_t)k * MSG;
}

static int cmd_echo(long n) {
    if (n < NCHILD) fail("echo needs N >= 2");
    srcbuf = malloc((INFLIGHT + 1) * MSG);
    if (!srcbuf) fail("malloc");
    for (int i = 0; i < INFLIGHT + 1; i++) {
        uint32_t len = MSG - 4;
        memcpy(srcbuf + i * MSG, &len, 4);
        memset(srcbuf + i * MSG + 4, 'a' + (i % 26), MSG - 4);
    }

    struct peer peers[NCHILD];
    memset(peers, 0, sizeof peers);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");

    for (int i = 0; i < NCHILD; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(sv[0]);
            for (int j = 0; j < i; j++) close(peers[j].fd);
            close(ep);
            echo_child(sv[1]);
        }
        close(sv[1]);
        peers[i].fd = sv[0];
        peers[i].pid = pid;
        peers[i].target = n / NCHILD + (i < n % NCHILD ? 1 : 0);
        peers[i].rbuf = malloc(RBUF);
        if (!peers[i].rbuf) fail("malloc");
        set_nonblock(sv[0]);
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev) < 0) die("epoll_ctl add");
    }

    long total_received = 0;
    uint64_t t0 = now_ns();
    for (int i = 0; i < NCHILD; i++) {
        queue_msgs(&peers[i], INFLIGHT);
        flush(&peers[i]);
        update_events(ep, &peers[i], i);
    }

    struct epoll_event evs[NCHILD];
    while (total_received < n) {
        int ne = epoll_wait(ep, evs, NCHILD, -1);
        if (ne < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < ne; e++) {
            int i = (int)evs[e].data.u32;
            struct peer *p = &peers[i];
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                /* One read takes everything available (buffer far exceeds bytes in flight). */
                ssize_t r = read(p->fd, p->rbuf + p->rhave, RBUF - p->rhave);
                if (r == 0) fail("child closed early");
                if (r < 0 && errno != EAGAIN && errno != EINTR) die("parent read");
                if (r > 0) {
                    p->rhave += (size_t)r;
                    size_t cnt;
                    size_t whole = complete_bytes(p->rbuf, p->rhave, &cnt);
                    if (whole < p->rhave) memmove(p->rbuf, p->rbuf + whole, p->rhave - whole);
                    p->rhave -= whole;
                    p->received += (long)cnt;
                    total_received += (long)cnt;
                    queue_msgs(p, (long)cnt); /* refill: keep INFLIGHT in flight */
                }
            }
            flush(p);
            update_events(ep, p, i);
        }
    }
    uint64_t t1 = now_ns();

    for (int i = 0; i < NCHILD; i++) {
        if (peers[i].received != peers[i].target) fail("message count mismatch");
        close(peers[i].fd);
    }
    for (int i = 0; i < NCHILD; i++) reap(peers[i].pid);
    close(ep);
    double secs = (double)(t1 - t0) / 1e9;
    printf("name=c_echo_epoll_batched_2x256x64B value=%.0f unit=msg/s\n", (double)n / secs);
    return 0;
}

/* ------------------------------------------------------------------ spawn */

#define SELF_CHILD_MODE "__spawn-child"

/* Child side of `spawn --self-child`: one byte on fd 3, then wait for EOF (or the SIGKILL). */
static int spawn_child_main(void) {
    char b = 'R';
    write_full(3, &b, 1);
    char buf[64];
    for (;;) {
        ssize_t r = read(3, buf, sizeof buf);
        if (r == 0) return 0;
        if (r < 0 && errno != EINTR) return 1;
    }
}

static char **build_env(void) {
    size_t cnt = 0;
    for (char **e = environ; *e; e++) cnt++;
    char **env = malloc((cnt + 2) * sizeof *env);
    if (!env) fail("malloc");
    size_t k = 0;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "LPM_CHANNEL_FD=", 15) == 0) continue;
        env[k++] = *e;
    }
    env[k++] = "LPM_CHANNEL_FD=3";
    env[k] = NULL;
    return env;
}

static int cmd_spawn(long n, int argc, char **argv) {
    /* argv[0] is PATH (or --self-child), the rest are its arguments */
    char selfpath[4096];
    char **cargv;
    const char *path;
    if (strcmp(argv[0], "--self-child") == 0) {
        ssize_t l = readlink("/proc/self/exe", selfpath, sizeof selfpath - 1);
        if (l < 0) die("readlink /proc/self/exe");
        selfpath[l] = 0;
        path = selfpath;
        cargv = malloc(3 * sizeof *cargv);
        if (!cargv) fail("malloc");
        cargv[0] = selfpath;
        cargv[1] = SELF_CHILD_MODE;
        cargv[2] = NULL;
    } else {
        path = argv[0];
        cargv = malloc(((size_t)argc + 1) * sizeof *cargv);
        if (!cargv) fail("malloc");
        for (int i = 0; i < argc; i++) cargv[i] = argv[i];
        cargv[argc] = NULL;
    }
    char **env = build_env();

    uint64_t total = 0;
    for (long it = 0; it < n; it++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
        /* Make sure the child's end is not already fd 3 (dup2 onto itself keeps CLOEXEC). */
        if (sv[1] == 3) {
            int d = fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
            if (d < 0) die("fcntl dupfd");
            close(sv[1]);
            sv[1] = d;
        }
        posix_spawn_file_actions_t fa;
        if (posix_spawn_file_actions_init(&fa)) fail("file_actions_init");
        if (posix_spawn_file_actions_adddup2(&fa, sv[1], 3)) fail("adddup2");

        uint64_t t0 = now_ns();
        pid_t pid;
        int rc = posix_spawnp(&pid, path, &fa, NULL, cargv, env);
        if (rc) {
            errno = rc;
            die("posix_spawn");
        }
        close(sv[1]);
        struct pollfd pfd = { .fd = sv[0], .events = POLLIN };
        for (;;) {
            int pr = poll(&pfd, 1, 10000);
            if (pr > 0) break;
            if (pr == 0) fail("child wrote nothing within 10 s");
            if (errno != EINTR) die("poll");
        }
        char b;
        ssize_t r = read(sv[0], &b, 1);
        uint64_t t1 = now_ns();
        if (r != 1) fail("child closed fd 3 without writing a byte");
        total += t1 - t0;

        kill(pid, SIGKILL);
        reap(pid);
        close(sv[0]);
        posix_spawn_file_actions_destroy(&fa);
    }
    free(env);
    free(cargv);
    printf("name=c_spawn_to_first_byte value=%.1f unit=us\n", (double)total / (double)n / 1000.0);
    return 0;
}

/* ------------------------------------------------------------------ shared-memory rings */
/*
 * The layout of docs/PROTOCOL.md, "Shared-memory rings": one sealed memfd holding a 4096-byte
 * control page (object header at 0; request ring control at 256, response ring control at 512,
 * each: producer index u64 at +0, "producer waits" u32 at +8, consumer index u64 at +128,
 * "consumer sleeps" u32 at +136), then the request data area, then the response data area.
 * Records: u32 length, u8 kind, u8 flags, u16 0, u64 id, payload, padding to 8; a length of
 * 0xFFFFFFFF is a wrap marker. The same loads, stores and fences as the Swift implementation.
 */
#define RING_CONTROL 4096
#define RING_CAP (256 * 1024)     /* each data area in the ring benchmarks */
#define RING_HDR 16
#define RING_WRAP 0xFFFFFFFFu
#define RING_KIND_REQUEST 3
#define RING_KIND_RESPONSE 4
#define RING_KIND_STOP 0xEE

struct ring {
    uint64_t *tail, *head;
    uint32_t *pwait, *csleep;
    unsigned char *data;
    uint64_t cap;
};

struct producer { struct ring r; uint64_t tail, pub, head; };
struct consumer { struct ring r; uint64_t head, cursor, tail; };

static struct ring ring_at(unsigned char *base, int which) {
    unsigned char *ctl = base + (which == 0 ? 256 : 512);
    struct ring r;
    r.tail = (uint64_t *)(void *)ctl;
    r.pwait = (uint32_t *)(void *)(ctl + 8);
    r.head = (uint64_t *)(void *)(ctl + 128);
    r.csleep = (uint32_t *)(void *)(ctl + 136);
    r.cap = RING_CAP;
    r.data = base + RING_CONTROL + (which == 0 ? 0 : RING_CAP);
    return r;
}

/* Creates the object (sealed size), maps it MAP_SHARED, writes the header. */
static unsigned char *ring_object(void) {
    size_t size = RING_CONTROL + 2 * (size_t)RING_CAP;
    int fd = memfd_create("lpm-rings-bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, (off_t)size) < 0) die("ftruncate");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) die("F_ADD_SEALS");
    unsigned char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) die("mmap");
    close(fd); /* the forked child inherits the mapping */
    uint32_t magic = 0x524D504Cu, cap = RING_CAP;
    uint16_t version = 1, count = 2;
    uint64_t total = size;
    memcpy(base, &magic, 4);
    memcpy(base + 4, &version, 2);
    memcpy(base + 6, &count, 2);
    memcpy(base + 16, &total, 8);
    memcpy(base + 24, &cap, 4);
    memcpy(base + 28, &cap, 4);
    return base;
}

static size_t rec_size(uint32_t len) { return RING_HDR + (((size_t)len + 7) & ~(size_t)7); }

/* Room for `len` payload bytes, or NULL when full. *skip receives the wrap padding. */
static unsigned char *prod_reserve(struct producer *p, uint32_t len, size_t *skip, size_t *at) {
    size_t size = rec_size(len), pos = (size_t)(p->tail & (p->r.cap - 1));
    size_t s = p->r.cap - pos < size ? p->r.cap - pos : 0;
    if (s + size > p->r.cap - (size_t)(p->tail - p->head)) {
        uint64_t h = __atomic_load_n(p->r.head, __ATOMIC_ACQUIRE);
        if (h < p->head || h > p->pub || (h & 7)) fail("ring: bad consumer index");
        p->head = h;
        if (s + size > p->r.cap - (size_t)(p->tail - p->head)) return NULL;
    }
    *skip = s;
    *at = s ? 0 : pos;
    return p->r.data + *at + RING_HDR;
}

static void prod_commit(struct producer *p, size_t skip, size_t at, uint32_t len, uint8_t kind, uint64_t id) {
    unsigned char *rec = p->r.data + at;
    if (skip) { uint32_t w = RING_WRAP; memcpy(p->r.data + (p->tail & (p->r.cap - 1)), &w, 4); }
    memcpy(rec, &len, 4);
    rec[4] = kind;
    rec[5] = 0;
    rec[6] = rec[7] = 0;
    memcpy(rec + 8, &id, 8);
    p->tail += skip + rec_size(len);
}

/* Release-store of the index, full fence, flag load; 1 if the consumer must be rung. */
static int prod_publish(struct producer *p) {
    if (p->tail == p->pub) return 0;
    __atomic_store_n(p->r.tail, p->tail, __ATOMIC_RELEASE);
    p->pub = p->tail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!__atomic_load_n(p->r.csleep, __ATOMIC_RELAXED)) return 0;
    return __atomic_exchange_n(p->r.csleep, 0, __ATOMIC_ACQ_REL) != 0;
}

static int cons_refresh(struct consumer *c) {
    uint64_t t = __atomic_load_n(c->r.tail, __ATOMIC_ACQUIRE);
    if (t < c->tail || (t & 7) || t - c->head > c->r.cap) fail("ring: bad producer index");
    c->tail = t;
    return c->cursor != c->tail;
}

/* The next record in place, or NULL. */
static const unsigned char *cons_next(struct consumer *c, uint32_t *len, uint8_t *kind, uint64_t *id) {
    if (c->cursor == c->tail && !cons_refresh(c)) return NULL;
    for (int wraps = 0;; wraps++) {
        size_t pos = (size_t)(c->cursor & (c->r.cap - 1));
        uint32_t w;
        memcpy(&w, c->r.data + pos, 4);
        if (w == RING_WRAP) {
            if (wraps || pos == 0 || c->r.cap - pos > c->tail - c->cursor) fail("ring: bad wrap marker");
            c->cursor += c->r.cap - pos;
            if (c->cursor == c->tail) return NULL;
            continue;
        }
        size_t size = rec_size(w);
        if (w > c->r.cap / 2 - RING_HDR || size > c->r.cap - pos || size > c->tail - c->cursor) fail("ring: bad record");
        const unsigned char *rec = c->r.data + pos;
        *len = w;
        *kind = rec[4];
        memcpy(id, rec + 8, 8);
        c->cursor += size;
        return rec + RING_HDR;
    }
}

/* Release-store of the index, full fence, flag load; 1 if the producer must be rung. */
static int cons_release(struct consumer *c) {
    if (c->cursor == c->head) return 0;
    c->head = c->cursor;
    __atomic_store_n(c->r.head, c->head, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!__atomic_load_n(c->r.pwait, __ATOMIC_RELAXED)) return 0;
    return __atomic_exchange_n(c->r.pwait, 0, __ATOMIC_ACQ_REL) != 0;
}

/* Flag store, full fence, index load: 1 if the caller may sleep now. */
static int cons_prepare_sleep(struct consumer *c) {
    __atomic_store_n(c->r.csleep, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (c->cursor != c->tail || cons_refresh(c)) {
        __atomic_store_n(c->r.csleep, 0, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

static int prod_prepare_wait(struct producer *p, uint32_t len) {
    size_t skip, at;
    __atomic_store_n(p->r.pwait, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (prod_reserve(p, len, &skip, &at)) {
        __atomic_store_n(p->r.pwait, 0, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

static void bell_ring(int fd) {
    uint64_t one = 1;
    while (write(fd, &one, 8) < 0) if (errno != EINTR) die("eventfd write");
}

static void bell_wait(int fd) {
    uint64_t v;
    while (read(fd, &v, 8) < 0) if (errno != EINTR) die("eventfd read");
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Busy polling: spin, yielding the CPU now and then so that both processes on one CPU progress. */
static void spin_once(unsigned *n) {
    cpu_relax();
    if ((++*n & 1023) == 0) sched_yield();
}

struct ring_side {
    struct producer out;
    struct consumer in;
    int bell, peer_bell, poll;
    long sleeps;
};

/* Waits until `in` has a record (or, with room_for > 0, until `out` has room for room_for bytes). */
static void side_wait(struct ring_side *s, uint32_t room_for) {
    if (s->poll) {
        unsigned n = 0;
        size_t skip, at;
        for (;;) {
            if (cons_refresh(&s->in)) return;
            if (room_for && prod_reserve(&s->out, room_for, &skip, &at)) return;
            spin_once(&n);
        }
    }
    int sleep = cons_prepare_sleep(&s->in);
    if (sleep && room_for) sleep = prod_prepare_wait(&s->out, room_for);
    if (sleep) { s->sleeps++; bell_wait(s->bell); }
    __atomic_store_n(s->in.r.csleep, 0, __ATOMIC_RELAXED);
    __atomic_store_n(s->out.r.pwait, 0, __ATOMIC_RELAXED);
}

static void side_flush(struct ring_side *s) {
    int ring = prod_publish(&s->out);
    if (cons_release(&s->in)) ring = 1;
    if (ring && !s->poll) bell_ring(s->peer_bell);
}

/* The worker: echoes every request into the response ring until a stop record. */
static void ring_child(struct ring_side *s) {
    for (;;) {
        uint32_t len; uint8_t kind; uint64_t id;
        const unsigned char *m;
        int got = 0;
        while ((m = cons_next(&s->in, &len, &kind, &id)) != NULL) {
            if (kind == RING_KIND_STOP) { side_flush(s); _exit(0); }
            size_t skip, at;
            unsigned char *room;
            while ((room = prod_reserve(&s->out, len, &skip, &at)) == NULL) {
                if (prod_publish(&s->out) && !s->poll) bell_ring(s->peer_bell);
                if (s->poll) { unsigned n = 0; spin_once(&n); continue; }
                if (prod_prepare_wait(&s->out, len)) bell_wait(s->bell);
                __atomic_store_n(s->out.r.pwait, 0, __ATOMIC_RELAXED);
            }
            memcpy(room, m, len);
            prod_commit(&s->out, skip, at, len, RING_KIND_RESPONSE, id);
            if ((++got & 63) == 0) side_flush(s);
        }
        side_flush(s);
        if (!got) side_wait(s, 0);
    }
}

static pid_t ring_fork(struct ring_side *parent, int poll) {
    unsigned char *base = ring_object();
    int pb = eventfd(0, EFD_CLOEXEC), cb = eventfd(0, EFD_CLOEXEC);
    if (pb < 0 || cb < 0) die("eventfd");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        struct ring_side c = {0};
        c.in.r = ring_at(base, 0);
        c.out.r = ring_at(base, 1);
        c.bell = cb; c.peer_bell = pb; c.poll = poll;
        ring_child(&c);
    }
    memset(parent, 0, sizeof *parent);
    parent->out.r = ring_at(base, 0);
    parent->in.r = ring_at(base, 1);
    parent->bell = pb; parent->peer_bell = cb; parent->poll = poll;
    return pid;
}

static void ring_stop(struct ring_side *s, pid_t pid) {
    size_t skip, at;
    while (!prod_reserve(&s->out, 0, &skip, &at)) side_wait(s, 0);
    prod_commit(&s->out, skip, at, 0, RING_KIND_STOP, 0);
    side_flush(s);
    reap(pid);
    close(s->bell);
    close(s->peer_bell);
    munmap(s->out.r.data - RING_CONTROL, RING_CONTROL + 2 * (size_t)RING_CAP);
}

static int parse_mode(const char *m) {
    if (strcmp(m, "poll") == 0) return 1;
    if (strcmp(m, "bell") == 0) return 0;
    fprintf(stderr, "baselines: mode must be poll or bell, not '%s'\n", m);
    exit(2);
}

/* One 64-byte record there and back, N times. */
static int cmd_ring_pingpong(long n, int poll) {
    struct ring_side s;
    pid_t pid = ring_fork(&s, poll);
    unsigned char msg[MSG];
    memset(msg, 0xA5, sizeof msg);
    long warm = n / 10 < 1000 ? 1000 : n / 10;
    if (warm > 10000) warm = 10000;
    uint64_t t0 = 0;
    for (long i = 0; i < warm + n; i++) {
        if (i == warm) t0 = now_ns();
        size_t skip, at;
        unsigned char *room;
        while ((room = prod_reserve(&s.out, MSG, &skip, &at)) == NULL) side_wait(&s, MSG);
        memcpy(room, msg, MSG);
        prod_commit(&s.out, skip, at, MSG, RING_KIND_REQUEST, (uint64_t)i);
        side_flush(&s);
        uint32_t len; uint8_t kind; uint64_t id;
        const unsigned char *m;
        while ((m = cons_next(&s.in, &len, &kind, &id)) == NULL) side_wait(&s, 0);
        if (len != MSG || id != (uint64_t)i || kind != RING_KIND_RESPONSE) fail("ring: bad echo");
        memcpy(msg, m, MSG);
        side_flush(&s);
    }
    uint64_t t1 = now_ns();
    ring_stop(&s, pid);
    printf("name=c_ring_pingpong_%s_64B value=%.1f unit=ns/rt\n", poll ? "poll" : "bell", (double)(t1 - t0) / (double)n);
    return 0;
}

/* Pipelined echo through one worker: the request ring kept as full as it goes, every response
 * read as it comes. N messages of 64 bytes. */
static int cmd_ring_echo(long n, int poll) {
    struct ring_side s;
    pid_t pid = ring_fork(&s, poll);
    unsigned char msg[MSG];
    memset(msg, 0x5A, sizeof msg);
    long sent = 0, got = 0;
    uint64_t t0 = now_ns();
    while (got < n) {
        int progress = 0, full = 0;
        while (sent < n) {
            size_t skip, at;
            unsigned char *room = prod_reserve(&s.out, MSG, &skip, &at);
            if (!room) { full = 1; break; }
            memcpy(room, msg, MSG);
            prod_commit(&s.out, skip, at, MSG, RING_KIND_REQUEST, (uint64_t)sent);
            sent++;
            progress = 1;
        }
        if (prod_publish(&s.out) && !poll) bell_ring(s.peer_bell);
        uint32_t len; uint8_t kind; uint64_t id;
        while (cons_next(&s.in, &len, &kind, &id) != NULL) {
            if (id != (uint64_t)got || len != MSG) fail("ring: bad echo");
            got++;
            progress = 1;
        }
        if (cons_release(&s.in) && !poll) bell_ring(s.peer_bell);
        if (!progress) side_wait(&s, full ? MSG : 0);
    }
    uint64_t t1 = now_ns();
    ring_stop(&s, pid);
    printf("name=c_ring_echo_%s_1x64B value=%.0f unit=msg/s\n", poll ? "poll" : "bell", (double)n * 1e9 / (double)(t1 - t0));
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: baselines pingpong N\n"
            "       baselines echo N\n"
            "       baselines spawn N PATH [ARGS...]\n"
            "       baselines spawn N --self-child\n"
            "       baselines ring-pingpong N poll|bell\n"
            "       baselines ring-echo N poll|bell\n");
    exit(2);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], SELF_CHILD_MODE) == 0) return spawn_child_main();
    if (argc < 3) usage();
    long n = parse_count(argv[2]);
    if (strcmp(argv[1], "pingpong") == 0 && argc == 3) return cmd_pingpong(n);
    if (strcmp(argv[1], "echo") == 0 && argc == 3) return cmd_echo(n);
    if (strcmp(argv[1], "spawn") == 0 && argc >= 4) return cmd_spawn(n, argc - 3, argv + 3);
    if (strcmp(argv[1], "ring-pingpong") == 0 && argc == 4) return cmd_ring_pingpong(n, parse_mode(argv[3]));
    if (strcmp(argv[1], "ring-echo") == 0 && argc == 4) return cmd_ring_echo(n, parse_mode(argv[3]));
    usage();
    return 2;
}
