/*
 * cache_store.c -- the cache's objects, index and S3-FIFO eviction (see
 * cache.h).
 *
 * Locks: a stripe's mutex guards its buckets; the queue mutex guards the
 * FIFOs, the ghost ring and `used`.  Order: queue lock, then a stripe lock
 * (eviction holds the first and takes the second); a lookup takes a stripe
 * lock alone, as does an invalidation that finds nothing.
 */
#include "cache/cache.h"
#include "base/siphash.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define STRIPES 64
#define SMALL_SHARE 10    /* percent of the bytes for the small FIFO */
#define GHOSTS 65536      /* slots of the ghost table (power of 2) */
#define OBJ_OVERHEAD 256  /* bytes charged per object beyond its head and body */
#define MARKS_MAX 64      /* hit-for-miss marks kept per stripe */
#define VARIANTS_MAX 64   /* variants kept per key: a new one past them replaces the stalest */

enum { Q_NONE = 0, Q_SMALL, Q_MAIN };

typedef struct {
    moxy_cache_obj_t *head, *tail; /* oldest at head */
    size_t bytes;
} fifo_t;

/* A key whose leader is at the origin (request coalescing). */
typedef struct flight_s {
    struct flight_s *next;
    moxy_cache_obj_t *filling; /* the leader's object while it fills (a reference), or NULL */
    long long free_until;  /* > 0: no flight, a "hit-for-miss" mark: the key's responses are not
                              stored, so nobody waits for them until then (moxy_mono_ms()) */
    uint64_t hash;
    size_t klen;
    char key[];
} flight_t;

typedef struct {
    pthread_mutex_t lock;
    moxy_cache_obj_t **buckets;
    size_t nbuckets, nkeys;
    flight_t *flights;   /* keys of this stripe at the origin now (few: a list) */
} stripe_t;

static struct {
    int ready;
    size_t capacity, max_object;
    stripe_t stripes[STRIPES];
    pthread_mutex_t qlock;
    fifo_t small, main;
    uint64_t ghost[GHOSTS];  /* hashes of keys evicted from small: a direct-mapped table, a newer key
                                overwrites an older one in its slot (the ghost FIFO, approximately) */
    atomic_size_t used, objects;
    atomic_ullong stores, evictions, invalidations, too_big;
    atomic_int nfiles;   /* memfd bodies open */
    int max_files;       /* at most this many: a quarter of the descriptors moxy may open */
} C;

/* Keys are the client's (its Host and target) or a script's: keyed, so
 * that nobody can precompute keys that share a stripe's bucket (siphash.h). */
uint64_t moxy_cache_hash(const char *key, size_t len)
{
    return moxy_hash_keyed(key, len);
}

int moxy_cache_create(size_t size, size_t max_object)
{
    if (C.ready) return MOXY_OK;
    C.capacity = size;
    C.max_object = max_object;
    struct rlimit rl;
    C.max_files = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (int)(rl.rlim_cur / 4) : 1024;
    pthread_mutex_init(&C.qlock, NULL);
    for (int i = 0; i < STRIPES; i++) {
        stripe_t *s = &C.stripes[i];
        pthread_mutex_init(&s->lock, NULL);
        s->nbuckets = 64;
        s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
        if (!s->buckets) return MOXY_ERROR;
    }
    C.ready = 1;
    return MOXY_OK;
}

int moxy_cache_enabled(void)
{
    return C.ready;
}

size_t moxy_cache_max_object(void)
{
    return C.max_object;
}

static stripe_t *stripe_of(uint64_t hash)
{
    return &C.stripes[hash % STRIPES];
}

static size_t bucket_of(const stripe_t *s, uint64_t hash)
{
    return (size_t)(hash >> 8) & (s->nbuckets - 1);
}

static int same_key(const moxy_cache_obj_t *o, const char *key, size_t klen, uint64_t hash)
{
    return o->hash == hash && o->klen == klen && memcmp(o->key, key, klen) == 0;
}

static void obj_free(moxy_cache_obj_t *o)
{
    moxy_cache_seg_t *s = o->body, *next;
    if (o->body_fd >= 0) { /* its one segment maps the memfd */
        munmap(s->data, s->cap);
        close(o->body_fd);
        atomic_fetch_sub_explicit(&C.nfiles, 1, memory_order_relaxed);
    }
    for (; s; s = next) {
        next = s->next;
        free(s);
    }
    free(o->key);
    free(o->vary);
    free(o->vary_values);
    free(o->head);
    free(o->etag);
    free(o->last_modified);
    moxy_cache_obj_t *owner = o->body_owner;
    free(o);
    if (owner) moxy_cache_obj_unref(owner);
}

void moxy_cache_obj_unref(moxy_cache_obj_t *o)
{
    if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) obj_free(o);
}

moxy_cache_obj_t *moxy_cache_find(const char *key, size_t klen, uint64_t hash,
                                  int (*match)(const moxy_cache_obj_t *o, void *arg), void *arg, int *uri_seen)
{
    *uri_seen = 0;
    if (!C.ready) return NULL;
    stripe_t *s = stripe_of(hash);
    moxy_cache_obj_t *found = NULL;
    pthread_mutex_lock(&s->lock);
    for (moxy_cache_obj_t *o = s->buckets[bucket_of(s, hash)]; o; o = o->inext) {
        if (!same_key(o, key, klen, hash)) continue;
        *uri_seen = 1;
        if (match(o, arg)) {
            found = o;
            moxy_cache_obj_ref(o);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (found) moxy_cache_obj_touch(found);
    return found;
}

moxy_cache_obj_t *moxy_cache_obj_new(const char *key, size_t klen, uint64_t hash)
{
    moxy_cache_obj_t *o = calloc(1, sizeof(*o));
    if (!o) return NULL;
    o->key = malloc(klen + 1);
    if (!o->key) {
        free(o);
        return NULL;
    }
    memcpy(o->key, key, klen);
    o->key[klen] = '\0';
    o->klen = klen;
    o->hash = hash;
    o->lifetime = -1;
    o->lm_time = -1;
    o->body_fd = -1;
    atomic_store(&o->refs, 1);
    return o;
}

void moxy_cache_obj_reserve(moxy_cache_obj_t *o, uint64_t len)
{
    if (o->body || len < MOXY_CACHE_FILE_MIN || len > C.max_object) return;
    if (atomic_fetch_add_explicit(&C.nfiles, 1, memory_order_relaxed) >= C.max_files) goto none;
    moxy_cache_seg_t *seg = malloc(sizeof(*seg));
    int fd = memfd_create("moxy-cache", MFD_CLOEXEC);
    void *map = MAP_FAILED;
    if (seg && fd >= 0 && ftruncate(fd, (off_t)len) == 0)
        map = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        free(seg);
        if (fd >= 0) close(fd);
        goto none;
    }
    seg->next = NULL;
    seg->len = 0;
    seg->cap = (size_t)len;
    seg->data = map;
    o->body = o->body_last = seg;
    o->body_fd = fd;
    return;
none:
    atomic_fetch_sub_explicit(&C.nfiles, 1, memory_order_relaxed);
}

int moxy_cache_obj_append(moxy_cache_obj_t *o, const char *data, size_t len)
{
    if (o->body_len + len > C.max_object) {
        atomic_fetch_add_explicit(&C.too_big, 1, memory_order_relaxed);
        return MOXY_ERROR;
    }
    while (len > 0) {
        moxy_cache_seg_t *s = o->body_last;
        if (!s || s->len == s->cap) {
            /* segments grow with the body: small objects stay small */
            size_t cap = s ? s->cap * 4 : 4096;
            if (cap > MOXY_CACHE_SEGMENT) cap = MOXY_CACHE_SEGMENT;
            if (cap < len && !s) cap = len < MOXY_CACHE_SEGMENT ? len : MOXY_CACHE_SEGMENT;
            moxy_cache_seg_t *n = malloc(sizeof(*n) + cap);
            if (!n) return MOXY_ERROR;
            n->data = (char *)(n + 1);
            n->next = NULL;
            n->len = 0;
            n->cap = cap;
            if (s) s->next = n;
            else o->body = n;
            o->body_last = s = n;
        }
        size_t take = s->cap - s->len < len ? s->cap - s->len : len;
        memcpy(s->data + s->len, data, take);
        s->len += take;
        o->body_len += take;
        data += take;
        len -= take;
    }
    /* the bytes (and segment links) before this store are there for readers */
    atomic_store_explicit(&o->avail, o->body_len, memory_order_release);
    return MOXY_OK;
}

static size_t charge_of(const moxy_cache_obj_t *o)
{
    /* the Vary names and values too: a client chooses how long the values are */
    size_t n = OBJ_OVERHEAD + o->klen + o->head_len;
    if (o->vary) n += strlen(o->vary) + 1;
    if (o->vary_values) n += strlen(o->vary_values) + 1;
    for (const moxy_cache_seg_t *s = moxy_cache_body(o)->body; s; s = s->next) n += sizeof(*s) + s->cap;
    return n;
}

/* --- the index (stripe locked) --- */

static void stripe_grow(stripe_t *s)
{
    size_t n = s->nbuckets * 2;
    moxy_cache_obj_t **b = calloc(n, sizeof(*b));
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        moxy_cache_obj_t *o = s->buckets[i], *next;
        for (; o; o = next) {
            next = o->inext;
            size_t j = (size_t)(o->hash >> 8) & (n - 1);
            o->inext = b[j];
            b[j] = o;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

/* Unlink o from its stripe's bucket (stripe locked). */
static void index_remove(stripe_t *s, moxy_cache_obj_t *o)
{
    moxy_cache_obj_t **pp = &s->buckets[bucket_of(s, o->hash)];
    for (; *pp; pp = &(*pp)->inext) {
        if (*pp == o) {
            *pp = o->inext;
            o->inext = NULL;
            o->published = 0;
            s->nkeys--;
            return;
        }
    }
}

static int same_variant(const moxy_cache_obj_t *a, const moxy_cache_obj_t *b)
{
    if (!a->vary != !b->vary) return 0;
    if (!a->vary) return 1;
    return strcmp(a->vary, b->vary) == 0 && strcmp(a->vary_values, b->vary_values) == 0;
}

/* --- the FIFOs (queue locked) --- */

static void fifo_push(fifo_t *f, moxy_cache_obj_t *o)
{
    o->qnext = NULL;
    o->qprev = f->tail;
    if (f->tail) f->tail->qnext = o;
    else f->head = o;
    f->tail = o;
    f->bytes += o->charge;
}

static void fifo_unlink(fifo_t *f, moxy_cache_obj_t *o)
{
    if (o->qprev) o->qprev->qnext = o->qnext;
    else f->head = o->qnext;
    if (o->qnext) o->qnext->qprev = o->qprev;
    else f->tail = o->qprev;
    o->qnext = o->qprev = NULL;
    f->bytes -= o->charge;
}

static fifo_t *fifo_of(moxy_cache_obj_t *o)
{
    return o->queue == Q_SMALL ? &C.small : o->queue == Q_MAIN ? &C.main : NULL;
}

static int ghost_has(uint64_t hash)
{
    return hash && C.ghost[hash & (GHOSTS - 1)] == hash;
}

/* o leaves the cache (queue locked): out of its FIFO and the index. */
static void drop(moxy_cache_obj_t *o)
{
    fifo_t *f = fifo_of(o);
    if (f) fifo_unlink(f, o);
    o->queue = Q_NONE;
    stripe_t *s = stripe_of(o->hash);
    pthread_mutex_lock(&s->lock);
    int was = o->published;
    if (was) index_remove(s, o);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_sub(&C.used, o->charge);
    atomic_fetch_sub(&C.objects, 1);
    if (was) moxy_cache_obj_unref(o); /* the index's reference */
}

/* Evict until need more bytes fit (queue locked). */
static void make_room(size_t need)
{
    size_t small_max = C.capacity / 100 * SMALL_SHARE;
    int guard = 1000000;
    while (atomic_load(&C.used) + need > C.capacity && guard-- > 0) {
        if (C.small.head && (C.small.bytes > small_max || !C.main.head)) {
            moxy_cache_obj_t *o = C.small.head;
            fifo_unlink(&C.small, o);
            if (atomic_load_explicit(&o->freq, memory_order_relaxed) > 0) {
                atomic_store(&o->freq, 0); /* hit while on probation: to main */
                o->queue = Q_MAIN;
                fifo_push(&C.main, o);
            } else {
                C.ghost[o->hash & (GHOSTS - 1)] = o->hash;
                o->queue = Q_NONE;
                drop(o);
                atomic_fetch_add(&C.evictions, 1);
            }
        } else if (C.main.head) {
            moxy_cache_obj_t *o = C.main.head;
            unsigned char f = atomic_load_explicit(&o->freq, memory_order_relaxed);
            if (f > 0) { /* hit since last looked at: once more round */
                atomic_store(&o->freq, (unsigned char)(f - 1));
                fifo_unlink(&C.main, o);
                fifo_push(&C.main, o);
            } else {
                drop(o);
                atomic_fetch_add(&C.evictions, 1);
            }
        } else {
            break;
        }
    }
}

void moxy_cache_publish(moxy_cache_obj_t *o)
{
    o->charge = charge_of(o);
    if (o->charge > C.capacity) return;
    moxy_cache_obj_ref(o); /* the index's */
    pthread_mutex_lock(&C.qlock);
    o->seq = atomic_fetch_add(&C.stores, 1);
    make_room(o->charge);
    /* into the index, replacing the same variant -- or, when the key has
     * VARIANTS_MAX others, the one stored longest ago: a key's variants share
     * its bucket, and a client choosing the values a Vary names must not
     * make every lookup there walk thousands of them */
    stripe_t *s = stripe_of(o->hash);
    moxy_cache_obj_t *old = NULL, *stalest = NULL;
    int variants = 0;
    pthread_mutex_lock(&s->lock);
    for (moxy_cache_obj_t *x = s->buckets[bucket_of(s, o->hash)]; x; x = x->inext) {
        if (!same_key(x, o->key, o->klen, o->hash)) continue;
        if (same_variant(x, o)) {
            old = x;
            break;
        }
        variants++;
        if (!stalest || x->seq < stalest->seq) stalest = x;
    }
    if (!old && variants >= VARIANTS_MAX) {
        old = stalest;
        atomic_fetch_add(&C.evictions, 1);
    }
    if (s->nkeys + 1 > s->nbuckets) stripe_grow(s);
    size_t b = bucket_of(s, o->hash);
    o->inext = s->buckets[b];
    s->buckets[b] = o;
    o->published = 1;
    s->nkeys++;
    pthread_mutex_unlock(&s->lock);
    if (old) drop(old);
    atomic_fetch_add(&C.used, o->charge);
    atomic_fetch_add(&C.objects, 1);
    o->queue = ghost_has(o->hash) ? Q_MAIN : Q_SMALL;
    fifo_push(o->queue == Q_MAIN ? &C.main : &C.small, o);
    pthread_mutex_unlock(&C.qlock);
}

/* The first published variant of key in s (its bucket's chain), or NULL;
 * takes s's lock.  Only drop() unlinks an object, under the queue lock: a
 * caller holding that lock across the look and the drop may drop it. */
static moxy_cache_obj_t *first_of_key(stripe_t *s, const char *key, size_t klen, uint64_t hash)
{
    pthread_mutex_lock(&s->lock);
    moxy_cache_obj_t *o = s->buckets[bucket_of(s, hash)];
    while (o && !same_key(o, key, klen, hash)) o = o->inext;
    pthread_mutex_unlock(&s->lock);
    return o;
}

int moxy_cache_invalidate(const char *key, size_t klen)
{
    if (!C.ready) return 0;
    uint64_t hash = moxy_cache_hash(key, klen);
    stripe_t *s = stripe_of(hash);
    /* most unsafe requests are for keys not stored: a look under the stripe
     * lock, and the queue lock (taken first, as drop() needs) only when the
     * key is there */
    if (!first_of_key(s, key, klen, hash)) return 0;
    int n = 0;
    pthread_mutex_lock(&C.qlock);
    for (moxy_cache_obj_t *o; (o = first_of_key(s, key, klen, hash)); n++) drop(o);
    pthread_mutex_unlock(&C.qlock);
    atomic_fetch_add(&C.invalidations, (unsigned long long)n);
    return n;
}

int moxy_cache_invalidate_prefix(const char *prefix, size_t len)
{
    if (!C.ready) return 0;
    int n = 0;
    pthread_mutex_lock(&C.qlock);
    for (int i = 0; i < STRIPES; i++) {
        stripe_t *s = &C.stripes[i];
        /* the buckets change only by drop() while the queue lock is held
         * (publish holds it too): the walk goes on from the victim's bucket */
        for (size_t b = 0;;) {
            moxy_cache_obj_t *victim = NULL;
            pthread_mutex_lock(&s->lock);
            for (; b < s->nbuckets; b++) {
                for (moxy_cache_obj_t *o = s->buckets[b]; o && !victim; o = o->inext)
                    if (o->klen >= len && memcmp(o->key, prefix, len) == 0) victim = o;
                if (victim) break;
            }
            pthread_mutex_unlock(&s->lock);
            if (!victim) break;
            drop(victim);
            n++;
        }
    }
    pthread_mutex_unlock(&C.qlock);
    atomic_fetch_add(&C.invalidations, (unsigned long long)n);
    return n;
}

static flight_t **flight_find(stripe_t *s, const char *key, size_t klen, uint64_t hash)
{
    flight_t **pp = &s->flights;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == hash && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0) break;
    return pp;
}

int moxy_cache_flight_begin(const char *key, size_t klen, uint64_t hash)
{
    if (!C.ready) return MOXY_FLIGHT_FREE;
    stripe_t *s = stripe_of(hash);
    pthread_mutex_lock(&s->lock);
    flight_t **pp = flight_find(s, key, klen, hash), *f = *pp;
    int leader = MOXY_FLIGHT_LEADER;
    if (f && f->free_until) { /* a hit-for-miss mark: nobody waits; gone once old */
        if (f->free_until > moxy_mono_ms()) {
            pthread_mutex_unlock(&s->lock);
            return MOXY_FLIGHT_FREE;
        }
        *pp = f->next;
        free(f);
        f = NULL;
    }
    if (f) {
        leader = MOXY_FLIGHT_WAIT;
    } else if ((f = malloc(sizeof(*f) + klen))) {
        f->next = s->flights;
        f->filling = NULL;
        f->free_until = 0;
        f->hash = hash;
        f->klen = klen;
        memcpy(f->key, key, klen);
        s->flights = f;
    }
    pthread_mutex_unlock(&s->lock);
    return leader;
}

void moxy_cache_flight_end(const char *key, size_t klen, uint64_t hash, double no_wait)
{
    if (!C.ready) return;
    stripe_t *s = stripe_of(hash);
    pthread_mutex_lock(&s->lock);
    flight_t **pp = flight_find(s, key, klen, hash), *f = *pp;
    moxy_cache_obj_t *filling = f ? f->filling : NULL;
    if (f) f->filling = NULL;
    if (f && no_wait > 0) {
        long long now = moxy_mono_ms();
        f->free_until = now + (long long)(no_wait * 1000); /* kept as the mark */
        f = NULL;
        /* marks are few per stripe: expired ones and those past MARKS_MAX go */
        int marks = 0;
        for (flight_t **q = &s->flights; *q;) {
            flight_t *m = *q;
            if (m->free_until && (m->free_until <= now || ++marks > MARKS_MAX)) {
                *q = m->next;
                free(m);
            } else {
                q = &m->next;
            }
        }
    } else if (f) {
        *pp = f->next;
    }
    pthread_mutex_unlock(&s->lock);
    free(f);
    if (filling) moxy_cache_obj_unref(filling);
}

void moxy_cache_flight_attach(const char *key, size_t klen, uint64_t hash, moxy_cache_obj_t *o)
{
    if (!C.ready) return;
    stripe_t *s = stripe_of(hash);
    pthread_mutex_lock(&s->lock);
    flight_t *f = *flight_find(s, key, klen, hash);
    if (f && !f->free_until && !f->filling) {
        moxy_cache_obj_ref(o);
        f->filling = o;
    }
    pthread_mutex_unlock(&s->lock);
}

moxy_cache_obj_t *moxy_cache_flight_filling(const char *key, size_t klen, uint64_t hash, int *active)
{
    *active = 0;
    if (!C.ready) return NULL;
    stripe_t *s = stripe_of(hash);
    pthread_mutex_lock(&s->lock);
    flight_t *f = *flight_find(s, key, klen, hash);
    *active = f && !f->free_until;
    moxy_cache_obj_t *o = *active ? f->filling : NULL;
    if (o) moxy_cache_obj_ref(o);
    pthread_mutex_unlock(&s->lock);
    return o;
}

void moxy_cache_stats(moxy_cache_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!C.ready) return;
    out->capacity = C.capacity;
    out->used = atomic_load(&C.used);
    out->objects = atomic_load(&C.objects);
    out->stores = atomic_load(&C.stores);
    out->evictions = atomic_load(&C.evictions);
    out->invalidations = atomic_load(&C.invalidations);
    out->too_big = atomic_load(&C.too_big);
}

void moxy_cache_destroy(void)
{
    if (!C.ready) return;
    pthread_mutex_lock(&C.qlock);
    while (C.small.head) drop(C.small.head);
    while (C.main.head) drop(C.main.head);
    pthread_mutex_unlock(&C.qlock);
    for (int i = 0; i < STRIPES; i++) {
        free(C.stripes[i].buckets);
        flight_t *f = C.stripes[i].flights, *next;
        for (; f; f = next) {
            next = f->next;
            if (f->filling) moxy_cache_obj_unref(f->filling);
            free(f);
        }
        pthread_mutex_destroy(&C.stripes[i].lock);
    }
    pthread_mutex_destroy(&C.qlock);
    memset(&C, 0, sizeof(C));
}
