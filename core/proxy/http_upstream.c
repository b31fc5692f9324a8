/*
 * http_upstream.c -- the origin side of the proxy: a try picks a peer of the
 * request's pool (balancer.c), reuses an idle keep-alive connection or
 * connects, and writes the request head moxy builds; the response is
 * origin_response.c's.  Each try's outcome goes to the peer's passive
 * health (upstream.c); a try that fails before any response byte, or
 * answers a retry status, starts another on a different peer when the
 * retry rules and the pool's budget allow.
 */
#include "http/lifecycle.h"
#include "base/headers.h"
#include "http/http.h"
#include "http/body_filter.h"
#include "http/request.h"
#include "net/io.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "http1/origin_codec.h"
#include "proxy/origin.h"
#include "net/tls.h"
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

static void up_write_cb(evutil_socket_t fd, short what, void *arg);
static void up_tcp_ready(moxy_upconn_t *u);

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
        rt->idle_lists = calloc((size_t)n + 1, sizeof(*rt->idle_lists));
        if (!rt->stats || !rt->current_weight || !rt->idle_lists) return MOXY_ERROR;
        struct timeval tv = moxy_timeval(conf->upstreams[i].keepalive_timeout);
        rt->idle.max = conf->upstreams[i].keepalive;
        rt->idle.timeout = event_base_init_common_timeout(g->w->base, &tv);
        for (int j = 0; j < n; j++) moxy_idle_list_init(&rt->idle_lists[j], &rt->idle, 0);
        if (moxy_origin_h2_init_pool(rt, n) != MOXY_OK) return MOXY_ERROR;
    }
    return MOXY_OK;
}

/* Close g's idle origin connections. */
static void close_idle(moxy_wgen_t *g)
{
    for (int i = 0; g->pools && i < g->conf->nupstreams; i++) {
        moxy_idle_t *idle;
        for (int j = 0; j < g->conf->upstreams[i].nservers && g->pools[i].idle_lists; j++)
            while ((idle = TAILQ_FIRST(&g->pools[i].idle_lists[j].conns)))
                moxy_upconn_close(MOXY_IDLE_OWNER(idle, moxy_upconn_t, idle));
        moxy_origin_h2_close_idle(&g->pools[i], g->conf->upstreams[i].nservers, 0);
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
        moxy_origin_h2_free_pool(&g->pools[i], g->conf->upstreams[i].nservers);
        free(g->pools[i].current_weight);
        free(g->pools[i].idle_lists);
    }
    free(g->pools);
    g->pools = NULL;
}

/* The pool of g whose shared state is state, or -1. */
int moxy_origin_pool_of_state(const moxy_wgen_t *g, const moxy_upstream_t *state)
{
    for (int i = 0; i < g->conf->nupstreams; i++)
        if (g->pools[i].state == state) return i;
    return -1;
}

void moxy_upstream_switch_wgen(moxy_wgen_t *old, moxy_wgen_t *g)
{
    for (int i = 0; old->pools && i < old->conf->nupstreams; i++) {
        moxy_pool_rt_t *from = &old->pools[i];
        int k = moxy_origin_pool_of_state(g, from->state);
        if (k < 0) continue; /* closed with old */
        moxy_pool_rt_t *to = &g->pools[k];
        memcpy(to->current_weight, from->current_weight, (size_t)from->state->npeers * sizeof(int));
        for (int j = 0; j < from->state->npeers; j++) {
            moxy_idle_t *idle;
            TAILQ_FOREACH(idle, &from->idle_lists[j].conns, link) {
                moxy_upconn_t *u = MOXY_IDLE_OWNER(idle, moxy_upconn_t, idle);
                u->g = g;
                u->pool = k;
            }
            moxy_idle_move(&from->idle_lists[j], &to->idle_lists[j]);
        }
        moxy_origin_h2_move(from, to, g, k, from->state->npeers);
        MOXY_STAT_SET(to->stats->idle, to->idle.n);
    }
}

/* The shared state of the peer r's try holds, or NULL (set_peer, no pool). */
static moxy_peer_t *try_peer(const moxy_req_t *r)
{
    if (r->pool < 0 || r->server < 0) return NULL;
    return &r->g->conf->upstreams[r->pool].state->peers[r->server];
}

/* The try's outcome for passive health, once per try: ok, or failed. */
void moxy_origin_try_report(moxy_req_t *r, int ok)
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
void moxy_origin_try_release(moxy_req_t *r)
{
    if (r->active_server < 0) return;
    moxy_peer_t *p = &r->g->conf->upstreams[r->pool].state->peers[r->active_server];
    atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
    r->active_server = -1;
}

/* --- connection life --- */

void moxy_origin_hold(moxy_upconn_t *u)
{
    u->busy++;
}

static void up_free(moxy_upconn_t *u)
{
    if (u->in) evbuffer_free(u->in);
    if (u->out) evbuffer_free(u->out);
    free(u);
}

void moxy_origin_release(moxy_upconn_t *u)
{
    if (--u->busy == 0 && u->dead) up_free(u);
}

/* The newest idle connection of rt to server, out of its list, or NULL;
 * the idle-connections gauge follows. */
static moxy_upconn_t *idle_take(moxy_pool_rt_t *rt, int server)
{
    moxy_idle_t *idle = moxy_idle_take(&rt->idle_lists[server]);
    if (!idle) return NULL;
    MOXY_STAT_SET(rt->stats->idle, rt->idle.n);
    return MOXY_IDLE_OWNER(idle, moxy_upconn_t, idle);
}

int moxy_origin_idle_put(moxy_pool_rt_t *rt, moxy_upconn_t *u)
{
    if (moxy_idle_put(&rt->idle_lists[u->server], &u->idle) != MOXY_OK) return MOXY_DECLINED;
    MOXY_STAT_SET(rt->stats->idle, rt->idle.n);
    return MOXY_OK;
}

void moxy_upconn_close(moxy_upconn_t *u)
{
    if (u->dead) return;
    u->dead = 1;
    if (u->idle.list) {
        moxy_idle_remove(&u->idle);
        MOXY_STAT_SET(u->g->pools[u->pool].stats->idle, u->g->pools[u->pool].idle.n);
    }
    if (u->req) {
        u->req->up = NULL;
        u->req = NULL;
    }
    event_del(&u->rev);
    event_del(&u->wev);
    if (u->h2) moxy_origin_h2_detach(u);
    else moxy_conn_close(&u->conn);
    if (u->busy == 0) up_free(u);
}

moxy_upconn_t *moxy_origin_upconn_new(moxy_worker_t *w, int pool, int server)
{
    /* the connection and its response parser in one allocation */
    struct {
        moxy_upconn_t u;
        moxy_h1_resp_t resp;
    } *both = calloc(1, sizeof(*both));
    moxy_upconn_t *u = both ? &both->u : NULL;
    if (!u) return NULL;
    u->resp = &both->resp;
    if (!(u->in = evbuffer_new()) || !(u->out = evbuffer_new())) {
        up_free(u);
        return NULL;
    }
    u->w = w;
    u->conn.fd = -1;
    u->pool = pool;
    u->server = server;
    u->read_size = MOXY_IO_READ_MIN;
    return u;
}

static moxy_upconn_t *up_connect(moxy_worker_t *w, const struct sockaddr_storage *sa, socklen_t salen,
                                 int pool, int server, const char **err, int *local)
{
    moxy_conn_t conn;
    int connected;
    *local = 0;
    if (moxy_conn_connect(&conn, (const struct sockaddr *)sa, salen, &connected) != MOXY_OK) {
        /* moxy's own shortage: not the origin's fault, no other peer would do better */
        *local = moxy_errno_own_shortage(errno);
        *err = strerror(errno);
        return NULL;
    }
    moxy_upconn_t *u = moxy_origin_upconn_new(w, pool, server);
    if (!u) {
        moxy_conn_close(&conn);
        *err = "out of memory";
        return NULL;
    }
    u->conn = conn;
    int fd = conn.fd;
    u->tcp_up = connected != 0;
    event_assign(&u->rev, w->base, fd, EV_READ | EV_PERSIST, moxy_origin_read_cb, u);
    u->idle.ev = &u->rev;
    event_assign(&u->wev, w->base, fd, EV_WRITE | EV_PERSIST, up_write_cb, u);
    return u;
}

int moxy_upstream_write_head(const moxy_req_t *r, const moxy_upstream_conf_t *uc,
                             struct evbuffer *out)
{
    const char *host = uc && uc->host ? uc->host : r->host ? r->host : r->peer;
    return moxy_h1_write_request(r, host, out);
}

/* --- a try: on_upstream, the peer, on_upstream_request, connect --- */

static void try_after_upstream_hooks(moxy_req_t *r, int rc);
static void try_after_request_hooks(moxy_req_t *r, int rc);
static void try_connect(moxy_req_t *r);
static void upstream_hooks_done(moxy_req_t *r, int rc);
static void upstream_request_hooks_done(moxy_req_t *r, int rc);

/* The cache, as the proxy uses it (moxy_upstream_set_cache). */
const moxy_proxy_cache_t *moxy_origin_cache;

void moxy_upstream_set_cache(const moxy_proxy_cache_t *c)
{
    moxy_origin_cache = c;
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

/* --- the origin side as the client side sees it (moxy_origin_ops_t) --- */

static void origin_cut(moxy_req_t *r)
{
    moxy_upconn_t *u = r->up;
    r->up = NULL;
    u->req = NULL;
    moxy_upconn_close(u);
}

/* The request body toward an HTTP/1 origin is chunked when its head said
 * so (moxy_h1_write_request); toward an HTTP/2 one it is the DATA's
 * payload. */
static int body_chunked(const moxy_req_t *r)
{
    return !r->up->h2 && r->body_kind == MOXY_BODY_CHUNKED && !r->body_buffered;
}

/* n body bytes toward the origin: moved from the front of from, or else
 * copied from data; framed as a chunk when the head said chunked. */
static void body_piece(moxy_req_t *r, struct evbuffer *from, const char *data, size_t n)
{
    if (!n) return;
    moxy_upconn_t *u = r->up;
    int chunked = body_chunked(r);
    if (chunked) moxy_chunk_head(u->out, n);
    if (from) moxy_io_move(u->out, from, n);
    else evbuffer_add(u->out, data, n);
    if (chunked) evbuffer_add(u->out, "\r\n", 2);
    r->body_sent = 1;
}

static void origin_body(moxy_req_t *r, struct evbuffer *from, size_t n)
{
    body_piece(r, from, NULL, n);
}

static void origin_body_data(moxy_req_t *r, const char *data, size_t n)
{
    body_piece(r, NULL, data, n);
}

static void origin_body_end(moxy_req_t *r)
{
    if (body_chunked(r)) {
        moxy_chunk_end(r->up->out, &r->trailers);
        r->body_sent = 1;
    }
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

static void origin_pause(moxy_req_t *r)
{
    if (r->up) moxy_origin_stop_read(r->up);
}

static void origin_pump(moxy_req_t *r)
{
    moxy_upconn_t *u = r->up;
    if (!u) return;
    moxy_upstream_resume_read(u);
    if (evbuffer_get_length(u->in) > 0 || u->eof) moxy_origin_process(u);
}

static const moxy_origin_ops_t origin_ops = {
    .cut = origin_cut,
    .body = origin_body,
    .body_data = origin_body_data,
    .body_end = origin_body_end,
    .send = origin_send,
    .backlogged = origin_backlogged,
    .resume_read = origin_resume_read,
    .pause = origin_pause,
    .pump = origin_pump,
};

void moxy_upstream_try_begin(moxy_req_t *r)
{
    moxy_req_cleanup_add(r, moxy_upstream_req_free);
    r->origin = &origin_ops;
    moxy_origin_try_release(r);
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
        moxy_origin_shard_cancel(r); /* set_peer: this address, not the key's owner */
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
        /* cache.shard: a miss whose key another node owns goes there */
        if (!(r->shard_owner && moxy_origin_shard_begin(r)) && pick_peer(r) != MOXY_OK) return;
    }
    rc = moxy_lua_run(r, MOXY_PHASE_UPSTREAM_REQUEST, upstream_request_hooks_done);
    if (rc != MOXY_AGAIN) try_after_request_hooks(r, rc);
}

void moxy_origin_try_pool(moxy_req_t *r)
{
    moxy_upstream_try_begin(r);
    try_after_upstream_hooks(r, MOXY_OK);
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

/* r's body (none, or read whole) can go again on another connection. */
static int body_resendable(const moxy_req_t *r)
{
    return r->body_kind == MOXY_BODY_NONE || r->body_buffered;
}

/* This try of r failed (u: its connection, or NULL) before any response
 * byte reached the client; status is what the client gets if no other try
 * follows.  A reused keep-alive connection that the origin closed (or
 * reset) before answering -- most likely it closed while idle, as the
 * request went -- is sent again once on a new connection to the same peer
 * when r is retryable: moxy cannot tell a close that came before the
 * request from one that came after the origin acted on it, and a proxy
 * must not repeat a non-idempotent request (RFC 9110 9.2.2, RFC 9112
 * 9.3.1).  An HTTP/2 stream the origin refused (u->reused, RFC 9113 8.7)
 * was not processed: it goes again whatever its method.  Otherwise the
 * next try starts when r may have one (moxy_upstream_may_retry,
 * retry_allowed).  1 when another try started. */
int moxy_origin_try_again(moxy_req_t *r, moxy_upconn_t *u, int status, const char *why)
{
    if (u && u->reused && u->eof && !u->got_bytes && !r->fresh_conn && r->tries == 1 &&
        (r->retryable || u->h2) && body_resendable(r)) {
        r->up = NULL;
        u->req = NULL;
        moxy_upconn_close(u);
        r->fresh_conn = 1;
        try_connect(r);
        return 1;
    }
    if (r->shard_try) return moxy_origin_shard_fallback(r, u, why); /* cache.shard: the owner failed */
    moxy_origin_try_report(r, 0);
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

/* Arm u's read event with the timeout tv, or with none (tv NULL).  For
 * none, libevent must forget the timeout it was given before (the connect's,
 * or the idle pool's keepalive_timeout): event_add(ev, NULL) leaves a pending
 * one in place, and a persistent event re-arms the last timeout it was
 * given at each read it wakes for -- which cut a request whose body was
 * still coming at that old deadline.  event_assign clears it. */
static void up_arm_read(moxy_upconn_t *u, const struct timeval *tv)
{
    if (!tv) {
        struct event_base *base;
        evutil_socket_t fd;
        short what;
        event_callback_fn cb;
        void *arg;
        event_del(&u->rev);
        event_get_assignment(&u->rev, &base, &fd, &what, &cb, &arg);
        event_assign(&u->rev, base, fd, what, cb, arg);
    }
    event_add(&u->rev, tv);
}

static void try_connect(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    moxy_upconn_t *u = NULL;
    if (moxy_req_body_check(r) != MOXY_OK) return; /* a bad body answered before the origin sees the head */
    if (r->shard_try && moxy_origin_shard_mark(r) != MOXY_OK) {
        moxy_req_upstream_failed(r, 500, "out of memory");
        return;
    }
    event_base_gettimeofday_cached(w->base, &r->up_started);
    r->up_started_us = moxy_mono_us();
    moxy_peer_t *p = try_peer(r);
    if (p && r->g->conf->upstreams[r->pool].protocol == MOXY_UP_H2) {
        const char *err = NULL;
        errno = 0;
        if (moxy_origin_h2_try(r, p, &err) == MOXY_OK) return;
        if (moxy_errno_own_shortage(errno)) { /* as below: not the origin's fault */
            moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s (moxy's own limit, not the origin's)", r->peer, err);
            moxy_req_upstream_failed(r, 502, "cannot connect to origin");
            return;
        }
        moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s", r->peer, err);
        if (!moxy_origin_try_again(r, NULL, 502, "cannot connect to origin"))
            moxy_req_upstream_failed(r, 502, "cannot connect to origin");
        return;
    }
    /* an idle connection to the peer's current addresses, if any */
    unsigned gen = p ? atomic_load_explicit(&p->addr_gen, memory_order_relaxed) : 0;
    moxy_pool_rt_t *rt = p ? &r->g->pools[r->pool] : NULL;
    while (rt && r->tries == 1 && !r->fresh_conn && (u = idle_take(rt, r->server))) {
        /* Not one whose name resolves elsewhere now, nor, for a request
         * that could not go again (a POST), one the origin closed (or sent
         * to) since the idle event last looked: its FIN may wait in the
         * event loop's turn that brought this request.  One recv() that
         * finds nothing; a retryable request without a body skips it (it
         * goes again on its own, moxy_origin_try_again): no syscall per
         * request on the common path. */
        if (u->addr_gen == gen &&
            ((r->retryable && body_resendable(r)) || !moxy_conn_idle_readable(&u->conn)))
            break;
        moxy_upconn_close(u);
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
        int local;
        u = up_connect(w, sa, salen, p ? r->pool : -1, r->server, &err, &local);
        if (!u && local) {
            /* moxy's own shortage: the peer is not marked failed, nor another tried */
            moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s (moxy's own limit, not the origin's)", r->peer, err);
            moxy_req_upstream_failed(r, 502, "cannot connect to origin");
            return;
        }
        if (!u) {
            /* a try to a cache.shard owner falls back, saying so once a second */
            int shard = r->shard_try;
            if (!shard) moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s", r->peer, err);
            if (!moxy_origin_try_again(r, NULL, 502, "cannot connect to origin")) {
                if (shard) moxy_log(MOXY_LOG_ERR, r->id, "connect to %s: %s", r->peer, err);
                moxy_req_upstream_failed(r, 502, "cannot connect to origin");
            }
            return;
        }
        u->addr_gen = gen;
        u->g = r->g;
    }
    if (u->connected || u->tcp_up) r->up_connected_us = r->up_started_us;
    u->req = r;
    r->up = u;
    u->got_bytes = u->eof = u->reset = u->write_failed = 0;
    u->keepalive = u->server >= 0; /* set_peer connections are not kept */
    moxy_origin_response_start(u);
    const moxy_upstream_conf_t *uc = u->pool >= 0 ? &r->g->conf->upstreams[u->pool] : NULL;
    if (moxy_upstream_write_head(r, moxy_origin_shard_host_pool(r, uc), u->out) != MOXY_OK) {
        moxy_req_upstream_failed(r, 500, "out of memory");
        return;
    }
    /* The read timeout starts once the whole request is sent (as nginx's
     * proxy_read_timeout); until then the client's body timeout rules. */
    u->read_timer = r->body_done;
    up_arm_read(u, u->read_timer ? r->g->ctv_upstream : NULL);
    u->reading = 1;
    if (u->connected) {
        moxy_upstream_send(u);
    } else if (u->tcp_up) {
        u->tcp_up = 0;
        up_tcp_ready(u); /* connected at once: TLS, or the request */
    } else {
        event_add(&u->wev, &r->g->tv_connect);
        u->writing = 1;
    }
}

/* The origin failed this request: try again elsewhere when the failure came
 * before any response byte and r may (retry), else answer status. */
void moxy_origin_fail(moxy_upconn_t *u, int status, const char *why, int retry)
{
    moxy_req_t *r = u->req;
    if (!r) {
        moxy_upconn_close(u);
        return;
    }
    /* Nothing of the response went on while its head is not whole (no
     * interim head either): the try failed before any response byte
     * reached the client, however many bytes of a head came (a malformed
     * or cut head is a failed try, as a reset is). */
    retry = retry && !u->resp->head_done && !u->resp->interims;
    /* a try to a cache.shard owner that falls back says so once a second */
    int shard = r->shard_try && retry && !u->got_bytes;
    const char *pool = u->pool >= 0 ? u->g->conf->upstreams[u->pool].name : "-";
    if (!shard) moxy_log(MOXY_LOG_ERR, r->id, "origin %s (pool %s): %s", r->peer, pool, why);
    if (retry && moxy_origin_try_again(r, u, status, why)) return;
    if (shard) moxy_log(MOXY_LOG_ERR, r->id, "origin %s (pool %s): %s", r->peer, pool, why);
    if (!u->resp->head_done) moxy_origin_try_report(r, 0);
    moxy_req_upstream_failed(r, status, why);
}

void moxy_req_upstream_failed(moxy_req_t *r, int status, const char *why)
{
    moxy_req_origin_cut(r);
    if (r->resp_head_sent) {
        r->error = why;
        if (r->pool >= 0 && r->g->pools) MOXY_STAT_ADD(r->g->pools[r->pool].stats->cut, 1);
        moxy_log(MOXY_LOG_WARN, r->id, "%s (response already started, connection cut)", why);
        moxy_stream_abort(r);
        return;
    }
    if (moxy_origin_cache->stale_on_error(r, status)) return;
    moxy_req_fail(r, status, why);
}

int moxy_upstream_backlogged(const moxy_upconn_t *u)
{
    return evbuffer_get_length(u->out) >= moxy_high_water();
}

void moxy_upstream_send(moxy_upconn_t *u)
{
    if (u->h2 && !u->dead) {
        moxy_origin_h2_send(u);
        return;
    }
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
    if (r && left < moxy_low_water()) moxy_stream_resume_read(r);
}

void moxy_origin_tls_step(moxy_upconn_t *u)
{
    const moxy_upstream_conf_t *uc = &u->g->conf->upstreams[u->pool];
    if (!u->tls_wait) { /* TCP just connected: TLS begins, within timeouts.connect */
        if (moxy_upstream_tls_connect(&u->conn, uc, u->server) != MOXY_OK) {
            moxy_origin_fail(u, 502, "out of memory", 0);
            return;
        }
        u->tls_wait = 1;
        event_add(&u->rev, &u->g->tv_connect);
        u->reading = 1;
    }
    short want = 0;
    const char *why = NULL;
    int kind;
    int rc = moxy_tls_handshake(&u->conn, &want, &why, &kind);
    if (rc == MOXY_ERROR) {
        moxy_log(MOXY_LOG_ERR, u->req ? u->req->id : NULL, "origin %s (pool %s): TLS handshake failed: %s",
                 uc->servers[u->server].addr.text, uc->name, why);
        moxy_origin_fail(u, 502, "TLS handshake with the origin failed", 1);
        return;
    }
    if (rc == MOXY_AGAIN) {
        if (want == EV_WRITE && !u->writing) {
            event_add(&u->wev, &u->g->tv_connect);
            u->writing = 1;
        } else if (want == EV_READ && u->writing) {
            event_del(&u->wev);
            u->writing = 0;
        }
        return;
    }
    u->tls_wait = 0;
    u->connected = 1;
    if (u->writing) {
        event_del(&u->wev);
        u->writing = 0;
    }
    /* the read timeout starts once the request is sent (try_connect's rule);
     * the handshake's timeout ends here */
    up_arm_read(u, u->read_timer ? u->g->ctv_upstream : NULL);
    moxy_upstream_send(u);
}

/* u's TCP connection is up: TLS begins for a pool that speaks it, else
 * the request goes. */
static void up_tcp_ready(moxy_upconn_t *u)
{
    if (u->pool >= 0 && u->g->conf->upstreams[u->pool].tls) {
        moxy_origin_tls_step(u);
        return;
    }
    u->connected = 1;
    moxy_upstream_send(u);
}

static void up_write(moxy_upconn_t *u, short what)
{
    if (what & EV_TIMEOUT) {
        moxy_origin_fail(u, 504,
                         u->connected  ? "origin write timed out"
                         : u->tls_wait ? "TLS handshake with the origin timed out"
                                       : "connect to origin timed out",
                         !u->connected);
        return;
    }
    if (u->tls_wait) {
        moxy_origin_tls_step(u);
        return;
    }
    if (!u->connected) {
        if (moxy_conn_connected(&u->conn) != MOXY_OK) {
            int err = errno;
            if (u->req)
                moxy_log(MOXY_LOG_DEBUG, u->req->id, "connect to %s: %s", u->req->peer, strerror(err));
            moxy_origin_fail(u, 502,
                    err == ECONNREFUSED ? "connect failed: connection refused"
                    : err == ETIMEDOUT  ? "connect failed: timed out"
                                        : "connect failed",
                    1);
            return;
        }
        if (u->req) {
            moxy_req_t *r = u->req;
            r->up_connected_us = moxy_mono_us();
            if (u->pool >= 0)
                moxy_hist_add(&u->g->pools[u->pool].stats->connect_time,
                              r->up_connected_us - r->up_started_us);
        }
        event_del(&u->wev);
        u->writing = 0;
        up_tcp_ready(u);
        return;
    }
    moxy_upstream_send(u);
}

void moxy_origin_event(moxy_upconn_t *u, short what, void (*fn)(moxy_upconn_t *u, short what))
{
    moxy_req_t *r = u->req;
    moxy_stream_ref_t s = {NULL, NULL};
    if (r) {
        s = moxy_req_stream(r);
        moxy_req_hold(r);
    }
    moxy_stream_hold(s);
    moxy_origin_hold(u);
    fn(u, what);
    moxy_origin_release(u);
    moxy_stream_release(s);
    if (r) moxy_req_release(r);
}

static void up_write_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    moxy_origin_event(arg, what, up_write);
}

void moxy_upstream_resume_read(moxy_upconn_t *u)
{
    if (u->h2) {
        moxy_origin_h2_resume(u);
        return;
    }
    if (u->reading || u->dead || u->eof) return;
    event_add(&u->rev, u->g->ctv_upstream);
    u->reading = 1;
    if (evbuffer_get_length(u->in) > 0 || moxy_conn_pending(&u->conn)) {
        /* bytes read before the pause are still waiting */
        event_active(&u->rev, EV_READ, 0);
    }
}

void moxy_origin_stop_read(moxy_upconn_t *u)
{
    if (u->reading) {
        event_del(&u->rev);
        u->reading = 0;
    }
}

static int upstream_wgen_init(moxy_wgen_t *g)
{
    if (moxy_upstream_init_wgen(g) == MOXY_OK) return MOXY_OK;
    snprintf(g->w->error, sizeof(g->w->error), "out of memory");
    return MOXY_ERROR;
}

moxy_module_t moxy_upstream_module = {
    .name = "upstreams",
    .wgen_init = upstream_wgen_init,
    .wgen_free = moxy_upstream_free_wgen,
    .wgen_switch = moxy_upstream_switch_wgen,
    .worker_drain = moxy_upstream_close_idle,
};
