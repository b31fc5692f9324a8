/*
 * pool.h -- per-request memory: a bump allocator over 4 KiB blocks, freed all
 * at once when the request ends (nginx's ngx_pool_t, without cleanups).
 *
 * Blocks come from a per-thread cache so that a keep-alive connection serving
 * request after request does not go back to malloc.  A pool belongs to one
 * worker thread.
 */
#ifndef MOXY_POOL_H
#define MOXY_POOL_H

#include "base/moxy.h"

#define MOXY_POOL_BLOCK 4096

typedef struct moxy_pool_block_s moxy_pool_block_t;

typedef struct {
    moxy_pool_block_t *head;  /* current block (allocations come from here) */
    moxy_pool_block_t *large; /* allocations larger than a block, one malloc each */
    char *pos;                /* next free byte in head */
    char *end;                /* end of head */
} moxy_pool_t;

/* Prepare an empty pool; allocates nothing until the first moxy_palloc. */
void moxy_pool_init(moxy_pool_t *p);

/* n bytes, 16-byte aligned, valid until moxy_pool_reset; NULL when out of memory. */
void *moxy_palloc(moxy_pool_t *p, size_t n);

/* A copy of the n bytes at s, NUL-terminated; NULL when out of memory. */
char *moxy_pstrdup(moxy_pool_t *p, const char *s, size_t n);

/* Grow the allocation at old (old_n bytes, the pool's last or not) to n bytes. */
void *moxy_prealloc(moxy_pool_t *p, void *old, size_t old_n, size_t n);

/* Append the n bytes at `at` to the NUL-terminated string *buf of *len
 * bytes in a *cap-byte allocation from p, growing it (doubling) as needed.
 * For header names and values that arrive in pieces.  0, or -1 when out of
 * memory. */
int moxy_pool_append(moxy_pool_t *p, char **buf, uint32_t *len, uint32_t *cap, const char *at, size_t n);

/* Free everything allocated from p; p stays usable and empty. */
void moxy_pool_reset(moxy_pool_t *p);

/* Release the calling thread's cache of free blocks (at thread exit). */
void moxy_pool_thread_cleanup(void);

#endif
