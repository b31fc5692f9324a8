/*
 * cache_variant.c -- compressed variants of stored objects.
 *
 * The cache stores what the origin sent.  A hit whose client gets it
 * compressed (the body stage's coder, http/compress.h) would otherwise be
 * compressed again for every client: for a 100 KB page ~2.7 ms of CPU at
 * gzip level 6, ~1.1 ms at br 4, ~0.23 ms at zstd 3, against ~50 µs for
 * the hit itself (docs/performance.md).  So the first such hit keeps what
 * its coder makes, as an object of its own under the key
 * "<primary key>\x01<coding>" (counted in the cache's size, evicted like
 * any other), and later hits of that coding are answered with it -- no
 * coder, and a Content-Length, since its length is known.
 *
 * A variant belongs to the body it was made from: it records that body's
 * store sequence (o->variant_of, the sequence + 1), and is used only for
 * it; a newer response under the key (or a purge) leaves it unused until it
 * is evicted or replaced.  It copies the object's Vary values, so that the
 * variants of a key's Vary variants do not replace each other.
 *
 * It is made once, not once per concurrent client, and not at any
 * client's pace: the first hit leads a flight on the variant's key
 * (cache.h) and hands its coder to a job of its worker, which codes the
 * stored body a slice per turn of the event loop (other requests go on
 * between slices) into the variant's object.  That hit, and the hits that
 * come meanwhile, stream the variant as it fills (its length unknown:
 * chunked), like the waiters of a collapsed miss -- so a client that
 * leaves, or reads slowly, holds nobody else back.  Hits with on_body
 * hooks, ranges and conditions are no business of variants (the stage or
 * the 304 path).
 */
#include "cache/cache.h"
#include "cache/http_cache.h"
#include "base/log.h"
#include "codec/coder.h"
#include "http/body_filter.h"
#include "http/compress.h"
#include "http/lifecycle.h"
#include "http/request.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <sys/queue.h>

#include <stdlib.h>
#include <string.h>

#define VARIANT_SEP '\x01'

/* key + "\x01" + coding's name, in pool (NUL-terminated; *len without it). */
static char *variant_key(moxy_pool_t *pool, const char *key, size_t klen, int enc, size_t *len)
{
    const char *name = moxy_enc_name(enc);
    size_t nlen = strlen(name);
    char *k = moxy_palloc(pool, klen + 1 + nlen + 1);
    if (!k) return NULL;
    memcpy(k, key, klen);
    k[klen] = VARIANT_SEP;
    memcpy(k + klen + 1, name, nlen + 1);
    *len = klen + 1 + nlen;
    return k;
}

/* The identity of the body o serves (its body owner's store sequence + 1). */
static unsigned long long body_id(const moxy_cache_obj_t *o)
{
    return moxy_cache_body(o)->seq + 1;
}

static int made_from(const moxy_cache_obj_t *v, void *arg)
{
    return v->variant_of == *(const unsigned long long *)arg;
}

/* --- the job that makes a variant --- */

#define SLICE (128 * 1024) /* stored bytes coded per turn of the loop (~1-3 ms at gzip 6) */

typedef struct vjob_s {
    moxy_worker_t *w;
    moxy_cache_obj_t *src;           /* the stored object (a reference): complete */
    moxy_cache_obj_t *v;             /* the variant it fills (a reference) */
    moxy_coder_t *coder;
    int enc;
    const moxy_cache_seg_t *seg;     /* where the next slice starts: a segment of src's body... */
    uint64_t seg_off, done;          /* ...an offset in it; bytes of the body coded */
    struct evbuffer *out;            /* the coder's output, on its way into v */
    char *vkey;                      /* the flight's key (malloc) */
    size_t vklen;
    uint64_t vhash;
    struct event ev;
    LIST_ENTRY(vjob_s) link;         /* in its worker's list */
} vjob_t;

typedef LIST_HEAD(vjobs_s, vjob_s) vjobs_t;

static vjobs_t *jobs_of(moxy_worker_t *w)
{
    vjobs_t **slot = (vjobs_t **)moxy_worker_slot(w, &moxy_cache_module);
    if (!*slot && (*slot = malloc(sizeof(**slot)))) LIST_INIT(*slot);
    return *slot;
}

/* j is over: v published when complete (ok), else dropped (the hits
 * streaming it are cut); the flight ends, the coder is counted and goes
 * back. */
static void job_end(vjob_t *j, int ok)
{
    event_del(&j->ev);
    LIST_REMOVE(j, link);
    if (ok) {
        atomic_store_explicit(&j->v->fill_state, 1, memory_order_release);
        moxy_cache_publish(j->v);
    } else {
        atomic_store_explicit(&j->v->fill_state, -1, memory_order_release);
    }
    moxy_cache_flight_end(j->vkey, j->vklen, j->vhash, 0);
    moxy_compress_count(j->w, 0, j->enc, j->coder);
    moxy_cache_obj_unref(j->v);
    moxy_cache_obj_unref(j->src);
    evbuffer_free(j->out);
    free(j->vkey);
    free(j);
}

/* What the coder made so far goes into v.  MOXY_ERROR: v passed
 * max_object (or out of memory). */
static int job_flush(vjob_t *j)
{
    size_t len;
    while ((len = evbuffer_get_length(j->out)) > 0) {
        /* by length: the buffer may end with an empty chain (reserved room) */
        struct evbuffer_iovec iov[8];
        int k = evbuffer_peek(j->out, (ev_ssize_t)len, NULL, iov, 8);
        size_t took = 0;
        for (int i = 0; i < MOXY_MIN(k, 8); i++) {
            if (moxy_cache_obj_append(j->v, iov[i].iov_base, iov[i].iov_len) != MOXY_OK) return MOXY_ERROR;
            took += iov[i].iov_len;
        }
        if (took == 0) return MOXY_ERROR; /* never: len > 0 */
        evbuffer_drain(j->out, took);
    }
    return MOXY_OK;
}

/* One slice of src's body through the coder into v; again at the next
 * turn of the loop until the body is done. */
static void job_step(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    vjob_t *j = arg;
    uint64_t total = moxy_cache_body(j->src)->body_len;
    const char *why = NULL;
    size_t slice = 0;
    int rc = MOXY_OK;
    while (rc == MOXY_OK && slice < SLICE && j->done < total) {
        const moxy_cache_seg_t *s = j->seg;
        uint64_t n = MOXY_MIN((uint64_t)(s->len - j->seg_off), (uint64_t)(SLICE - slice));
        n = MOXY_MIN(n, total - j->done);
        int last = j->done + n == total;
        rc = moxy_coder_run(j->coder, s->data + j->seg_off, (size_t)n, last ? MOXY_CODE_END : MOXY_CODE_MORE, j->out,
                            &why);
        j->done += n;
        slice += (size_t)n;
        j->seg_off += n;
        if (j->seg_off == s->len && s->next) {
            j->seg = s->next;
            j->seg_off = 0;
        }
    }
    if (rc == MOXY_OK && total == 0) rc = moxy_coder_run(j->coder, "", 0, MOXY_CODE_END, j->out, &why);
    if (rc != MOXY_OK || job_flush(j) != MOXY_OK) {
        moxy_log(MOXY_LOG_INFO, NULL, "cache: %s: the %s copy not stored: %s", j->src->key, moxy_enc_name(j->enc),
                 rc != MOXY_OK ? why : "larger than cache.max_object");
        job_end(j, 0);
        return;
    }
    if (j->done == total) {
        job_end(j, 1);
        return;
    }
    struct timeval now = {0, 0};
    evtimer_add(&j->ev, &now); /* after the events ready meanwhile */
}

/* The worker ends: copies in the making are dropped. */
static void jobs_free(moxy_worker_t *w)
{
    vjobs_t **slot = (vjobs_t **)moxy_worker_slot(w, &moxy_cache_module);
    if (!*slot) return;
    while (!LIST_EMPTY(*slot)) job_end(LIST_FIRST(*slot), 0);
    free(*slot);
    *slot = NULL;
}

moxy_module_t moxy_cache_module = {
    .name = "cache",
    .worker_free = jobs_free,
};

/* Lead the making of o's variant (key vkey): a new object, filled by a
 * job with r's coder, offered to the hits that come meanwhile.  The
 * variant, with a reference for r; or NULL (nothing changed for r: it
 * codes its body itself, and the others do too). */
static moxy_cache_obj_t *lead(moxy_req_t *r, moxy_cache_obj_t *o, unsigned long long id, const char *vkey,
                              size_t vklen, uint64_t vhash)
{
    vjobs_t *jobs = jobs_of(r->w);
    vjob_t *j = calloc(1, sizeof(*j));
    moxy_cache_obj_t *v = moxy_cache_obj_new(vkey, vklen, vhash);
    if (!jobs || !j || !v || !(j->out = evbuffer_new()) || !(j->vkey = malloc(vklen + 1))) goto none;
    v->variant_of = id;
    v->status = o->status;
    /* its Vary values are its object's: a key's variants of each stay apart */
    if (o->vary && (!(v->vary = strdup(o->vary)) || !(v->vary_values = strdup(o->vary_values ? o->vary_values : ""))))
        goto none;
    v->response_time = o->response_time;
    v->initial_age = o->initial_age;
    v->lifetime = o->lifetime;
    memcpy(j->vkey, vkey, vklen + 1);
    j->vklen = vklen;
    j->vhash = vhash;
    j->w = r->w;
    j->enc = r->coding_enc;
    j->coder = moxy_compress_take(r);
    moxy_cache_obj_ref(o);
    j->src = o;
    j->v = v;
    j->seg = moxy_cache_body(o)->body;
    evtimer_assign(&j->ev, r->w->base, job_step, j);
    LIST_INSERT_HEAD(jobs, j, link);
    moxy_cache_flight_attach(vkey, vklen, vhash, v);
    struct timeval now = {0, 0};
    evtimer_add(&j->ev, &now);
    moxy_cache_obj_ref(v); /* r's, as a waiter's */
    return v;
none:
    if (j) {
        if (j->out) evbuffer_free(j->out);
        free(j->vkey);
        free(j);
    }
    if (v) moxy_cache_obj_unref(v);
    moxy_cache_flight_end(vkey, vklen, vhash, 0); /* the others compress for themselves */
    return NULL;
}

/* Answer r with the variant v (a reference, taken over) instead of coding
 * o's body: complete (its length known), or still filling (streamed). */
static int serve(moxy_req_t *r, moxy_cache_obj_t *v)
{
    int filling = atomic_load_explicit(&v->fill_state, memory_order_acquire) == 0;
    if (filling && moxy_cache_stream_setup(r) != MOXY_OK) {
        moxy_cache_obj_unref(v);
        return MOXY_DECLINED;
    }
    moxy_compress_cancel(r);
    moxy_cache_obj_unref(r->cache_obj);
    r->cache_obj = v;
    r->cache_from = 0;
    if (filling) {
        r->cache_streaming = 1;
        r->resp_body_kind = MOXY_BODY_CHUNKED; /* its length is not known yet */
        r->resp_body_left = 0;
    } else {
        r->resp_body_kind = v->body_len ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
        r->resp_body_left = v->body_len;
    }
    return MOXY_OK;
}

void moxy_cache_variant_hit(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_obj;
    if (r->coding != MOXY_CODING_ENCODE || r->filter_hooks || r->cache_streaming || r->cache_from ||
        r->compress_level || !o || o->variant_of)
        return;
    size_t vklen;
    char *vkey = variant_key(&r->mem, r->cache_key, r->cache_klen, r->coding_enc, &vklen);
    if (!vkey) return;
    uint64_t vhash = moxy_cache_hash(vkey, vklen);
    unsigned long long id = body_id(o);
    int seen;
    moxy_cache_obj_t *v = moxy_cache_find(vkey, vklen, vhash, made_from, &id, &seen);
    if (v) {
        serve(r, v);
        return;
    }
    switch (moxy_cache_flight_begin(vkey, vklen, vhash)) {
    case MOXY_FLIGHT_LEADER:
        if ((v = lead(r, o, id, vkey, vklen, vhash))) serve(r, v);
        return;
    case MOXY_FLIGHT_WAIT: {
        int active;
        v = moxy_cache_flight_filling(vkey, vklen, vhash, &active);
        /* its leader has not attached it yet (another worker, a moment
         * ago): this one compresses for itself */
        if (v && v->variant_of == id && atomic_load_explicit(&v->fill_state, memory_order_acquire) >= 0) serve(r, v);
        else if (v) moxy_cache_obj_unref(v);
        return;
    }
    default: /* MOXY_FLIGHT_FREE */
        return;
    }
}

int moxy_cache_drop(const char *key, size_t klen)
{
    int n = moxy_cache_invalidate(key, klen);
    char small[512], *buf = klen + 16 <= sizeof(small) ? small : malloc(klen + 16);
    if (!buf) return n;
    memcpy(buf, key, klen);
    buf[klen] = VARIANT_SEP;
    for (int e = MOXY_ENC_IDENTITY + 1; e < MOXY_ENC_COUNT; e++) {
        size_t nlen = strlen(moxy_enc_name(e));
        memcpy(buf + klen + 1, moxy_enc_name(e), nlen);
        n += moxy_cache_invalidate(buf, klen + 1 + nlen);
    }
    if (buf != small) free(buf);
    return n;
}
