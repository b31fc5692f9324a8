/*
 * socket.c -- moxy.socket.tcp's sockets on the worker's event loop; see
 * socket.h for the calls and the ownership rules.
 *
 * One call at a time per socket: connect, the TLS handshake, send or
 * receive.  A call that must wait records its task and arms what it waits
 * for; the event that completes it disarms everything, forgets the task,
 * and only then wakes it (the woken hook may use the socket again, or drop
 * it, before moxy_lua_task_wake returns: nothing touches the socket after).
 *
 * Receiving reads only while a receive waits: bytes the script did not ask
 * for stay in the kernel.  What was read waits in s->in; a receive takes
 * its answer from there (pulled up into one block, handed to Lua by
 * pointer, dropped by moxy_ffi_sock_consume once Lua copied it).
 */
#include "api/socket.h"
#include "http/lifecycle.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "http/worker.h"
#include "net/dial.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define EXPORT __attribute__((visibility("default")))

#define SOCK_READ 65536                     /* bytes read per readable event */
#define SOCK_MAX_BUFFER (16 * 1024 * 1024)  /* bytes a receive may gather, by default */
#define SOCK_POOL_MAX 512                   /* a pool name's length */
#define SOCK_PAT_MAX 4096                   /* a receiveuntil pattern's length */

enum { OP_NONE, OP_CONNECT, OP_TLS, OP_SEND, OP_RECV };

typedef struct sock_reg_s {
    moxy_worker_t *w;
    LIST_HEAD(, moxy_sock_s) socks; /* every socket that made a call on this worker */
} sock_reg_t;

struct moxy_sock_s {
    sock_reg_t *reg; /* set by the first call; NULL once its worker ended */
    LIST_ENTRY(moxy_sock_s) link; /* in reg->socks while reg is set */

    moxy_conn_t conn; /* fd -1: closed */
    moxy_dial_t dial;
    struct evbuffer *in, *out;
    struct event rev, wev, timer;
    int events_set; /* rev and wev are assigned to conn.fd */

    moxy_lua_task_t *task; /* the task a call waits for, or NULL */
    int op;
    int mode;             /* the receive waiting */
    size_t n;
    char *pat;
    size_t plen;
    double timeout;

    size_t max_buffer;
    size_t scanned;  /* bytes of s->in known not to hold the receive's pattern */
    int eof, rerr;   /* the peer closed; a read failed (errno) */
    int werr;        /* a write failed (errno) */
    unsigned uses;   /* times its connection was reused */
    int is_tls;
    char *pool;      /* the key it was taken or is kept under */
    size_t pool_len;
    moxy_req_defer_t *owner; /* closes it when the request that connected it ends */
};

static sock_reg_t *reg_get(moxy_worker_t *w)
{
    void **slot = moxy_worker_slot(w, &moxy_socket_module);
    if (*slot) return *slot;
    sock_reg_t *reg = calloc(1, sizeof(*reg));
    if (!reg) return NULL;
    reg->w = w;
    LIST_INIT(&reg->socks);
    *slot = reg;
    return reg;
}

static void set_err(char *err, size_t errlen, const char *why)
{
    if (err && errlen) snprintf(err, errlen, "%s", why);
}

/* *dst becomes a copy of the n bytes at src (its old block reused or
 * freed).  MOXY_ERROR: out of memory (*dst unchanged). */
static int keep_copy(char **dst, const char *src, size_t n)
{
    char *p = realloc(*dst, n ? n : 1);
    if (!p) return MOXY_ERROR;
    memcpy(p, src, n);
    *dst = p;
    return MOXY_OK;
}

/* --- a socket's connection and events --- */

static void sock_read_cb(evutil_socket_t fd, short what, void *arg);
static void sock_write_cb(evutil_socket_t fd, short what, void *arg);
static void sock_timer_cb(evutil_socket_t fd, short what, void *arg);

static void sock_disarm(moxy_sock_t *s)
{
    if (s->events_set) {
        event_del(&s->rev);
        event_del(&s->wev);
    }
    if (s->reg) event_del(&s->timer);
}

/* Close s's connection, drop what it buffered; a dial under way stops. */
static void sock_close(moxy_sock_t *s)
{
    sock_disarm(s);
    s->events_set = 0;
    moxy_dial_cancel(&s->dial);
    if (s->conn.fd >= 0) moxy_conn_close(&s->conn);
    if (s->in) evbuffer_drain(s->in, evbuffer_get_length(s->in));
    if (s->out) evbuffer_drain(s->out, evbuffer_get_length(s->out));
    s->eof = s->rerr = s->werr = 0;
    s->scanned = 0;
    s->is_tls = 0;
    s->uses = 0;
}

/* s holds conn from now: its events follow the socket. */
static void sock_attach(moxy_sock_t *s, const moxy_conn_t *conn)
{
    s->conn = *conn;
    struct event_base *base = s->reg->w->base;
    event_assign(&s->rev, base, conn->fd, EV_READ | EV_PERSIST, sock_read_cb, s);
    event_assign(&s->wev, base, conn->fd, EV_WRITE | EV_PERSIST, sock_write_cb, s);
    s->events_set = 1;
}

/* The request that connected s ended: s closes, as OpenResty's cosockets
 * do (a forgotten socket must not hold a connection until the collector
 * runs). */
static void sock_request_end(void *arg)
{
    moxy_sock_t *s = arg;
    s->owner = NULL;
    if (!s->task) sock_close(s);
}

/* s belongs to t's request (if any) from now: it closes when that ends. */
static void sock_own(moxy_sock_t *s, moxy_lua_task_t *t)
{
    if (s->owner) s->owner->fn = NULL;
    s->owner = NULL;
    moxy_req_t *r = moxy_lua_task_request(t);
    if (r) s->owner = moxy_req_defer(r, sock_request_end, s);
}

static void sock_disown(moxy_sock_t *s)
{
    if (s->owner) s->owner->fn = NULL;
    s->owner = NULL;
}

/* The task that waited for s's call: s forgets it and disarms (the caller
 * wakes it, and touches s no more). */
static moxy_lua_task_t *sock_release(moxy_sock_t *s)
{
    moxy_lua_task_t *t = s->task;
    sock_disarm(s);
    s->task = NULL;
    s->op = OP_NONE;
    return t;
}

static void wake_ok(moxy_sock_t *s)
{
    moxy_lua_task_t *t = sock_release(s);
    lua_State *co = moxy_lua_task_thread(t);
    lua_checkstack(co, 2);
    lua_pushboolean(co, 1);
    moxy_lua_task_wake(t, 1);
}

static void wake_err(moxy_sock_t *s, const char *why)
{
    moxy_lua_task_t *t = sock_release(s);
    lua_State *co = moxy_lua_task_thread(t);
    lua_checkstack(co, 3);
    lua_pushnil(co);
    lua_pushstring(co, why);
    moxy_lua_task_wake(t, 2);
}

/* The task waiting on s was dropped (its client left, the worker stops):
 * the call's state is unknown, so the connection goes. */
static void sock_cancel(void *arg)
{
    moxy_sock_t *s = arg;
    s->task = NULL;
    s->op = OP_NONE;
    sock_close(s);
}

/* s's call waits for task t, at most timeout seconds (<= 0: no bound). */
static void sock_wait(moxy_sock_t *s, moxy_lua_task_t *t, int op, double timeout)
{
    s->task = t;
    s->op = op;
    s->timeout = timeout;
    if (timeout > 0) {
        struct timeval tv = moxy_timeval(timeout > 1e7 ? 1e7 : timeout);
        evtimer_add(&s->timer, &tv);
    }
    moxy_lua_task_wait(t, s, sock_cancel);
}

/* Progress on a call: its timeout starts again. */
static void sock_progress(moxy_sock_t *s)
{
    if (s->timeout > 0) {
        struct timeval tv = moxy_timeval(s->timeout > 1e7 ? 1e7 : s->timeout);
        evtimer_add(&s->timer, &tv);
    }
}

static void sock_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_sock_t *s = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    /* half made, or half sent: the connection is of no use.  A receive
     * that timed out keeps it (and what came): the script may read on. */
    if (s->op != OP_RECV) sock_close(s);
    wake_err(s, "timeout");
}

/* --- connect and TLS --- */

static void sock_dialed(moxy_dial_t *d, int rc)
{
    moxy_sock_t *s = d->arg;
    if (rc != MOXY_OK) {
        char why[MOXY_DIAL_ERR_MAX];
        snprintf(why, sizeof(why), "%s", d->err);
        sock_close(s);
        wake_err(s, why);
        return;
    }
    if (s->op == OP_TLS) s->is_tls = 1;
    sock_attach(s, &d->conn);
    d->conn.fd = -1;
    wake_ok(s);
}

/* s for a call from the running task: *t set, MOXY_OK; MOXY_DECLINED
 * outside hooks; MOXY_ERROR (err) when s is busy or moxy out of memory. */
static int sock_enter(moxy_sock_t *s, moxy_lua_task_t **t, char *err, size_t errlen)
{
    *t = moxy_lua_current_task();
    if (!*t) return MOXY_DECLINED;
    if (s->task) {
        set_err(err, errlen, "socket busy: another call waits on it");
        return MOXY_ERROR;
    }
    if (!s->reg) {
        moxy_worker_t *w = moxy_lua_task_worker(*t);
        if (!(s->reg = reg_get(w))) {
            set_err(err, errlen, "out of memory");
            return MOXY_ERROR;
        }
        evtimer_assign(&s->timer, w->base, sock_timer_cb, s);
        LIST_INSERT_HEAD(&s->reg->socks, s, link);
        s->dial.conn.fd = -1;
        s->dial.done = sock_dialed;
        s->dial.arg = s;
    } else if (s->reg->w != moxy_lua_task_worker(*t)) {
        set_err(err, errlen, "socket of another worker");
        return MOXY_ERROR;
    }
    if (!s->in && !(s->in = evbuffer_new())) goto oom;
    if (!s->out && !(s->out = evbuffer_new())) goto oom;
    return MOXY_OK;
oom:
    set_err(err, errlen, "out of memory");
    return MOXY_ERROR;
}

EXPORT moxy_sock_t *moxy_ffi_sock_new(void)
{
    moxy_sock_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->conn.fd = -1;
    s->dial.conn.fd = -1;
    s->max_buffer = SOCK_MAX_BUFFER;
    return s;
}

EXPORT void moxy_ffi_sock_free(moxy_sock_t *s)
{
    if (!s) return;
    if (s->task) sock_release(s); /* cannot happen: a waiting task holds the object */
    sock_disown(s);
    sock_close(s);
    if (s->reg) LIST_REMOVE(s, link);
    if (s->in) evbuffer_free(s->in);
    if (s->out) evbuffer_free(s->out);
    free(s->pat);
    free(s->pool);
    free(s);
}

EXPORT int moxy_ffi_sock_connect(moxy_sock_t *s, const char *host, size_t hlen, int port, const char *pool,
                                 size_t plen, double timeout, char *err, size_t errlen)
{
    moxy_lua_task_t *t;
    int rc = sock_enter(s, &t, err, errlen);
    if (rc != MOXY_OK) return rc;
    if (!s->reg->w->base || s->reg->w->draining) {
        set_err(err, errlen, "the worker is stopping");
        return MOXY_ERROR;
    }
    sock_close(s);
    sock_own(s, t);
    if (plen == 0 || plen > SOCK_POOL_MAX) {
        set_err(err, errlen, "bad pool name");
        return MOXY_ERROR;
    }
    if (keep_copy(&s->pool, pool, plen) != MOXY_OK) {
        set_err(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    s->pool_len = plen;
    moxy_dialer_t *dl = moxy_worker_dialer(s->reg->w);
    if (!dl) {
        set_err(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    moxy_conn_t idle;
    unsigned uses;
    if (moxy_dialer_take(dl, pool, plen, &idle, &uses) == MOXY_OK) {
        sock_attach(s, &idle);
        s->uses = uses + 1;
        s->is_tls = idle.t != &moxy_transport_plain;
        return MOXY_OK;
    }
    s->dial.connect_timeout = timeout > 0 ? timeout : 60;
    if (moxy_dial_start(&s->dial, dl, host, hlen, port, MOXY_DIAL_PLAIN, NULL) != MOXY_OK) {
        set_err(err, errlen, s->dial.err);
        return MOXY_ERROR;
    }
    sock_wait(s, t, OP_CONNECT, timeout); /* the name's lookup too */
    return MOXY_AGAIN;
}

EXPORT int moxy_ffi_sock_tls(moxy_sock_t *s, const char *name, size_t nlen, int verify, double timeout,
                             char *err, size_t errlen)
{
    moxy_lua_task_t *t;
    int rc = sock_enter(s, &t, err, errlen);
    if (rc != MOXY_OK) return rc;
    if (s->conn.fd < 0) {
        set_err(err, errlen, "closed");
        return MOXY_ERROR;
    }
    if (s->is_tls) return MOXY_OK;
    if (evbuffer_get_length(s->in) || evbuffer_get_length(s->out)) {
        set_err(err, errlen, "bytes not yet read or sent on the connection");
        return MOXY_ERROR;
    }
    moxy_conn_t conn = s->conn;
    sock_disarm(s);
    s->events_set = 0;
    s->conn.fd = -1;
    s->dial.connect_timeout = timeout > 0 ? timeout : 60;
    if (moxy_dial_tls(&s->dial, moxy_worker_dialer(s->reg->w), &conn, verify ? MOXY_DIAL_TLS : MOXY_DIAL_TLS_NOVERIFY,
                      nlen ? name : NULL, nlen) != MOXY_OK) {
        set_err(err, errlen, s->dial.err);
        sock_close(s);
        return MOXY_ERROR;
    }
    sock_wait(s, t, OP_TLS, timeout);
    return MOXY_AGAIN;
}

/* --- send --- */

/* Write what s->out holds.  MOXY_OK: all out; MOXY_AGAIN: the socket is
 * full; MOXY_ERROR: the write failed (s->werr). */
static int sock_flush(moxy_sock_t *s)
{
    while (evbuffer_get_length(s->out) > 0) {
        ssize_t n = moxy_conn_write(&s->conn, s->out);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return MOXY_AGAIN;
            if (errno == EINTR) continue;
            s->werr = errno ? errno : EPIPE;
            return MOXY_ERROR;
        }
    }
    return MOXY_OK;
}

static const char *werr_text(int e)
{
    return e == EPIPE || e == ECONNRESET ? "closed" : strerror(e);
}

static void sock_write_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_sock_t *s = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (s->op != OP_SEND) {
        event_del(&s->wev);
        return;
    }
    size_t before = evbuffer_get_length(s->out);
    int rc = sock_flush(s);
    if (rc == MOXY_AGAIN) {
        if (evbuffer_get_length(s->out) < before) sock_progress(s);
        return;
    }
    if (rc == MOXY_ERROR) {
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
        wake_err(s, werr_text(s->werr));
        return;
    }
    wake_ok(s);
}

EXPORT int moxy_ffi_sock_send(moxy_sock_t *s, const char *data, size_t len, double timeout, char *err,
                              size_t errlen)
{
    moxy_lua_task_t *t;
    int rc = sock_enter(s, &t, err, errlen);
    if (rc != MOXY_OK) return rc;
    if (s->conn.fd < 0) {
        set_err(err, errlen, "closed");
        return MOXY_ERROR;
    }
    if (s->werr) {
        set_err(err, errlen, werr_text(s->werr));
        return MOXY_ERROR;
    }
    if (len && evbuffer_add(s->out, data, len) != 0) {
        set_err(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    rc = sock_flush(s);
    if (rc == MOXY_OK) return MOXY_OK;
    if (rc == MOXY_ERROR) {
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
        set_err(err, errlen, werr_text(s->werr));
        return MOXY_ERROR;
    }
    event_add(&s->wev, NULL);
    sock_wait(s, t, OP_SEND, timeout);
    return MOXY_AGAIN;
}

/* --- receive --- */

int moxy_sock_scan(struct evbuffer *in, int mode, size_t n, const char *pat, size_t plen, size_t max, int eof,
                   size_t *scanned, size_t *len, size_t *consume)
{
    size_t have = evbuffer_get_length(in);
    struct evbuffer_ptr p;
    if (*scanned > have) *scanned = 0;
    switch (mode) {
    case MOXY_SOCK_BYTES:
        if (have >= n) {
            *len = *consume = n;
            return MOXY_OK;
        }
        if (n > max) return MOXY_ERROR;
        return MOXY_AGAIN;
    case MOXY_SOCK_ANY:
        if (have > 0) {
            *len = *consume = have < n ? have : n;
            return MOXY_OK;
        }
        return MOXY_AGAIN;
    case MOXY_SOCK_LINE:
        evbuffer_ptr_set(in, &p, *scanned, EVBUFFER_PTR_SET);
        p = evbuffer_search(in, "\n", 1, &p);
        if (p.pos < 0) *scanned = have;
        if (p.pos >= 0) {
            size_t at = (size_t)p.pos;
            *consume = at + 1;
            *len = at;
            if (at > 0) {
                char c;
                struct evbuffer_ptr q;
                evbuffer_ptr_set(in, &q, at - 1, EVBUFFER_PTR_SET);
                if (evbuffer_copyout_from(in, &q, &c, 1) == 1 && c == '\r') *len = at - 1;
            }
            return MOXY_OK;
        }
        break;
    case MOXY_SOCK_ALL:
        if (eof) {
            *len = *consume = have;
            return MOXY_OK;
        }
        break;
    case MOXY_SOCK_UNTIL: {
        if (plen == 0) return MOXY_ERROR;
        int inclusive = (int)(n & 1);
        size_t size = n >> 1;
        size_t from = *scanned >= plen ? *scanned - (plen - 1) : 0;
        evbuffer_ptr_set(in, &p, from, EVBUFFER_PTR_SET);
        p = evbuffer_search(in, pat, plen, &p);
        if (p.pos < 0) *scanned = have;
        if (p.pos >= 0) {
            size_t at = (size_t)p.pos;
            if (size > 0 && at > size) { /* a part of what comes before it */
                *len = *consume = size;
                return MOXY_DONE;
            }
            *len = inclusive ? at + plen : at;
            *consume = at + plen;
            return MOXY_OK;
        }
        /* bytes that cannot start the pattern can go as a part */
        size_t safe = have >= plen ? have - (plen - 1) : 0;
        if (size > 0 && safe >= size) {
            *len = *consume = size;
            return MOXY_DONE;
        }
        break;
    }
    default:
        return MOXY_ERROR;
    }
    if (have >= max) return MOXY_ERROR;
    return MOXY_AGAIN;
}

/* What s->in answers for the receive (mode, n, pat): moxy_sock_scan's. */
static int recv_ready(moxy_sock_t *s, int mode, size_t n, const char *pat, size_t plen, size_t *len,
                      size_t *consume)
{
    return moxy_sock_scan(s->in, mode, n, pat, plen, s->max_buffer, s->eof, &s->scanned, len, consume);
}

/* Read once into s->in.  MOXY_OK: bytes came; MOXY_AGAIN: none now;
 * MOXY_DONE: the peer closed (s->eof), or a read failed (s->rerr). */
static int sock_read(moxy_sock_t *s)
{
    size_t room = s->max_buffer > evbuffer_get_length(s->in) ? s->max_buffer - evbuffer_get_length(s->in) : 0;
    if (room == 0) return MOXY_OK; /* recv_ready says the buffer is full */
    ssize_t n = moxy_conn_read(&s->conn, s->in, room < SOCK_READ ? room : SOCK_READ);
    if (n > 0) {
        /* bytes a transport (TLS) holds already raise no socket event */
        if (moxy_conn_pending(&s->conn)) event_active(&s->rev, EV_READ, 0);
        return MOXY_OK;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return MOXY_AGAIN;
    if (n < 0) s->rerr = errno ? errno : EIO;
    s->eof = 1;
    return MOXY_DONE;
}

static void sock_read_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_sock_t *s = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (s->op != OP_RECV) {
        event_del(&s->rev);
        return;
    }
    int rc = sock_read(s);
    if (rc == MOXY_AGAIN) return;
    size_t len, consume;
    int ready = recv_ready(s, s->mode, s->n, s->pat, s->plen, &len, &consume);
    if (ready == MOXY_AGAIN && rc != MOXY_DONE) {
        sock_progress(s);
        return;
    }
    wake_ok(s); /* the receive is called again: it answers, or says why not */
}

EXPORT int moxy_ffi_sock_receive(moxy_sock_t *s, int mode, size_t n, const char *pat, size_t plen,
                                 double timeout, const char **data, size_t *len, size_t *consume, char *err,
                                 size_t errlen)
{
    moxy_lua_task_t *t;
    *data = "";
    *len = *consume = 0;
    int rc = sock_enter(s, &t, err, errlen);
    if (rc != MOXY_OK) return rc;
    if (s->conn.fd < 0 && evbuffer_get_length(s->in) == 0) {
        set_err(err, errlen, "closed");
        return MOXY_ERROR;
    }
    if (mode == MOXY_SOCK_UNTIL && (plen == 0 || plen > SOCK_PAT_MAX)) {
        set_err(err, errlen, "bad pattern");
        return MOXY_ERROR;
    }
    s->scanned = 0; /* an earlier call may have looked for something else */
    for (;;) {
        rc = recv_ready(s, mode, n, pat, plen, len, consume);
        if (rc == MOXY_OK || rc == MOXY_DONE) {
            *data = *len ? (const char *)evbuffer_pullup(s->in, (ev_ssize_t)*len) : "";
            if (!*data) {
                set_err(err, errlen, "out of memory");
                return MOXY_ERROR;
            }
            return rc;
        }
        if (rc == MOXY_ERROR) {
            set_err(err, errlen, "buffer full");
            break;
        }
        if (s->eof || s->conn.fd < 0) {
            set_err(err, errlen, s->rerr && s->rerr != ECONNRESET ? strerror(s->rerr) : "closed");
            break;
        }
        int r = sock_read(s);
        if (r == MOXY_AGAIN) {
            /* wait for the socket; the receive is called again when woken */
            if (mode == MOXY_SOCK_UNTIL && keep_copy(&s->pat, pat, plen) != MOXY_OK) {
                set_err(err, errlen, "out of memory");
                return MOXY_ERROR;
            }
            s->mode = mode;
            s->n = n;
            s->plen = plen;
            event_add(&s->rev, NULL);
            sock_wait(s, t, OP_RECV, timeout);
            return MOXY_AGAIN;
        }
    }
    /* an error: hand what came, as a partial answer, and drop it */
    size_t have = evbuffer_get_length(s->in);
    *len = *consume = have;
    *data = have ? (const char *)evbuffer_pullup(s->in, (ev_ssize_t)have) : "";
    if (!*data) *data = "", *len = *consume = 0;
    return MOXY_ERROR;
}

EXPORT void moxy_ffi_sock_consume(moxy_sock_t *s, size_t n)
{
    if (!s->in) return;
    evbuffer_drain(s->in, n);
    s->scanned = 0; /* the next receive may look for something else */
}

/* --- keepalive, close, options --- */

EXPORT int moxy_ffi_sock_keepalive(moxy_sock_t *s, double idle, int size, char *err, size_t errlen)
{
    set_err(err, errlen, "");
    if (s->task) {
        set_err(err, errlen, "socket busy: another call waits on it");
        return MOXY_ERROR;
    }
    if (s->conn.fd < 0) {
        set_err(err, errlen, "closed");
        return MOXY_ERROR;
    }
    if (evbuffer_get_length(s->in) > 0) {
        set_err(err, errlen, "unread data in buffer");
        return MOXY_ERROR;
    }
    const char *why = evbuffer_get_length(s->out) > 0 || s->werr ? "bytes left unsent"
                      : s->eof                                   ? "closed by the peer"
                      : s->reg->w->draining                      ? "the worker is stopping"
                                                                 : NULL;
    if (why) {
        sock_close(s);
        set_err(err, errlen, why);
        return MOXY_DECLINED;
    }
    moxy_dialer_t *dl = moxy_worker_dialer(s->reg->w);
    moxy_conn_t conn = s->conn;
    unsigned uses = s->uses;
    sock_disarm(s);
    s->events_set = 0;
    s->conn.fd = -1;
    sock_close(s);
    sock_disown(s);
    if (!dl || moxy_dialer_put(dl, s->pool, s->pool_len, &conn, size, idle, uses) != MOXY_OK) {
        set_err(err, errlen, "connection in dubious state, or the worker's idle pool is full");
        return MOXY_DECLINED;
    }
    return MOXY_OK;
}

EXPORT int moxy_ffi_sock_close(moxy_sock_t *s)
{
    int open = s->conn.fd >= 0;
    if (s->task) return MOXY_DECLINED; /* another task's call waits on it */
    sock_close(s);
    return open ? MOXY_OK : MOXY_ERROR;
}

EXPORT int moxy_ffi_sock_reused(const moxy_sock_t *s)
{
    return s->conn.fd >= 0 ? (int)s->uses : 0;
}

EXPORT int moxy_ffi_sock_setoption(moxy_sock_t *s, const char *name, double value, char *err, size_t errlen)
{
    if (strcmp(name, "max_buffer") == 0) {
        if (!(value >= 1 && value <= 1024.0 * 1024 * 1024)) {
            set_err(err, errlen, "max_buffer must be 1 byte to 1 GiB");
            return MOXY_ERROR;
        }
        s->max_buffer = (size_t)value;
        return MOXY_OK;
    }
    int level = SOL_SOCKET, opt;
    if (strcmp(name, "tcp-nodelay") == 0) level = IPPROTO_TCP, opt = TCP_NODELAY;
    else if (strcmp(name, "keepalive") == 0) opt = SO_KEEPALIVE;
    else if (strcmp(name, "sndbuf") == 0) opt = SO_SNDBUF;
    else if (strcmp(name, "rcvbuf") == 0) opt = SO_RCVBUF;
    else {
        set_err(err, errlen, "unknown option");
        return MOXY_ERROR;
    }
    if (s->conn.fd < 0) {
        set_err(err, errlen, "closed");
        return MOXY_ERROR;
    }
    if (!(value >= 0 && value <= 1 << 30)) {
        set_err(err, errlen, "bad value");
        return MOXY_ERROR;
    }
    int v = (int)value;
    if (setsockopt(s->conn.fd, level, opt, &v, sizeof(v)) != 0) {
        set_err(err, errlen, strerror(errno));
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

/* --- the worker's end --- */

static void socket_worker_free(moxy_worker_t *w)
{
    sock_reg_t *reg = *moxy_worker_slot(w, &moxy_socket_module);
    if (!reg) return;
    moxy_sock_t *s;
    while ((s = LIST_FIRST(&reg->socks))) {
        sock_close(s); /* a waiting task's cancel comes (or came) from the bridge */
        LIST_REMOVE(s, link);
        s->reg = NULL;
    }
    free(reg);
    *moxy_worker_slot(w, &moxy_socket_module) = NULL;
}

moxy_module_t moxy_socket_module = {
    .name = "moxy.socket",
    .worker_free = socket_worker_free,
};
