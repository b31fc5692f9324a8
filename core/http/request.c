/*
 * request.c -- a request's memory and cleanups; see request.h.
 */
#include "http/request.h"
#include "base/log.h"
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

void moxy_req_free(moxy_req_t *r)
{
    moxy_pool_t mem = r->mem; /* r lives in it */
    moxy_pool_reset(&mem);
}
