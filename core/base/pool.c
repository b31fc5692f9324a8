/*
 * pool.c -- per-request bump allocator; see pool.h.
 */
#include "base/pool.h"

#include <stdlib.h>

struct moxy_pool_block_s {
    moxy_pool_block_t *next;
    size_t size; /* usable bytes after the header (large blocks only) */
    /* data follows, 16-byte aligned */
};

#define BLOCK_HDR ((sizeof(moxy_pool_block_t) + 15) & ~(size_t)15)
#define CACHE_MAX 256 /* free blocks kept per thread: 1 MiB */

static _Thread_local moxy_pool_block_t *free_blocks;
static _Thread_local unsigned free_count;

void moxy_pool_init(moxy_pool_t *p)
{
    p->head = p->large = NULL;
    p->pos = p->end = NULL;
}

static moxy_pool_block_t *block_get(void)
{
    moxy_pool_block_t *b = free_blocks;
    if (b) {
        free_blocks = b->next;
        free_count--;
        return b;
    }
    return malloc(MOXY_POOL_BLOCK);
}

void *moxy_palloc(moxy_pool_t *p, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n <= (size_t)(p->end - p->pos)) {
        void *r = p->pos;
        p->pos += n;
        return r;
    }
    if (n > MOXY_POOL_BLOCK - BLOCK_HDR) {
        moxy_pool_block_t *b = malloc(BLOCK_HDR + n);
        if (!b) return NULL;
        b->size = n;
        b->next = p->large;
        p->large = b;
        return (char *)b + BLOCK_HDR;
    }
    moxy_pool_block_t *b = block_get();
    if (!b) return NULL;
    b->next = p->head;
    p->head = b;
    p->pos = (char *)b + BLOCK_HDR + n;
    p->end = (char *)b + MOXY_POOL_BLOCK;
    return (char *)b + BLOCK_HDR;
}

char *moxy_pstrdup(moxy_pool_t *p, const char *s, size_t n)
{
    char *d = moxy_palloc(p, n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void *moxy_prealloc(moxy_pool_t *p, void *old, size_t old_n, size_t n)
{
    size_t a_old = (old_n + 15) & ~(size_t)15;
    /* The last allocation of the current block grows in place when it fits. */
    if (old && (char *)old + a_old == p->pos && (char *)old + n <= p->end) {
        p->pos = (char *)old + ((n + 15) & ~(size_t)15);
        return old;
    }
    void *d = moxy_palloc(p, n);
    if (d && old) memcpy(d, old, MOXY_MIN(old_n, n));
    return d;
}

int moxy_pool_append(moxy_pool_t *p, char **buf, uint32_t *len, uint32_t *cap, const char *at, size_t n)
{
    if (*len + n + 1 > *cap) {
        uint32_t ncap = *cap ? *cap : 64;
        while (ncap < *len + n + 1) ncap *= 2;
        char *nb = moxy_prealloc(p, *buf, *cap, ncap);
        if (!nb) return -1;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, at, n);
    *len += (uint32_t)n;
    (*buf)[*len] = '\0';
    return 0;
}

void moxy_pool_reset(moxy_pool_t *p)
{
    moxy_pool_block_t *b, *next;
    for (b = p->head; b; b = next) {
        next = b->next;
        if (free_count < CACHE_MAX) {
            b->next = free_blocks;
            free_blocks = b;
            free_count++;
        } else {
            free(b);
        }
    }
    for (b = p->large; b; b = next) {
        next = b->next;
        free(b);
    }
    moxy_pool_init(p);
}

void moxy_pool_thread_cleanup(void)
{
    moxy_pool_block_t *b, *next;
    for (b = free_blocks; b; b = next) {
        next = b->next;
        free(b);
    }
    free_blocks = NULL;
    free_count = 0;
}
