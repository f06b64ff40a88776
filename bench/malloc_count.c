/*
 * malloc_count.so: an LD_PRELOAD shim that counts calls to the C allocator, so the bench
 * harness can report allocations per request for any proxy (the sidecar through Rust's System
 * allocator, nginx, HAProxy) without rebuilding it.
 *
 *   gcc -O2 -fPIC -shared -o malloc_count.so malloc_count.c -ldl
 *   MALLOC_COUNT_FILE=/tmp/mc.%p LD_PRELOAD=./malloc_count.so some-proxy ...
 *   kill -USR2 <pid>   # writes the counters to /tmp/mc.<pid>
 *
 * Counted: malloc, calloc, realloc, free and the aligned family (posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc): nginx's pools take their blocks with posix_memalign and Rust's
 * System allocator uses it for alignments over 16. Counters are process-wide relaxed atomics.
 *
 * On the dump signal (SIGUSR2, or the number in MALLOC_COUNT_SIGNAL for programs that use
 * SIGUSR2 themselves, like nginx) the handler writes one "name value" line per counter, with
 * write(2) only, to MALLOC_COUNT_FILE (a "%p" in it becomes the pid, so forked workers write
 * files of their own), through a temporary file and rename(2): a reader never sees half a file.
 *
 * Bootstrap: dlsym() itself may call calloc() before the real one is known; such calls are
 * served from a small static buffer, and free() ignores pointers into it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
typedef void *(*valloc_fn)(size_t);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static free_fn real_free;
static posix_memalign_fn real_posix_memalign;
static aligned_alloc_fn real_aligned_alloc;
static aligned_alloc_fn real_memalign;
static valloc_fn real_valloc;
static valloc_fn real_pvalloc;

static atomic_ulong n_malloc, n_calloc, n_realloc, n_free, n_memalign;

/* 0: not resolved, 1: resolving (dlsym running), 2: resolved. */
static atomic_int state;

/* Bootstrap arena for allocations made by dlsym() while the real functions are unknown. */
static _Alignas(16) unsigned char boot_buf[8192];
static size_t boot_used;

static char dump_path[4096];

static int in_boot_buf(const void *p) {
    return (const unsigned char *)p >= boot_buf && (const unsigned char *)p < boot_buf + sizeof boot_buf;
}

static void *boot_alloc(size_t size) {
    size_t start = (boot_used + 15) & ~(size_t)15;
    if (size > sizeof boot_buf - start) {
        return NULL;
    }
    boot_used = start + size;
    return boot_buf + start; /* static storage: already zeroed, good for calloc */
}

static void resolve(void) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&state, &expected, 1)) {
        /* Resolved, or another thread is resolving: wait for it (only before main, in practice). */
        while (atomic_load(&state) != 2) {
        }
        return;
    }
    real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real_free = (free_fn)dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (aligned_alloc_fn)dlsym(RTLD_NEXT, "memalign");
    real_valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
    atomic_store(&state, 2);
}

/* True while dlsym runs on this (the only) thread: serve from the bootstrap buffer. */
static int bootstrapping(void) {
    int s = atomic_load_explicit(&state, memory_order_acquire);
    if (s == 2) {
        return 0;
    }
    if (s == 1) {
        return 1;
    }
    resolve();
    return 0;
}

#define COUNT(c) atomic_fetch_add_explicit(&(c), 1, memory_order_relaxed)

void *malloc(size_t size) {
    if (bootstrapping()) {
        return boot_alloc(size);
    }
    COUNT(n_malloc);
    return real_malloc(size);
}

void *calloc(size_t n, size_t size) {
    if (bootstrapping()) {
        if (size != 0 && n > SIZE_MAX / size) {
            return NULL;
        }
        return boot_alloc(n * size);
    }
    COUNT(n_calloc);
    return real_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    if (bootstrapping() || in_boot_buf(p)) {
        /* Rare: grow a bootstrap block into a real one (old size unknown: copy what fits). */
        void *q = bootstrapping() ? boot_alloc(size) : malloc(size);
        if (q != NULL && p != NULL) {
            size_t avail = (size_t)(boot_buf + sizeof boot_buf - (unsigned char *)p);
            memcpy(q, p, size < avail ? size : avail);
        }
        return q;
    }
    COUNT(n_realloc);
    return real_realloc(p, size);
}

void free(void *p) {
    if (p == NULL || in_boot_buf(p)) {
        return;
    }
    if (bootstrapping()) {
        return; /* cannot happen for a real pointer: nothing was allocated yet */
    }
    COUNT(n_free);
    real_free(p);
}

int posix_memalign(void **out, size_t align, size_t size) {
    if (bootstrapping()) {
        return ENOMEM;
    }
    COUNT(n_memalign);
    return real_posix_memalign(out, align, size);
}

void *aligned_alloc(size_t align, size_t size) {
    if (bootstrapping()) {
        return NULL;
    }
    COUNT(n_memalign);
    return real_aligned_alloc(align, size);
}

void *memalign(size_t align, size_t size) {
    if (bootstrapping()) {
        return NULL;
    }
    COUNT(n_memalign);
    return real_memalign(align, size);
}

void *valloc(size_t size) {
    if (bootstrapping()) {
        return NULL;
    }
    COUNT(n_memalign);
    return real_valloc(size);
}

void *pvalloc(size_t size) {
    if (bootstrapping()) {
        return NULL;
    }
    COUNT(n_memalign);
    return real_pvalloc(size);
}

/* ---- dumping, async-signal-safe: no stdio, no allocation ---------------------------------- */

static size_t put_str(char *buf, size_t at, size_t cap, const char *s) {
    while (*s != '\0' && at < cap) {
        buf[at++] = *s++;
    }
    return at;
}

static size_t put_u64(char *buf, size_t at, size_t cap, unsigned long v) {
    char digits[24];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0 && at < cap) {
        buf[at++] = digits[--n];
    }
    return at;
}

/* dump_path with "%p" replaced by the pid; returns the length written. */
static size_t expand_path(char *out, size_t cap) {
    size_t at = 0;
    for (const char *s = dump_path; *s != '\0' && at + 1 < cap; s++) {
        if (s[0] == '%' && s[1] == 'p') {
            at = put_u64(out, at, cap - 1, (unsigned long)getpid());
            s++;
        } else {
            out[at++] = *s;
        }
    }
    out[at] = '\0';
    return at;
}

static void dump(int sig) {
    (void)sig;
    int saved_errno = errno;
    char path[4200], tmp[4300], text[512];
    size_t plen = expand_path(path, sizeof path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".part", sizeof ".part");

    static const char *const names[] = {"malloc ", "calloc ", "realloc ", "free ", "memalign "};
    atomic_ulong *const counters[] = {&n_malloc, &n_calloc, &n_realloc, &n_free, &n_memalign};
    size_t n = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        n = put_str(text, n, sizeof text, names[i]);
        n = put_u64(text, n, sizeof text, atomic_load_explicit(counters[i], memory_order_relaxed));
        n = put_str(text, n, sizeof text, "\n");
    }
    n = put_str(text, n, sizeof text, "pid ");
    n = put_u64(text, n, sizeof text, (unsigned long)getpid());
    n = put_str(text, n, sizeof text, "\n");

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, text + off, n - off);
            if (w <= 0) {
                break;
            }
            off += (size_t)w;
        }
        close(fd);
        rename(tmp, path);
    }
    errno = saved_errno;
}

__attribute__((constructor)) static void malloc_count_init(void) {
    if (atomic_load(&state) == 0) {
        resolve();
    }
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof dump_path) {
        return; /* counting only; nothing to dump to */
    }
    memcpy(dump_path, path, strlen(path) + 1);
    int sig = SIGUSR2;
    const char *s = getenv("MALLOC_COUNT_SIGNAL");
    if (s != NULL && s[0] != '\0') {
        int v = atoi(s);
        if (v > 0 && v < NSIG) {
            sig = v;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dump;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}
