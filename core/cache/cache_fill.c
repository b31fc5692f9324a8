/*
 * cache_fill.c -- the origin's response for the cache: whether it is
 * stored (RFC 9111 3), its object filled as the body streams by and
 * published at its end, a 304 that freshens a stored object, stale-if-error,
 * invalidation by unsafe methods (4.4); and moxy.test's steps.
 */
#include "cache/cache.h"
#include "cache/cache_policy.h"
#include "cache/http_cache.h"
#include "base/headers.h"
#include "http/http.h"
#include "http/body_filter.h"
#include "http/request.h"
#include "base/log.h"
#include "base/addr.h"
#include "net/io.h"
#include "http/lua_bridge.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* --- the response from the origin --- */

/* Invalidate the key of the URI reference in field name of r's response,
 * when it is on the request's host (RFC 9111 4.4). */
static void invalidate_ref(moxy_req_t *r, const char *name, size_t nlen)
{
    const moxy_header_t *h = moxy_headers_get(&r->resp_headers, name, nlen);
    if (!h || !r->host) return;
    const char *v = h->value;
    size_t vl = h->value_len, hl = strlen(r->host);
    /* an absolute reference: the request's own scheme and host only */
    const char *scheme = r->https ? "https://" : "http://";
    size_t sl = strlen(scheme);
    if (vl >= sl && moxy_strieq(v, sl, scheme, sl)) {
        if (vl < sl + hl || !moxy_strieq(v + sl, hl, r->host, hl) || (vl > sl + hl && v[sl + hl] != '/')) return;
        v += sl + hl;
        vl -= sl + hl;
    }
    if (vl == 0 || v[0] != '/') return;
    const char *qm = memchr(v, '?', vl);
    uint32_t kl;
    char *key = moxy_cache_build_key(&r->mem, r->https, r->host, v, vl, qm ? (size_t)(qm - v) : vl, &kl);
    if (key) moxy_cache_drop(key, kl);
}

/* Append h to a stored head at p ("Name: value\r\n"), unless it is
 * hop-by-hop or one moxy writes for each response (Content-Length, Age,
 * Cache-Status, X-Request-Id).  Returns the new end. */
static char *store_field(char *p, const moxy_header_t *h)
{
    if (h->kind & (MOXY_HK_HOP | MOXY_HK_CONNECTION | MOXY_HK_TE | MOXY_HK_CL | MOXY_HK_UPGRADE | MOXY_HK_XRID))
        return p;
    if (MOXY_STRIEQ_LIT(h->name, h->name_len, "age") || MOXY_STRIEQ_LIT(h->name, h->name_len, "cache-status"))
        return p;
    memcpy(p, h->name, h->name_len);
    p += h->name_len;
    memcpy(p, ": ", 2);
    p += 2;
    memcpy(p, h->value, h->value_len);
    p += h->value_len;
    memcpy(p, "\r\n", 2);
    return p + 2;
}

/* The directives of a response to r with head hs: its targeted field's
 * (cache.targeted_fields, RFC 9213) or its Cache-Control's. */
static void response_cc(const moxy_req_t *r, const moxy_headers_t *hs, moxy_cc_t *cc)
{
    static char *const cdn[] = {"CDN-Cache-Control"}; /* moxy.test's runs: the default */
    const moxy_conf_t *conf = r->g->conf;
    if (conf->cache.enabled) moxy_cache_response_cc(hs, conf->cache.targeted, conf->cache.ntargeted, cc);
    else moxy_cache_response_cc(hs, cdn, 1, cc);
}

/* When the response r got from the origin (head origin: its Date and Age)
 * was asked for and came, its Date, and its corrected initial age (RFC
 * 9111 4.2.3). */
typedef struct {
    double request, response, date, initial_age;
} times_t;

static void response_times(const moxy_req_t *r, const moxy_headers_t *origin, times_t *t)
{
    t->response = evutil_timerisset(&r->up_header) ? moxy_cache_tv_secs(&r->up_header) : moxy_cache_wall_now(r);
    t->request = evutil_timerisset(&r->up_started) ? moxy_cache_tv_secs(&r->up_started) : t->response;
    t->date = moxy_cache_date(moxy_headers_get(origin, "Date", 4));
    if (t->date < 0) t->date = t->response;
    double age_value = moxy_cache_age(origin);
    t->initial_age = MOXY_MAX(MOXY_MAX(0, t->response - t->date), age_value + (t->response - t->request));
}

/* o's head as stored (hs's fields, store_field), its validators, times
 * and freshness (life; the flags from cc).  MOXY_ERROR: out of memory. */
static int object_fill(moxy_cache_obj_t *o, const moxy_headers_t *hs, const times_t *t, const moxy_cc_t *cc,
                       double life)
{
    o->head = malloc(moxy_headers_size(hs) + 1);
    if (!o->head) return MOXY_ERROR;
    char *p = o->head;
    const moxy_headers_t *conn = moxy_headers_connection_list(hs);
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        if (moxy_header_connection_named(conn, h->name, h->name_len)) continue; /* hop-by-hop */
        /* a cookie is for the client that caused the fetch, never for the others a
         * stored copy answers (such a response is stored only by txn.cache:store{}) */
        if (MOXY_STRIEQ_LIT(h->name, h->name_len, "set-cookie")) continue;
        p = store_field(p, h);
        if (MOXY_STRIEQ_LIT(h->name, h->name_len, "etag") && !o->etag) o->etag = strndup(h->value, h->value_len);
        if (MOXY_STRIEQ_LIT(h->name, h->name_len, "last-modified") && !o->last_modified) {
            o->last_modified = strndup(h->value, h->value_len);
            if (o->last_modified) o->lm_time = moxy_cache_date(h); /* parsed once, not on each If-Modified-Since */
        }
    }
    o->head_len = (size_t)(p - o->head);
    o->response_time = t->response;
    o->initial_age = t->initial_age;
    o->lifetime = life;
    o->must_revalidate = cc->must_revalidate;
    o->s_maxage = cc->s_maxage >= 0;
    o->no_cache = cc->no_cache;
    o->stale_while_revalidate = cc->swr;
    o->stale_if_error = cc->sie;
    return MOXY_OK;
}

/* The origin answered 304 to the revalidation of r->cache_reval (its
 * head in r->resp_headers): a new object, the stored head updated by the
 * 304's fields (RFC 9111 4.3.4), new times, the old body (shared).
 * NULL when out of memory. */
static moxy_cache_obj_t *freshen(moxy_req_t *r)
{
    moxy_cache_obj_t *old = r->cache_reval;
    const moxy_headers_t *fresh = &r->resp_headers;
    moxy_pool_t *pool = &r->mem;
    /* the stored fields, those the 304 brings replaced by its own */
    moxy_headers_t merged = {0};
    if (moxy_cache_head_parse(pool, old->head, old->head_len, &merged) != MOXY_OK) return NULL;
    for (uint32_t i = 0; i < fresh->n; i++) moxy_headers_remove(&merged, fresh->h[i].name, fresh->h[i].name_len);
    for (uint32_t i = 0; i < fresh->n; i++) {
        const moxy_header_t *h = &fresh->h[i];
        if (moxy_headers_add(pool, &merged, h->name, h->name_len, h->value, h->value_len) != MOXY_OK) return NULL;
    }
    moxy_cache_obj_t *o = moxy_cache_obj_new(old->key, old->klen, old->hash);
    if (!o) return NULL;
    o->status = old->status;
    o->body_owner = (moxy_cache_obj_t *)moxy_cache_body(old);
    moxy_cache_obj_ref(o->body_owner);
    o->body_len = old->body_len;
    if (old->vary) {
        o->vary = strdup(old->vary);
        o->vary_values = strdup(old->vary_values);
        if (!o->vary || !o->vary_values) goto fail;
    }
    moxy_cc_t cc;
    response_cc(r, &merged, &cc);
    times_t t;
    response_times(r, fresh, &t);
    double life = r->cache_ttl >= 0 ? r->cache_ttl : moxy_cache_lifetime(&merged, o->status, &cc, t.date);
    if (object_fill(o, &merged, &t, &cc, life) != MOXY_OK) goto fail;
    return o;
fail:
    moxy_cache_obj_unref(o);
    return NULL;
}

/* 1 when r may be answered with the stale object it kept because the
 * origin failed (stale-if-error, RFC 5861 4); the clock is read only when
 * there is one. */
static int stale_usable(const moxy_req_t *r)
{
    const moxy_cache_obj_t *o = r->cache_reval;
    return o && !r->resp_head_sent && moxy_cache_stale_if_error_allows(r, o, moxy_cache_wall_now(r));
}

int moxy_cache_stale_on_error(moxy_req_t *r, int status)
{
    if (!stale_usable(r)) return 0;
    moxy_log(MOXY_LOG_WARN, r->id, "cache: origin failed (%d); serving %s stale (stale-if-error)", status, r->cache_key);
    r->cache_fwd_status = status;
    moxy_cache_answer_kept(r);
    return 1;
}

int moxy_cache_upstream_head(moxy_req_t *r)
{
    moxy_cache_obj_t *old = r->cache_reval;
    if (!old) return MOXY_DECLINED;
    if (r->status == 304 && r->cache_conditional) {
        moxy_cache_obj_t *o = freshen(r);
        if (!o) { /* the client gets the 304 it cannot use: rare, out of memory */
            moxy_log(MOXY_LOG_ERR, r->id, "cache: %s: cannot refresh the stored response (out of memory)", r->cache_key);
            return MOXY_DECLINED;
        }
        moxy_cache_publish(o);
        moxy_cache_attach(r);
        r->cache_reval = o; /* the filler's reference: served by moxy_cache_answer_kept */
        r->cache_etag = o->etag;
        r->cache_last_modified = o->last_modified;
        moxy_cache_obj_unref(old);
        r->cache_fwd_status = 304;
        return MOXY_DONE;
    }
    if (r->status >= 500 && stale_usable(r)) {
        moxy_log(MOXY_LOG_WARN, r->id, "cache: origin answered %d; serving %s stale (stale-if-error)", r->status,
                 r->cache_key);
        r->cache_fwd_status = r->status;
        return MOXY_DONE;
    }
    return MOXY_DECLINED;
}

void moxy_cache_answer_kept(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_reval;
    r->cache_reval = NULL;
    r->cache_conditional = 0;
    r->cache_etag = r->cache_last_modified = NULL;
    r->cache_head.h = NULL; /* nothing of the origin's is stored */
    if (!r->cache_background) { /* a refresh's lookup was its client request's */
        r->cache_state = r->cache_fwd_status == 304 ? MOXY_CACHE_HIT : MOXY_CACHE_STALE;
        if (r->cache_fwd_status == 304) moxy_cache_count_lookup(r, 1);
    }
    moxy_cache_serve(r, o, moxy_cache_wall_now(r));
}

void moxy_cache_response_head(moxy_req_t *r)
{
    if (r->cache_invalidate) {
        if (r->status < 400 && r->cache_key) {
            moxy_cache_drop(r->cache_key, r->cache_klen);
            invalidate_ref(r, "Location", 8);
            invalidate_ref(r, "Content-Location", 16);
        }
        return;
    }
    if (!r->cache_fwd) return; /* not looked up: a method the cache leaves alone */
    if (r->cache_lookup && !r->cache_no_store) {
        /* the origin's head as it came: what is stored, whatever on_response does */
        moxy_headers_t *hs = &r->cache_head;
        hs->h = moxy_palloc(&r->mem, (r->resp_headers.n + 1) * sizeof(moxy_header_t));
        if (hs->h) {
            memcpy(hs->h, r->resp_headers.h, r->resp_headers.n * sizeof(moxy_header_t));
            hs->n = hs->cap = r->resp_headers.n;
        }
    }
    /* cache.shard: who answered the miss -- the owner (whose own entry
     * comes before this one), or the origin when the owner was not reached */
    if (r->shard_state == MOXY_SHARD_OWNER || r->shard_state == MOXY_SHARD_FALLBACK) {
        const char *d = r->shard_state == MOXY_SHARD_OWNER ? "shard-owner" : "shard-fallback";
        size_t n = strlen(r->cache_fwd) + 32;
        char *f = moxy_palloc(&r->mem, n);
        if (f && !strstr(r->cache_fwd, "; detail=")) {
            snprintf(f, n, "%s; detail=%s", r->cache_fwd, d);
            r->cache_fwd = f;
        }
    }
    /* the lookup's verdict on the response that answers it (not on a 1xx,
     * nor on a try that is retried), after the entries of caches nearer the
     * origin (RFC 9211 2) */
    if (moxy_headers_add(&r->mem, &r->resp_headers, "Cache-Status", 12, r->cache_fwd, strlen(r->cache_fwd)) ==
        MOXY_OK)
        r->resp_headers.h[r->resp_headers.n - 1].kind |= MOXY_HK_OWN; /* moxy's own: never masked */
}

/* 1 for a status whose caching requirements moxy implements. */
static int understood_status(int status)
{
    return moxy_cache_heuristic_status(status) || status == 302 || status == 307;
}

#define CAP_STR_(x) #x
#define CAP_STR(x) CAP_STR_(x) /* a limit's value, in a message */
#define VARY_TOO_BIG                                                                               \
    "Vary names more than " CAP_STR(MOXY_CACHE_VARY_NAMES) " fields or " CAP_STR(MOXY_CACHE_VARY_BYTES) " bytes"

/* Whether the origin's response to r (its head as it came, r->cache_head)
 * is stored, by RFC 9111 3 and the txn.cache calls: NULL, with its
 * freshness lifetime in *life (and the directives, times and Vary names --
 * malloc'ed, or NULL -- the object is made with); or why not.  max_object:
 * the largest body stored. */
static const char *verdict(moxy_req_t *r, size_t max_object, moxy_cc_t *cc, times_t *t, double *life, char **vary)
{
    const char *why = NULL;
    const moxy_headers_t *hs = &r->cache_head;
    int status = r->up_status;
    response_cc(r, hs, cc);
    *vary = NULL;
    response_times(r, hs, t);
    *life = moxy_cache_lifetime(hs, status, cc, t->date);
    int has_validator = moxy_headers_get(hs, "ETag", 4) || moxy_headers_get(hs, "Last-Modified", 13);
    int forced = r->cache_ttl >= 0; /* txn.cache:store{ttl} */
    if (forced) *life = r->cache_ttl;
    if (r->method != HTTP_GET) why = "method";
    else if (r->cache_no_store) why = "no-store";
    /* cache.shard: the owner keeps what it sent (a script's store{} here
     * still keeps a copy here too) */
    else if (r->shard_state == MOXY_SHARD_OWNER && !forced) why = "kept by its owner (cache.shard)";
    else if (status < 200 || status == 206 || status == 304) why = "status";
    else if (forced) why = NULL;
    /* must-understand (RFC 9111 5.2.2.3): no-store yields for a status whose
     * caching rules moxy implements; any other status is not stored */
    else if (cc->must_understand && !understood_status(status)) why = "must-understand";
    else if (cc->no_store && !cc->must_understand) why = "no-store";
    else if (cc->private_) why = "private";
    else if (moxy_headers_get(&r->headers, "Authorization", 13) && !cc->public_ && !cc->must_revalidate &&
             cc->s_maxage < 0)
        why = "authorization";
    else if (moxy_headers_get(hs, "Set-Cookie", 10)) why = "set-cookie";
    else if (cc->no_cache && !has_validator) why = "no-cache without a validator";
    else if (*life < 0 && !(moxy_cache_heuristic_status(status) && has_validator)) why = "no freshness";
    else if (*life <= 0 && !has_validator) why = "not fresh";
    if (!why && r->resp_body_kind == MOXY_BODY_LENGTH && r->resp_body_left > max_object) why = "too big";
    if (!why) {
        int rc = moxy_cache_vary_of(hs, vary);
        if (rc == MOXY_DECLINED) why = VARY_TOO_BIG;
        else if (rc != MOXY_OK) why = "out of memory";
        else if (*vary && strcmp(*vary, "*") == 0) why = "vary *";
    }
    if (!why && forced && *life <= 0) why = "ttl 0";
    if (why) {
        free(*vary);
        *vary = NULL;
    }
    return why;
}

static void fill_data(moxy_req_t *r, const char *data, size_t len);
static void fill_end(moxy_req_t *r);
static const moxy_body_tap_ops_t fill_tap = {.name = "cache fill", .data = fill_data, .end = fill_end};

int moxy_cache_response_decide(moxy_req_t *r)
{
    if (!r->cache_head.h) return r->cache_background ? MOXY_DONE : MOXY_OK;
    moxy_cc_t cc;
    times_t t;
    double life;
    char *vary;
    const char *why = verdict(r, moxy_cache_max_object(), &cc, &t, &life, &vary);
    const moxy_headers_t *hs = &r->cache_head;
    int status = r->up_status;
    if (why) {
        moxy_log(MOXY_LOG_DEBUG, r->id, "cache: %s not stored: %s", r->cache_key, why);
        /* a refresh the origin answered with something not to keep: the
         * stale object it was to replace is not served any more either
         * (an origin that fails, 5xx, leaves it for its stale windows) */
        if (r->cache_background && status < 500) moxy_cache_drop(r->cache_key, r->cache_klen);
        moxy_cache_flight_over(r, 1); /* the waiters go to the origin themselves, new requests too */
        return r->cache_background ? MOXY_DONE : MOXY_OK;
    }
    moxy_cache_obj_t *o = moxy_cache_obj_new(r->cache_key, r->cache_klen, r->cache_hash);
    if (!o) {
        free(vary);
        return r->cache_background ? MOXY_DONE : MOXY_OK;
    }
    o->vary = vary;
    if (vary) {
        const char *vv = moxy_cache_vary_values(&r->mem, &r->headers, vary);
        if (!vv) /* (or out of memory) */
            moxy_log(MOXY_LOG_DEBUG, r->id, "cache: %s not stored: the request's values of Vary's fields pass %d "
                     "bytes", r->cache_key, MOXY_CACHE_VARY_VALUES_MAX);
        o->vary_values = vv ? strdup(vv) : NULL;
        if (!o->vary_values) goto fail;
    }
    o->status = status;
    if (object_fill(o, hs, &t, &cc, life) != MOXY_OK) goto fail;
    if (r->cache_ttl >= 0 && r->cache_stale >= 0) o->stale_if_error = r->cache_stale;
    if (moxy_body_tap_add(r, &fill_tap) != MOXY_OK) goto fail;
    moxy_cache_attach(r);
    r->cache_fill = o;
    if (r->resp_body_kind == MOXY_BODY_LENGTH) moxy_cache_obj_reserve(o, r->resp_body_left);
    if (r->cache_leader && r->resp_body_kind == MOXY_BODY_LENGTH && r->resp_body_left > 0) {
        o->expected = r->resp_body_left; /* waiters may stream from it as it fills */
        moxy_cache_flight_attach(r->cache_key, r->cache_klen, r->cache_hash, o);
    }
    /* the lookup's Cache-Status, and that this response is stored */
    moxy_cache_set_status(r, "%s; stored; ttl=%.0f", r->cache_fwd, floor(life - o->initial_age));
    return MOXY_OK;
fail:
    moxy_cache_obj_unref(o);
    moxy_cache_flight_over(r, 0); /* nothing to wait for: the waiters go on now */
    return r->cache_background ? MOXY_DONE : MOXY_OK;
}

/* The fill: a tap on the response body (http/body_filter.h) that stores
 * what the origin sends in r->cache_fill, and publishes it at the end. */
static void fill_data(moxy_req_t *r, const char *data, size_t len)
{
    if (!r->cache_fill) return; /* given up (too large) */
    if (moxy_cache_obj_append(r->cache_fill, data, len) != MOXY_OK) {
        moxy_log(MOXY_LOG_INFO, r->id, "cache: %s not stored: larger than cache.max_object", r->cache_key);
        atomic_store_explicit(&r->cache_fill->fill_state, -1, memory_order_release);
        moxy_cache_obj_unref(r->cache_fill);
        r->cache_fill = NULL;
    }
}

static void fill_end(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_fill;
    if (!o) return;
    r->cache_fill = NULL;
    atomic_store_explicit(&o->fill_state, 1, memory_order_release);
    moxy_cache_publish(o);
    moxy_cache_obj_unref(o);
    moxy_cache_flight_over(r, 0);
}

void moxy_cache_req_free(moxy_req_t *r)
{
    moxy_cache_flight_over(r, 0);
    if (r->cache_wait) event_del(r->cache_wait); /* its client left while it waited or streamed */
    r->cache_wait = NULL;
    if (r->cache_fill) { /* an incomplete response is not stored; its streams are cut */
        atomic_store_explicit(&r->cache_fill->fill_state, -1, memory_order_release);
        moxy_cache_obj_unref(r->cache_fill);
    }
    if (r->cache_obj) moxy_cache_obj_unref(r->cache_obj);
    if (r->cache_reval) moxy_cache_obj_unref(r->cache_reval);
    r->cache_fill = r->cache_obj = r->cache_reval = NULL;
    r->cache_etag = r->cache_last_modified = NULL;
}

/* --- moxy.test's steps (http.h) --- */

int moxy_cache_test_key(moxy_req_t *r)
{
    return moxy_cache_looked_up(r) && !r->cache_bypass && moxy_cache_make_key(r) == MOXY_OK;
}

void moxy_cache_test_lookup(moxy_req_t *r)
{
    if (!moxy_cache_looked_up(r) || moxy_cache_bypassed(r)) return;
    r->cache_lookup = 1;
    r->cache_state = MOXY_CACHE_MISS;
    r->cache_fwd = "moxy; fwd=uri-miss";
}

const char *moxy_cache_test_verdict(moxy_req_t *r, size_t max_object, double *ttl)
{
    if (!r->cache_head.h) return r->cache_bypass ? "bypass" : !r->cache_lookup ? "not looked up" : "no-store";
    moxy_cc_t cc;
    times_t t;
    double life;
    char *vary;
    const char *why = verdict(r, max_object, &cc, &t, &life, &vary);
    free(vary);
    *ttl = why ? -1 : life;
    if (!why) moxy_cache_set_status(r, "%s; stored; ttl=%.0f", r->cache_fwd, floor(life - t.initial_age)); /* as decide */
    return why;
}

const moxy_proxy_cache_t moxy_cache_for_proxy = {
    .upstream_head = moxy_cache_upstream_head,
    .answer_kept = moxy_cache_answer_kept,
    .stale_on_error = moxy_cache_stale_on_error,
    .response_head = moxy_cache_response_head,
    .response_decide = moxy_cache_response_decide,
};
