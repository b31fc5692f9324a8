/*
 * admin_history.c -- the status page's five minutes of samples (see
 * admin_history.h).
 *
 * A sample keeps what the page draws, not the raw counters: the interval's
 * request rates by status class and its latency percentiles are computed
 * when the sample is taken, from the difference with the previous call's
 * sums.  That keeps the ring small (a few dozen bytes a sample) and the
 * JSON short; the cost is that the page cannot choose other percentiles.
 * The cache's lookups are kept the same way: hits and misses per second and
 * the interval's hit ratio, with the bytes in use at the sample.
 */
#include "ops/admin_history.h"
#include "ops/admin.h"
#include "cache/cache.h"
#include "api/ffi.h"
#include "base/json.h"
#include "ops/metrics.h"
#include "proxy/upstream.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define N MOXY_HISTORY_SAMPLES
#define ABSENT (-1) /* a peer slot's state in a sample that did not see the peer */

static const double quantiles[3] = {0.5, 0.9, 0.99};

/* What one second looked like. */
typedef struct {
    long long t_ms; /* wall clock (ms since the epoch) when it was taken */
    float rate[5];  /* requests per second by status class 1xx..5xx */
    float p_ms[3];  /* latency at quantiles[], ms; < 0: no request in the interval */
    int conns;      /* open client connections */
    float c_rate[2]; /* cache hits, misses per second; < 0: no cache */
    float c_ratio;   /* the interval's hits / lookups; < 0: no cache or no lookup */
    double c_used;   /* bytes the cache holds; < 0: no cache */
} sample_t;

/* One peer's series; the slot is free when last_seen is 0 or out of the window. */
typedef struct {
    char pool[128], addr[300];    /* whose series this is */
    unsigned long long last_seen; /* 1 + the number of the last sample that saw it; 0: never */
    signed char state[N];         /* MOXY_PEER_*, ABSENT */
    int active[N];                /* requests in flight */
} slot_t;

static struct {
    unsigned long long seq; /* samples taken; sample s is at index s % N */
    long long prev_us;      /* moxy_mono_us() of the previous reading; 0: none yet (prev_* unset) */
    unsigned long long prev_req[6], prev_hist[MOXY_HIST_BUCKETS + 1];
    unsigned long long prev_cache[2]; /* the cache's hits, misses (0 without a cache) */
    sample_t samples[N];
    slot_t slots[MOXY_HISTORY_PEERS];
    int untracked; /* peers of the latest sample without a slot */
} H;

static unsigned long long delta(unsigned long long now, unsigned long long before)
{
    return now >= before ? now - before : 0; /* workers replaced: count from zero */
}

/* The q quantile of the interval's histogram h (counts per bucket, total
 * tot > 0) in ms, interpolated linearly inside its bucket as Prometheus'
 * histogram_quantile does; the +Inf bucket gives the last finite bound. */
static double quantile_ms(const unsigned long long *h, unsigned long long tot, double q)
{
    double rank = q * (double)tot, cum = 0;
    for (int i = 0; i <= MOXY_HIST_BUCKETS; i++) {
        if (h[i] == 0 || cum + (double)h[i] < rank) {
            cum += (double)h[i];
            continue;
        }
        if (i == MOXY_HIST_BUCKETS) return moxy_hist_bound(i - 1) * 1e3;
        double lo = i ? moxy_hist_bound(i - 1) : 0, hi = moxy_hist_bound(i);
        return (lo + (hi - lo) * (rank - cum) / (double)h[i]) * 1e3;
    }
    return moxy_hist_bound(MOXY_HIST_BUCKETS - 1) * 1e3;
}

/* The slot for pool/addr in sample s: its own, or a free one taken for it
 * (hint: where to look first).  NULL when it has none and none is free. */
static slot_t *slot_for(const char *pool, const char *addr, unsigned long long s, int *hint)
{
    int free_at = -1;
    for (int k = 0; k < MOXY_HISTORY_PEERS; k++) {
        int i = (*hint + k) % MOXY_HISTORY_PEERS;
        slot_t *sl = &H.slots[i];
        int used = sl->last_seen && sl->last_seen - 1 + N > s;
        if (used && strcmp(sl->pool, pool) == 0 && strcmp(sl->addr, addr) == 0) {
            *hint = i + 1;
            return sl;
        }
        if (!used && free_at < 0) free_at = i;
    }
    if (free_at < 0 || strlen(pool) >= sizeof(H.slots[0].pool) ||
        strlen(addr) >= sizeof(H.slots[0].addr))
        return NULL;
    slot_t *sl = &H.slots[free_at];
    strcpy(sl->pool, pool);
    strcpy(sl->addr, addr);
    memset(sl->state, ABSENT, sizeof(sl->state));
    memset(sl->active, 0, sizeof(sl->active));
    *hint = free_at + 1;
    return sl;
}

static void sample_peers(const moxy_conf_t *conf, unsigned long long s)
{
    int at = (int)(s % N), hint = 0;
    for (int k = 0; k < MOXY_HISTORY_PEERS; k++)
        H.slots[k].state[at] = ABSENT;
    H.untracked = 0;
    long long now = moxy_mono_ms();
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_upstream_t *up = conf->upstreams[i].state;
        for (int j = 0; up && j < up->npeers; j++) {
            moxy_ffi_peer_t st;
            moxy_peer_snapshot(&up->peers[j], now, &st);
            slot_t *sl = slot_for(conf->upstreams[i].name, st.addr, s, &hint);
            if (!sl) {
                H.untracked++;
                continue;
            }
            sl->state[at] = (signed char)st.state;
            sl->active[at] = st.active;
            sl->last_seen = s + 1;
        }
    }
}

void moxy_history_sample(moxy_worker_t *const *workers, int n, const moxy_conf_t *conf)
{
    long long now_us = moxy_mono_us();
    moxy_stats_total_t sum;
    moxy_stats_sum(workers, n, &sum);
    const unsigned long long *req = sum.requests, *hist = sum.duration;
    moxy_cache_stats_t cs; /* all zero without a cache */
    int cache = moxy_cache_enabled();
    moxy_cache_stats(&cs);
    if (H.prev_us) {
        unsigned long long s = H.seq;
        sample_t *sp = &H.samples[s % N];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sp->t_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        double secs = (double)(now_us - H.prev_us) / 1e6;
        if (secs < 0.001) secs = 0.001;
        for (int c = 1; c < 6; c++)
            sp->rate[c - 1] = (float)((double)delta(req[c], H.prev_req[c]) / secs);
        unsigned long long d[MOXY_HIST_BUCKETS + 1], tot = 0;
        for (int b = 0; b <= MOXY_HIST_BUCKETS; b++)
            tot += d[b] = delta(hist[b], H.prev_hist[b]);
        for (int q = 0; q < 3; q++)
            sp->p_ms[q] = tot ? (float)quantile_ms(d, tot, quantiles[q]) : -1.0f;
        sp->conns = (int)sum.conns;
        if (cache) {
            unsigned long long dh = delta(sum.cache_hits, H.prev_cache[0]),
                               dm = delta(sum.cache_misses, H.prev_cache[1]);
            sp->c_rate[0] = (float)((double)dh / secs);
            sp->c_rate[1] = (float)((double)dm / secs);
            sp->c_ratio = dh + dm ? (float)((double)dh / (double)(dh + dm)) : -1.0f;
            sp->c_used = (double)cs.used;
        } else {
            sp->c_rate[0] = sp->c_rate[1] = sp->c_ratio = -1.0f;
            sp->c_used = -1;
        }
        sample_peers(conf, s);
        H.seq = s + 1;
    }
    H.prev_us = now_us;
    memcpy(H.prev_req, req, sizeof(H.prev_req));
    memcpy(H.prev_hist, hist, sizeof(H.prev_hist));
    H.prev_cache[0] = sum.cache_hits;
    H.prev_cache[1] = sum.cache_misses;
}

/* JSON output: every append goes through these, which remember a failure. */
typedef struct {
    struct evbuffer *b;
    int err;
} out_t;

static void put(out_t *o, const char *s)
{
    if (evbuffer_add(o->b, s, strlen(s)) != 0) o->err = 1;
}

/* v with at most three decimals and no trailing zeros; null when v < 0. */
static void put_num(out_t *o, double v)
{
    char buf[64];
    if (v < 0) {
        put(o, "null");
        return;
    }
    int len = snprintf(buf, sizeof(buf), "%.3f", v);
    while (len > 0 && buf[len - 1] == '0')
        len--;
    if (len > 0 && buf[len - 1] == '.') len--;
    buf[len] = '\0';
    put(o, buf);
}

/* s as a JSON string (pool names and peer addresses: config.lua lets no
 * quote or backslash in). */
static void put_str(out_t *o, const char *s)
{
    if (moxy_json_str(o->b, s) != MOXY_OK) o->err = 1;
}

/* "name":[expr for each sample of the window] (expr reads the sample at sp). */
#define SERIES(o, name, first, count, expr)                                                        \
    do {                                                                                           \
        put(o, "\"");                                                                              \
        put(o, name);                                                                              \
        put(o, "\":[");                                                                            \
        for (unsigned long long s_ = (first); s_ < (first) + (count); s_++) {                      \
            const sample_t *sp = &H.samples[s_ % N];                                               \
            if (s_ != (first)) put(o, ",");                                                        \
            put_num(o, (expr));                                                                    \
        }                                                                                          \
        put(o, "]");                                                                               \
    } while (0)

static void put_slot(out_t *o, const slot_t *sl, unsigned long long first, unsigned long long count)
{
    put(o, "{\"addr\":");
    put_str(o, sl->addr);
    put(o, ",\"state\":[");
    for (unsigned long long s = first; s < first + count; s++) {
        int st = sl->state[s % N];
        if (s != first) put(o, ",");
        put_num(o, st == ABSENT ? -1 : st);
    }
    put(o, "],\"active\":[");
    for (unsigned long long s = first; s < first + count; s++) {
        if (s != first) put(o, ",");
        put_num(o, sl->state[s % N] == ABSENT ? -1 : sl->active[s % N]);
    }
    put(o, "]}");
}

/* Peers seen in the window, grouped by pool in the order the pools first
 * appear among the slots. */
static void put_pools(out_t *o, unsigned long long first, unsigned long long count)
{
    int shown[MOXY_HISTORY_PEERS] = {0}, npools = 0;
    put(o, "\"pools\":[");
    for (int i = 0; i < MOXY_HISTORY_PEERS; i++) {
        const slot_t *head = &H.slots[i];
        if (shown[i] || !head->last_seen || head->last_seen <= first) continue;
        put(o, npools++ ? ",{\"name\":" : "{\"name\":");
        put_str(o, head->pool);
        put(o, ",\"peers\":[");
        int npeers = 0;
        for (int k = i; k < MOXY_HISTORY_PEERS; k++) {
            const slot_t *sl = &H.slots[k];
            if (shown[k] || !sl->last_seen || sl->last_seen <= first ||
                strcmp(sl->pool, head->pool) != 0)
                continue;
            shown[k] = 1;
            if (npeers++) put(o, ",");
            put_slot(o, sl, first, count);
        }
        put(o, "]}");
    }
    put(o, "]");
}

int moxy_history_json(struct evbuffer *b)
{
    out_t o = {b, 0};
    unsigned long long count = H.seq < N ? H.seq : N, first = H.seq - count;
    char head[160];
    snprintf(head, sizeof(head),
             "{\"interval\":1,\"capacity\":%d,\"samples\":%llu,\"untracked\":%d,", N, count,
             H.untracked);
    put(&o, head);
    SERIES(&o, "t", first, count, (double)sp->t_ms);
    put(&o, ",\"rate\":{");
    static const char *const classes[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int c = 0; c < 5; c++) {
        if (c) put(&o, ",");
        SERIES(&o, classes[c], first, count, sp->rate[c]);
    }
    put(&o, "},\"latency_ms\":{");
    SERIES(&o, "p50", first, count, sp->p_ms[0]);
    put(&o, ",");
    SERIES(&o, "p90", first, count, sp->p_ms[1]);
    put(&o, ",");
    SERIES(&o, "p99", first, count, sp->p_ms[2]);
    put(&o, "},");
    SERIES(&o, "connections", first, count, sp->conns);
    put(&o, ",\"cache\":");
    if (moxy_cache_enabled()) {
        moxy_cache_stats_t cs;
        moxy_cache_stats(&cs);
        snprintf(head, sizeof(head), "{\"enabled\":true,\"capacity\":%zu,", cs.capacity);
        put(&o, head);
        SERIES(&o, "hit_ratio", first, count, sp->c_ratio);
        put(&o, ",");
        SERIES(&o, "hits", first, count, sp->c_rate[0]);
        put(&o, ",");
        SERIES(&o, "misses", first, count, sp->c_rate[1]);
        put(&o, ",");
        SERIES(&o, "used_bytes", first, count, sp->c_used);
        put(&o, "}");
    } else {
        put(&o, "null");
    }
    put(&o, ",\"states\":[");
    for (int s = 0; s < MOXY_PEER_NSTATES; s++) {
        if (s) put(&o, ",");
        put_str(&o, moxy_peer_state_name(s));
    }
    put(&o, "],");
    put_pools(&o, first, count);
    put(&o, "}\n");
    return o.err ? MOXY_ERROR : MOXY_OK;
}
