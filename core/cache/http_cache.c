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
#include "base/headers.h"
#include "http/http.h"
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

#define EXPORT __attribute__((visibility("default")))

/* r holds something of the cache's (an object reference, a flight, a
 * wait): moxy_cache_req_free lets it go when r ends. */
static void cache_attach(moxy_req_t *r)
{
    moxy_req_cleanup_add(r, moxy_cache_req_free);
}

/* --- the key --- */

static int make_key(moxy_req_t *r)
{
    if (r->cache_key) return MOXY_OK; /* txn.cache.key set in on_request */
    r->cache_key = moxy_cache_build_key(&r->mem, r->host ? r->host : "", r->uri, r->uri_len, r->path_len, &r->cache_klen);
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

static double tv_secs(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static double wall_now(const moxy_req_t *r)
{
    struct timeval now;
    event_base_gettimeofday_cached(r->w->base, &now);
    return tv_secs(&now);
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
static int stale_if_error_allows(const moxy_req_t *r, const moxy_cache_obj_t *o, double now)
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

static void set_status_field(moxy_req_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_status_field(moxy_req_t *r, const char *fmt, ...)
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
static void count_lookup(moxy_req_t *r, int hit)
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

/* Add bytes [from, end) of o's body to b by reference, each piece holding
 * a reference to o until it has left b.  Positions step by each segment's
 * capacity: every segment but the last is full, and one still filling (a
 * stream) is read no further than end, nor its successor's link once end is
 * reached.  to_socket: b is written to a socket (a client's output, whose
 * evbuffers drain to an fd): a body in a memfd goes as a file segment, sent
 * with sendfile, so that not even the kernel's copy from moxy's memory is
 * made.  MOXY_ERROR: out of memory. */
static int add_body(struct evbuffer *b, moxy_cache_obj_t *o, uint64_t from, uint64_t end, int to_socket)
{
    const moxy_cache_obj_t *bo = moxy_cache_body(o);
    /* a small piece is copied on its way out (io.h): not worth a sendfile */
    if (to_socket && bo->body_fd >= 0 && end - from >= MOXY_IO_COPY_MAX) {
        struct evbuffer_file_segment *seg =
            evbuffer_file_segment_new(bo->body_fd, 0, (ev_off_t)bo->body->cap, EVBUF_FS_DISABLE_LOCKING);
        if (!seg) return MOXY_ERROR;
        moxy_cache_obj_ref(o); /* released with the segment, once its bytes have left b */
        evbuffer_file_segment_add_cleanup_cb(seg, file_release, o);
        int rc = evbuffer_add_file_segment(b, seg, (ev_off_t)from, (ev_off_t)(end - from));
        evbuffer_file_segment_free(seg); /* b holds its own reference */
        return rc == 0 ? MOXY_OK : MOXY_ERROR;
    }
    uint64_t pos = 0;
    for (const moxy_cache_seg_t *s = bo->body; s; s = s->next) {
        uint64_t lo = MOXY_MAX(pos, from), hi = MOXY_MIN(pos + s->cap, end);
        if (hi > lo) {
            moxy_cache_obj_ref(o); /* released when the bytes have left the buffer */
            if (evbuffer_add_reference(b, s->data + (lo - pos), (size_t)(hi - lo), seg_release, o) != 0) {
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
    if (r->filtering) return add_body(r->filter_in, o, from, end, 0);
    struct evbuffer *b = moxy_worker_buf_get(r->w);
    if (!b) return MOXY_ERROR;
    int rc = add_body(b, o, from, end, use_sendfile(r));
    if (rc == MOXY_OK) moxy_stream_send_body(r, b, evbuffer_get_length(b));
    moxy_worker_buf_put(r->w, b);
    return rc;
}

/* The "Name: value\r\n" lines of a stored head (len bytes) appended to
 * list, copied into pool.  MOXY_ERROR: out of memory. */
static int head_parse(moxy_pool_t *pool, const char *head, size_t len, moxy_headers_t *list)
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
    return head_parse(&r->mem, o->head, o->head_len, &r->resp_headers);
}

/* Serve r from o (a fresh hit, or a 304 for the client's condition). */
static void serve(moxy_req_t *r, moxy_cache_obj_t *o, double now)
{
    cache_attach(r);
    r->cache_obj = o;
    r->cache_hit = 1;
    if (load_head(r, o) != MOXY_OK) {
        moxy_req_fail(r, 500, "out of memory");
        return;
    }
    /* a stored head has no Age nor Content-Length (store_field): added, not set */
    double age = current_age(o, now);
    char ab[24];
    int n = snprintf(ab, sizeof(ab), "%.0f", floor(age));
    moxy_headers_add(&r->mem, &r->resp_headers, "Age", 3, ab, (size_t)n);
    if (r->cache_fwd_status == 304) /* revalidated */
        set_status_field(r, "moxy; fwd=stale; fwd-status=304; stored; ttl=%.0f", floor(o->lifetime - age));
    else if (r->cache_fwd_status) /* the origin failed: stale-if-error */
        set_status_field(r, "moxy; fwd=stale; fwd-status=%d; ttl=%.0f", r->cache_fwd_status, floor(o->lifetime - age));
    else
        set_status_field(r, "moxy; hit; ttl=%.0f%s", floor(o->lifetime - age), r->cache_collapsed ? "; collapsed" : "");
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
    if (rc != MOXY_OK || moxy_upstream_filter_start(r) != MOXY_OK) {
        moxy_req_fail(r, 500, rc != MOXY_OK ? "script error in on_response" : "out of memory");
        return;
    }
    moxy_stream_send_head(r);
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
    moxy_upstream_filter_continue(r);
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
    if (make_key(r) != MOXY_OK) {
        moxy_req_fail(r, 500, "out of memory");
        return MOXY_DONE;
    }
    int n = moxy_cache_invalidate(r->cache_key, r->cache_klen);
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
    int on_error = stale_if_error_allows(r, o, now);
    if (!validators && !on_error) {
        moxy_cache_obj_unref(o);
        return;
    }
    cache_attach(r);
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
    cache_attach(b);
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
    cache_attach(r);
    int f = moxy_cache_flight_begin(r->cache_key, r->cache_klen, r->cache_hash);
    return f != MOXY_FLIGHT_LEADER || background_start(r, o, now) == MOXY_OK;
}

/* 1 when a hook called txn.cache:bypass() for r (noted as its cache
 * status): no lookup, no store. */
static int bypassed(moxy_req_t *r)
{
    if (!r->cache_bypass) return 0;
    r->cache_state = MOXY_CACHE_BYPASS;
    r->cache_fwd = "moxy; fwd=bypass";
    return 1;
}

/* 1 for a request the cache looks up: a GET or HEAD, not a protocol
 * switch (a WebSocket handshake's 101 is no response to keep, and a
 * waiter would wait for a tunnel to end). */
static int looked_up(const moxy_req_t *r)
{
    return r->uri && (r->method == HTTP_GET || r->method == HTTP_HEAD) && !r->upgrade;
}

/* The lookup of r, its key made. */
static int lookup(moxy_req_t *r)
{
    if (bypassed(r)) return MOXY_DECLINED;
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
    double now = wall_now(r);
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
            count_lookup(r, 1);
            r->cache_state = MOXY_CACHE_HIT;
            serve(r, o, now);
            return MOXY_DONE;
        }
        /* stale-while-revalidate (RFC 5861 3): the stale object at once,
         * while one request refreshes it in the background */
        if (!reload && life >= 0 && o->stale_while_revalidate >= 0 && !o->must_revalidate && !o->no_cache &&
            age - life <= o->stale_while_revalidate && stale_while_revalidate(r, o, now)) {
            count_lookup(r, 1);
            r->cache_state = MOXY_CACHE_STALE;
            serve(r, o, now);
            return MOXY_DONE;
        }
        if (!reload) r->cache_state = MOXY_CACHE_STALE;
        r->cache_fwd = reload ? "moxy; fwd=request" : "moxy; fwd=stale";
        keep_stale(r, o, now); /* for a revalidation, or stale-if-error */
    } else {
        r->cache_fwd = seen ? "moxy; fwd=vary-miss" : "moxy; fwd=uri-miss";
    }
    if (cc.only_if_cached) {
        count_lookup(r, 0);
        moxy_resp_error(r, 504, "not in cache (only-if-cached)");
        return MOXY_DONE;
    }
    /* coalescing: one GET per key at the origin, the others wait for it */
    double timeout = r->g->conf->cache.coalesce_timeout;
    if (r->method == HTTP_GET && !reload && !r->cache_no_store && timeout > 0) {
        cache_attach(r);
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
    count_lookup(r, 0);
    return MOXY_DECLINED;
}

/* Send the bytes the object r streams from has gained since the last
 * step; the end when all are there; cut r when the fill was abandoned;
 * else look again in 2 ms. */
static void stream_step(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_obj;
    uint64_t end = r->cache_from + r->resp_body_left; /* the whole body, or a range's end */
    uint64_t avail = atomic_load_explicit(&o->avail, memory_order_acquire);
    int state = atomic_load_explicit(&o->fill_state, memory_order_acquire);
    if (avail > end) avail = end;
    if (avail > r->cache_sent) {
        /* the bytes before avail are there, with the links to their segments;
         * the filler may be linking the next one: add_body stops before it */
        if (send_body(r, o, r->cache_sent, avail) != MOXY_OK) {
            moxy_stream_abort(r);
            return;
        }
        r->cache_sent = avail;
        r->bytes_sent = avail - r->cache_from;
    }
    if (r->cache_sent == end) {
        moxy_req_response_done(r);
        return;
    }
    if (state != 0) { /* abandoned (or complete short: the origin lied about its length) */
        r->error = "the origin's response this request was collapsed on failed";
        moxy_log(MOXY_LOG_WARN, r->id, "cache: %s: %s after %llu bytes", r->cache_key, r->error,
                 (unsigned long long)r->cache_sent);
        moxy_stream_abort(r);
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
    stream_step(arg);
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
    count_lookup(r, 1);
    serve(r, o, now); /* takes the reference */
    return 1;
}

/* A waiter looks again: the leader's object, or its own way to the origin
 * once the leader is gone (it stored nothing usable) or the wait is over. */
static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_req_t *r = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    double now = wall_now(r);
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
        count_lookup(r, 1);
        serve(r, o, now);
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
    count_lookup(r, 0);
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
    cache_attach(r);
    r->cache_wait = ev;
    r->cache_wait_until = wall_now(r) + timeout;
    r->cache_wait_ms = 1;
    struct timeval tv = {0, 1000};
    evtimer_add(ev, &tv);
    return MOXY_DONE;
}

#define HIT_FOR_MISS 10.0 /* seconds a key whose response was not storable is not coalesced */

/* r's time as its key's leader is over; not_storable: its response was not
 * stored (the key is not coalesced for a while). */
static void flight_over(moxy_req_t *r, int not_storable)
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
        if (make_key(r) == MOXY_OK) r->cache_invalidate = 1; /* once the origin answered */
        return MOXY_DECLINED;
    }
    if (!looked_up(r)) return MOXY_DECLINED;
    if (r->cache_bypass) return lookup(r);
    if (make_key(r) != MOXY_OK) return MOXY_DECLINED;
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
    *age = r->cache_obj ? current_age(r->cache_obj, wall_now(r)) : -1;
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
    return prefix ? moxy_cache_invalidate_prefix(key, len) : moxy_cache_invalidate(key, len);
}

/* --- the response from the origin --- */

/* Invalidate the key of the URI reference in field name of r's response,
 * when it is on the request's host (RFC 9111 4.4). */
static void invalidate_ref(moxy_req_t *r, const char *name, size_t nlen)
{
    const moxy_header_t *h = moxy_headers_get(&r->resp_headers, name, nlen);
    if (!h || !r->host) return;
    const char *v = h->value;
    size_t vl = h->value_len, hl = strlen(r->host);
    if (vl >= 7 && moxy_strieq(v, 7, "http://", 7)) {
        if (vl < 7 + hl || !moxy_strieq(v + 7, hl, r->host, hl) || (vl > 7 + hl && v[7 + hl] != '/')) return;
        v += 7 + hl;
        vl -= 7 + hl;
    }
    if (vl == 0 || v[0] != '/') return;
    const char *qm = memchr(v, '?', vl);
    uint32_t kl;
    char *key = moxy_cache_build_key(&r->mem, r->host, v, vl, qm ? (size_t)(qm - v) : vl, &kl);
    if (key) moxy_cache_invalidate(key, kl);
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
    t->response = evutil_timerisset(&r->up_header) ? tv_secs(&r->up_header) : wall_now(r);
    t->request = evutil_timerisset(&r->up_started) ? tv_secs(&r->up_started) : t->response;
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
    if (head_parse(pool, old->head, old->head_len, &merged) != MOXY_OK) return NULL;
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
    return o && !r->resp_head_sent && stale_if_error_allows(r, o, wall_now(r));
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
        cache_attach(r);
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
        if (r->cache_fwd_status == 304) count_lookup(r, 1);
    }
    serve(r, o, wall_now(r));
}

void moxy_cache_response_head(moxy_req_t *r)
{
    if (r->cache_invalidate) {
        if (r->status < 400 && r->cache_key) {
            moxy_cache_invalidate(r->cache_key, r->cache_klen);
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
    /* the lookup's verdict on the response that answers it (not on a 1xx,
     * nor on a try that is retried), after the entries of caches nearer the
     * origin (RFC 9211 2) */
    moxy_headers_add(&r->mem, &r->resp_headers, "Cache-Status", 12, r->cache_fwd, strlen(r->cache_fwd));
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
        if (r->cache_background && status < 500) moxy_cache_invalidate(r->cache_key, r->cache_klen);
        flight_over(r, 1); /* the waiters go to the origin themselves, new requests too */
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
    cache_attach(r);
    r->cache_fill = o;
    if (r->resp_body_kind == MOXY_BODY_LENGTH) moxy_cache_obj_reserve(o, r->resp_body_left);
    if (r->cache_leader && r->resp_body_kind == MOXY_BODY_LENGTH && r->resp_body_left > 0) {
        o->expected = r->resp_body_left; /* waiters may stream from it as it fills */
        moxy_cache_flight_attach(r->cache_key, r->cache_klen, r->cache_hash, o);
    }
    /* the lookup's Cache-Status, and that this response is stored */
    set_status_field(r, "%s; stored; ttl=%.0f", r->cache_fwd, floor(life - o->initial_age));
    return MOXY_OK;
fail:
    moxy_cache_obj_unref(o);
    flight_over(r, 0); /* nothing to wait for: the waiters go on now */
    return r->cache_background ? MOXY_DONE : MOXY_OK;
}

void moxy_cache_response_body(moxy_req_t *r, const char *data, size_t len)
{
    if (moxy_cache_obj_append(r->cache_fill, data, len) != MOXY_OK) {
        moxy_log(MOXY_LOG_INFO, r->id, "cache: %s not stored: larger than cache.max_object", r->cache_key);
        atomic_store_explicit(&r->cache_fill->fill_state, -1, memory_order_release);
        moxy_cache_obj_unref(r->cache_fill);
        r->cache_fill = NULL;
    }
}

void moxy_cache_response_body_buffer(moxy_req_t *r, struct evbuffer *b, size_t n)
{
    size_t off = 0;
    while (off < n && r->cache_fill) {
        struct evbuffer_iovec v[16];
        struct evbuffer_ptr pos;
        if (evbuffer_ptr_set(b, &pos, off, EVBUFFER_PTR_SET) != 0) return;
        int k = evbuffer_peek(b, (ev_ssize_t)(n - off), &pos, v, 16);
        if (k <= 0) return;
        for (int i = 0; i < MOXY_MIN(k, 16) && off < n && r->cache_fill; i++) {
            size_t take = MOXY_MIN(n - off, v[i].iov_len);
            moxy_cache_response_body(r, v[i].iov_base, take);
            off += take;
        }
    }
}

void moxy_cache_response_done(moxy_req_t *r)
{
    moxy_cache_obj_t *o = r->cache_fill;
    if (!o) return;
    r->cache_fill = NULL;
    atomic_store_explicit(&o->fill_state, 1, memory_order_release);
    moxy_cache_publish(o);
    moxy_cache_obj_unref(o);
    flight_over(r, 0);
}

void moxy_cache_req_free(moxy_req_t *r)
{
    flight_over(r, 0);
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
    return looked_up(r) && !r->cache_bypass && make_key(r) == MOXY_OK;
}

void moxy_cache_test_lookup(moxy_req_t *r)
{
    if (!looked_up(r) || bypassed(r)) return;
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
    if (!why) set_status_field(r, "%s; stored; ttl=%.0f", r->cache_fwd, floor(life - t.initial_age)); /* as decide */
    return why;
}

const moxy_proxy_cache_t moxy_cache_for_proxy = {
    .upstream_head = moxy_cache_upstream_head,
    .answer_kept = moxy_cache_answer_kept,
    .stale_on_error = moxy_cache_stale_on_error,
    .response_head = moxy_cache_response_head,
    .response_decide = moxy_cache_response_decide,
    .response_body = moxy_cache_response_body,
    .response_body_buffer = moxy_cache_response_body_buffer,
    .response_done = moxy_cache_response_done,
};
