/*
 * http_cache.c -- the HTTP cache in a request's life (RFC 9111): the key
 * and lookup after on_request, hits served from the store (cache.h),
 * misses' responses judged storable and copied into a new object while
 * they stream to the client, unsafe methods invalidating, Age and
 * Cache-Status (RFC 9211) on every GET and HEAD, revalidation, stale
 * answers, coalescing of concurrent misses.  The rules themselves
 * (directives, dates, freshness, Vary, conditions, ranges, the key) are
 * cache_policy.c's.
 *
 * What a hit runs: on_response (on the stored head), on_body, on_log --
 * as a response from the origin would; not on_upstream.
 */
#include "cache/cache.h"
#include "cache/cache_policy.h"
#include "cache/http_cache.h"
#include "base/headers.h"
#include "http/http.h"
#include "http/body_filter.h"
#include "http/compress.h"
#include "http/request.h"
#include "base/log.h"
#include "base/addr.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

static moxy_cache_purged_fn purge_hook;

void moxy_cache_set_purge_hook(moxy_cache_purged_fn fn)
{
    purge_hook = fn;
}

/* r holds something of the cache's (an object reference, a flight, a
 * wait): moxy_cache_req_free lets it go when r ends. */
void moxy_cache_attach(moxy_req_t *r)
{
    moxy_req_cleanup_add(r, moxy_cache_req_free);
}

/* --- the key --- */

int moxy_cache_make_key(moxy_req_t *r)
{
    if (r->cache_key) return MOXY_OK; /* txn.cache.key set in on_request */
    r->cache_key = moxy_cache_build_key(&r->mem, r->https, r->host ? r->host : "", r->uri, r->uri_len, r->path_len,
                                        &r->cache_klen);
    if (!r->cache_key) return MOXY_ERROR;
    r->cache_hash = moxy_cache_hash(r->cache_key, r->cache_klen);
    return MOXY_OK;
}

/* --- Vary --- */

static int variant_matches(const moxy_cache_obj_t *o, void *arg)
{
    moxy_req_t *r = arg;
    if (!o->vary) return 1;
    /* the request's values for these fields, made once: a key's variants
     * (and a waiter's looks) name the same fields */
    if (!r->cache_vary || strcmp(r->cache_vary, o->vary) != 0) {
        char *names = moxy_pstrdup(&r->mem, o->vary, strlen(o->vary));
        if (!names) return 0;
        r->cache_vary = names;
        r->cache_vary_values = moxy_cache_vary_values(&r->mem, &r->headers, names);
    }
    return r->cache_vary_values && strcmp(r->cache_vary_values, o->vary_values) == 0;
}

/* --- age and freshness (RFC 9111 4.2) --- */

double moxy_cache_tv_secs(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

double moxy_cache_wall_now(const moxy_req_t *r)
{
    struct timeval now;
    event_base_gettimeofday_cached(r->w->base, &now);
    return moxy_cache_tv_secs(&now);
}

static double current_age(const moxy_cache_obj_t *o, double now)
{
    double resident = now - o->response_time;
    return o->initial_age + (resident > 0 ? resident : 0);
}

/* 1 when o, stale, may still answer r whose origin failed now: within
 * its stale-if-error (RFC 5861 4), or, without one, cache.stale_if_error
 * (RFC 9111 4.2.4: the origin is as good as disconnected) unless it must
 * be revalidated before every use, or has s-maxage, which implies
 * proxy-revalidate for a shared cache (RFC 9111 5.2.2.10; the origin's
 * own stale-if-error or stale-while-revalidate still counts). */
int moxy_cache_stale_if_error_allows(const moxy_req_t *r, const moxy_cache_obj_t *o, double now)
{
    double window = o->stale_if_error;
    if (window < 0 && !o->no_cache && !o->s_maxage && r->g->conf->cache.stale_if_error > 0)
        window = r->g->conf->cache.stale_if_error;
    double stale_for = current_age(o, now) - MOXY_MAX(o->lifetime, 0);
    return window >= 0 && !o->must_revalidate && stale_for <= window;
}

/* 1 when o may be used without revalidation now (RFC 9111 4.2). */
static int fresh_now(const moxy_cache_obj_t *o, double now)
{
    return o->lifetime >= 0 && !o->no_cache && current_age(o, now) < o->lifetime;
}

/* --- Cache-Status (RFC 9211) and Age on the response --- */

void moxy_cache_set_status(moxy_req_t *r, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    moxy_headers_set(&r->mem, &r->resp_headers, "Cache-Status", 12, buf, (size_t)MOXY_MIN(n, (int)sizeof(buf) - 1));
}

/* --- the request --- */

/* Count r's lookup as a hit or a miss, in its worker's counts (r's own
 * thread: one writer, no locked instruction on the request path). */
void moxy_cache_count_lookup(moxy_req_t *r, int hit)
{
    moxy_stats_t *st = &r->w->stats;
    if (hit) MOXY_STAT_ADD(st->cache_hits, 1);
    else MOXY_STAT_ADD(st->cache_misses, 1);
}

/* 1 for a method whose success invalidates its target (RFC 9111 4.4):
 * any but the safe ones (RFC 9110 9.2.1, and WebDAV's), methods whose
 * safety is unknown included; CONNECT has no target to invalidate. */
static int unsafe_method(int m)
{
    return m != HTTP_GET && m != HTTP_HEAD && m != HTTP_OPTIONS && m != HTTP_TRACE && m != HTTP_CONNECT &&
           m != HTTP_PROPFIND && m != HTTP_REPORT && m != HTTP_SEARCH;
}

static void seg_release(const void *data, size_t len, void *arg)
{
    MOXY_UNUSED(data);
    MOXY_UNUSED(len);
    moxy_cache_obj_unref(arg);
}

static void file_release(const struct evbuffer_file_segment *seg, int flags, void *arg)
{
    MOXY_UNUSED(seg);
    MOXY_UNUSED(flags);
    moxy_cache_obj_unref(arg);
}

/* Bytes [from, end) of o's body by reference, each piece holding a
 * reference to o until it has left: into b (the on_body filter's input),
 * or, b NULL, out through r's stream.  Positions step by each segment's
 * capacity: every segment but the last is full, and one still filling (a
 * stream) is read no further than end, nor its successor's link once end is
 * reached.  to_socket (a stream whose transport can, use_sendfile): a body
 * in a memfd goes as a file segment, sent with sendfile, so that not even
 * the kernel's copy from moxy's memory is made.  MOXY_ERROR: out of
 * memory. */
static int add_body(moxy_req_t *r, struct evbuffer *b, moxy_cache_obj_t *o, uint64_t from, uint64_t end,
                    int to_socket)
{
    const moxy_cache_obj_t *bo = moxy_cache_body(o);
    if (!b && to_socket && bo->body_fd >= 0 && end > from) {
        struct evbuffer_file_segment *seg =
            evbuffer_file_segment_new(bo->body_fd, 0, (ev_off_t)bo->body->cap, EVBUF_FS_DISABLE_LOCKING);
        if (!seg) return MOXY_ERROR;
        moxy_cache_obj_ref(o); /* released with the segment, once its bytes have left */
        evbuffer_file_segment_add_cleanup_cb(seg, file_release, o);
        int rc = moxy_stream_send_file(r, seg, from, end - from);
        evbuffer_file_segment_free(seg); /* the output holds its own reference */
        return rc;
    }
    uint64_t pos = 0;
    for (const moxy_cache_seg_t *s = bo->body; s; s = s->next) {
        uint64_t lo = MOXY_MAX(pos, from), hi = MOXY_MIN(pos + s->cap, end);
        if (hi > lo) {
            const char *data = s->data + (lo - pos);
            size_t n = (size_t)(hi - lo);
            moxy_cache_obj_ref(o); /* released when the bytes have left */
            int rc = b ? (evbuffer_add_reference(b, data, n, seg_release, o) == 0 ? MOXY_OK : MOXY_ERROR)
                       : moxy_stream_send_ref(r, data, n, seg_release, o);
            if (rc != MOXY_OK) {
                moxy_cache_obj_unref(o);
                return MOXY_ERROR;
            }
        }
        pos += s->cap;
        if (pos >= end) break;
    }
    return MOXY_OK;
}

/* Whether r's client gets a memfd body with sendfile (cache.sendfile): only
 * when its transport can (conn.h), and not by default when it is on this
 * host, where receiving sendfile's page references costs the client more
 * than the copy costs moxy (on loopback about 2.3 times the CPU per byte
 * received). */
static int use_sendfile(const moxy_req_t *r)
{
    int mode = r->g->conf->cache.sendfile;
    int can = moxy_stream_sendfile(r);
    if (!(can & MOXY_STREAM_SENDFILE)) return 0;
    return mode == MOXY_SENDFILE_AUTO ? !(can & MOXY_STREAM_LOCAL_PEER) : mode;
}

/* o's bytes [from, end) for r's client: to the on_body hooks when they
 * filter r's body, else out through r's stream.  MOXY_ERROR: out of
 * memory. */
static int send_body(moxy_req_t *r, moxy_cache_obj_t *o, uint64_t from, uint64_t end)
{
    if (r->filtering) return add_body(r, r->filter_in, o, from, end, 0);
    return add_body(r, NULL, o, from, end, use_sendfile(r));
}

/* The "Name: value\r\n" lines of a stored head (len bytes) appended to
 * list, copied into pool.  MOXY_ERROR: out of memory. */
int moxy_cache_head_parse(moxy_pool_t *pool, const char *head, size_t len, moxy_headers_t *list)
{
    for (const char *p = head, *end = head + len; p < end;) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!colon || !eol || colon > eol) break;
        const char *v = colon + 2 <= eol ? colon + 2 : eol;
        if (moxy_headers_add(pool, list, p, (size_t)(colon - p), v, (size_t)(eol - v)) != MOXY_OK) return MOXY_ERROR;
        p = eol + 2;
    }
    return MOXY_OK;
}

/* The stored head of o as r's response head. */
static int load_head(moxy_req_t *r, const moxy_cache_obj_t *o)
{
    r->resp_headers.n = 0;
    return moxy_cache_head_parse(&r->mem, o->head, o->head_len, &r->resp_headers);
}

/* Serve r from o (a fresh hit, or a 304 for the client's condition). */
void moxy_cache_serve(moxy_req_t *r, moxy_cache_obj_t *o, double now)
{
    moxy_cache_attach(r);
    r->cache_obj = o;
    r->cache_hit = 1;
    if (load_head(r, o) != MOXY_OK) {
        moxy_req_fail(r, 500, "out of memory");
        return;
    }
    /* stored as the origin sent it; masked on the way out, before the
     * fields moxy adds and before on_response (mask.h) */
    r->resp_h2 = 0;
    moxy_mask_response(r);
    /* a stored head has no Age nor Content-Length (store_field): added, not set */
    double age = current_age(o, now);
    char ab[24];
    int n = snprintf(ab, sizeof(ab), "%.0f", floor(age));
    moxy_headers_add(&r->mem, &r->resp_headers, "Age", 3, ab, (size_t)n);
    if (r->cache_fwd_status == 304) /* revalidated */
        moxy_cache_set_status(r, "moxy; fwd=stale; fwd-status=304; stored; ttl=%.0f", floor(o->lifetime - age));
    else if (r->cache_fwd_status) /* the origin failed: stale-if-error */
        moxy_cache_set_status(r, "moxy; fwd=stale; fwd-status=%d; ttl=%.0f", r->cache_fwd_status, floor(o->lifetime - age));
    else
        moxy_cache_set_status(r, "moxy; hit; ttl=%.0f%s", floor(o->lifetime - age), r->cache_collapsed ? "; collapsed" : "");
    r->status = o->status;
    r->up_status = o->status;
    /* streaming from an object still filling: its announced length (its
     * body_len is the filler's to write) */
    uint64_t body_len = r->cache_streaming ? o->expected : o->body_len;
    r->resp_body_kind = body_len ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
    r->resp_body_left = body_len;
    if (r->method == HTTP_HEAD && o->status != 204) { /* the length of what a GET would get */
        char lb[24];
        size_t ln = (size_t)(moxy_write_u64(lb, body_len) - lb);
        moxy_headers_add(&r->mem, &r->resp_headers, "Content-Length", 14, lb, ln);
    }
    /* the conditions and the range, looked for only when the request has them (one pass) */
    uint32_t kinds = moxy_headers_kinds(&r->headers);
    int not_modified = (kinds & MOXY_HK_CONDITION) && moxy_cache_not_modified(&r->headers, o);
    uint64_t from, to;
    int range = (kinds & MOXY_HK_RANGE) && o->status == 200 && r->method == HTTP_GET
                    ? moxy_cache_byte_range(&r->headers, o, body_len, &from, &to)
                    : 0;
    if (range != 0 && !not_modified) {
        char cr[80];
        int cn;
        if (range > 0) {
            r->status = 206;
            r->cache_from = from;
            r->resp_body_left = to - from + 1;
            cn = snprintf(cr, sizeof(cr), "bytes %llu-%llu/%llu", (unsigned long long)from, (unsigned long long)to,
                          (unsigned long long)body_len);
        } else {
            r->status = 416;
            r->resp_body_kind = MOXY_BODY_NONE;
            r->resp_body_left = 0;
            r->cache_from = body_len;
            cn = snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)body_len);
        }
        moxy_headers_set(&r->mem, &r->resp_headers, "Content-Range", 13, cr, (size_t)cn);
    }
    if (not_modified) {
        /* its 200 would be compressed: the 304 gets that 200's Vary and ETag (compress.h) */
        r->compress_304 = moxy_compress_eligible(r);
        /* RFC 9110 15.4.5: only these fields, no body */
        static const char *const keep[] = {"cache-control", "content-location", "date", "etag", "expires",
                                           "vary", "age", "cache-status", "last-modified"};
        moxy_headers_t *hs = &r->resp_headers;
        uint32_t k = 0;
        for (uint32_t i = 0; i < hs->n; i++) {
            int ok = 0;
            for (size_t j = 0; j < MOXY_ARRAY_LEN(keep) && !ok; j++)
                ok = moxy_strieq(hs->h[i].name, hs->h[i].name_len, keep[j], strlen(keep[j]));
            if (ok) hs->h[k++] = hs->h[i];
        }
        hs->n = k;
        r->status = 304;
        r->resp_body_kind = MOXY_BODY_NONE;
        r->resp_body_left = 0;
    }
    int rc = moxy_lua_run(r, MOXY_PHASE_RESPONSE, moxy_cache_after_response_hooks);
    if (rc != MOXY_AGAIN) moxy_cache_after_response_hooks(r, rc);
}

static void stream_step(moxy_req_t *r);

void moxy_cache_after_response_hooks(moxy_req_t *r, int rc)
{
    if (rc == MOXY_DONE) {
        moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
        return;
    }
    if (rc != MOXY_OK || moxy_body_filter_start(r) != MOXY_OK) {
        moxy_req_fail(r, 500, rc != MOXY_OK ? "script error in on_response" : "out of memory");
        return;
    }
    moxy_cache_variant_hit(r); /* compressed: the object's variant of that coding, made once */
    moxy_body_send_head(r);
    moxy_cache_obj_t *o = r->cache_obj;
    if (!moxy_resp_has_body(r) || r->resp_body_kind == MOXY_BODY_NONE) {
        moxy_req_response_done(r);
        return;
    }
    if (r->cache_streaming) { /* the object still fills: its bytes go as they come */
        r->cache_sent = r->cache_from;
        stream_step(r);
        return;
    }
    /* a range: its slice */
    if (send_body(r, o, r->cache_from, r->cache_from + r->resp_body_left) != MOXY_OK) {
        moxy_stream_abort(r);
        return;
    }
    if (!r->filtering) {
        r->bytes_sent = r->resp_body_left;
        moxy_req_response_done(r);
        return;
    }
    r->filter_eof = 1;
    moxy_body_filter_continue(r);
}

/* PURGE on a cached URI, from an address cache.purge allows: every variant
 * is dropped; 200 "purged N", 404 when none was there. */
static int purge_method(moxy_req_t *r)
{
    const moxy_conf_t *conf = r->g->conf;
    const char *ip = moxy_req_client_ip(r);
    int family, port;
    uint8_t addr[16];
    if (moxy_ip_parse(ip, strlen(ip), &family, addr, &port) != MOXY_OK ||
        !moxy_cidr_match(conf->cache.purge, conf->cache.npurge, family, addr)) {
        moxy_resp_error(r, 403, "PURGE is not allowed from this address (cache.purge)");
        return MOXY_DONE;
    }
    if (moxy_cache_make_key(r) != MOXY_OK) {
        moxy_req_fail(r, 500, "out of memory");
        return MOXY_DONE;
    }
    int n = moxy_cache_drop(r->cache_key, r->cache_klen);
    if (purge_hook) purge_hook(0, r->cache_key, r->cache_klen);
    char body[64];
    int len = snprintf(body, sizeof(body), n ? "purged %d\n" : "not in cache\n", n);
    moxy_log(MOXY_LOG_INFO, r->id, "cache: PURGE %s from %s: %d object%s", r->cache_key, ip, n, n == 1 ? "" : "s");
    char *b = moxy_pstrdup(&r->mem, body, (size_t)len);
    if (!b) {
        moxy_req_fail(r, 500, "out of memory");
        return MOXY_DONE;
    }
    moxy_resp_local(r, n ? 200 : 404, b, (size_t)len);
    return MOXY_DONE;
}

/* 1 when the client's request carries conditions of its own. */
static int client_conditional(const moxy_req_t *r)
{
    return moxy_headers_find_kind(&r->headers, MOXY_HK_CONDITION | MOXY_HK_IF_RANGE, 0) >= 0;
}

/* r goes to the origin with o stale: keep o to revalidate it (the request
 * gets o's validators, RFC 9111 4.3.1) and to answer with it if the origin
 * fails within stale-if-error (RFC 5861 4); else drop it. */
static void keep_stale(moxy_req_t *r, moxy_cache_obj_t *o, double now)
{
    int validators = (o->etag || o->last_modified) && !client_conditional(r) && r->method == HTTP_GET;
    int on_error = moxy_cache_stale_if_error_allows(r, o, now);
    if (!validators && !on_error) {
        moxy_cache_obj_unref(o);
        return;
    }
    moxy_cache_attach(r);
    r->cache_reval = o;
    r->cache_conditional = validators; /* moxy_upstream_write_head adds them to what the origin gets */
    r->cache_etag = o->etag;
    r->cache_last_modified = o->last_modified;
}

static int wait_start(moxy_req_t *r, double timeout);

static void background_go(evutil_socket_t fd, short what, void *arg)
{
    moxy_req_t *r = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    r->cache_wait = NULL;
    moxy_upstream_try(r);
}

/* Fetch r's key from the origin in the background, to store it: a request
 * moxy makes itself (moxy_req_background) leads the key's flight, which
 * the caller has begun (MOXY_FLIGHT_LEADER), revalidates stale (or NULL)
 * with its validators (RFC 9111 4.3.1), and starts from the loop, after r
 * is on its way.  MOXY_OK; MOXY_ERROR when out of memory (the flight is
 * over: r goes on its own). */
static int background_start(moxy_req_t *r, moxy_cache_obj_t *stale, double now)
{
    moxy_req_t *b = moxy_req_background(r);
    struct event *ev = b ? moxy_palloc(&b->mem, sizeof(*ev)) : NULL;
    char *key = b ? moxy_pstrdup(&b->mem, r->cache_key, r->cache_klen) : NULL;
    if (!ev || !key) {
        moxy_cache_flight_end(r->cache_key, r->cache_klen, r->cache_hash, 0);
        if (b) {
            b->error = "out of memory";
            moxy_stream_abort(b);
        }
        return MOXY_ERROR;
    }
    b->cache_key = key;
    b->cache_klen = r->cache_klen;
    b->cache_hash = r->cache_hash;
    moxy_cache_attach(b);
    b->cache_lookup = 1;
    b->cache_leader = 1;
    b->cache_background = 1;
    b->cache_state = MOXY_CACHE_BACKGROUND;
    b->cache_fwd = stale ? "moxy; fwd=stale" : "moxy; fwd=uri-miss";
    if (stale) {
        moxy_cache_obj_ref(stale);
        keep_stale(b, stale, now); /* its validators; an origin that fails leaves it as it is */
    }
    moxy_log(MOXY_LOG_DEBUG, r->id, "cache: %s: fetched in the background by request %s", r->cache_key, b->id);
    evtimer_assign(ev, b->w->base, background_go, b);
    b->cache_wait = ev; /* deleted if b ends first (moxy_cache_req_free) */
    event_active(ev, EV_TIMEOUT, 1);
    return MOXY_OK;
}

/* r found o stale within its stale-while-revalidate window (RFC 5861 3):
 * 1 when r may have it at once -- another request is at the origin for
 * the key, or its last answer was not storable (an origin failing), or a
 * refresh now starts in the background; 0: r refreshes it itself. */
static int stale_while_revalidate(moxy_req_t *r, moxy_cache_obj_t *o, double now)
{
    moxy_cache_attach(r);
    int f = moxy_cache_flight_begin(r->cache_key, r->cache_klen, r->cache_hash);
    return f != MOXY_FLIGHT_LEADER || background_start(r, o, now) == MOXY_OK;
}

/* 1 when a hook called txn.cache:bypass() for r (noted as its cache
 * status): no lookup, no store. */
int moxy_cache_bypassed(moxy_req_t *r)
{
    if (!r->cache_bypass) return 0;
    r->cache_state = MOXY_CACHE_BYPASS;
    r->cache_fwd = "moxy; fwd=bypass";
    return 1;
}

/* 1 for a request the cache looks up: a GET or HEAD, not a protocol
 * switch (a WebSocket handshake's 101 is no response to keep, and a
 * waiter would wait for a tunnel to end). */
int moxy_cache_looked_up(const moxy_req_t *r)
{
    return r->uri && (r->method == HTTP_GET || r->method == HTTP_HEAD) && !r->upgrade;
}

/* The lookup of r, its key made. */
static int lookup(moxy_req_t *r)
{
    if (moxy_cache_bypassed(r)) return MOXY_DECLINED;
    r->cache_lookup = 1;
    /* cache.request_directives = false: the client's Cache-Control and
     * Pragma are not read (cc keeps its defaults: no directive) */
    int directives = r->g->conf->cache.request_directives;
    const moxy_headers_t none = {0};
    moxy_cc_t cc;
    moxy_cache_cc_parse(directives ? &r->headers : &none, "Cache-Control", 13, &cc);
    const moxy_header_t *pragma = directives ? moxy_headers_get(&r->headers, "Pragma", 6) : NULL;
    int reload = cc.no_cache || cc.max_age == 0 ||
                 (pragma && moxy_list_has_token(pragma->value, pragma->value_len, "no-cache", 8) &&
                  !moxy_headers_get(&r->headers, "Cache-Control", 13));
    if (cc.no_store) r->cache_no_store = 1;
    int seen = 0;
    moxy_cache_obj_t *o = moxy_cache_find(r->cache_key, r->cache_klen, r->cache_hash, variant_matches, r, &seen);
    double now = moxy_cache_wall_now(r);
    r->cache_state = MOXY_CACHE_MISS;
    if (o) {
        double age = current_age(o, now), life = o->lifetime;
        int fresh = fresh_now(o, now);
        if (cc.max_age >= 0 && age > cc.max_age) fresh = 0;
        if (cc.min_fresh >= 0 && life - age < cc.min_fresh) fresh = 0;
        if (!fresh && cc.max_stale >= 0 && !o->must_revalidate && !o->no_cache && life >= 0 &&
            age - life <= cc.max_stale && cc.max_age != 0)
            fresh = 1; /* the client accepts it stale */
        if (fresh && !reload) {
            moxy_cache_count_lookup(r, 1);
            r->cache_state = MOXY_CACHE_HIT;
            moxy_cache_serve(r, o, now);
            return MOXY_DONE;
        }
        /* stale-while-revalidate (RFC 5861 3): the stale object at once,
         * while one request refreshes it in the background */
        if (!reload && life >= 0 && o->stale_while_revalidate >= 0 && !o->must_revalidate && !o->no_cache &&
            age - life <= o->stale_while_revalidate && stale_while_revalidate(r, o, now)) {
            moxy_cache_count_lookup(r, 1);
            r->cache_state = MOXY_CACHE_STALE;
            moxy_cache_serve(r, o, now);
            return MOXY_DONE;
        }
        if (!reload) r->cache_state = MOXY_CACHE_STALE;
        r->cache_fwd = reload ? "moxy; fwd=request" : "moxy; fwd=stale";
        keep_stale(r, o, now); /* for a revalidation, or stale-if-error */
    } else {
        r->cache_fwd = seen ? "moxy; fwd=vary-miss" : "moxy; fwd=uri-miss";
    }
    /* cache.shard: a key another node owns goes there, where concurrent
     * misses of the whole fleet wait for one fetch (not here as well), and
     * where only-if-cached is answered */
    if (moxy_cache_shard_route(r) == MOXY_OK) {
        moxy_cache_count_lookup(r, 0);
        return MOXY_DECLINED;
    }
    if (cc.only_if_cached) {
        moxy_cache_count_lookup(r, 0);
        moxy_resp_error(r, 504, "not in cache (only-if-cached)");
        return MOXY_DONE;
    }
    /* coalescing: one GET per key at the origin, the others wait for it */
    double timeout = r->g->conf->cache.coalesce_timeout;
    if (r->method == HTTP_GET && !reload && !r->cache_no_store && timeout > 0) {
        moxy_cache_attach(r);
        int f = moxy_cache_flight_begin(r->cache_key, r->cache_klen, r->cache_hash);
        /* a range of what the cache lacks: the whole response is fetched
         * in the background and stored, and r waits for it like any other
         * request (its range comes from the object as it fills) */
        if (f == MOXY_FLIGHT_LEADER && moxy_headers_find_kind(&r->headers, MOXY_HK_RANGE, 0) >= 0 &&
            background_start(r, r->cache_reval, now) == MOXY_OK)
            f = MOXY_FLIGHT_WAIT;
        if (f == MOXY_FLIGHT_LEADER) r->cache_leader = 1;
        else if (f == MOXY_FLIGHT_WAIT && wait_start(r, timeout) == MOXY_DONE) return MOXY_DONE;
    }
    moxy_cache_count_lookup(r, 0);
    return MOXY_DECLINED;
}

/* Send the bytes the object r streams from has gained since the last
 * step; the end when all are there; cut r when the fill was abandoned;
 * else look again in 2 ms. */
static void stream_step(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_obj;
    /* the state first: once complete, every byte is in avail */
    int state = atomic_load_explicit(&o->fill_state, memory_order_acquire);
    uint64_t avail = atomic_load_explicit(&o->avail, memory_order_acquire);
    /* the whole body, or a range's end; a compressed variant's length is
     * known once it is complete */
    uint64_t end = r->resp_body_kind == MOXY_BODY_LENGTH ? r->cache_from + r->resp_body_left
                   : state == 1                         ? avail
                                                        : UINT64_MAX;
    if (avail > end) avail = end;
    if (avail > r->cache_sent) {
        /* the bytes before avail are there, with the links to their segments;
         * the filler may be linking the next one: add_body stops before it */
        if (send_body(r, o, r->cache_sent, avail) != MOXY_OK) {
            moxy_stream_abort(r);
            return;
        }
        if (!r->filtering) r->bytes_sent = avail - r->cache_from; /* else the stage counts what it sends */
        r->cache_sent = avail;
    }
    if (r->cache_sent == end) {
        if (!r->filtering) {
            moxy_req_response_done(r);
            return;
        }
        r->filter_eof = 1; /* the stage (a coder) ends the response */
        moxy_body_filter_continue(r);
        return;
    }
    if (state != 0) { /* abandoned (or complete short: the origin lied about its length) */
        r->error = "the origin's response this request was collapsed on failed";
        moxy_log(MOXY_LOG_WARN, r->id, "cache: %s: %s after %llu bytes", r->cache_key, r->error,
                 (unsigned long long)r->cache_sent);
        moxy_stream_abort(r);
        return;
    }
    if (r->filtering) {
        /* the stage codes what came; a failure there ends r */
        moxy_req_hold(r);
        moxy_body_filter_continue(r);
        struct timeval tv = {0, 2000};
        if (!r->over && !moxy_req_client_gone(r)) evtimer_add(r->cache_wait, &tv);
        moxy_req_release(r);
        return;
    }
    if (moxy_stream_flush(r) != MOXY_OK) return;
    struct timeval tv = {0, 2000};
    evtimer_add(r->cache_wait, &tv);
}

static void stream_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    /* its client left (a send timeout) while its on_log hooks wait: nothing
     * more is sent; the timer goes with the request */
    if (moxy_req_client_gone(arg)) return;
    stream_step(arg);
}

int moxy_cache_stream_setup(moxy_req_t *r)
{
    if (!r->cache_wait && !(r->cache_wait = moxy_palloc(&r->mem, sizeof(struct event)))) return MOXY_ERROR;
    moxy_cache_attach(r);
    evtimer_assign(r->cache_wait, r->w->base, stream_cb, r);
    return MOXY_OK;
}

/* A waiter whose leader's response is being stored in o (a reference,
 * taken over): stream it from the object as it fills, when nothing would
 * make it differ for r (a plain GET of the same variant, no on_body hooks,
 * a known length).  1 when r is answered that way. */
static int stream_start(moxy_req_t *r, moxy_cache_obj_t *o, double now)
{
    if (!o->expected || !variant_matches(o, r) || moxy_lua_has(r->g, MOXY_PHASE_BODY) ||
        moxy_headers_find_kind(&r->headers, MOXY_HK_CONDITION, 0) >= 0) { /* If-Range: the slice's affair */
        moxy_cache_obj_unref(o);
        return 0;
    }
    evtimer_assign(r->cache_wait, r->w->base, stream_cb, r); /* its timer steps the stream now */
    r->cache_streaming = 1;
    r->cache_collapsed = 1;
    r->cache_state = MOXY_CACHE_HIT;
    moxy_cache_count_lookup(r, 1);
    moxy_cache_serve(r, o, now); /* takes the reference */
    return 1;
}

/* A waiter looks again: the leader's object, or its own way to the origin
 * once the leader is gone (it stored nothing usable) or the wait is over. */
static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_req_t *r = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (moxy_req_client_gone(r)) return; /* as stream_cb */
    double now = moxy_cache_wall_now(r);
    /* whether the leader is still at the origin is looked at before the
     * store: once it is gone, what it stored is there to be found */
    int active;
    moxy_cache_obj_t *filling = moxy_cache_flight_filling(r->cache_key, r->cache_klen, r->cache_hash, &active);
    if (filling && stream_start(r, filling, now)) return;
    int seen = 0;
    moxy_cache_obj_t *o = moxy_cache_find(r->cache_key, r->cache_klen, r->cache_hash, variant_matches, r, &seen);
    if (o && fresh_now(o, now)) {
        r->cache_wait = NULL;
        r->cache_collapsed = 1;
        r->cache_state = MOXY_CACHE_HIT;
        moxy_cache_count_lookup(r, 1);
        moxy_cache_serve(r, o, now);
        return;
    }
    if (o) moxy_cache_obj_unref(o);
    if (now < r->cache_wait_until && active) {
        r->cache_wait_ms = MOXY_MIN(r->cache_wait_ms * 2, 20);
        struct timeval tv = {0, r->cache_wait_ms * 1000};
        evtimer_add(r->cache_wait, &tv);
        return;
    }
    r->cache_wait = NULL; /* the leader is gone without a usable object, or the wait is over: go */
    moxy_cache_count_lookup(r, 0);
    moxy_upstream_try(r);
}

/* r misses while another request for its key is at the origin: wait for
 * that one's response (polled: a look costs a lookup).  MOXY_DONE, or
 * MOXY_DECLINED when it cannot wait (out of memory). */
static int wait_start(moxy_req_t *r, double timeout)
{
    struct event *ev = moxy_palloc(&r->mem, sizeof(*ev));
    if (!ev) return MOXY_DECLINED;
    evtimer_assign(ev, r->w->base, wait_cb, r);
    moxy_cache_attach(r);
    r->cache_wait = ev;
    r->cache_wait_until = moxy_cache_wall_now(r) + timeout;
    r->cache_wait_ms = 1;
    struct timeval tv = {0, 1000};
    evtimer_add(ev, &tv);
    return MOXY_DONE;
}

#define HIT_FOR_MISS 10.0 /* seconds a key whose response was not storable is not coalesced */

/* r's time as its key's leader is over; not_storable: its response was not
 * stored (the key is not coalesced for a while). */
void moxy_cache_flight_over(moxy_req_t *r, int not_storable)
{
    if (!r->cache_leader) return;
    r->cache_leader = 0;
    moxy_cache_flight_end(r->cache_key, r->cache_klen, r->cache_hash, not_storable ? HIT_FOR_MISS : 0);
}

/* The on_cache_key hooks ended (rc as moxy_lua_run): answered, or look up. */
static int key_hooks_ended(moxy_req_t *r, int rc)
{
    if (rc == MOXY_DONE) {
        moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
        return MOXY_DONE;
    }
    if (rc == MOXY_ERROR) {
        moxy_req_fail(r, 500, "script error in on_cache_key");
        return MOXY_DONE;
    }
    return lookup(r);
}

/* on_cache_key's hooks that yielded are done; then the request body, which
 * waited for them, is read on. */
static void key_hooks_done(moxy_req_t *r, int rc)
{
    moxy_stream_ref_t s = moxy_req_stream(r);
    if (key_hooks_ended(r, rc) != MOXY_DONE) moxy_upstream_try(r);
    moxy_stream_read_on(s, r);
}

void moxy_cache_content(moxy_req_t *r)
{
    if (moxy_cache_request(r) == MOXY_DONE) return;
    moxy_upstream_try(r);
}

int moxy_cache_request(moxy_req_t *r)
{
    if (!moxy_cache_enabled() || !r->uri) return MOXY_DECLINED;
    if (r->method == HTTP_PURGE && r->g->conf->cache.npurge) return purge_method(r);
    if (unsafe_method(r->method)) {
        if (moxy_cache_make_key(r) == MOXY_OK) r->cache_invalidate = 1; /* once the origin answered */
        return MOXY_DECLINED;
    }
    if (!moxy_cache_looked_up(r)) return MOXY_DECLINED;
    if (r->cache_bypass) return lookup(r);
    if (moxy_cache_make_key(r) != MOXY_OK) return MOXY_DECLINED;
    if (!moxy_lua_has(r->g, MOXY_PHASE_CACHE_KEY)) return lookup(r);
    int rc = moxy_lua_run(r, MOXY_PHASE_CACHE_KEY, key_hooks_done);
    if (rc == MOXY_AGAIN) return MOXY_DONE; /* key_hooks_done goes on */
    return key_hooks_ended(r, rc);
}

/* --- moxy.test (core/api/test_txn.c): the cache's steps without a store --- */

static int test_mode; /* moxy test's runs with opts.cache: txn.cache acts as with a cache */

static int cache_on(void)
{
    return moxy_cache_enabled() || test_mode;
}

void moxy_cache_test_mode(int on)
{
    test_mode = on;
}

/* --- txn.cache (FFI exports, lua/moxy/txn.lua) --- */

EXPORT int moxy_ffi_cache_op(moxy_req_t *r, int op, double ttl, double stale)
{
    if (!cache_on()) return MOXY_OK; /* no cache: nothing to steer (the same script runs without one) */
    switch (op) {
    case 1:
        if (r->cache_lookup || r->cache_hit) return MOXY_DECLINED;
        r->cache_bypass = 1;
        return MOXY_OK;
    case 2:
        r->cache_no_store = 1;
        return MOXY_OK;
    case 3:
        if (r->hook_phase != MOXY_PHASE_RESPONSE) return MOXY_DECLINED;
        if (r->cache_hit) return MOXY_OK; /* a hit: stored already */
        r->cache_ttl = ttl;
        r->cache_stale = stale;
        return MOXY_OK;
    }
    return MOXY_DECLINED;
}

EXPORT int moxy_ffi_cache_info(moxy_req_t *r, const char **key, size_t *klen, double *age)
{
    *key = r->cache_key;
    *klen = r->cache_key ? r->cache_klen : 0;
    *age = r->cache_obj ? current_age(r->cache_obj, moxy_cache_wall_now(r)) : -1;
    return r->cache_state;
}

EXPORT int moxy_ffi_cache_set_key(moxy_req_t *r, const char *key, size_t len)
{
    if (!cache_on()) return MOXY_OK; /* no cache: no key */
    if (r->cache_lookup || r->cache_hit ||
        (r->hook_phase != MOXY_PHASE_REQUEST && r->hook_phase != MOXY_PHASE_CACHE_KEY))
        return MOXY_DECLINED;
    char *k = moxy_pstrdup(&r->mem, key, len);
    if (!k) return MOXY_ERROR;
    r->cache_key = k;
    r->cache_klen = (uint32_t)len;
    r->cache_hash = moxy_cache_hash(k, len);
    return MOXY_OK;
}

EXPORT int moxy_ffi_cache_purge(const char *key, size_t len, int prefix)
{
    if (!moxy_cache_enabled()) return -1;
    int n = prefix ? moxy_cache_invalidate_prefix(key, len) : moxy_cache_drop(key, len);
    if (purge_hook) purge_hook(prefix != 0, key, len);
    return n;
}

