/*
 * origin_shard.c -- the proxy's half of cache.shard (cache/cache_shard.c
 * says whose a key is): a miss whose key another node owns goes to that
 * node instead of the origin, as the request the origin would get (after
 * on_upstream and on_upstream_request, the Host of the pool chosen) plus
 * the marks that make it a fill (Moxy-Shard, -Key, -Pool, -Secret); and
 * when the owner cannot be reached -- down by the pool's health, the
 * connect refused or timed out, reset or closed before its head, a 421
 * (its configuration lacks the pool) -- the request goes to the origin
 * itself at once, counted, with one log line a second at most per worker.
 *
 * During the owner's try r->pool is the shard pool and r->server the
 * owner, so that the pool's keep-alive connections, passive health
 * (failures eject the owner, and its keys move to their next choice) and
 * counts apply; r->shard_origin keeps the pool chosen for the origin.
 */
#include "proxy/origin.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/worker.h"

#include <stdio.h>
#include <string.h>

/* The marks: set (never twice: a try sent again on a new connection sets
 * them again) or removed. */
static const struct {
    const char *name;
    size_t len;
} marks[] = {{"Moxy-Shard", 10}, {"Moxy-Shard-Key", 14}, {"Moxy-Shard-Pool", 15}, {"Moxy-Shard-Secret", 17}};

void moxy_origin_shard_cancel(moxy_req_t *r)
{
    if (r->shard_owner <= 0) return;
    r->shard_owner = 0;
    r->shard_state = MOXY_SHARD_NONE; /* its response is this node's to store */
    moxy_req_log_field(r, "shard", 5, "none", 4, 1);
}

int moxy_origin_shard_begin(moxy_req_t *r)
{
    const moxy_conf_t *conf = r->g->conf;
    int sp = conf->cache.shard_pool, owner = r->shard_owner - 1;
    if (r->shard_owner <= 0) return 0;
    if (r->pool == sp || !r->cache_key) { /* a hook sent it to the shard pool itself */
        moxy_origin_shard_cancel(r);
        return 0;
    }
    moxy_upstream_t *up = conf->upstreams[sp].state;
    moxy_peer_t *p = &up->peers[owner];
    if (moxy_peer_state(p, moxy_mono_ms()) != MOXY_PEER_UP) {
        /* gone down since the lookup */
        moxy_origin_shard_fell_back(r, "its owner is down");
        return 0;
    }
    r->shard_origin = r->pool;
    r->pool = sp;
    r->shard_try = 1;
    r->tried_pool = -1; /* the origin's pick, if it comes to that, starts afresh */
    r->server = owner;
    r->peer = p->conf->addr.text;
    r->active_server = owner;
    atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->requests, 1, memory_order_relaxed);
    MOXY_STAT_ADD(r->w->stats.shard_forwarded, 1);
    return 1;
}

int moxy_origin_shard_mark(moxy_req_t *r)
{
    const moxy_conf_t *conf = r->g->conf;
    const moxy_upstream_conf_t *sp = &conf->upstreams[conf->cache.shard_pool];
    const char *self = sp->servers[conf->cache.shard_self].addr.text;
    const char *pool = conf->upstreams[r->shard_origin].name;
    const char *secret = conf->cache.shard_secret;
    moxy_headers_t *hs = &r->headers;
    if (moxy_headers_set(&r->mem, hs, marks[0].name, marks[0].len, self, strlen(self)) != MOXY_OK ||
        moxy_headers_set(&r->mem, hs, marks[1].name, marks[1].len, r->cache_key, r->cache_klen) != MOXY_OK ||
        moxy_headers_set(&r->mem, hs, marks[2].name, marks[2].len, pool, strlen(pool)) != MOXY_OK ||
        (secret && moxy_headers_set(&r->mem, hs, marks[3].name, marks[3].len, secret, strlen(secret)) != MOXY_OK))
        return MOXY_ERROR;
    return MOXY_OK;
}

const moxy_upstream_conf_t *moxy_origin_shard_host_pool(const moxy_req_t *r, const moxy_upstream_conf_t *uc)
{
    return r->shard_try ? &r->g->conf->upstreams[r->shard_origin] : uc;
}

void moxy_origin_shard_fell_back(moxy_req_t *r, const char *why)
{
    static _Thread_local long long last_ms;
    static _Thread_local unsigned long long quiet;
    r->shard_owner = 0;
    r->shard_state = MOXY_SHARD_FALLBACK;
    moxy_req_log_field(r, "shard", 5, "fallback", 8, 1);
    MOXY_STAT_ADD(r->w->stats.shard_fallbacks, 1);
    long long now = moxy_mono_ms();
    if (now - last_ms < 1000) {
        quiet++;
        return;
    }
    last_ms = now;
    const moxy_conf_t *conf = r->g->conf;
    const moxy_upstream_conf_t *sp = &conf->upstreams[conf->cache.shard_pool];
    moxy_log(MOXY_LOG_WARN, r->id, "cache.shard: %s: %s; to the origin itself (pool %s's owner %s; %llu more like it "
                                   "in the last second not logged)",
             r->cache_key, why, sp->name, r->peer ? r->peer : "-", quiet);
    quiet = 0;
}

int moxy_origin_shard_fallback(moxy_req_t *r, moxy_upconn_t *u, const char *why)
{
    /* nothing of the owner's answer went to the client, and the request
     * can be sent again (a GET or HEAD's body, if any, not streamed) */
    if (r->resp_head_sent || moxy_req_client_gone(r) ||
        (r->body_kind != MOXY_BODY_NONE && !r->body_buffered && (r->body_read > 0 || r->body_sent)))
        return 0;
    moxy_origin_try_report(r, 0); /* the owner's passive health */
    if (u) {
        r->up = NULL;
        u->req = NULL;
        moxy_upconn_close(u);
    }
    moxy_origin_try_release(r);
    for (size_t i = 0; i < MOXY_ARRAY_LEN(marks); i++) moxy_headers_remove(&r->headers, marks[i].name, marks[i].len);
    moxy_origin_shard_fell_back(r, why);
    r->pool = r->shard_origin;
    r->shard_try = 0;
    r->tries = 0; /* the origin's tries are its pool's to count */
    r->error = NULL;
    r->fail_status = 0;
    r->last_server = -1;
    moxy_origin_try_pool(r);
    return 1;
}
