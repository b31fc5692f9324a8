/*
 * shared_dict.c -- moxy.shared dictionaries and their registry; see
 * shared_dict.h for the model and ffi.h for the contracts of the exports.
 */
#include "base/shared_dict.h"
#include "base/siphash.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* Before evicting a live item, this many items at the old end of the LRU
 * list are checked for expiry (and removed when expired).  A bounded walk
 * keeps a store O(1); expired items elsewhere go when met, or age out. */
#define EXPIRED_SCAN 64
#define MIN_BUCKETS 16

typedef struct shdict_node_s shdict_node_t;

struct shdict_node_s {
    shdict_node_t *hnext;         /* next in its hash bucket */
    shdict_node_t *newer, *older; /* the stripe's LRU list */
    uint64_t hash;
    double expires; /* monotonic seconds; 0: never */
    double num;     /* the value of NUMBER and BOOLEAN items */
    size_t vlen;    /* bytes of a STRING or TABLE value, after the key */
    uint32_t klen;
    uint8_t type;   /* MOXY_SHDICT_* */
    char data[];    /* key, then value */
};

typedef struct {
    _Alignas(64) pthread_mutex_t lock; /* a cache line per stripe: no false sharing */
    shdict_node_t **buckets;
    size_t nbuckets;                   /* 0 until the first item, then a power of 2 */
    shdict_node_t *newest, *oldest;    /* LRU list ends */
    size_t items;
    size_t used;                       /* bytes counted (node_cost) */
    size_t budget;                     /* bytes this stripe may use */
    size_t evictions, hits, misses;
} shdict_stripe_t;

struct moxy_shdict_s {
    moxy_shdict_t *next; /* in the registry */
    char *name;
    size_t nlen;
    size_t size;
    unsigned nstripes; /* a power of 2 */
    shdict_stripe_t *stripes;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static moxy_shdict_t *registry;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

/* Keys may come from clients (an IP, a header): a keyed hash keeps anyone
 * from choosing keys that all land in one bucket (siphash.h). */
static uint64_t key_hash(const char *p, size_t len)
{
    return moxy_hash_keyed(p, len);
}

static double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* What an item counts against its stripe's budget: the node, its key and
 * value, and its share of the bucket array. */
static size_t node_cost(size_t klen, size_t vlen)
{
    return sizeof(shdict_node_t) + klen + vlen + sizeof(shdict_node_t *);
}

static int has_bytes(int type)
{
    return type == MOXY_SHDICT_STRING || type == MOXY_SHDICT_TABLE;
}

static int is_expired(const shdict_node_t *n, double now)
{
    return n->expires != 0 && n->expires <= now;
}

static shdict_stripe_t *stripe_of(moxy_shdict_t *d, uint64_t hash)
{
    /* high bits pick the stripe, low bits the bucket */
    return &d->stripes[(hash >> 56) & (d->nstripes - 1)];
}

static void lru_unlink(shdict_stripe_t *s, shdict_node_t *n)
{
    if (n->newer) n->newer->older = n->older;
    else s->newest = n->older;
    if (n->older) n->older->newer = n->newer;
    else s->oldest = n->newer;
}

static void lru_push_newest(shdict_stripe_t *s, shdict_node_t *n)
{
    n->newer = NULL;
    n->older = s->newest;
    if (s->newest) s->newest->newer = n;
    s->newest = n;
    if (!s->oldest) s->oldest = n;
}

static void lru_touch(shdict_stripe_t *s, shdict_node_t *n)
{
    if (s->newest == n) return;
    lru_unlink(s, n);
    lru_push_newest(s, n);
}

/* Take n out of its stripe and free it. */
static void node_remove(shdict_stripe_t *s, shdict_node_t *n)
{
    shdict_node_t **link = &s->buckets[n->hash & (s->nbuckets - 1)];
    while (*link != n) link = &(*link)->hnext;
    *link = n->hnext;
    lru_unlink(s, n);
    s->items--;
    s->used -= node_cost(n->klen, n->vlen);
    free(n);
}

/* The item with this key, or NULL; an expired one met here is removed. */
static shdict_node_t *node_find(shdict_stripe_t *s, uint64_t hash, const char *key, size_t klen,
                                double now)
{
    if (s->nbuckets == 0) return NULL;
    for (shdict_node_t *n = s->buckets[hash & (s->nbuckets - 1)]; n; n = n->hnext) {
        if (n->hash != hash || n->klen != klen || memcmp(n->data, key, klen) != 0) continue;
        if (is_expired(n, now)) {
            node_remove(s, n);
            return NULL;
        }
        return n;
    }
    return NULL;
}

/* Double the bucket array (or make the first one).  Without memory the
 * chains just grow longer. */
static void buckets_grow(shdict_stripe_t *s)
{
    size_t nb = s->nbuckets ? s->nbuckets * 2 : MIN_BUCKETS;
    shdict_node_t **b = calloc(nb, sizeof(*b));
    if (!b) return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        shdict_node_t *n = s->buckets[i];
        while (n) {
            shdict_node_t *next = n->hnext;
            size_t j = n->hash & (nb - 1);
            n->hnext = b[j];
            b[j] = n;
            n = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

/* Make room for `need` more bytes: expired items near the old end first,
 * then the least recently used ones. */
static void make_room(shdict_stripe_t *s, size_t need, double now)
{
    if (s->used + need <= s->budget) return;
    shdict_node_t *n = s->oldest;
    for (int i = 0; n && i < EXPIRED_SCAN && s->used + need > s->budget; i++) {
        shdict_node_t *newer = n->newer;
        if (is_expired(n, now)) node_remove(s, n);
        n = newer;
    }
    while (s->used + need > s->budget && s->oldest) {
        if (!is_expired(s->oldest, now)) s->evictions++;
        node_remove(s, s->oldest);
    }
}

/* Link the new item n (hash, key and cost set) into stripe s. */
static int node_insert(shdict_stripe_t *s, shdict_node_t *n, double now)
{
    size_t cost = node_cost(n->klen, n->vlen);
    make_room(s, cost, now);
    if (s->nbuckets == 0 || s->items >= s->nbuckets) buckets_grow(s);
    if (s->nbuckets == 0) return MOXY_ERROR;
    size_t j = n->hash & (s->nbuckets - 1);
    n->hnext = s->buckets[j];
    s->buckets[j] = n;
    lru_push_newest(s, n);
    s->items++;
    s->used += cost;
    return MOXY_OK;
}

/* A new, unlinked item; NULL when out of memory. */
static shdict_node_t *node_new(uint64_t hash, const char *key, size_t klen, int type,
                               const char *str, size_t slen, double num, double expires)
{
    size_t vlen = has_bytes(type) ? slen : 0;
    shdict_node_t *n = malloc(sizeof(*n) + klen + vlen);
    if (!n) return NULL;
    n->hnext = n->newer = n->older = NULL;
    n->hash = hash;
    n->expires = expires;
    n->num = num;
    n->vlen = vlen;
    n->klen = (uint32_t)klen;
    n->type = (uint8_t)type;
    memcpy(n->data, key, klen);
    if (vlen) memcpy(n->data + klen, str, vlen);
    return n;
}

static int key_ok(const char *key, size_t klen)
{
    return key && klen > 0 && klen <= MOXY_SHDICT_MAX_KEY;
}

static double expiry(double ttl, double now)
{
    return ttl > 0 ? now + ttl : 0;
}

/* Registry -------------------------------------------------------------- */

static void registry_init(void)
{
    atexit(moxy_shdict_free_all);
}

static void dict_free(moxy_shdict_t *d)
{
    for (unsigned i = 0; d->stripes && i < d->nstripes; i++) {
        shdict_stripe_t *s = &d->stripes[i];
        for (shdict_node_t *n = s->newest; n;) {
            shdict_node_t *older = n->older;
            free(n);
            n = older;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(d->stripes);
    free(d->name);
    free(d);
}

static moxy_shdict_t *dict_new(const char *name, size_t len, size_t size)
{
    moxy_shdict_t *d = calloc(1, sizeof(*d));
    if (!d) return NULL;
    d->name = malloc(len + 1);
    if (!d->name) goto err;
    memcpy(d->name, name, len);
    d->name[len] = '\0';
    d->nlen = len;
    d->size = size;
    d->nstripes = 1;
    while (d->nstripes < MOXY_SHDICT_MAX_STRIPES &&
           size / (d->nstripes * 2) >= MOXY_SHDICT_MIN_STRIPE_BYTES)
        d->nstripes *= 2;
    d->stripes = aligned_alloc(64, d->nstripes * sizeof(shdict_stripe_t));
    if (!d->stripes) goto err;
    memset(d->stripes, 0, d->nstripes * sizeof(shdict_stripe_t));
    for (unsigned i = 0; i < d->nstripes; i++) {
        d->stripes[i].budget = size / d->nstripes;
        pthread_mutex_init(&d->stripes[i].lock, NULL);
    }
    return d;
err:
    free(d->name);
    free(d);
    return NULL;
}

static moxy_shdict_t *registry_find(const char *name, size_t len)
{
    for (moxy_shdict_t *d = registry; d; d = d->next)
        if (d->nlen == len && memcmp(d->name, name, len) == 0) return d;
    return NULL;
}

moxy_shdict_t *moxy_shdict_find(const char *name, size_t len)
{
    pthread_mutex_lock(&registry_lock);
    moxy_shdict_t *d = registry_find(name, len);
    pthread_mutex_unlock(&registry_lock);
    return d;
}

moxy_shdict_t *moxy_shdict_open(const char *name, size_t len, size_t size)
{
    if (size == 0 || !name || len == 0) return NULL;
    pthread_once(&registry_once, registry_init);
    pthread_mutex_lock(&registry_lock);
    moxy_shdict_t *d = registry_find(name, len);
    if (!d) {
        d = dict_new(name, len, size);
        if (d) {
            d->next = registry;
            registry = d;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return d;
}

int moxy_shdict_create_all(const moxy_conf_t *conf, FILE *err)
{
    for (int i = 0; i < conf->nshared; i++) {
        const moxy_shared_conf_t *sc = &conf->shared[i];
        if (!moxy_shdict_open(sc->name, strlen(sc->name), sc->size)) {
            fprintf(err, "moxy: shared.%s: cannot create the dict: out of memory\n", sc->name);
            return MOXY_ERROR;
        }
    }
    return MOXY_OK;
}

void moxy_shdict_free_all(void)
{
    pthread_mutex_lock(&registry_lock);
    moxy_shdict_t *d = registry;
    registry = NULL;
    pthread_mutex_unlock(&registry_lock);
    while (d) {
        moxy_shdict_t *next = d->next;
        dict_free(d);
        d = next;
    }
}

/* FFI exports (contracts in ffi.h) ---------------------------------------- */

EXPORT moxy_shdict_t *moxy_ffi_shdict_find(const char *name, size_t nlen)
{
    return moxy_shdict_find(name, nlen);
}

EXPORT moxy_shdict_t *moxy_ffi_shdict_create(const char *name, size_t nlen, size_t size)
{
    return moxy_shdict_open(name, nlen, size);
}

EXPORT int moxy_ffi_shdict_get(moxy_shdict_t *d, const char *key, size_t klen, int *type,
                               char **val, size_t *vlen, double *num, int *must_free)
{
    *must_free = 0;
    if (!key_ok(key, klen)) return MOXY_ERROR;
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    double now = now_monotonic();
    int rc = MOXY_OK;
    pthread_mutex_lock(&s->lock);
    shdict_node_t *n = node_find(s, hash, key, klen, now);
    if (!n) {
        s->misses++;
        rc = MOXY_DECLINED;
        goto done;
    }
    s->hits++;
    *type = n->type;
    *num = n->num;
    if (has_bytes(n->type)) {
        /* copied under the lock: another thread may evict n right after */
        if (n->vlen > *vlen) {
            char *copy = malloc(n->vlen);
            if (!copy) {
                rc = MOXY_ERROR;
                goto done;
            }
            *val = copy;
            *must_free = 1;
        }
        if (n->vlen) memcpy(*val, n->data + n->klen, n->vlen);
        *vlen = n->vlen;
    }
    lru_touch(s, n);
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

EXPORT int moxy_ffi_shdict_store(moxy_shdict_t *d, int op, const char *key, size_t klen, int type,
                                 const char *str, size_t slen, double num, double ttl, int *err)
{
    if (!key_ok(key, klen)) {
        *err = MOXY_SHDICT_E_BAD_KEY;
        return MOXY_ERROR;
    }
    size_t vlen = has_bytes(type) ? slen : 0;
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    if (type != MOXY_SHDICT_NIL && node_cost(klen, vlen) > s->budget) {
        *err = MOXY_SHDICT_E_NO_MEMORY;
        return MOXY_ERROR;
    }
    double now = now_monotonic();
    int rc = MOXY_OK;
    pthread_mutex_lock(&s->lock);
    shdict_node_t *old = node_find(s, hash, key, klen, now);
    if (op == MOXY_SHDICT_ADD && old) {
        *err = MOXY_SHDICT_E_EXISTS;
        rc = MOXY_DECLINED;
    } else if (op == MOXY_SHDICT_REPLACE && !old) {
        *err = MOXY_SHDICT_E_NOT_FOUND;
        rc = MOXY_DECLINED;
    } else if (type == MOXY_SHDICT_NIL) {
        if (old) node_remove(s, old);
    } else if (old && old->vlen == vlen) {
        /* same size: in place (a number stays a number without a malloc) */
        old->type = (uint8_t)type;
        old->num = num;
        old->expires = expiry(ttl, now);
        if (vlen) memcpy(old->data + klen, str, vlen);
        lru_touch(s, old);
    } else {
        /* the new item first: when there is no memory the old value stays */
        shdict_node_t *n = node_new(hash, key, klen, type, str, slen, num, expiry(ttl, now));
        if (!n) {
            *err = MOXY_SHDICT_E_NO_MEMORY;
            rc = MOXY_ERROR;
        } else {
            if (old) node_remove(s, old);
            if (node_insert(s, n, now) != MOXY_OK) {
                free(n);
                *err = MOXY_SHDICT_E_NO_MEMORY;
                rc = MOXY_ERROR;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

EXPORT int moxy_ffi_shdict_incr(moxy_shdict_t *d, const char *key, size_t klen, double by,
                                double init, int has_init, double ttl, double *out, int *err)
{
    if (!key_ok(key, klen)) {
        *err = MOXY_SHDICT_E_BAD_KEY;
        return MOXY_ERROR;
    }
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    double now = now_monotonic();
    int rc = MOXY_OK;
    pthread_mutex_lock(&s->lock);
    shdict_node_t *n = node_find(s, hash, key, klen, now);
    if (n) {
        if (n->type != MOXY_SHDICT_NUMBER) {
            *err = MOXY_SHDICT_E_NOT_NUMBER;
            rc = MOXY_ERROR;
        } else {
            n->num += by;
            *out = n->num;
            lru_touch(s, n);
        }
    } else if (!has_init) {
        *err = MOXY_SHDICT_E_NOT_FOUND;
        rc = MOXY_DECLINED;
    } else if (node_cost(klen, 0) > s->budget) {
        *err = MOXY_SHDICT_E_NO_MEMORY;
        rc = MOXY_ERROR;
    } else {
        n = node_new(hash, key, klen, MOXY_SHDICT_NUMBER, NULL, 0, init + by, expiry(ttl, now));
        if (!n || node_insert(s, n, now) != MOXY_OK) {
            free(n);
            *err = MOXY_SHDICT_E_NO_MEMORY;
            rc = MOXY_ERROR;
        } else {
            *out = n->num;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* The precise monotonic clock, for GCRA's arrival times (the coarse one
 * ticks in milliseconds: too coarse for 1000 requests a second). */
static double now_precise(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

EXPORT int moxy_ffi_shdict_gcra(moxy_shdict_t *d, const char *key, size_t klen, double interval, double burst,
                                double cost, moxy_gcra_t *out, int *err)
{
    if (!key_ok(key, klen)) {
        *err = MOXY_SHDICT_E_BAD_KEY;
        return MOXY_ERROR;
    }
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    double now = now_monotonic();
    double t = now_precise();
    double limit = (burst + 1) * interval; /* how far ahead of t the arrival time may run */
    int rc = MOXY_OK;
    pthread_mutex_lock(&s->lock);
    shdict_node_t *n = node_find(s, hash, key, klen, now);
    if (n && n->type != MOXY_SHDICT_NUMBER) {
        *err = MOXY_SHDICT_E_NOT_NUMBER;
        rc = MOXY_ERROR;
        goto done;
    }
    double tat = n && n->num > t ? n->num : t;
    double next = tat + cost * interval;
    if (next - t > limit + 1e-9) { /* not yet: the state stays */
        out->retry_after = next - limit - t;
        out->reset = tat - t;
        out->remaining = 0;
        rc = MOXY_DECLINED;
        goto done;
    }
    out->retry_after = 0;
    out->reset = next - t;
    out->remaining = (limit - (next - t)) / interval + 1e-9;
    if (cost <= 0) goto done; /* a look, no change */
    double ttl = next - t + 0.01; /* then it no longer limits anything */
    if (n) {
        n->num = next;
        n->expires = expiry(ttl, now);
        lru_touch(s, n);
    } else if (node_cost(klen, 0) > s->budget) {
        *err = MOXY_SHDICT_E_NO_MEMORY;
        rc = MOXY_ERROR;
    } else {
        n = node_new(hash, key, klen, MOXY_SHDICT_NUMBER, NULL, 0, next, expiry(ttl, now));
        if (!n || node_insert(s, n, now) != MOXY_OK) {
            free(n);
            *err = MOXY_SHDICT_E_NO_MEMORY;
            rc = MOXY_ERROR;
        }
    }
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

EXPORT int moxy_ffi_shdict_ttl(moxy_shdict_t *d, const char *key, size_t klen, double *ttl)
{
    if (!key_ok(key, klen)) return MOXY_DECLINED;
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    double now = now_monotonic();
    pthread_mutex_lock(&s->lock);
    shdict_node_t *n = node_find(s, hash, key, klen, now);
    if (n) *ttl = n->expires != 0 ? n->expires - now : 0;
    pthread_mutex_unlock(&s->lock);
    return n ? MOXY_OK : MOXY_DECLINED;
}

EXPORT int moxy_ffi_shdict_expire(moxy_shdict_t *d, const char *key, size_t klen, double ttl)
{
    if (!key_ok(key, klen)) return MOXY_DECLINED;
    uint64_t hash = key_hash(key, klen);
    shdict_stripe_t *s = stripe_of(d, hash);
    double now = now_monotonic();
    pthread_mutex_lock(&s->lock);
    shdict_node_t *n = node_find(s, hash, key, klen, now);
    if (n) n->expires = expiry(ttl, now);
    pthread_mutex_unlock(&s->lock);
    return n ? MOXY_OK : MOXY_DECLINED;
}

/* Bytes of one entry of the moxy_ffi_shdict_keys buffer. */
static size_t keys_entry_size(size_t klen)
{
    size_t a = sizeof(size_t);
    return a + (klen + a - 1) / a * a;
}

EXPORT int moxy_ffi_shdict_keys(moxy_shdict_t *d, int max, char **buf, size_t *len, int *count)
{
    char *out = NULL;
    size_t used = 0, cap = 0;
    int n = 0;
    double now = now_monotonic();
    *buf = NULL;
    *len = 0;
    *count = 0;
    for (unsigned i = 0; i < d->nstripes && (max <= 0 || n < max); i++) {
        shdict_stripe_t *s = &d->stripes[i];
        pthread_mutex_lock(&s->lock);
        for (shdict_node_t *node = s->newest; node && (max <= 0 || n < max);) {
            shdict_node_t *older = node->older;
            if (is_expired(node, now)) {
                node_remove(s, node);
                node = older;
                continue;
            }
            size_t need = keys_entry_size(node->klen);
            if (used + need > cap) {
                size_t ncap = cap ? cap * 2 : 4096;
                while (ncap < used + need) ncap *= 2;
                char *grown = realloc(out, ncap);
                if (!grown) {
                    pthread_mutex_unlock(&s->lock);
                    free(out);
                    return MOXY_ERROR;
                }
                out = grown;
                cap = ncap;
            }
            size_t klen = node->klen;
            memcpy(out + used, &klen, sizeof(klen));
            memcpy(out + used + sizeof(klen), node->data, klen);
            used += need;
            n++;
            node = older;
        }
        pthread_mutex_unlock(&s->lock);
    }
    *buf = out;
    *len = used;
    *count = n;
    return MOXY_OK;
}

EXPORT void moxy_ffi_shdict_flush_all(moxy_shdict_t *d)
{
    for (unsigned i = 0; i < d->nstripes; i++) {
        shdict_stripe_t *s = &d->stripes[i];
        pthread_mutex_lock(&s->lock);
        for (shdict_node_t *n = s->newest; n;) {
            shdict_node_t *older = n->older;
            free(n);
            n = older;
        }
        if (s->buckets) memset(s->buckets, 0, s->nbuckets * sizeof(*s->buckets));
        s->newest = s->oldest = NULL;
        s->items = 0;
        s->used = 0;
        pthread_mutex_unlock(&s->lock);
    }
}

EXPORT void moxy_ffi_shdict_stats(moxy_shdict_t *d, moxy_shdict_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->capacity = d->size;
    for (unsigned i = 0; i < d->nstripes; i++) {
        shdict_stripe_t *s = &d->stripes[i];
        pthread_mutex_lock(&s->lock);
        out->used += s->used;
        out->items += s->items;
        out->evictions += s->evictions;
        out->hits += s->hits;
        out->misses += s->misses;
        pthread_mutex_unlock(&s->lock);
    }
}

EXPORT void moxy_ffi_shdict_free(void *p)
{
    free(p);
}
