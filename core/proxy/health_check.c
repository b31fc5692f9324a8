/*
 * health_check.c -- active health checks of upstream peers (see
 * health_check.h), all on the main thread's event loop.
 *
 * Each checked peer has one timer.  While no check runs it waits for the
 * next round; while a check runs it is the check's deadline (health.timeout),
 * so a check never overlaps the next: a round that runs past the interval
 * starts the next one as soon as it ends.  Rounds are due every interval
 * from the first one (no drift), and the peers' first rounds are spread a
 * millisecond apart so a large pool does not connect to everything at once.
 *
 * A round: copy the peer's address (an unresolved name skips the round
 * without counting it), connect without blocking, then for an HTTP check
 * send the request built at start ("Connection: close") and parse the
 * response (http1/origin_codec.h, with the proxy's limits on its head)
 * until it is complete or the peer closes, keeping up
 * to HEALTH_BODY_MAX bytes of body when health.body is set.  It passes when
 * the status is in health.statuses and the body matches; a TCP check passes
 * when the connect does.  The connection is closed after every round.
 *
 * A pool with protocol = "h2" is checked over HTTP/2 (TLS with ALPN h2, or
 * prior knowledge): each round makes an nghttp2 client session whose first
 * bytes (preface, SETTINGS, the request's HEADERS) are the request sent;
 * what comes back is fed to it, the status and DATA of stream 1 judged as
 * over HTTP/1.
 *
 * Nothing is allocated per round but the body kept for the pattern and the
 * read buffer's contents, freed when the round ends; the rest lives from moxy_health_start to
 * moxy_health_stop.
 */
#include "http/lifecycle.h"
#include "proxy/health_check.h"
#include "http1/origin_codec.h"
#include "net/tls.h"
#include "net/conn.h"
#include "base/log.h"
#include "proxy/upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEALTH_BODY_MAX 65536      /* bytes of body kept for the pattern */
#define HEALTH_READ 16384          /* bytes read per readable event */
#define HEALTH_STAGGER_US 1000     /* first rounds of successive peers start this far apart */
#define HEALTH_MATCH_LIMIT 1000000 /* PCRE2 limits, as moxy.re's defaults */
#define HEALTH_DEPTH_LIMIT 10000

/* Where a peer's round is. */
enum { HC_IDLE = 0, HC_CONNECTING, HC_TLS, HC_SENDING, HC_READING };

/* What every peer of a checked pool shares. */
typedef struct {
    const moxy_upstream_conf_t *conf;
    pcre2_code *re;            /* health.body compiled, or NULL */
    pcre2_match_data *md;      /* for re */
    pcre2_match_context *mctx; /* re's match limits */
    long long interval_us;
    struct timeval timeout;
} health_pool_t;

/* One checked peer. */
typedef struct {
    health_pool_t *pool;
    moxy_peer_t *peer;
    int server;           /* its index in the pool's servers */
    char *req; /* the HTTP request (NULL for a TCP check; HTTP/2: made per round) */
    size_t req_len, sent;
    struct event timer;   /* idle: the next round; during a round: its deadline */
    struct event io;      /* the round's socket (assigned per round) */
    moxy_conn_t conn;     /* the round's connection; fd -1 between rounds */
    int phase;            /* HC_* */
    long long due_us;     /* when the current (or last) round was due */
    long long started_ms; /* moxy_mono_ms() when the current (or last) round started */
    struct evbuffer *in;    /* read, not parsed yet */
    moxy_h1_resp_t resp;    /* the response parser */
    unsigned got_bytes : 1; /* the peer sent something this round */
    unsigned h2_done : 1;   /* HTTP/2: stream 1 ended (resp.status set, or why) */
    nghttp2_session *h2;    /* HTTP/2: this round's session, or NULL */
    char *body;             /* up to HEALTH_BODY_MAX bytes, when pool->re */
    size_t blen, bcap;
    char why[96]; /* a failure's reason (as long as the peer's check_error) */
} health_peer_t;

static struct {
    struct event_base *base;
    size_t max_head;     /* limits.header_bytes and limits.headers, as for the proxy */
    uint32_t max_fields;
    health_pool_t *pools;
    int npools;
    health_peer_t *peers;
    int npeers;
} health;

static void round_start(health_peer_t *hp);
static void h2_read(health_peer_t *hp, int eof);
static void request_go(health_peer_t *hp);

static struct timeval tv_of_us(long long us)
{
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    return tv;
}

/* --- results --- */

/* Count a finished round: why is NULL when it passed.  Enough results in a
 * row give the verdict, repeated on every later result of the same kind so
 * the peer's check_error stays that of the latest failure.  A failure short
 * of `unhealthy` leaves check_error as it was: moxy_peer_set_checked is its
 * only writer, and calling it then would flip the peer's state. */
static void record(health_peer_t *hp, const char *why)
{
    moxy_peer_t *p = hp->peer;
    const moxy_upstream_conf_t *uc = hp->pool->conf;
    atomic_fetch_add_explicit(&p->checks, 1, memory_order_relaxed);
    atomic_int *mine = why ? &p->check_fail : &p->check_ok;
    atomic_store_explicit(why ? &p->check_ok : &p->check_fail, 0, memory_order_relaxed);
    int n = atomic_load_explicit(mine, memory_order_relaxed);
    if (n < INT_MAX) n++;
    atomic_store_explicit(mine, n, memory_order_relaxed);
    if (!why) {
        if (n >= uc->health.healthy) moxy_peer_set_checked(p, 1, NULL);
        moxy_peer_check_passed(p, hp->started_ms);
        return;
    }
    moxy_log(MOXY_LOG_DEBUG, NULL, "upstream %s: peer %s: health check failed (%d in a row): %s",
             uc->name, p->conf->addr.text, n, why);
    if (n >= uc->health.unhealthy) moxy_peer_set_checked(p, 0, why);
}

/* Arm the timer for the round after the one that was due at due_us: an
 * interval later, or at once when that time has passed. */
static void schedule_next(health_peer_t *hp)
{
    long long now = moxy_mono_us();
    hp->due_us += hp->pool->interval_us;
    if (hp->due_us < now) hp->due_us = now;
    struct timeval tv = tv_of_us(hp->due_us - now);
    event_del(&hp->timer);
    event_add(&hp->timer, &tv);
}

/* Close the round's connection and free what it took. */
static void round_clean(health_peer_t *hp)
{
    if (hp->conn.fd >= 0) {
        event_del(&hp->io);
        if (hp->pool->conf->health.type == MOXY_CHECK_TCP) {
            /* nothing was sent: a reset instead of a FIN leaves no TIME_WAIT
             * socket behind per check (HAProxy closes its TCP checks so too) */
            struct linger lg = {1, 0};
            setsockopt(hp->conn.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        moxy_conn_close(&hp->conn);
    }
    if (hp->in) evbuffer_drain(hp->in, evbuffer_get_length(hp->in));
    if (hp->h2) {
        nghttp2_session_del(hp->h2);
        hp->h2 = NULL;
        free(hp->req);
        hp->req = NULL;
    }
    free(hp->body);
    hp->body = NULL;
    hp->blen = hp->bcap = 0;
    hp->phase = HC_IDLE;
}

/* The round ended: passed when why is NULL. */
static void round_end(health_peer_t *hp, const char *why)
{
    round_clean(hp);
    record(hp, why);
    schedule_next(hp);
}

/* The round failed on a system call (what: "connect", "read", ...) with
 * errno err: why is "connect refused", "connection reset" or "what failed:
 * <strerror>". */
static void round_failed_errno(health_peer_t *hp, const char *what, int err)
{
    if (err == ECONNREFUSED)
        snprintf(hp->why, sizeof(hp->why), "%s refused", what);
    else if (err == ECONNRESET)
        snprintf(hp->why, sizeof(hp->why), "connection reset");
    else
        snprintf(hp->why, sizeof(hp->why), "%s failed: %s", what, strerror(err));
    round_end(hp, hp->why);
}

/* The response is complete: judge it. */
static void judge(health_peer_t *hp)
{
    health_pool_t *hpool = hp->pool;
    if (!moxy_status_in(&hpool->conf->health.statuses, hp->resp.status)) {
        snprintf(hp->why, sizeof(hp->why), "status %d", hp->resp.status);
        round_end(hp, hp->why);
        return;
    }
    if (hpool->re) {
        int rc = pcre2_match(hpool->re, (PCRE2_SPTR)(hp->body ? hp->body : ""), hp->blen, 0, 0,
                             hpool->md, hpool->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) {
            round_end(hp, "body does not match");
            return;
        }
        if (rc < 0) {
            char msg[64];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof(msg));
            snprintf(hp->why, sizeof(hp->why), "body match failed: %s", msg);
            round_end(hp, hp->why);
            return;
        }
    }
    round_end(hp, NULL);
}

/* --- the response --- */

/* Keep n more body bytes (from at, or else from the front of in) for the
 * pattern, up to HEALTH_BODY_MAX; the rest is dropped.  NULL or why not. */
static const char *keep_body(health_peer_t *hp, const char *at, struct evbuffer *in, size_t n)
{
    size_t keep = hp->pool->re ? MOXY_MIN(n, HEALTH_BODY_MAX - hp->blen) : 0;
    if (!keep) { /* nothing kept: hp->body may be NULL */
        if (!at) evbuffer_drain(in, n);
        return NULL;
    }
    if (hp->blen + keep > hp->bcap) {
        size_t cap = hp->bcap ? hp->bcap : 4096;
        while (cap < hp->blen + keep)
            cap *= 2;
        cap = MOXY_MIN(cap, (size_t)HEALTH_BODY_MAX);
        char *b = realloc(hp->body, cap);
        if (!b) return "out of memory";
        hp->body = b;
        hp->bcap = cap;
    }
    if (at) {
        memcpy(hp->body + hp->blen, at, keep);
    } else {
        evbuffer_remove(in, hp->body + hp->blen, keep);
        evbuffer_drain(in, n - keep);
    }
    hp->blen += keep;
    return NULL;
}

static const char *on_body(moxy_h1_resp_t *rs, const char *at, size_t n)
{
    return keep_body(rs->data, at, NULL, n);
}

static const moxy_h1_resp_ops_t health_resp_ops = {.body = on_body};

/* --- a round's I/O --- */

/* Watch the round's socket for what (EV_READ or EV_WRITE). */
static void watch(health_peer_t *hp, short what, event_callback_fn cb)
{
    event_del(&hp->io);
    event_assign(&hp->io, health.base, hp->conn.fd, what | EV_PERSIST, cb, hp);
    event_add(&hp->io, NULL);
}

/* Read, and judge the response once it is complete (a 101 once its head
 * is: nothing follows that could be parsed). */
static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    health_peer_t *hp = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    ssize_t n = moxy_conn_read(&hp->conn, hp->in, HEALTH_READ);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) round_failed_errno(hp, "read", errno);
        return;
    }
    int eof = n == 0;
    if (!eof) hp->got_bytes = 1;
    if (hp->h2) {
        h2_read(hp, eof);
        return;
    }
    moxy_h1_resp_t *rs = &hp->resp;
    int rc = rs->head_done ? MOXY_OK : moxy_h1_resp_head(rs, hp->in);
    if (rc == MOXY_OK && rs->status != 101) {
        size_t take;
        rc = moxy_h1_resp_body(rs, hp->in, eof, &take);
        const char *why = take ? keep_body(hp, NULL, hp->in, take) : NULL;
        if (why) {
            rs->why = why;
            rc = MOXY_ERROR;
        }
    }
    if (rc == MOXY_AGAIN && !eof && moxy_conn_pending(&hp->conn)) {
        event_active(&hp->io, EV_READ, 0); /* bytes a transport (TLS) holds raise no event */
    } else if (rc == MOXY_OK) {
        judge(hp);
    } else if (rc == MOXY_ERROR) {
        snprintf(hp->why, sizeof(hp->why), "invalid response: %s", rs->why);
        round_end(hp, hp->why);
    } else if (eof) {
        round_end(hp, hp->got_bytes ? "closed before the response ended" : "closed without a response");
    }
}

/* --- HTTP/2 checks --- */

static int h2_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                        const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    health_peer_t *hp = arg;
    if (f->hd.stream_id != 1 || nlen != 7 || memcmp(name, ":status", 7) != 0 || vlen != 3) return 0;
    int st = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    if (st >= 200) hp->resp.status = st; /* 1xx: interim, the final one follows */
    return 0;
}

static int h2_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(flags);
    health_peer_t *hp = arg;
    if (id != 1) return 0;
    const char *why = keep_body(hp, (const char *)data, NULL, len);
    if (why) snprintf(hp->why, sizeof(hp->why), "%s", why);
    return why ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int h2_on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
    MOXY_UNUSED(ng);
    health_peer_t *hp = arg;
    if (id != 1) return 0;
    hp->h2_done = 1;
    if (code != NGHTTP2_NO_ERROR || !hp->resp.status)
        snprintf(hp->why, sizeof(hp->why), "stream reset (%s)", nghttp2_http2_strerror(code));
    return 0;
}

static nghttp2_session_callbacks *h2_callbacks;

/* This round's session and the bytes that open it: the preface, SETTINGS
 * and the request on stream 1, in hp->req.  MOXY_ERROR: out of memory. */
static int h2_start(health_peer_t *hp)
{
    const moxy_upstream_conf_t *uc = hp->pool->conf;
    if (!h2_callbacks) {
        if (nghttp2_session_callbacks_new(&h2_callbacks) != 0) return MOXY_ERROR;
        nghttp2_session_callbacks_set_on_header_callback(h2_callbacks, h2_on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2_callbacks, h2_on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(h2_callbacks, h2_on_close);
    }
    if (nghttp2_session_client_new(&hp->h2, h2_callbacks, hp) != 0) return MOXY_ERROR;
    const char *host = uc->health.host ? uc->health.host : uc->host ? uc->host : hp->peer->conf->addr.text;
    const char *method = uc->health.method, *path = uc->health.path;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)(uc->tls ? "https" : "http"), 7, uc->tls ? 5 : 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)host, 10, strlen(host), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"user-agent", (uint8_t *)"moxy-health/" MOXY_VERSION, 10,
         sizeof("moxy-health/" MOXY_VERSION) - 1, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (nghttp2_submit_settings(hp->h2, NGHTTP2_FLAG_NONE, iv, 1) != 0 ||
        nghttp2_submit_request(hp->h2, NULL, nv, MOXY_ARRAY_LEN(nv), NULL, NULL) != 1)
        return MOXY_ERROR;
    struct evbuffer *b = evbuffer_new();
    const uint8_t *p;
    ssize_t n;
    while (b && (n = nghttp2_session_mem_send(hp->h2, &p)) > 0) evbuffer_add(b, p, (size_t)n);
    size_t len = b ? evbuffer_get_length(b) : 0;
    hp->req = len ? malloc(len) : NULL;
    if (hp->req) evbuffer_remove(b, hp->req, len);
    if (b) evbuffer_free(b);
    hp->req_len = len;
    return hp->req ? MOXY_OK : MOXY_ERROR;
}

/* What the peer sent (in hp->in) goes to the session; the frames it wants
 * back (SETTINGS' ACK, window updates) go out as they can. */
static void h2_read(health_peer_t *hp, int eof)
{
    size_t len = evbuffer_get_length(hp->in);
    ssize_t rv = len ? nghttp2_session_mem_recv(hp->h2, evbuffer_pullup(hp->in, -1), len) : 0;
    evbuffer_drain(hp->in, len);
    if (rv < 0) {
        if (!hp->why[0] || hp->h2_done) snprintf(hp->why, sizeof(hp->why), "invalid HTTP/2: %s",
                                                 nghttp2_strerror((int)rv));
        round_end(hp, hp->why);
        return;
    }
    const uint8_t *p;
    ssize_t n;
    while (!hp->h2_done && (n = nghttp2_session_mem_send(hp->h2, &p)) > 0)
        if (moxy_conn_send(&hp->conn, p, (size_t)n) != n) break; /* the check does not depend on them */
    if (hp->h2_done) {
        if (hp->why[0]) round_end(hp, hp->why);
        else judge(hp);
    } else if (eof) {
        round_end(hp, hp->got_bytes ? "closed before the response ended" : "closed without a response");
    } else if (moxy_conn_pending(&hp->conn)) {
        event_active(&hp->io, EV_READ, 0);
    }
}

static void send_cb(evutil_socket_t fd, short what, void *arg)
{
    health_peer_t *hp = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    while (hp->sent < hp->req_len) {
        ssize_t n = moxy_conn_send(&hp->conn, hp->req + hp->sent, hp->req_len - hp->sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                watch(hp, EV_WRITE, send_cb);
                return;
            }
            round_failed_errno(hp, "send", errno);
            return;
        }
        hp->sent += (size_t)n;
    }
    hp->phase = HC_READING;
    moxy_h1_resp_init(&hp->resp, &health_resp_ops, hp, NULL, NULL, NULL,
                      strcmp(hp->pool->conf->health.method, "HEAD") == 0, health.max_head,
                      health.max_fields);
    watch(hp, EV_READ, read_cb);
}

/* The connect succeeded: a TCP check passed, an HTTP one sends its request. */
/* The TLS handshake of an HTTP check of a pool with tls, as the proxy's. */
static void tls_cb(evutil_socket_t fd, short what, void *arg)
{
    health_peer_t *hp = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    short want = 0;
    const char *why = NULL;
    int kind;
    int rc = moxy_tls_handshake(&hp->conn, &want, &why, &kind);
    if (rc == MOXY_AGAIN) {
        watch(hp, want, tls_cb);
        return;
    }
    if (rc == MOXY_ERROR) {
        snprintf(hp->why, sizeof(hp->why), "TLS handshake failed: %s", why);
        round_end(hp, hp->why);
        return;
    }
    if (hp->pool->conf->protocol == MOXY_UP_H2) {
        if (!moxy_tls_alpn_h2(&hp->conn)) {
            round_end(hp, "the peer did not agree to HTTP/2 (ALPN)");
            return;
        }
    }
    request_go(hp);
}

/* The connection is ready (TLS done): the request goes. */
static void request_go(health_peer_t *hp)
{
    if (hp->pool->conf->protocol == MOXY_UP_H2 && h2_start(hp) != MOXY_OK) {
        round_end(hp, "out of memory");
        return;
    }
    hp->sent = 0;
    hp->phase = HC_SENDING;
    send_cb(hp->conn.fd, EV_WRITE, hp);
}

static void connected(health_peer_t *hp)
{
    const moxy_upstream_conf_t *uc = hp->pool->conf;
    if (uc->health.type == MOXY_CHECK_TCP) {
        round_end(hp, NULL);
        return;
    }
    if (uc->tls && uc->tls_client) {
        if (moxy_upstream_tls_connect(&hp->conn, uc, hp->server) != MOXY_OK) {
            round_end(hp, "out of memory");
            return;
        }
        hp->phase = HC_TLS;
        tls_cb(hp->conn.fd, EV_WRITE, hp);
        return;
    }
    request_go(hp);
}

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
    health_peer_t *hp = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (moxy_conn_connected(&hp->conn) != MOXY_OK) {
        round_failed_errno(hp, "connect", errno);
        return;
    }
    connected(hp);
}

/* The timer: a round is due, or the running one reached its deadline. */
static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    health_peer_t *hp = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (hp->phase == HC_IDLE) {
        round_start(hp);
        return;
    }
    round_end(hp, hp->phase == HC_CONNECTING ? "connect timed out" : "timed out");
}

static void round_start(health_peer_t *hp)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    unsigned gen;
    if (moxy_peer_addr(hp->peer, &sa, &salen, &gen) != MOXY_OK) { /* a name not resolved yet */
        schedule_next(hp);
        return;
    }
    hp->resp.status = 0;
    hp->got_bytes = 0;
    hp->h2_done = 0;
    hp->why[0] = 0;
    hp->started_ms = moxy_mono_ms();
    hp->phase = HC_CONNECTING;
    event_add(&hp->timer, &hp->pool->timeout); /* the deadline */
    int done;
    if (moxy_conn_connect(&hp->conn, (struct sockaddr *)&sa, salen, &done) != MOXY_OK) {
        int err = errno;
        if (moxy_errno_own_shortage(err)) {
            /* moxy's own shortage says nothing of the peer: the round does not count */
            round_clean(hp);
            schedule_next(hp);
            return;
        }
        round_failed_errno(hp, "connect", err);
    } else if (done)
        connected(hp);
    else
        watch(hp, EV_WRITE, connect_cb);
}

/* --- start and stop --- */

/* 1 when s may go into a header value as it is. */
static int header_safe(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

/* hp's request: method, path, Host (health.host, the pool's host, or the
 * server's address text).  MOXY_OK or MOXY_ERROR after logging why. */
static int build_request(health_peer_t *hp)
{
    const moxy_upstream_conf_t *uc = hp->pool->conf;
    const char *host = uc->health.host;
    if (!host) host = uc->host;
    if (!host) host = hp->peer->conf->addr.text;
    if (!header_safe(host)) {
        moxy_log_err("upstream %s: health checks: the Host has control characters", uc->name);
        return MOXY_ERROR;
    }
    const char *fmt = "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moxy-health/" MOXY_VERSION
                      "\r\nConnection: close\r\n\r\n";
    int n = snprintf(NULL, 0, fmt, uc->health.method, uc->health.path, host);
    if (n < 0 || !(hp->req = malloc((size_t)n + 1))) {
        moxy_log_err("upstream %s: health checks: out of memory", uc->name);
        return MOXY_ERROR;
    }
    snprintf(hp->req, (size_t)n + 1, fmt, uc->health.method, uc->health.path, host);
    hp->req_len = (size_t)n;
    return MOXY_OK;
}

/* Compile hpool's body pattern (JIT-compiled when PCRE2 can) and what
 * matching it needs.  MOXY_OK or MOXY_ERROR after logging why. */
static int compile_body(health_pool_t *hpool)
{
    const moxy_upstream_conf_t *uc = hpool->conf;
    int code;
    PCRE2_SIZE off;
    hpool->re =
        pcre2_compile((PCRE2_SPTR)uc->health.body, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    if (!hpool->re) {
        char msg[128];
        pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof(msg));
        moxy_log_err("upstream %s: health.body: bad pattern at offset %zu: %s", uc->name,
                     (size_t)off, msg);
        return MOXY_ERROR;
    }
    pcre2_jit_compile(hpool->re, PCRE2_JIT_COMPLETE); /* without the JIT, the interpreter runs it */
    hpool->md = pcre2_match_data_create_from_pattern(hpool->re, NULL);
    hpool->mctx = pcre2_match_context_create(NULL);
    if (!hpool->md || !hpool->mctx) {
        moxy_log_err("upstream %s: health checks: out of memory", uc->name);
        return MOXY_ERROR;
    }
    pcre2_set_match_limit(hpool->mctx, HEALTH_MATCH_LIMIT);
    pcre2_set_depth_limit(hpool->mctx, HEALTH_DEPTH_LIMIT);
    return MOXY_OK;
}

int moxy_health_start(moxy_conf_t *conf, struct event_base *base)
{
    int npools = 0, npeers = 0;
    for (int i = 0; i < conf->nupstreams; i++) {
        if (conf->upstreams[i].health.type == MOXY_CHECK_NONE) continue;
        npools++;
        npeers += conf->upstreams[i].state->npeers;
    }
    if (npools == 0) return MOXY_OK;
    health.base = base;
    health.max_head = conf->limits.header_bytes;
    health.max_fields = (uint32_t)conf->limits.headers;
    health.pools = calloc((size_t)npools, sizeof(*health.pools));
    health.peers = calloc((size_t)npeers, sizeof(*health.peers));
    if (!health.pools || !health.peers) {
        moxy_log_err("health checks: out of memory");
        goto err;
    }
    long long now = moxy_mono_us();
    for (int i = 0; i < conf->nupstreams; i++) {
        const moxy_upstream_conf_t *uc = &conf->upstreams[i];
        if (uc->health.type == MOXY_CHECK_NONE) continue;
        health_pool_t *hpool = &health.pools[health.npools++];
        hpool->conf = uc;
        hpool->interval_us = (long long)(uc->health.interval * 1e6);
        hpool->timeout = moxy_timeval(uc->health.timeout);
        if (uc->health.type == MOXY_CHECK_HTTP && uc->health.body && compile_body(hpool) != MOXY_OK)
            goto err;
        for (int j = 0; j < uc->state->npeers; j++) {
            health_peer_t *hp = &health.peers[health.npeers++];
            hp->pool = hpool;
            hp->peer = &uc->state->peers[j];
            hp->server = j;
            hp->conn.fd = -1;
            if (!(hp->in = evbuffer_new())) goto err;
            event_assign(&hp->timer, base, -1, 0, timer_cb, hp);
            event_assign(&hp->io, base, -1, 0, read_cb, hp); /* assigned again per round (watch) */
            if (uc->health.type == MOXY_CHECK_HTTP && uc->protocol != MOXY_UP_H2 && build_request(hp) != MOXY_OK)
                goto err;
            /* the first round at once, peers a little apart; schedule_next adds an interval */
            hp->due_us = now +
                         ((long long)(health.npeers - 1) * HEALTH_STAGGER_US) % hpool->interval_us -
                         hpool->interval_us;
            schedule_next(hp);
        }
        if (uc->health.type == MOXY_CHECK_TCP)
            moxy_log_info("upstream %s: health checks every %gs: TCP connect", uc->name,
                          uc->health.interval);
        else
            moxy_log_info("upstream %s: health checks every %gs: %s %s%s", uc->name, uc->health.interval,
                          uc->health.method, uc->health.path, uc->protocol == MOXY_UP_H2 ? " over HTTP/2" : "");
    }
    return MOXY_OK;

err:
    moxy_health_stop();
    return MOXY_ERROR;
}

void moxy_health_stop(void)
{
    for (int i = 0; i < health.npeers; i++) {
        health_peer_t *hp = &health.peers[i];
        round_clean(hp);
        event_del(&hp->timer);
        free(hp->req);
        if (hp->in) evbuffer_free(hp->in);
    }
    for (int i = 0; i < health.npools; i++) {
        health_pool_t *hpool = &health.pools[i];
        pcre2_match_context_free(hpool->mctx);
        pcre2_match_data_free(hpool->md);
        pcre2_code_free(hpool->re);
    }
    free(health.peers);
    free(health.pools);
    memset(&health, 0, sizeof(health));
}

static int health_reload(moxy_conf_t *conf, struct event_base *base)
{
    moxy_health_stop();
    return moxy_health_start(conf, base);
}

moxy_module_t moxy_health_module = {
    .name = "health checks",
    .reload = health_reload,
};
