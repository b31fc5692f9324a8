/*
 * http_upstream.c -- the origin side of the proxy: a try picks a peer of the
 * request's pool (balancer.c), reuses an idle keep-alive connection or
 * connects, writes the request head moxy builds, parses the response head
 * with llhttp and streams the body back with back-pressure.  Each try's
 * outcome goes to the peer's passive health (upstream.c); a try that fails
 * before any response byte, or answers a retry status, starts another on a
 * different peer when the retry rules and the pool's budget allow.
 *
 * Response bodies with Content-Length, and bodies delimited by close, are
 * moved between evbuffers without copying; chunked bodies are decoded by
 * llhttp and re-chunked for HTTP/1.1 clients (or sent raw and delimited by
 * close for HTTP/1.0 clients).
 */
#include "base/headers.h"
#include "http/http.h"
#include "http/request.h"
#include "net/io.h"
#include "base/log.h"
#include "http/lua_bridge.h"
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

static void up_read_cb(evutil_socket_t fd, short what, void *arg);
static void up_write_cb(evutil_socket_t fd, short what, void *arg);
static void up_process(moxy_upconn_t *u);
static const llhttp_settings_t *response_settings(void);

/* --- pools --- */

int moxy_upstream_init_wgen(moxy_wgen_t *g)
{
    const moxy_conf_t *conf = g->conf;
    g->pools = calloc((size_t)conf->nupstreams + 1, sizeof(*g->pools));
    if (!g->pools) return MOXY_ERROR;
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_pool_rt_t *rt = &g->pools[i];
        int n = conf->upstreams[i].nservers;
        rt->state = conf->upstreams[i].state;
        rt->stats = moxy_stats_pool(g->w, conf->upstreams[i].name);
        rt->current_weight = calloc((size_t)n + 1, sizeof(int));
        rt->idle = calloc((size_t)n + 1, sizeof(*rt->idle));
        if (!rt->stats || !rt->current_weight || !rt->idle) return MOXY_ERROR;
        for (int j = 0; j < n; j++) TAILQ_INIT(&rt->idle[j]);
        struct timeval tv = moxy_timeval(conf->upstreams[i].keepalive_timeout);
        rt->ctv_idle = event_base_init_common_timeout(g->w->base, &tv);
    }
    return MOXY_OK;
}

/* Close g's idle origin connections. */
static void close_idle(moxy_wgen_t *g)
{
    for (int i = 0; g->pools && i < g->conf->nupstreams; i++) {
        moxy_upconn_t *u;
        for (int j = 0; j < g->conf->upstreams[i].nservers && g->pools[i].idle; j++)
            while ((u = TAILQ_FIRST(&g->pools[i].idle[j]))) moxy_upconn_close(u);
    }
}

void moxy_upstream_close_idle(moxy_worker_t *w)
{
    moxy_wgen_t *g;
    LIST_FOREACH(g, &w->retired, link) close_idle(g);
    if (w->g) close_idle(w->g);
}

void moxy_upstream_free_wgen(moxy_wgen_t *g)
{
    if (!g->pools) return;
    close_idle(g);
    for (int i = 0; i < g->conf->nupstreams; i++) {
        free(g->pools[i].current_weight);
        free(g->pools[i].idle);
    }
    free(g->pools);
    g->pools = NULL;
}

/* The pool of g whose shared state is state, or -1. */
static int pool_of_state(const moxy_wgen_t *g, const moxy_upstream_t *state)
{
    for (int i = 0; i < g->conf->nupstreams; i++)
        if (g->pools[i].state == state) return i;
    return -1;
}

void moxy_upstream_switch_wgen(moxy_wgen_t *old, moxy_wgen_t *g)
{
    for (int i = 0; old->pools && i < old->conf->nupstreams; i++) {
        moxy_pool_rt_t *from = &old->pools[i];
        int k = pool_of_state(g, from->state);
        if (k < 0) continue; /* closed with old */
        moxy_pool_rt_t *to = &g->pools[k];
        memcpy(to->current_weight, from->current_weight, (size_t)from->state->npeers * sizeof(int));
        for (int j = 0; j < from->state->npeers; j++) {
            moxy_upconn_t *u;
            while ((u = TAILQ_LAST(&from->idle[j], moxy_upconn_list_s))) {
                TAILQ_REMOVE(&from->idle[j], u, idle_link);
                TAILQ_INSERT_HEAD(&to->idle[j], u, idle_link);
                u->g = g;
                u->pool = k;
            }
        }
        to->nidle = from->nidle;
        from->nidle = 0;
    }
}

/* The shared state of the peer r's try holds, or NULL (set_peer, no pool). */
static moxy_peer_t *try_peer(const moxy_req_t *r)
{
    if (r->pool < 0 || r->server < 0) return NULL;
    return &r->g->conf->upstreams[r->pool].state->peers[r->server];
}

/* The try's outcome for passive health, once per try: ok, or failed. */
static void try_report(moxy_req_t *r, int ok)
{
    moxy_peer_t *p = try_peer(r);
    if (!p || r->reported) return;
    r->reported = 1;
    long long us = 0;
    if (ok && r->up_header_us) {
        us = r->up_header_us - r->up_started_us;
        if (us <= 0) us = 1;
    }
    moxy_peer_report(p, ok, us);
}

/* The try no longer counts in its peer's requests in flight. */
static void try_release(moxy_req_t *r)
{
    if (r->active_server < 0) return;
    moxy_peer_t *p = &r->g->conf->upstreams[r->pool].state->peers[r->active_server];
    atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
    r->active_server = -1;
}

/* --- connection life --- */

static void up_hold(moxy_upconn_t *u)
{
    u->busy++;
}

static void up_free(moxy_upconn_t *u)
{
    if (u->in) evbuffer_free(u->in);
    if (u->out) evbuffer_free(u->out);
    free(u);
}

static void up_release(moxy_upconn_t *u)
{
    if (--u->busy == 0 && u->dead) up_free(u);
}

/* u (idle, in rt) leaves rt's idle list; the idle-connections gauge follows. */
static void idle_take(moxy_pool_rt_t *rt, moxy_upconn_t *u)
{
    TAILQ_REMOVE(&rt->idle[u->server], u, idle_link);
    rt->nidle--;
    MOXY_STAT_SET(rt->stats->idle, rt->nidle);
    u->idle = 0;
}

/* u joins rt's idle list, newest first; the idle-connections gauge follows. */
static void idle_put(moxy_pool_rt_t *rt, moxy_upconn_t *u)
{
    TAILQ_INSERT_HEAD(&rt->idle[u->server], u, idle_link);
    rt->nidle++;
    MOXY_STAT_SET(rt->stats->idle, rt->nidle);
    u->idle = 1;
}

void moxy_upconn_close(moxy_upconn_t *u)
{
    if (u->dead) return;
    u->dead = 1;
    if (u->idle) idle_take(&u->g->pools[u->pool], u);
    if (u->req) {
        u->req->up = NULL;
        u->req = NULL;
    }
    event_del(&u->rev);
    event_del(&u->wev);
    moxy_conn_close(&u->conn);
    if (u->busy == 0) up_free(u);
}

static moxy_upconn_t *up_connect(moxy_worker_t *w, const struct sockaddr_storage *sa, socklen_t salen,
                                 int pool, int server, const char **err)
{
    moxy_conn_t conn;
    int connected;
    if (moxy_conn_connect(&conn, (const struct sockaddr *)sa, salen, &connected) != MOXY_OK) {
        *err = strerror(errno);
        return NULL;
    }
    moxy_upconn_t *u = calloc(1, sizeof(*u));
    if (!u || !(u->in = evbuffer_new()) || !(u->out = evbuffer_new())) {
        if (u && u->in) evbuffer_free(u->in);
        free(u);
        moxy_conn_close(&conn);
        *err = "out of memory";
        return NULL;
    }
    u->w = w;
    u->conn = conn;
    int fd = conn.fd;
    u->pool = pool;
    u->server = server;
    u->connected = connected;
    u->read_size = MOXY_IO_READ_MIN;
    event_assign(&u->rev, w->base, fd, EV_READ | EV_PERSIST, up_read_cb, u);
    event_assign(&u->wev, w->base, fd, EV_WRITE | EV_PERSIST, up_write_cb, u);
    return u;
}

/* Write "<name: >value\r\n" at p (name with its ": "); the end. */
static char *put_field(char *p, const char *name, size_t nlen, const char *value, size_t vlen)
{
    memcpy(p, name, nlen);
    memcpy(p + nlen, value, vlen);
    memcpy(p + nlen + vlen, "\r\n", 2);
    return p + nlen + vlen + 2;
}

/* The head is written in one piece into space reserved on out: no copy of
 * it is made on the way to the socket. */
int moxy_upstream_write_head(const moxy_req_t *r, const moxy_upstream_conf_t *uc,
                             struct evbuffer *out)
{
    const char *host = uc && uc->host ? uc->host : r->host ? r->host : r->peer;
    size_t mlen = strlen(r->method_name), hlen = strlen(host);
    /* a revalidation of a stale object: its validators (RFC 9111 4.3.1) */
    const char *etag = r->cache_conditional ? r->cache_etag : NULL;
    const char *lm = r->cache_conditional ? r->cache_last_modified : NULL;
    size_t elen = etag ? strlen(etag) : 0, lmlen = lm ? strlen(lm) : 0;
    size_t max = mlen + r->uri_len + hlen + moxy_headers_size(&r->headers) + elen + lmlen + 200;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)max, &v, 1) < 1) return MOXY_ERROR;
    char *p = v.iov_base;
    memcpy(p, r->method_name, mlen);
    p += mlen;
    *p++ = ' ';
    memcpy(p, r->uri, r->uri_len);
    p += r->uri_len;
    memcpy(p, " HTTP/1.1\r\nHost: ", 17);
    p += 17;
    memcpy(p, host, hlen);
    p += hlen;
    *p++ = '\r';
    *p++ = '\n';
    p += moxy_headers_write(p, &r->headers, r->upgrade, MOXY_HK_HOST | MOXY_HK_CL | MOXY_HK_EXPECT);
    if (r->upgrade) {
        memcpy(p, "Connection: upgrade\r\n", 21);
        p += 21;
    }
    if (etag) p = put_field(p, "If-None-Match: ", 15, etag, elen);
    if (lm) p = put_field(p, "If-Modified-Since: ", 19, lm, lmlen);
    size_t buffered = r->body_buffered && r->body_buf ? evbuffer_get_length(r->body_buf) : 0;
    if (r->body_buffered && r->body_kind != MOXY_BODY_NONE) {
        /* read by a hook: sent whole, with its length (a retry sends it again) */
        memcpy(p, "Content-Length: ", 16);
        p = moxy_write_u64(p + 16, buffered);
        *p++ = '\r';
        *p++ = '\n';
    } else if (r->body_kind == MOXY_BODY_CHUNKED) {
        memcpy(p, "Transfer-Encoding: chunked\r\n", 28);
        p += 28;
    } else if (r->has_cl) {
        memcpy(p, "Content-Length: ", 16);
        p = moxy_write_u64(p + 16, r->body_length);
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    if (evbuffer_commit_space(out, &v, 1) != 0) return MOXY_ERROR;
    if (buffered && evbuffer_add(out, evbuffer_pullup(r->body_buf, -1), buffered) != 0)
        return MOXY_ERROR;
    return MOXY_OK;
}

/* --- a try: on_upstream, the peer, on_upstream_request, connect --- */

static void try_after_upstream_hooks(moxy_req_t *r, int rc);
static void try_after_request_hooks(moxy_req_t *r, int rc);
static void try_connect(moxy_req_t *r);
static void upstream_hooks_done(moxy_req_t *r, int rc);
static void upstream_request_hooks_done(moxy_req_t *r, int rc);
static void body_hooks_done(moxy_req_t *r, int rc);
static void response_hooks_done(moxy_req_t *r, int rc);

/* The cache, as the proxy uses it (moxy_upstream_set_cache). */
static const moxy_proxy_cache_t *cache;

void moxy_upstream_set_cache(const moxy_proxy_cache_t *c)
{
    cache = c;
}

/* --- the origin side as the client side sees it (moxy_origin_ops_t) --- */

static void origin_cut(moxy_req_t *r)
{
    moxy_upconn_t *u = r->up;
    r->up = NULL;
    u->req = NULL;
    moxy_upconn_close(u);
}

static void origin_send(moxy_req_t *r)
{
    if (r->up) moxy_upstream_send(r->up);
}

static int origin_backlogged(const moxy_req_t *r)
{
    return r->up && moxy_upstream_backlogged(r->up);
}

static void origin_resume_read(moxy_req_t *r)
{
    if (r->up) moxy_upstream_resume_read(r->up);
}

static const moxy_origin_ops_t origin_ops = {
    .cut = origin_cut,
    .send = origin_send,
    .backlogged = origin_backlogged,
    .resume_read = origin_resume_read,
};

void moxy_upstream_try_begin(moxy_req_t *r)
{
    moxy_req_cleanup_add(r, moxy_upstream_req_free);
    r->origin = &origin_ops;
    try_release(r);
    if (++r->tries == 1) r->first_try_ms = moxy_mono_ms();
    r->server = -1;
    r->reported = 0;
    evutil_timerclear(&r->up_started);
    evutil_timerclear(&r->up_header);
    r->up_started_us = r->up_connected_us = r->up_header_us = r->up_done_us = 0;
    if (r->tries > 1) r->peer_addr = NULL; /* set_peer is for one try */
}

void moxy_upstream_try(moxy_req_t *r)
{
    if (r->body_status) { /* txn:read_body failed and no hook answered */
        moxy_resp_error(r, r->body_status, r->body_error);
        return;
    }
    moxy_upstream_try_begin(r);
    int rc = moxy_lua_run(r, MOXY_PHASE_UPSTREAM, upstream_hooks_done);
    if (rc != MOXY_AGAIN) try_after_upstream_hooks(r, rc);
}

/* A hook answered (MOXY_DONE) or failed (MOXY_ERROR) in phase: answer. */
static void try_hooks_ended(moxy_req_t *r, int rc, const char *why)
{
    if (rc == MOXY_DONE) moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
    else moxy_req_fail(r, 500, why);
}

/* Choose the peer of r's pool for this try and count the try in its
 * requests in flight.  MOXY_ERROR: none is usable and r was answered (502,
 * 503 when every live peer is at max_conns; a retry answers what the failed
 * try would have). */
static int pick_peer(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    moxy_upstream_t *up = r->g->conf->upstreams[r->pool].state;
    long long now = moxy_mono_ms();
    if (r->tries == 1) moxy_budget_request(up, now);
    if (r->tried_pool != r->pool || (up->npeers > 64 && !r->tried_map)) {
        /* the first pick, or on_upstream moved a retry to another pool */
        r->tried = 0;
        r->tried_map = NULL;
        if (r->tried_pool != r->pool) r->last_server = -1;
        r->tried_pool = r->pool;
        if (up->npeers > 64) {
            size_t words = ((size_t)up->npeers + 63) / 64;
            r->tried_map = moxy_palloc(&r->mem, words * sizeof(uint64_t));
            if (!r->tried_map) {
                moxy_req_upstream_failed(r, 500, "out of memory");
                return MOXY_ERROR;
            }
            memset(r->tried_map, 0, words * sizeof(uint64_t));
        }
    }
    uint64_t hash = 0;
    if (up->conf->balance == MOXY_BAL_HASH) {
        const char *ip = moxy_req_client_ip(r); /* the real client, behind trusted proxies */
        hash = r->has_hash ? r->hash : moxy_hash64(ip, strlen(ip));
    }
    const char *why = "no live peer";
    uint64_t *tried = r->tried_map ? r->tried_map : &r->tried;
    int i = moxy_balancer_pick(up, r->g->pools[r->pool].current_weight, w->rng, hash, tried, r->last_server,
                               r->want_server, now, &why);
    if (i < 0) {
        if (r->tries > 1 && r->error) {
            moxy_log(MOXY_LOG_WARN, r->id, "upstream %s: %s for try %d", up->conf->name, why, r->tries);
            moxy_req_upstream_failed(r, r->fail_status ? r->fail_status : 502, r->error);
        } else {
            char *msg = moxy_palloc(&r->mem, 200);
            if (msg) snprintf(msg, 200, "upstream %s: %s", up->conf->name, why);
            moxy_req_upstream_failed(r, why[0] == 'e' ? 503 : 502, msg ? msg : why);
        }
        return MOXY_ERROR;
    }
    moxy_peer_t *p = &up->peers[i];
    r->server = i;
    r->peer = p->conf->addr.text;
    tried[i >> 6] |= 1ull << (i & 63);
    r->active_server = i;
    atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->requests, 1, memory_order_relaxed);
    return MOXY_OK;
}

static void try_after_upstream_hooks(moxy_req_t *r, int rc)
{
    const moxy_conf_t *conf = r->g->conf;
    if (rc != MOXY_OK) {
        try_hooks_ended(r, rc, "script error in on_upstream");
        return;
    }
    if (r->peer_addr) {
        r->peer = r->peer_addr->text;
    } else {
        if (r->pool < 0) {
            int li = r->listen_index;
            r->pool = conf->listens[li].upstream >= 0 ? conf->listens[li].upstream : conf->default_upstream;
        }
        if (r->pool < 0) {
            moxy_req_fail(r, 502, "no upstream pool for this request");
            return;
        }
        if (pick_peer(r) != MOXY_OK) return;
    }
    rc = moxy_lua_run(r, MOXY_PHASE_UPSTREAM_REQUEST, upstream_request_hooks_done);
    if (rc != MOXY_AGAIN) try_after_request_hooks(r, rc);
}

static void try_after_request_hooks(moxy_req_t *r, int rc)
{
    if (rc != MOXY_OK) {
        try_hooks_ended(r, rc, "script error in on_upstream_request");
        return;
    }
    if (r->expect_continue && !r->body_done && r->tries == 1) {
        moxy_stream_send_interim(r, 100, NULL);
        if (moxy_stream_flush(r) != MOXY_OK) return;
    }
    try_connect(r);
}

/* The number of tries r may make. */
static int tries_max(const moxy_req_t *r)
{
    return r->pool >= 0 ? r->g->conf->upstreams[r->pool].tries : 2;
}

int moxy_upstream_may_retry(const moxy_req_t *r, int upstream_hooks)
{
    /* A streamed body is sent once: after any byte of it, or of its chunked
     * framing, went to an origin, another try would send the rest without
     * what went before, and the next origin would read the body's bytes as
     * requests of their own.  Only a body buffered whole (txn:read_body) is
     * sent again. */
    if (!r->retryable || r->tries >= tries_max(r) || r->resp_head_sent || moxy_req_client_gone(r) ||
        (r->body_kind != MOXY_BODY_NONE && !r->body_buffered && (r->body_read > 0 || r->body_sent)))
        return 0;
    /* another peer: another server of the pool, or what on_upstream says */
    if (!upstream_hooks && (r->pool < 0 || r->g->conf->upstreams[r->pool].nservers < 2))
        return 0;
    return tries_max(r);
}

/* 1 when r's pool has a peer r has not tried that is usable now (a retry
 * without on_upstream hooks stays in the pool). */
static int peer_left(moxy_req_t *r)
{
    if (r->pool < 0) return 0;
    moxy_upstream_t *up = r->g->conf->upstreams[r->pool].state;
    return moxy_balancer_available(up, r->tried_map ? r->tried_map : &r->tried, r->server);
}

/* A retry of r, past moxy_upstream_may_retry: within the pool's
 * retry_timeout and its budget.  1 when allowed (and counted). */
static int retry_allowed(moxy_req_t *r, const char *why)
{
    if (r->pool < 0) return 1;
    const moxy_upstream_conf_t *uc = &r->g->conf->upstreams[r->pool];
    if (uc->retry_timeout > 0 && moxy_mono_ms() - r->first_try_ms >= (long long)(uc->retry_timeout * 1000)) {
        moxy_log(MOXY_LOG_WARN, r->id, "origin %s: %s; no retry: retry_timeout passed", r->peer, why);
        return 0;
    }
    if (!moxy_budget_retry(uc->state)) {
        moxy_log(MOXY_LOG_WARN, r->id, "origin %s: %s; no retry: pool %s's retry budget is spent",
                 r->peer, why, uc->name);
        return 0;
    }
    return 1;
}

/* This try of r failed (u: its connection, or NULL) before any response
 * byte reached the client; status is what the client gets if no other try
 * follows.  A reused keep-alive connection that the origin closed (or
 * reset) before answering -- it closed while idle: the request never
 * reached it -- is sent again once on a new connection to the same peer.  Otherwise the next try
 * starts when r may have one (moxy_upstream_may_retry, retry_allowed).
 * 1 when another try started. */
static int try_again(moxy_req_t *r, moxy_upconn_t *u, int status, const char *why)
{
    if (u && u->reused && u->eof && !u->got_bytes && !r->fresh_conn && r->tries == 1 &&
        (r->body_kind == MOXY_BODY_NONE || r->body_buffered)) {
        r->up = NULL;
        u->req = NULL;
        moxy_upconn_close(u);
        r->fresh_conn = 1;
        try_connect(r);
        return 1;
    }
    try_report(r, 0);
    int hooks = moxy_lua_has(r->g, MOXY_PHASE_UPSTREAM);
    int max = moxy_upstream_may_retry(r, hooks);
    if (!max || (!hooks && !peer_left(r)) || !retry_allowed(r, why)) return 0;
    moxy_log(MOXY_LOG_WARN, r->id, "origin %s: %s; trying again (%d of %d)", r->peer, why,
             r->tries + 1, max);
    if (u) {
        r->up = NULL;
        u->req = NULL;
        moxy_upconn_close(u);
    }
    r->error = why;
    r->fail_status = status;
    r->last_server = r->server;
    moxy_upstream_try(r);
    return 1;
}

static void try_connect(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    moxy_upconn_t *u = NULL;
    if (moxy_req_body_check(r) != MOXY_OK) return; /* a bad body answered before the origin sees the head */
    event_base_gettimeofday_cached(w->base, &r->up_started);
    r->up_started_us = moxy_mono_us();
    moxy_peer_t *p = try_peer(r);
    /* an idle connection to the peer's current addresses, if any */
    unsigned gen = p ? atomic_load_explicit(&p->addr_gen, memory_order_relaxed) : 0;
    moxy_pool_rt_t *rt = p ? &r->g->pools[r->pool] : NULL;
    while (rt && r->tries == 1 && !r->fresh_conn && (u = TAILQ_FIRST(&rt->idle[r->server]))) {
        idle_take(rt, u);
        if (u->addr_gen == gen) break;
        moxy_upconn_close(u); /* the name resolves elsewhere now */
        u = NULL;
    }
    if (u) {
        u->reused = 1;
    } else {
        const char *err = NULL;
        struct sockaddr_storage ss;
        const struct sockaddr_storage *sa = &ss;
        socklen_t salen;
        if (!p) {
            sa = &r->peer_addr->sa;
            salen = r->peer_addr->salen;
        } else if (moxy_peer_addr(p, &ss, &salen, &gen) != MOXY_OK) {
            moxy_req_upstream_failed(r, 502, "origin's name has no address");
            return;
        }
        u = up_connect(w, sa, salen, p ? r->pool : -1, r->server, &err);
        if (!u) {
            moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s", r->peer, err);
            if (!try_again(r, NULL, 502, "cannot connect to origin"))
                moxy_req_upstream_failed(r, 502, "cannot connect to origin");
            return;
        }
        u->addr_gen = gen;
        u->g = r->g;
    }
    if (u->connected) r->up_connected_us = r->up_started_us;
    u->req = r;
    r->up = u;
    u->got_bytes = u->head_done = u->eof = u->interim = u->in_trailers = 0;
    u->interims = 0;
    u->interim_bytes = 0;
    u->keepalive = u->server >= 0; /* set_peer connections are not kept */
    u->body_done = u->write_failed = 0;
    u->head_bytes = 0;
    u->field = u->value = NULL;
    u->field_len = u->value_len = u->field_cap = u->value_cap = 0;
    llhttp_init(&u->parser, HTTP_RESPONSE, response_settings());
    u->parser.data = u;
    const moxy_upstream_conf_t *uc = u->pool >= 0 ? &r->g->conf->upstreams[u->pool] : NULL;
    if (moxy_upstream_write_head(r, uc, u->out) != MOXY_OK) {
        moxy_req_upstream_failed(r, 500, "out of memory");
        return;
    }
    /* The read timeout starts once the whole request is sent (as nginx's
     * proxy_read_timeout); until then the client's body timeout rules. */
    u->read_timer = r->body_done;
    event_add(&u->rev, u->read_timer ? r->g->ctv_upstream : NULL);
    u->reading = 1;
    if (u->connected) {
        moxy_upstream_send(u);
    } else {
        event_add(&u->wev, &r->g->tv_connect);
        u->writing = 1;
    }
}

/* The origin failed this request: try again elsewhere when the failure came
 * before any response byte and r may (retry), else answer status. */
static void up_fail(moxy_upconn_t *u, int status, const char *why, int retry)
{
    moxy_req_t *r = u->req;
    if (!r) {
        moxy_upconn_close(u);
        return;
    }
    moxy_log(MOXY_LOG_ERR, r->id, "origin %s (pool %s): %s", r->peer,
             u->pool >= 0 ? u->g->conf->upstreams[u->pool].name : "-", why);
    if (retry && !u->got_bytes && try_again(r, u, status, why)) return;
    if (!u->head_done) try_report(r, 0);
    moxy_req_upstream_failed(r, status, why);
}

void moxy_req_upstream_failed(moxy_req_t *r, int status, const char *why)
{
    moxy_req_origin_cut(r);
    if (r->resp_head_sent) {
        r->error = why;
        moxy_log(MOXY_LOG_WARN, r->id, "%s (response already started, connection cut)", why);
        moxy_stream_abort(r);
        return;
    }
    if (cache->stale_on_error(r, status)) return;
    moxy_req_fail(r, status, why);
}

int moxy_upstream_backlogged(const moxy_upconn_t *u)
{
    return evbuffer_get_length(u->out) >= MOXY_HIGH_WATER;
}

void moxy_upstream_send(moxy_upconn_t *u)
{
    if (!u->connected || u->dead) return;
    size_t left = evbuffer_get_length(u->out);
    while (left > 0) {
        ssize_t n = moxy_conn_write(&u->conn, u->out);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            /* The origin may have answered and closed (e.g. an early 413):
             * stop writing and let the read side take what it sent. */
            evbuffer_drain(u->out, evbuffer_get_length(u->out));
            u->write_failed = 1;
            left = 0;
            break;
        }
        left = evbuffer_get_length(u->out);
    }
    if (left > 0) {
        if (!u->writing) {
            event_add(&u->wev, u->g->ctv_upstream);
            u->writing = 1;
        }
    } else if (u->writing) {
        event_del(&u->wev);
        u->writing = 0;
    }
    moxy_req_t *r = u->req;
    if (r && left == 0 && r->body_done && !u->read_timer && u->reading) {
        event_add(&u->rev, u->g->ctv_upstream);
        u->read_timer = 1;
    }
    if (r && left < MOXY_LOW_WATER) moxy_stream_resume_read(r);
}

static void up_write(moxy_upconn_t *u, short what)
{
    if (what & EV_TIMEOUT) {
        up_fail(u, 504, u->connected ? "origin write timed out" : "connect to origin timed out", !u->connected);
        return;
    }
    if (!u->connected) {
        if (moxy_conn_connected(&u->conn) != MOXY_OK) {
            int err = errno;
            if (u->req)
                moxy_log(MOXY_LOG_DEBUG, u->req->id, "connect to %s: %s", u->req->peer, strerror(err));
            up_fail(u, 502,
                    err == ECONNREFUSED ? "connect failed: connection refused"
                    : err == ETIMEDOUT  ? "connect failed: timed out"
                                        : "connect failed",
                    1);
            return;
        }
        u->connected = 1;
        if (u->req) {
            moxy_req_t *r = u->req;
            r->up_connected_us = moxy_mono_us();
            if (u->pool >= 0)
                moxy_hist_add(&u->g->pools[u->pool].stats->connect_time,
                              r->up_connected_us - r->up_started_us);
        }
        event_del(&u->wev);
        u->writing = 0;
    }
    moxy_upstream_send(u);
}

/* The stream of u's request (none when u is idle): held across an event of u. */
static moxy_stream_ref_t client_of(const moxy_upconn_t *u)
{
    moxy_stream_ref_t none = {NULL, NULL};
    return u->req ? moxy_req_stream(u->req) : none;
}

static void up_write_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_upconn_t *u = arg;
    MOXY_UNUSED(fd);
    moxy_stream_ref_t s = client_of(u);
    moxy_stream_hold(s);
    up_hold(u);
    up_write(u, what);
    up_release(u);
    moxy_stream_release(s);
}

void moxy_upstream_resume_read(moxy_upconn_t *u)
{
    if (u->reading || u->dead || u->eof) return;
    event_add(&u->rev, u->g->ctv_upstream);
    u->reading = 1;
    if (evbuffer_get_length(u->in) > 0) {
        /* bytes read before the pause are still waiting */
        event_active(&u->rev, EV_READ, 0);
    }
}

static void up_stop_read(moxy_upconn_t *u)
{
    if (u->reading) {
        event_del(&u->rev);
        u->reading = 0;
    }
}

/* --- response head (llhttp callbacks) --- */

static int rs_fail(llhttp_t *p, const char *why)
{
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

/* A piece of a response header name (value = 0) or value, counted against header_bytes. */
static int rs_header_piece(llhttp_t *p, const char *at, size_t n, int value)
{
    moxy_upconn_t *u = p->data;
    moxy_pool_t *pool = &u->req->mem;
    u->head_bytes += n;
    if (u->head_bytes > u->g->conf->limits.header_bytes) return rs_fail(p, "response head too large");
    return value ? moxy_pool_append(pool, &u->value, &u->value_len, &u->value_cap, at, n)
                 : moxy_pool_append(pool, &u->field, &u->field_len, &u->field_cap, at, n);
}

static int rs_header_field(llhttp_t *p, const char *at, size_t n)
{
    return rs_header_piece(p, at, n, 0);
}

static int rs_header_value(llhttp_t *p, const char *at, size_t n)
{
    return rs_header_piece(p, at, n, 1);
}

static int rs_header_field_complete(llhttp_t *p)
{
    moxy_upconn_t *u = p->data;
    u->value_len = 0;
    return 0;
}

static int rs_header_value_complete(llhttp_t *p)
{
    moxy_upconn_t *u = p->data;
    moxy_req_t *r = u->req;
    const char *v = u->value ? u->value : "";
    uint32_t vl = u->value_len;
    if (u->field_len == 0) return rs_fail(p, "empty header name in response");
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--; /* llhttp checked the rest */
    moxy_headers_t *hs = u->in_trailers ? &r->resp_trailers : &r->resp_headers;
    if ((int)hs->n >= u->g->conf->limits.headers) return rs_fail(p, "too many response headers");
    if (moxy_headers_add(&r->mem, hs, u->field, u->field_len, v, vl) != MOXY_OK) return -1;
    u->field_len = u->value_len = 0;
    u->head_bytes += 4;
    return 0;
}

/* Forward an interim (1xx) response to the client; 100 is moxy's own
 * business with the client and is not forwarded. */
static void up_interim(moxy_upconn_t *u, int status)
{
    moxy_req_t *r = u->req;
    if (status != 100) moxy_stream_send_interim(r, status, &r->resp_headers);
    r->resp_headers.n = 0;
}

static int rs_headers_complete(llhttp_t *p)
{
    moxy_upconn_t *u = p->data;
    moxy_req_t *r = u->req;
    if (u->in_trailers) return 0;
    int status = p->status_code;
    if (status < 100 || status > 999) return rs_fail(p, "invalid status");
    /* the fields the origin's Connection names are for this hop only */
    moxy_headers_drop_connection_named(&r->resp_headers, MOXY_HK_CL);
    if (status < 200 && status != 101) {
        /* A 1xx never has a body (RFC 9110 15.2): framing on one is an
         * attempt to split the response stream.  The interim heads of one
         * response share a bound in number and in bytes. */
        if (p->flags & (F_CHUNKED | F_CONTENT_LENGTH) ||
            moxy_headers_find_kind(&r->resp_headers, MOXY_HK_TE | MOXY_HK_CL, 0) >= 0)
            return rs_fail(p, "interim response with a body");
        if (++u->interims > MOXY_MAX_INTERIM) return rs_fail(p, "too many interim responses");
        u->interim_bytes += u->head_bytes;
        if (u->interim_bytes > u->g->conf->limits.header_bytes)
            return rs_fail(p, "interim responses too large");
        up_interim(u, status);
        u->interim = 1;
        u->head_bytes = 0;
        return 1; /* no body, whatever the status (llhttp reads one for 104-199) */
    }
    r->status = status;
    int close = p->http_major == 1 && p->http_minor == 0;
    for (uint32_t i = 0; i < r->resp_headers.n; i++) {
        moxy_header_t *h = &r->resp_headers.h[i];
        if (h->kind & MOXY_HK_CONNECTION) {
            if (moxy_list_has_token(h->value, h->value_len, "close", 5)) close = 1;
            if (moxy_list_has_token(h->value, h->value_len, "keep-alive", 10) && p->http_minor == 0)
                close = 0;
        }
    }
    if (close) u->keepalive = 0;
    if (status == 101) {
        r->resp_body_kind = MOXY_BODY_NONE;
    } else if (r->method == HTTP_HEAD || status == 204 || status == 304) {
        r->resp_body_kind = MOXY_BODY_NONE;
    } else if (p->flags & F_CHUNKED) {
        r->resp_body_kind = MOXY_BODY_CHUNKED;
    } else if (p->flags & F_CONTENT_LENGTH) {
        r->resp_body_kind = MOXY_BODY_LENGTH;
        r->resp_body_left = p->content_length;
    } else {
        r->resp_body_kind = MOXY_BODY_EOF;
        u->keepalive = 0;
    }
    return HPE_PAUSED;
}

static int rs_chunk_header(llhttp_t *p)
{
    moxy_upconn_t *u = p->data;
    if (p->content_length == 0) u->in_trailers = 1;
    return 0;
}

static int rs_body(llhttp_t *p, const char *at, size_t n)
{
    moxy_upconn_t *u = p->data;
    moxy_req_t *r = u->req;
    if (r->cache_fill) cache->response_body(r, at, n);
    if (r->filtering) {
        evbuffer_add(r->filter_in, at, n);
        return 0;
    }
    moxy_stream_send_data(r, at, n);
    r->bytes_sent += n;
    return 0;
}

static int rs_message_complete(llhttp_t *p)
{
    moxy_upconn_t *u = p->data;
    if (u->interim) {
        u->interim = 0;
        return 0;
    }
    u->body_done = 1; /* the trailers go with the body's end (moxy_req_response_done) */
    return HPE_PAUSED;
}

static const llhttp_settings_t *response_settings(void)
{
    static llhttp_settings_t s;
    static int ready;
    if (!ready) { /* first call is from the main thread (moxy_http_init) */
        llhttp_settings_init(&s);
        s.on_header_field = rs_header_field;
        s.on_header_value = rs_header_value;
        s.on_header_field_complete = rs_header_field_complete;
        s.on_header_value_complete = rs_header_value_complete;
        s.on_headers_complete = rs_headers_complete;
        s.on_chunk_header = rs_chunk_header;
        s.on_body = rs_body;
        s.on_message_complete = rs_message_complete;
        ready = 1;
    }
    return &s;
}

void moxy_upstream_http_init(void)
{
    response_settings();
}

/* Feed u->in to llhttp.  MOXY_OK: paused; MOXY_AGAIN: all consumed;
 * MOXY_ERROR: bad response (*why set). */
static int up_parse(moxy_upconn_t *u, const char **why)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(u->in, -1, NULL, v, 16);
    if (n > 16) n = 16;
    size_t consumed = 0;
    int rc = MOXY_AGAIN;
    for (int i = 0; i < n; i++) {
        const char *base = v[i].iov_base;
        llhttp_errno_t err = llhttp_execute(&u->parser, base, v[i].iov_len);
        if (err == HPE_OK) {
            consumed += v[i].iov_len;
            continue;
        }
        if (err == HPE_PAUSED) {
            consumed += (size_t)(llhttp_get_error_pos(&u->parser) - base);
            llhttp_resume(&u->parser);
            rc = MOXY_OK;
            break;
        }
        *why = llhttp_get_error_reason(&u->parser);
        if (!*why) *why = llhttp_errno_name(err);
        rc = MOXY_ERROR;
        break;
    }
    if (consumed) evbuffer_drain(u->in, consumed);
    return rc;
}

/* The origin's response is complete: keep the connection for the next
 * request when it is clean. */
static void up_finished(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    moxy_worker_t *w = u->w;
    r->up_done_us = moxy_mono_us();
    try_release(r);
    r->up = NULL;
    u->req = NULL;
    if (u->pool < 0 || u->server < 0) {
        moxy_upconn_close(u);
        return;
    }
    if (u->g != w->g) { /* a request that started before a reload */
        int k = pool_of_state(w->g, u->g->pools[u->pool].state);
        if (k < 0) { /* the pool changed: its connections go with its generation */
            moxy_upconn_close(u);
            return;
        }
        u->g = w->g;
        u->pool = k;
    }
    const moxy_upstream_conf_t *uc = &u->g->conf->upstreams[u->pool];
    moxy_pool_rt_t *rt = &u->g->pools[u->pool];
    int reuse = u->keepalive && !u->eof && !u->write_failed && r->body_done &&
                evbuffer_get_length(u->out) == 0 && evbuffer_get_length(u->in) == 0 &&
                rt->nidle < uc->keepalive && !w->draining;
    if (!reuse) {
        moxy_upconn_close(u);
        return;
    }
    if (u->writing) event_del(&u->wev);
    u->writing = 0;
    event_add(&u->rev, rt->ctv_idle);
    u->reading = 1;
    u->field = u->value = NULL;
    u->field_cap = u->value_cap = 0;
    idle_put(rt, u);
}

/* The origin closed (or reset) before the response head was complete. */
static void up_eof_before_head(moxy_upconn_t *u)
{
    up_fail(u, 502,
            u->got_bytes ? "origin closed the connection in the response head"
                         : "origin closed the connection without answering",
            1);
}

/* --- on_body: the response body through the hooks --- */

/* Send the on_body hooks' output (rc: how they ended) to the client,
 * framed; after the last call, the end of the body.  MOXY_OK, or
 * MOXY_ERROR when a hook failed: the response is cut (its head is out). */
static int filter_emit(moxy_req_t *r, int rc)
{
    if (rc == MOXY_ERROR) {
        r->error = "script error in on_body";
        moxy_log(MOXY_LOG_WARN, r->id, "response cut: script error in on_body");
        moxy_stream_abort(r);
        return MOXY_ERROR;
    }
    size_t n = evbuffer_get_length(r->filter_out);
    if (n) {
        moxy_stream_send_body(r, r->filter_out, n);
        r->bytes_sent += n;
    }
    return MOXY_OK;
}

/* Hand what filter_in holds -- and the end, once the origin's body is
 * complete -- to the on_body hooks.  MOXY_OK: all handed over, more may
 * come; MOXY_AGAIN: a hook waits; MOXY_DONE: the body's end went out;
 * MOXY_ERROR: a hook failed and the client connection is cut. */
static int filter_pump(moxy_req_t *r)
{
    for (;;) {
        size_t n = evbuffer_get_length(r->filter_in);
        if (n == 0 && !r->filter_eof) return MOXY_OK;
        const char *data = n ? (const char *)evbuffer_pullup(r->filter_in, (ev_ssize_t)n) : "";
        r->filter_final = r->filter_eof;
        int rc = moxy_lua_run_body(r, data, n, r->filter_final, r->filter_out, body_hooks_done);
        evbuffer_drain(r->filter_in, n); /* the hooks got a copy */
        if (rc == MOXY_AGAIN) return MOXY_AGAIN;
        if (filter_emit(r, rc) != MOXY_OK) return MOXY_ERROR;
        if (r->filter_final) return MOXY_DONE;
    }
}

/* Go on after the hooks handled a piece: the next pieces, the end, or
 * more of the origin's body. */
void moxy_upstream_filter_continue(moxy_req_t *r)
{
    moxy_upconn_t *u = r->up;
    int rc = filter_pump(r);
    if (rc == MOXY_ERROR) return;
    if (rc == MOXY_AGAIN) {
        if (u) up_stop_read(u);
        return;
    }
    if (rc == MOXY_DONE) {
        moxy_req_response_done(r);
        return;
    }
    if (moxy_stream_flush(r) != MOXY_OK || !u) return;
    if (moxy_stream_backlogged(r)) {
        up_stop_read(u);
        return;
    }
    moxy_upstream_resume_read(u);
    if (evbuffer_get_length(u->in) > 0 || u->eof) up_process(u);
}

/* Decide whether r's response body goes through on_body, before its head is
 * written (a filtered body loses its Content-Length: chunked, or close-
 * delimited for HTTP/1.0).  MOXY_ERROR: out of memory. */
int moxy_upstream_filter_start(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    r->filtering = moxy_lua_has(r->g, MOXY_PHASE_BODY) && !r->no_filter &&
                   r->resp_body_kind != MOXY_BODY_NONE;
    if (!r->filtering) return MOXY_OK;
    moxy_req_cleanup_add(r, moxy_upstream_req_free);
    if (!r->filter_in) r->filter_in = moxy_worker_buf_get(w);
    if (!r->filter_out) r->filter_out = moxy_worker_buf_get(w);
    return r->filter_in && r->filter_out ? MOXY_OK : MOXY_ERROR;
}

void moxy_upstream_req_free(moxy_req_t *r)
{
    try_release(r);
    if (r->filter_in) moxy_worker_buf_put(r->w, r->filter_in);
    if (r->filter_out) moxy_worker_buf_put(r->w, r->filter_out);
    r->filter_in = r->filter_out = NULL;
}

/* --- the response --- */

/* The on_response hooks ran (rc from moxy_lua_run): MOXY_OK when the
 * origin's response goes on to the client (its head is queued); otherwise
 * the request was answered (the hooks' answer or a 500) and u is closed. */
static int up_after_response_hooks(moxy_upconn_t *u, int rc)
{
    moxy_req_t *r = u->req;
    if (rc == MOXY_OK && moxy_upstream_filter_start(r) != MOXY_OK) rc = MOXY_ERROR;
    if (rc == MOXY_OK) {
        if (cache->response_decide(r) == MOXY_OK) {
            moxy_stream_send_head(r);
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

/* on_upstream's hooks that yielded are done; then the request body, which
 * waited for them, is read on. */
static void upstream_hooks_done(moxy_req_t *r, int rc)
{
    moxy_stream_ref_t s = moxy_req_stream(r);
    try_after_upstream_hooks(r, rc);
    moxy_stream_read_on(s, r);
}

/* on_upstream_request's hooks that yielded are done (as upstream_hooks_done). */
static void upstream_request_hooks_done(moxy_req_t *r, int rc)
{
    moxy_stream_ref_t s = moxy_req_stream(r);
    try_after_request_hooks(r, rc);
    moxy_stream_read_on(s, r);
}

/* on_body's hooks that yielded are done: their output goes on. */
static void body_hooks_done(moxy_req_t *r, int rc)
{
    if (filter_emit(r, rc) != MOXY_OK) return;
    if (r->filter_final) moxy_req_response_done(r);
    else moxy_upstream_filter_continue(r);
}

/* on_response's hooks that yielded over an origin's head are done. */
static void response_hooks_done(moxy_req_t *r, int rc)
{
    moxy_upconn_t *u = r->up;
    if (!u) return;
    up_hold(u);
    if (up_after_response_hooks(u, rc) == MOXY_OK) {
        moxy_upstream_resume_read(u);
        if (evbuffer_get_length(u->in) > 0 || u->eof) up_process(u);
        else moxy_stream_flush(r);
    }
    up_release(u);
}

/* The origin's head is in: its status goes to passive health, and a retry
 * status (retry_statuses) sends a retryable request to another peer.
 * MOXY_OK: go on with this response; MOXY_DONE: another try started. */
static int up_head_verdict(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;
    if (u->pool < 0) return MOXY_OK;
    const moxy_upstream_conf_t *uc = &u->g->conf->upstreams[u->pool];
    int failed = moxy_status_in(&uc->passive.statuses, r->status);
    if (!moxy_status_in(&uc->retry_statuses, r->status)) {
        try_report(r, !failed);
        return MOXY_OK;
    }
    char *why = moxy_palloc(&r->mem, 40);
    if (!why) return MOXY_OK;
    snprintf(why, 40, "origin answered %d", r->status);
    if (!failed) try_report(r, 1); /* the peer is fine; the answer is not */
    /* the next try parses its own head into the same lists */
    int status = r->status;
    uint32_t nh = r->resp_headers.n;
    r->resp_headers.n = 0;
    if (try_again(r, u, status, why)) return MOXY_DONE;
    r->resp_headers.n = nh; /* no other try: the client gets this answer */
    return MOXY_OK;
}

/* n bytes of the origin's response body at the front of from: to the
 * on_body hooks when they filter it, else to the client. */
static void up_body(moxy_req_t *r, struct evbuffer *from, size_t n)
{
    if (r->filtering) {
        moxy_io_move(r->filter_in, from, n);
        return;
    }
    moxy_stream_send_body(r, from, n);
    r->bytes_sent += n;
}

static void up_process(moxy_upconn_t *u)
{
    moxy_req_t *r = u->req;

    if (r->tunnel) {
        if (moxy_stream_tunnel_relay(r, u->in, u->eof) == MOXY_AGAIN) up_stop_read(u);
        return;
    }
    if (r->hook) {
        /* hooks wait (on_response, on_body): the rest waits in the socket */
        up_stop_read(u);
        return;
    }

    if (!u->head_done) {
        const char *why = NULL;
        int rc = up_parse(u, &why);
        if (rc == MOXY_ERROR) {
            char msg[200];
            snprintf(msg, sizeof(msg), "invalid response from origin: %s", why);
            moxy_log(MOXY_LOG_ERR, r->id, "origin %s: %s", r->peer, msg);
            u->keepalive = 0;
            up_fail(u, 502, "invalid response from origin", 0);
            return;
        }
        if (rc == MOXY_AGAIN) {
            if (u->eof) up_eof_before_head(u);
            else moxy_stream_flush(r); /* 1xx */
            return;
        }
        u->head_done = 1;
        r->up_status = r->status;
        event_base_gettimeofday_cached(u->w->base, &r->up_header);
        r->up_header_us = moxy_mono_us();
        if (up_head_verdict(u) != MOXY_OK) return;
        if (r->status == 101) {
            if (!r->upgrade) {
                up_fail(u, 502, "origin switched protocols without being asked", 0);
                return;
            }
            if (!moxy_req_upgrade_allowed(r, &r->resp_headers)) {
                up_fail(u, 502, "origin switched to a protocol the listener does not allow", 0);
                return;
            }
            moxy_stream_send_head(r);
            if (moxy_stream_tunnel(r) != MOXY_OK) return; /* the client closed */
            if (evbuffer_get_length(u->in) || u->eof) up_process(u);
            else moxy_stream_flush(r);
            return;
        }
        cache->response_head(r);
        if (cache->upstream_head(r) == MOXY_DONE) {
            /* a 304 to a revalidation (no body: the connection is kept), or a
             * 5xx answered with the stale object (its body is not read) */
            if (r->status == 304) {
                up_finished(u);
            } else {
                r->up = NULL;
                u->req = NULL;
                moxy_upconn_close(u);
            }
            cache->answer_kept(r);
            return;
        }
        int rc2 = moxy_lua_run(r, MOXY_PHASE_RESPONSE, response_hooks_done);
        if (rc2 == MOXY_AGAIN) {
            up_stop_read(u); /* the body waits in the socket */
            return;
        }
        if (up_after_response_hooks(u, rc2) != MOXY_OK) return;
    }

    int done = 0;
    switch (r->resp_body_kind) {
    case MOXY_BODY_NONE:
        done = 1;
        break;
    case MOXY_BODY_LENGTH: {
        size_t have = evbuffer_get_length(u->in);
        size_t n = have < r->resp_body_left ? have : (size_t)r->resp_body_left;
        if (n) {
            if (r->cache_fill) cache->response_body_buffer(r, u->in, n);
            up_body(r, u->in, n);
            r->resp_body_left -= n;
        }
        done = r->resp_body_left == 0;
        break;
    }
    case MOXY_BODY_CHUNKED: {
        const char *why = NULL;
        int rc = up_parse(u, &why); /* rs_body sends or filters the pieces */
        if (rc == MOXY_ERROR) {
            moxy_log(MOXY_LOG_ERR, r->id, "origin %s: bad chunked body: %s", r->peer, why);
            u->keepalive = 0;
            up_fail(u, 502, "invalid chunked body from origin", 0);
            return;
        }
        done = rc == MOXY_OK;
        break;
    }
    case MOXY_BODY_EOF: {
        size_t have = evbuffer_get_length(u->in);
        if (have) {
            if (r->cache_fill) cache->response_body_buffer(r, u->in, have);
            up_body(r, u->in, have);
        }
        if (u->eof) done = 1;
        break;
    }
    }

    if (done) {
        up_finished(u);
        cache->response_done(r);
        if (!r->filtering) {
            moxy_req_response_done(r);
            return;
        }
        r->filter_eof = 1;
        moxy_upstream_filter_continue(r);
        return;
    }
    if (u->eof) {
        up_fail(u, 502, "origin closed the connection in the middle of the body", 0);
        return;
    }
    if (r->filtering) {
        moxy_upstream_filter_continue(r);
        return;
    }
    if (moxy_stream_flush(r) != MOXY_OK) return;
    if (moxy_stream_backlogged(r)) up_stop_read(u);
}

static void up_read(moxy_upconn_t *u, short what)
{
    moxy_req_t *r = u->req;
    if (what & EV_TIMEOUT) {
        if (!r) {
            moxy_upconn_close(u); /* idle too long */
        } else if (r->tunnel) {
            moxy_stream_abort(r);
        } else {
            up_fail(u, 504, "origin read timed out", 1);
        }
        return;
    }
    if (!r) {
        /* idle: the origin closed, or sent what nobody asked for */
        moxy_upconn_close(u);
        return;
    }
    /* small reads until the head is in: most responses fit in one */
    size_t want = u->head_done ? u->read_size : MOXY_READ_CHUNK;
    ssize_t n = moxy_conn_read(&u->conn, u->in, want);
    if (u->head_done) u->read_size = (uint32_t)moxy_io_next_size(want, n);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            if (evbuffer_get_length(u->in)) up_process(u); /* resumed after a pause */
            return;
        }
        n = 0;
    }
    if (n == 0) {
        u->eof = 1;
        up_stop_read(u);
    } else {
        u->got_bytes = 1;
    }
    up_process(u);
}

static void up_read_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_upconn_t *u = arg;
    MOXY_UNUSED(fd);
    moxy_stream_ref_t s = client_of(u);
    moxy_stream_hold(s);
    up_hold(u);
    up_read(u, what);
    up_release(u);
    moxy_stream_release(s);
}
