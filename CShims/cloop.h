// CLoop: the kernel interfaces the reactor uses, for Swift.
//
// Rules (see STYLE.md): no _GNU_SOURCE (it clashes with the SwiftGlibc module), GNU-only
// prototypes are declared by hand, and shims exist only for what Swift cannot import
// (function-like macros, variadic calls, union fields). Each shim is one line, prefixed
// `cloop_`, keeping the C spelling after the prefix.
#ifndef CLOOP_H
#define CLOOP_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <time.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <linux/sched.h>
#include <liburing.h>

// ---- GNU-only prototypes, declared by hand (no _GNU_SOURCE; see the header comment) ----

// glibc 2.9+, GNU extension: pipe with O_CLOEXEC/O_NONBLOCK at creation.
extern int pipe2(int pipefd[_Nonnull 2], int flags);
// glibc 2.10+, GNU extension: accept with SOCK_CLOEXEC/SOCK_NONBLOCK at creation.
extern int accept4(int sockfd, struct sockaddr *_Nullable addr, socklen_t *_Nullable addrlen, int flags);
// glibc 2.35+, kernel 5.11+: epoll_wait with a nanosecond timeout (declared under __USE_GNU).
extern int epoll_pwait2(int epfd, struct epoll_event *_Nonnull events, int maxevents,
                        const struct timespec *_Nullable timeout, const sigset_t *_Nullable sigmask);
// glibc 2.34+, kernel 5.9+: close a range of descriptors (declared under __USE_GNU).
extern int close_range(unsigned int first, unsigned int last, int flags);

// glibc 2.34+: close every descriptor from `from` up in the child (declared under __USE_MISC
// with extensions that this header does not enable).
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *_Nonnull actions, int from);
// glibc 2.3.4+, GNU extension: pin a process to CPUs (declared under __USE_GNU).
extern int sched_setaffinity(pid_t pid, size_t cpusetsize, const cpu_set_t *_Nonnull mask);

// Kernel 5.3+ (pidfd_open) / 5.1+ (pidfd_send_signal): numbers defined locally for older headers.
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
// Kernel 2.6.17+: poll(2) peer-hangup bit; <poll.h> declares it only under __USE_GNU.
#ifndef POLLRDHUP
#define POLLRDHUP 0x2000
#endif
// Kernel 2.6.23+: recvmsg(2) flag making received descriptors CLOEXEC; declared under __USE_GNU.
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif
// Kernel 5.4+: waitid(2) idtype for a pidfd.
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
// Kernel 5.10+: pidfd_open flag, same value as O_NONBLOCK.
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif

// The epoll_event layout is packed on x86_64; Swift imports it as such. Pin it down.
#if defined(__x86_64__)
_Static_assert(sizeof(struct epoll_event) == 12, "epoll_event is packed on x86_64");
#endif

// ---- variadic calls ----

// Variadic syscall(2): pidfd_open has no glibc wrapper before 2.36.
static inline int cloop_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
// Variadic syscall(2): pidfd_send_signal has no glibc wrapper before 2.36.
static inline int cloop_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, (void *)0, 0); }
// Variadic syscall(2): gettid as a raw call (async-signal-safe, no glibc cache).
static inline pid_t cloop_gettid(void) { return (pid_t)syscall(SYS_gettid); }
// Variadic syscall(2): tgkill, async-signal-safe; used by the signal forwarder.
static inline int cloop_tgkill(pid_t tgid, pid_t tid, int sig) { return (int)syscall(SYS_tgkill, tgid, tid, sig); }
// Variadic fcntl(2) with an int argument.
static inline int cloop_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
// Variadic prctl(2) with one unsigned long argument (PR_SET_PDEATHSIG, PR_SET_NAME...).
static inline int cloop_prctl1(int option, unsigned long arg) { return prctl(option, arg, 0UL, 0UL, 0UL); }
// Variadic open(2) without a mode.
static inline int cloop_open(const char *_Nonnull path, int flags) { return open(path, flags); }

// ---- errno (a macro over a thread-local function call) ----

// errno is a function-like macro in glibc.
static inline int cloop_errno(void) { return errno; }
// errno is a function-like macro in glibc.
static inline void cloop_set_errno(int value) { errno = value; }

// ---- siginfo_t union fields ----

// si_code/si_status/si_pid live in unions Swift cannot name portably.
static inline int cloop_siginfo_si_code(const siginfo_t *_Nonnull info) { return info->si_code; }
// Union field accessor.
static inline int cloop_siginfo_si_status(const siginfo_t *_Nonnull info) { return info->si_status; }
// Union field accessor.
static inline pid_t cloop_siginfo_si_pid(const siginfo_t *_Nonnull info) { return info->si_pid; }

// ---- cmsg macros (SCM_RIGHTS) ----

// Function-like macro.
static inline size_t cloop_CMSG_SPACE(size_t len) { return CMSG_SPACE(len); }
// Function-like macro.
static inline size_t cloop_CMSG_LEN(size_t len) { return CMSG_LEN(len); }
// Function-like macro.
static inline struct cmsghdr *_Nullable cloop_CMSG_FIRSTHDR(const struct msghdr *_Nonnull msg) { return CMSG_FIRSTHDR(msg); }
// Function-like macro.
static inline struct cmsghdr *_Nullable cloop_CMSG_NXTHDR(struct msghdr *_Nonnull msg, struct cmsghdr *_Nonnull cmsg) { return CMSG_NXTHDR(msg, cmsg); }
// Function-like macro.
static inline unsigned char *_Nonnull cloop_CMSG_DATA(struct cmsghdr *_Nonnull cmsg) { return CMSG_DATA(cmsg); }

// ---- sigset and CPU set macros ----

// Function-like macro (bits/cpu-set.h): CPU_ZERO is GNU-only, its __CPU_ZERO_S form is not.
static inline void cloop_CPU_ZERO(cpu_set_t *_Nonnull set) { __CPU_ZERO_S(sizeof(cpu_set_t), set); }
// Function-like macro (bits/cpu-set.h): CPU_SET is GNU-only, its __CPU_SET_S form is not.
static inline void cloop_CPU_SET(int cpu, cpu_set_t *_Nonnull set) { __CPU_SET_S((size_t)cpu, sizeof(cpu_set_t), set); }

// ---- io_uring ----

// io_uring_setup(2) probe through liburing; returns -errno (liburing does not set errno).
static inline int cloop_io_uring_queue_init(unsigned entries, struct io_uring *_Nonnull ring, unsigned flags) { return io_uring_queue_init(entries, ring, flags); }
// Expression-valued constant: IORING_CQE_F_MORE.
static inline unsigned cloop_IORING_CQE_F_MORE(void) { return IORING_CQE_F_MORE; }

#endif
