/*
 * origin_response.c -- the origin's response: its head parsed with llhttp
 * (interim heads forwarded), the on_response hooks, then the body streamed
 * to the client's stream (or its on_body filter) with back-pressure, and
 * the connection kept for the next request when it is clean.
 *
 * Response bodies with Content-Length, and bodies delimited by close, are
 * moved between evbuffers without copying; chunked bodies are decoded by
 * llhttp and handed on piece by piece: the client's protocol frames them
 * again.
 */
#include "base/headers.h"
#include "http/http.h"
#include "http/body_filter.h"
#include "http/request.h"
#include "net/io.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "http1/origin_codec.h"
#include "net/tls.h"
#include "proxy/origin.h"
#include "proxy/upstream.h"
#include "http/worker.h"

#include <errno.h>
#include <event2/buffer.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void response_hooks_done(moxy_req_t *r, int rc);

/* --- what the parser hands over --- */

/* Forward an interim (1xx) response to the client; 100 is moxy's own
 * business with the client and is not forwarded. */
static const char *of_interim(moxy_h1_resp_t *rs, int status)
{
    moxy_upconn_t *u = rs->data;
    moxy_req_t *r = u->req;
    /* the fields the origin's Connection names are for this hop only */
    moxy_headers_drop_connection_named(&r->resp_headers, MOXY_HK_CL);
    if (status != 100) {
        moxy_mask_fields(r, &r->resp_headers);
        moxy_stream_send_interim(r, status, &r->resp_headers);
    }
    return NULL;
}

/* A piece of a chunked body, decoded: on through the body's chain. */
static const char *of_body(moxy_h1_resp_t *rs, const char *at, size_t n)
{
    moxy_upconn_t *u = rs->data;
    moxy_body_add(u->req, at, n);
    return NULL;
}

static const moxy_h1_resp_ops_t origin_resp_ops = {
    .interim = of_interim,
    .body = of_body,
};

void moxy_origin_response_start(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    const moxy_conf_t *conf = u->g->conf;
    /* a failed try may have left fields of a head it never finished (found
     * by fuzz/h2_origin_fuzz.c: a refused stream's content-length came back
     * in the retry's head) */
    r->resp_headers.n = 0;
    r->resp_trailers.n = 0;
    moxy_h1_resp_init(u->resp, &origin_resp_ops, u, &r->mem, &r->resp_headers, &r->resp_trailers,
                      r->method == HTTP_HEAD, conf->limits.header_bytes, (uint32_t)conf->limits.headers);
}

/* The origin's response is complete: keep the connection for the next
 * request when it is clean. */
static void up_finished(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    moxy_worker_t *w = u->w;
    r->up_done_us = moxy_mono_us();
    moxy_origin_try_release(r);
    r->up = NULL;
    u->req = NULL;
    if (u->pool < 0 || u->server < 0 || u->h2) { /* a stream ends with its response */
        moxy_upconn_close(u);
        return;
    }
    if (u->g != w->g) { /* a request that started before a reload */
        int k = moxy_origin_pool_of_state(w->g, u->g->pools[u->pool].state);
        if (k < 0) { /* the pool changed: its connections go with its generation */
            moxy_upconn_close(u);
            return;
        }
        u->g = w->g;
        u->pool = k;
    }
    int reuse = u->keepalive && u->resp->keepalive && !u->eof && !u->write_failed && r->body_done &&
                evbuffer_get_length(u->out) == 0 && evbuffer_get_length(u->in) == 0 && !w->draining;
    if (!reuse || moxy_origin_idle_put(&u->g->pools[u->pool], u) != MOXY_OK) {
        moxy_upconn_close(u);
        return;
    }
    if (u->writing) event_del(&u->wev);
    u->writing = 0;
    u->reading = 1; /* the idle pool armed its read event */
}

/* The origin closed (or reset) before the response head was complete. */
static void up_eof_before_head(moxy_upconn_t *u)
{
    if (u->fail_why) { /* an HTTP/2 stream: reset, refused, its connection gone */
        moxy_origin_fail(u, u->fail_status, u->fail_why, 1);
        return;
    }
    static const char *const why[2][2] = {
        {"origin closed the connection without answering", "origin closed the connection in the response head"},
        {"origin reset the connection without answering", "origin reset the connection in the response head"},
    };
    moxy_origin_fail(u, 502, why[u->reset][u->got_bytes], 1);
}

/* r ends: what a try still holds is let go. */
void moxy_upstream_req_free(moxy_req_t *r)
{
    moxy_origin_try_release(r);
}

/* --- the response --- */

/* The on_response hooks ran (rc from moxy_lua_run): MOXY_OK when the
 * origin's response goes on to the client (its head is queued); otherwise
 * the request was answered (the hooks' answer or a 500) and u is closed. */
static int up_after_response_hooks(moxy_upconn_t *u, int rc)
{
    moxy_req_t *r = u->req;
    if (rc == MOXY_OK && moxy_body_filter_start(r) != MOXY_OK) rc = MOXY_ERROR;
    if (rc == MOXY_OK) {
        if (moxy_origin_cache->response_decide(r) == MOXY_OK) {
            moxy_body_send_head(r);
            return MOXY_OK;
        }
        rc = MOXY_DECLINED; /* a background fetch whose response is not stored */
    }
    /* the origin's body will not be read: its connection cannot be reused */
    r->up = NULL;
    u->req = NULL;
    moxy_upconn_close(u);
    if (rc == MOXY_DECLINED) {
        moxy_req_response_done(r);
    } else if (rc == MOXY_DONE) {
        moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
    } else {
        moxy_req_fail(r, 500, "script error in on_response");
    }
    return MOXY_DONE;
}

/* on_response's hooks that yielded over an origin's head are done. */
static void response_hooks_done(moxy_req_t *r, int rc)
{
    moxy_upconn_t *u = r->up;
    if (!u) return;
    moxy_origin_hold(u);
    if (up_after_response_hooks(u, rc) == MOXY_OK) {
        moxy_upstream_resume_read(u);
        if (evbuffer_get_length(u->in) > 0 || u->eof) moxy_origin_process(u);
        else moxy_stream_flush(r);
    }
    moxy_origin_release(u);
}

/* The origin's head is in: its status goes to passive health, and a retry
 * status (retry_statuses) sends a retryable request to another peer.
 * MOXY_OK: go on with this response; MOXY_DONE: another try started. */
static int up_head_verdict(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    if (u->pool < 0) return MOXY_OK;
    if (r->shard_try && r->status == 421) {
        /* cache.shard: the owner cannot take this fill (its configuration
         * lacks the pool): the origin, from here */
        moxy_origin_try_report(r, 1);
        uint32_t nh = r->resp_headers.n;
        r->resp_headers.n = 0;
        if (moxy_origin_try_again(r, u, 502, "its owner refused the fill (421)")) return MOXY_DONE;
        r->resp_headers.n = nh;
        return MOXY_OK;
    }
    const moxy_upstream_conf_t *uc = &u->g->conf->upstreams[u->pool];
    int failed = moxy_status_in(&uc->passive.statuses, r->status);
    if (!moxy_status_in(&uc->retry_statuses, r->status)) {
        moxy_origin_try_report(r, !failed);
        return MOXY_OK;
    }
    char *why = moxy_palloc(&r->mem, 40);
    if (!why) return MOXY_OK;
    snprintf(why, 40, "origin answered %d", r->status);
    if (!failed) moxy_origin_try_report(r, 1); /* the peer is fine; the answer is not */
    /* the next try parses its own head into the same lists */
    int status = r->status;
    uint32_t nh = r->resp_headers.n;
    r->resp_headers.n = 0;
    if (moxy_origin_try_again(r, u, status, why)) return MOXY_DONE;
    r->resp_headers.n = nh; /* no other try: the client gets this answer */
    return MOXY_OK;
}

void moxy_origin_process(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;

    if (r->tunnel) {
        if (moxy_stream_tunnel_relay(r, u->in, u->eof) == MOXY_AGAIN) moxy_origin_stop_read(u);
        return;
    }
    if (r->hook) {
        /* hooks wait (on_response, on_body): the rest waits in the socket */
        moxy_origin_stop_read(u);
        return;
    }

    moxy_h1_resp_t *rs = u->resp;
    if (!rs->head_done) {
        int rc = u->h2 ? moxy_origin_h2_head(u) : moxy_h1_resp_head(rs, u->in);
        if (rc == MOXY_ERROR) {
            moxy_log(MOXY_LOG_ERR, r->id, "origin %s: invalid response from origin: %s", r->peer, rs->why);
            u->keepalive = 0;
            moxy_origin_fail(u, 502, "invalid response from origin", 1);
            return;
        }
        if (rc == MOXY_AGAIN) {
            if (u->eof) up_eof_before_head(u);
            else if (rs->interims) moxy_stream_flush(r); /* the 1xx heads queued */
            return;
        }
        r->status = rs->status;
        r->resp_h2 = u->h2 != NULL;
        r->resp_body_kind = rs->body_kind;
        r->resp_body_left = rs->body_left;
        /* the fields the origin's Connection names are for this hop only */
        moxy_headers_drop_connection_named(&r->resp_headers, MOXY_HK_CL);
        r->up_status = r->status;
        event_base_gettimeofday_cached(u->w->base, &r->up_header);
        r->up_header_us = moxy_mono_us();
        if (up_head_verdict(u) != MOXY_OK) return;
        if (r->status == 101) {
            if (!r->upgrade) {
                moxy_origin_fail(u, 502, "origin switched protocols without being asked", 0);
                return;
            }
            if (!moxy_req_upgrade_allowed(r, &r->resp_headers)) {
                moxy_origin_fail(u, 502, "origin switched to a protocol the listener does not allow", 0);
                return;
            }
            moxy_mask_response(r);
            moxy_stream_send_head(r);
            if (moxy_stream_tunnel(r) != MOXY_OK) return; /* the client closed */
            if (evbuffer_get_length(u->in) || u->eof) moxy_origin_process(u);
            else moxy_stream_flush(r);
            return;
        }
        moxy_origin_cache->response_head(r);
        if (moxy_origin_cache->upstream_head(r) == MOXY_DONE) {
            /* a 304 to a revalidation (no body: the connection is kept), or a
             * 5xx answered with the stale object (its body is not read) */
            if (r->status == 304) {
                up_finished(u);
            } else {
                r->up = NULL;
                u->req = NULL;
                moxy_upconn_close(u);
            }
            moxy_origin_cache->answer_kept(r);
            return;
        }
        /* after the cache took the head as it came (response_head), before
         * on_response: a hook sees what the client would (mask.h) */
        moxy_mask_response(r);
        int rc2 = moxy_lua_run(r, MOXY_PHASE_RESPONSE, response_hooks_done);
        if (rc2 == MOXY_AGAIN) {
            moxy_origin_stop_read(u); /* the body waits in the socket */
            return;
        }
        if (up_after_response_hooks(u, rc2) != MOXY_OK) return;
    }

    /* a body delimited by the close ends at a clean close only: after an
     * RST (or a TLS error) it is cut, however it looks (RFC 9112 9.8) */
    size_t take;
    int rc = u->h2 ? moxy_origin_h2_body(u, &take)
                   : moxy_h1_resp_body(rs, u->in, u->eof && !u->reset, &take); /* of_body: chunked pieces */
    if (rc == MOXY_ERROR) {
        if (take) moxy_body_move(r, u->in, take); /* what came before the stream failed */
        u->keepalive = 0;
        if (u->h2) {
            moxy_origin_fail(u, u->fail_status, rs->why, 0);
            return;
        }
        moxy_log(MOXY_LOG_ERR, r->id, "origin %s: bad chunked body: %s", r->peer, rs->why);
        moxy_origin_fail(u, 502, "invalid chunked body from origin", 0);
        return;
    }
    if (take) moxy_body_move(r, u->in, take);
    r->resp_body_left = rs->body_left;
    int done = rc == MOXY_OK;
    if (done) {
        up_finished(u);
        moxy_body_end(r);
        return;
    }
    if (u->eof && !u->h2) {
        moxy_origin_fail(u, 502,
                         u->reset ? "origin reset the connection in the middle of the body"
                                  : "origin closed the connection in the middle of the body",
                         0);
        return;
    }
    if (r->filtering) {
        moxy_body_filter_continue(r);
        return;
    }
    if (moxy_stream_flush(r) != MOXY_OK) return;
    if (moxy_stream_backlogged(r)) moxy_origin_stop_read(u);
}

static void up_read(moxy_upconn_t *u, short what)
{
    moxy_req_t *r = u->req;
    if (what & EV_TIMEOUT) {
        if (!r) {
            moxy_upconn_close(u); /* idle too long */
        } else if (u->tls_wait) {
            moxy_origin_fail(u, 504, "TLS handshake with the origin timed out", 1);
        } else if (r->tunnel) {
            moxy_stream_abort(r);
        } else {
            moxy_origin_fail(u, 504, "origin read timed out", 1);
        }
        return;
    }
    if (!r) {
        /* idle: the origin closed, or sent what nobody asked for (a TLS
         * session ticket is neither) */
        if (moxy_conn_idle_readable(&u->conn)) moxy_upconn_close(u);
        return;
    }
    if (u->tls_wait) {
        moxy_origin_tls_step(u);
        return;
    }
    /* small reads until the head is in: most responses fit in one */
    size_t want = u->resp->head_done ? moxy_io_read_size(u->read_size) : MOXY_READ_CHUNK;
    ssize_t n = moxy_conn_read(&u->conn, u->in, want);
    if (u->resp->head_done) u->read_size = (uint32_t)moxy_io_next_size(want, n);
    /* bytes a transport (TLS) holds already raise no socket event */
    if (n > 0 && moxy_conn_pending(&u->conn)) event_active(&u->rev, EV_READ, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            if (evbuffer_get_length(u->in)) moxy_origin_process(u); /* resumed after a pause */
            return;
        }
        u->reset = 1;
        n = 0;
    }
    if (n == 0) {
        u->eof = 1;
        moxy_origin_stop_read(u);
    } else {
        u->got_bytes = 1;
    }
    moxy_origin_process(u);
}

void moxy_origin_read_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_origin_event(arg, what, up_read);
}
