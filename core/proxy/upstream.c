/*
 * upstream.c -- the shared running state of upstream pools (see upstream.h):
 * peers' usability, slow start, passive health, drain, addresses, and the
 * retry budget.
 */
#include "proxy/upstream.h"
#include "base/addr.h"
#include "net/tls.h"
#include "base/log.h"
#include "http/lua_bridge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- creation --- */

static int state_create(moxy_upstream_conf_t *uc)
{
    moxy_upstream_t *up = calloc(1, sizeof(*up));
    if (!up) return MOXY_ERROR;
    uc->state = up;
    uc->state_free = moxy_upstream_state_free;
    up->conf = uc;
    pthread_mutex_init(&up->lock, NULL);
    up->peers = calloc((size_t)uc->nservers + 1, sizeof(*up->peers));
    if (!up->peers) return MOXY_ERROR;
    up->npeers = uc->nservers;
    for (int i = 0; i < uc->nservers; i++) {
        moxy_peer_t *p = &up->peers[i];
        const moxy_server_conf_t *s = &uc->servers[i];
        p->conf = s;
        p->pool = up;
        pthread_mutex_init(&p->addr_lock, NULL);
        pthread_mutex_init(&p->check_lock, NULL);
        if (!s->backup) up->nprimary++;
        if (!s->name) {
            p->addrs[0] = s->addr.sa;
            p->addrlens[0] = s->addr.salen;
            p->naddrs = 1;
            atomic_store(&p->resolved, 1);
        }
        atomic_store(&p->drained, s->drain);
    }
    if (uc->balance == MOXY_BAL_HASH) return moxy_balancer_build(up);
    return MOXY_OK;
}

/* 1 when pools a and b are defined alike (name, servers and every setting):
 * b may keep a's running state. */
static int pool_same(const moxy_upstream_conf_t *a, const moxy_upstream_conf_t *b)
{
    if (!moxy_str_same(a->name, b->name) || a->nservers != b->nservers || !moxy_str_same(a->host, b->host) ||
        a->keepalive != b->keepalive || a->keepalive_timeout != b->keepalive_timeout ||
        a->balance != b->balance || a->protocol != b->protocol || a->max_streams != b->max_streams ||
        a->tries != b->tries || a->retry_timeout != b->retry_timeout ||
        memcmp(&a->retry_statuses, &b->retry_statuses, sizeof(a->retry_statuses)) != 0 ||
        a->retry_budget != b->retry_budget || a->retry_budget_min != b->retry_budget_min ||
        a->resolve != b->resolve || a->passive.failures != b->passive.failures ||
        a->passive.window != b->passive.window || a->passive.backoff != b->passive.backoff ||
        a->passive.max_backoff != b->passive.max_backoff || a->passive.max_ejected != b->passive.max_ejected ||
        memcmp(&a->passive.statuses, &b->passive.statuses, sizeof(a->passive.statuses)) != 0 ||
        a->health.type != b->health.type || !moxy_str_same(a->health.method, b->health.method) ||
        !moxy_str_same(a->health.path, b->health.path) || !moxy_str_same(a->health.host, b->health.host) ||
        memcmp(&a->health.statuses, &b->health.statuses, sizeof(a->health.statuses)) != 0 ||
        !moxy_str_same(a->health.body, b->health.body) || a->health.interval != b->health.interval ||
        a->health.timeout != b->health.timeout || a->health.healthy != b->health.healthy ||
        a->health.unhealthy != b->health.unhealthy)
        return 0;
    for (int i = 0; i < a->nservers; i++) {
        const moxy_server_conf_t *x = &a->servers[i], *y = &b->servers[i];
        if (!moxy_str_same(x->addr.text, y->addr.text) || x->weight != y->weight || x->backup != y->backup ||
            x->max_conns != y->max_conns || x->drain != y->drain || x->slow_start != y->slow_start)
            return 0;
    }
    return 1;
}

/* A pool that changed keeps what its servers (by address text) went
 * through: drain (unless the configuration's drain flag changed), health
 * verdicts, ejection, latency, counters, resolved addresses.  Requests in
 * flight keep counting in the old state's in-flight numbers. */
static void carry_peers(moxy_upstream_t *to, moxy_upstream_t *from)
{
    for (int i = 0; i < to->npeers; i++) {
        moxy_peer_t *p = &to->peers[i];
        moxy_peer_t *q = moxy_upstream_find_peer(from, p->conf->addr.text, strlen(p->conf->addr.text));
        if (!q) continue;
        if (q->conf->drain == p->conf->drain) atomic_store(&p->drained, atomic_load(&q->drained));
        atomic_store(&p->check_down, atomic_load(&q->check_down));
        atomic_store(&p->check_ok, atomic_load(&q->check_ok));
        atomic_store(&p->check_fail, atomic_load(&q->check_fail));
        atomic_store(&p->checks, atomic_load(&q->checks));
        atomic_store(&p->down_until, atomic_load(&q->down_until));
        atomic_store(&p->up_since, atomic_load(&q->up_since));
        atomic_store(&p->ewma_us, atomic_load(&q->ewma_us));
        atomic_store(&p->ewma_at, atomic_load(&q->ewma_at));
        atomic_store(&p->fails, atomic_load(&q->fails));
        atomic_store(&p->requests, atomic_load(&q->requests));
        atomic_store(&p->failures, atomic_load(&q->failures));
        atomic_store(&p->ejections_total, atomic_load(&q->ejections_total));
        atomic_store(&p->transitions, atomic_load(&q->transitions));
        pthread_mutex_lock(&from->lock);
        p->ejected_at = q->ejected_at; /* a check must start after it to end it */
        pthread_mutex_unlock(&from->lock);
        pthread_mutex_lock(&q->check_lock);
        memcpy(p->check_error, q->check_error, sizeof(p->check_error));
        pthread_mutex_unlock(&q->check_lock);
        if (p->conf->name && q->conf->name && strcmp(p->conf->name, q->conf->name) == 0) {
            pthread_mutex_lock(&q->addr_lock);
            memcpy(p->addrs, q->addrs, sizeof(p->addrs));
            memcpy(p->addrlens, q->addrlens, sizeof(p->addrlens));
            p->naddrs = q->naddrs;
            pthread_mutex_unlock(&q->addr_lock);
            atomic_store(&p->resolved, p->naddrs > 0);
        }
    }
    atomic_store(&to->retries, atomic_load(&from->retries));
    atomic_store(&to->budget_denied, atomic_load(&from->budget_denied));
}

int moxy_upstreams_create(moxy_conf_t *conf, const moxy_conf_t *old)
{
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_upstream_conf_t *uc = &conf->upstreams[i];
        int o = old ? moxy_conf_upstream_index(old, uc->name, strlen(uc->name)) : -1;
        const moxy_upstream_conf_t *ouc = o >= 0 ? &old->upstreams[o] : NULL;
        if (ouc && pool_same(ouc, uc)) {
            uc->state = ouc->state;
            uc->state_owner = ouc->state_owner ? ouc->state_owner : (moxy_conf_t *)old;
            moxy_conf_hold(uc->state_owner);
            continue;
        }
        if (state_create(uc) != MOXY_OK) return MOXY_ERROR;
        if (ouc) carry_peers(uc->state, ouc->state);
    }
    return MOXY_OK;
}

void moxy_upstream_state_free(moxy_upstream_t *up)
{
    if (!up) return;
    for (int i = 0; up->peers && i < up->npeers; i++) {
        pthread_mutex_destroy(&up->peers[i].addr_lock);
        pthread_mutex_destroy(&up->peers[i].check_lock);
    }
    pthread_mutex_destroy(&up->lock);
    free(up->peers);
    free(up->maglev);
    free(up);
}

/* --- usability --- */

int moxy_peer_state(const moxy_peer_t *p, long long now)
{
    if (atomic_load_explicit(&p->drained, memory_order_relaxed)) return MOXY_PEER_DRAINED;
    if (atomic_load_explicit(&p->check_down, memory_order_relaxed)) return MOXY_PEER_UNHEALTHY;
    if (atomic_load_explicit(&p->down_until, memory_order_relaxed) > now) return MOXY_PEER_DOWN;
    if (!atomic_load_explicit(&p->resolved, memory_order_relaxed)) return MOXY_PEER_UNRESOLVED;
    return MOXY_PEER_UP;
}

int moxy_peer_weight(const moxy_peer_t *p, long long now)
{
    int w = p->conf->weight * 16;
    if (p->conf->slow_start <= 0) return w;
    long long since = atomic_load_explicit(&p->up_since, memory_order_relaxed);
    if (since == 0 || now < since) return w;
    double ramp = (double)(now - since) / (p->conf->slow_start * 1000.0);
    if (ramp >= 1) return w;
    int r = (int)(w * ramp);
    return r > 0 ? r : 1;
}

int moxy_peer_addr(moxy_peer_t *p, struct sockaddr_storage *sa, socklen_t *salen, unsigned *gen)
{
    if (!p->conf->name) { /* fixed: no lock */
        *sa = p->addrs[0];
        *salen = p->addrlens[0];
        *gen = 0;
        return MOXY_OK;
    }
    int rc = MOXY_DECLINED;
    pthread_mutex_lock(&p->addr_lock);
    if (p->naddrs > 0) {
        unsigned i = atomic_fetch_add_explicit(&p->addr_next, 1, memory_order_relaxed) % (unsigned)p->naddrs;
        *sa = p->addrs[i];
        *salen = p->addrlens[i];
        *gen = atomic_load(&p->addr_gen);
        rc = MOXY_OK;
    }
    pthread_mutex_unlock(&p->addr_lock);
    return rc;
}

/* exp(-ms / MOXY_EWMA_DECAY_MS), closely enough for a weight: 1 / (1 + x +
 * x^2/2 + x^3/6) is within 2% of exp(-x) for x <= 1 and falls off alike. */
static double decay(long long ms)
{
    if (ms <= 0) return 1;
    double x = (double)ms / MOXY_EWMA_DECAY_MS;
    return 1 / (1 + x * (1 + x * (0.5 + x / 6)));
}

double moxy_peer_ewma(const moxy_peer_t *p, long long now)
{
    long long e = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
    if (e == 0) return 0;
    long long at = atomic_load_explicit(&p->ewma_at, memory_order_relaxed);
    return now > at ? (double)e * decay(now - at) : (double)e;
}

/* --- passive health --- */

/* Peers of up ejected now (pool lock held). */
static int ejected_count(const moxy_upstream_t *up, long long now)
{
    int n = 0;
    for (int i = 0; i < up->npeers; i++)
        if (atomic_load_explicit(&up->peers[i].down_until, memory_order_relaxed) > now) n++;
    return n;
}

static void peer_failed(moxy_peer_t *p, long long now)
{
    moxy_upstream_t *up = p->pool;
    const moxy_upstream_conf_t *uc = up->conf;
    atomic_fetch_add_explicit(&p->failures, 1, memory_order_relaxed);
    if (uc->passive.failures <= 0) return;
    pthread_mutex_lock(&up->lock);
    if (atomic_load(&p->down_until) > now) goto out; /* already out (a try started before) */
    int fails = atomic_load(&p->fails);
    if (fails == 0 || now - p->first_fail > (long long)(uc->passive.window * 1000)) {
        p->first_fail = now;
        fails = 0;
    }
    atomic_store(&p->fails, ++fails);
    if (fails < uc->passive.failures) goto out;
    int limit = (int)(uc->passive.max_ejected * up->npeers + 1e-9);
    if (ejected_count(up, now) + 1 > limit) {
        moxy_log(MOXY_LOG_WARN, NULL,
                 "upstream %s: peer %s failed %d times but stays in: %d of %d peers may be ejected at once",
                 uc->name, p->conf->addr.text, fails, limit, up->npeers);
        atomic_store(&p->fails, 0);
        goto out;
    }
    double backoff = uc->passive.backoff;
    for (int i = 0; i < p->ejections && backoff < uc->passive.max_backoff; i++) backoff *= 2;
    if (backoff > uc->passive.max_backoff) backoff = uc->passive.max_backoff;
    long long until = now + (long long)(backoff * 1000);
    p->ejections++;
    p->ejected_at = now;
    atomic_fetch_add(&p->ejections_total, 1);
    atomic_store(&p->fails, 0);
    atomic_store(&p->up_since, until);
    atomic_store(&p->down_until, until);
    moxy_log(MOXY_LOG_WARN, NULL, "upstream %s: peer %s is down for %.3gs after %d failures",
             uc->name, p->conf->addr.text, backoff, fails);
out:
    pthread_mutex_unlock(&up->lock);
}

void moxy_peer_report(moxy_peer_t *p, int ok, long long latency_us)
{
    if (latency_us > 0) {
        /* peak EWMA (Finagle's): a slower sample counts at once; the cost
         * decays toward faster ones with the time between samples */
        long long now = moxy_mono_ms();
        long long at = atomic_load_explicit(&p->ewma_at, memory_order_relaxed);
        double e = (double)atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
        double w = decay(now - at);
        double n = (double)latency_us > e ? (double)latency_us : e * w + (double)latency_us * (1 - w);
        atomic_store_explicit(&p->ewma_us, n >= 1 ? (long long)n : 1, memory_order_relaxed);
        atomic_store_explicit(&p->ewma_at, now, memory_order_relaxed);
    }
    if (!ok) {
        peer_failed(p, moxy_mono_ms());
        return;
    }
    if (atomic_load_explicit(&p->fails, memory_order_relaxed)) atomic_store(&p->fails, 0);
    if (p->ejections) { /* racy read; the lock makes the reset exact */
        pthread_mutex_lock(&p->pool->lock);
        p->ejections = 0;
        pthread_mutex_unlock(&p->pool->lock);
    }
}

/* --- active health, drain --- */

void moxy_peer_check_passed(moxy_peer_t *p, long long started)
{
    long long now = moxy_mono_ms();
    if (atomic_load_explicit(&p->down_until, memory_order_relaxed) <= now) return; /* not ejected */
    moxy_upstream_t *up = p->pool;
    pthread_mutex_lock(&up->lock);
    long long until = atomic_load(&p->down_until);
    /* a check that started before the ejection says nothing about it */
    if (until > now && started > p->ejected_at) {
        atomic_store(&p->up_since, now);
        atomic_store(&p->down_until, 0);
        moxy_log(MOXY_LOG_WARN, NULL, "upstream %s: peer %s is back %.3gs before its ejection ends: a health check passed",
                 up->conf->name, p->conf->addr.text, (double)(until - now) / 1000.0);
    }
    pthread_mutex_unlock(&up->lock);
}

void moxy_peer_set_checked(moxy_peer_t *p, int healthy, const char *why)
{
    const char *pool = p->pool->conf->name;
    pthread_mutex_lock(&p->check_lock);
    snprintf(p->check_error, sizeof(p->check_error), "%s", healthy || !why ? "" : why);
    pthread_mutex_unlock(&p->check_lock);
    int was_down = atomic_load(&p->check_down);
    if (healthy == !was_down) return;
    atomic_fetch_add(&p->transitions, 1);
    if (healthy) {
        atomic_store(&p->up_since, moxy_mono_ms());
        atomic_store(&p->check_down, 0);
        moxy_log(MOXY_LOG_WARN, NULL, "upstream %s: peer %s is healthy again", pool, p->conf->addr.text);
    } else {
        atomic_store(&p->check_down, 1);
        moxy_log(MOXY_LOG_WARN, NULL, "upstream %s: peer %s is unhealthy: %s", pool, p->conf->addr.text,
                 why ? why : "check failed");
    }
}

void moxy_peer_set_drained(moxy_peer_t *p, int drained)
{
    if (atomic_exchange(&p->drained, drained ? 1 : 0) == (drained ? 1 : 0)) return;
    if (!drained) atomic_store(&p->up_since, moxy_mono_ms());
    moxy_log(MOXY_LOG_INFO, NULL, "upstream %s: peer %s %s", p->pool->conf->name, p->conf->addr.text,
             drained ? "drained" : "enabled");
}

moxy_peer_t *moxy_upstream_find_peer(moxy_upstream_t *up, const char *addr, size_t len)
{
    for (int i = 0; i < up->npeers; i++) {
        const char *t = up->peers[i].conf->addr.text;
        if (strlen(t) == len && memcmp(t, addr, len) == 0) return &up->peers[i];
    }
    return NULL;
}

/* --- retry budget --- */

/* The slot of second sec, cleared when it still counts an older second. */
static moxy_budget_slot_t *budget_slot(moxy_upstream_t *up, long long sec)
{
    moxy_budget_slot_t *s = &up->budget[sec % MOXY_BUDGET_SLOTS];
    long long old = atomic_load_explicit(&s->second, memory_order_relaxed);
    if (old != sec && atomic_compare_exchange_strong(&s->second, &old, sec)) {
        /* a count added by another thread between the exchange and these
         * stores is lost: the budget is an estimate, not a ledger */
        atomic_store_explicit(&s->requests, 0, memory_order_relaxed);
        atomic_store_explicit(&s->retries, 0, memory_order_relaxed);
    }
    return s;
}

void moxy_budget_request(moxy_upstream_t *up, long long now)
{
    moxy_budget_slot_t *s = budget_slot(up, now / 1000);
    atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
}

int moxy_budget_retry(moxy_upstream_t *up)
{
    long long sec = moxy_mono_ms() / 1000;
    unsigned long long reqs = 0, retries = 0;
    for (int i = 0; i < MOXY_BUDGET_SLOTS; i++) {
        const moxy_budget_slot_t *s = &up->budget[i];
        long long at = atomic_load_explicit(&s->second, memory_order_relaxed);
        if (at > sec - MOXY_BUDGET_SLOTS && at <= sec) {
            reqs += atomic_load_explicit(&s->requests, memory_order_relaxed);
            retries += atomic_load_explicit(&s->retries, memory_order_relaxed);
        }
    }
    double allowed = up->conf->retry_budget * (double)reqs + (double)up->conf->retry_budget_min * MOXY_BUDGET_SLOTS;
    if ((double)retries + 1 > allowed) {
        atomic_fetch_add_explicit(&up->budget_denied, 1, memory_order_relaxed);
        return 0;
    }
    atomic_fetch_add_explicit(&budget_slot(up, sec)->retries, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&up->retries, 1, memory_order_relaxed);
    return 1;
}

/* --- moxy.upstream (FFI, block lua/moxy/upstream.lua) --- */

#define EXPORT __attribute__((visibility("default")))

static moxy_upstream_t *ffi_pool(const char *name, size_t len)
{
    const moxy_conf_t *conf = moxy_lua_conf();
    int i = conf ? moxy_conf_upstream_index(conf, name, len) : -1;
    return i >= 0 ? conf->upstreams[i].state : NULL;
}

EXPORT int moxy_ffi_upstream_npeers(const char *name, size_t len)
{
    if (!moxy_lua_conf()) return -2;
    moxy_upstream_t *up = ffi_pool(name, len);
    return up ? up->npeers : -1;
}

EXPORT int moxy_ffi_upstream_peer(const char *name, size_t len, int i, moxy_ffi_peer_t *out)
{
    moxy_upstream_t *up = ffi_pool(name, len);
    if (!up || i < 0 || i >= up->npeers) return MOXY_DECLINED;
    moxy_peer_snapshot(&up->peers[i], moxy_mono_ms(), out);
    return MOXY_OK;
}

void moxy_peer_snapshot(moxy_peer_t *p, long long now, moxy_ffi_peer_t *out)
{
    long long until = atomic_load(&p->down_until);
    memset(out, 0, sizeof(*out));
    out->addr = p->conf->addr.text;
    out->state = moxy_peer_state(p, now);
    out->weight = p->conf->weight;
    out->weight_now = moxy_peer_weight(p, now) / 16.0;
    out->backup = p->conf->backup;
    out->max_conns = p->conf->max_conns;
    out->active = atomic_load(&p->active);
    out->ewma_ms = moxy_peer_ewma(p, now) / 1000.0;
    out->fails = atomic_load(&p->fails);
    out->down_for = until > now ? (double)(until - now) / 1000.0 : 0;
    out->requests = atomic_load(&p->requests);
    out->failures = atomic_load(&p->failures);
    out->checks = atomic_load(&p->checks);
    out->ejections = atomic_load(&p->ejections_total);
    out->transitions = atomic_load(&p->transitions);
    pthread_mutex_lock(&p->check_lock);
    memcpy(out->check_error, p->check_error, sizeof(out->check_error));
    pthread_mutex_unlock(&p->check_lock);
}

EXPORT int moxy_ffi_upstream_usable(const char *name, size_t len)
{
    if (!moxy_lua_conf()) return -2;
    moxy_upstream_t *up = ffi_pool(name, len);
    if (!up) return -1;
    long long now = moxy_mono_ms();
    int n = 0;
    for (int i = 0; i < up->npeers; i++)
        if (moxy_peer_state(&up->peers[i], now) == MOXY_PEER_UP && !moxy_peer_full(&up->peers[i])) n++;
    return n;
}

EXPORT int moxy_ffi_upstream_drain(const char *name, size_t len, const char *addr, size_t alen, int drained)
{
    moxy_upstream_t *up = ffi_pool(name, len);
    moxy_peer_t *p = up ? moxy_upstream_find_peer(up, addr, alen) : NULL;
    if (!p) return MOXY_DECLINED;
    moxy_peer_set_drained(p, drained);
    return MOXY_OK;
}

EXPORT int moxy_ffi_upstream_retries(const char *name, size_t len, unsigned long long *retries,
                                     unsigned long long *denied)
{
    moxy_upstream_t *up = ffi_pool(name, len);
    if (!up) return MOXY_DECLINED;
    *retries = atomic_load(&up->retries);
    *denied = atomic_load(&up->budget_denied);
    return MOXY_OK;
}

const char *moxy_upstream_tls_names(const moxy_upstream_conf_t *uc, int server, char *buf, size_t len,
                                    const char **sni)
{
    const moxy_server_conf_t *sc = &uc->servers[server];
    *sni = uc->tls->name ? uc->tls->name : sc->name;
    if (*sni) return *sni;
    const char *t = sc->addr.text, *end = strrchr(t, ':');
    if (!end) return NULL;
    if (*t == '[') t++, end--; /* "[v6]:port" */
    size_t n = (size_t)(end - t);
    if (n >= len) return NULL;
    memcpy(buf, t, n);
    buf[n] = '\0';
    return buf;
}

int moxy_upstream_tls_connect(struct moxy_conn_s *c, const moxy_upstream_conf_t *uc, int server)
{
    char ip[64];
    const char *sni;
    const char *host = moxy_upstream_tls_names(uc, server, ip, sizeof(ip), &sni);
    return moxy_tls_connect(c, uc->tls_client, sni, host);
}

/* 1 when sa holds the address family (4, 6) / a (4 or 16 bytes). */
static int sockaddr_is(const struct sockaddr_storage *sa, int family, const uint8_t *a)
{
    if (family == 4 && sa->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)sa)->sin_addr, a, 4) == 0;
    if (family == 6 && sa->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, a, 16) == 0;
    return 0;
}

int moxy_upstream_has_address(moxy_upstream_t *up, const char *ip)
{
    int family, port;
    uint8_t a[16];
    if (moxy_ip_parse(ip, strlen(ip), &family, a, &port) != MOXY_OK) return 0;
    for (int i = 0; i < up->npeers; i++) {
        moxy_peer_t *p = &up->peers[i];
        pthread_mutex_lock(&p->addr_lock);
        int found = 0;
        for (int k = 0; k < p->naddrs && !found; k++) found = sockaddr_is(&p->addrs[k], family, a);
        pthread_mutex_unlock(&p->addr_lock);
        if (found) return 1;
    }
    return 0;
}
