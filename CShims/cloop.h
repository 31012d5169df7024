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
#include <dlfcn.h>
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
// glibc 2.9+, GNU extension: dup2 that refuses equal numbers and takes flags (declared under __USE_GNU).
extern int dup3(int oldfd, int newfd, int flags);
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

// Variadic syscall(2): clone(2) as a fork(2) whose child gets the caller's parent as its own
// (CLONE_PARENT), so that the caller's parent can watch and reap it. glibc's clone wrapper needs
// a stack; the raw call with no stack copies the caller's, as fork does. As glibc's own fork,
// CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID with `tid`, the address of the `tid` field of the
// calling thread's descriptor (struct pthread): the kernel writes the child's thread id there,
// else glibc's copy would keep the caller's. Unlike fork(3) it runs no atfork handler: call it
// only from a single-threaded process. The argument order of clone differs by architecture.
#if defined(__i386__) || defined(__arm__) || defined(__powerpc__) || defined(__mips__)
static inline pid_t cloop_clone_parent(pid_t *_Nonnull tid) { return (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD), 0UL, (void *)0, 0UL, tid); }
#elif defined(__x86_64__) || defined(__aarch64__) || defined(__riscv) || defined(__loongarch__)
static inline pid_t cloop_clone_parent(pid_t *_Nonnull tid) { return (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD), 0UL, (void *)0, tid, 0UL); }
#else
#error "cloop_clone_parent: the clone(2) argument order of this architecture is not known"
#endif
// dlinfo(3) is declared under _GNU_SOURCE only (RTLD_DI_TLS_DATA = 10: the calling thread's TLS
// block of a module).
extern int dlinfo(void *_Nonnull handle, int request, void *_Nonnull arg);
// Variadic syscall(2): get_robust_list(0) and set_robust_list(2), which glibc does not wrap. A
// fork's child starts with no robust list; glibc's fork registers the thread's list again.
static inline long cloop_get_robust_list(void *_Nullable *_Nonnull head, size_t *_Nonnull length) { return syscall(SYS_get_robust_list, 0, head, length); }
static inline long cloop_set_robust_list(void *_Nullable head, size_t length) { return syscall(SYS_set_robust_list, head, length); }

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

// ---- spawning a worker: the one routine here longer than a line ----
//
// posix_spawn(3) cannot set PR_SET_PDEATHSIG between fork and exec, and a worker must die with
// its supervisor whatever its language (a worker that never runs our runtime, or has not reached
// it yet, included). So this is a small posix_spawn of our own, built the way glibc 2.24+ builds
// its own: clone(CLONE_VM | CLONE_VFORK) onto a separate stack. CLONE_VM shares the address
// space, so no page tables are copied (the cost does not grow with the parent's RSS, unlike
// fork(2)); CLONE_VFORK suspends the calling thread, and only it, until the child calls execve
// or exits. Why this is safe in a multi-threaded parent: the child runs only the function below,
// on its own stack, touching only that stack and the arguments block; it takes no lock, calls no
// malloc and runs no atfork handler, so what other threads hold or change meanwhile cannot
// matter; it makes only raw system calls through syscall(2) (async-signal-safe: no lock, no
// allocation, nothing interposed); and every signal stays blocked until its dispositions are
// back to SIG_DFL, so no handler of the parent ever runs on the shared memory. Linux, with a
// stack that grows down (x86_64, aarch64).

// glibc's clone(2) wrapper under its exported name __clone (GLIBC_2.2.5): sanitizer runtimes
// (TSan) interpose `clone` and reset their own state in the child, which with CLONE_VM is the
// parent's state. <sched.h> declares `clone` under __USE_GNU only anyway.
extern int __clone(int (*_Nonnull fn)(void *_Nullable), void *_Nullable stack, int flags, void *_Nullable arg, ...);
// Kernel 5.9+: close_range(2); number defined locally for older headers.
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
// The child must run no sanitizer code: it would run on the parent's memory and thread state.
#if __has_attribute(disable_sanitizer_instrumentation)
#define CLOOP_NO_SANITIZER __attribute__((disable_sanitizer_instrumentation))
#else
#define CLOOP_NO_SANITIZER
#endif

// What the child needs, and where it leaves a failure for the parent (shared memory, CLONE_VM).
struct cloop_spawn_args {
    const char *_Nonnull path;
    char *_Nullable const *_Nonnull argv;  // NULL-terminated
    char *_Nullable const *_Nonnull envp;  // NULL-terminated
    int channel;                           // becomes descriptor 3 in the child
    pid_t parent;                          // getpid() of the spawning process
    volatile int error;                    // errno of the step that failed; 0 if execve succeeded
    const char *volatile _Nullable failed; // the name of that step (a string literal)
};

// The child, on its own stack in the parent's address space. Ends in execve or exit_group(127).
// Every call is a raw syscall(2): async-signal-safe, and never a wrapper that a sanitizer or
// another library interposes (their code would run on the parent's memory).
static inline CLOOP_NO_SANITIZER int cloop_spawn_child(void *_Nullable raw) {
    struct cloop_spawn_args *a = (struct cloop_spawn_args *)raw;
    // Every signal is blocked (the parent blocked them before clone). Reset each disposition to
    // SIG_DFL first: a handler inherited from the parent would run on the parent's memory. An
    // all-zero kernel sigaction is SIG_DFL, no flags, empty mask (rt_sigaction(2), sigset of 8
    // bytes); zero also covers glibc's two internal signals, which its sigaction(2) refuses.
    unsigned long dfl[4] = { 0, 0, 0, 0 };
    for (int sig = 1; sig < NSIG; sig++) if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, dfl, (void *)0, 8);
    // Die with the parent: the kernel sends SIGKILL when the *thread* that called clone exits.
    // It survives execve (unless the program is set-user-ID or has file capabilities).
    if (syscall(SYS_prctl, PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL) == -1) { a->failed = "prctl(PR_SET_PDEATHSIG)"; goto fail; }
    // The parent process may have died before prctl took effect (another of its threads can end
    // it while this one is suspended): then this child was reparented and no signal will come.
    if (syscall(SYS_getppid) != a->parent) syscall(SYS_exit_group, 127);
    // A process group of its own: a Ctrl-C at the terminal reaches the supervisor only.
    if (syscall(SYS_setpgid, 0, 0) == -1) { a->failed = "setpgid"; goto fail; }
    // The channel onto 3, without CLOEXEC: dup3 with no flags clears it on the copy, but refuses
    // equal numbers (EINVAL), so clear it by hand when the channel already is 3.
    if (a->channel == 3 ? syscall(SYS_fcntl, 3, F_SETFD, 0) == -1 : syscall(SYS_dup3, a->channel, 3, 0) == -1) { a->failed = "dup3"; goto fail; }
    // Nothing else leaks into the worker, even a descriptor someone opened without CLOEXEC.
    if (syscall(SYS_close_range, 4U, ~0U, 0U) == -1) { a->failed = "close_range"; goto fail; }
    // An empty mask for the new program (execve keeps the mask); dispositions are default now.
    unsigned long none = 0;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, (void *)0, 8) == -1) { a->failed = "rt_sigprocmask"; goto fail; }
    syscall(SYS_execve, a->path, a->argv, a->envp);
    a->failed = "execve";
fail:
    a->error = errno;  // errno is the parent thread's (shared TLS); the parent reads a->error instead
    syscall(SYS_exit_group, 127);  // not _exit: sanitizers interpose it
    return 127;  // not reached
}

// Spawns `path` as a worker: returns its pid, or -errno with `*failed` naming the failed step.
// Call it from a thread that lives as long as the worker should (see PR_SET_PDEATHSIG above).
static inline pid_t cloop_spawn_worker(const char *_Nonnull path, char *_Nullable const *_Nonnull argv,
                                       char *_Nullable const *_Nonnull envp, int channel,
                                       const char *_Nullable *_Nonnull failed) {
    struct cloop_spawn_args a = { path, argv, envp, channel, getpid(), 0, NULL };
    // The child's stack, in this frame: this thread is suspended while the child uses it.
    char stack[16384] __attribute__((aligned(16)));
    // Block every signal across clone, so that none runs a handler in the child before it has
    // reset the dispositions; the child inherits this mask, the parent gets its own back.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    // SIGCHLD: an ordinary child for waitid and pidfds. Returns after the child's execve or exit.
    pid_t pid = __clone(cloop_spawn_child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    int error = pid == -1 ? errno : a.error;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid == -1) { *failed = "clone"; return -error; }
    if (error != 0) {
        // The child exited with 127 before or in execve: reap it here, nobody else knows it.
        while (waitpid(pid, NULL, 0) == -1 && errno == EINTR) {}
        *failed = a.failed;
        return -error;
    }
    return pid;
}

#endif
