/*
 * lpm_worker.h: a LoadProcessManager worker in C, in one header, with libc alone.
 * Speaks version 1 of the wire protocol (docs/PROTOCOL.md).
 *
 * In exactly one C file, define the implementation before including the header, and include
 * it first (the implementation asks for _GNU_SOURCE, which must precede every system header;
 * with -std=gnu99/gnu11, the compilers' default, the order does not matter):
 *
 *     #define LPM_WORKER_IMPLEMENTATION
 *     #include "lpm_worker.h"
 *
 * Other files include the header alone. C99 or later, Linux, gcc or clang.
 *
 * A worker in full:
 *
 *     static void on_request(lpm_worker *w, lpm_request *req, void *user) {
 *         (void)user;
 *         lpm_respond(w, req->id, req->data, req->size);     // echo
 *     }
 *     int main(void) {
 *         lpm_worker *w = lpm_connect();       // descriptor 3, or exit 64 with a message
 *         lpm_on_request(w, on_request, NULL);
 *         lpm_ready(w);
 *         lpm_run(w);                          // exits 0 at end of file or after a soft kill
 *     }
 *
 * Everything runs on the thread that calls lpm_run() or lpm_poll(): one thread, no locks.
 * Handlers run on that thread and must not block it for long (the supervisor pings the worker
 * and kills one that does not answer within its unresponsive timeout, 20 s by default). Call
 * the library from that thread only, and not from inside lpm_poll() itself except through the
 * handlers it runs.
 *
 * Ownership of descriptors. A descriptor that comes with a request or an event (req->fd,
 * ev->fd) belongs to the handler while it runs: to keep it, copy it and set the field to -1.
 * Otherwise the library closes it when the handler returns (and, for a request's socket, tells
 * the supervisor with a socketClosed frame). A socket kept from a request is closed later with
 * lpm_close_socket(), which sends that frame.
 *
 * Exit statuses (lpm_exit): 0 at end of file, after a soft kill or a hard-kill notice; 64
 * when the process was not started by a supervisor; 74 when the channel fails; 76 when the
 * supervisor breaks the protocol.
 */
#ifndef LPM_WORKER_H
#define LPM_WORKER_H

#if defined(LPM_WORKER_IMPLEMENTATION) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version spoken, the header's second byte. */
#define LPM_PROTOCOL_VERSION 1

/* Exit statuses. */
#define LPM_EXIT_OK 0
#define LPM_EXIT_USAGE 64
#define LPM_EXIT_CHANNEL_FAILED 74
#define LPM_EXIT_PROTOCOL 76

/* Frame types (docs/PROTOCOL.md, Types). S: supervisor, W: worker. */
enum lpm_frame_type {
    LPM_FRAME_READY = 1,          /* W->S */
    LPM_FRAME_BUSY = 2,           /* W->S */
    LPM_FRAME_REQUEST = 3,        /* S->W */
    LPM_FRAME_RESPONSE = 4,       /* W->S */
    LPM_FRAME_ACK = 5,            /* W->S */
    LPM_FRAME_ERROR = 6,          /* W->S */
    LPM_FRAME_EVENT = 7,          /* both */
    LPM_FRAME_EVENT_REPLY = 8,    /* both */
    LPM_FRAME_BROADCAST = 9,      /* S->W */
    LPM_FRAME_HEALTH_REQUEST = 10, /* S->W */
    LPM_FRAME_HEALTH_REPORT = 11, /* W->S */
    LPM_FRAME_SOFT_KILL = 12,     /* S->W */
    LPM_FRAME_HARD_KILL = 13,     /* S->W */
    LPM_FRAME_CANCEL = 14,        /* S->W */
    LPM_FRAME_PING = 15,          /* both */
    LPM_FRAME_PONG = 16,          /* both */
    LPM_FRAME_SOCKET_CLOSED = 17, /* W->S */
    LPM_FRAME_STREAM_END = 18     /* W->S */
};

/* Frame flags: one descriptor travels with the frame; that descriptor is a stream. */
#define LPM_FLAG_DESCRIPTOR 0x01u
#define LPM_FLAG_STREAM 0x02u

typedef struct lpm_worker lpm_worker;

/* A request from the supervisor. Everything in it is valid while the handler runs; copy what
 * an answer given later needs (the id, the data). */
typedef struct lpm_request {
    uint64_t id;                /* the frame id: answer with it (lpm_respond, lpm_ack, lpm_fail) */
    unsigned char uuid[16];     /* the request's UUID (version 4), RFC 9562 byte order */
    uint64_t created_at;        /* ns on the supervisor's CLOCK_MONOTONIC when it was accepted */
    const unsigned char *data;  /* the request data */
    size_t size;
    int fd;                     /* -1, or a descriptor sent with the request (see ownership above) */
    int is_stream;              /* 1: fd is a stream's read end, to be read to end of file; 0: a socket */
} lpm_request;

/* An event (or broadcast) from the supervisor, valid while the handler runs. */
typedef struct lpm_event {
    const char *name;           /* NUL-terminated (a name with a NUL byte in it reads cut there) */
    size_t name_len;            /* the name's length in bytes, as sent */
    const unsigned char *data;
    size_t size;
    uint64_t reply_id;          /* non-zero: the supervisor waits for lpm_reply(w, reply_id, ...) */
    int is_broadcast;           /* 1: sent to every worker (never wants a reply) */
    int fd;                     /* -1, or a descriptor sent with it (see ownership above) */
} lpm_event;

typedef void (*lpm_request_fn)(lpm_worker *w, lpm_request *req, void *user);
typedef void (*lpm_event_fn)(lpm_worker *w, lpm_event *ev, void *user);
/* The supervisor's reply to an event emitted with lpm_emit_ask(). */
typedef void (*lpm_reply_fn)(lpm_worker *w, const unsigned char *data, size_t size, void *user);
/* The supervisor gave up on request `id` (timeout, cancellation): its answer would be dropped. */
typedef void (*lpm_cancel_fn)(lpm_worker *w, uint64_t id, void *user);
/* Soft kill: runs once nothing is in hand; call lpm_exit(w, 0) when done (now or later). */
typedef void (*lpm_soft_kill_fn)(lpm_worker *w, void *user);
/* Hard-kill notice: a SIGKILL follows at once; the worker exits 0 when this returns. */
typedef void (*lpm_hard_kill_fn)(lpm_worker *w, void *user);
typedef void (*lpm_timer_fn)(lpm_worker *w, void *user);
/* Health figures in bytes; 0 means unknown. The default reports malloc's figures (glibc). */
typedef void (*lpm_health_fn)(lpm_worker *w, uint64_t *heap_total, uint64_t *heap_used, void *user);

/* Connects to the channel named by LPM_CHANNEL_FD (descriptor 3), sets it close-on-exec and
 * non-blocking. On failure, returns NULL with the reason in `error` (if not NULL). A worker
 * whose supervisor died before it started exits 0 here. */
lpm_worker *lpm_try_connect(char *error, size_t error_size);
/* lpm_try_connect(), or the reason on standard error and exit 64. */
lpm_worker *lpm_connect(void);

/* The worker's slot in the pool (LPM_WORKER_SLOT), from 0; -1 when not set. */
int lpm_slot(const lpm_worker *w);
/* The largest payload either side accepts (LPM_MAX_FRAME). */
size_t lpm_max_payload(const lpm_worker *w);
/* The channel's descriptor, to wait on it in a loop of one's own (then call lpm_poll(w, 0)). */
int lpm_fd(const lpm_worker *w);

/* Handlers. lpm_on(w, NULL, ...) handles every event that has no handler of its own. */
void lpm_on_request(lpm_worker *w, lpm_request_fn fn, void *user);
int lpm_on(lpm_worker *w, const char *name, lpm_event_fn fn, void *user);
void lpm_on_cancel(lpm_worker *w, lpm_cancel_fn fn, void *user);
void lpm_on_soft_kill(lpm_worker *w, lpm_soft_kill_fn fn, void *user);
void lpm_on_hard_kill(lpm_worker *w, lpm_hard_kill_fn fn, void *user);
void lpm_on_health(lpm_worker *w, lpm_health_fn fn, void *user);

/* Takes requests (again, after lpm_busy). Sends nothing when already ready. */
void lpm_ready(lpm_worker *w);
/* Takes no new requests until lpm_ready (requests already sent may still arrive). */
void lpm_busy(lpm_worker *w);

/* Answers request `id`, once: with data, with nothing, or with an error message. Returns 0, or
 * -1 when the request is not in hand (answered already, cancelled, unknown). A response larger
 * than lpm_max_payload() is sent as an error saying so. */
int lpm_respond(lpm_worker *w, uint64_t id, const void *data, size_t size);
int lpm_ack(lpm_worker *w, uint64_t id);
int lpm_fail(lpm_worker *w, uint64_t id, const char *message);
/* Answers request `id` with data and a stream: returns the write end (blocking, close-on-exec)
 * of a socketpair whose read end goes to the supervisor, or -1. Write to it (send() with
 * MSG_NOSIGNAL, so that a reader that went away gives EPIPE rather than SIGPIPE), then call
 * lpm_stream_end() with the byte count: the request stays in hand until then. Blocking writes
 * hold the worker's thread until the supervisor's caller reads them: for a large stream, make
 * the descriptor non-blocking and write it as it drains (lpm_after, or a poll loop of one's own). */
int lpm_respond_stream(lpm_worker *w, uint64_t id, const void *data, size_t size);
/* Closes `fd` (the stream's write end) and ends the stream: `count` bytes, complete or not. */
int lpm_stream_end(lpm_worker *w, uint64_t id, int fd, uint64_t count, int ok);
/* Closes a socket kept from request `id` and tells the supervisor (socketClosed). */
void lpm_close_socket(lpm_worker *w, uint64_t id, int fd);
/* How many requests are in hand (received, not answered, not cancelled; a streamed answer
 * counts until its lpm_stream_end). */
size_t lpm_in_hand(const lpm_worker *w);

/* Emits an event to the supervisor. Returns 0, or -1 when it does not fit in a frame. */
int lpm_emit(lpm_worker *w, const char *name, const void *data, size_t size);
/* Emits an event and asks for a reply, delivered to `fn`. */
int lpm_emit_ask(lpm_worker *w, const char *name, const void *data, size_t size, lpm_reply_fn fn, void *user);
/* Replies to an event the supervisor sent with a reply id (lpm_event.reply_id). */
int lpm_reply(lpm_worker *w, uint64_t reply_id, const void *data, size_t size);

/* Runs `fn` once, `delay_ms` milliseconds from now, on the worker's thread. Returns a timer id
 * (> 0) for lpm_cancel_timer(), or 0 when out of memory. Timers live in an array scanned at
 * each iteration: fine for tens of them. */
uint64_t lpm_after(lpm_worker *w, int64_t delay_ms, lpm_timer_fn fn, void *user);
void lpm_cancel_timer(lpm_worker *w, uint64_t timer);

/* One iteration: waits up to `timeout_ms` (-1: until something happens; 0: not at all) for
 * frames or the next timer, handles them, and writes what is due. Returns 0 (the worker exits
 * rather than returning an error). */
int lpm_poll(lpm_worker *w, int timeout_ms);
/* lpm_poll() for ever: the worker exits from inside it. */
void lpm_run(lpm_worker *w);
/* Writes everything queued (waiting for the socket as long as it takes), closes the channel
 * and exits the process with `status` (exit(3): atexit handlers run, stdio is flushed). */
void lpm_exit(lpm_worker *w, int status);

#ifdef __cplusplus
}
#endif

#endif /* LPM_WORKER_H */

/* ---------------------------------------------------------------------------------------- */

#if defined(LPM_WORKER_IMPLEMENTATION) && !defined(LPM_WORKER_IMPLEMENTED)
#define LPM_WORKER_IMPLEMENTED

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LPM__HEADER 16
#define LPM__MAGIC 0x4C
#define LPM__REQUEST_HEAD 24
#define LPM__DEFAULT_MAX_PAYLOAD (16u << 20)
#define LPM__MAX_PAYLOAD_LIMIT (1u << 30)
#define LPM__READ_ROOM (64u * 1024u)
#define LPM__RETAINED (256u * 1024u)
/* Room for this many descriptors in one recvmsg's control data; more is MSG_CTRUNC. */
#define LPM__MAX_FDS 8

struct lpm__handler { char *name; lpm_event_fn fn; void *user; };
struct lpm__pending { uint64_t id; lpm_reply_fn fn; void *user; };
struct lpm__timer { uint64_t id; int64_t due_ns; lpm_timer_fn fn; void *user; };
struct lpm__outfd { size_t offset; int fd; };
/* A request in hand; `streaming` once answered with a stream that has not ended. */
struct lpm__inhand { uint64_t id; int streaming; };

struct lpm_worker {
    int fd;
    size_t max_payload;
    int slot;
    /* Received bytes not yet decoded: [in_start, in_end) of a buffer of in_cap bytes. */
    unsigned char *in;
    size_t in_start, in_end, in_cap;
    /* Received descriptors not yet claimed by a frame, in arrival order. */
    int fds[LPM__MAX_FDS + 1];
    size_t nfds;
    /* Frames to write: [out_start, out_len) of `out`; out_fds: the descriptors that travel
     * with the frames starting at those offsets. */
    unsigned char *out;
    size_t out_start, out_len, out_cap;
    struct lpm__outfd *out_fds;
    size_t n_out_fds, cap_out_fds;
    struct lpm__inhand *in_hand;
    size_t n_in_hand, cap_in_hand;
    struct lpm__handler *handlers;
    size_t n_handlers;
    lpm_event_fn any_event;
    void *any_event_user;
    struct lpm__pending *pending;
    size_t n_pending, cap_pending;
    uint64_t next_event_id;
    struct lpm__timer *timers;
    size_t n_timers, cap_timers;
    uint64_t next_timer_id;
    lpm_request_fn on_request;
    void *on_request_user;
    lpm_cancel_fn on_cancel;
    void *on_cancel_user;
    lpm_soft_kill_fn on_soft_kill;
    void *on_soft_kill_user;
    lpm_hard_kill_fn on_hard_kill;
    void *on_hard_kill_user;
    lpm_health_fn on_health;
    void *on_health_user;
    int state; /* 0 starting, 1 ready, 2 busy */
    int soft_kill_requested, soft_kill_running, exiting;
};

/* Little-endian integers at any alignment: the protocol's byte order, whatever the host's. */
static void lpm__put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static void lpm__put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void lpm__put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint16_t lpm__get16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t lpm__get32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t lpm__get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int64_t lpm__now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void lpm__close(int fd) {
    /* Never retried on EINTR: on Linux the descriptor is released whatever close returns. */
    if (fd >= 0) (void)close(fd);
}

static void lpm__violation(lpm_worker *w, const char *reason) {
    fprintf(stderr, "worker %ld: protocol violation from the supervisor: %s\n", (long)getpid(), reason);
    lpm_exit(w, LPM_EXIT_PROTOCOL);
}

static void *lpm__grow(void *p, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    void *q = realloc(p, c * item);
    if (q == NULL) {
        fprintf(stderr, "worker %ld: out of memory\n", (long)getpid());
        abort();
    }
    *cap = c;
    return q;
}

/* Outgoing frames */

static unsigned char *lpm__frame(lpm_worker *w, int type, unsigned flags, uint64_t id, size_t length) {
    if (w->out_start == w->out_len) w->out_start = w->out_len = 0;
    w->out = (unsigned char *)lpm__grow(w->out, &w->out_cap, w->out_len + LPM__HEADER + length, 1);
    unsigned char *h = w->out + w->out_len;
    h[0] = LPM__MAGIC;
    h[1] = LPM_PROTOCOL_VERSION;
    h[2] = (unsigned char)type;
    h[3] = (unsigned char)flags;
    lpm__put32(h + 4, (uint32_t)length);
    lpm__put64(h + 8, id);
    w->out_len += LPM__HEADER + length;
    return h + LPM__HEADER;
}

static void lpm__send(lpm_worker *w, int type, uint64_t id, const void *data, size_t size) {
    unsigned char *p = lpm__frame(w, type, 0, id, size);
    if (size) memcpy(p, data, size);
}

/* Queues a frame that carries `fd` (the library owns it from now on and closes it once sent). */
static void lpm__send_fd(lpm_worker *w, int type, unsigned flags, uint64_t id, int fd, const void *data, size_t size) {
    w->out_fds = (struct lpm__outfd *)lpm__grow(w->out_fds, &w->cap_out_fds, w->n_out_fds + 1, sizeof *w->out_fds);
    if (w->out_start == w->out_len) w->out_start = w->out_len = 0;
    w->out_fds[w->n_out_fds].offset = w->out_len;
    w->out_fds[w->n_out_fds].fd = fd;
    w->n_out_fds++;
    unsigned char *p = lpm__frame(w, type, flags | LPM_FLAG_DESCRIPTOR, id, size);
    if (size) memcpy(p, data, size);
}

/* Writes as much as the socket takes now. A frame that carries a descriptor starts a sendmsg of
 * its own, so that the descriptor arrives with the frame's first byte. Returns 1 when
 * everything is written, 0 when the socket is full. */
static int lpm__flush(lpm_worker *w) {
    while (w->out_start < w->out_len) {
        size_t stop = w->out_len;
        int passing = -1;
        if (w->n_out_fds > 0) {
            if (w->out_fds[0].offset > w->out_start) {
                stop = w->out_fds[0].offset;
            } else {
                passing = w->out_fds[0].fd;
                if (w->n_out_fds > 1) stop = w->out_fds[1].offset;
            }
        }
        struct iovec iov;
        iov.iov_base = w->out + w->out_start;
        iov.iov_len = stop - w->out_start;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } control;
        if (passing >= 0) {
            memset(&control, 0, sizeof control);
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &passing, sizeof(int));
        }
        ssize_t n = sendmsg(w->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            /* What is queued can never be written: drop it. EPIPE or ECONNRESET: the supervisor
             * is gone, as at end of file; anything else: the channel failed. */
            int gone = errno == EPIPE || errno == ECONNRESET;
            if (!gone) fprintf(stderr, "worker %ld: the channel failed: send: %s\n", (long)getpid(), strerror(errno));
            w->out_start = w->out_len = 0;
            if (w->exiting) return 1;
            lpm_exit(w, gone ? LPM_EXIT_OK : LPM_EXIT_CHANNEL_FAILED);
        }
        w->out_start += (size_t)n;
        if (passing >= 0) {
            lpm__close(passing);
            w->n_out_fds--;
            memmove(w->out_fds, w->out_fds + 1, w->n_out_fds * sizeof *w->out_fds);
        }
    }
    w->out_start = w->out_len = 0;
    if (w->out_cap > LPM__RETAINED) {
        /* A large frame is out: give its memory back. */
        free(w->out);
        w->out = NULL;
        w->out_cap = 0;
    }
    return 1;
}

/* Writes everything queued, waiting for the socket as long as it takes. */
static void lpm__flush_blocking(lpm_worker *w) {
    while (!lpm__flush(w)) {
        struct pollfd p;
        p.fd = w->fd;
        p.events = POLLOUT;
        p.revents = 0;
        (void)poll(&p, 1, 1000);
    }
}

/* Requests in hand */

static struct lpm__inhand *lpm__find(lpm_worker *w, uint64_t id) {
    for (size_t i = 0; i < w->n_in_hand; i++)
        if (w->in_hand[i].id == id) return &w->in_hand[i];
    return NULL;
}

static void lpm__forget(lpm_worker *w, struct lpm__inhand *r) {
    *r = w->in_hand[--w->n_in_hand];
}

static void lpm__maybe_finish_soft_kill(lpm_worker *w) {
    if (!w->soft_kill_requested || w->soft_kill_running || w->n_in_hand > 0 || w->state == 2) return;
    if (w->on_soft_kill) {
        w->soft_kill_running = 1;
        w->on_soft_kill(w, w->on_soft_kill_user);
    } else {
        lpm_exit(w, LPM_EXIT_OK);
    }
}

static int lpm__answer(lpm_worker *w, uint64_t id, int type, const void *data, size_t size) {
    struct lpm__inhand *r = lpm__find(w, id);
    if (r == NULL || r->streaming) return -1;
    lpm__forget(w, r);
    if (size > w->max_payload) {
        /* The supervisor would take a frame this large as a violation: fail the request instead. */
        char message[160];
        int n = snprintf(message, sizeof message, "the response of %zu bytes exceeds the largest frame (%zu bytes)",
                         size, w->max_payload);
        lpm__send(w, LPM_FRAME_ERROR, id, message, (size_t)n);
    } else {
        lpm__send(w, type, id, data, size);
    }
    lpm__maybe_finish_soft_kill(w);
    return 0;
}

/* Public API: set-up */

lpm_worker *lpm_try_connect(char *error, size_t error_size) {
    char scratch[1];
    if (error == NULL) { error = scratch; error_size = sizeof scratch; }
    const char *raw = getenv("LPM_CHANNEL_FD");
    char *end = NULL;
    long fd = raw ? strtol(raw, &end, 10) : -1;
    if (raw == NULL || *raw == '\0' || *end != '\0' || fd < 0 || fd > 65535 || fcntl((int)fd, F_GETFD) < 0) {
        snprintf(error, error_size, "this process was not started by a Supervisor (LPM_CHANNEL_FD is not set to an open descriptor)");
        return NULL;
    }
    size_t max_payload = LPM__DEFAULT_MAX_PAYLOAD;
    const char *mp = getenv("LPM_MAX_FRAME");
    if (mp != NULL) {
        unsigned long long v = strtoull(mp, &end, 10);
        if (*mp == '\0' || *end != '\0' || v > LPM__MAX_PAYLOAD_LIMIT) {
            snprintf(error, error_size, "LPM_MAX_FRAME=%s is not a size from 0 to %u", mp, LPM__MAX_PAYLOAD_LIMIT);
            return NULL;
        }
        max_payload = (size_t)v;
    }
    /* Nothing this worker runs may inherit the channel: a child holding it would keep the
     * supervisor from seeing end of file when the worker dies. */
    int fdflags = fcntl((int)fd, F_GETFD);
    if (fdflags < 0 || fcntl((int)fd, F_SETFD, fdflags | FD_CLOEXEC) < 0) {
        snprintf(error, error_size, "fcntl(F_SETFD): %s", strerror(errno));
        return NULL;
    }
    /* Non-blocking (the supervisor creates it so; this makes sure): lpm_poll waits in poll(). */
    int flflags = fcntl((int)fd, F_GETFL);
    if (flflags < 0 || fcntl((int)fd, F_SETFL, flflags | O_NONBLOCK) < 0) {
        snprintf(error, error_size, "fcntl(F_SETFL): %s", strerror(errno));
        return NULL;
    }
    /* The supervisor set the death signal at spawn; set it again for a worker started through
     * a set-user-ID program, then check the supervisor did not die before it took effect. */
    (void)prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL);
    const char *parent = getenv("LPM_PARENT_PID");
    if (parent != NULL && strtol(parent, NULL, 10) != (long)getppid()) exit(LPM_EXIT_OK);

    lpm_worker *w = (lpm_worker *)calloc(1, sizeof *w);
    if (w == NULL) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    w->fd = (int)fd;
    w->max_payload = max_payload;
    const char *slot = getenv("LPM_WORKER_SLOT");
    w->slot = slot != NULL && *slot != '\0' ? (int)strtol(slot, NULL, 10) : -1;
    return w;
}

lpm_worker *lpm_connect(void) {
    char error[256];
    lpm_worker *w = lpm_try_connect(error, sizeof error);
    if (w == NULL) {
        fprintf(stderr, "worker: %s\n", error);
        exit(LPM_EXIT_USAGE);
    }
    return w;
}

int lpm_slot(const lpm_worker *w) { return w->slot; }
size_t lpm_max_payload(const lpm_worker *w) { return w->max_payload; }
int lpm_fd(const lpm_worker *w) { return w->fd; }
size_t lpm_in_hand(const lpm_worker *w) { return w->n_in_hand; }

void lpm_on_request(lpm_worker *w, lpm_request_fn fn, void *user) { w->on_request = fn; w->on_request_user = user; }
void lpm_on_cancel(lpm_worker *w, lpm_cancel_fn fn, void *user) { w->on_cancel = fn; w->on_cancel_user = user; }
void lpm_on_soft_kill(lpm_worker *w, lpm_soft_kill_fn fn, void *user) { w->on_soft_kill = fn; w->on_soft_kill_user = user; }
void lpm_on_hard_kill(lpm_worker *w, lpm_hard_kill_fn fn, void *user) { w->on_hard_kill = fn; w->on_hard_kill_user = user; }
void lpm_on_health(lpm_worker *w, lpm_health_fn fn, void *user) { w->on_health = fn; w->on_health_user = user; }

int lpm_on(lpm_worker *w, const char *name, lpm_event_fn fn, void *user) {
    if (name == NULL) {
        w->any_event = fn;
        w->any_event_user = user;
        return 0;
    }
    for (size_t i = 0; i < w->n_handlers; i++) {
        if (strcmp(w->handlers[i].name, name) == 0) {
            w->handlers[i].fn = fn;
            w->handlers[i].user = user;
            return 0;
        }
    }
    struct lpm__handler *h = (struct lpm__handler *)realloc(w->handlers, (w->n_handlers + 1) * sizeof *h);
    if (h == NULL) return -1;
    w->handlers = h;
    size_t n = strlen(name);
    char *copy = (char *)malloc(n + 1);
    if (copy == NULL) return -1;
    memcpy(copy, name, n + 1);
    h[w->n_handlers].name = copy;
    h[w->n_handlers].fn = fn;
    h[w->n_handlers].user = user;
    w->n_handlers++;
    return 0;
}

/* Public API: answers and events */

void lpm_ready(lpm_worker *w) {
    if (w->state == 1) return;
    w->state = 1;
    lpm__send(w, LPM_FRAME_READY, 0, NULL, 0);
    lpm__maybe_finish_soft_kill(w);
}

void lpm_busy(lpm_worker *w) {
    if (w->state == 2) return;
    w->state = 2;
    lpm__send(w, LPM_FRAME_BUSY, 0, NULL, 0);
}

int lpm_respond(lpm_worker *w, uint64_t id, const void *data, size_t size) {
    return lpm__answer(w, id, LPM_FRAME_RESPONSE, data, size);
}

int lpm_ack(lpm_worker *w, uint64_t id) { return lpm__answer(w, id, LPM_FRAME_ACK, NULL, 0); }

int lpm_fail(lpm_worker *w, uint64_t id, const char *message) {
    return lpm__answer(w, id, LPM_FRAME_ERROR, message, message ? strlen(message) : 0);
}

int lpm_respond_stream(lpm_worker *w, uint64_t id, const void *data, size_t size) {
    struct lpm__inhand *r = lpm__find(w, id);
    if (r == NULL || r->streaming) return -1;
    if (size > w->max_payload) {
        lpm__answer(w, id, LPM_FRAME_RESPONSE, data, size);  /* sent as an error saying why */
        return -1;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        char message[128];
        snprintf(message, sizeof message, "could not create the response stream: %s", strerror(errno));
        lpm_fail(w, id, message);
        return -1;
    }
    r->streaming = 1;
    lpm__send_fd(w, LPM_FRAME_RESPONSE, LPM_FLAG_STREAM, id, pair[0], data, size);
    /* The response must be out before the caller writes the stream: the supervisor reads the
     * stream only once it has the response, and a stream larger than the socket's buffer would
     * otherwise wait for ever. */
    lpm__flush_blocking(w);
    return pair[1];
}

int lpm_stream_end(lpm_worker *w, uint64_t id, int fd, uint64_t count, int ok) {
    lpm__close(fd);
    struct lpm__inhand *r = lpm__find(w, id);
    if (r == NULL || !r->streaming) return -1;
    lpm__forget(w, r);
    unsigned char *p = lpm__frame(w, LPM_FRAME_STREAM_END, 0, id, 9);
    lpm__put64(p, count);
    p[8] = ok ? 0 : 1;
    lpm__maybe_finish_soft_kill(w);
    return 0;
}

void lpm_close_socket(lpm_worker *w, uint64_t id, int fd) {
    lpm__close(fd);
    lpm__send(w, LPM_FRAME_SOCKET_CLOSED, id, NULL, 0);
}

static int lpm__emit(lpm_worker *w, const char *name, const void *data, size_t size, uint64_t id) {
    size_t n = strlen(name);
    if (n > 65535) n = 65535;
    if (2 + n + size > w->max_payload) return -1;
    unsigned char *p = lpm__frame(w, LPM_FRAME_EVENT, 0, id, 2 + n + size);
    lpm__put16(p, (uint16_t)n);
    memcpy(p + 2, name, n);
    if (size) memcpy(p + 2 + n, data, size);
    return 0;
}

int lpm_emit(lpm_worker *w, const char *name, const void *data, size_t size) {
    return lpm__emit(w, name, data, size, 0);
}

int lpm_emit_ask(lpm_worker *w, const char *name, const void *data, size_t size, lpm_reply_fn fn, void *user) {
    uint64_t id = ++w->next_event_id;
    if (lpm__emit(w, name, data, size, id) < 0) return -1;
    w->pending = (struct lpm__pending *)lpm__grow(w->pending, &w->cap_pending, w->n_pending + 1, sizeof *w->pending);
    w->pending[w->n_pending].id = id;
    w->pending[w->n_pending].fn = fn;
    w->pending[w->n_pending].user = user;
    w->n_pending++;
    return 0;
}

int lpm_reply(lpm_worker *w, uint64_t reply_id, const void *data, size_t size) {
    if (reply_id == 0 || size > w->max_payload) return -1;
    lpm__send(w, LPM_FRAME_EVENT_REPLY, reply_id, data, size);
    return 0;
}

/* Public API: timers */

uint64_t lpm_after(lpm_worker *w, int64_t delay_ms, lpm_timer_fn fn, void *user) {
    w->timers = (struct lpm__timer *)lpm__grow(w->timers, &w->cap_timers, w->n_timers + 1, sizeof *w->timers);
    struct lpm__timer *t = &w->timers[w->n_timers++];
    t->id = ++w->next_timer_id;
    t->due_ns = lpm__now_ns() + (delay_ms > 0 ? delay_ms : 0) * 1000000;
    t->fn = fn;
    t->user = user;
    return t->id;
}

void lpm_cancel_timer(lpm_worker *w, uint64_t timer) {
    for (size_t i = 0; i < w->n_timers; i++) {
        if (w->timers[i].id == timer) {
            memmove(&w->timers[i], &w->timers[i + 1], (w->n_timers - i - 1) * sizeof *w->timers);
            w->n_timers--;
            return;
        }
    }
}

/* Runs the timers that are due, earliest first; a timer added by one of them waits for the
 * next iteration. */
static void lpm__run_timers(lpm_worker *w) {
    int64_t now = lpm__now_ns();
    uint64_t last = w->next_timer_id;
    for (;;) {
        size_t best = w->n_timers;
        for (size_t i = 0; i < w->n_timers; i++) {
            if (w->timers[i].due_ns <= now && w->timers[i].id <= last &&
                (best == w->n_timers || w->timers[i].due_ns < w->timers[best].due_ns)) best = i;
        }
        if (best == w->n_timers) return;
        struct lpm__timer t = w->timers[best];
        memmove(&w->timers[best], &w->timers[best + 1], (w->n_timers - best - 1) * sizeof *w->timers);
        w->n_timers--;
        t.fn(w, t.user);
    }
}

/* Incoming frames */

static void lpm__health(lpm_worker *w, uint64_t seq) {
    uint64_t total = 0, used = 0;
    if (w->on_health) {
        w->on_health(w, &total, &used, w->on_health_user);
    } else {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
        struct mallinfo2 m = mallinfo2();
        total = (uint64_t)(m.arena + m.hblkhd);
        used = (uint64_t)(m.uordblks + m.hblkhd);
#endif
    }
    unsigned char *p = lpm__frame(w, LPM_FRAME_HEALTH_REPORT, 0, seq, 16);
    lpm__put64(p, total);
    lpm__put64(p + 8, used);
}

static void lpm__event(lpm_worker *w, int type, uint64_t id, const unsigned char *payload, size_t length, int *fd) {
    if (length < 2) lpm__violation(w, "event payload shorter than 2 bytes");
    size_t n = lpm__get16(payload);
    if (2 + n > length) lpm__violation(w, "event name runs past the payload");
    char small[256];
    char *name = n < sizeof small ? small : (char *)malloc(n + 1);
    if (name == NULL) { fprintf(stderr, "worker %ld: out of memory\n", (long)getpid()); abort(); }
    memcpy(name, payload + 2, n);
    name[n] = '\0';
    lpm_event ev;
    ev.name = name;
    ev.name_len = n;
    ev.data = payload + 2 + n;
    ev.size = length - 2 - n;
    ev.reply_id = type == LPM_FRAME_EVENT ? id : 0;
    ev.is_broadcast = type == LPM_FRAME_BROADCAST;
    ev.fd = *fd;
    lpm_event_fn fn = w->any_event;
    void *user = w->any_event_user;
    for (size_t i = 0; i < w->n_handlers; i++) {
        if (strlen(w->handlers[i].name) == n && memcmp(w->handlers[i].name, payload + 2, n) == 0) {
            fn = w->handlers[i].fn;
            user = w->handlers[i].user;
            break;
        }
    }
    if (fn) fn(w, &ev, user);
    *fd = ev.fd;  /* -1 when the handler kept it */
    if (name != small) free(name);
}

static void lpm__frame_in(lpm_worker *w, int type, unsigned flags, uint64_t id, const unsigned char *payload,
                          size_t length, int fd) {
    switch (type) {
    case LPM_FRAME_REQUEST: {
        if (length < LPM__REQUEST_HEAD) {
            lpm__close(fd);
            lpm__violation(w, "request shorter than its 24-byte head");
        }
        lpm_request req;
        req.id = id;
        memcpy(req.uuid, payload, 16);
        req.created_at = lpm__get64(payload + 16);
        req.data = payload + LPM__REQUEST_HEAD;
        req.size = length - LPM__REQUEST_HEAD;
        req.fd = fd;
        req.is_stream = fd >= 0 && (flags & LPM_FLAG_STREAM) != 0;
        fd = -1;
        if (lpm__find(w, id) == NULL) {
            w->in_hand = (struct lpm__inhand *)lpm__grow(w->in_hand, &w->cap_in_hand, w->n_in_hand + 1, sizeof *w->in_hand);
            w->in_hand[w->n_in_hand].id = id;
            w->in_hand[w->n_in_hand].streaming = 0;
            w->n_in_hand++;
        }
        if (w->on_request) {
            w->on_request(w, &req, w->on_request_user);
        } else {
            lpm_fail(w, id, "this worker has no request handler");
        }
        if (req.fd >= 0) {
            if (req.is_stream) lpm__close(req.fd); else lpm_close_socket(w, id, req.fd);
        }
        break;
    }
    case LPM_FRAME_EVENT:
    case LPM_FRAME_BROADCAST:
        lpm__event(w, type, id, payload, length, &fd);
        break;
    case LPM_FRAME_EVENT_REPLY:
        for (size_t i = 0; i < w->n_pending; i++) {
            if (w->pending[i].id == id) {
                struct lpm__pending p = w->pending[i];
                w->pending[i] = w->pending[--w->n_pending];
                p.fn(w, payload, length, p.user);
                break;
            }
        }
        break;  /* a reply to an id not awaited is ignored */
    case LPM_FRAME_HEALTH_REQUEST:
        lpm__health(w, id);
        break;
    case LPM_FRAME_SOFT_KILL:
        w->soft_kill_requested = 1;
        lpm__maybe_finish_soft_kill(w);
        break;
    case LPM_FRAME_HARD_KILL:
        if (w->on_hard_kill) w->on_hard_kill(w, w->on_hard_kill_user);
        lpm__close(fd);
        lpm_exit(w, LPM_EXIT_OK);
        break;
    case LPM_FRAME_CANCEL: {
        struct lpm__inhand *r = lpm__find(w, id);
        if (r != NULL) {
            lpm__forget(w, r);
            if (w->on_cancel) w->on_cancel(w, id, w->on_cancel_user);
            lpm__maybe_finish_soft_kill(w);
        }
        break;
    }
    case LPM_FRAME_PING:
        lpm__send(w, LPM_FRAME_PONG, id, NULL, 0);
        break;
    case LPM_FRAME_PONG:
        break;
    default: {
        char reason[64];
        snprintf(reason, sizeof reason, "a supervisor may not send frames of type %d", type);
        lpm__close(fd);
        lpm__violation(w, reason);
    }
    }
    lpm__close(fd);  /* a descriptor nobody kept */
}

/* Makes room for LPM__READ_ROOM more bytes; the buffer grows as bytes arrive, never on a
 * header's word alone. */
static void lpm__reserve(lpm_worker *w) {
    if (w->in_start == w->in_end) w->in_start = w->in_end = 0;
    if (w->in_cap - w->in_end >= LPM__READ_ROOM) return;
    if (w->in_start > 0) {
        memmove(w->in, w->in + w->in_start, w->in_end - w->in_start);
        w->in_end -= w->in_start;
        w->in_start = 0;
        if (w->in_cap - w->in_end >= LPM__READ_ROOM) return;
    }
    size_t cap = w->in_cap ? w->in_cap : LPM__READ_ROOM;
    while (cap - w->in_end < LPM__READ_ROOM) cap *= 2;
    unsigned char *p = (unsigned char *)realloc(w->in, cap);
    if (p == NULL) { fprintf(stderr, "worker %ld: out of memory\n", (long)getpid()); abort(); }
    w->in = p;
    w->in_cap = cap;
}

/* One recvmsg, then every complete frame in the buffer. */
static void lpm__receive(lpm_worker *w) {
    lpm__reserve(w);
    struct iovec iov;
    iov.iov_base = w->in + w->in_end;
    iov.iov_len = w->in_cap - w->in_end;
    union { struct cmsghdr align; char buf[CMSG_SPACE(LPM__MAX_FDS * sizeof(int))]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do {
        n = recvmsg(w->fd, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        /* ECONNRESET: the supervisor closed its end with frames of ours unread. Gone, as at
         * end of file. */
        if (errno == ECONNRESET) lpm_exit(w, LPM_EXIT_OK);
        fprintf(stderr, "worker %ld: the channel failed: recvmsg: %s\n", (long)getpid(), strerror(errno));
        lpm_exit(w, LPM_EXIT_CHANNEL_FAILED);
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (w->nfds < sizeof w->fds / sizeof w->fds[0]) w->fds[w->nfds++] = fd; else lpm__close(fd);
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        lpm__violation(w, "more descriptors in one message than there is room for (MSG_CTRUNC)");
    }
    if (n == 0) lpm_exit(w, LPM_EXIT_OK);  /* end of file: the supervisor is gone */
    w->in_end += (size_t)n;

    while (w->in_end - w->in_start >= LPM__HEADER) {
        const unsigned char *h = w->in + w->in_start;
        if (h[0] != LPM__MAGIC) lpm__violation(w, "bad magic byte");
        if (h[1] != LPM_PROTOCOL_VERSION) lpm__violation(w, "unsupported protocol version");
        int type = h[2];
        unsigned flags = h[3];
        size_t length = lpm__get32(h + 4);
        uint64_t id = lpm__get64(h + 8);
        if (length > w->max_payload) lpm__violation(w, "a frame's payload exceeds LPM_MAX_FRAME");
        if (w->in_end - w->in_start - LPM__HEADER < length) break;
        w->in_start += LPM__HEADER + length;
        int fd = -1;
        if (flags & (LPM_FLAG_DESCRIPTOR | LPM_FLAG_STREAM)) {
            if (w->nfds == 0) lpm__violation(w, "a frame announced a descriptor that did not arrive");
            fd = w->fds[0];
            w->nfds--;
            memmove(w->fds, w->fds + 1, w->nfds * sizeof w->fds[0]);
        }
        /* The payload stays where it is until the next receive: handlers cannot receive. */
        lpm__frame_in(w, type, flags, id, h + LPM__HEADER, length, fd);
    }
    /* Descriptor rule: only the frame still being received may have its descriptor here. */
    size_t pending = w->in_end - w->in_start;
    size_t allowed = 0;
    if (pending > 0 && (pending < LPM__HEADER || (w->in[w->in_start + 3] & (LPM_FLAG_DESCRIPTOR | LPM_FLAG_STREAM)))) allowed = 1;
    if (w->nfds > allowed) lpm__violation(w, "descriptors arrived that no frame announced");
    if (pending == 0 && w->in_cap > LPM__RETAINED) {
        /* A large frame is decoded: give its memory back. */
        free(w->in);
        w->in = NULL;
        w->in_cap = 0;
        w->in_start = w->in_end = 0;
    }
}

/* Public API: the loop */

int lpm_poll(lpm_worker *w, int timeout_ms) {
    lpm__run_timers(w);
    lpm__maybe_finish_soft_kill(w);
    int flushed = lpm__flush(w);
    if (w->n_timers > 0) {
        int64_t now = lpm__now_ns(), due = w->timers[0].due_ns;
        for (size_t i = 1; i < w->n_timers; i++)
            if (w->timers[i].due_ns < due) due = w->timers[i].due_ns;
        /* Rounded up, never down to 0: a timer due in 0.3 ms must not spin. */
        int64_t wait = due <= now ? 0 : (due - now + 999999) / 1000000;
        if (wait > 2000000000) wait = 2000000000;
        if (timeout_ms < 0 || wait < timeout_ms) timeout_ms = (int)wait;
    }
    struct pollfd p;
    p.fd = w->fd;
    p.events = (short)(POLLIN | (flushed ? 0 : POLLOUT));
    p.revents = 0;
    int r = poll(&p, 1, timeout_ms);
    if (r > 0) {
        if (p.revents & POLLOUT) (void)lpm__flush(w);
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) lpm__receive(w);
    }
    lpm__run_timers(w);
    lpm__maybe_finish_soft_kill(w);
    (void)lpm__flush(w);
    return 0;
}

void lpm_run(lpm_worker *w) {
    for (;;) (void)lpm_poll(w, -1);
}

void lpm_exit(lpm_worker *w, int status) {
    if (!w->exiting) {
        w->exiting = 1;
        if (status != LPM_EXIT_CHANNEL_FAILED) lpm__flush_blocking(w);
        lpm__close(w->fd);
    }
    exit(status);
}

#endif /* LPM_WORKER_IMPLEMENTATION */
