/*
 * h2_conn.c -- an HTTP/2 connection toward a client: its nghttp2 session
 * (server side, RFC 9113 checks on: pseudo-headers, connection-specific
 * fields, content-length against DATA), the socket's reads and writes,
 * its settings and limits, GOAWAY when it drains, and the checks against
 * floods.
 *
 * Reading: each read goes whole to nghttp2_session_mem_recv, whose
 * callbacks (h2_stream.c) make requests of the streams.  Writing: frames
 * are made into h->out by nghttp2_session_send (control frames and heads
 * copied, DATA moved from the stream's buffer without a copy), then
 * written; while h->out is above the high watermark no more frames are
 * made and the socket is not read (a client that does not read cannot make
 * moxy queue its PING and SETTINGS answers).  A stream's response pieces
 * ask for a send once the running event is done (flush_ev), so that the
 * frames of many streams go out in one write.
 *
 * Limits, each with its nghttp2 setting or moxy's own count: concurrent
 * streams (SETTINGS_MAX_CONCURRENT_STREAMS, refused past it), the head's
 * decoded size and field count (limits.header_bytes, limits.headers: 431,
 * however small the HPACK block), the HPACK table (SETTINGS_HEADER_TABLE_SIZE),
 * CONTINUATION frames per head (http2.max_continuations), client resets
 * (http2.max_resets, refilled at http2.reset_rate per second: the rapid
 * reset attack, CVE-2023-44487), control frames that ask work of moxy
 * (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA, refused streams:
 * http2.max_control_frames, refilled over ten seconds and by each DATA
 * frame sent) -- past any of them: GOAWAY ENHANCE_YOUR_CALM and close.
 */
#include "http2/h2_int.h"
#include "base/log.h"
#include "http/request.h"
#include "http/stats.h"
#include "http/worker.h"
#include "net/io.h"

#include <errno.h>
#include <pthread.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void h2_read_cb(evutil_socket_t fd, short what, void *arg);
static void h2_write_cb(evutil_socket_t fd, short what, void *arg);
static void h2_flush_cb(evutil_socket_t fd, short what, void *arg);
static void h2_tick_cb(evutil_socket_t fd, short what, void *arg);
static int h2_send(h2_conn_t *h);
static void h2_idle_pages(h2_conn_t *h);

/* --- nghttp2's callbacks --- */

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *arg)
{
    h2_conn_t *h = arg;
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    if (evbuffer_get_length(h->out) > moxy_high_water()) return NGHTTP2_ERR_WOULDBLOCK;
    if (evbuffer_add(h->out, data, len) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    h->mem_idle = 0; /* a frame was made in the frame buffer */
    return (ssize_t)len;
}

static int on_send_data(nghttp2_session *ng, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *arg)
{
    MOXY_UNUSED(ng);
    h2_conn_t *h = arg;
    if (evbuffer_get_length(h->out) > moxy_high_water()) return NGHTTP2_ERR_WOULDBLOCK;
    h->mem_idle = 0;
    return h2_stream_data_send(h, f, framehd, length, src);
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(ng);
    return h2_stream_begin(arg, f);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    return h2_stream_field(arg, f, name, nlen, value, vlen);
}

/* Tell the client ENHANCE_YOUR_CALM (GOAWAY) and close once it is out:
 * what (a budget) was spent, logged. */
static void h2_calm(h2_conn_t *h, const char *what, int limit)
{
    MOXY_STAT_ADD(h->w->stats.h2_floods, 1);
    moxy_log(MOXY_LOG_WARN, NULL, "client %s: HTTP/2 %s past %d; GOAWAY ENHANCE_YOUR_CALM", h->addr.ip, what, limit);
    nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    h->goaway = 1;
}

/* A stream reset by the client costs a unit of its budget: http2.max_resets
 * at once, http2.reset_rate back each second (the rapid reset attack opens
 * and cancels streams faster than any page does). */
static int h2_reset_budget(h2_conn_t *h)
{
    const moxy_conf_t *conf = h->w->g->conf;
    long long now = moxy_mono_ms();
    h->resets += (double)(now - h->resets_ms) * conf->http2.reset_rate / 1000.0;
    h->resets_ms = now;
    if (h->resets > conf->http2.max_resets) h->resets = conf->http2.max_resets;
    h->resets -= 1;
    if (h->resets >= 0) return 1;
    h2_calm(h, "stream resets (http2.max_resets)", conf->http2.max_resets);
    return 0;
}

/* A frame that asks work of moxy and carries no request costs a unit of
 * the budget; DATA moxy sends earns one back (a client that reads a big
 * response sends WINDOW_UPDATEs). */
static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(ng);
    h2_conn_t *h = arg;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) break;
        /* fall through */
    case NGHTTP2_PRIORITY:
    case NGHTTP2_WINDOW_UPDATE:
        if (!h2_conn_budget(h, 1)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        break;
    case NGHTTP2_RST_STREAM:
        MOXY_STAT_ADD(h->w->stats.h2_rst_recv[MOXY_MIN(f->rst_stream.error_code, MOXY_H2_CODES - 1)], 1);
        if (!h2_reset_budget(h)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        break;
    case NGHTTP2_DATA:
        if (f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !h2_conn_budget(h, 1))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        break;
    default:
        break;
    }
    if (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) return h2_stream_frame(h, f);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    return h2_stream_data(arg, id, data, len);
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(ng);
    h2_conn_t *h = arg;
    if (f->hd.type == NGHTTP2_GOAWAY)
        MOXY_STAT_ADD(h->w->stats.h2_goaway[MOXY_MIN(f->goaway.error_code, MOXY_H2_CODES - 1)], 1);
    else if (f->hd.type == NGHTTP2_RST_STREAM)
        MOXY_STAT_ADD(h->w->stats.h2_rst_sent[MOXY_MIN(f->rst_stream.error_code, MOXY_H2_CODES - 1)], 1);
    else if (f->hd.type == NGHTTP2_DATA && h->tokens < h->w->g->conf->http2.max_control_frames)
        h->tokens += 1;
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) h2_stream_sent(h, f);
    return 0;
}

/* A DATA frame's payload: over TLS, at most what makes header and payload
 * one 16 KiB record (net/tls.c writes records of 16 KiB); else nghttp2's
 * own choice, the windows and the client's frame size permitting. */
static ssize_t on_data_length(nghttp2_session *ng, uint8_t type, int32_t id, int32_t conn_window,
                              int32_t stream_window, uint32_t max_frame, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(type);
    MOXY_UNUSED(id);
    const h2_conn_t *h = arg;
    ssize_t n = h->https ? 16384 - 9 : 16384;
    n = MOXY_MIN(n, (ssize_t)max_frame);
    n = MOXY_MIN(n, (ssize_t)conn_window);
    return MOXY_MIN(n, (ssize_t)stream_window);
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *arg)
{
    MOXY_UNUSED(ng);
    h2_stream_closed(arg, id, error_code);
    return 0;
}

/* nghttp2 found the client broke the protocol: logged once per connection
 * at info (a client's error, not moxy's). */
static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *f, int lib_error, void *arg)
{
    MOXY_UNUSED(ng);
    h2_conn_t *h = arg;
    moxy_log(MOXY_LOG_INFO, NULL, "client %s: HTTP/2 stream %d: invalid frame (type %u): %s", h->addr.ip,
             f->hd.stream_id, f->hd.type, nghttp2_strerror(lib_error));
    return 0;
}

/* nghttp2's callbacks, made once for every worker (pthread_once). */
static nghttp2_session_callbacks *h2_callbacks;
static pthread_once_t h2_once = PTHREAD_ONCE_INIT;

static void h2_init(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) return;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, on_data_length);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    h2_callbacks = cb;
}

/* --- the connection --- */

void h2_conn_hold(h2_conn_t *h)
{
    h->busy++;
}

static void h2_free(h2_conn_t *h)
{
    moxy_worker_t *w = h->w;
    if (h->ng) nghttp2_session_del(h->ng);
    if (h->out) moxy_worker_buf_put(w, h->out);
    LIST_REMOVE(&h->s, link);
    MOXY_STAT_ADD(w->stats.h2_conns, -1);
    moxy_conn_limit_leave(&h->climit);
    free(h);
    moxy_worker_conn_closed(w);
}

void h2_conn_release(h2_conn_t *h)
{
    if (--h->busy == 0 && h->dead) h2_free(h);
}

void h2_conn_close(h2_conn_t *h, const char *why)
{
    if (h->dead) return;
    h->dead = 1;
    h->busy++;
    if (why) moxy_log(MOXY_LOG_DEBUG, NULL, "client %s: HTTP/2 connection closed: %s", h->addr.ip, why);
    h2_stream_t *s;
    while ((s = LIST_FIRST(&h->streams))) {
        LIST_REMOVE(s, link);
        s->closed = 1;
        h2_stream_drop(s, "client closed");
    }
    event_del(&h->rev);
    event_del(&h->wev);
    event_del(&h->flush_ev);
    event_del(&h->tick);
    moxy_conn_close(&h->conn);
    h2_conn_release(h);
}

int h2_conn_budget(h2_conn_t *h, double cost)
{
    const moxy_conf_t *conf = h->w->g->conf;
    double max = conf->http2.max_control_frames;
    long long now = moxy_mono_ms();
    h->tokens += (double)(now - h->tokens_ms) * max / 10000.0; /* the whole budget back in ten seconds */
    h->tokens_ms = now;
    if (h->tokens > max) h->tokens = max;
    h->tokens -= cost;
    if (h->tokens >= 0) return 1;
    h2_calm(h, "control frames (http2.max_control_frames)", conf->http2.max_control_frames);
    return 0;
}

/* The read event armed as where h stands asks: not while h->out is
 * backlogged; with the keep-alive timeout while h has no stream. */
static void h2_want_read(h2_conn_t *h)
{
    if (h->dead) return;
    int want = nghttp2_session_want_read(h->ng) && (!h->out || evbuffer_get_length(h->out) <= moxy_high_water());
    if (!want) {
        if (h->reading) event_del(&h->rev);
        h->reading = 0;
        return;
    }
    const moxy_wgen_t *g = h->w->g;
    event_add(&h->rev, LIST_EMPTY(&h->streams) ? g->ctv_keepalive : NULL);
    h->reading = 1;
    /* bytes a transport (TLS) holds already raise no socket event */
    if (moxy_conn_pending(&h->conn)) event_active(&h->rev, EV_READ, 1);
}

/* The once-a-second checks run while h has streams (their requests, or
 * responses still going out), or drains. */
static void h2_want_tick(h2_conn_t *h)
{
    int want = !h->dead && (!LIST_EMPTY(&h->streams) || h->drain_ms || h->idle_ms);
    if (want && !h->ticking) {
        struct timeval one = {1, 0};
        event_add(&h->tick, &one);
    } else if (!want && h->ticking) {
        event_del(&h->tick);
    }
    h->ticking = want;
}

/* Make frames and write them, as long as the socket takes them.  MOXY_OK,
 * or MOXY_ERROR: h closed. */
static int h2_send(h2_conn_t *h)
{
    if (h->dead) return MOXY_ERROR;
    if (!h->out && !(h->out = moxy_worker_buf_get(h->w))) {
        h2_conn_close(h, "out of memory");
        return MOXY_ERROR;
    }
    h->busy++;
    size_t left;
    const char *why;
    if (moxy_h2_send(h->ng, &h->conn, h->out, &left, &why) != MOXY_OK) {
        h2_conn_close(h, why);
    } else if (left > 0) {
        if (!h->writing) event_add(&h->wev, h->w->g->ctv_client_send);
        h->writing = 1;
    } else if (h->writing) {
        event_del(&h->wev);
        h->writing = 0;
    }
    if (!h->dead && !nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng) &&
        evbuffer_get_length(h->out) == 0)
        h2_conn_close(h, NULL); /* a GOAWAY went and no stream is left */
    if (!h->dead) {
        if (LIST_EMPTY(&h->streams) && evbuffer_get_length(h->out) == 0 && !h->flush_queued) {
            /* idle: its buffer goes back to the worker; after a second of
             * it, nghttp2's big blocks go to the kernel (h2_tick_cb): an
             * idle connection costs its struct and the rest of the session */
            moxy_worker_buf_put(h->w, h->out);
            h->out = NULL;
            if (!h->mem_idle && !h->idle_ms) h->idle_ms = moxy_mono_ms();
        } else {
            h->idle_ms = 0;
        }
        h2_want_read(h);
        h2_want_tick(h);
    }
    int rc = h->dead ? MOXY_ERROR : MOXY_OK;
    h2_conn_release(h);
    return rc;
}

int moxy_h2_send(nghttp2_session *ng, moxy_conn_t *conn, struct evbuffer *out, size_t *left, const char **why)
{
    for (;;) {
        int rv = nghttp2_session_send(ng);
        if (rv != 0) {
            *why = nghttp2_strerror(rv);
            return MOXY_ERROR;
        }
        size_t n = evbuffer_get_length(out);
        while (n > 0) {
            ssize_t w = moxy_conn_write(conn, out);
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;
            if (w < 0) {
                *why = strerror(errno);
                return MOXY_ERROR;
            }
            if (w == 0) break;
            n = evbuffer_get_length(out);
        }
        *left = n;
        /* nghttp2 stops at the high watermark: when the socket took it all, go on */
        if (n > 0 || !nghttp2_session_want_write(ng)) return MOXY_OK;
    }
}

void h2_conn_flush_later(h2_conn_t *h)
{
    if (h->dead || h->flush_queued) return;
    h->flush_queued = 1;
    event_active(&h->flush_ev, EV_WRITE, 1);
}

static void h2_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    h2_conn_t *h = arg;
    h->flush_queued = 0;
    h2_send(h);
}

/* Feed n bytes at p to nghttp2.  MOXY_ERROR: h is closing. */
static int h2_recv(h2_conn_t *h, const uint8_t *p, size_t n)
{
    ssize_t rv = nghttp2_session_mem_recv(h->ng, p, n);
    if (rv >= 0) return h->goaway && !nghttp2_session_want_read(h->ng) ? MOXY_ERROR : MOXY_OK;
    if (rv == NGHTTP2_ERR_CALLBACK_FAILURE && h->goaway) return MOXY_ERROR; /* a budget spent: GOAWAY queued */
    if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) {
        /* queued answers it does not read, or a head that never ends (CVE-2024-27316) */
        h2_calm(h, rv == NGHTTP2_ERR_FLOODED ? "unread answers to control frames"
                                             : "CONTINUATION frames (http2.max_continuations)",
                rv == NGHTTP2_ERR_FLOODED ? 1000 : h->w->g->conf->http2.max_continuations);
        return MOXY_ERROR;
    }
    if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC)
        moxy_log(MOXY_LOG_INFO, NULL, "client %s: not an HTTP/2 connection preface", h->addr.ip);
    else
        moxy_log(MOXY_LOG_INFO, NULL, "client %s: HTTP/2: %s", h->addr.ip, nghttp2_strerror((int)rv));
    /* nghttp2 queued its GOAWAY for a protocol error; one more does nothing */
    nghttp2_session_terminate_session(h->ng, rv == NGHTTP2_ERR_HEADER_COMP ? NGHTTP2_COMPRESSION_ERROR
                                                                           : NGHTTP2_PROTOCOL_ERROR);
    h->goaway = 1;
    return MOXY_ERROR;
}

static void h2_read(h2_conn_t *h, short what)
{
    if (what & EV_TIMEOUT) {
        /* idle past timeouts.keepalive: a GOAWAY says which streams were seen */
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h->goaway = 1;
        h2_send(h);
        if (!h->dead) h2_conn_close(h, "idle");
        return;
    }
    uint8_t buf[MOXY_READ_CHUNK];
    for (int i = 0; i < 4 && !h->dead; i++) { /* a few reads per event: others' turn comes */
        ssize_t n = moxy_conn_recv(&h->conn, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            n = 0;
        }
        if (n == 0) {
            h2_conn_close(h, "client closed");
            return;
        }
        h->in_io = 1;
        int rc = h2_recv(h, buf, (size_t)n);
        h->in_io = 0;
        if (rc != MOXY_OK) {
            h2_send(h); /* what nghttp2 queued (GOAWAY) goes, then h closes */
            if (!h->dead) h2_conn_close(h, NULL);
            return;
        }
        if ((size_t)n < sizeof(buf) && !moxy_conn_pending(&h->conn)) break;
        if (h->out && evbuffer_get_length(h->out) > moxy_high_water()) break;
    }
    h2_send(h);
}

static void h2_read_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    h2_conn_t *h = arg;
    h->busy++;
    h2_read(h, what);
    h2_conn_release(h);
}

static void h2_write_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    h2_conn_t *h = arg;
    if (what & EV_TIMEOUT) {
        moxy_log(MOXY_LOG_INFO, NULL, "client %s: HTTP/2 send timed out", h->addr.ip);
        h2_conn_close(h, NULL);
        return;
    }
    h2_send(h);
}

static void h2_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    h2_conn_t *h = arg;
    h->ticking = 0;
    h->busy++;
    long long now = moxy_mono_ms();
    if (h->drain_ms && now >= h->drain_ms && !h->goaway) {
        /* the grace for streams already on their way is over: the final GOAWAY */
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h->goaway = 1;
    }
    h2_stream_tick(h, now);
    if (h->idle_ms && now - h->idle_ms >= 1000) {
        h2_idle_pages(h);
        h->idle_ms = 0;
    }
    h2_send(h);
    h2_conn_release(h);
}

/* --- what the worker sees (moxy_session_ops_t) --- */

/* Drain: a GOAWAY that announces the close (the last stream id 2^31-1,
 * RFC 9113 6.8), the final one after MOXY_DRAIN_IDLE_GRACE_MS for streams
 * already on their way; streams in flight finish, then h closes. */
static void session_drain(moxy_session_t *ss)
{
    h2_conn_t *h = (h2_conn_t *)ss;
    if (h->dead || h->drain_ms) return;
    h->drain_ms = moxy_mono_ms() + MOXY_DRAIN_IDLE_GRACE_MS;
    nghttp2_submit_shutdown_notice(h->ng);
    h2_conn_flush_later(h);
    h2_want_tick(h);
}

static void session_close(moxy_session_t *ss)
{
    h2_conn_close((h2_conn_t *)ss, "worker stops");
}

static void session_cut_gen(moxy_session_t *ss, const moxy_wgen_t *g)
{
    h2_conn_t *h = (h2_conn_t *)ss;
    h->busy++;
    h2_streams_cut_gen(h, g);
    h2_conn_flush_later(h);
    h2_conn_release(h);
}

static const moxy_session_ops_t h2_session_ops = {
    .drain = session_drain,
    .close = session_close,
    .cut_gen = session_cut_gen,
};

int moxy_h2_preface_match(struct evbuffer *in)
{
    size_t n = MOXY_MIN(evbuffer_get_length(in), (size_t)MOXY_H2_PREFACE_LEN);
    const unsigned char *p = evbuffer_pullup(in, (ssize_t)n);
    if (n && memcmp(p, MOXY_H2_PREFACE, n) != 0) return -1;
    return (int)n;
}

/* --- nghttp2's memory --- */

/* Most of an idle connection's memory would be two blocks nghttp2 makes
 * with the session and keeps for its life: the 16 KiB output frame
 * buffer, which only holds the frame being written, and the table of
 * streams (4 KiB), all zero while there is no stream.  They are the two
 * allocations of 4 KiB or more made with the session (the table zeroed
 * with calloc, the buffer by realloc); both are made page-aligned, so that
 * while the connection is idle their pages go back to the kernel
 * (h2_idle_pages): nghttp2 writes each frame from the start of the buffer,
 * and a table that is all zero reads the same from fresh zero pages. */
static void *h2_block(h2_conn_t *h, size_t n, int zeroed)
{
    void **slot = zeroed ? &h->map_buf : &h->frame_buf;
    if (!h->mem_making || *slot || n < (zeroed ? 4096 : 16384)) return zeroed ? calloc(1, n) : malloc(n);
    size_t len = (n + 4095) & ~(size_t)4095;
    void *p = aligned_alloc(4096, len);
    if (!p) return NULL;
    if (zeroed) memset(p, 0, len);
    *slot = p;
    if (zeroed) h->map_len = len;
    else h->frame_len = len;
    return p;
}

/* p is let go of: no longer one of the two blocks. */
static void h2_unblock(h2_conn_t *h, const void *p)
{
    if (p && p == h->frame_buf) h->frame_buf = NULL;
    if (p && p == h->map_buf) h->map_buf = NULL;
}

static void *h2_malloc(size_t n, void *arg)
{
    return h2_block(arg, n, 0);
}

static void h2_free_mem(void *p, void *arg)
{
    h2_unblock(arg, p);
    free(p);
}

static void *h2_calloc(size_t n, size_t size, void *arg)
{
    if (size && n > SIZE_MAX / size) return NULL;
    return h2_block(arg, n * size, 1);
}

/* (nghttp2 makes its buffers with realloc(NULL, n)) */
static void *h2_realloc(void *p, size_t n, void *arg)
{
    if (!p) return h2_block(arg, n, 0);
    h2_unblock(arg, p);
    return realloc(p, n);
}

/* 1 when the n bytes at p are all zero. */
static int all_zero(const void *p, size_t n)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i++)
        if (w[i]) return 0;
    return 1;
}

/* h has been idle for a second (no stream, nothing queued or
 * half-written): the two blocks' pages go back to the kernel, once per
 * idle spell (a frame made ends it).  Not at once: madvise and the page
 * faults after it would cost a client that sends one request at a time
 * more than half its speed. */
static void h2_idle_pages(h2_conn_t *h)
{
    if (h->mem_idle || nghttp2_session_want_write(h->ng)) return;
    h->mem_idle = 1;
    if (h->frame_buf) madvise(h->frame_buf, h->frame_len, MADV_DONTNEED);
    if (h->map_buf && all_zero(h->map_buf, h->map_len)) madvise(h->map_buf, h->map_len, MADV_DONTNEED);
}

/* The session of a new connection, with moxy's settings: streams, window,
 * HPACK table, head size; and nghttp2's own bounds on resets and
 * CONTINUATION frames. */
static int h2_session_new(h2_conn_t *h, const moxy_conf_t *conf)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) return MOXY_ERROR;
    nghttp2_option_set_no_auto_window_update(opt, 1); /* a stream's window opens as its body is passed on */
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_continuations(opt, (size_t)conf->http2.max_continuations);
    /* moxy's own reset budget answers first (ENHANCE_YOUR_CALM); nghttp2's is the backstop */
    nghttp2_option_set_stream_reset_rate_limit(opt, (uint64_t)conf->http2.max_resets * 2,
                                               (uint64_t)conf->http2.reset_rate * 2);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    nghttp2_mem mem = {h, h2_malloc, h2_free_mem, h2_calloc, h2_realloc};
    h->mem_making = 1;
    int rv = nghttp2_session_server_new3(&h->ng, h2_callbacks, h, opt, &mem);
    h->mem_making = 0;
    nghttp2_option_del(opt);
    if (rv != 0) return MOXY_ERROR;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)conf->http2.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)conf->http2.stream_window},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, (uint32_t)conf->http2.header_table_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)conf->limits.header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, MOXY_ARRAY_LEN(iv)) != 0) return MOXY_ERROR;
    /* the connection's window: what all streams may have in flight (each
     * bounded by its own) */
    int32_t conn_window = conf->http2.stream_window * MOXY_MIN(conf->http2.max_concurrent_streams, 16);
    if (conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, conn_window);
    return MOXY_OK;
}

int moxy_h2_accept(moxy_worker_t *w, moxy_conn_t *conn, const moxy_h2_from_t *from, struct evbuffer *in)
{
    pthread_once(&h2_once, h2_init);
    h2_conn_t *h = h2_callbacks ? calloc(1, sizeof(*h)) : NULL;
    if (!h) {
        moxy_conn_slot_t s = from->climit;
        moxy_conn_limit_leave(&s);
        moxy_conn_close(conn);
        return MOXY_ERROR;
    }
    h->s.ops = &h2_session_ops;
    h->climit = from->climit;
    h->s.protocol = MOXY_PROTO_HTTP2;
    h->s.listen_index = from->listen_index;
    h->w = w;
    h->conn = *conn;
    h->addr = *from->addr;
    h->trusted = from->trusted;
    h->local_peer = from->local_peer;
    h->https = conn->t != &moxy_transport_plain;
    LIST_INIT(&h->streams);
    LIST_INSERT_HEAD(&w->sessions, &h->s, link);
    MOXY_STAT_ADD(w->nconns, 1); /* before HTTP/1's client, which counted it, goes */
    MOXY_STAT_ADD(w->stats.h2_conns, 1);
    MOXY_STAT_ADD(w->stats.h2_conns_total, 1);
    const moxy_conf_t *conf = w->g->conf;
    h->tokens = conf->http2.max_control_frames;
    h->resets = conf->http2.max_resets;
    h->tokens_ms = h->resets_ms = moxy_mono_ms();
    event_assign(&h->rev, w->base, h->conn.fd, EV_READ | EV_PERSIST, h2_read_cb, h);
    event_assign(&h->wev, w->base, h->conn.fd, EV_WRITE | EV_PERSIST, h2_write_cb, h);
    event_assign(&h->flush_ev, w->base, -1, 0, h2_flush_cb, h);
    event_assign(&h->tick, w->base, -1, 0, h2_tick_cb, h);
    if (h2_session_new(h, conf) != MOXY_OK) {
        h2_conn_close(h, "out of memory");
        return MOXY_ERROR;
    }
    h->busy++;
    /* what HTTP/1 read already: the preface, and perhaps frames after it */
    size_t n = evbuffer_get_length(in);
    int rc = MOXY_OK;
    if (n) {
        const uint8_t *p = evbuffer_pullup(in, (ssize_t)n);
        h->in_io = 1;
        rc = p ? h2_recv(h, p, n) : MOXY_ERROR;
        h->in_io = 0;
        evbuffer_drain(in, n);
    }
    h2_send(h);
    if (rc != MOXY_OK && !h->dead) h2_conn_close(h, NULL);
    h2_conn_release(h);
    return MOXY_OK;
}
