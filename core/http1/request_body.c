/*
 * request_body.c -- a request body on an HTTP/1 connection: streamed to
 * the origin connection as it comes (Content-Length bodies moved, chunked
 * ones re-chunked by moxy), buffered whole for txn:read_body, and the
 * framing of the chunked bytes that came with the head checked before an
 * origin sees the head.
 */
#include "http1/http1.h"
#include "http/http.h"
#include "net/io.h"
#include "http/lua_bridge.h"
#include "http/request.h"

#include <event2/buffer.h>

/* --- the body bytes that came with the head --- */

int moxy_h1_body_check(moxy_client_t *c, moxy_req_t *r)
{
    if (r->body_kind != MOXY_BODY_CHUNKED || r->body_sent || r->buffering || r->body_buffered ||
        !c->in || evbuffer_get_length(c->in) == 0)
        return MOXY_OK;
    const char *why = moxy_h1_chunked_check(&r->parser, c->in);
    if (!why) return MOXY_OK;
    moxy_h1_reject(c, 400, why);
    return MOXY_ERROR;
}

/* --- txn:read_body: the request body buffered for the hooks --- */

/* How much of what c->in holds is r's Content-Length body (no more than
 * is left of it), counted as read: the caller moves that many bytes. */
static size_t length_body_take(moxy_client_t *c, moxy_req_t *r)
{
    size_t have = evbuffer_get_length(c->in);
    size_t n = have < r->body_left ? have : (size_t)r->body_left;
    r->body_left -= n;
    r->body_read += n;
    if (r->body_left == 0) r->body_done = 1;
    return n;
}

/* Move what c->in holds of the body into r->body_buf.  MOXY_AGAIN: more to
 * come; MOXY_OK: all there; MOXY_ERROR: too large or malformed
 * (r->body_status says which; the connection closes after the answer). */
int moxy_h1_body_buffer(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    if (r->body_kind == MOXY_BODY_LENGTH) {
        moxy_io_move(r->body_buf, c->in, length_body_take(c, r));
    } else if (r->body_kind == MOXY_BODY_CHUNKED) {
        const char *reason = NULL;
        if (moxy_h1_parse(c, &reason) == MOXY_ERROR) {
            r->body_status = r->status ? r->status : 400;
            r->status = 0;
            r->body_error = reason;
        }
    }
    if (!r->body_status && evbuffer_get_length(r->body_buf) > r->body_max) {
        r->body_status = 413;
        r->body_error = "request body too large";
    }
    if (r->body_status) {
        r->buffering = 0;
        r->keepalive = 0;
        moxy_h1_stop_read(c);
        return MOXY_ERROR;
    }
    if (!r->body_done) return MOXY_AGAIN;
    r->buffering = 0;
    r->body_buffered = 1;
    return MOXY_OK;
}

/* The body is in (or failed): resume the hook waiting for it. */
void moxy_h1_body_wake(moxy_req_t *r)
{
    moxy_lua_task_t *t = r->body_task;
    r->body_task = NULL;
    if (t) moxy_lua_task_wake(t, 0);
}

static void body_cancel(void *op)
{
    moxy_req_t *r = op;
    r->body_task = NULL;
    r->buffering = 0;
}

int moxy_h1_body_read_whole(moxy_client_t *c, moxy_req_t *r, uint64_t max)
{
    if (r->body_read > 0 || r->up || r->buffering || c->state != MOXY_C_ACTIVE) {
        r->body_error = "the body is already on its way to the origin";
        return MOXY_DECLINED;
    }
    if (!max || max > c->req->g->conf->limits.body_bytes) max = c->req->g->conf->limits.body_bytes;
    r->body_max = max;
    if (r->body_kind == MOXY_BODY_LENGTH && r->body_length > max) {
        r->body_status = 413;
        r->body_error = "request body too large";
        r->keepalive = 0;
        return MOXY_ERROR;
    }
    if (!moxy_req_body_buffer(r)) return MOXY_ERROR;
    if (r->expect_continue) {
        r->expect_continue = 0;
        moxy_h1_write_interim(c->out, r, 100, NULL);
        moxy_client_send(c); /* a failure shows as the client going away */
    }
    r->buffering = 1;
    int rc = moxy_h1_body_buffer(c);
    if (rc != MOXY_AGAIN) return rc;
    moxy_lua_task_t *t = moxy_lua_current_task();
    if (!t) {
        r->buffering = 0;
        return MOXY_ERROR;
    }
    r->body_task = t;
    moxy_lua_task_wait(t, r, body_cancel);
    moxy_h1_want_read(c);
    return MOXY_AGAIN;
}

/* --- the body streamed to the origin --- */

/* Move request body bytes from c->in to the origin connection.  MOXY_OK when
 * the caller may go on, MOXY_ERROR when c was answered/closed. */
int moxy_h1_read_body(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    if (!r->up) {
        /* Answered without an origin: the body is not read, the connection
         * will close after the answer. */
        moxy_h1_stop_read(c);
        return MOXY_OK;
    }
    if (r->body_kind == MOXY_BODY_LENGTH) {
        size_t n = length_body_take(c, r);
        if (n) r->origin->body(r, c->in, n);
        if (r->body_done) r->origin->body_end(r);
    } else {
        const char *reason = NULL;
        int rc = moxy_h1_parse(c, &reason);
        if (rc == MOXY_ERROR) {
            int status = r->status ? r->status : 400;
            r->status = 0;
            if (!r->resp_head_sent) {
                moxy_h1_reject(c, status, reason); /* logs it */
            } else {
                moxy_log(MOXY_LOG_INFO, r->id, "client %s: bad request body: %s", c->addr.ip, reason);
                r->error = reason;
                moxy_client_close(c);
            }
            return MOXY_ERROR;
        }
    }
    r->origin->send(r);
    if (r->origin->backlogged(r)) moxy_h1_stop_read(c);
    return MOXY_OK;
}

void moxy_h1_resume_read(moxy_client_t *c)
{
    int body_left = c->state == MOXY_C_ACTIVE && c->req && !c->req->body_done;
    if ((!body_left && c->state != MOXY_C_TUNNEL) || c->reading || c->eof) return;
    moxy_h1_want_read(c);
    if (evbuffer_get_length(c->in) > 0) moxy_h1_process(c);
}
