// cloop_ring.h: what the shared-memory rings (LPMWire's SharedRing) need from C.
//
// The same rules as cloop.h: no _GNU_SOURCE, GNU-only prototypes declared by hand, one-line
// `static inline` shims prefixed `cloop_`. The atomics are here because a ring's indices and
// flags live in memory shared with another process: Swift's `Atomic` cannot be laid over a
// mapping, so each access goes through a GCC/Clang `__atomic` builtin with its memory order
// spelled out. The order of these calls on both sides is the protocol (docs/PROTOCOL.md,
// "Shared-memory rings").
#ifndef CLOOP_RING_H
#define CLOOP_RING_H

#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <linux/memfd.h>

// glibc 2.27+, kernel 3.17+: an anonymous memory file (declared under __USE_GNU).
extern int memfd_create(const char *_Nonnull name, unsigned int flags);

// Kernel 3.17+: file seals, for fcntl(2) (<fcntl.h> declares them only under __USE_GNU). The
// creator seals the ring object's size, so a peer cannot truncate it under a mapping (a read
// past the end of a shrunk memfd raises SIGBUS).
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

// The indices and flags are 8- and 4-byte atomics: lock-free on every 64-bit target.
_Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics must be lock-free for shared memory");
_Static_assert(__atomic_always_lock_free(4, 0), "32-bit atomics must be lock-free for shared memory");

// __atomic_load_n(p, __ATOMIC_ACQUIRE): the peer's index; what it published before is visible after.
static inline uint64_t cloop_atomic_load_n_u64_acquire(const uint64_t *_Nonnull p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
// __atomic_load_n(p, __ATOMIC_RELAXED): a flag, ordered by the fence before it.
static inline uint32_t cloop_atomic_load_n_u32_relaxed(const uint32_t *_Nonnull p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
// __atomic_store_n(p, v, __ATOMIC_RELEASE): publishes an index; the bytes written before it go first.
static inline void cloop_atomic_store_n_u64_release(uint64_t *_Nonnull p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
// __atomic_store_n(p, v, __ATOMIC_RELAXED): sets or clears a flag, ordered by the fence after it.
static inline void cloop_atomic_store_n_u32_relaxed(uint32_t *_Nonnull p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
// __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL): claims a wake-up flag, so one side rings once per sleep.
static inline uint32_t cloop_atomic_exchange_n_u32_acq_rel(uint32_t *_Nonnull p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
// __atomic_thread_fence(__ATOMIC_SEQ_CST): the full fence between a store and a later load of the
// other side's variable (the store-buffer race; see docs/PROTOCOL.md).
static inline void cloop_atomic_thread_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// A CPU spin-wait hint (x86 PAUSE, arm64 YIELD): compiler builtins, not importable.
#if defined(__x86_64__) || defined(__i386__)
static inline void cloop_cpu_relax(void) { __builtin_ia32_pause(); }
#elif defined(__aarch64__)
static inline void cloop_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cloop_cpu_relax(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#endif

#endif
