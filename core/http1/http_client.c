/*
 * http_client.c -- the client side of the proxy: accept, parse each request
 * head (llhttp, strict, and moxy's checks: request_head.c), run the hooks,
 * stream the request body to the origin connection, write the response, keep
 * the connection alive.
 *
 * One request at a time per connection: pipelined requests wait in c->in
 * until the current response is queued, so answers go out in order.
 *
 * Request bodies with Content-Length bypass llhttp: the head parser is paused
 * at the end of the headers and the body bytes are moved (not copied) from
 * the client's input buffer to the origin's output buffer.  Chunked bodies go
 * through llhttp, which checks the framing, and are re-chunked toward the
 * origin: what the origin sees is always framed by moxy, never passed through.
 */
#include "http1/http1.h"
#include "base/headers.h"
#include "http/http.h"
#include "net/io.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "base/addr.h"
#include "http/realip.h"
#include "http/request.h"
#include "net/proxy_protocol.h"
#include "net/tls.h"
#include "http/worker.h"
#include "http2/http2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void client_read_cb(evutil_socket_t fd, short what, void *arg);
static void client_write_cb(evutil_socket_t fd, short what, void *arg);

/* Wait for c's socket to take more (timeout tv, or none): its write event
 * is made on first use.  MOXY_ERROR: out of memory. */
static int client_want_write(moxy_client_t *c, const struct timeval *tv)
{
    if (!c->wev && !(c->wev = event_new(c->w->base, c->conn.fd, EV_WRITE | EV_PERSIST, client_write_cb, c)))
        return MOXY_ERROR;
    event_add(c->wev, tv);
    c->writing = 1;
    return MOXY_OK;
}

/* Stop waiting to write (the event is kept for the next wait). */
static void client_stop_write(moxy_client_t *c)
{
    if (!c->writing) return;
    event_del(c->wev);
    c->writing = 0;
}
static void client_finish_request(moxy_client_t *c);
static void request_log(moxy_client_t *c);
static void request_hooks_done(moxy_req_t *r, int rc);
static const moxy_stream_ops_t stream_ops;
static void stream_response_done(void *ctx, moxy_req_t *r);
static int client_ensure_buffers(moxy_client_t *c);

/* --- reading control --- */

static void client_read_timeout(moxy_client_t *c, const struct timeval *tv)
{
    event_add(&c->rev, tv);
    c->reading = 1;
}

void moxy_h1_stop_read(moxy_client_t *c)
{
    if (c->reading) {
        event_del(&c->rev);
        c->reading = 0;
    }
}

/* (Re)arm the read event with the timeout that fits where the connection is. */
void moxy_h1_want_read(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    moxy_wgen_t *g = r ? r->g : c->w->g; /* the timeouts of the request's generation */
    if (c->state == MOXY_C_LINGER) return; /* its own timer */
    if (c->eof || c->state == MOXY_C_CLOSING) {
        moxy_h1_stop_read(c);
        return;
    }
    if (c->state == MOXY_C_HEAD) {
        int partial = r && r->head_bytes > 0;
        if (partial) client_read_timeout(c, &g->tv_client_header);
        else client_read_timeout(c, g->ctv_keepalive);
    } else if (c->state == MOXY_C_TUNNEL) {
        client_read_timeout(c, g->ctv_upstream);
    } else if (r && !r->body_done) {
        client_read_timeout(c, g->ctv_client_body);
    } else {
        /* Body done: read only to notice pipelined requests or a close,
         * and not more than one head's worth.  A timeout left armed from
         * before is harmless (client_timeout ignores this state), and
         * not re-arming saves a timer operation per request. */
        if (evbuffer_get_length(c->in) > g->conf->limits.header_bytes) moxy_h1_stop_read(c);
        else if (!c->reading) client_read_timeout(c, NULL);
    }
    /* bytes a transport (TLS) holds already raise no socket event */
    if (c->reading && moxy_conn_pending(&c->conn)) event_active(&c->rev, EV_READ, 1);
}

/* --- request life --- */

/* A new request of c on generation g, which it holds,
 * having come in on g's listener listen_index; c's current one.  NULL: out
 * of memory. */
static moxy_req_t *request_new(moxy_client_t *c, moxy_wgen_t *g, int listen_index)
{
    moxy_req_t *r = moxy_req_new(c->w, g, listen_index);
    if (!r) return NULL;
    r->addr = &c->addr;
    moxy_req_keep_tls(r, &c->conn);
    r->stream = &stream_ops;
    r->stream_ctx = c;
    c->req = r;
    llhttp_init(&r->parser, HTTP_REQUEST, moxy_h1_request_settings());
    r->parser.data = c;
    return r;
}

static moxy_req_t *client_new_request(moxy_client_t *c)
{
    if (c->s.listen_index < 0) return NULL; /* a reload removed its listener */
    return request_new(c, c->w->g, c->s.listen_index);
}

/* --- what the worker sees of it (moxy_session_ops_t) --- */

static void session_drain(moxy_session_t *s)
{
    moxy_client_drain((moxy_client_t *)s);
}

static void session_close(moxy_session_t *s)
{
    moxy_client_close((moxy_client_t *)s);
}

static void session_cut_gen(moxy_session_t *s, const moxy_wgen_t *g)
{
    moxy_client_t *c = (moxy_client_t *)s;
    if ((c->req && c->req->g == g) || (c->hello_task && moxy_lua_task_wgen(c->hello_task) == g))
        moxy_client_close(c);
}

static const moxy_session_ops_t h1_session = {
    .drain = session_drain,
    .close = session_close,
    .cut_gen = session_cut_gen,
};

void moxy_client_accept(moxy_worker_t *w, int fd, const struct sockaddr *sa, int listen_index)
{
    moxy_conn_t conn;
    moxy_conn_plain(&conn, fd);
    moxy_client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        moxy_conn_close(&conn);
        return;
    }
    c->s.ops = &h1_session;
    c->s.protocol = MOXY_PROTO_HTTP1;
    c->s.listen_index = listen_index;
    c->w = w;
    c->conn = conn;
    c->read_size = MOXY_IO_READ_MIN;
    const moxy_conf_t *conf = w->g->conf;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s->sin_addr, c->addr.sock_ip, sizeof(c->addr.sock_ip));
        c->addr.sock_port = ntohs(s->sin_port);
        c->local_peer = (ntohl(s->sin_addr.s_addr) >> 24) == 127;
        if (conf->ntrusted)
            c->trusted = moxy_cidr_match(conf->trusted, conf->ntrusted, 4,
                                         (const uint8_t *)&s->sin_addr);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, c->addr.sock_ip, sizeof(c->addr.sock_ip));
        c->addr.sock_port = ntohs(s->sin6_port);
        c->local_peer = IN6_IS_ADDR_LOOPBACK(&s->sin6_addr) ||
                        (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr) && s->sin6_addr.s6_addr[12] == 127);
        if (conf->ntrusted)
            c->trusted = moxy_cidr_match(conf->trusted, conf->ntrusted, 6, s->sin6_addr.s6_addr);
    } else {
        strcpy(c->addr.sock_ip, "unix");
        c->local_peer = 1;
    }
    memcpy(c->addr.ip, c->addr.sock_ip, sizeof(c->addr.ip));
    c->addr.port = c->addr.sock_port;
    c->proxy_wait = conf->listens[listen_index].proxy_protocol != 0;
    /* limits.connections_per_client: refused at once, before any TLS or
     * HTTP byte (a PROXY listener counts the header's source, once read) */
    int family = sa->sa_family == AF_INET ? 4 : sa->sa_family == AF_INET6 ? 6 : 0;
    const uint8_t *a = family == 4 ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                       : family == 6 ? ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr : NULL;
    if (!c->proxy_wait && family && moxy_worker_admit(w, &c->climit, family, a, c->trusted) != MOXY_OK) {
        moxy_conn_close(&c->conn);
        free(c);
        return;
    }
    if (w->listeners[listen_index].tls) {
        c->tls = moxy_tls_server_hold(w->listeners[listen_index].tls);
        c->tls_wait = 1;
    } else {
        c->h2_maybe = conf->listens[listen_index].http2 != 0;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    event_assign(&c->rev, w->base, fd, EV_READ | EV_PERSIST, client_read_cb, c);
    LIST_INSERT_HEAD(&w->sessions, &c->s, link);
    MOXY_STAT_ADD(w->nconns, 1);
    /* The first request gets the client_header timeout from accept on. */
    struct timeval now;
    event_base_gettimeofday_cached(w->base, &now);
    evutil_timeradd(&now, &w->g->tv_client_header, &c->head_deadline);
    client_read_timeout(c, &w->g->tv_client_header);
}

static void client_free(moxy_client_t *c)
{
    moxy_worker_t *w = c->w;
    if (c->in) moxy_worker_buf_put(w, c->in);
    if (c->out) moxy_worker_buf_put(w, c->out);
    if (c->wev) event_free(c->wev);
    if (c->tls) moxy_tls_server_free(c->tls);
    moxy_conn_limit_leave(&c->climit);
    LIST_REMOVE(&c->s, link);
    free(c);
    moxy_worker_conn_closed(w);
}

void moxy_client_hold(moxy_client_t *c)
{
    c->busy++;
}

void moxy_client_release(moxy_client_t *c)
{
    if (--c->busy == 0 && c->dead) client_free(c);
}

/* c's request is over: it leaves c, which goes on (or closes), and
 * ends on its own (moxy_req_finish: on_log hooks, its log line). */
static void request_log(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    c->req = NULL;
    r->stream_ctx = NULL;
    moxy_req_finish(r);
}

void moxy_client_close(moxy_client_t *c)
{
    if (c->dead) return;
    c->dead = 1;
    moxy_req_t *r = c->req;
    if (r) {
        c->req = NULL;
        r->stream_ctx = NULL; /* its client is gone: no retry, nothing more to send */
        if (r->method_name) {
            moxy_req_abort(r, "client closed");
        } else { /* not even a request line: nothing to log */
            moxy_req_end(r);
            moxy_req_release(r);
        }
    }
    if (c->hello_task) moxy_lua_hello_drop(c->hello_task);
    event_del(&c->rev);
    client_stop_write(c);
    moxy_conn_close(&c->conn);
    c->conn.fd = -1;
    if (c->busy == 0) client_free(c);
}

void moxy_client_drain(moxy_client_t *c)
{
    c->close_after = 1;
    if (c->req && !c->req->resp_head_sent) c->req->keepalive = 0; /* its response says close */
    if (c->state == MOXY_C_HEAD && (!c->req || c->req->head_bytes == 0) &&
        (!c->out || evbuffer_get_length(c->out) == 0) && !c->reading) {
        moxy_client_close(c); /* not even reading: nothing can be on its way */
        return;
    }
    if (c->state == MOXY_C_HEAD && (!c->req || c->req->head_bytes == 0)) {
        /* Idle between requests: the client may have sent its next request
         * already (a busy keep-alive client always has).  Closing now would
         * lose it; it is served instead, with Connection: close, if it
         * comes within the grace, and the connection closes after. */
        static const struct timeval grace = {MOXY_DRAIN_IDLE_GRACE_MS / 1000, (MOXY_DRAIN_IDLE_GRACE_MS % 1000) * 1000};
        client_read_timeout(c, &grace);
    }
}

/* Lingering: wait for more of what the client sends, until the linger
 * deadline (c->head_deadline), at most MOXY_LINGER_IDLE_MS at a time. */
static void linger_wait(moxy_client_t *c)
{
    struct timeval now, left, idle = {MOXY_LINGER_IDLE_MS / 1000, (MOXY_LINGER_IDLE_MS % 1000) * 1000};
    event_base_gettimeofday_cached(c->w->base, &now);
    if (!evutil_timercmp(&now, &c->head_deadline, <)) {
        moxy_client_close(c);
        return;
    }
    evutil_timersub(&c->head_deadline, &now, &left);
    client_read_timeout(c, evutil_timercmp(&left, &idle, <) ? &left : &idle);
}

/* The answer is out and the connection closes, but the client may still be
 * sending (a body not read, a pipelined request): a close now would make
 * the kernel answer those bytes with a reset, which can destroy the answer
 * before the client reads it.  Half-close instead, read and drop what comes
 * for at most timeouts.linger, MOXY_LINGER_MAX_BYTES, or until a second
 * without any, then close (nginx's lingering close). */
static void client_linger(moxy_client_t *c)
{
    double t = c->w->g->conf->timeouts.linger;
    c->linger = 0;
    if (t <= 0 || c->eof || !c->in || moxy_conn_shutdown(&c->conn) != 0) {
        moxy_client_close(c);
        return;
    }
    c->state = MOXY_C_LINGER;
    c->linger_bytes = evbuffer_get_length(c->in);
    evbuffer_drain(c->in, c->linger_bytes);
    struct timeval now, tv = moxy_timeval(t);
    event_base_gettimeofday_cached(c->w->base, &now);
    evutil_timeradd(&now, &tv, &c->head_deadline);
    moxy_h1_stop_read(c);
    linger_wait(c);
}

/* A lingering connection can be read (or its wait ended). */
static void linger_read(moxy_client_t *c, short what)
{
    if (what & EV_TIMEOUT) {
        moxy_client_close(c);
        return;
    }
    ssize_t n = moxy_conn_read(&c->conn, c->in, MOXY_READ_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { /* the client closed too (or reset): done */
        moxy_client_close(c);
        return;
    }
    evbuffer_drain(c->in, (size_t)n);
    c->linger_bytes += (uint64_t)n;
    if (c->linger_bytes > MOXY_LINGER_MAX_BYTES) {
        moxy_client_close(c);
        return;
    }
    moxy_h1_stop_read(c);
    linger_wait(c);
}

/* The output is flushed and the connection is to close: close, or linger. */
static void client_flushed_close(moxy_client_t *c)
{
    if (c->linger) client_linger(c);
    else moxy_client_close(c);
}

/* Close once the output is flushed; no more reading. */
static void client_closing(moxy_client_t *c)
{
    c->state = MOXY_C_CLOSING;
    moxy_h1_stop_read(c);
    if (!c->out || evbuffer_get_length(c->out) == 0) {
        client_flushed_close(c);
        return;
    }
    moxy_client_send(c);
}

/* Answer a request that could not be parsed or was refused before its
 * hooks ran, then close: nothing after a bad head can be trusted. */
void moxy_h1_reject(moxy_client_t *c, int status, const char *why)
{
    moxy_req_t *r = c->req;
    moxy_h1_stop_read(c);
    r->keepalive = 0;
    c->close_after = 1;
    moxy_resp_error(r, status, why);
}

/* An idle keep-alive connection gives its two (empty) buffers back, so that
 * it costs its struct and little more (nginx does the same); they go to the
 * worker's spares (moxy_worker_buf_put) for the next request. */
static int client_ensure_buffers(moxy_client_t *c)
{
    if (!c->in && !(c->in = moxy_worker_buf_get(c->w))) return MOXY_ERROR;
    if (!c->out && !(c->out = moxy_worker_buf_get(c->w))) return MOXY_ERROR;
    return MOXY_OK;
}

/* --- writing --- */

int moxy_client_send(moxy_client_t *c)
{
    if (c->dead) return MOXY_ERROR;
    if (!c->out) return MOXY_OK;
    size_t left = evbuffer_get_length(c->out);
    while (left > 0) {
        ssize_t n = moxy_conn_write(&c->conn, c->out);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            moxy_log(MOXY_LOG_DEBUG, c->req ? c->req->id : NULL, "client %s: write: %s", c->addr.ip,
                     strerror(errno));
            moxy_client_close(c);
            return MOXY_ERROR;
        }
        if (n == 0) break;
        left = evbuffer_get_length(c->out);
    }
    if (left > 0) {
        if (!c->writing && client_want_write(c, c->req ? c->req->g->ctv_client_send : c->w->g->ctv_client_send) !=
                               MOXY_OK) {
            moxy_client_close(c);
            return MOXY_ERROR;
        }
    } else {
        client_stop_write(c);
    }
    if (c->state == MOXY_C_CLOSING && left == 0) {
        client_flushed_close(c);
        return MOXY_ERROR;
    }
    moxy_req_t *r = c->req;
    if (r && r->up && left < moxy_low_water()) r->origin->resume_read(r);
    return MOXY_OK;
}

static void client_write_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_client_t *c = arg;
    MOXY_UNUSED(fd);
    if (what & EV_TIMEOUT) {
        moxy_log(MOXY_LOG_INFO, c->req ? c->req->id : NULL, "client %s: send timed out", c->addr.ip);
        if (c->req && !c->req->error) c->req->error = "client send timeout";
        moxy_client_close(c);
        return;
    }
    moxy_client_hold(c);
    if (c->tls_wait) moxy_h1_process(c); /* the handshake wanted to write */
    else moxy_client_send(c);
    moxy_client_release(c);
}

/* --- starting a request --- */

static void client_start_request(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    moxy_worker_t *w = c->w;
    const moxy_conf_t *conf = r->g->conf;

    /* keep-alive as the client asked (RFC 9112 9.3) */
    int conn_close = 0, conn_keep = 0;
    for (uint32_t i = 0; i < r->headers.n; i++) {
        moxy_header_t *h = &r->headers.h[i];
        if (h->kind & MOXY_HK_CONNECTION) {
            conn_close |= moxy_list_has_token(h->value, h->value_len, "close", 5);
            conn_keep |= moxy_list_has_token(h->value, h->value_len, "keep-alive", 10);
        }
    }
    r->keepalive = r->http_minor >= 1 ? !conn_close : (conn_keep && !conn_close);
    if (w->draining || c->close_after) r->keepalive = 0;

    /* the real client, before X-Forwarded-For is rewritten (and for a 413's log line) */
    if (c->trusted) moxy_realip_resolve(r);
    /* the fields the client's Connection names are for this hop only; gone
     * before moxy adds its own, which the client cannot name away */
    moxy_headers_drop_connection_named(&r->headers, MOXY_HK_HOST | MOXY_HK_CL);
    moxy_req_set_id(r);
    c->state = MOXY_C_ACTIVE;
    /* idempotent methods may go to another peer after a failure (RFC 9110 9.2.2) */
    r->retryable = r->method == HTTP_GET || r->method == HTTP_HEAD || r->method == HTTP_OPTIONS ||
                   r->method == HTTP_PUT || r->method == HTTP_DELETE || r->method == HTTP_TRACE;
    if (r->body_kind == MOXY_BODY_NONE) r->body_done = 1;

    if (r->body_kind == MOXY_BODY_LENGTH && r->body_left > conf->limits.body_bytes) {
        moxy_h1_reject(c, 413, "request body too large");
        return;
    }
    int early = moxy_req_early_check(r);
    if (early != 0) {
        if (early > 0) moxy_req_after_request_hooks(r, MOXY_OK);
        return;
    }
    if (moxy_req_add_forwarding(r) != MOXY_OK) {
        moxy_h1_reject(c, 500, "out of memory");
        return;
    }

    int rc = moxy_lua_run(r, MOXY_PHASE_REQUEST, request_hooks_done);
    if (rc == MOXY_AGAIN) {
        /* A hook yielded (moxy.sleep, ...): the request waits.  Its body
         * stays in the socket until the hooks are done; without a body we
         * keep reading, to notice a client that leaves (DESIGN: cancel the
         * armed events when the client goes away). */
        if (!r->body_done && !r->buffering) moxy_h1_stop_read(c);
        return;
    }
    moxy_req_after_request_hooks(r, rc);
}

/* HTTP/1's moxy_stream_ops_t: the connection is ctx. */
static void stream_hold(void *ctx)
{
    moxy_client_hold(ctx);
}

static void stream_release(void *ctx)
{
    moxy_client_release(ctx);
}

static void stream_read_on(void *ctx, const moxy_req_t *r)
{
    moxy_client_t *c = ctx;
    if (c->dead || c->req != r || c->state != MOXY_C_ACTIVE) return;
    moxy_h1_want_read(c);
    if (evbuffer_get_length(c->in) > 0) moxy_h1_process(c);
}

static void stream_resume_read(void *ctx)
{
    moxy_h1_resume_read(ctx);
}

static int stream_send_head(void *ctx, moxy_req_t *r)
{
    moxy_client_t *c = ctx;
    return moxy_h1_write_head(c->out, r);
}

static void stream_send_interim(void *ctx, moxy_req_t *r, int status, const moxy_headers_t *h)
{
    moxy_client_t *c = ctx;
    moxy_h1_write_interim(c->out, r, status, h);
}

static void stream_send_body(void *ctx, moxy_req_t *r, struct evbuffer *from, size_t n)
{
    moxy_client_t *c = ctx;
    moxy_h1_write_body(c->out, r, from, n);
}

static void stream_send_data(void *ctx, moxy_req_t *r, const void *data, size_t n)
{
    moxy_client_t *c = ctx;
    moxy_h1_write_data(c->out, r, data, n);
}

static int stream_send_ref(void *ctx, moxy_req_t *r, const void *data, size_t n, moxy_ref_release_fn release,
                           void *arg)
{
    moxy_client_t *c = ctx;
    return moxy_h1_write_ref(c->out, r, data, n, release, arg);
}

static int stream_send_file(void *ctx, moxy_req_t *r, struct evbuffer_file_segment *seg, uint64_t off, uint64_t n)
{
    moxy_client_t *c = ctx;
    return moxy_h1_write_file(c->out, r, seg, off, n);
}

static int stream_read_body(void *ctx, moxy_req_t *r, uint64_t max)
{
    return moxy_h1_body_read_whole(ctx, r, max);
}

static int stream_body_check(void *ctx, moxy_req_t *r)
{
    return moxy_h1_body_check(ctx, r);
}

static int stream_flush(void *ctx)
{
    return moxy_client_send(ctx);
}

static int stream_backlogged(void *ctx)
{
    moxy_client_t *c = ctx;
    return c->out && evbuffer_get_length(c->out) > moxy_high_water();
}

static int stream_sendfile(void *ctx)
{
    moxy_client_t *c = ctx;
    if (c->conn.fd < 0 || !moxy_conn_sendfile(&c->conn)) return 0;
    return MOXY_STREAM_SENDFILE | (c->local_peer ? MOXY_STREAM_LOCAL_PEER : 0);
}

static void stream_abort(void *ctx)
{
    moxy_client_close(ctx);
}

static int stream_tunnel(void *ctx, moxy_req_t *r)
{
    moxy_client_t *c = ctx;
    MOXY_UNUSED(r);
    moxy_client_tunnel(c);
    return c->dead ? MOXY_DONE : MOXY_OK;
}

static int stream_tunnel_relay(void *ctx, struct evbuffer *from, int eof)
{
    moxy_client_t *c = ctx;
    if (evbuffer_get_length(from)) evbuffer_add_buffer(c->out, from);
    if (eof) moxy_conn_shutdown(&c->conn);
    if (moxy_client_send(c) != MOXY_OK) return MOXY_DONE;
    if (eof && (c->eof || evbuffer_get_length(c->out) == 0)) {
        moxy_client_close(c);
        return MOXY_DONE;
    }
    return evbuffer_get_length(c->out) > moxy_high_water() ? MOXY_AGAIN : MOXY_OK;
}

static const moxy_stream_ops_t stream_ops = {
    .hold = stream_hold,
    .release = stream_release,
    .read_on = stream_read_on,
    .resume_read = stream_resume_read,
    .read_body = stream_read_body,
    .body_check = stream_body_check,
    .send_head = stream_send_head,
    .send_interim = stream_send_interim,
    .send_body = stream_send_body,
    .send_data = stream_send_data,
    .send_ref = stream_send_ref,
    .send_file = stream_send_file,
    .flush = stream_flush,
    .backlogged = stream_backlogged,
    .sendfile = stream_sendfile,
    .response_done = stream_response_done,
    .abort = stream_abort,
    .tunnel = stream_tunnel,
    .tunnel_relay = stream_tunnel_relay,
};

/* on_request's hooks that yielded are done. */
static void request_hooks_done(moxy_req_t *r, int rc)
{
    moxy_stream_ref_t s = moxy_req_stream(r);
    moxy_req_after_request_hooks(r, rc);
    moxy_stream_read_on(s, r);
}

/* --- the PROXY protocol header (listeners with proxy_protocol) --- */

/* Log why c's PROXY header failed (one line: listener, peer, why), then close. */
static void client_proxy_fail(moxy_client_t *c, int level, const char *why)
{
    moxy_log(level, NULL, "listener %s: client %s:%u: %s; closing",
             c->w->g->conf->listens[c->s.listen_index].name, c->addr.sock_ip, c->addr.sock_port, why);
    moxy_client_close(c);
}

/* Re-arm c's read event with what is left of head_deadline (set at accept):
 * the PROXY header and the TLS handshake must end within client_header of
 * the accept, and bytes that come in pieces do not restart it (a persistent
 * event's timeout starts again at each read). */
static void client_accept_deadline(moxy_client_t *c)
{
    struct timeval now, left = {0, 1};
    event_base_gettimeofday_cached(c->w->base, &now);
    if (evutil_timercmp(&now, &c->head_deadline, <)) evutil_timersub(&c->head_deadline, &now, &left);
    client_read_timeout(c, &left);
}

/* Read the PROXY header at the start of c->in.  MOXY_OK: consumed, c->addr.ip and
 * c->addr.port are its source (unless it keeps the socket's address); MOXY_AGAIN:
 * more must come (within the client_header deadline set at accept);
 * MOXY_ERROR: c is closed. */
static int client_proxy_header(moxy_client_t *c)
{
    moxy_worker_t *w = c->w;
    size_t avail = evbuffer_get_length(c->in);
    size_t n = MOXY_MIN(avail, (size_t)MOXY_PROXY_V2_HEAD);
    const uint8_t *p = evbuffer_pullup(c->in, (ssize_t)n);
    moxy_proxy_hdr_t h;
    int rc = moxy_proxy_parse(p, n, &h);
    if (rc == MOXY_AGAIN && MOXY_MIN(avail, h.len) > n) {
        /* the fixed part said how long the header is: look at all of it that
         * came (v1: up to its limit; v2: the length field's) */
        n = MOXY_MIN(avail, h.len);
        p = evbuffer_pullup(c->in, (ssize_t)n);
        rc = moxy_proxy_parse(p, n, &h);
    }
    if (rc == MOXY_ERROR) {
        char why[128];
        snprintf(why, sizeof(why), "bad PROXY protocol header (%s)", h.why);
        client_proxy_fail(c, MOXY_LOG_WARN, why);
        return MOXY_ERROR;
    }
    /* The header, then the first byte of the first request, are due within
     * client_header of the accept (head_deadline): pieces do not restart it. */
    client_accept_deadline(c);
    if (rc == MOXY_AGAIN) return MOXY_AGAIN;
    evbuffer_drain(c->in, h.len);
    c->proxy_wait = 0;
    int family = 0;
    uint8_t sock[16];
    const uint8_t *a = sock;
    if (h.family) {
        const moxy_conf_t *conf = w->g->conf;
        inet_ntop(h.family == 4 ? AF_INET : AF_INET6, h.addr, c->addr.ip, sizeof(c->addr.ip));
        c->addr.port = h.port;
        c->trusted =
            conf->ntrusted && moxy_cidr_match(conf->trusted, conf->ntrusted, h.family, h.addr);
        family = h.family;
        a = h.addr;
    } else if (inet_pton(AF_INET, c->addr.sock_ip, sock) == 1) {
        family = 4; /* LOCAL or UNKNOWN: the socket's address is the client */
    } else if (inet_pton(AF_INET6, c->addr.sock_ip, sock) == 1) {
        family = 6;
    }
    if (family && moxy_worker_admit(w, &c->climit, family, a, c->trusted) != MOXY_OK) {
        moxy_client_close(c);
        return MOXY_ERROR;
    }
    moxy_log(MOXY_LOG_DEBUG, NULL, "listener %s: client %s:%u: PROXY v%d, client %s:%u",
             w->g->conf->listens[c->s.listen_index].name, c->addr.sock_ip, c->addr.sock_port, h.version, c->addr.ip,
             c->addr.port);
    return MOXY_OK;
}

/* c's on_tls_hello hooks wait (parked) or are done: while they wait, c
 * reads nothing (what a client sends before an answer waits in the
 * socket) and its read event only keeps the handshake's deadline. */
static void client_hello_wait(moxy_client_t *c, int parked)
{
    struct timeval now, left = {0, 0};
    event_base_gettimeofday_cached(c->w->base, &now);
    if (evutil_timercmp(&now, &c->head_deadline, <)) evutil_timersub(&c->head_deadline, &now, &left);
    event_del(&c->rev);
    event_assign(&c->rev, c->w->base, c->conn.fd, parked ? 0 : EV_READ | EV_PERSIST, client_read_cb, c);
    client_read_timeout(c, &left);
}

/* c's parked on_tls_hello hooks are done: the handshake goes on (refused
 * when a hook failed). */
static void client_hello_done(void *owner, int rc)
{
    moxy_client_t *c = owner;
    if (rc != MOXY_OK) moxy_tls_hello_refuse(&c->conn);
    moxy_client_hold(c);
    client_hello_wait(c, 0);
    moxy_h1_process(c);
    moxy_client_release(c);
}

/* Go on with c's TLS handshake (started here, past the PROXY protocol
 * header: the bytes read after it are the handshake's).  MOXY_OK: done,
 * and what came with it is read next; MOXY_AGAIN: it waits for the
 * socket, or for on_tls_hello hooks; MOXY_ERROR: it failed and c is
 * closed. */
/* c speaks HTTP/2 from here (ALPN "h2", or the preface on a listener with
 * http2): its connection, and what was read of it, go to http2/; c goes
 * without closing it. */
static void client_to_h2(moxy_client_t *c)
{
    moxy_h2_from_t from = {.listen_index = c->s.listen_index, .addr = &c->addr, .trusted = c->trusted,
                           .local_peer = c->local_peer, .climit = c->climit};
    c->climit.held = 0; /* the place goes with the connection */
    moxy_conn_t conn = c->conn;
    moxy_req_t *r = c->req;
    if (r) { /* the preface's first bytes made a request: nothing of it is logged */
        c->req = NULL;
        moxy_req_end(r);
        moxy_req_release(r);
    }
    event_del(&c->rev);
    client_stop_write(c);
    c->reading = 0;
    c->conn.fd = -1;
    c->dead = 1;
    moxy_h2_accept(c->w, &conn, &from, c->in); /* counted in the worker's connections before c goes */
    if (c->busy == 0) client_free(c);
}

static int client_tls_step(moxy_client_t *c)
{
    if (c->hello_task) return MOXY_AGAIN;
    if (c->tls) {
        if (moxy_tls_accept(&c->conn, c->tls, c->in, moxy_lua_has(c->w->g, MOXY_PHASE_TLS_HELLO)) != MOXY_OK) {
            moxy_client_close(c);
            return MOXY_ERROR;
        }
        moxy_tls_server_free(c->tls);
        c->tls = NULL;
    }
    short want = 0;
    const char *why = NULL;
    int kind = MOXY_TLS_FAIL_OTHER;
    int rc = moxy_tls_handshake(&c->conn, &want, &why, &kind);
    if (rc == MOXY_AGAIN && want == MOXY_TLS_WANT_HELLO) {
        int hr = moxy_lua_run_hello(c->w->g, c, &c->hello_task, client_hello_done);
        if (hr == MOXY_AGAIN) {
            client_hello_wait(c, 1);
            return MOXY_AGAIN;
        }
        if (hr != MOXY_OK) moxy_tls_hello_refuse(&c->conn);
        rc = moxy_tls_handshake(&c->conn, &want, &why, &kind);
    }
    if (rc == MOXY_ERROR) {
        MOXY_STAT_ADD(c->w->stats.tls_failures[kind], 1);
        moxy_log(kind == MOXY_TLS_FAIL_IDLE ? MOXY_LOG_DEBUG : MOXY_LOG_INFO, NULL,
                 "listener %s: client %s:%u: TLS handshake failed: %s",
                 c->s.listen_index >= 0 ? c->w->g->conf->listens[c->s.listen_index].name : "-", c->addr.sock_ip,
                 c->addr.sock_port, why);
        moxy_client_close(c);
        return MOXY_ERROR;
    }
    if (rc == MOXY_AGAIN && want == EV_WRITE) {
        /* the head deadline on rev bounds it */
        if (!c->writing && client_want_write(c, NULL) != MOXY_OK) {
            moxy_client_close(c);
            return MOXY_ERROR;
        }
        client_accept_deadline(c);
        return MOXY_AGAIN;
    }
    client_stop_write(c);
    if (rc == MOXY_AGAIN) {
        client_accept_deadline(c); /* a ClientHello a byte at a time gets no more time */
        return MOXY_AGAIN;
    }
    c->tls_wait = 0;
    moxy_tls_info_t info;
    if (moxy_tls_info(&c->conn, &info)) {
        MOXY_STAT_ADD(c->w->stats.tls_handshakes[info.resumed ? 1 : 0], 1);
        MOXY_STAT_ADD(c->w->stats.tls_versions[strcmp(info.version, "TLSv1.3") == 0], 1);
        moxy_stats_tls_cipher(&c->w->stats, info.cipher);
        if (info.alpn && info.alpn[0] == 'h' && info.alpn[1] == '2') {
            client_to_h2(c);
            return MOXY_ERROR; /* c is gone */
        }
    }
    /* a request sent with the handshake's last flight raises no event */
    if (moxy_conn_pending(&c->conn)) event_active(&c->rev, EV_READ, 1);
    return MOXY_AGAIN;
}

/* Parse and start requests, move body bytes: whatever c->in allows.  Not
 * re-entered: a call from below (a response finished while a request was
 * being started) leaves the work to the loop already running. */
void moxy_h1_process(moxy_client_t *c)
{
    if (c->in_process) return;
    c->in_process = 1;
    moxy_worker_t *w = c->w;
    while (!c->dead) {
        if (c->state == MOXY_C_HEAD) {
            if (c->tls_wait && !c->proxy_wait) {
                if (client_tls_step(c) != MOXY_OK) break;
                continue;
            }
            if (evbuffer_get_length(c->in) == 0) break;
            if (c->proxy_wait) {
                if (client_proxy_header(c) != MOXY_OK) break;
                continue;
            }
            if (c->h2_maybe) {
                /* a listener with http2: a plain connection that starts
                 * with the preface speaks HTTP/2 (prior knowledge) */
                int m = moxy_h2_preface_match(c->in);
                if (m == MOXY_H2_PREFACE_LEN) {
                    client_to_h2(c);
                    break;
                }
                if (m >= 0) break; /* the preface's start so far: more must come */
                c->h2_maybe = 0;
            }
            moxy_req_t *r = c->req ? c->req : client_new_request(c);
            if (!r) {
                moxy_client_close(c);
                break;
            }
            struct timeval now;
            event_base_gettimeofday_cached(w->base, &now);
            int first = r->head_bytes == 0;
            if (first) {
                /* first bytes of a head: its client_header deadline starts
                 * (the timer itself is armed only if the head is not
                 * complete in this read, which is the common case) */
                evutil_timeradd(&now, &r->g->tv_client_header, &c->head_deadline);
                r->started = now;
                r->started_us = moxy_mono_us();
                r->head_bytes = 1;
            } else if (evutil_timercmp(&now, &c->head_deadline, <)) {
                /* a head in pieces: the read timeout must not restart the
                 * deadline with every piece */
                struct timeval left;
                evutil_timersub(&c->head_deadline, &now, &left);
                client_read_timeout(c, &left);
            }
            const char *reason = NULL;
            int rc = moxy_h1_parse(c, &reason);
            if (rc == MOXY_AGAIN) {
                if (r->head_bytes > r->g->conf->limits.header_bytes)
                    moxy_h1_reject(c, 431, "request header fields too large");
                else if (first)
                    client_read_timeout(c, &r->g->tv_client_header);
                break;
            }
            if (rc == MOXY_ERROR) {
                int status = r->status ? r->status : 400;
                r->status = 0;
                moxy_h1_reject(c, status, reason);
                break;
            }
            client_start_request(c);
            if (!c->dead && c->state == MOXY_C_ACTIVE) moxy_h1_want_read(c);
            continue;
        }
        if (c->state == MOXY_C_ACTIVE) {
            moxy_req_t *r = c->req;
            if (r->buffering) {
                if (evbuffer_get_length(c->in) == 0) break;
                if (moxy_h1_body_buffer(c) != MOXY_AGAIN) moxy_h1_body_wake(r);
                break;
            }
            if (r->hook) {
                if (!r->body_done) moxy_h1_stop_read(c); /* the body waits in the socket */
                break;
            }
            if (r->body_done || !r->up || evbuffer_get_length(c->in) == 0) break;
            if (moxy_h1_read_body(c) != MOXY_OK || c->dead) break;
            if (!r->body_done) break;
            moxy_h1_want_read(c);
            continue;
        }
        if (c->state == MOXY_C_TUNNEL) {
            moxy_req_t *r = c->req;
            if (r->up && evbuffer_get_length(c->in) > 0) {
                evbuffer_add_buffer(r->up->out, c->in);
                r->origin->send(r);
                if (!c->dead && r->origin->backlogged(r)) moxy_h1_stop_read(c);
            }
            break;
        }
        break; /* closing */
    }
    c->in_process = 0;
    if (!c->dead && c->eof && c->state == MOXY_C_HEAD) moxy_client_close(c);
}

/* --- the end of a request --- */

/* The whole response of r is queued (moxy_req_response_done). */
static void stream_response_done(void *ctx, moxy_req_t *r)
{
    moxy_client_t *c = ctx;
    if (c->state == MOXY_C_TUNNEL) return;
    moxy_h1_write_end(c->out, r); /* the last chunk, with the trailers */
    client_finish_request(c);
}

static void client_finish_request(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    /* the response promised keep-alive: even when draining, the client may
     * send its next request before it could see the connection close, so
     * that one is still served (with Connection: close) */
    int keep = r->keepalive && r->body_done && !c->eof;
    int draining = c->close_after || c->w->draining;
    /* closing with bytes of the client's unread: linger (client_linger) */
    if (!keep) c->linger = !c->eof && (!r->body_done || evbuffer_get_length(c->in) > 0);
    /* the origin did not finish with us (e.g. the body was cut): close it */
    moxy_req_origin_cut(r);
    if (moxy_lua_has(r->g, MOXY_PHASE_LOG)) {
        /* on_log runs after the last byte: send it first */
        moxy_client_hold(c);
        int rc = moxy_client_send(c);
        int dead = c->dead;
        moxy_client_release(c);
        if (rc != MOXY_OK || dead) return;
    }
    request_log(c);
    if (!keep) {
        client_closing(c);
        return;
    }
    c->state = MOXY_C_HEAD;
    if (moxy_client_send(c) != MOXY_OK) return;
    moxy_h1_want_read(c);
    if (evbuffer_get_length(c->in) > 0) {
        /* a pipelined request is waiting */
        if (!c->in_process) moxy_h1_process(c);
    } else if (draining) {
        moxy_client_drain(c); /* the drain grace for a request on its way */
    } else if (evbuffer_get_length(c->out) == 0 && !c->in_process) {
        /* Idle: give the buffers back (nginx does the same) so that an
         * idle keep-alive connection costs its struct and little more. */
        moxy_worker_buf_put(c->w, c->in);
        moxy_worker_buf_put(c->w, c->out);
        c->in = c->out = NULL;
        if (c->wev && !c->writing) {
            event_free(c->wev);
            c->wev = NULL;
        }
    }
}

void moxy_client_tunnel(moxy_client_t *c)
{
    c->state = MOXY_C_TUNNEL;
    moxy_h1_want_read(c);
    if (evbuffer_get_length(c->in) > 0) moxy_h1_process(c);
}

/* --- events --- */

static void client_timeout(moxy_client_t *c)
{
    moxy_req_t *r = c->req;
    moxy_worker_t *w = c->w;
    if (c->state == MOXY_C_HEAD) {
        if (c->proxy_wait) {
            client_proxy_fail(c, MOXY_LOG_WARN,
                              "no PROXY protocol header within timeouts.client_header");
            return;
        }
        if (c->tls_wait) {
            MOXY_STAT_ADD(c->w->stats.tls_failures[MOXY_TLS_FAIL_TIMEOUT], 1);
            moxy_log(MOXY_LOG_INFO, NULL, "client %s:%u: TLS handshake not done within timeouts.client_header",
                     c->addr.sock_ip, c->addr.sock_port);
            moxy_client_close(c);
            return;
        }
        if (!r || r->head_bytes == 0) {
            moxy_client_close(c); /* idle keep-alive connection */
            return;
        }
        struct timeval now, left;
        event_base_gettimeofday_cached(w->base, &now);
        if (evutil_timercmp(&now, &c->head_deadline, <)) {
            evutil_timersub(&c->head_deadline, &now, &left);
            client_read_timeout(c, &left);
            return;
        }
        moxy_h1_reject(c, 408, "client header timeout");
        return;
    }
    if (c->state == MOXY_C_TUNNEL) {
        moxy_client_close(c);
        return;
    }
    if (r && !r->body_done) {
        if (r->resp_head_sent) {
            r->error = "client body timeout";
            moxy_client_close(c);
            return;
        }
        moxy_req_origin_cut(r);
        moxy_h1_reject(c, 408, "client body timeout");
    }
}

static void client_read(moxy_client_t *c, short what);

static void client_read_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_client_t *c = arg;
    MOXY_UNUSED(fd);
    moxy_client_hold(c);
    client_read(c, what);
    moxy_client_release(c);
}

static void client_read(moxy_client_t *c, short what)
{
    if (c->state == MOXY_C_LINGER) {
        linger_read(c, what);
        return;
    }
    if (what & EV_TIMEOUT) {
        client_timeout(c);
        return;
    }
    if (client_ensure_buffers(c) != MOXY_OK) {
        moxy_client_close(c);
        return;
    }
    if (c->tls_wait && !c->proxy_wait) { /* the handshake reads for itself */
        moxy_h1_process(c);
        return;
    }
    int body = c->state != MOXY_C_HEAD;
    size_t want = body ? moxy_io_read_size(c->read_size) : MOXY_READ_CHUNK;
    ssize_t n = moxy_conn_read(&c->conn, c->in, want);
    if (body) c->read_size = (uint32_t)moxy_io_next_size(want, n);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        n = 0; /* reset: as a close */
    }
    /* bytes a transport (TLS) holds already raise no socket event */
    if (n > 0 && moxy_conn_pending(&c->conn)) event_active(&c->rev, EV_READ, 1);
    if (n == 0) {
        c->eof = 1;
        moxy_h1_stop_read(c);
        moxy_req_t *r = c->req;
        if (c->state == MOXY_C_HEAD) {
            if (c->proxy_wait) {
                /* an L4 balancer's health check connects and closes: not worth a warning */
                int some = c->in && evbuffer_get_length(c->in) > 0;
                client_proxy_fail(c, some ? MOXY_LOG_WARN : MOXY_LOG_DEBUG,
                                  some ? "closed in the middle of the PROXY protocol header"
                                       : "closed before the PROXY protocol header");
                return;
            }
            if (r && r->head_bytes > 0 && evbuffer_get_length(c->in) > 0) {
                moxy_h1_process(c); /* parse what came before the close */
                return;
            }
            moxy_client_close(c);
            return;
        }
        if (c->state == MOXY_C_TUNNEL) {
            if (r->up) moxy_conn_shutdown(&r->up->conn);
            if (!r->up || r->up->eof) moxy_client_close(c);
            return;
        }
        if (r && !r->body_done) {
            /* the client went away in the middle of its body */
            r->error = "client closed during request body";
            moxy_client_close(c);
            return;
        }
        if (r && r->hook) {
            /* gone while its hooks are parked: nobody waits for the answer */
            r->error = "client closed while hooks were parked";
            moxy_client_close(c);
            return;
        }
        /* half-closed after a complete request: answer, then close */
        return;
    }
    moxy_h1_process(c);
}
