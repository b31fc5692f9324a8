/*
 * cache.h -- the HTTP cache's store: objects in memory, shared by every
 * worker, bounded in bytes, evicted by S3-FIFO.
 *
 * An object is one stored response: its status, its header block (as the
 * origin sent it, hop-by-hop fields removed), its body in segments, and
 * what RFC 9111 needs to compute its age and freshness (cache_policy.h).
 * Objects are immutable once published and reference-counted: a worker
 * serving a hit holds a reference for as long as the body's segments sit
 * in its output buffer (evbuffer references: no copy per hit), so an
 * object evicted or replaced meanwhile is freed only after its last hit.
 *
 * Index: a hash table of primary keys, split into stripes each with its
 * own mutex.  A primary key may have several variants (Vary): each
 * variant records the request header values it was selected by.
 *
 * Eviction: S3-FIFO (Yang et al., SOSP 2023).  New objects enter a small
 * FIFO (10% of the bytes); an object that is hit again before it reaches
 * the small queue's end moves to the main FIFO, the others leave and their
 * key goes to a ghost FIFO; a new object whose key is a ghost enters main
 * directly.  Main is a FIFO with reinsertion of objects hit since they
 * were last looked at (a CLOCK).  A hit only increments a saturating
 * counter (no lock, no list move), and one-hit wonders -- a crawler's
 * scan -- leave through the small queue without pushing the hot set out.
 * The queues have their own mutex, taken on inserts and evictions only
 * (misses), never on hits.
 */
#ifndef MOXY_CACHE_H
#define MOXY_CACHE_H

#include "base/moxy.h"

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define MOXY_CACHE_SEGMENT (256 * 1024) /* body bytes per segment, at most */

#define MOXY_CACHE_FILE_MIN (64 * 1024) /* a body of known length from this size lives in a memfd */

typedef struct moxy_cache_seg_s {
    struct moxy_cache_seg_s *next;
    size_t len, cap;
    char *data;   /* just after the struct, or the memfd's mapping (body_fd) */
} moxy_cache_seg_t;

typedef struct moxy_cache_obj_s {
    atomic_int refs;             /* the index's (while published) + each user's */
    uint64_t hash;               /* of the primary key */
    char *key;                   /* the primary key (NUL-terminated) */
    size_t klen;
    char *vary;                  /* the Vary field names, lower case, ", "-separated; NULL: none */
    char *vary_values;           /* the request's values of those fields, "\n"-separated */
    int status;
    char *head;                  /* "Name: value\r\n" lines as stored */
    size_t head_len;
    moxy_cache_seg_t *body, *body_last;
    uint64_t body_len;
    int body_fd;                 /* a memfd holding the body, mapped at body->data (moxy_cache_obj_reserve),
                                    so that hits can hand it to the socket with sendfile; -1: none */
    unsigned long long variant_of; /* a compressed variant's (cache_variant.c): the store sequence + 1
                                      of the body it was made from; 0: not a variant */
    struct moxy_cache_obj_s *body_owner; /* a revalidated copy's: the object whose body it shares
                                            (a reference), or NULL: the body is its own */
    /* while it fills, coalesced waiters stream from it (http_cache.c) */
    uint64_t expected;           /* the body's length when the origin said it (Content-Length), else 0 */
    atomic_ullong avail;         /* body bytes appended so far (release: readers may read them) */
    atomic_int fill_state;       /* 0 filling, 1 complete, -1 abandoned */
    size_t charge;               /* bytes counted against the cache's size */

    /* RFC 9111 bookkeeping, wall-clock seconds (cache_policy.c) */
    double response_time;        /* when the response came in */
    double initial_age;          /* corrected_initial_age (4.2.3) */
    double lifetime;             /* freshness lifetime; < 0: none (stored for revalidation only) */
    double stale_while_revalidate, stale_if_error; /* RFC 5861 windows */
    unsigned must_revalidate : 1;/* must-revalidate or proxy-revalidate: never served stale */
    unsigned no_cache : 1;       /* no-cache: revalidate before every use */
    unsigned s_maxage : 1;       /* s-maxage: never stale without the origin's own permission */
    char *etag, *last_modified;  /* validators (into head's copy), or NULL */
    double lm_time;              /* last_modified as Unix time; < 0: none, or not an HTTP-date */

    /* store bookkeeping (cache_store.c) */
    atomic_uchar freq;           /* hits since last looked at, saturating at 3 */
    unsigned char queue;         /* which FIFO it is in */
    unsigned long long seq;      /* when it was published: the store's count of stores then */
    unsigned published : 1;      /* in the index */
    struct moxy_cache_obj_s *qnext, *qprev;  /* in its FIFO (queue lock) */
    struct moxy_cache_obj_s *inext;          /* next variant / next key in its bucket (stripe lock) */
} moxy_cache_obj_t;

/* What the store holds and did, for /status and /metrics (lookups' hits
 * and misses are counted per worker: moxy_stats_t). */
typedef struct {
    size_t capacity, used, objects;
    unsigned long long stores, evictions, invalidations, too_big;
} moxy_cache_stats_t;

/* Make the process's cache of size bytes, objects up to max_object.  A
 * second call (a reload) keeps the cache as it is.  MOXY_OK or MOXY_ERROR. */
int moxy_cache_create(size_t size, size_t max_object);

/* 1 when the cache exists. */
int moxy_cache_enabled(void);

/* The largest object stored. */
size_t moxy_cache_max_object(void);

/* 64-bit hash of a primary key, keyed per process (siphash.h): the same in
 * every worker, unpredictable from outside. */
uint64_t moxy_cache_hash(const char *key, size_t len);

/* The variant of key whose Vary values match: match(obj, arg) decides for
 * each published variant; returns it with a reference taken, or NULL.
 * *uri_seen is set when key has any variant. */
moxy_cache_obj_t *moxy_cache_find(const char *key, size_t klen, uint64_t hash,
                                  int (*match)(const moxy_cache_obj_t *o, void *arg), void *arg, int *uri_seen);

/* A new object for key, not yet visible (one reference: the filler's). */
moxy_cache_obj_t *moxy_cache_obj_new(const char *key, size_t klen, uint64_t hash);

/* o's body will be len bytes (the origin's Content-Length): one segment
 * for all of it, in a memfd when it is large (MOXY_CACHE_FILE_MIN), so that
 * hits can send it with sendfile, without a copy in moxy.  Nothing happens
 * when that cannot be (too many memfds, out of memory): appends make
 * segments as usual.  Before the first append. */
void moxy_cache_obj_reserve(moxy_cache_obj_t *o, uint64_t len);

/* Append len body bytes to o (being filled).  MOXY_ERROR when o would pass
 * max_object (or out of memory): the filler must abort. */
int moxy_cache_obj_append(moxy_cache_obj_t *o, const char *data, size_t len);

/* Publish o: it replaces the variant of its key with the same Vary values,
 * and takes its place in the FIFOs (evicting as needed).  The filler's
 * reference stays the filler's. */
void moxy_cache_publish(moxy_cache_obj_t *o);

/* Drop every variant of key (unsafe methods, purges).  Returns how many. */
int moxy_cache_invalidate(const char *key, size_t klen);

/* moxy_cache_invalidate, and the key's compressed variants too
 * (cache_variant.c): what an unsafe method or a purge of key drops.
 * Returns how many objects went. */
int moxy_cache_drop(const char *key, size_t klen);

/* Drop every object whose key starts with prefix.  Returns how many. */
int moxy_cache_invalidate_prefix(const char *prefix, size_t len);

/* Drop a reference; the last one frees o. */
void moxy_cache_obj_unref(moxy_cache_obj_t *o);

static inline void moxy_cache_obj_ref(moxy_cache_obj_t *o)
{
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

/* --- request coalescing: one origin request per key at a time --- */

/* What moxy_cache_flight_begin found. */
enum {
    MOXY_FLIGHT_WAIT = 0,   /* another request for key is under way */
    MOXY_FLIGHT_LEADER = 1, /* none was: this one leads (moxy_cache_flight_end when it is over) */
    MOXY_FLIGHT_FREE = 2,   /* key's last response was not storable: nobody leads nor waits */
};

/* Register a request for key going to the origin: MOXY_FLIGHT_*. */
int moxy_cache_flight_begin(const char *key, size_t klen, uint64_t hash);

/* The leader's request for key is over.  no_wait > 0: its response was
 * not storable; for no_wait seconds requests for key do not wait for each
 * other (Varnish's hit-for-miss), so an uncacheable URL is not serialised. */
void moxy_cache_flight_end(const char *key, size_t klen, uint64_t hash, double no_wait);

/* The leader's object for key, being filled, offered to the waiters (a
 * reference is taken). */
void moxy_cache_flight_attach(const char *key, size_t klen, uint64_t hash, moxy_cache_obj_t *o);

/* The object the leader of key fills, with a reference, or NULL; *active:
 * 1 while a leader's request for key is under way (the same look under
 * one lock). */
moxy_cache_obj_t *moxy_cache_flight_filling(const char *key, size_t klen, uint64_t hash, int *active);

/* Note a hit on o for eviction (no lock). */
static inline void moxy_cache_obj_touch(moxy_cache_obj_t *o)
{
    unsigned char f = atomic_load_explicit(&o->freq, memory_order_relaxed);
    if (f < 3) atomic_store_explicit(&o->freq, (unsigned char)(f + 1), memory_order_relaxed);
}

/* The object whose segments hold o's body (o itself, or its body owner). */
static inline const moxy_cache_obj_t *moxy_cache_body(const moxy_cache_obj_t *o)
{
    return o->body_owner ? o->body_owner : o;
}

void moxy_cache_stats(moxy_cache_stats_t *out);

/* Free everything (exit). */
void moxy_cache_destroy(void);

#endif
