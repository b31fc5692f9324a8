/*
 * conn_limit.c -- client connections per client address, across workers
 * (see conn_limit.h).
 */
#include "net/conn_limit.h"
#include "base/moxy.h"
#include "base/siphash.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Buckets and lock stripes (powers of two).  With keyed hashing the
 * chains stay near (open addresses) / BUCKETS long. */
#define CL_BUCKETS 8192
#define CL_STRIPES 64

typedef struct cl_entry_s {
    struct cl_entry_s *next;
    uint8_t key[16];
    int count; /* open connections holding a place; the entry goes at 0 */
} cl_entry_t;

static cl_entry_t *cl_buckets[CL_BUCKETS];
static pthread_mutex_t cl_locks[CL_STRIPES];
static atomic_long cl_entries;

__attribute__((constructor)) static void cl_init(void)
{
    for (int i = 0; i < CL_STRIPES; i++) pthread_mutex_init(&cl_locks[i], NULL);
}

int moxy_conn_limit_key(moxy_conn_slot_t *s, int family, const uint8_t *addr)
{
    memset(s->key, 0, sizeof(s->key));
    s->held = 0;
    if (family == 4) {
        s->key[10] = s->key[11] = 0xff;
        memcpy(s->key + 12, addr, 4);
        return MOXY_OK;
    }
    if (family != 6) return MOXY_ERROR;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(addr, mapped, 12) == 0) memcpy(s->key, addr, 16); /* IPv4-mapped: its IPv4 address */
    else memcpy(s->key, addr, 8);                                /* IPv6: its /64 */
    return MOXY_OK;
}

static size_t cl_bucket(const uint8_t key[16])
{
    return (size_t)(moxy_hash_keyed(key, 16) & (CL_BUCKETS - 1));
}

int moxy_conn_limit_enter(moxy_conn_slot_t *s, int limit, int *open)
{
    s->held = 0;
    if (limit <= 0) return MOXY_OK;
    size_t b = cl_bucket(s->key);
    pthread_mutex_t *m = &cl_locks[b & (CL_STRIPES - 1)];
    int rc = MOXY_OK;
    pthread_mutex_lock(m);
    cl_entry_t *e = cl_buckets[b];
    while (e && memcmp(e->key, s->key, 16) != 0) e = e->next;
    if (!e) {
        if (!(e = malloc(sizeof(*e)))) {
            pthread_mutex_unlock(m);
            return MOXY_ERROR;
        }
        memcpy(e->key, s->key, 16);
        e->count = 0;
        e->next = cl_buckets[b];
        cl_buckets[b] = e;
        atomic_fetch_add_explicit(&cl_entries, 1, memory_order_relaxed);
    }
    /* a limit lowered by a reload: the places held stay, new ones wait */
    if (e->count >= limit) {
        rc = MOXY_DECLINED;
    } else {
        e->count++;
        s->held = 1;
    }
    if (open) *open = e->count;
    pthread_mutex_unlock(m);
    /* an entry made for a refusal alone has count 0 only when limit <= 0,
     * which returned above: no empty entry stays */
    return rc;
}

void moxy_conn_limit_leave(moxy_conn_slot_t *s)
{
    if (!s->held) return;
    s->held = 0;
    size_t b = cl_bucket(s->key);
    pthread_mutex_t *m = &cl_locks[b & (CL_STRIPES - 1)];
    pthread_mutex_lock(m);
    cl_entry_t **pe = &cl_buckets[b];
    while (*pe && memcmp((*pe)->key, s->key, 16) != 0) pe = &(*pe)->next;
    cl_entry_t *e = *pe;
    if (e && --e->count <= 0) {
        *pe = e->next;
        free(e);
        atomic_fetch_sub_explicit(&cl_entries, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(m);
}

long moxy_conn_limit_tracked(void)
{
    return atomic_load_explicit(&cl_entries, memory_order_relaxed);
}

void moxy_conn_limit_text(const moxy_conn_slot_t *s, char *buf, size_t size)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char a[INET6_ADDRSTRLEN];
    if (memcmp(s->key, mapped, 12) == 0) {
        inet_ntop(AF_INET, s->key + 12, a, sizeof(a));
        snprintf(buf, size, "%s", a);
    } else {
        inet_ntop(AF_INET6, s->key, a, sizeof(a));
        snprintf(buf, size, "%s/64", a);
    }
}
