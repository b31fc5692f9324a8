/*
 * http_fuzz.h -- what the HTTP/1 harnesses (http_request_fuzz.c,
 * http_response_fuzz.c) share: a real moxy worker run in-process, an origin
 * the harness owns, the client end of each connection, and strict llhttp
 * parsers that check what crosses each side.  (make does not track this
 * header: touch the harnesses after changing it.)
 *
 * Once per process: a configuration (one listener that is never opened,
 * one pool "app" whose only server is the harness's origin on 127.0.0.1,
 * no scripts, short timeouts, trusted_proxies 192.0.2.0/24) is loaded by
 * moxy_gen_load as main.c does, and moxy_worker_new builds worker 0 for it
 * (event base, Lua VM, pools) without starting its thread: the harness
 * runs the worker's event loop itself.
 *
 * Per input: a socketpair's end goes to moxy_client_accept (as from
 * 192.0.2.10:40000, a trusted proxy); the harness writes the client's bytes
 * to the other end and runs the loop in non-blocking iterations until
 * nothing moves (quiet()), then closes each side in turn the same way, so
 * that every connection ends and nothing carries over to the next input.
 * The origin accepts on its listening socket (an event on the worker's
 * base), parses what moxy forwards with a strict llhttp and answers.
 */
#ifndef MOXY_HTTP_FUZZ_H
#define MOXY_HTTP_FUZZ_H

#include "fuzz.h"
#include "api/ffi.h"
#include "ops/generation.h"
#include "http/http.h"
#include "http/request.h"
#include "http1/http1.h"
#include "base/log.h"
#include "proxy/upstream.h"
#include "proxy/http_fetch.h"
#include "base/shared_dict.h"
#include "http/lua_bridge.h"
#include "ops/workers.h"
#include "ops/modules.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* main.c's (not linked): worker.c calls it when a worker thread ends. */
void moxy_main_worker_exited(void)
{
}

/* The FFI exports that moxy's Lua modules reach through ffi.C (txn.lua
 * checks the ABI when the worker's VM starts): a reference to one symbol
 * of each object file that has some links it from libmoxy.a, and -Wl,-E
 * exports them all. */
__attribute__((used)) static const void *const ffi_objects[] = {
    (const void *)moxy_ffi_abi_version, (const void *)moxy_ffi_geo_client, (const void *)moxy_ffi_cache_op,
    (const void *)moxy_ffi_http_start,  (const void *)moxy_ffi_sleep,      (const void *)moxy_ffi_shdict_find,
    (const void *)moxy_ffi_test_free,   (const void *)moxy_ffi_upstream_npeers,
};

/* The listener the harness's connections come on (a harness may define
 * its own before including this file). */
#ifndef HTTP_FUZZ_LISTEN
#define HTTP_FUZZ_LISTEN "\"127.0.0.1:1\""
#endif

/* Text a harness adds to the pool "app"'s table, after its last key (so it
 * starts with a comma), e.g. ", protocol = \"h2\"" (a harness may define
 * it before including this file); by default nothing. */
#ifndef HTTP_FUZZ_POOL_EXTRA
#define HTTP_FUZZ_POOL_EXTRA ""
#endif

/* Invariants a run leaves out: HTTP_FUZZ_SKIP="id,id" (each check names
 * its id), for a finding not fixed yet, so that a run goes on past it; by
 * default none: every check holds. */
#define HTTP_FUZZ_SKIP_DEFAULT ""
static inline int skipped(const char *id)
{
    const char *s = getenv("HTTP_FUZZ_SKIP");
    if (!s) s = HTTP_FUZZ_SKIP_DEFAULT;
    size_t n = strlen(id);
    while (s && *s) {
        const char *e = strchr(s, ',');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l == n && memcmp(s, id, n) == 0) return 1;
        s = e ? e + 1 : NULL;
    }
    return 0;
}

/* --- messages, and a strict llhttp that collects them --- */

typedef struct {
    char *name, *value;
    size_t nlen, vlen;
    int trailer; /* in the trailer section of a chunked body */
} hf_t;

typedef struct {
    int method, status, major, minor;
    int complete;   /* on_message_complete ran */
    int upgrade;    /* llhttp's upgrade flag at the end of the head */
    int head_done;
    char *url;
    size_t url_len;
    hf_t *h;
    int nh, caph;
    char *body;
    size_t body_len;
    char *pn, *pv; /* the header being assembled */
    size_t pnl, pvl;
} msg_t;

typedef struct mparser_s mparser_t;
struct mparser_s {
    llhttp_t p;
    llhttp_settings_t s;
    msg_t *m; /* the messages parsed so far */
    int n, cap;
    int error;           /* llhttp's error (not HPE_OK / paused) */
    const char *why;
    int tunnel;          /* a 101 or CONNECT: the rest is not HTTP */
    /* responses: 1 when message m's body is to be skipped (HEAD, 1xx) */
    int (*skip_body)(mparser_t *mp, msg_t *m);
    void (*on_head)(mparser_t *mp, msg_t *m);     /* a message's head is in */
    void (*on_complete)(mparser_t *mp, msg_t *m); /* a message is complete */
    void *ctx;
};

static void append(char **buf, size_t *len, const char *at, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    if (!*buf) abort();
    memcpy(*buf + *len, at, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static msg_t *mp_cur(mparser_t *mp)
{
    return mp->n ? &mp->m[mp->n - 1] : NULL;
}

static int mp_begin(llhttp_t *p)
{
    mparser_t *mp = p->data;
    if (mp->n == mp->cap) {
        mp->cap = mp->cap ? mp->cap * 2 : 4;
        mp->m = realloc(mp->m, (size_t)mp->cap * sizeof(*mp->m));
        if (!mp->m) abort();
    }
    memset(&mp->m[mp->n++], 0, sizeof(msg_t));
    return 0;
}

static int mp_url(llhttp_t *p, const char *at, size_t n)
{
    msg_t *m = mp_cur(p->data);
    append(&m->url, &m->url_len, at, n);
    return 0;
}

static int mp_field(llhttp_t *p, const char *at, size_t n)
{
    msg_t *m = mp_cur(p->data);
    append(&m->pn, &m->pnl, at, n);
    return 0;
}

static int mp_value(llhttp_t *p, const char *at, size_t n)
{
    msg_t *m = mp_cur(p->data);
    append(&m->pv, &m->pvl, at, n);
    return 0;
}

static int mp_value_complete(llhttp_t *p)
{
    msg_t *m = mp_cur(p->data);
    if (m->nh == m->caph) {
        m->caph = m->caph ? m->caph * 2 : 8;
        m->h = realloc(m->h, (size_t)m->caph * sizeof(*m->h));
        if (!m->h) abort();
    }
    hf_t *h = &m->h[m->nh++];
    h->name = m->pn ? m->pn : strdup("");
    h->nlen = m->pnl;
    h->value = m->pv ? m->pv : strdup("");
    h->vlen = m->pvl;
    h->trailer = m->head_done;
    /* llhttp keeps trailing spaces of a value; moxy drops them */
    while (h->vlen && (h->value[h->vlen - 1] == ' ' || h->value[h->vlen - 1] == '\t')) h->value[--h->vlen] = '\0';
    m->pn = m->pv = NULL;
    m->pnl = m->pvl = 0;
    return 0;
}

static int mp_headers_complete(llhttp_t *p)
{
    mparser_t *mp = p->data;
    msg_t *m = mp_cur(mp);
    if (m->head_done) return 0; /* trailers */
    m->head_done = 1;
    m->method = llhttp_get_method(p);
    m->status = llhttp_get_status_code(p);
    m->major = llhttp_get_http_major(p);
    m->minor = llhttp_get_http_minor(p);
    m->upgrade = llhttp_get_upgrade(p);
    /* a 101 without Upgrade and Connection: upgrade is no switch to llhttp
     * (RFC 9110 15.2.2: a 101 has Upgrade); moxy tunnels after it all the
     * same (101-no-upgrade: take it as the switch) */
    if (mp->on_head) mp->on_head(mp, m);
    if (p->type == HTTP_RESPONSE && m->status == 101 && !m->upgrade && skipped("101-no-upgrade")) {
        mp->tunnel = 1;
        return HPE_PAUSED;
    }
    return mp->skip_body && mp->skip_body(mp, m) ? 1 : 0;
}

static int mp_body(llhttp_t *p, const char *at, size_t n)
{
    msg_t *m = mp_cur(p->data);
    append(&m->body, &m->body_len, at, n);
    return 0;
}

static int mp_complete(llhttp_t *p)
{
    mparser_t *mp = p->data;
    msg_t *m = mp_cur(mp);
    m->complete = 1;
    if (mp->on_complete) mp->on_complete(mp, m);
    return 0;
}

static void mp_init(mparser_t *mp, llhttp_type_t type)
{
    memset(mp, 0, sizeof(*mp));
    llhttp_settings_init(&mp->s);
    mp->s.on_message_begin = mp_begin;
    mp->s.on_url = mp_url;
    mp->s.on_header_field = mp_field;
    mp->s.on_header_value = mp_value;
    mp->s.on_header_value_complete = mp_value_complete;
    mp->s.on_headers_complete = mp_headers_complete;
    mp->s.on_body = mp_body;
    mp->s.on_message_complete = mp_complete;
    llhttp_init(&mp->p, type, &mp->s); /* strict: no lenient flag */
    mp->p.data = mp;
}

/* Feed n bytes.  An upgrade request goes on as HTTP (the harness's origin
 * never switches); a 101 or CONNECT response ends the HTTP part. */
static void mp_feed(mparser_t *mp, const char *data, size_t n)
{
    while (n && !mp->error && !mp->tunnel) {
        llhttp_errno_t err = llhttp_execute(&mp->p, data, n);
        if (err == HPE_OK) return;
        if (err == HPE_PAUSED && mp->tunnel) return;
        if (err == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&mp->p);
            if (mp->p.type == HTTP_RESPONSE) {
                mp->tunnel = 1;
                return;
            }
            llhttp_resume_after_upgrade(&mp->p);
            n -= (size_t)(pos - data);
            data = pos;
            continue;
        }
        mp->error = err;
        mp->why = llhttp_get_error_reason(&mp->p);
        if (!mp->why) mp->why = llhttp_errno_name(err);
    }
}

/* The end of the bytes: a body delimited by close ends; a message cut in
 * the middle stays incomplete (m->complete 0). */
static void mp_finish(mparser_t *mp)
{
    if (mp->error || mp->tunnel) return;
    llhttp_errno_t err = llhttp_finish(&mp->p);
    if (err != HPE_OK && err != HPE_INVALID_EOF_STATE) {
        mp->error = err;
        mp->why = llhttp_errno_name(err);
    }
}

static void mp_free(mparser_t *mp)
{
    for (int i = 0; i < mp->n; i++) {
        msg_t *m = &mp->m[i];
        for (int j = 0; j < m->nh; j++) {
            free(m->h[j].name);
            free(m->h[j].value);
        }
        free(m->h);
        free(m->url);
        free(m->body);
        free(m->pn);
        free(m->pv);
    }
    free(mp->m);
    memset(mp, 0, sizeof(*mp));
}

/* fuzz_ieq against a NUL-terminated b. */
static int ieq(const char *a, size_t an, const char *b)
{
    return fuzz_ieq(a, an, b, strlen(b));
}

/* The number of header fields (not trailers) of m called name, and the
 * first one's index. */
static inline int count_named(const msg_t *m, const char *name, int *first)
{
    int n = 0;
    for (int i = 0; i < m->nh; i++)
        if (!m->h[i].trailer && ieq(m->h[i].name, m->h[i].nlen, name)) {
            if (!n && first) *first = i;
            n++;
        }
    return n;
}

/* 1 when a Connection header of m names token (a comma-list element). */
static inline int connection_names(const msg_t *m, const char *token, size_t tlen)
{
    for (int i = 0; i < m->nh; i++) {
        if (m->h[i].trailer || !ieq(m->h[i].name, m->h[i].nlen, "connection")) continue;
        const char *v = m->h[i].value;
        size_t n = m->h[i].vlen, j = 0;
        while (j <= n) {
            size_t s = j;
            while (j < n && v[j] != ',') j++;
            size_t a = s, b = j;
            while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
            if (b - a == tlen && b > a) {
                char tmp[256];
                if (tlen < sizeof(tmp)) {
                    memcpy(tmp, token, tlen);
                    tmp[tlen] = '\0';
                    if (ieq(v + a, b - a, tmp)) return 1;
                }
            }
            j++;
        }
    }
    return 0;
}

/* 1 when a field called name has no place in trailers (RFC 9110 6.5.1:
 * framing, routing, hop-by-hop and forwarding fields; a recipient that
 * merges trailers into the header section -- or llhttp, which takes a
 * Transfer-Encoding there as the message's -- would act on them). */
static inline int trailer_banned(const char *name, size_t n)
{
    static const char *const banned[] = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                                         "te", "trailer", "upgrade", "expect", "x-forwarded-for", "x-forwarded-proto",
                                         "x-forwarded-host", "forwarded", "via", "x-request-id"};
    for (size_t b = 0; b < MOXY_ARRAY_LEN(banned); b++)
        if (ieq(name, n, banned[b])) return 1;
    return n >= 6 && ieq(name, 6, "proxy-");
}

/* 1 when a message of mp has such a field in its trailers. */
static inline int trailers_banned(const mparser_t *mp)
{
    for (int i = 0; i < mp->n; i++)
        for (int j = 0; j < mp->m[i].nh; j++)
            if (mp->m[i].h[j].trailer && trailer_banned(mp->m[i].h[j].name, mp->m[i].h[j].nlen)) return 1;
    return 0;
}

/* 1 when a field called name is on the default mask list (config.lua's
 * MASK_HEADERS): moxy removes the origin's from what the client gets. */
static inline int mask_listed(const char *name, size_t n)
{
    static const char *const listed[] = {"server", "x-powered-by", "x-aspnet-version", "x-aspnetmvc-version",
                                         "x-generator", "x-backend-server", "x-debug-token", "x-debug-token-link"};
    for (size_t b = 0; b < MOXY_ARRAY_LEN(listed); b++)
        if (ieq(name, n, listed[b])) return 1;
    return 0;
}

/* --- findings --- */

static const uint8_t *cur_input;
static size_t cur_size;

static void dump_state(void);


/* An invariant failed: say which, with what each side saw, and abort
 * (libFuzzer saves the input as a crash). */
__attribute__((noreturn, format(printf, 1, 2))) static void finding(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\nHTTP FUZZ FINDING: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    dump_state();
    abort();
}

static void dump(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "--- %s (%zu bytes) ---\n", what, n);
    for (size_t i = 0; i < n && i < 4096; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\n') fputs("\\n\n", stderr);
        else if (ch == '\r') fputs("\\r", stderr);
        else if (ch < 0x20 || ch >= 0x7f) fprintf(stderr, "\\x%02x", ch);
        else fputc(ch, stderr);
    }
    fputs("\n--- end ---\n", stderr);
}

/* --- the origin --- */

typedef struct oconn_s {
    int fd;
    struct event ev;
    struct evbuffer *out; /* what it still has to write */
    struct evbuffer *raw; /* what it received */
    int writing, eof, closed;
    mparser_t mp;
    int index;            /* accept order */
    struct oconn_s *next;
} oconn_t;

static moxy_worker_t *W;
static int origin_fd = -1, origin_port;
static struct event origin_ev;
static oconn_t *oconns;
static int noconns;
static int client_fd = -1; /* the harness's end of the client connection */
static struct event client_ev;
static struct evbuffer *client_rx; /* what moxy sent the client */
static int client_eof;
static unsigned long long moved; /* bytes and events the harness saw: progress */

/* The origin's answer to a complete request m on o (each harness's). */
static void origin_on_request(oconn_t *o, msg_t *m);
/* A connection accepted (each harness's). */
static void origin_on_accept(oconn_t *o);

static void oconn_flush(oconn_t *o);

static void oconn_cb(evutil_socket_t fd, short what, void *arg)
{
    oconn_t *o = arg;
    if (what & EV_WRITE) {
        oconn_flush(o);
        return;
    }
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            moved += (size_t)n;
            evbuffer_add(o->raw, buf, (size_t)n);
            mp_feed(&o->mp, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        /* moxy closed (or reset) its side */
        o->eof = 1;
        moved++;
        event_del(&o->ev);
        mp_finish(&o->mp);
        return;
    }
}

static void oconn_flush(oconn_t *o)
{
    while (evbuffer_get_length(o->out) > 0) {
        int n = evbuffer_write(o->out, o->fd);
        if (n > 0) {
            moved += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        evbuffer_drain(o->out, evbuffer_get_length(o->out)); /* moxy went away */
        break;
    }
    if (evbuffer_get_length(o->out) > 0) {
        if (!o->writing) {
            o->writing = 1;
            event_del(&o->ev);
            event_assign(&o->ev, W->base, o->fd, EV_READ | EV_WRITE | EV_PERSIST, oconn_cb, o);
            event_add(&o->ev, NULL);
        }
    } else if (o->writing) {
        o->writing = 0;
        event_del(&o->ev);
        event_assign(&o->ev, W->base, o->fd, EV_READ | EV_PERSIST, oconn_cb, o);
        if (!o->eof) event_add(&o->ev, NULL);
    }
}

static void origin_send(oconn_t *o, const void *p, size_t n)
{
    evbuffer_add(o->out, p, n);
    oconn_flush(o);
}

static void oconn_complete(mparser_t *mp, msg_t *m)
{
    origin_on_request(mp->ctx, m);
}

/* The origin's look at a request head (each harness's). */
static void origin_on_head(oconn_t *o, msg_t *m);

static void oconn_head(mparser_t *mp, msg_t *m)
{
    origin_on_head(mp->ctx, m);
}

static void origin_accept_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) return;
        oconn_t *o = calloc(1, sizeof(*o));
        o->fd = c;
        o->out = evbuffer_new();
        o->raw = evbuffer_new();
        o->index = noconns++;
        mp_init(&o->mp, HTTP_REQUEST);
        o->mp.ctx = o;
        o->mp.on_complete = oconn_complete;
        o->mp.on_head = oconn_head;
        o->next = oconns;
        oconns = o;
        event_assign(&o->ev, W->base, c, EV_READ | EV_PERSIST, oconn_cb, o);
        event_add(&o->ev, NULL);
        moved++;
        origin_on_accept(o);
    }
}

/* The origin's connections in accept order (oconns is newest first). */
static int oconns_sorted(oconn_t **out, int max)
{
    int n = 0;
    for (oconn_t *o = oconns; o && n < max; o = o->next) out[n++] = o;
    for (int i = 0; i < n / 2; i++) {
        oconn_t *t = out[i];
        out[i] = out[n - 1 - i];
        out[n - 1 - i] = t;
    }
    return n;
}

/* --- the client's end --- */

static void client_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            moved += (size_t)n;
            evbuffer_add(client_rx, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        client_eof = 1;
        moved++;
        event_del(&client_ev);
        return;
    }
}

/* --- running the loop --- */

static int readable(int fd)
{
    int n = 0;
    return fd >= 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* Something is on its way to the harness: bytes waiting in one of its
 * sockets, a connection to accept. */
static int pending(void)
{
    if (readable(client_fd)) return 1;
    struct pollfd pf = {origin_fd, POLLIN, 0};
    if (poll(&pf, 1, 0) > 0) return 1;
    for (oconn_t *o = oconns; o; o = o->next)
        if (!o->closed && (readable(o->fd) || evbuffer_get_length(o->out))) return 1;
    /* not moxy's sockets: it leaves bytes in them on purpose (back-pressure,
     * a pipelined request waiting for the current response) */
    return 0;
}

/* What moxy's state looks like, to tell whether the last iteration did anything. */
static unsigned long long signature(void)
{
    unsigned long long s = moved * 1000003u + (unsigned long long)W->nconns * 7919u + (unsigned)noconns;
    moxy_session_t *sess;
    LIST_FOREACH(sess, &W->sessions, link) {
        s = s * 31 + (unsigned)sess->protocol;
        if (sess->protocol != MOXY_PROTO_HTTP1) continue; /* HTTP/2: its bytes count in moved */
        moxy_client_t *c = (moxy_client_t *)sess;
        s = s * 31 + (unsigned)c->state;
        s = s * 31 + (c->in ? evbuffer_get_length(c->in) : 7777);
        s = s * 31 + (c->out ? evbuffer_get_length(c->out) : 7777);
        s = s * 31 + (uintptr_t)c->req;
        if (c->req) {
            s = s * 31 + (unsigned)c->req->resp_state + (uintptr_t)c->req->up * 3;
            if (c->req->up) s = s * 31 + evbuffer_get_length(c->req->up->in) + evbuffer_get_length(c->req->up->out);
        }
    }
    for (int i = 0; W->g && i < W->g->conf->nupstreams; i++) s = s * 31 + (unsigned)W->g->pools[i].idle.n;
    return s;
}

/* Run the worker's loop until nothing moves (or a bound: a finding of its own). */
static void quiet(const char *phase)
{
    unsigned long long last = 0;
    int still = 0;
    for (int i = 0; i < 20000; i++) {
        event_base_loop(W->base, EVLOOP_NONBLOCK);
        unsigned long long s = signature();
        if (s == last && !pending()) {
            if (++still >= 3) return;
        } else {
            still = 0;
        }
        last = s;
    }
    finding("%s: the worker's loop did not settle in 20000 iterations (a busy loop?)", phase);
}

/* --- setup --- */

static const char CONF[] =
    "return {\n"
    "  workers = 1,\n"
    "  pid_file = false,\n"
    "  listen = " HTTP_FUZZ_LISTEN ",\n" /* never opened: connections are handed over */
    "  trusted_proxies = { \"192.0.2.0/24\" },\n"
    "  upstreams = { app = { servers = { \"127.0.0.1:%d\" }, keepalive = 4, keepalive_timeout = \"5s\",\n"
    "                        tries = 1, passive = false" HTTP_FUZZ_POOL_EXTRA " } },\n"
    "  limits = { header_bytes = \"8k\", headers = 64, uri_bytes = \"4k\", body_bytes = \"64k\" },\n"
    "  timeouts = { client_header = \"2s\", client_body = \"2s\", client_send = \"2s\", connect = \"1s\",\n"
    "               upstream = \"2s\", keepalive = \"2s\", drain = \"1s\" },\n"
    "  log = { error = \"/dev/null\", level = \"error\" },\n"
    "}\n";

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* the origin's listening socket */
    origin_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    if (origin_fd < 0 || bind(origin_fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(origin_fd, 64) != 0 ||
        getsockname(origin_fd, (struct sockaddr *)&sin, &len) != 0) {
        perror("http fuzz: origin socket");
        abort();
    }
    origin_port = ntohs(sin.sin_port);
    /* the configuration, loaded as main.c loads it */
    char dir[] = "/tmp/moxy-http-fuzz-XXXXXX", path[128];
    if (!mkdtemp(dir)) abort();
    snprintf(path, sizeof(path), "%s/moxy.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fprintf(f, CONF, origin_port);
    fclose(f);
    const char *dbg = getenv("HTTP_FUZZ_LOG");
    moxy_modules_setup();
    moxy_gen_t *gen = moxy_gen_load(path, NULL, 1, stderr);
    unlink(path);
    rmdir(dir);
    if (!gen) abort();
    moxy_log_open_error(dbg ? "stderr" : "/dev/null", dbg ? MOXY_LOG_DEBUG : MOXY_LOG_ERR);
    W = moxy_worker_new(gen, 0);
    moxy_gen_release(gen); /* the worker's generation holds it */
    if (!W || W->error[0]) {
        fprintf(stderr, "http fuzz: worker: %s\n", W ? W->error : "out of memory");
        abort();
    }
    event_assign(&origin_ev, W->base, origin_fd, EV_READ | EV_PERSIST, origin_accept_cb, NULL);
    event_add(&origin_ev, NULL);
    client_rx = evbuffer_new();
}

/* Hand a new connection to moxy, as accepted from a trusted proxy. */
static void client_open(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) abort();
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    inet_pton(AF_INET, "192.0.2.10", &peer.sin_addr);
    client_fd = sv[1];
    client_eof = 0;
    evbuffer_drain(client_rx, evbuffer_get_length(client_rx));
    event_assign(&client_ev, W->base, client_fd, EV_READ | EV_PERSIST, client_cb, NULL);
    event_add(&client_ev, NULL);
    moxy_client_accept(W, sv[0], (struct sockaddr *)&peer, 0);
}

static void client_write(const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(client_fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EAGAIN) { /* moxy reads as the loop runs */
            event_base_loop(W->base, EVLOOP_NONBLOCK);
            continue;
        }
        return; /* moxy closed: the rest is not read */
    }
}

/* Close everything of this input, each side in turn; afterwards the worker
 * holds no client connection and no origin connection. */
static void teardown(void)
{
    shutdown(client_fd, SHUT_WR);
    quiet("client closed its sending side");
    for (oconn_t *o = oconns; o; o = o->next) shutdown(o->fd, SHUT_WR);
    quiet("origin closed its sending side");
    for (oconn_t *o = oconns; o; o = o->next) {
        event_del(&o->ev);
        close(o->fd);
        o->closed = 1;
    }
    event_del(&client_ev);
    close(client_fd);
    client_fd = -1;
    quiet("both peers closed");
    if (!LIST_EMPTY(&W->sessions)) {
        moxy_session_t *s = LIST_FIRST(&W->sessions);
        finding("a client connection (protocol %d) is still open after both its peers closed (state %d)",
                s->protocol, s->protocol == MOXY_PROTO_HTTP1 ? (int)((moxy_client_t *)s)->state : -1);
    }
    moxy_upstream_close_idle(W);
    if (W->nconns != 0) finding("the worker counts %d connections after all closed", (int)W->nconns);
}

static void origin_reset(void)
{
    while (oconns) {
        oconn_t *o = oconns;
        oconns = o->next;
        evbuffer_free(o->out);
        evbuffer_free(o->raw);
        mp_free(&o->mp);
        free(o);
    }
    noconns = 0;
}

/* --- what the client received --- */

/* The methods of the requests the client sent, in order (HEAD responses
 * have no body); past them, GET. */
static int *req_methods;
static int nreq_methods;

static int client_skip_body(mparser_t *mp, msg_t *m)
{
    /* RFC 9110 15.2: no content (1xx-body: as llhttp 8 reads them, by their framing) */
    if (m->status >= 100 && m->status < 200 && m->status != 101) return !skipped("1xx-body");
    if (m->status == 204 || m->status == 304) return 1; /* RFC 9110 15.3.5, 15.4.5 */
    int finals = 0;
    for (int i = 0; i < mp->n - 1; i++)
        if (mp->m[i].status >= 200 || mp->m[i].status == 101) finals++;
    if (finals >= nreq_methods || req_methods[finals] != HTTP_HEAD) return 0;
    /* A HEAD whose head moxy refused (an error page, then close: moxy never
     * knew the method) may get its page's body: the connection ends after
     * it either way, nothing can follow it. */
    int via = 0, close = 0;
    for (int i = 0; i < m->nh; i++) {
        if (ieq(m->h[i].name, m->h[i].nlen, "via")) via = 1;
        if (ieq(m->h[i].name, m->h[i].nlen, "connection") && ieq(m->h[i].value, m->h[i].vlen, "close")) close = 1;
    }
    return !(m->status >= 400 && !via && close);
}

/* Parse what the client received as responses (strict llhttp; 1xx without
 * content); at most one final response per request of the nreq sent; no
 * field of the default mask list in any head or trailers (masked: the
 * harnesses run no script that could set one).  Fills rp (the caller frees
 * it with mp_free). */
__attribute__((unused)) static void check_client_responses(mparser_t *rp, int nreq)
{
    mp_init(rp, HTTP_RESPONSE);
    rp->skip_body = client_skip_body;
    size_t n = evbuffer_get_length(client_rx);
    mp_feed(rp, (const char *)evbuffer_pullup(client_rx, -1), n);
    if (client_eof) mp_finish(rp);
    if (!skipped("trailers") && trailers_banned(rp)) finding("a response reached the client with a framing, routing or hop-by-hop field in its trailers");
    if (rp->error) finding("the client received bytes that are not well-framed responses: %s", rp->why);
    int finals = 0;
    for (int i = 0; i < rp->n; i++) {
        const msg_t *m = &rp->m[i];
        if (!m->head_done) continue;
        if (m->status >= 200 || m->status == 101) finals++;
        if (m->status < 200 && m->status != 101 && m->body_len && !skipped("1xx-body"))
            finding("an interim response with content");
        if (i < rp->n - 1 && !m->complete) finding("response %d is not complete but another follows", i);
        for (int j = 0; j < m->nh && !skipped("masked"); j++)
            if (mask_listed(m->h[j].name, m->h[j].nlen))
                finding("response %d: the origin's %.*s reached the client (mask.headers)", i, (int)m->h[j].nlen,
                        m->h[j].name);
    }
    if (finals > nreq) finding("%d final responses to %d requests", finals, nreq);
}

/* What each side saw, for a finding's report. */
static void dump_state(void)
{
    dump("the input", (const char *)cur_input, cur_size);
    oconn_t *list[64];
    int n = oconns_sorted(list, 64);
    for (int i = 0; i < n; i++) {
        char what[96];
        snprintf(what, sizeof(what), "origin connection %d received (parse: %s)", i,
                 list[i]->mp.error ? list[i]->mp.why : "ok");
        dump(what, (const char *)evbuffer_pullup(list[i]->raw, -1), evbuffer_get_length(list[i]->raw));
    }
    dump("the client received", (const char *)evbuffer_pullup(client_rx, -1), evbuffer_get_length(client_rx));
}

#endif
