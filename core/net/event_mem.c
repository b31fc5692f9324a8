/*
 * event_mem.c -- libevent's allocations, counted, through a per-thread
 * cache; see event_mem.h.
 *
 * Blocks are plain malloc blocks, so realloc and free need no head.  A block
 * of 512 B to 64 KiB is allocated as 2^k bytes (libevent sizes its chains
 * in powers of two already); freed, a block whose usable size holds 2^k
 * bytes joins list k of its thread while that list holds less than
 * CLASS_KEEP bytes, else goes back to malloc.  So a thread keeps at most
 * (CLASS_MAX - CLASS_MIN + 1) * CLASS_KEEP idle bytes, whatever its
 * connections; smaller blocks (a connection's evbuffer and event structs)
 * are plain malloc's.  A block may be freed on another thread than the one
 * that allocated it: it joins that thread's list, or malloc.
 *
 * Counting: every block handed to libevent adds its usable size to its
 * thread's delta, every block taken back subtracts it; a delta past
 * FLUSH_BYTES either way goes to the process-wide count, which is compared
 * with the budget there.  So the count is exact to FLUSH_BYTES per thread
 * and costs a thread-local add per call.
 */
#include "net/event_mem.h"
#include "base/moxy.h"

#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* --- counting (every build) --- */

#define FLUSH_BYTES (64 * 1024)

static _Atomic long long held;          /* bytes libevent holds, all threads */
static _Atomic long long budget;        /* 0: none */
static atomic_int over;                 /* held > budget at the last flush */
static _Thread_local long long delta;   /* this thread's change not in held yet */

static void count(long long n)
{
    delta += n;
    if (delta < FLUSH_BYTES && delta > -FLUSH_BYTES) return;
    long long now = atomic_fetch_add_explicit(&held, delta, memory_order_relaxed) + delta;
    delta = 0;
    long long b = atomic_load_explicit(&budget, memory_order_relaxed);
    int was = atomic_load_explicit(&over, memory_order_relaxed);
    int o = b > 0 && now > (was ? b - b / 10 : b); /* back under at 90 %: no flapping */
    if (was != o) atomic_store_explicit(&over, o, memory_order_relaxed);
}

/* This thread's delta into the count (a thread that exits). */
static void flush_delta(void)
{
    atomic_fetch_add_explicit(&held, delta, memory_order_relaxed);
    delta = 0;
}

size_t moxy_event_mem_held(void)
{
    long long n = atomic_load_explicit(&held, memory_order_relaxed);
    return n > 0 ? (size_t)n : 0;
}

void moxy_event_mem_set_budget(size_t bytes)
{
    long long b = (long long)bytes;
    if (atomic_load_explicit(&budget, memory_order_relaxed) == b) return;
    atomic_store_explicit(&budget, b, memory_order_relaxed);
    long long now = atomic_load_explicit(&held, memory_order_relaxed);
    atomic_store_explicit(&over, b > 0 && now > b, memory_order_relaxed);
}

int moxy_event_mem_over(void)
{
    return atomic_load_explicit(&over, memory_order_relaxed);
}

static void *plain_malloc(size_t n)
{
    void *p = malloc(n);
    if (p) count((long long)malloc_usable_size(p));
    return p;
}

static void *counted_realloc(void *p, size_t n)
{
    size_t before = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q) count((long long)malloc_usable_size(q) - (long long)before);
    else if (n == 0) count(-(long long)before);
    return q;
}

#if defined(__SANITIZE_ADDRESS__)
#define EVENT_MEM_PLAIN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVENT_MEM_PLAIN 1
#endif
#endif

#ifndef EVENT_MEM_PLAIN

#define CLASS_MIN 9  /* 512 B */
#define CLASS_MAX 16 /* 64 KiB */
#define CLASS_KEEP (64 * 1024)

typedef struct free_block {
    struct free_block *next;
} free_block_t;

typedef struct {
    free_block_t *list[CLASS_MAX + 1];
    size_t kept[CLASS_MAX + 1]; /* usable bytes on list[k] */
    int registered;             /* the thread-exit destructor is armed */
} cache_t;

static _Thread_local cache_t cache;
static pthread_key_t exit_key;
static int exit_key_made;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void release(cache_t *c)
{
    for (int k = CLASS_MIN; k <= CLASS_MAX; k++) {
        free_block_t *b = c->list[k];
        while (b) {
            free_block_t *next = b->next;
            free(b);
            b = next;
        }
        c->list[k] = NULL;
        c->kept[k] = 0;
    }
}

static void on_thread_exit(void *arg)
{
    release(arg);
}

static void make_exit_key(void)
{
    exit_key_made = pthread_key_create(&exit_key, on_thread_exit) == 0;
}

/* The smallest class holding n bytes; -1 past the classes. */
static int class_of(size_t n)
{
    if (n > ((size_t)1 << CLASS_MAX)) return -1;
    if (n <= ((size_t)1 << CLASS_MIN)) return CLASS_MIN;
    return 64 - __builtin_clzll((unsigned long long)(n - 1));
}

static void *mem_malloc(size_t n)
{
    if (n < ((size_t)1 << CLASS_MIN) / 2) return plain_malloc(n); /* structs: exact */
    int k = class_of(n);
    if (k < 0) return plain_malloc(n);
    free_block_t *b = cache.list[k];
    if (b) {
        cache.list[k] = b->next;
        cache.kept[k] -= (size_t)1 << k;
        count((long long)malloc_usable_size(b));
        return b;
    }
    return plain_malloc((size_t)1 << k);
}

static void mem_free(void *p)
{
    if (!p) return;
    size_t u = malloc_usable_size(p);
    count(-(long long)u);
    if (u >= ((size_t)1 << CLASS_MIN) && u < ((size_t)1 << (CLASS_MAX + 1))) {
        int k = 63 - __builtin_clzll((unsigned long long)u); /* the largest class u holds */
        if (k > CLASS_MAX) k = CLASS_MAX;
        if (cache.kept[k] + ((size_t)1 << k) <= CLASS_KEEP) {
            if (!cache.registered) {
                /* the first block kept on this thread: free the lists when it exits */
                pthread_once(&exit_once, make_exit_key);
                cache.registered = 1;
                if (exit_key_made) pthread_setspecific(exit_key, &cache);
            }
            free_block_t *b = p;
            b->next = cache.list[k];
            cache.list[k] = b;
            cache.kept[k] += (size_t)1 << k;
            return;
        }
    }
    free(p);
}

void moxy_event_mem_init(void)
{
    event_set_mem_functions(mem_malloc, counted_realloc, mem_free); /* blocks are malloc's */
}

void moxy_event_mem_release(void)
{
    release(&cache);
    flush_delta();
}

#else /* AddressSanitizer: malloc's own blocks, counted */

static void plain_free(void *p)
{
    if (!p) return;
    count(-(long long)malloc_usable_size(p));
    free(p);
}

void moxy_event_mem_init(void)
{
    event_set_mem_functions(plain_malloc, counted_realloc, plain_free);
}

void moxy_event_mem_release(void)
{
    flush_delta();
}

#endif
