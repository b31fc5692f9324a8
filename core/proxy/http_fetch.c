/*
 * http_fetch.c -- moxy.http's client: one HTTP/1.1 call per op, on the
 * worker's event loop, for a hook or timer callback that waits for it; see
 * http_fetch.h for the ownership rules.
 *
 * A call: take an idle keep-alive connection for "host:port", or resolve
 * the host (an IP literal directly, a name through evdns, which reads
 * /etc/hosts first) and connect to its addresses in turn (IPv4 first: a
 * refused or timed out address moves on to the next); write the request
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
#include "net/tls.h"
#include "http/worker.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#define FETCH_IDLE_PER_PEER 32 /* idle connections kept per "host:port" */
#define FETCH_IDLE_MAX 1024    /* idle connections kept per worker */
#define FETCH_IDLE_SECS 60     /* an idle connection is closed after this */
#define FETCH_OPS_MAX 4096     /* calls in flight per worker */
#define FETCH_ADDRS_MAX 4      /* addresses of a name tried in turn */
#define FETCH_READ 65536       /* bytes read per readable event */
#define FETCH_HOST_MAX 255
#define FETCH_ERR_MAX 160

typedef struct fetch_reg_s fetch_reg_t;
typedef struct fetch_op_s fetch_op_t;
typedef struct fetch_peer_s fetch_peer_t;

/* An idle keep-alive connection.  No buffers: any byte or EOF closes it. */
typedef struct {
    fetch_peer_t *peer;
    moxy_conn_t conn;
    struct event ev; /* readable (the origin closed) or idle timeout */
    moxy_idle_t idle;
} fetch_idle_t;

/* The idle connections of one "host:port"; freed when it has none. */
struct fetch_peer_s {
    fetch_reg_t *reg;
    moxy_idle_list_t idle;
    LIST_ENTRY(fetch_peer_s) link;
    size_t keylen;
    char key[]; /* "host:port", host lower-cased */
};

/* A name lookup.  It outlives its op when the op is cancelled: evdns still
 * answers a cancelled lookup (EVUTIL_EAI_CANCEL), and only then is it freed. */
typedef struct fetch_dns_s {
    fetch_reg_t *reg;
    fetch_op_t *op; /* the call waiting for it, or NULL */
    struct evdns_getaddrinfo_request *req;
    LIST_ENTRY(fetch_dns_s) link; /* in reg->lookups while evdns holds it */
    int sync;                     /* inside evdns_getaddrinfo: keep the answer */
    int done, result;
    struct evutil_addrinfo *ai;
} fetch_dns_t;

/* A worker's moxy.http state (its slot of moxy_fetch_module). */
struct fetch_reg_s {
    moxy_worker_t *w;
    struct evdns_base *dns; /* created on the first name lookup */
    LIST_HEAD(, fetch_peer_s) peers;
    LIST_HEAD(, fetch_op_s) ops;
    LIST_HEAD(, fetch_dns_s) lookups;
    int nops;
    moxy_idle_group_t idle; /* the idle connections of all peers */
};

/* One call. */
struct fetch_op_s {
    fetch_reg_t *reg; /* NULL once the registry is freed */
    moxy_lua_task_t *task;
    LIST_ENTRY(fetch_op_s) link; /* in reg->ops */
    fetch_dns_t *lookup;         /* the name lookup under way, or NULL */

    char *host; /* as in the URL, lower-cased, no brackets */
    char *key;  /* "host:port", after "https:" (verified) or "https-unverified:" for TLS */
    int tls;    /* 0: plain HTTP; 1: TLS, the certificate verified; 2: not verified */
    size_t keylen;
    int port;
    struct sockaddr_storage addr[FETCH_ADDRS_MAX];
    socklen_t addrlen[FETCH_ADDRS_MAX];
    int naddrs, addr_i; /* addresses known, the one tried now */

    char *out; /* the request bytes (head and body) */
    size_t out_len, out_sent;
    double connect_timeout;
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
    unsigned connected : 1;
    unsigned tls_wait : 1;  /* TCP connected, the TLS handshake under way */
    unsigned reading : 1, writing : 1;
    unsigned got_bytes : 1; /* the origin sent something on this connection */
    unsigned write_failed : 1;

    char err[FETCH_ERR_MAX];
};

static void op_read_cb(evutil_socket_t fd, short what, void *arg);
static void op_write_cb(evutil_socket_t fd, short what, void *arg);
static const moxy_h1_resp_ops_t fetch_resp_ops;

/* --- the registry and its idle connections --- */

static fetch_reg_t *reg_get(moxy_worker_t *w)
{
    void **slot = moxy_worker_slot(w, &moxy_fetch_module);
    if (*slot) return *slot;
    fetch_reg_t *reg = calloc(1, sizeof(*reg));
    if (!reg) return NULL;
    reg->w = w;
    LIST_INIT(&reg->peers);
    LIST_INIT(&reg->ops);
    LIST_INIT(&reg->lookups);
    struct timeval tv = {FETCH_IDLE_SECS, 0};
    reg->idle.max = FETCH_IDLE_MAX;
    reg->idle.timeout = event_base_init_common_timeout(w->base, &tv);
    *slot = reg;
    return reg;
}

static fetch_peer_t *peer_find(fetch_reg_t *reg, const char *key, size_t keylen)
{
    fetch_peer_t *p;
    LIST_FOREACH(p, &reg->peers, link) {
        if (p->keylen == keylen && memcmp(p->key, key, keylen) == 0) return p;
    }
    return NULL;
}

/* c leaves its peer's list (the peer is freed when it has no more). */
static void idle_leave(fetch_idle_t *c)
{
    fetch_peer_t *p = c->peer;
    moxy_idle_remove(&c->idle);
    event_del(&c->ev);
    if (p->idle.n == 0) {
        LIST_REMOVE(p, link);
        free(p);
    }
}

static void idle_close(fetch_idle_t *c)
{
    idle_leave(c);
    moxy_conn_close(&c->conn);
    free(c);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    fetch_idle_t *c = arg;
    MOXY_UNUSED(fd);
    /* a TLS 1.3 session ticket is not a reason to close: wait on */
    if (!(what & EV_TIMEOUT) && !moxy_conn_idle_readable(&c->conn)) {
        event_add(&c->ev, c->peer->reg->idle.timeout);
        return;
    }
    idle_close(c); /* the origin closed or sent something, or idle too long */
}

/* Keep conn idle for key, or close it when the limits say no. */
static void idle_put(fetch_reg_t *reg, const char *key, size_t keylen, moxy_conn_t *conn)
{
    fetch_peer_t *p = peer_find(reg, key, keylen);
    fetch_idle_t *c = NULL;
    if (reg->w->draining || reg->idle.n >= reg->idle.max) goto err;
    if (!p) {
        p = calloc(1, sizeof(*p) + keylen + 1);
        if (!p) goto err;
        p->reg = reg;
        moxy_idle_list_init(&p->idle, &reg->idle, FETCH_IDLE_PER_PEER);
        p->keylen = keylen;
        memcpy(p->key, key, keylen);
        LIST_INSERT_HEAD(&reg->peers, p, link);
    }
    c = calloc(1, sizeof(*c));
    if (!c) goto err;
    c->peer = p;
    c->conn = *conn;
    event_assign(&c->ev, reg->w->base, conn->fd, EV_READ, idle_cb, c);
    c->idle.ev = &c->ev;
    if (moxy_idle_put(&p->idle, &c->idle) == MOXY_OK) return;
err:
    free(c);
    if (p && p->idle.n == 0) {
        LIST_REMOVE(p, link);
        free(p);
    }
    moxy_conn_close(conn);
}

/* An idle connection to key into *out (now the caller's): MOXY_OK, or
 * MOXY_DECLINED when there is none. */
static int idle_take(fetch_reg_t *reg, const char *key, size_t keylen, moxy_conn_t *out)
{
    fetch_peer_t *p = peer_find(reg, key, keylen);
    moxy_idle_t *idle = p ? moxy_idle_take(&p->idle) : NULL;
    if (!idle) return MOXY_DECLINED;
    fetch_idle_t *c = MOXY_IDLE_OWNER(idle, fetch_idle_t, idle);
    *out = c->conn;
    idle_leave(c);
    free(c);
    return MOXY_OK;
}

/* --- an op's life --- */

/* Close op's connection (not kept) and remove its socket events. */
static void op_close_conn(fetch_op_t *op)
{
    event_del(&op->rev);
    event_del(&op->wev);
    op->reading = op->writing = 0;
    moxy_conn_close(&op->conn);
    op->connected = 0;
}

/* Stop everything op waits for: socket, timer, name lookup. */
static void op_stop(fetch_op_t *op)
{
    op_close_conn(op);
    event_del(&op->timer);
    fetch_dns_t *d = op->lookup;
    if (d) {
        op->lookup = NULL;
        d->op = NULL; /* freed when evdns answers the cancel */
        evdns_getaddrinfo_cancel(d->req);
    }
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
        idle_put(reg, op->key, op->keylen, &op->conn);
        op->conn.fd = -1;
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

/* Go on with op's TLS handshake; when done, write the request. */
static void op_tls_step(fetch_op_t *op)
{
    short want = 0;
    const char *why = NULL;
    int kind;
    int rc = moxy_tls_handshake(&op->conn, &want, &why, &kind);
    if (rc == MOXY_ERROR) {
        snprintf(op->err, sizeof(op->err), "TLS handshake failed: %s", why);
        op_fail(op, op->err);
        return;
    }
    if (rc == MOXY_AGAIN) {
        if (want == EV_WRITE && !op->writing) event_add(&op->wev, NULL); /* the call's timeout bounds it */
        else if (want == EV_READ && op->writing) event_del(&op->wev);
        op->writing = want == EV_WRITE;
        return;
    }
    op->tls_wait = 0;
    if (op->writing) event_del(&op->wev);
    op->writing = 0;
    op_send(op);
}

/* op's connection is up: read, and write the request (after a TLS
 * handshake on a new connection of an https call). */
static void op_connected(fetch_op_t *op)
{
    op->connected = 1;
    event_del(&op->wev);
    op->writing = 0;
    event_add(&op->rev, NULL);
    op->reading = 1;
    if (op->tls && op->conn.t != &moxy_transport_tls) {
        struct in6_addr a6;
        struct in_addr a4;
        int literal = inet_pton(AF_INET, op->host, &a4) == 1 || inet_pton(AF_INET6, op->host, &a6) == 1;
        moxy_tls_client_t *cl = moxy_tls_client_default(op->tls == 1);
        if (!cl || moxy_tls_connect(&op->conn, cl, literal ? NULL : op->host, op->host) != MOXY_OK) {
            op_fail(op, "TLS could not be set up");
            return;
        }
        op->tls_wait = 1;
        op_tls_step(op);
        return;
    }
    op_send(op);
}

/* Use conn (connecting or connected) for op. */
static void op_attach(fetch_op_t *op, const moxy_conn_t *conn)
{
    op->conn = *conn;
    int fd = conn->fd;
    struct event_base *base = moxy_lua_task_worker(op->task)->base;
    event_assign(&op->rev, base, fd, EV_READ | EV_PERSIST, op_read_cb, op);
    event_assign(&op->wev, base, fd, EV_WRITE | EV_PERSIST, op_write_cb, op);
}

/* Connect to op's next address.  MOXY_OK: connecting or connected (events
 * armed); MOXY_ERROR: no address left (op->err says why, unless an earlier
 * failure set it). */
static int op_connect_next(fetch_op_t *op)
{
    for (; op->addr_i < op->naddrs; op->addr_i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&op->addr[op->addr_i];
        moxy_conn_t conn;
        int done;
        if (moxy_conn_connect(&conn, sa, op->addrlen[op->addr_i], &done) != MOXY_OK) {
            set_errno_err(op, "connect", errno);
            continue;
        }
        op_attach(op, &conn);
        if (done) {
            op_connected(op);
            return MOXY_OK;
        }
        struct timeval tv = moxy_timeval(op->connect_timeout);
        event_add(&op->wev, &tv);
        op->writing = 1;
        return MOXY_OK;
    }
    return MOXY_ERROR;
}

/* Keep up to FETCH_ADDRS_MAX addresses of ai for op, IPv4 first. */
static void op_set_addrs(fetch_op_t *op, const struct evutil_addrinfo *ai)
{
    op->naddrs = op->addr_i = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (const struct evutil_addrinfo *a = ai; a && op->naddrs < FETCH_ADDRS_MAX;
             a = a->ai_next) {
            int fam = pass == 0 ? AF_INET : AF_INET6;
            if (a->ai_family != fam || a->ai_addrlen > sizeof(op->addr[0])) continue;
            memcpy(&op->addr[op->naddrs], a->ai_addr, a->ai_addrlen);
            op->addrlen[op->naddrs] = (socklen_t)a->ai_addrlen;
            if (fam == AF_INET)
                ((struct sockaddr_in *)&op->addr[op->naddrs])->sin_port = htons((uint16_t)op->port);
            else
                ((struct sockaddr_in6 *)&op->addr[op->naddrs])->sin6_port =
                    htons((uint16_t)op->port);
            op->naddrs++;
        }
    }
}

/* op->host as an IP literal: fill op's address.  0 when it is a name. */
static int op_literal(fetch_op_t *op)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)&op->addr[0];
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&op->addr[0];
    memset(&op->addr[0], 0, sizeof(op->addr[0]));
    if (inet_pton(AF_INET, op->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)op->port);
        op->addrlen[0] = sizeof(*s4);
    } else if (inet_pton(AF_INET6, op->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)op->port);
        op->addrlen[0] = sizeof(*s6);
    } else {
        return 0;
    }
    op->naddrs = 1;
    op->addr_i = 0;
    return 1;
}

static int op_resolved(fetch_op_t *op, int result, struct evutil_addrinfo *ai);

static void dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
    fetch_dns_t *d = arg;
    if (d->sync) { /* evdns_getaddrinfo answered at once (/etc/hosts) */
        d->done = 1;
        d->result = result;
        d->ai = ai;
        return;
    }
    fetch_op_t *op = d->op;
    LIST_REMOVE(d, link);
    free(d);
    if (!op) { /* cancelled */
        if (ai) evutil_freeaddrinfo(ai);
        return;
    }
    op->lookup = NULL;
    if (op_resolved(op, result, ai) != MOXY_OK) op_fail(op, op->err);
}

/* The lookup of op's host ended: connect.  Frees ai. */
static int op_resolved(fetch_op_t *op, int result, struct evutil_addrinfo *ai)
{
    if (result != 0) {
        snprintf(op->err, sizeof(op->err), "resolve %s: %s", op->host, evutil_gai_strerror(result));
        if (ai) evutil_freeaddrinfo(ai);
        return MOXY_ERROR;
    }
    op_set_addrs(op, ai);
    if (ai) evutil_freeaddrinfo(ai);
    if (op->naddrs == 0) {
        snprintf(op->err, sizeof(op->err), "resolve %s: no address", op->host);
        return MOXY_ERROR;
    }
    return op_connect_next(op);
}

/* The worker's resolver: /etc/resolv.conf and /etc/hosts, made once. */
static struct evdns_base *reg_dns(fetch_reg_t *reg)
{
    if (reg->dns) return reg->dns;
    reg->dns = evdns_base_new(reg->w->base,
                              EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!reg->dns) { /* no usable resolv.conf: /etc/hosts still works */
        reg->dns = evdns_base_new(reg->w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (reg->dns) evdns_base_load_hosts(reg->dns, NULL);
    }
    return reg->dns;
}

/* Find op's addresses and connect.  MOXY_OK: connecting; MOXY_AGAIN: a
 * name lookup runs; MOXY_ERROR: op->err says why. */
static int op_open(fetch_op_t *op)
{
    if (op->naddrs > 0) {
        op->addr_i = 0;
        return op_connect_next(op);
    }
    if (op_literal(op)) return op_connect_next(op);
    struct evdns_base *dns = op->reg ? reg_dns(op->reg) : NULL;
    fetch_dns_t *d = dns ? calloc(1, sizeof(*d)) : NULL;
    if (!d) {
        snprintf(op->err, sizeof(op->err), "resolve %s: no resolver", op->host);
        return MOXY_ERROR;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    d->reg = op->reg;
    d->op = op;
    d->sync = 1;
    d->req = evdns_getaddrinfo(dns, op->host, NULL, &hints, dns_cb, d);
    d->sync = 0;
    if (d->done || !d->req) {
        int result = d->done ? d->result : EVUTIL_EAI_FAIL;
        struct evutil_addrinfo *ai = d->ai;
        free(d);
        return op_resolved(op, result, ai);
    }
    LIST_INSERT_HEAD(&op->reg->lookups, d, link);
    op->lookup = d;
    return MOXY_AGAIN;
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
    if (op->tls_wait) {
        op_tls_step(op);
        return;
    }
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
    fetch_op_t *op = arg;
    MOXY_UNUSED(fd);
    if (op->tls_wait) {
        op_tls_step(op);
        return;
    }
    if (op->connected) {
        op_send(op);
        return;
    }
    if (what & EV_TIMEOUT) {
        snprintf(op->err, sizeof(op->err), "timeout");
    } else {
        if (moxy_conn_connected(&op->conn) == MOXY_OK) {
            op_connected(op);
            return;
        }
        set_errno_err(op, "connect", errno);
    }
    op_close_conn(op);
    op->addr_i++;
    if (op_connect_next(op) != MOXY_OK) op_fail(op, op->err);
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
    op->connect_timeout = connect_timeout > 0 ? connect_timeout : conf->timeouts.connect;
    if (op->connect_timeout > 1e7) op->connect_timeout = 1e7;
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
    if (op->keepalive && idle_take(reg, op->key, op->keylen, &idle) == MOXY_OK) {
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
        fetch_dns_t *d = op->lookup;
        if (d) d->op = NULL;
        op->lookup = NULL; /* no cancel: evdns_base_free drops the lookup */
        op_stop(op);
        LIST_REMOVE(op, link);
        op->reg = NULL;
    }
    /* lookups evdns still holds: it will never answer them now */
    fetch_dns_t *d;
    while ((d = LIST_FIRST(&reg->lookups))) {
        LIST_REMOVE(d, link);
        free(d);
    }
    fetch_peer_t *p;
    while ((p = LIST_FIRST(&reg->peers)))
        idle_close(MOXY_IDLE_OWNER(TAILQ_FIRST(&p->idle.conns), fetch_idle_t, idle));
    if (reg->dns) evdns_base_free(reg->dns, 0);
    free(reg);
    *moxy_worker_slot(w, &moxy_fetch_module) = NULL;
}

moxy_module_t moxy_fetch_module = {
    .name = "moxy.http",
    .worker_free = moxy_fetch_free_worker,
};
