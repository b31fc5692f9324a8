/*
 * origin_h2.c -- HTTP/2 toward origins (a pool with protocol = "h2"): per
 * worker, a few connections to each server -- TLS with ALPN "h2", or
 * cleartext with prior knowledge -- each an nghttp2 client session that
 * carries many tries at once, one stream each.
 *
 * A try's moxy_upconn_t is its stream here: the response's DATA payload
 * lands in u->in, the request body's payload waits in u->out, and the rest
 * of the proxy (origin_response.c, the client side's origin ops) sees what
 * it sees of an HTTP/1 connection.  nghttp2's callbacks only record what
 * came and wake the stream (an event): the response goes on outside of
 * them, so nothing re-enters a session.
 *
 * A connection takes new streams while it has fewer than the pool's
 * max_streams and the server's SETTINGS_MAX_CONCURRENT_STREAMS and no
 * GOAWAY came; else another is opened.  A new connection holds its streams
 * until the server's first SETTINGS: those it cannot take at once move to
 * another connection (h2o_dispatch).  Flow control: each stream's
 * window (256 KiB) is given back as its bytes go on to the client, so a
 * slow client holds at most that much of its stream and the others go on;
 * the connection's window is given back as bytes arrive.  A stream the
 * server refused (REFUSED_STREAM, or above a GOAWAY's last stream) was not
 * processed: it is sent again, as an HTTP/1 request on a keep-alive
 * connection the server closed.  Idle connections close after the pool's
 * keepalive_timeout.
 */
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/request.h"
#include "http/worker.h"
#include "http1/origin_codec.h"
#include "http2/http2.h"
#include "net/io.h"
#include "net/tls.h"
#include "proxy/origin.h"
#include "proxy/upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What moxy asks of every origin: its stream window (what a paused stream
 * may hold) and the connection's. */
#define H2O_STREAM_WINDOW (256 * 1024)
#define H2O_CONN_WINDOW (16 * 1024 * 1024)

typedef struct moxy_h2o_s moxy_h2o_t;
LIST_HEAD(moxy_h2o_list_s, moxy_h2o_s);

struct moxy_h2o_s {
    moxy_worker_t *w;
    moxy_wgen_t *g;              /* the generation whose pool it is in */
    int pool, server;
    unsigned addr_gen;
    char peer[64];               /* "ip:port", for logs */
    moxy_pool_stats_t *stats;    /* its pool's counts on its worker */
    moxy_conn_t conn;
    struct event rev, wev, flush_ev;
    struct evbuffer *out;        /* frames made, not yet written */
    nghttp2_session *ng;         /* NULL until connected */
    TAILQ_HEAD(, moxy_upconn_s) streams; /* its tries, submitted or waiting for the connection */
    int nstreams;
    unsigned connected : 1, tls_wait : 1, tcp_up : 1, https : 1;
    unsigned settings : 1;       /* the server's first SETTINGS came: streams may go */
    unsigned dispatch_due : 1;   /* they came while nghttp2 read: dispatch after */
    unsigned goaway : 1;         /* no new stream: a GOAWAY came or went */
    unsigned reading : 1, writing : 1, flush_queued : 1;
    unsigned dead : 1;
    int busy;
    LIST_ENTRY(moxy_h2o_s) link; /* in its pool's list for its server */
};

static void h2o_read_cb(evutil_socket_t fd, short what, void *arg);
static void h2o_write_cb(evutil_socket_t fd, short what, void *arg);
static void h2o_flush_cb(evutil_socket_t fd, short what, void *arg);
static void h2o_send(moxy_h2o_t *h);
static void h2o_fail(moxy_h2o_t *h, int status, const char *why);
static void h2o_dispatch(moxy_h2o_t *h);

/* --- a stream's side --- */

/* Something came for u (or it failed): its response goes on from the
 * event loop, unless it is paused (resume wakes it). */
static void stream_wake(moxy_upconn_t *u)
{
    if (u->reading && !u->dead) event_active(&u->rev, EV_READ, 0);
}

/* u's stream failed before its response was whole. */
static void stream_fail(moxy_upconn_t *u, int status, const char *why)
{
    if (u->fail_why || u->h2_end) return;
    u->fail_status = status;
    u->fail_why = why;
    u->eof = 1;
    stream_wake(u);
}

/* --- nghttp2's callbacks --- */

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    moxy_h2o_t *h = arg;
    if (evbuffer_get_length(h->out) > moxy_high_water()) return NGHTTP2_ERR_WOULDBLOCK;
    if (evbuffer_add(h->out, data, len) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

/* A field of a response head (or its trailers), kept in the request's
 * lists within the limits of a head received over HTTP/1. */
static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
    MOXY_UNUSED(flags);
    MOXY_UNUSED(arg);
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!u || !u->req) return 0;
    moxy_h1_resp_t *rs = u->resp;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < vlen && i < 3; i++) st = st * 10 + (value[i] - '0');
        u->h2_status = vlen == 3 ? st : 0; /* nghttp2 checked it is three digits */
        return 0;
    }
    if (nlen && name[0] == ':') return 0;
    moxy_headers_t *list = u->h2_head ? rs->trailers : rs->fields;
    if (!list) return 0;
    rs->head_bytes += nlen + vlen + 4;
    if (++rs->nfields > rs->max_fields || rs->head_bytes > rs->max_head) {
        stream_fail(u, 502, "origin's response head too large");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
    }
    if (moxy_headers_add(rs->mem, list, (const char *)name, nlen, (const char *)value, vlen) != MOXY_OK) {
        stream_fail(u, 500, "out of memory");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

/* A head is complete: an interim one goes to the client now, the final one
 * waits for the stream's turn.  MOXY_ERROR: the stream failed (reset it). */
static int head_recv(moxy_upconn_t *u, const nghttp2_frame *f)
{
    moxy_h1_resp_t *rs = u->resp;
    int status = u->h2_status;
    u->h2_status = 0;
    if (u->h2_head) { /* trailers */
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) return MOXY_OK;
        stream_fail(u, 502, "origin sent a second head");
        return MOXY_ERROR;
    }
    u->got_bytes = 1;
    if (status < 100 || status > 999) { /* as the HTTP/1 codec: three digits, 100 at least */
        stream_fail(u, 502, "origin sent an invalid :status");
        return MOXY_ERROR;
    }
    if (status >= 100 && status < 200) {
        if (++rs->interims > 8) {
            stream_fail(u, 502, "origin sent too many interim responses");
            return MOXY_ERROR;
        }
        if (rs->ops && rs->ops->interim) rs->ops->interim(rs, status);
        if (rs->fields) rs->fields->n = 0;
        rs->nfields = 0;
        rs->head_bytes = 0;
        stream_wake(u); /* the interim head is flushed */
        return MOXY_OK;
    }
    rs->status = status;
    rs->nfields = 0;
    rs->head_bytes = 0; /* the trailers get as much */
    rs->body_kind = MOXY_BODY_CHUNKED; /* of unknown length: the client's protocol frames it */
    const moxy_header_t *cl = rs->fields ? moxy_headers_get(rs->fields, "content-length", 14) : NULL;
    if (rs->head_request || status == 204 || status == 304) {
        rs->body_kind = MOXY_BODY_NONE;
    } else if (cl) {
        /* nghttp2 checked it is digits that fit in 63 bits (leading zeros
         * and all: fuzz/h2_origin_fuzz.c found "000...017" read as 0), and
         * checks the DATA against it */
        uint64_t n = 0;
        for (uint32_t i = 0; i < cl->value_len; i++) {
            unsigned d = (unsigned)(cl->value[i] - '0');
            if (d > 9 || n > (UINT64_MAX - d) / 10) {
                stream_fail(u, 502, "origin sent an invalid content-length");
                return MOXY_ERROR;
            }
            n = n * 10 + d;
        }
        rs->body_kind = n ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
        rs->body_left = n;
    } else if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        rs->body_kind = MOXY_BODY_NONE;
    }
    u->h2_head = 1;
    stream_wake(u);
    return MOXY_OK;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    moxy_h2o_t *h = arg;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        /* nghttp2 closes the streams above last_stream_id as refused */
        h->goaway = 1;
        MOXY_STAT_ADD(h->stats->h2_goaways, 1);
        moxy_log(MOXY_LOG_INFO, NULL, "origin %s: HTTP/2 GOAWAY (error %u, last stream %d)", h->peer,
                 f->goaway.error_code, f->goaway.last_stream_id);
        return 0;
    }
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK) && !h->settings) {
        h->settings = 1;
        h->dispatch_due = 1;
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!u || !u->req) return 0;
    if (f->hd.type == NGHTTP2_HEADERS && head_recv(u, f) != MOXY_OK) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
        return 0;
    }
    if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !u->fail_why) {
        u->h2_end = 1;
        u->eof = 1;
        stream_wake(u);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *arg)
{
    MOXY_UNUSED(flags);
    MOXY_UNUSED(arg);
    nghttp2_session_consume_connection(ng, len); /* each stream's window bounds what it holds */
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, id);
    if (!u || !u->req || u->fail_why) {
        nghttp2_session_consume_stream(ng, id, len);
        return 0;
    }
    if (evbuffer_add(u->in, data, len) != 0) {
        stream_fail(u, 500, "out of memory");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    u->got_bytes = 1;
    stream_wake(u);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(arg);
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (u) u->h2_sent = 1;
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
    moxy_h2o_t *h = arg;
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, id);
    if (!u) return 0;
    u->h2_closed = 1;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    if (u->h2_end && code == NGHTTP2_NO_ERROR) return 0;
    MOXY_STAT_ADD(h->stats->h2_resets, 1);
    if (code == NGHTTP2_REFUSED_STREAM && !u->got_bytes) {
        /* not processed (RFC 9113 8.7): it may go again on a new connection */
        u->reused = 1;
        stream_fail(u, 502, "origin refused the stream");
        return 0;
    }
    if (!u->h2_end) {
        char *why = u->req ? moxy_palloc(&u->req->mem, 64) : NULL;
        if (why) snprintf(why, 64, "origin reset the stream (%s)", nghttp2_http2_strerror(code));
        stream_fail(u, 502, why ? why : "origin reset the stream");
    }
    return 0;
}

/* A field for nghttp2, copied by it (and its name lower-cased) when submitted. */
#define NV(n, nl, v, vl) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), (nl), (vl), NGHTTP2_NV_FLAG_NONE})

/* The request body's payload for a DATA frame: what u->out holds, the end
 * once the client's body ended (its trailers after). */
static ssize_t body_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *arg)
{
    MOXY_UNUSED(src);
    MOXY_UNUSED(arg);
    moxy_upconn_t *u = nghttp2_session_get_stream_user_data(ng, id);
    if (!u || !u->req) return NGHTTP2_ERR_DEFERRED; /* let go of: its RST_STREAM follows */
    moxy_req_t *r = u->req;
    size_t have = evbuffer_get_length(u->out);
    size_t n = have < len ? have : len;
    if (n) evbuffer_remove(u->out, buf, n);
    size_t low = moxy_low_water();
    if (have - n < low && have >= low && !r->body_done)
        event_active(&u->wev, EV_WRITE, 0); /* the client's body is read on, outside of nghttp2 */
    if (have - n == 0 && r->body_done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (r->trailers.n) {
            nghttp2_nv *nv = moxy_palloc(&r->mem, r->trailers.n * sizeof(*nv));
            size_t k = 0;
            for (uint32_t i = 0; nv && i < r->trailers.n; i++) {
                const moxy_header_t *t = &r->trailers.h[i];
                if (t->kind & MOXY_HK_TRAILER_FORBIDDEN) continue;
                nv[k++] = NV(t->name, t->name_len, t->value, t->value_len);
            }
            if (k && nghttp2_submit_trailer(ng, id, nv, k) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        u->h2_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* DATA payloads of one TLS record with their frame header, as toward
 * clients (h2_conn.c). */
static ssize_t on_data_length(nghttp2_session *ng, uint8_t type, int32_t id, int32_t conn_window,
                              int32_t stream_window, uint32_t max_frame, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(type);
    MOXY_UNUSED(id);
    const moxy_h2o_t *h = arg;
    ssize_t n = h->https ? 16384 - 9 : 16384;
    n = MOXY_MIN(n, (ssize_t)max_frame);
    n = MOXY_MIN(n, (ssize_t)conn_window);
    return MOXY_MIN(n, (ssize_t)stream_window);
}

static nghttp2_session_callbacks *h2o_callbacks;
static nghttp2_option *h2o_option;
static pthread_once_t h2o_once = PTHREAD_ONCE_INIT;

static void h2o_init(void)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0) return;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return;
    }
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, on_data_length);
    nghttp2_option_set_no_auto_window_update(opt, 1); /* windows given back as bytes move on */
    nghttp2_option_set_peer_max_concurrent_streams(opt, 100); /* until the server's SETTINGS say */
    h2o_option = opt;
    h2o_callbacks = cb;
}

/* --- the connection --- */

static void h2o_free(moxy_h2o_t *h)
{
    if (h->ng) nghttp2_session_del(h->ng);
    if (h->out) evbuffer_free(h->out);
    free(h);
}

static void h2o_release(moxy_h2o_t *h)
{
    if (--h->busy == 0 && h->dead) h2o_free(h);
}

/* Close h: its streams that still wait end with status (why). */
static void h2o_close(moxy_h2o_t *h, int status, const char *why)
{
    if (h->dead) return;
    h->dead = 1;
    h->busy++;
    MOXY_STAT_ADD(h->stats->h2_conns, -1);
    if (why) moxy_log(MOXY_LOG_DEBUG, NULL, "origin %s: HTTP/2 connection closed: %s", h->peer, why);
    LIST_REMOVE(h, link);
    moxy_upconn_t *u;
    TAILQ_FOREACH(u, &h->streams, h2_link) {
        /* a stream that never reached the origin was not processed (as a
         * request on a keep-alive connection the origin closed) */
        if (!u->h2_sent && h->connected) u->reused = 1;
        stream_fail(u, status, why ? why : "origin closed the connection");
    }
    event_del(&h->rev);
    event_del(&h->wev);
    event_del(&h->flush_ev);
    moxy_conn_close(&h->conn);
    h2o_release(h);
}

static void h2o_fail(moxy_h2o_t *h, int status, const char *why)
{
    moxy_log(MOXY_LOG_ERR, NULL, "origin %s (pool %s): HTTP/2: %s", h->peer,
             h->g->conf->upstreams[h->pool].name, why);
    h2o_close(h, status, why);
}

/* The read event as h stands: the pool's keepalive_timeout while h has no
 * stream (then it closes). */
static void h2o_want_read(moxy_h2o_t *h)
{
    if (h->dead || !h->connected) return;
    event_add(&h->rev, h->nstreams ? NULL : h->g->pools[h->pool].idle.timeout);
    h->reading = 1;
    if (moxy_conn_pending(&h->conn)) event_active(&h->rev, EV_READ, 0);
}

/* Make frames and write them while the socket takes them. */
static void h2o_send(moxy_h2o_t *h)
{
    if (h->dead || !h->ng) return;
    h->busy++;
    size_t left;
    const char *why;
    if (moxy_h2_send(h->ng, &h->conn, h->out, &left, &why) != MOXY_OK) {
        h2o_fail(h, 502, why);
    } else if (left > 0) {
        if (!h->writing) event_add(&h->wev, h->g->ctv_upstream);
        h->writing = 1;
    } else if (h->writing) {
        event_del(&h->wev);
        h->writing = 0;
    }
    if (!h->dead && !nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
        h2o_close(h, 502, NULL); /* a GOAWAY went or came and no stream is left */
    h2o_release(h);
}

/* Send what the running event queued, once it is done: the frames of many
 * streams go out in one write. */
static void h2o_flush_later(moxy_h2o_t *h)
{
    if (h->dead || h->flush_queued || !h->ng) return;
    h->flush_queued = 1;
    event_active(&h->flush_ev, EV_WRITE, 0);
}

static void h2o_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_h2o_t *h = arg;
    h->flush_queued = 0;
    h2o_send(h);
}

/* Submit u's request: its head (the pseudo-fields, r's fields less the
 * hop-by-hop ones, the length of its body when known), its body as it
 * comes.  MOXY_ERROR: the stream failed. */
static int stream_submit(moxy_h2o_t *h, moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    const moxy_upstream_conf_t *uc = &r->g->conf->upstreams[r->pool];
    const char *host = uc->host ? uc->host : r->host ? r->host : r->peer;
    const char *etag = r->cache_conditional ? r->cache_etag : NULL;
    const char *lm = r->cache_conditional ? r->cache_last_modified : NULL;
    nghttp2_nv *nv = moxy_palloc(&r->mem, (r->headers.n + 10) * sizeof(*nv));
    char *len = moxy_palloc(&r->mem, 24);
    if (!nv || !len) {
        stream_fail(u, 500, "out of memory");
        return MOXY_ERROR;
    }
    size_t k = 0;
    nv[k++] = NV(":method", 7, r->method_name, strlen(r->method_name));
    nv[k++] = NV(":scheme", 7, h->https ? "https" : "http", h->https ? 5 : 4);
    nv[k++] = NV(":authority", 10, host, strlen(host));
    nv[k++] = NV(":path", 5, r->uri, r->uri_len);
    for (uint32_t i = 0; i < r->headers.n; i++) {
        const moxy_header_t *f = &r->headers.h[i];
        if (f->kind & (MOXY_HK_HOP | MOXY_HK_CONNECTION | MOXY_HK_UPGRADE | MOXY_HK_TE | MOXY_HK_HOST |
                       MOXY_HK_CL | MOXY_HK_EXPECT))
            continue;
        if (etag && (f->kind & MOXY_HK_CONDITION)) continue; /* the cache's own validators follow */
        nv[k++] = NV(f->name, f->name_len, f->value, f->value_len); /* nghttp2's copy lower-cases it */
    }
    if (r->te_trailers) nv[k++] = NV("te", 2, "trailers", 8);
    if (etag) nv[k++] = NV("if-none-match", 13, etag, strlen(etag));
    if (lm) nv[k++] = NV("if-modified-since", 17, lm, strlen(lm));
    int has_body = r->body_kind != MOXY_BODY_NONE;
    if (r->body_buffered) has_body = has_body && evbuffer_get_length(u->out) > 0;
    if (r->body_buffered && r->body_kind != MOXY_BODY_NONE) {
        char *e = moxy_write_u64(len, evbuffer_get_length(u->out));
        nv[k++] = NV("content-length", 14, len, (size_t)(e - len));
    } else if (r->has_cl && r->body_kind != MOXY_BODY_CHUNKED) {
        char *e = moxy_write_u64(len, r->body_length);
        nv[k++] = NV("content-length", 14, len, (size_t)(e - len));
    }
    nghttp2_data_provider body = {.source = {.ptr = u}, .read_callback = body_read};
    int32_t id = nghttp2_submit_request(h->ng, NULL, nv, k, has_body ? &body : NULL, u);
    if (id < 0) {
        u->reused = 1; /* it never left: another connection may take it */
        stream_fail(u, 502, nghttp2_strerror(id));
        return MOXY_ERROR;
    }
    u->stream_id = id;
    MOXY_STAT_ADD(h->stats->h2_streams, 1);
    return MOXY_OK;
}

/* h is connected (and past TLS): its session starts, its waiting streams
 * go. */
static void h2o_ready(moxy_h2o_t *h)
{
    const moxy_conf_t *conf = h->g->conf;
    if (h->https) {
        if (!moxy_tls_alpn_h2(&h->conn)) {
            h2o_fail(h, 502, "origin did not agree to HTTP/2 (ALPN)");
            return;
        }
    }
    pthread_once(&h2o_once, h2o_init);
    if (!h2o_callbacks || !(h->out = evbuffer_new()) ||
        nghttp2_session_client_new2(&h->ng, h2o_callbacks, h, h2o_option) != 0) {
        h2o_fail(h, 500, "out of memory");
        return;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2O_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)conf->limits.header_bytes},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, H2O_CONN_WINDOW) != 0) {
        h2o_fail(h, 500, "out of memory");
        return;
    }
    h->connected = 1;
    h->tls_wait = 0;
    if (h->writing) event_del(&h->wev);
    h->writing = 0;
    long long now = moxy_mono_us();
    moxy_upconn_t *u;
    TAILQ_FOREACH(u, &h->streams, h2_link) {
        if (!u->req || u->req->up_connected_us) continue;
        u->req->up_connected_us = now;
        moxy_hist_add(&h->stats->connect_time, now - u->req->up_started_us);
    }
    /* the streams wait for the server's SETTINGS (h2o_dispatch): how many
     * it takes at once is in them */
    h2o_want_read(h);
    h2o_send(h);
}

/* Go on with h's TLS handshake. */
static void h2o_tls_step(moxy_h2o_t *h)
{
    const moxy_upstream_conf_t *uc = &h->g->conf->upstreams[h->pool];
    if (!h->tls_wait) {
        if (moxy_upstream_tls_connect(&h->conn, uc, h->server) != MOXY_OK) {
            h2o_fail(h, 500, "out of memory");
            return;
        }
        h->tls_wait = 1;
        event_add(&h->rev, &h->g->tv_connect);
        h->reading = 1;
    }
    short want = 0;
    const char *why = NULL;
    int kind;
    int rc = moxy_tls_handshake(&h->conn, &want, &why, &kind);
    if (rc == MOXY_ERROR) {
        char *msg = NULL;
        moxy_upconn_t *u = TAILQ_FIRST(&h->streams);
        if (u && u->req && (msg = moxy_palloc(&u->req->mem, 160)))
            snprintf(msg, 160, "TLS handshake with the origin failed: %s", why);
        h2o_fail(h, 502, msg ? msg : "TLS handshake with the origin failed");
        return;
    }
    if (rc == MOXY_AGAIN) {
        if (want == EV_WRITE && !h->writing) {
            event_add(&h->wev, &h->g->tv_connect);
            h->writing = 1;
        } else if (want == EV_READ && h->writing) {
            event_del(&h->wev);
            h->writing = 0;
        }
        return;
    }
    h2o_ready(h);
}

/* h's TCP connection is up. */
static void h2o_tcp_ready(moxy_h2o_t *h)
{
    if (h->https) h2o_tls_step(h);
    else h2o_ready(h);
}

static void h2o_read(moxy_h2o_t *h, short what)
{
    if (what & EV_TIMEOUT) {
        if (!h->connected) {
            h2o_fail(h, 504, "TLS handshake with the origin timed out");
        } else if (h->nstreams) {
            h2o_want_read(h);
        } else { /* idle past keepalive_timeout */
            nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
            h->goaway = 1;
            h2o_send(h);
            h2o_close(h, 502, NULL);
        }
        return;
    }
    if (h->tls_wait) {
        h2o_tls_step(h);
        return;
    }
    uint8_t buf[MOXY_READ_CHUNK];
    for (int i = 0; i < 4 && !h->dead; i++) {
        ssize_t n = moxy_conn_recv(&h->conn, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            h2o_close(h, 502, strerror(errno));
            return;
        }
        if (n == 0) {
            h2o_close(h, 502, "origin closed the connection");
            return;
        }
        ssize_t rv = nghttp2_session_mem_recv(h->ng, buf, (size_t)n);
        if (rv < 0) {
            nghttp2_session_terminate_session(h->ng, NGHTTP2_PROTOCOL_ERROR);
            h2o_send(h);
            h2o_fail(h, 502, nghttp2_strerror((int)rv));
            return;
        }
        if ((size_t)n < sizeof(buf) && !moxy_conn_pending(&h->conn)) break;
    }
    if (!h->dead && moxy_conn_pending(&h->conn)) event_active(&h->rev, EV_READ, 0);
    if (!h->dead && h->dispatch_due) h2o_dispatch(h);
    h2o_send(h); /* SETTINGS and PING answers, window updates */
}

static void h2o_write(moxy_h2o_t *h, short what)
{
    if (what & EV_TIMEOUT) {
        h2o_fail(h, 504, h->connected ? "origin write timed out" : h->tls_wait
                                          ? "TLS handshake with the origin timed out"
                                          : "connect to origin timed out");
        return;
    }
    if (h->tls_wait) {
        h2o_tls_step(h);
        return;
    }
    if (!h->connected) {
        if (moxy_conn_connected(&h->conn) != MOXY_OK) {
            int err = errno;
            h2o_close(h, 502, err == ECONNREFUSED ? "connect failed: connection refused"
                              : err == ETIMEDOUT  ? "connect failed: timed out"
                                                  : "connect failed");
            return;
        }
        event_del(&h->wev);
        h->writing = 0;
        h2o_tcp_ready(h);
        return;
    }
    h2o_send(h);
}

static void h2o_read_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_h2o_t *h = arg;
    h->busy++;
    h2o_read(h, what);
    h2o_release(h);
}

static void h2o_write_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_h2o_t *h = arg;
    h->busy++;
    h2o_write(h, what);
    h2o_release(h);
}

/* A new connection to p (server of r's pool), or NULL with *err. */
static moxy_h2o_t *h2o_connect(moxy_req_t *r, moxy_peer_t *p, const char **err)
{
    struct sockaddr_storage ss;
    socklen_t salen;
    unsigned gen;
    if (moxy_peer_addr(p, &ss, &salen, &gen) != MOXY_OK) {
        *err = "origin's name has no address";
        return NULL;
    }
    moxy_h2o_t *h = calloc(1, sizeof(*h));
    if (!h) {
        *err = "out of memory";
        return NULL;
    }
    int connected;
    if (moxy_conn_connect(&h->conn, (const struct sockaddr *)&ss, salen, &connected) != MOXY_OK) {
        *err = strerror(errno);
        free(h);
        return NULL;
    }
    moxy_worker_t *w = r->w;
    h->w = w;
    h->g = r->g;
    h->pool = r->pool;
    h->server = r->server;
    h->addr_gen = gen;
    h->https = r->g->conf->upstreams[r->pool].tls != NULL;
    h->tcp_up = connected != 0;
    snprintf(h->peer, sizeof(h->peer), "%s", r->peer);
    h->stats = r->g->pools[r->pool].stats;
    MOXY_STAT_ADD(h->stats->h2_conns, 1);
    TAILQ_INIT(&h->streams);
    event_assign(&h->rev, w->base, h->conn.fd, EV_READ | EV_PERSIST, h2o_read_cb, h);
    event_assign(&h->wev, w->base, h->conn.fd, EV_WRITE | EV_PERSIST, h2o_write_cb, h);
    event_assign(&h->flush_ev, w->base, -1, 0, h2o_flush_cb, h);
    LIST_INSERT_HEAD(&r->g->pools[r->pool].h2_lists[r->server], h, link);
    return h;
}

/* The streams h may carry at once. */
static int h2o_capacity(const moxy_h2o_t *h)
{
    int max = h->g->conf->upstreams[h->pool].max_streams;
    if (h->ng) {
        uint32_t theirs = nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (theirs < (uint32_t)max) max = (int)theirs;
    }
    return max;
}

/* --- a stream's events --- */

static void stream_event(moxy_upconn_t *u, short what)
{
    moxy_req_t *r = u->req;
    if (!r) return;
    if (what & EV_TIMEOUT) {
        moxy_origin_fail(u, 504, "origin read timed out", 1);
        return;
    }
    if (u->reading) moxy_origin_process(u);
}

static void stream_event_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_origin_event(arg, what, stream_event);
}

/* The DATA frames took u's body below the low watermark: the client's body
 * is read on. */
static void stream_drained(moxy_upconn_t *u, short what)
{
    MOXY_UNUSED(what);
    if (u->req && evbuffer_get_length(u->out) < moxy_low_water()) moxy_stream_resume_read(u->req);
}

static void stream_drained_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_origin_event(arg, what, stream_drained);
}

/* --- which connection a stream goes on --- */

/* A connection to r's peer p with room for one more stream, other than
 * not; else a new one (*fresh set: h2o_start connects it), always for
 * r->fresh_conn.  NULL with *err. */
static moxy_h2o_t *h2o_pick(moxy_req_t *r, moxy_peer_t *p, const moxy_h2o_t *not, int *fresh, const char **err)
{
    moxy_pool_rt_t *rt = &r->g->pools[r->pool];
    unsigned gen = atomic_load_explicit(&p->addr_gen, memory_order_relaxed);
    moxy_h2o_t *h;
    *fresh = 0;
    if (!r->fresh_conn) {
        LIST_FOREACH(h, &rt->h2_lists[r->server], link) {
            if (h != not && !h->dead && !h->goaway && h->addr_gen == gen && h->nstreams < h2o_capacity(h))
                return h;
        }
    }
    h = h2o_connect(r, p, err);
    *fresh = h != NULL;
    return h;
}

/* Go on connecting h, new: its connect() may have succeeded at once. */
static void h2o_start(moxy_h2o_t *h)
{
    if (h->tcp_up) {
        h->tcp_up = 0;
        h2o_tcp_ready(h);
    } else {
        event_add(&h->wev, &h->g->tv_connect);
        h->writing = 1;
    }
}

/* u becomes a stream of h: it goes once h has the server's SETTINGS. */
static void stream_attach(moxy_h2o_t *h, moxy_upconn_t *u)
{
    u->h2 = h;
    u->addr_gen = h->addr_gen;
    h->busy++;
    if (h->nstreams++ == 0) h2o_want_read(h); /* no more keep-alive timeout */
    TAILQ_INSERT_TAIL(&h->streams, u, h2_link);
}

/* u, waiting on h, goes to another connection: h takes fewer streams at
 * once than it was given before its SETTINGS came. */
static void stream_move(moxy_h2o_t *h, moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    moxy_peer_t *p = &r->g->conf->upstreams[r->pool].state->peers[r->server];
    int fresh;
    const char *err;
    moxy_h2o_t *to = h2o_pick(r, p, h, &fresh, &err);
    if (!to) {
        stream_fail(u, 502, "cannot connect to origin");
        return;
    }
    TAILQ_REMOVE(&h->streams, u, h2_link);
    h->nstreams--;
    stream_attach(to, u);
    h2o_release(h); /* what u held; the caller holds h */
    if (fresh) {
        h2o_start(to);
    } else if (to->settings && !to->dead) {
        stream_submit(to, u);
        h2o_flush_later(to);
    }
}

/* The server's first SETTINGS came: h's waiting streams go, as many as it
 * takes at once; the others move to another connection. */
static void h2o_dispatch(moxy_h2o_t *h)
{
    h->dispatch_due = 0;
    int cap = h2o_capacity(h), active = 0;
    moxy_upconn_t *u, *next;
    TAILQ_FOREACH(u, &h->streams, h2_link)
        if (u->stream_id && !u->h2_closed) active++;
    h->busy++;
    for (u = TAILQ_FIRST(&h->streams); u && !h->dead; u = next) {
        next = TAILQ_NEXT(u, h2_link);
        if (u->stream_id || u->fail_why || !u->req) continue;
        if (active < cap) {
            if (stream_submit(h, u) == MOXY_OK) active++;
        } else if (cap == 0) {
            stream_fail(u, 502, "origin takes no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0)");
        } else {
            stream_move(h, u);
        }
    }
    h2o_release(h);
}

/* --- what the rest of the proxy asks --- */

int moxy_origin_h2_try(moxy_req_t *r, moxy_peer_t *p, const char **err)
{
    int fresh;
    moxy_h2o_t *h = h2o_pick(r, p, NULL, &fresh, err);
    if (!h) return MOXY_ERROR;
    moxy_upconn_t *u = moxy_origin_upconn_new(r->w, r->pool, r->server);
    if (!u) {
        if (fresh) h2o_close(h, 500, NULL);
        *err = "out of memory";
        return MOXY_ERROR;
    }
    u->g = r->g;
    stream_attach(h, u);
    event_assign(&u->rev, r->w->base, -1, EV_PERSIST, stream_event_cb, u);
    event_assign(&u->wev, r->w->base, -1, 0, stream_drained_cb, u);

    if (h->connected) r->up_connected_us = r->up_started_us;
    u->req = r;
    r->up = u;
    u->keepalive = 0;
    r->upgrade = 0; /* no 101 over HTTP/2: Upgrade is a hop-by-hop field, dropped */
    moxy_origin_response_start(u);
    if (r->body_buffered && r->body_buf &&
        evbuffer_add(u->out, evbuffer_pullup(r->body_buf, -1), evbuffer_get_length(r->body_buf)) != 0) {
        moxy_req_upstream_failed(r, 500, "out of memory");
        return MOXY_OK;
    }
    u->read_timer = r->body_done;
    event_add(&u->rev, u->read_timer ? r->g->ctv_upstream : NULL);
    u->reading = 1;
    if (fresh) h2o_start(h);
    else if (h->settings && !h->dead && stream_submit(h, u) == MOXY_OK) h2o_flush_later(h);
    return MOXY_OK;
}

void moxy_origin_h2_detach(moxy_upconn_t *u)
{
    moxy_h2o_t *h = u->h2;
    TAILQ_REMOVE(&h->streams, u, h2_link);
    h->nstreams--;
    if (!h->dead && h->ng && u->stream_id && !u->h2_closed) {
        nghttp2_session_set_stream_user_data(h->ng, u->stream_id, NULL);
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, u->stream_id, NGHTTP2_CANCEL);
        h2o_flush_later(h);
    }
    if (!h->dead && h->nstreams == 0) {
        if (h->goaway || h->w->draining || !h->connected) h2o_close(h, 502, NULL);
        else h2o_want_read(h); /* idle: the keep-alive timeout runs */
    }
    h2o_release(h);
}

void moxy_origin_h2_send(moxy_upconn_t *u)
{
    moxy_h2o_t *h = u->h2;
    moxy_req_t *r = u->req;
    if (h->dead || !u->stream_id || u->h2_closed) return;
    if (u->h2_deferred && (evbuffer_get_length(u->out) > 0 || (r && r->body_done))) {
        u->h2_deferred = 0;
        nghttp2_session_resume_data(h->ng, u->stream_id);
    }
    if (r && r->body_done && !u->read_timer && u->reading) {
        event_add(&u->rev, r->g->ctv_upstream);
        u->read_timer = 1;
    }
    h2o_flush_later(h);
}

void moxy_origin_h2_resume(moxy_upconn_t *u)
{
    if (u->reading || u->dead) return;
    event_add(&u->rev, u->read_timer ? u->g->ctv_upstream : NULL);
    u->reading = 1;
    if (evbuffer_get_length(u->in) > 0 || u->eof || (u->h2_head && !u->resp->head_done))
        event_active(&u->rev, EV_READ, 0);
}

int moxy_origin_h2_head(moxy_upconn_t *u)
{
    /* a stream that failed before its head went on fails as a whole (a 502,
     * not a head cut short) */
    if (u->h2_head && !u->fail_why) {
        u->resp->head_done = 1;
        return MOXY_OK;
    }
    return MOXY_AGAIN; /* u->eof: it failed (fail_why) */
}

int moxy_origin_h2_body(moxy_upconn_t *u, size_t *take)
{
    moxy_h1_resp_t *rs = u->resp;
    size_t have = evbuffer_get_length(u->in);
    *take = have;
    if (rs->body_kind == MOXY_BODY_LENGTH) rs->body_left -= MOXY_MIN((uint64_t)have, rs->body_left);
    moxy_h2o_t *h = u->h2;
    if (have && !h->dead && !u->h2_closed) {
        nghttp2_session_consume_stream(h->ng, u->stream_id, have);
        h2o_flush_later(h);
    }
    if (u->fail_why) {
        rs->why = u->fail_why;
        return MOXY_ERROR;
    }
    if (!u->h2_end) return MOXY_AGAIN;
    rs->done = 1;
    return MOXY_OK;
}

int moxy_origin_h2_init_pool(moxy_pool_rt_t *rt, int nservers)
{
    rt->h2_lists = calloc((size_t)nservers + 1, sizeof(*rt->h2_lists));
    if (!rt->h2_lists) return MOXY_ERROR;
    for (int j = 0; j < nservers; j++) LIST_INIT(&rt->h2_lists[j]);
    return MOXY_OK;
}

void moxy_origin_h2_close_idle(moxy_pool_rt_t *rt, int nservers, int all)
{
    for (int j = 0; rt->h2_lists && j < nservers; j++) {
        moxy_h2o_t *h, *next;
        for (h = LIST_FIRST(&rt->h2_lists[j]); h; h = next) {
            next = LIST_NEXT(h, link);
            if (h->nstreams == 0 || all) {
                h->busy++;
                if (h->ng) {
                    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
                    h2o_send(h);
                }
                h2o_close(h, 502, "moxy closed the connection");
                h2o_release(h);
            } else {
                h->goaway = 1; /* closes once its streams are done */
            }
        }
    }
}

void moxy_origin_h2_free_pool(moxy_pool_rt_t *rt, int nservers)
{
    moxy_origin_h2_close_idle(rt, nservers, 1);
    free(rt->h2_lists);
    rt->h2_lists = NULL;
}

void moxy_origin_h2_move(moxy_pool_rt_t *from, moxy_pool_rt_t *to, moxy_wgen_t *g, int pool, int nservers)
{
    for (int j = 0; j < nservers; j++) {
        moxy_h2o_t *h;
        while ((h = LIST_FIRST(&from->h2_lists[j]))) {
            LIST_REMOVE(h, link);
            h->g = g;
            h->pool = pool;
            LIST_INSERT_HEAD(&to->h2_lists[j], h, link);
        }
    }
}
