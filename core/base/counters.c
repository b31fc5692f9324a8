/*
 * counters.c -- the named counters of counters.h: a fixed table, found by
 * a keyed hash under a mutex (made and looked up rarely: callers keep the
 * ids), added to without a lock (atomic compare-and-swap on the value).
 */
#include "base/counters.h"
#include "base/moxy.h"
#include "base/siphash.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define SLOTS (MOXY_COUNTERS_MAX * 2) /* open addressing, at most half full */

typedef struct {
    char *name, *labels, *help;
    size_t nlen, llen;
    int first; /* the first counter of its name (its help is the name's) */
    _Atomic double value;
} counter_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static counter_t counters[MOXY_COUNTERS_MAX];
static _Atomic int ncounters;
static int16_t slots[SLOTS]; /* index + 1 into counters; 0: empty */
static _Atomic unsigned long long refused;

static int name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 200) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

/* k="v" pairs separated by commas, values with \\, \" and \n escapes only. */
static int labels_ok(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = i;
        while (i < n && s[i] != '=') i++;
        if (i == n || !name_ok(s + k, i - k) || memchr(s + k, ':', i - k)) return 0; /* label names: no ':' */
        if (++i == n || s[i] != '"') return 0;
        for (i++; i < n && s[i] != '"'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == 0x7f) return 0;
            if (c == '\\') {
                if (++i == n || (s[i] != '\\' && s[i] != '"' && s[i] != 'n')) return 0;
            }
        }
        if (i == n) return 0;
        i++;
        if (i < n && s[i++] != ',') return 0;
        if (i == n && s[n - 1] == ',') return 0;
    }
    return 1;
}

static uint64_t key_hash(const char *name, size_t nlen, const char *labels, size_t llen)
{
    char buf[MOXY_COUNTER_TEXT_MAX + 1];
    memcpy(buf, name, nlen);
    buf[nlen] = '{';
    memcpy(buf + nlen + 1, labels, llen);
    return moxy_hash_keyed(buf, nlen + 1 + llen);
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

EXPORT int moxy_ffi_counter(const char *name, size_t nlen, const char *labels, size_t llen, const char *help)
{
    if (!labels) llen = 0;
    if (nlen + llen + 1 > MOXY_COUNTER_TEXT_MAX || !name_ok(name, nlen) || !labels_ok(labels, llen)) return -1;
    uint64_t h = key_hash(name, nlen, labels, llen);
    int id = -1;
    pthread_mutex_lock(&lock);
    size_t at = (size_t)(h % SLOTS);
    for (;;) {
        int16_t s = slots[at];
        if (s == 0) break;
        counter_t *c = &counters[s - 1];
        if (c->nlen == nlen && c->llen == llen && memcmp(c->name, name, nlen) == 0 &&
            memcmp(c->labels, labels, llen) == 0) {
            id = s - 1;
            goto done;
        }
        at = (at + 1) % SLOTS;
    }
    int n = atomic_load(&ncounters);
    if (n == MOXY_COUNTERS_MAX) {
        atomic_fetch_add(&refused, 1);
        goto done;
    }
    counter_t *c = &counters[n];
    c->name = dup_n(name, nlen);
    c->labels = dup_n(labels ? labels : "", llen);
    c->help = help && *help ? strdup(help) : NULL;
    if (!c->name || !c->labels) {
        free(c->name);
        free(c->labels);
        free(c->help);
        memset(c, 0, sizeof(*c));
        goto done;
    }
    c->nlen = nlen;
    c->llen = llen;
    c->first = n;
    for (int i = 0; i < n; i++) /* rare: callers keep their ids */
        if (counters[i].nlen == nlen && memcmp(counters[i].name, name, nlen) == 0) {
            c->first = counters[i].first;
            break;
        }
    atomic_store(&c->value, 0);
    slots[at] = (int16_t)(n + 1);
    atomic_store(&ncounters, n + 1); /* published after it is whole: each() reads up to it */
    id = n;
done:
    pthread_mutex_unlock(&lock);
    return id;
}

EXPORT void moxy_ffi_counter_add(int id, double by)
{
    if (id < 0 || id >= atomic_load(&ncounters) || !(by >= 0)) return;
    _Atomic double *v = &counters[id].value;
    double old = atomic_load_explicit(v, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(v, &old, old + by, memory_order_relaxed, memory_order_relaxed)) {
    }
}

EXPORT double moxy_ffi_counter_get(int id)
{
    if (id < 0 || id >= atomic_load(&ncounters)) return 0;
    return atomic_load_explicit(&counters[id].value, memory_order_relaxed);
}

unsigned long long moxy_counters_refused(void)
{
    return atomic_load(&refused);
}

void moxy_counters_each(void (*fn)(void *arg, const char *name, const char *labels, const char *help, double value),
                        void *arg)
{
    int n = atomic_load(&ncounters);
    /* a name's counters together, names in the order they first came: a
     * counting sort by the first counter of each name */
    int *start = calloc((size_t)n + 1, sizeof(int)), *order = malloc(((size_t)n + 1) * sizeof(int));
    if (!start || !order) goto out;
    for (int i = 0; i < n; i++) start[counters[i].first + 1]++;
    for (int i = 0; i < n; i++) start[i + 1] += start[i];
    for (int i = 0; i < n; i++) order[start[counters[i].first]++] = i;
    for (int k = 0; k < n; k++) {
        counter_t *c = &counters[order[k]];
        const char *help = c->first == order[k] ? (counters[c->first].help ? counters[c->first].help : "") : NULL;
        fn(arg, c->name, c->labels, help, atomic_load_explicit(&c->value, memory_order_relaxed));
    }
out:
    free(start);
    free(order);
}
