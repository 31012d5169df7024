/*
 * echo_worker.c: a LoadProcessManager worker in C, built on lpm_worker.h. It behaves exactly as
 * Examples/PythonWorker/lpm_worker.py does, so that the same conformance tests run against both.
 *
 *     cc -std=c11 -O2 -Wall -Wextra -Werror -o echo_worker echo_worker.c
 *
 * Requests:
 * - plain: answered with their own data, after --delay-ms N milliseconds (default 0, or
 *   LPM_EXAMPLE_DELAY_MS); delayed answers wait on timers, so several requests are in hand.
 *   Data "stream N" is answered with the data "stream" and a response stream of N bytes, byte i
 *   being i % 251.
 * - with a socket: the request data is written to the socket, which is then closed (the
 *   supervisor hears socketClosed), and the request answered with its data.
 * - with a stream: the stream is read to end of file, and the request answered with its bytes.
 * - cancelled: an event "cancelled" carries the request's data to the supervisor.
 * Events:
 * - "echo": replies with the event's data.
 * - "ask": asks the supervisor back (event "question", with the data, wanting a reply), and
 *   replies to the "ask" with "answer:" and the supervisor's reply.
 * - "busy" / "ready": says busy or ready, replies "busy" / "ready".
 * - any other event that wants a reply gets an empty one.
 * - broadcast "read-fd" with a descriptor: reads up to 4096 bytes from offset 0 (pread: every
 *   worker's copy shares one file offset) and emits "fd-contents" with them.
 * - broadcast "write-fd" with a descriptor: writes "<slot> <data>\n" to it in one write.
 * Soft kill: once nothing is in hand, emits "bye" with its slot number, then exits 0.
 */
#define LPM_WORKER_IMPLEMENTATION
#include "lpm_worker.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int64_t delay_ms;

/* A request answered later: its id, its data, its timer. */
struct delayed {
    uint64_t id, timer;
    size_t size;
    struct delayed *next;
    unsigned char data[];
};
static struct delayed *delayed_requests;

static void unlink_delayed(struct delayed *d) {
    for (struct delayed **p = &delayed_requests; *p; p = &(*p)->next) {
        if (*p == d) { *p = d->next; return; }
    }
}

/* Writes all of `size` bytes to `fd`, waiting when it is non-blocking and full. */
static int write_all(int fd, const void *data, size_t size, int is_socket) {
    const unsigned char *p = (const unsigned char *)data;
    while (size > 0) {
        ssize_t n = is_socket ? send(fd, p, size, MSG_NOSIGNAL) : write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd q = { .fd = fd, .events = POLLOUT, .revents = 0 };
                (void)poll(&q, 1, -1);
                continue;
            }
            return -1;
        }
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static void answer(lpm_worker *w, uint64_t id, const unsigned char *data, size_t size) {
    if (size > 7 && memcmp(data, "stream ", 7) == 0) {
        char digits[24] = {0};
        memcpy(digits, data + 7, size - 7 < sizeof digits - 1 ? size - 7 : sizeof digits - 1);
        unsigned long long count = strtoull(digits, NULL, 10);
        int fd = lpm_respond_stream(w, id, "stream", 6);
        if (fd < 0) return;
        unsigned char chunk[4096];
        unsigned long long written = 0;
        int ok = 1;
        while (ok && written < count) {
            size_t n = count - written < sizeof chunk ? (size_t)(count - written) : sizeof chunk;
            for (size_t i = 0; i < n; i++) chunk[i] = (unsigned char)((written + i) % 251);
            if (write_all(fd, chunk, n, 1) < 0) ok = 0; else written += n;
        }
        lpm_stream_end(w, id, fd, written, ok);
        return;
    }
    lpm_respond(w, id, data, size);
}

static void answer_later(lpm_worker *w, void *user) {
    struct delayed *d = (struct delayed *)user;
    unlink_delayed(d);
    answer(w, d->id, d->data, d->size);
    free(d);
}

static void on_request(lpm_worker *w, lpm_request *req, void *user) {
    (void)user;
    if (req->fd >= 0 && !req->is_stream) {
        /* A socket: the data goes to it; the library closes it and says so when this returns. */
        if (write_all(req->fd, req->data, req->size, 1) < 0) { lpm_fail(w, req->id, strerror(errno)); return; }
        lpm_respond(w, req->id, req->data, req->size);
        return;
    }
    if (req->fd >= 0) {
        /* A stream: read to end of file (it may be non-blocking: wait in poll). */
        size_t size = 0, cap = 65536;
        unsigned char *all = (unsigned char *)malloc(cap);
        for (;;) {
            if (all == NULL) { lpm_fail(w, req->id, "out of memory"); return; }
            if (size == cap) {
                unsigned char *bigger = (unsigned char *)realloc(all, cap *= 2);
                if (bigger == NULL) free(all);
                all = bigger;
                continue;
            }
            ssize_t n = read(req->fd, all + size, cap - size);
            if (n > 0) { size += (size_t)n; continue; }
            if (n == 0) break;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd q = { .fd = req->fd, .events = POLLIN, .revents = 0 };
                (void)poll(&q, 1, -1);
                continue;
            }
            lpm_fail(w, req->id, strerror(errno));
            free(all);
            return;
        }
        lpm_respond(w, req->id, all, size);
        free(all);
        return;
    }
    if (delay_ms <= 0) { answer(w, req->id, req->data, req->size); return; }
    struct delayed *d = (struct delayed *)malloc(sizeof *d + req->size);
    if (d == NULL) { lpm_fail(w, req->id, "out of memory"); return; }
    d->id = req->id;
    d->size = req->size;
    memcpy(d->data, req->data, req->size);
    d->next = delayed_requests;
    delayed_requests = d;
    d->timer = lpm_after(w, delay_ms, answer_later, d);
}

static void on_cancel(lpm_worker *w, uint64_t id, void *user) {
    (void)user;
    for (struct delayed *d = delayed_requests; d; d = d->next) {
        if (d->id == id) {
            lpm_cancel_timer(w, d->timer);
            unlink_delayed(d);
            lpm_emit(w, "cancelled", d->data, d->size);
            free(d);
            return;
        }
    }
}

static void on_echo(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    lpm_reply(w, ev->reply_id, ev->data, ev->size);
}

static void on_question_answered(lpm_worker *w, const unsigned char *data, size_t size, void *user) {
    uint64_t *ask = (uint64_t *)user;
    unsigned char *body = (unsigned char *)malloc(7 + size);
    if (body != NULL) {
        memcpy(body, "answer:", 7);
        if (size) memcpy(body + 7, data, size);
        lpm_reply(w, *ask, body, 7 + size);
        free(body);
    }
    free(ask);
}

static void on_ask(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    uint64_t *ask = (uint64_t *)malloc(sizeof *ask);
    if (ask == NULL) return;
    *ask = ev->reply_id;
    if (lpm_emit_ask(w, "question", ev->data, ev->size, on_question_answered, ask) < 0) free(ask);
}

static void on_busy(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    lpm_busy(w);
    lpm_reply(w, ev->reply_id, "busy", 4);
}

static void on_ready(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    lpm_ready(w);
    lpm_reply(w, ev->reply_id, "ready", 5);
}

static void on_read_fd(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    if (ev->fd < 0) return;
    unsigned char buffer[4096];
    ssize_t n = pread(ev->fd, buffer, sizeof buffer, 0);
    lpm_emit(w, "fd-contents", buffer, n > 0 ? (size_t)n : 0);
}

static void on_write_fd(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    if (ev->fd < 0) return;
    size_t size = ev->size + 16;
    char *line = (char *)malloc(size);
    if (line == NULL) return;
    int n = snprintf(line, size, "%d ", lpm_slot(w));
    memcpy(line + n, ev->data, ev->size);
    line[(size_t)n + ev->size] = '\n';
    (void)write_all(ev->fd, line, (size_t)n + ev->size + 1, 0);
    free(line);
}

static void on_other_event(lpm_worker *w, lpm_event *ev, void *user) {
    (void)user;
    if (ev->reply_id) lpm_reply(w, ev->reply_id, NULL, 0);
}

static void on_soft_kill(lpm_worker *w, void *user) {
    (void)user;
    char slot[16];
    int n = snprintf(slot, sizeof slot, "%d", lpm_slot(w));
    lpm_emit(w, "bye", slot, (size_t)n);
    lpm_exit(w, 0);
}

int main(int argc, char **argv) {
    const char *delay = getenv("LPM_EXAMPLE_DELAY_MS");
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--delay-ms") == 0) delay = argv[i + 1];
    delay_ms = delay ? strtoll(delay, NULL, 10) : 0;

    lpm_worker *w = lpm_connect();
    lpm_on_request(w, on_request, NULL);
    lpm_on_cancel(w, on_cancel, NULL);
    lpm_on(w, "echo", on_echo, NULL);
    lpm_on(w, "ask", on_ask, NULL);
    lpm_on(w, "busy", on_busy, NULL);
    lpm_on(w, "ready", on_ready, NULL);
    lpm_on(w, "read-fd", on_read_fd, NULL);
    lpm_on(w, "write-fd", on_write_fd, NULL);
    lpm_on(w, NULL, on_other_event, NULL);
    lpm_on_soft_kill(w, on_soft_kill, NULL);
    lpm_ready(w);
    lpm_run(w);
    return 0;
}
