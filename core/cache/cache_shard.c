/*
 * cache_shard.c -- the fleet's caches as one (cache.shard): each key has
 * an owner among the fleet's moxy nodes, the Maglev choice of the pool
 * cache.shard names (balancer.c) for the key's hash, among the nodes that
 * are usable; a miss on any other node goes to the owner, which looks up
 * its own cache and fills it from the origin once (its coalescing makes
 * concurrent misses one fetch), so the fleet fetches a key once.
 *
 * This file is the cache's half: which node owns a miss's key (the
 * lookup's, moxy_cache_shard_route), and, before on_request, what a
 * request that says it is a peer's fill is (moxy_cache_shard_check).  The
 * try toward the owner, its marks and the fallback to the origin when the
 * owner cannot be reached are the proxy's (proxy/origin_shard.c).
 *
 * The marks a fill request carries (origin_shard.c writes them):
 *
 *   Moxy-Shard: <the sender's server in the pool>
 *   Moxy-Shard-Key: <the cache key the sender made>
 *   Moxy-Shard-Pool: <the pool the sender chose for the origin>
 *   Moxy-Shard-Secret: <cache.shard.secret>          (when configured)
 *
 * They are believed only from a peer: the connection's address is one of
 * the pool's servers' and the secret, when configured, matches; from
 * anyone else they are removed and the request is an ordinary one.  From
 * a peer's address but not believed (its secret differs: a configuration
 * on its way through the fleet) they are removed too, and the request is
 * filled here rather than sent on: sent on, it could come back, and again.  The
 * owner serves a fill with no hook but on_log (the sender ran its own on
 * the request, and runs on_response and on_body on what it gets back),
 * under the key and toward the pool the marks name (one of its own pools,
 * never the shard pool), without compression (the sender compresses for
 * its client), and never sends it on to another node: two nodes that
 * disagree about an owner cost a fetch, never a loop.
 */
#include "cache/cache.h"
#include "cache/http_cache.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/realip.h"
#include "http/request.h"
#include "http/worker.h"
#include "proxy/upstream.h"

#include <string.h>

#define MARK "moxy-shard" /* the marks' common prefix, in any case */
#define MARK_LEN 10

/* 1 when the n bytes at a and b are equal, in a time that does not say
 * where they differ (the secret). */
static int same_secret(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char d = an != bn;
    for (size_t i = 0; i < an && i < bn; i++) d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

/* 1 when key can travel as a field value: visible ASCII and spaces only
 * (a key from on_cache_key may hold any byte; such a key is not sharded). */
static int key_fits_field(const char *key, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch < 0x20 || ch > 0x7e) return 0;
    }
    return len > 0 && key[0] != ' ' && key[len - 1] != ' ';
}

/* Note what sharding did for r: its state and the access log's shard=. */
static void note(moxy_req_t *r, int state, const char *word)
{
    r->shard_state = (unsigned char)state;
    moxy_req_log_field(r, "shard", 5, word, strlen(word), 1);
}

/* A fill mark from a peer's address was not believed (why): one warning a
 * second per worker at most, the others counted in it. */
static void not_believed(moxy_req_t *r, const char *why)
{
    static _Thread_local long long last_ms;
    static _Thread_local unsigned long long quiet;
    long long now = moxy_mono_ms();
    if (now - last_ms < 1000) {
        quiet++;
        return;
    }
    last_ms = now;
    moxy_log(MOXY_LOG_WARN, r->id,
             "cache.shard: a fill mark from %s (a peer's address) not believed: %s; filled here (%llu more like it in "
             "the last second not logged)",
             r->addr->sock_ip, why, quiet);
    quiet = 0;
}

int moxy_cache_shard_check(moxy_req_t *r)
{
    const moxy_conf_t *conf = r->g->conf;
    if (!conf->cache.shard || !moxy_cache_enabled()) return 0;
    const moxy_header_t *mark = NULL, *key = NULL, *pool = NULL, *secret = NULL;
    int any = 0;
    moxy_headers_t *hs = &r->headers;
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        if (h->name_len < MARK_LEN || !moxy_strieq(h->name, MARK_LEN, MARK, MARK_LEN)) continue;
        any = 1;
        const char *rest = h->name + MARK_LEN;
        size_t rn = h->name_len - MARK_LEN;
        if (rn == 0) mark = h;
        else if (moxy_strieq(rest, rn, "-key", 4)) key = h;
        else if (moxy_strieq(rest, rn, "-pool", 5)) pool = h;
        else if (moxy_strieq(rest, rn, "-secret", 7)) secret = h;
    }
    if (!any) return 0;
    /* believed from a peer only; a second mark of a kind is no fill */
    int ok = mark && key && pool && key->value_len > 0 && moxy_cache_looked_up(r);
    if (ok && conf->cache.shard_secret) {
        const char *s = conf->cache.shard_secret;
        ok = secret && same_secret(secret->value, secret->value_len, s, strlen(s));
    }
    int from_peer = moxy_upstream_has_address(conf->upstreams[conf->cache.shard_pool].state, r->addr->sock_ip);
    ok = ok && from_peer;
    moxy_header_t k = key ? *key : (moxy_header_t){0}, p = pool ? *pool : (moxy_header_t){0};
    /* the marks never go further, believed or not */
    uint32_t n = 0;
    for (uint32_t i = 0; i < hs->n; i++)
        if (!(hs->h[i].name_len >= MARK_LEN && moxy_strieq(hs->h[i].name, MARK_LEN, MARK, MARK_LEN)))
            hs->h[n++] = hs->h[i];
    int dup = hs->n - n > (conf->cache.shard_secret ? 4u : 3u);
    hs->n = n;
    if (!ok || dup) {
        if (mark && from_peer) {
            /* a peer's configuration differs from this one (the secret, a
             * rollout): sent on, it could come back here, and again -- so it
             * is filled here; a client on a peer's address can do no more
             * than that (set a secret, keep clients off the nodes' addresses) */
            r->shard_local = 1;
            not_believed(r, dup ? "marks repeated" : "a wrong or missing secret, key or pool");
        } else if (mark) {
            moxy_log(MOXY_LOG_DEBUG, r->id, "cache.shard: a fill mark from %s, not a peer: removed", r->addr->sock_ip);
        }
        return 0;
    }
    int pi = moxy_conf_upstream_index(conf, p.value, p.value_len);
    if (pi < 0 || pi == conf->cache.shard_pool) {
        /* a peer whose configuration differs (a reload on its way through
         * the fleet): 421 tells it to go to the origin itself */
        moxy_log(MOXY_LOG_WARN, r->id, "cache.shard: a fill from %s names pool \"%.*s\", which is not an origin pool here",
                 r->addr->sock_ip, (int)MOXY_MIN(p.value_len, 64), p.value);
        moxy_resp_error(r, 421, "cache.shard: no such origin pool here");
        return -1;
    }
    char *kc = moxy_pstrdup(&r->mem, k.value, k.value_len);
    if (!kc) {
        moxy_resp_error(r, 500, "out of memory");
        return -1;
    }
    r->cache_key = kc;
    r->cache_klen = (uint32_t)k.value_len;
    r->cache_hash = moxy_cache_hash(kc, k.value_len);
    r->pool = pi;
    /* the client the sender saw, from the X-Forwarded-For it appended to
     * (trusted_proxies walked as the sender did): the log's client and a
     * hash-balanced origin pool's key, as on the sender */
    if (!r->client_ip) moxy_realip_resolve(r);
    r->shard_fill = 1;
    r->no_filter = 1;      /* on_body is the sender's */
    r->compress_want = -1; /* so is compression: the body goes as stored */
    note(r, MOXY_SHARD_FILL, "fill");
    MOXY_STAT_ADD(r->w->stats.shard_fills, 1);
    return 1;
}

int moxy_cache_shard_route(moxy_req_t *r)
{
    const moxy_conf_t *conf = r->g->conf;
    if (!conf->cache.shard || r->shard_fill || r->shard_local || r->cache_background) return MOXY_DECLINED;
    /* what the cache keeps to itself: a request that must not be stored,
     * and a stale object this node holds (it revalidates it itself) */
    if (r->cache_no_store || r->cache_reval || r->peer_addr) return MOXY_DECLINED;
    if (!key_fits_field(r->cache_key, r->cache_klen)) return MOXY_DECLINED;
    moxy_upstream_t *up = conf->upstreams[conf->cache.shard_pool].state;
    int owner = moxy_balancer_owner(up, moxy_hash64(r->cache_key, r->cache_klen), moxy_mono_ms());
    if (owner < 0 || owner == conf->cache.shard_self) {
        /* no usable node at all: each node is its own cache, as without sharding */
        note(r, MOXY_SHARD_SELF, "self");
        return MOXY_DECLINED;
    }
    r->shard_owner = owner + 1;
    note(r, MOXY_SHARD_OWNER, "owner");
    return MOXY_OK;
}
