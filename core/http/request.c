/*
 * request.c -- a request's memory and cleanups; see request.h.
 */
#include "http/request.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "http/stats.h"
#include "http/worker.h"
#include "net/tls.h"

#include <stdlib.h>
#include <string.h>

moxy_req_t *moxy_req_new(moxy_worker_t *w, moxy_wgen_t *g, int listen_index)
{
    moxy_pool_t mem;
    moxy_pool_init(&mem);
    moxy_req_t *r = moxy_palloc(&mem, sizeof(*r));
    if (!r) {
        moxy_pool_reset(&mem);
        return NULL;
    }
    memset(r, 0, sizeof(*r));
    r->mem = mem; /* from here on, r's memory is r->mem */
    r->w = w;
    r->g = g;
    moxy_wgen_hold(g);
    r->refs = 1; /* its maker's */
    r->listen_index = listen_index;
    r->mask = moxy_conf_mask(g->conf, listen_index);
    r->pool = -1;
    r->server = r->last_server = r->active_server = r->want_server = -1;
    r->cache_ttl = r->cache_stale = -1;
    event_base_gettimeofday_cached(w->base, &r->started);
    r->started_us = moxy_mono_us();
    return r;
}

void moxy_req_keep_tls(moxy_req_t *r, const moxy_conn_t *conn)
{
    moxy_tls_info_t info;
    if (!moxy_tls_info(conn, &info)) return;
    r->https = 1;
    moxy_tls_info_t *t = moxy_palloc(&r->mem, sizeof(*t));
    if (!t) return;
    *t = info;
    /* the strings the connection holds are the request's own copies */
    const char **s[] = {&t->sni, &t->subject, &t->issuer, &t->serial, &t->fingerprint, &t->ja4};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(s); i++)
        if (*s[i]) *s[i] = moxy_pstrdup(&r->mem, *s[i], strlen(*s[i]));
    r->tls = t;
}

void moxy_req_cleanup_add(moxy_req_t *r, moxy_req_cleanup_fn fn)
{
    for (int i = 0; i < r->ncleanups; i++)
        if (r->cleanups[i] == fn) return;
    if (r->ncleanups == MOXY_REQ_CLEANUPS) {
        moxy_log_err("request: more than %d cleanups", MOXY_REQ_CLEANUPS);
        abort();
    }
    r->cleanups[r->ncleanups++] = fn;
}

static void body_buffer_free(moxy_req_t *r)
{
    if (r->body_buf) moxy_worker_buf_put(r->w, r->body_buf);
    r->body_buf = NULL;
}

struct evbuffer *moxy_req_body_buffer(moxy_req_t *r)
{
    if (!r->body_buf) {
        moxy_req_cleanup_add(r, body_buffer_free);
        r->body_buf = moxy_worker_buf_get(r->w);
    }
    return r->body_buf;
}

moxy_req_defer_t *moxy_req_defer(moxy_req_t *r, void (*fn)(void *arg), void *arg)
{
    moxy_req_defer_t *d = moxy_palloc(&r->mem, sizeof(*d));
    if (!d) return NULL;
    d->fn = fn;
    d->arg = arg;
    d->next = r->defers;
    r->defers = d;
    return d;
}

void moxy_req_end(moxy_req_t *r)
{
    /* a cleanup may add another one: take them one at a time */
    while (r->ncleanups > 0) r->cleanups[--r->ncleanups](r);
    moxy_req_defer_t *d;
    while ((d = r->defers)) {
        r->defers = d->next;
        if (d->fn) d->fn(d->arg);
    }
    if (r->g) moxy_wgen_release(r->g); /* may free an old generation: last */
    r->g = NULL;
    r->over = 1;
}

/* 1 when a client's X-Request-Id may be kept as the request id. */
static int request_id_valid(const char *v, size_t n)
{
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return 0;
    }
    return 1;
}

void moxy_req_set_id(moxy_req_t *r)
{
    int i = moxy_headers_find_kind(&r->headers, MOXY_HK_XRID, 0);
    if (i >= 0 && request_id_valid(r->headers.h[i].value, r->headers.h[i].value_len)) {
        /* kept: an id given by a trusted edge ties the logs together */
        size_t n = MOXY_MIN(r->headers.h[i].value_len, sizeof(r->id) - 1);
        memcpy(r->id, r->headers.h[i].value, n);
        r->id[n] = '\0';
        return;
    }
    moxy_req_make_id(r);
}

void moxy_req_make_id(moxy_req_t *r)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = moxy_rng_next(r->w->rng), b = moxy_rng_next(r->w->rng);
    for (int i = 0; i < 16; i++) {
        r->id[i] = hex[(a >> (60 - 4 * i)) & 15];
        r->id[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    r->id[32] = '\0';
    moxy_headers_remove_kind(&r->headers, MOXY_HK_XRID);
    moxy_headers_add(&r->mem, &r->headers, "X-Request-Id", 12, r->id, 32);
}

void moxy_req_response_done(moxy_req_t *r)
{
    r->resp_state = MOXY_R_DONE;
    if (r->resp_trailers.n) moxy_mask_fields(r, &r->resp_trailers); /* the origin's: masked as its head */
    if (r->stream_ctx) r->stream->response_done(r->stream_ctx, r);
}

static moxy_req_handler_fn content_handler;

void moxy_req_set_content_handler(moxy_req_handler_fn h)
{
    content_handler = h;
}

void moxy_req_content(moxy_req_t *r)
{
    content_handler(r);
}

static moxy_req_check_fn early_check;

void moxy_req_set_early_check(moxy_req_check_fn fn)
{
    early_check = fn;
}

int moxy_req_early_check(moxy_req_t *r)
{
    return early_check ? early_check(r) : 0;
}

int moxy_req_log_field(moxy_req_t *r, const char *name, size_t nlen, const char *val, size_t vlen, int quoted)
{
    moxy_pool_t *pool = &r->mem;
    char *v = moxy_pstrdup(pool, val, vlen);
    if (!v && vlen) return MOXY_ERROR;
    for (moxy_log_field_t *f = r->log_fields; f; f = f->next) {
        if (f->name_len == nlen && memcmp(f->name, name, nlen) == 0) {
            f->value = v;
            f->value_len = (uint32_t)vlen;
            f->quoted = quoted;
            return MOXY_OK;
        }
    }
    moxy_log_field_t *f = moxy_palloc(pool, sizeof(*f));
    char *n = moxy_pstrdup(pool, name, nlen);
    if (!f || !n) return MOXY_ERROR;
    *f = (moxy_log_field_t){.name = n, .value = v, .name_len = (uint32_t)nlen, .value_len = (uint32_t)vlen,
                            .quoted = quoted};
    if (r->log_fields_last) r->log_fields_last->next = f;
    else r->log_fields = f;
    r->log_fields_last = f;
    return MOXY_OK;
}

void moxy_req_after_request_hooks(moxy_req_t *r, int rc)
{
    if (rc == MOXY_DONE) moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
    else if (rc == MOXY_ERROR) moxy_req_fail(r, 500, "script error in on_request");
    else moxy_req_content(r);
}

void moxy_req_release(moxy_req_t *r)
{
    if (--r->refs > 0) return;
    moxy_pool_t mem = r->mem; /* r lives in it */
    moxy_pool_reset(&mem);
}

/* --- the end of a request: on_log, the log line, its memory --- */

int moxy_req_detach(moxy_req_t *r)
{
    moxy_client_addr_t *a = moxy_palloc(&r->mem, sizeof(*a));
    if (!a) return MOXY_ERROR;
    *a = *r->addr;
    r->addr = a;
    r->stream_ctx = NULL;
    LIST_INSERT_HEAD(&r->w->detached, r, detached);
    r->is_detached = 1;
    MOXY_STAT_ADD(r->w->nconns, 1);
    return MOXY_OK;
}

/* The last of r: its log line and statistics, its memory; a detached
 * request stops counting as a connection. */
static void request_log_free(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    int detached = r->is_detached;
    moxy_access_log(r);
    moxy_stats_request(r);
    if (detached) LIST_REMOVE(r, detached);
    moxy_req_end(r);
    moxy_req_release(r);
    if (detached) moxy_worker_conn_closed(w);
}

/* on_log's hooks that yielded are done: the request ends. */
static void log_hooks_done(moxy_req_t *r, int rc)
{
    MOXY_UNUSED(rc);
    request_log_free(r);
}

void moxy_req_finish(moxy_req_t *r)
{
    r->ended_us = moxy_mono_us();
    r->log_waiting = 1;
    if (moxy_lua_has(r->g, MOXY_PHASE_LOG) && moxy_lua_run(r, MOXY_PHASE_LOG, log_hooks_done) == MOXY_AGAIN) {
        if (r->is_detached || moxy_req_detach(r) == MOXY_OK) return; /* log_hooks_done follows */
        /* out of memory: the hooks are dropped (moxy_req_end) */
    }
    request_log_free(r);
}

void moxy_req_abort(moxy_req_t *r, const char *why)
{
    if (r->resp_state != MOXY_R_DONE) {
        if (!r->status || !r->resp_head_sent) r->status = 499;
        if (!r->error) r->error = why;
    }
    moxy_req_origin_cut(r);
    moxy_req_finish(r);
}

/* The first request of w's detached list on generation g (any when NULL)
 * that is still waiting for its response (in_flight) or for its on_log
 * hooks (!in_flight); NULL: none. */
static moxy_req_t *detached_find(moxy_worker_t *w, const moxy_wgen_t *g, int in_flight)
{
    moxy_req_t *r;
    LIST_FOREACH(r, &w->detached, detached)
        if ((!g || r->g == g) && (int)!r->log_waiting == in_flight) return r;
    return NULL;
}

void moxy_req_end_detached(moxy_worker_t *w, const moxy_wgen_t *g)
{
    /* Each step ends one request (or moves it to its on_log hooks) and may
     * change the list: search again after each. */
    moxy_req_t *r;
    const char *why = g ? "its generation's drain deadline passed" : "worker stopped";
    while ((r = detached_find(w, g, 1))) moxy_req_abort(r, why);
    while ((r = detached_find(w, g, 0))) request_log_free(r); /* its parked on_log hooks are dropped */
}

/* --- the request body, whatever its protocol --- */

int moxy_req_read_body(moxy_req_t *r, uint64_t max)
{
    if (r->body_buffered) return MOXY_OK;
    if (r->body_status) return MOXY_ERROR;
    if (r->body_kind == MOXY_BODY_NONE) {
        r->body_buffered = 1;
        return MOXY_OK;
    }
    if (!r->stream_ctx) {
        r->body_error = "the request has no connection to read its body from";
        return MOXY_DECLINED;
    }
    return r->stream->read_body(r->stream_ctx, r, max);
}

int moxy_req_body_check(moxy_req_t *r)
{
    return r->stream_ctx ? r->stream->body_check(r->stream_ctx, r) : MOXY_OK;
}
