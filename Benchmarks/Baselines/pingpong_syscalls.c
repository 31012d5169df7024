/*
 * pingpong_syscalls.c: the C ping-pong of baselines.c (2 processes, AF_UNIX stream socketpair,
 * 64 B round trip) with the system calls a reactor makes instead of a blocking read and write,
 * to tell what the calls cost from what the code around them costs.
 *
 * Build:  gcc -O2 -Wall -Wextra -o pingpong_syscalls pingpong_syscalls.c -luring
 * Usage:
 *   pingpong_syscalls epoll N   each side: epoll_wait, recv, send (3 calls a message, the
 *                               pattern of the reactor's epoll backend)
 *   pingpong_syscalls uring N   each side: the send and the next recv submitted together, and
 *                               one io_uring_enter that also waits for the recv (1 call a
 *                               message: a completion-based receive)
 * Prints one line: name=c_pingpong_<mode>_64B value=<ns per round trip> unit=ns/rt
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void fail(const char *what) {
    fprintf(stderr, "pingpong_syscalls: %s\n", what);
    exit(1);
}

/* One side of `count` exchanges; `first` sends first (and stops after its last receive). */
typedef void (*Side)(int fd, long count, int first);

static void side_epoll(int fd, long count, int first) {
    char buf[MSG];
    memset(buf, 0xA5, sizeof buf);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) fail("epoll");
    if (first && send(fd, buf, MSG, 0) != MSG) fail("send");
    for (long i = 0; i < count; i++) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) != 1) fail("epoll_wait");
        if (recv(fd, buf, MSG, 0) != MSG) fail("recv");
        if (first && i == count - 1) break;
        if (send(fd, buf, MSG, 0) != MSG) fail("send");
    }
    close(ep);
}

static void side_uring(int fd, long count, int first) {
    char in[MSG], out[MSG];
    memset(out, 0xA5, sizeof out);
    struct io_uring ring;
    if (io_uring_queue_init(8, &ring, 0) < 0) fail("io_uring_queue_init");
    struct io_uring_sqe *sqe;
    if (first) {
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_send(sqe, fd, out, MSG, 0);
        sqe->user_data = 2;
    }
    for (long i = 0; i < count; i++) {
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recv(sqe, fd, in, MSG, 0);
        sqe->user_data = 1;
        for (int received = 0; !received;) {
            if (io_uring_submit_and_wait(&ring, 1) < 0) fail("io_uring_submit_and_wait");
            struct io_uring_cqe *cqe;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&ring, head, cqe) {
                seen++;
                if (cqe->res < 0 || (cqe->user_data == 1 && cqe->res != MSG)) fail("a short or failed transfer");
                if (cqe->user_data == 1) received = 1;
            }
            io_uring_cq_advance(&ring, seen);
        }
        if (first && i == count - 1) break;
        memcpy(out, in, MSG);
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_send(sqe, fd, out, MSG, 0);
        sqe->user_data = 2;
    }
    if (!first && io_uring_submit_and_wait(&ring, 1) < 0) fail("the last send");
    io_uring_queue_exit(&ring);
}

int main(int argc, char **argv) {
    if (argc != 3) fail("usage: pingpong_syscalls epoll|uring N");
    Side side = strcmp(argv[1], "epoll") == 0 ? side_epoll : strcmp(argv[1], "uring") == 0 ? side_uring : NULL;
    long n = atol(argv[2]);
    if (!side || n <= 0) fail("usage: pingpong_syscalls epoll|uring N");
    long warm = n / 10 < 1000 ? 1000 : n / 10;
    if (warm > 10000) warm = 10000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) fail("socketpair");
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        close(sv[0]);
        side(sv[1], warm + n, 0);
        _exit(0);
    }
    close(sv[1]);
    side(sv[0], warm, 1);
    uint64_t t0 = now_ns();
    side(sv[0], n, 1);
    uint64_t t1 = now_ns();
    close(sv[0]);
    int status;
    waitpid(pid, &status, 0);
    printf("name=c_pingpong_%s_64B value=%.1f unit=ns/rt\n", argv[1], (double)(t1 - t0) / (double)n);
    return 0;
}
