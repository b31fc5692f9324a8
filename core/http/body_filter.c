/*
 * body_filter.c -- on_body: the response body through the hooks; see
 * body_filter.h.
 */
#include "http/body_filter.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "http/worker.h"

#include <event2/buffer.h>

static void body_hooks_done(moxy_req_t *r, int rc);

/* Send the on_body hooks' output (rc: how they ended) to the client.
 * MOXY_OK, or MOXY_ERROR when a hook failed: the response is cut (its head
 * is out). */
static int filter_emit(moxy_req_t *r, int rc)
{
    if (rc == MOXY_ERROR) {
        r->error = "script error in on_body";
        moxy_log(MOXY_LOG_WARN, r->id, "response cut: script error in on_body");
        moxy_stream_abort(r);
        return MOXY_ERROR;
    }
    size_t n = evbuffer_get_length(r->filter_out);
    if (n) {
        moxy_stream_send_body(r, r->filter_out, n);
        r->bytes_sent += n;
    }
    return MOXY_OK;
}

/* Hand what filter_in holds -- and the end, once the body is complete --
 * to the on_body hooks.  MOXY_OK: all handed over, more may come;
 * MOXY_AGAIN: a hook waits; MOXY_DONE: the body's last piece went out;
 * MOXY_ERROR: a hook failed and the client connection is cut. */
static int filter_pump(moxy_req_t *r)
{
    for (;;) {
        size_t n = evbuffer_get_length(r->filter_in);
        if (n == 0 && !r->filter_eof) return MOXY_OK;
        const char *data = n ? (const char *)evbuffer_pullup(r->filter_in, (ev_ssize_t)n) : "";
        r->filter_final = r->filter_eof;
        int rc = moxy_lua_run_body(r, data, n, r->filter_final, r->filter_out, body_hooks_done);
        evbuffer_drain(r->filter_in, n); /* the hooks got a copy */
        if (rc == MOXY_AGAIN) return MOXY_AGAIN;
        if (filter_emit(r, rc) != MOXY_OK) return MOXY_ERROR;
        if (r->filter_final) return MOXY_DONE;
    }
}

void moxy_body_filter_continue(moxy_req_t *r)
{
    int rc = filter_pump(r);
    if (rc == MOXY_ERROR) return;
    if (rc == MOXY_AGAIN) {
        if (r->up) r->origin->pause(r);
        return;
    }
    if (rc == MOXY_DONE) {
        moxy_req_response_done(r);
        return;
    }
    if (moxy_stream_flush(r) != MOXY_OK || !r->up) return;
    if (moxy_stream_backlogged(r)) r->origin->pause(r);
    else r->origin->pump(r);
}

/* on_body's hooks that yielded are done: their output goes on. */
static void body_hooks_done(moxy_req_t *r, int rc)
{
    if (filter_emit(r, rc) != MOXY_OK) return;
    if (r->filter_final) moxy_req_response_done(r);
    else moxy_body_filter_continue(r);
}

/* r ends: its buffers go back to the worker. */
static void filter_free(moxy_req_t *r)
{
    if (r->filter_in) moxy_worker_buf_put(r->w, r->filter_in);
    if (r->filter_out) moxy_worker_buf_put(r->w, r->filter_out);
    r->filter_in = r->filter_out = NULL;
}

int moxy_body_filter_start(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    r->filtering = moxy_lua_has(r->g, MOXY_PHASE_BODY) && !r->no_filter &&
                   r->resp_body_kind != MOXY_BODY_NONE;
    if (!r->filtering) return MOXY_OK;
    moxy_req_cleanup_add(r, filter_free);
    if (!r->filter_in) r->filter_in = moxy_worker_buf_get(w);
    if (!r->filter_out) r->filter_out = moxy_worker_buf_get(w);
    return r->filter_in && r->filter_out ? MOXY_OK : MOXY_ERROR;
}
