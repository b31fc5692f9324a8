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
 * It is made once, not once per concurrent client: the first hit leads a
 * flight on the variant's key (cache.h); hits meanwhile stream the variant
 * from the leader's object as it fills (its length unknown: chunked), like
 * the waiters of a collapsed miss.  Hits with on_body hooks, ranges and
 * conditions are no business of variants (the stage or the 304 path).
 */
#include "cache/cache.h"
#include "cache/http_cache.h"
#include "base/log.h"
#include "codec/coder.h"
#include "http/body_filter.h"
#include "http/compress.h"
#include "http/request.h"

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

/* --- the leader's fill: a tap after the coder --- */

static void vfill_data(moxy_req_t *r, const char *data, size_t len)
{
    if (!r->cache_vfill) return; /* given up */
    if (moxy_cache_obj_append(r->cache_vfill, data, len) != MOXY_OK) {
        moxy_log(MOXY_LOG_INFO, r->id, "cache: %s's %s variant not stored: larger than cache.max_object", r->cache_key,
                 moxy_enc_name(r->coding_enc));
        moxy_cache_variant_free(r);
    }
}

static void vfill_end(moxy_req_t *r)
{
    moxy_cache_obj_t *v = r->cache_vfill;
    if (!v) return;
    r->cache_vfill = NULL;
    atomic_store_explicit(&v->fill_state, 1, memory_order_release);
    moxy_cache_publish(v);
    moxy_cache_obj_unref(v);
    moxy_cache_flight_end(r->cache_vkey, r->cache_vklen, r->cache_vhash, 0);
    r->cache_vkey = NULL;
}

static const moxy_body_tap_ops_t vfill_tap = {"cache variant", vfill_data, vfill_end};

void moxy_cache_variant_free(moxy_req_t *r)
{
    if (r->cache_vfill) { /* an incomplete variant is not stored; its streams are cut */
        atomic_store_explicit(&r->cache_vfill->fill_state, -1, memory_order_release);
        moxy_cache_obj_unref(r->cache_vfill);
        r->cache_vfill = NULL;
    }
    if (r->cache_vkey) moxy_cache_flight_end(r->cache_vkey, r->cache_vklen, r->cache_vhash, 0);
    r->cache_vkey = NULL;
}

/* Lead the making of o's variant v_key: a new object the coder's output
 * fills (through an out tap), offered to the hits that come meanwhile. */
static void lead(moxy_req_t *r, moxy_cache_obj_t *o, unsigned long long id)
{
    moxy_cache_obj_t *v = moxy_cache_obj_new(r->cache_vkey, r->cache_vklen, r->cache_vhash);
    if (!v) goto none;
    v->variant_of = id;
    v->status = o->status;
    /* its Vary values are its object's: a key's variants of each stay apart */
    if (o->vary && (!(v->vary = strdup(o->vary)) || !(v->vary_values = strdup(o->vary_values ? o->vary_values : ""))))
        goto none;
    v->response_time = o->response_time;
    v->initial_age = o->initial_age;
    v->lifetime = o->lifetime;
    if (moxy_body_tap_add(r, &vfill_tap, MOXY_TAP_OUT) != MOXY_OK) goto none;
    r->cache_vfill = v;
    moxy_cache_flight_attach(r->cache_vkey, r->cache_vklen, r->cache_vhash, v);
    return;
none:
    if (v) moxy_cache_obj_unref(v);
    moxy_cache_variant_free(r); /* ends the flight: the others compress for themselves */
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
        r->cache_vkey = vkey;
        r->cache_vklen = (uint32_t)vklen;
        r->cache_vhash = vhash;
        lead(r, o, id);
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
