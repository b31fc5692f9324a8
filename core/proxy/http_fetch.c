/*
 * http_fetch.c -- moxy.http's client: one HTTP/1.1 call per op, on the
 * worker's event loop, for a hook or timer callback that waits for it; see
 * http_fetch.h for the ownership rules.
 *
 * A call: take an idle keep-alive connection for "host:port" from the
 * worker's dialer, or dial a new one (net/dial.h: the host's addresses in
 * turn, IPv4 first, then TLS for https); write the request
 * bytes Lua built; parse the response (http1/origin_codec.h, as the proxy
 * does) into headers and a body capped by max_body; wake the task with the result table, or with
 * nil and an error.  A reused connection that turns out closed before any
 * response byte is retried once on a fresh one (the request never reached
 * the origin, or the origin dropped it unanswered).
 *
 * Nothing here completes a call while moxy_ffi_http_start runs: a failure
 * found there is returned to Lua directly (no yield), so a task is never
 * woken from inside its own FFI call.  A completion frees the op and only
 * then wakes the task, which may start new calls (and reuse the connection
 * just put back) before moxy_lua_task_wake returns.
 */
#include "http/lifecycle.h"
#include "proxy/http_fetch.h"
#include "http/lua_bridge.h"
#include "http1/origin_codec.h"
#include "net/dial.h"
#include "http/worker.h"

#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/util.h>
#include <stdio.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

#define FETCH_IDLE_PER_PEER 32 /* idle connections kept per "host:port" (the worker's dialer bounds them all) */
#define FETCH_OPS_MAX 4096     /* calls in flight per worker */
#define FETCH_READ 65536       /* bytes read per readable event */
#define FETCH_HOST_MAX 255
#define FETCH_ERR_MAX MOXY_DIAL_ERR_MAX

typedef struct fetch_reg_s fetch_reg_t;
typedef struct fetch_op_s fetch_op_t;

/* A worker's moxy.http state (its slot of moxy_fetch_module); idle
 * connections and name lookups are the worker's dialer's. */
struct fetch_reg_s {
    moxy_worker_t *w;
    LIST_HEAD(, fetch_op_s) ops;
    int nops;
};

/* One call. */
struct fetch_op_s {
    fetch_reg_t *reg; /* NULL once the registry is freed */
    moxy_lua_task_t *task;
    LIST_ENTRY(fetch_op_s) link; /* in reg->ops */

    char *host; /* as in the URL, lower-cased, no brackets */
    char *key;  /* "host:port", after "https:" (verified) or "https-unverified:" for TLS */
    int tls;    /* MOXY_DIAL_PLAIN, _TLS (verified) or _TLS_NOVERIFY */
    size_t keylen;
    int port;
    moxy_dial_t dial; /* finding and connecting a new connection */

    char *out; /* the request bytes (head and body) */
    size_t out_len, out_sent;
    size_t max_body, max_head;
    uint32_t max_headers;

    moxy_conn_t conn; /* fd -1: none */
    struct event rev, wev, timer;
    struct evbuffer *in;  /* read from the origin, not parsed yet */
    moxy_h1_resp_t resp;  /* the response parser */
    moxy_pool_t mem;      /* the response's fields */
    moxy_headers_t hdrs;  /* the final head's fields, in mem */
    const char *perr;     /* why moxy (not the parser) refused the response */

    char *body;
    size_t blen, bcap;

    unsigned head : 1;      /* a HEAD request: no body in the response */
    unsigned keepalive : 1; /* the caller allows keeping the connection */
    unsigned reused : 1;    /* the connection came from the idle list */
    unsigned retried : 1;
    unsigned reading : 1, writing : 1;
    unsigned got_bytes : 1; /* the origin sent something on this connection */
    unsigned write_failed : 1;

    char err[FETCH_ERR_MAX];
};

static void op_read_cb(evutil_socket_t fd, short what, void *arg);
static void op_write_cb(evutil_socket_t fd, short what, void *arg);
static const moxy_h1_resp_ops_t fetch_resp_ops;

/* --- the registry --- */

static fetch_reg_t *reg_get(moxy_worker_t *w)
{
    void **slot = moxy_worker_slot(w, &moxy_fetch_module);
    if (*slot) return *slot;
    fetch_reg_t *reg = calloc(1, sizeof(*reg));
    if (!reg) return NULL;
    reg->w = w;
    LIST_INIT(&reg->ops);
    *slot = reg;
    return reg;
}

/* --- an op's life --- */

/* Close op's connection (not kept) and remove its socket events. */
static void op_close_conn(fetch_op_t *op)
{
    event_del(&op->rev);
    event_del(&op->wev);
    op->reading = op->writing = 0;
    moxy_conn_close(&op->conn);
}

/* Stop everything op waits for: socket, timer, a dial under way. */
static void op_stop(fetch_op_t *op)
{
    op_close_conn(op);
    event_del(&op->timer);
    moxy_dial_cancel(&op->dial);
}

static void op_free(fetch_op_t *op)
{
    op_stop(op);
    if (op->reg) {
        LIST_REMOVE(op, link);
        op->reg->nops--;
    }
    free(op->host);
    free(op->key);
    free(op->out);
    if (op->in) evbuffer_free(op->in);
    moxy_pool_reset(&op->mem);
    free(op->body);
    free(op);
}

/* The bridge dropped op's task (its client left, the worker stops). */
static void op_cancel(void *arg)
{
    op_free(arg);
}

/* op failed: free it, wake its task with nil, why. */
static void op_fail(fetch_op_t *op, const char *why)
{
    char msg[FETCH_ERR_MAX];
    snprintf(msg, sizeof(msg), "%s", why);
    moxy_lua_task_t *t = op->task;
    op_free(op);
    lua_State *co = moxy_lua_task_thread(t);
    lua_checkstack(co, 4);
    lua_pushnil(co);
    lua_pushstring(co, msg);
    moxy_lua_task_wake(t, 2);
}

/* "prefix: strerror(err)" with the first letter of the reason lower-cased. */
static void set_errno_err(fetch_op_t *op, const char *prefix, int err)
{
    int n = snprintf(op->err, sizeof(op->err), "%s: %s", prefix, strerror(err));
    size_t at = strlen(prefix) + 2;
    if (n > 0 && at < sizeof(op->err)) op->err[at] = (char)tolower((unsigned char)op->err[at]);
}

/* Push the result table of op's response on co:
 * { status = n, headers = { lname = "v1, v2" | {cookies} }, body = "..." }. */
static void push_result(fetch_op_t *op, lua_State *co)
{
    lua_checkstack(co, 8);
    lua_createtable(co, 0, 3);
    lua_pushinteger(co, op->resp.status);
    lua_setfield(co, -2, "status");
    lua_createtable(co, 0, (int)op->hdrs.n);
    int H = lua_gettop(co);
    for (uint32_t i = 0; i < op->hdrs.n; i++) {
        moxy_header_t *h = &op->hdrs.h[i];
        const char *value = h->value;
        for (uint32_t k = 0; k < h->name_len; k++) /* Lua sees names lower-cased */
            h->name[k] = (char)tolower((unsigned char)h->name[k]);
        int cookie = MOXY_STRIEQ_LIT(h->name, h->name_len, "set-cookie");
        lua_pushlstring(co, h->name, h->name_len);
        lua_pushvalue(co, -1);
        lua_rawget(co, H);
        if (cookie) {
            if (lua_isnil(co, -1)) {
                lua_pop(co, 1);
                lua_createtable(co, 2, 0);
                lua_pushvalue(co, -2);
                lua_pushvalue(co, -2);
                lua_rawset(co, H);
            }
            lua_pushlstring(co, value, h->value_len);
            lua_rawseti(co, -2, (int)lua_objlen(co, -2) + 1);
            lua_pop(co, 2);
            continue;
        }
        if (lua_isnil(co, -1)) {
            lua_pop(co, 1);
            lua_pushlstring(co, value, h->value_len);
        } else {
            lua_pushliteral(co, ", ");
            lua_pushlstring(co, value, h->value_len);
            lua_concat(co, 3);
        }
        lua_rawset(co, H);
    }
    lua_setfield(co, -2, "headers");
    lua_pushlstring(co, op->body ? op->body : "", op->blen);
    lua_setfield(co, -2, "body");
}

/* op's response is complete: keep its connection when it is clean, free
 * op, wake its task with the result. */
static void op_done(fetch_op_t *op, int eof)
{
    fetch_reg_t *reg = op->reg;
    int keep = reg && op->keepalive && !eof && evbuffer_get_length(op->in) == 0 && !op->write_failed &&
               op->out_sent == op->out_len && op->resp.keepalive;
    if (keep) {
        event_del(&op->rev);
        event_del(&op->wev);
        op->reading = op->writing = 0;
        if (!reg->w->draining)
            moxy_dialer_put(moxy_worker_dialer(reg->w), op->key, op->keylen, &op->conn, FETCH_IDLE_PER_PEER, 0, 0);
        moxy_conn_close(&op->conn);
    }
    moxy_lua_task_t *t = op->task;
    lua_State *co = moxy_lua_task_thread(t);
    push_result(op, co);
    op_free(op);
    moxy_lua_task_wake(t, 1);
}

/* --- connecting --- */

/* Send what is left of the request; a write error leaves the read side to
 * see what the origin did (it may have answered early, or closed). */
static void op_send(fetch_op_t *op)
{
    while (op->out_sent < op->out_len) {
        ssize_t n = moxy_conn_send(&op->conn, op->out + op->out_sent, op->out_len - op->out_sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!op->writing) event_add(&op->wev, NULL);
                op->writing = 1;
                return;
            }
            op->write_failed = 1;
            break;
        }
        op->out_sent += (size_t)n;
    }
    if (op->writing) event_del(&op->wev);
    op->writing = 0;
}

/* op's connection is up (new, TLS included, or reused): read, and write
 * the request. */
static void op_connected(fetch_op_t *op)
{
    event_add(&op->rev, NULL);
    op->reading = 1;
    op_send(op);
}

/* Use conn (connected) for op. */
static void op_attach(fetch_op_t *op, const moxy_conn_t *conn)
{
    op->conn = *conn;
    int fd = conn->fd;
    struct event_base *base = moxy_lua_task_worker(op->task)->base;
    event_assign(&op->rev, base, fd, EV_READ | EV_PERSIST, op_read_cb, op);
    event_assign(&op->wev, base, fd, EV_WRITE | EV_PERSIST, op_write_cb, op);
}

static void op_dialed(moxy_dial_t *d, int rc)
{
    fetch_op_t *op = d->arg;
    if (rc != MOXY_OK) {
        op_fail(op, d->err);
        return;
    }
    op_attach(op, &d->conn);
    d->conn.fd = -1;
    op_connected(op);
}

/* Find op's peer and connect (the dial calls op_dialed).  MOXY_ERROR: op->err says why. */
static int op_open(fetch_op_t *op)
{
    moxy_dialer_t *dl = op->reg ? moxy_worker_dialer(op->reg->w) : NULL;
    if (!dl) {
        snprintf(op->err, sizeof(op->err), "out of memory");
        return MOXY_ERROR;
    }
    if (moxy_dial_start(&op->dial, dl, op->host, strlen(op->host), op->port, op->tls, NULL) != MOXY_OK) {
        snprintf(op->err, sizeof(op->err), "%s", op->dial.err);
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

/* --- the response --- */

static void op_reset_response(fetch_op_t *op)
{
    evbuffer_drain(op->in, evbuffer_get_length(op->in));
    moxy_pool_reset(&op->mem);
    op->hdrs = (moxy_headers_t){0};
    moxy_h1_resp_init(&op->resp, &fetch_resp_ops, op, &op->mem, &op->hdrs, NULL, op->head, op->max_head,
                      op->max_headers);
    op->perr = NULL;
    op->blen = 0;
    op->got_bytes = op->write_failed = 0;
}

/* The reused connection was closed before any response byte: once, send
 * the request again on a new connection. */
static void op_retry(fetch_op_t *op)
{
    op_close_conn(op);
    op->reused = 0;
    op->retried = 1;
    op->out_sent = 0;
    op_reset_response(op);
    if (op_open(op) == MOXY_ERROR) op_fail(op, op->err);
}

/* Keep n more body bytes from at, or from the front of in when at is NULL. */
static const char *op_body(fetch_op_t *op, const char *at, struct evbuffer *in, size_t n)
{
    if (n > op->max_body - op->blen) return op->perr = "body too large";
    if (op->blen + n > op->bcap) {
        size_t cap = op->bcap ? op->bcap : 16384;
        while (cap < op->blen + n)
            cap *= 2;
        if (cap > op->max_body) cap = op->max_body;
        char *b = realloc(op->body, cap);
        if (!b) return op->perr = "out of memory";
        op->body = b;
        op->bcap = cap;
    }
    if (at) memcpy(op->body + op->blen, at, n);
    else evbuffer_remove(in, op->body + op->blen, n);
    op->blen += n;
    return NULL;
}

static const char *rs_body(moxy_h1_resp_t *rs, const char *at, size_t n)
{
    return op_body(rs->data, at, NULL, n);
}

/* (interim responses are skipped: their fields are dropped, the final
 * response follows; the trailers are not kept) */
static const moxy_h1_resp_ops_t fetch_resp_ops = {.body = rs_body};

/* The response was refused: fail op with why. */
static void op_refused(fetch_op_t *op)
{
    if (op->perr) {
        op_fail(op, op->perr);
        return;
    }
    snprintf(op->err, sizeof(op->err), "invalid response: %s", op->resp.why);
    op_fail(op, op->err);
}

/* Go on with what op has read (eof: the origin closed after it). */
static void op_process(fetch_op_t *op, int eof)
{
    moxy_h1_resp_t *rs = &op->resp;
    int rc;
    if (!rs->head_done) {
        rc = moxy_h1_resp_head(rs, op->in);
        if (rc == MOXY_ERROR) {
            op_refused(op);
            return;
        }
        if (rc == MOXY_AGAIN) {
            if (eof) op_fail(op, "closed");
            return;
        }
        if (rs->status == 101) {
            op_fail(op, "invalid response: unexpected 101 Switching Protocols");
            return;
        }
        if (rs->body_kind == MOXY_BODY_LENGTH) {
            if (rs->body_left > op->max_body) {
                op_fail(op, "body too large");
                return;
            }
            if (rs->body_left > 0 && !(op->body = malloc((size_t)rs->body_left))) {
                op_fail(op, "out of memory");
                return;
            }
            op->bcap = (size_t)rs->body_left;
        }
    }
    size_t take;
    rc = moxy_h1_resp_body(rs, op->in, eof, &take);
    if (rc != MOXY_ERROR && take && op_body(op, NULL, op->in, take)) rc = MOXY_ERROR;
    if (rc == MOXY_ERROR) {
        op_refused(op);
        return;
    }
    if (rc == MOXY_OK) op_done(op, eof);
    else if (eof) op_fail(op, "closed");
}

/* The origin closed op's connection (err: the read error, or 0 at EOF). */
static void op_eof(fetch_op_t *op, int err)
{
    if (op->reused && !op->got_bytes && !op->retried) {
        op_retry(op);
        return;
    }
    if (err) {
        set_errno_err(op, "recv", err);
        op_fail(op, op->err);
        return;
    }
    op_process(op, 1);
}

static void op_read_cb(evutil_socket_t fd, short what, void *arg)
{
    fetch_op_t *op = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    ssize_t n = moxy_conn_read(&op->conn, op->in, FETCH_READ);
    /* bytes a transport (TLS) holds already raise no socket event */
    if (n > 0 && moxy_conn_pending(&op->conn)) event_active(&op->rev, EV_READ, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        op_eof(op, errno);
        return;
    }
    if (n == 0) {
        op_eof(op, 0);
        return;
    }
    op->got_bytes = 1;
    op_process(op, 0);
}

static void op_write_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    op_send(arg);
}

static void op_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    op_fail(arg, "timeout");
}

/* --- the FFI export (lua/moxy/http.lua) --- */

EXPORT int moxy_ffi_http_start(const char *host, size_t hlen, int port, const char *req,
                               size_t rlen, int head, int keepalive, double timeout,
                               double connect_timeout, size_t max_body, int tls, char *err, size_t errlen)
{
    moxy_lua_task_t *t = moxy_lua_current_task();
    if (!t) return MOXY_DECLINED;
    moxy_worker_t *w = moxy_lua_task_worker(t);
    const moxy_conf_t *conf = moxy_lua_task_wgen(t)->conf;
    const char *why = "out of memory";
    fetch_op_t *op = NULL;
    fetch_reg_t *reg = reg_get(w);
    if (!reg) goto err;
    if (reg->nops >= FETCH_OPS_MAX) {
        why = "too many calls in flight";
        goto err;
    }
    if (hlen == 0 || hlen > FETCH_HOST_MAX || memchr(host, 0, hlen) || port <= 0 || port > 65535) {
        why = "invalid URL: bad host or port";
        goto err;
    }
    op = calloc(1, sizeof(*op));
    if (!op) goto err;
    op->conn.fd = -1;
    op->task = t;
    moxy_pool_init(&op->mem);
    if (!(op->in = evbuffer_new())) goto err;
    op->host = malloc(hlen + 1);
    op->key = malloc(hlen + 32);
    op->out = malloc(rlen ? rlen : 1);
    if (!op->host || !op->key || !op->out) goto err;
    for (size_t i = 0; i < hlen; i++)
        op->host[i] = (char)tolower((unsigned char)host[i]);
    op->host[hlen] = '\0';
    op->tls = tls == 1 || tls == 2 ? tls : 0;
    op->keylen = (size_t)snprintf(op->key, hlen + 32, "%s%s:%d",
                                  op->tls == 1 ? "https:" : op->tls == 2 ? "https-unverified:" : "", op->host, port);
    op->port = port;
    memcpy(op->out, req, rlen);
    op->out_len = rlen;
    op->head = head != 0;
    op->keepalive = keepalive != 0;
    op->dial.done = op_dialed;
    op->dial.arg = op;
    op->dial.conn.fd = -1;
    op->dial.connect_timeout = connect_timeout > 0 ? connect_timeout : conf->timeouts.connect;
    if (op->dial.connect_timeout > 1e7) op->dial.connect_timeout = 1e7;
    op->max_body = max_body;
    op->max_head = conf->limits.header_bytes;
    op->max_headers = (uint32_t)conf->limits.headers;
    struct event_base *base = w->base;
    event_assign(&op->rev, base, -1, EV_READ | EV_PERSIST, op_read_cb, op);
    event_assign(&op->wev, base, -1, EV_WRITE | EV_PERSIST, op_write_cb, op);
    evtimer_assign(&op->timer, base, op_timer_cb, op);
    op_reset_response(op);
    op->reg = reg;
    LIST_INSERT_HEAD(&reg->ops, op, link);
    reg->nops++;

    moxy_conn_t idle;
    moxy_dialer_t *dl = moxy_worker_dialer(w);
    if (op->keepalive && dl && moxy_dialer_take(dl, op->key, op->keylen, &idle, NULL) == MOXY_OK) {
        op->reused = 1;
        op_attach(op, &idle);
        op_connected(op);
    } else if (op_open(op) == MOXY_ERROR) {
        why = op->err;
        goto err;
    }
    struct timeval tv = moxy_timeval(timeout > 1e7 ? 1e7 : timeout > 0 ? timeout : 0);
    evtimer_add(&op->timer, &tv);
    moxy_lua_task_wait(t, op, op_cancel);
    return MOXY_OK;

err:
    if (err && errlen) snprintf(err, errlen, "%s", why);
    if (op) op_free(op);
    return MOXY_ERROR;
}

void moxy_fetch_free_worker(moxy_worker_t *w)
{
    fetch_reg_t *reg = *moxy_worker_slot(w, &moxy_fetch_module);
    if (!reg) return;
    /* calls in flight: their tasks' cancel frees them later (or already
     * did); here they only lose their sockets and events */
    fetch_op_t *op;
    while ((op = LIST_FIRST(&reg->ops))) {
        op_stop(op);
        LIST_REMOVE(op, link);
        op->reg = NULL;
    }
    free(reg);
    *moxy_worker_slot(w, &moxy_fetch_module) = NULL;
}

moxy_module_t moxy_fetch_module = {
    .name = "moxy.http",
    .worker_free = moxy_fetch_free_worker,
};
