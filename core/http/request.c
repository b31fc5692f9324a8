/*
 * request.c -- a request's memory and cleanups; see request.h.
 */
#include "http/request.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/worker.h"

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
    r->listen_index = listen_index;
    r->pool = -1;
    r->server = r->last_server = r->active_server = r->want_server = -1;
    r->cache_ttl = r->cache_stale = -1;
    event_base_gettimeofday_cached(w->base, &r->started);
    r->started_us = moxy_mono_us();
    return r;
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

void moxy_req_end(moxy_req_t *r)
{
    /* a cleanup may add another one: take them one at a time */
    while (r->ncleanups > 0) r->cleanups[--r->ncleanups](r);
    if (r->g) moxy_wgen_release(r->g); /* may free an old generation: last */
    r->g = NULL;
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

void moxy_req_free(moxy_req_t *r)
{
    moxy_pool_t mem = r->mem; /* r lives in it */
    moxy_pool_reset(&mem);
}
