/*
 * malloc_count.c: an LD_PRELOAD allocation counter for compare.sh's "allocations per request"
 * rows. It counts malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign and valloc
 * calls (every thread) and hands them to glibc's own allocator (__libc_*), so it needs no dlsym
 * bootstrap. A process reads its count with dlsym(RTLD_DEFAULT, "lpm_malloc_count").
 *
 * Build: gcc -O2 -shared -fPIC -o malloc_count.so malloc_count.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static unsigned long counter;

#define COUNT() __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED)

unsigned long lpm_malloc_count(void) { return __atomic_load_n(&counter, __ATOMIC_RELAXED); }

void *malloc(size_t n) { COUNT(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { COUNT(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { COUNT(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { COUNT(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { COUNT(); return __libc_memalign(a, n); }
void *valloc(size_t n) { COUNT(); return __libc_memalign(4096, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    COUNT();
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
