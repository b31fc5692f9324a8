/*
 * body_filter.c -- on_body: the response body through the hooks; see
 * body_filter.h.
 */
#include "http/body_filter.h"
#include "http/compress.h"
#include "http/http.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "http/worker.h"
#include "net/io.h"

#include <event2/buffer.h>

static void body_hooks_done(moxy_req_t *r, int rc);

/* The coder failed (why; MOXY_DECLINED: a decoder's guard): the origin is
 * let go and the client gets a 502 when nothing of the response went out
 * yet, else the response is cut.  MOXY_ERROR. */
static int coding_failed(moxy_req_t *r, int rc, const char *why)
{
    if (r->up) r->origin->cut(r);
    int bomb = rc == MOXY_DECLINED;
    if (!r->resp_head_sent) {
        r->filtering = 0; /* the 502 is moxy's own answer, framed as such */
        r->head_held = 0;
        moxy_log(MOXY_LOG_WARN, r->id, "%s of the origin's body %s: %s", moxy_compress_what(r),
                 bomb ? "stopped" : "failed", why);
        moxy_req_fail(r, 502, why);
        return MOXY_ERROR;
    }
    r->error = why;
    moxy_log(MOXY_LOG_WARN, r->id, "response cut: %s: %s", moxy_compress_what(r), why);
    moxy_stream_abort(r);
    return MOXY_ERROR;
}

/* Send what the stage made (rc: how the on_body hooks ended, MOXY_OK
 * without hooks) to the client: the hooks' output, or the body as it came,
 * through the coder when there is one.  MOXY_OK, or MOXY_ERROR when a hook
 * or the coder failed: the response is cut (or answered with an error). */
static int filter_emit(moxy_req_t *r, int rc)
{
    if (rc == MOXY_ERROR) {
        r->error = "script error in on_body";
        moxy_log(MOXY_LOG_WARN, r->id, "response cut: script error in on_body");
        moxy_stream_abort(r);
        return MOXY_ERROR;
    }
    struct evbuffer *out = r->filter_hooks ? r->filter_out : r->filter_in;
    if (r->coder) {
        const char *why = NULL;
        int crc = moxy_compress_run(r, out, r->filter_final, &why);
        if (crc != MOXY_OK) return coding_failed(r, crc, why);
        out = r->coded;
    }
    size_t n = evbuffer_get_length(out);
    if (r->head_held && (n || r->filter_final)) {
        r->head_held = 0;
        moxy_stream_send_head(r);
    }
    if (n) {
        moxy_stream_send_body(r, out, n);
        r->bytes_sent += n;
    }
    return MOXY_OK;
}

/* Hand what filter_in holds -- and the end, once the body is complete --
 * to the on_body hooks (if any) and the coder (if any).  MOXY_OK: all handed over, more may come;
 * MOXY_AGAIN: a hook waits; MOXY_DONE: the body's last piece went out;
 * MOXY_ERROR: a hook failed and the client connection is cut. */
static int filter_pump(moxy_req_t *r)
{
    for (;;) {
        size_t n = evbuffer_get_length(r->filter_in);
        if (n == 0 && !r->filter_eof) return MOXY_OK;
        r->filter_final = r->filter_eof;
        int rc = MOXY_OK;
        if (r->filter_hooks) {
            const char *data = n ? (const char *)evbuffer_pullup(r->filter_in, (ev_ssize_t)n) : "";
            rc = moxy_lua_run_body(r, data, n, r->filter_final, r->filter_out, body_hooks_done);
            evbuffer_drain(r->filter_in, n); /* the hooks got a copy */
            if (rc == MOXY_AGAIN) return MOXY_AGAIN;
        }
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
    moxy_compress_end(r);
    if (r->filter_in) moxy_worker_buf_put(r->w, r->filter_in);
    if (r->filter_out) moxy_worker_buf_put(r->w, r->filter_out);
    r->filter_in = r->filter_out = NULL;
}

/* --- the chain --- */

int moxy_body_tap_add(moxy_req_t *r, const moxy_body_tap_ops_t *ops)
{
    moxy_body_tap_t *t = moxy_palloc(&r->mem, sizeof(*t)), **end = &r->taps;
    if (!t) return MOXY_ERROR;
    t->ops = ops;
    t->next = NULL;
    while (*end) end = &(*end)->next;
    *end = t;
    return MOXY_OK;
}

/* The taps see the n bytes at the front of from. */
static void taps_see(moxy_req_t *r, struct evbuffer *from, size_t n)
{
    struct evbuffer_ptr pos;
    size_t off = 0;
    while (off < n) {
        struct evbuffer_iovec v[16];
        if (evbuffer_ptr_set(from, &pos, off, EVBUFFER_PTR_SET) != 0) return;
        int k = evbuffer_peek(from, (ev_ssize_t)(n - off), &pos, v, 16);
        if (k <= 0) return;
        for (int i = 0; i < MOXY_MIN(k, 16) && off < n; i++) {
            size_t take = MOXY_MIN(n - off, v[i].iov_len);
            for (moxy_body_tap_t *t = r->taps; t; t = t->next) t->ops->data(r, v[i].iov_base, take);
            off += take;
        }
    }
}

void moxy_body_move(moxy_req_t *r, struct evbuffer *from, size_t n)
{
    if (r->taps) taps_see(r, from, n);
    if (r->filtering) {
        moxy_io_move(r->filter_in, from, n);
        return;
    }
    moxy_stream_send_body(r, from, n);
    r->bytes_sent += n;
}

void moxy_body_add(moxy_req_t *r, const char *p, size_t n)
{
    for (moxy_body_tap_t *t = r->taps; t; t = t->next) t->ops->data(r, p, n);
    if (r->filtering) {
        evbuffer_add(r->filter_in, p, n);
        return;
    }
    moxy_stream_send_data(r, p, n);
    r->bytes_sent += n;
}

void moxy_body_end(moxy_req_t *r)
{
    for (moxy_body_tap_t *t = r->taps; t; t = t->next) t->ops->end(r);
    r->taps = NULL;
    if (!r->filtering) {
        moxy_req_response_done(r);
        return;
    }
    r->filter_eof = 1;
    moxy_body_filter_continue(r);
}

/* --- on_body --- */

int moxy_body_filter_start(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    r->filter_hooks = moxy_lua_has(r->g, MOXY_PHASE_BODY) && !r->no_filter && r->resp_body_kind != MOXY_BODY_NONE;
    if (moxy_compress_start(r) != MOXY_OK) return MOXY_ERROR;
    r->filtering = r->filter_hooks || r->coder;
    if (!r->filtering) return MOXY_OK;
    moxy_req_cleanup_add(r, filter_free);
    if (!r->filter_in) r->filter_in = moxy_worker_buf_get(w);
    if (r->filter_hooks && !r->filter_out) r->filter_out = moxy_worker_buf_get(w);
    return r->filter_in && (r->filter_out || !r->filter_hooks) ? MOXY_OK : MOXY_ERROR;
}

void moxy_body_send_head(moxy_req_t *r)
{
    if (!r->head_held) moxy_stream_send_head(r);
}
