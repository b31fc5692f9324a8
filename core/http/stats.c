/*
 * stats.c -- the workers' counts (see stats.h).
 */
#include "http/stats.h"
#include "http/http.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bucket upper bounds in microseconds, from cache-hit fast to slow-origin
 * slow: moxy_hist_add compares integers, and bound_us / 1e6 is the very
 * double the seconds literal (0.0005, 0.001, ...) would be. */
static const long long bounds_us[MOXY_HIST_BUCKETS] = {500,    1000,   2500,   5000,    10000,   25000,   50000,
                                                       100000, 250000, 500000, 1000000, 2500000, 10000000};

double moxy_hist_bound(int i)
{
    return (double)bounds_us[i] / 1e6;
}

const moxy_pool_stats_t *moxy_stats_pool_find(const moxy_worker_t *w, const char *name)
{
    const moxy_pool_stats_t *ps = atomic_load_explicit(&w->stats.pools, memory_order_acquire);
    for (; ps; ps = atomic_load_explicit(&ps->next, memory_order_acquire))
        if (strcmp(ps->name, name) == 0) return ps;
    return NULL;
}

moxy_pool_stats_t *moxy_stats_pool(moxy_worker_t *w, const char *name)
{
    moxy_pool_stats_t *ps = (moxy_pool_stats_t *)moxy_stats_pool_find(w, name);
    if (ps) return ps;
    ps = calloc(1, sizeof(*ps));
    if (!ps || !(ps->name = strdup(name))) {
        free(ps);
        return NULL;
    }
    ps->next = atomic_load_explicit(&w->stats.pools, memory_order_relaxed);
    atomic_store_explicit(&w->stats.pools, ps, memory_order_release);
    return ps;
}

void moxy_stats_free(moxy_worker_t *w)
{
    moxy_pool_stats_t *ps = atomic_load(&w->stats.pools), *next;
    for (; ps; ps = next) {
        next = atomic_load(&ps->next);
        free(ps->name);
        free(ps);
    }
    atomic_store(&w->stats.pools, NULL);
}

void moxy_hist_add(moxy_hist_t *h, long long us)
{
    if (us < 0) us = 0;
    int i = 0;
    while (i < MOXY_HIST_BUCKETS && us > bounds_us[i]) i++;
    MOXY_STAT_ADD(h->bucket[i], 1);
    MOXY_STAT_ADD(h->sum_us, (unsigned long long)us);
}

const char *const moxy_h2_code_names[MOXY_H2_CODES] = {
    "NO_ERROR",       "PROTOCOL_ERROR",     "INTERNAL_ERROR",      "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",  "FRAME_SIZE_ERROR",   "REFUSED_STREAM",      "CANCEL",             "COMPRESSION_ERROR",
    "CONNECT_ERROR",  "ENHANCE_YOUR_CALM",  "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
};

void moxy_stats_request(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    int cls = r->status >= 100 && r->status < 600 ? r->status / 100 : 0;
    MOXY_STAT_ADD(w->stats.requests[cls], 1);
    if (r->http_major == 2) MOXY_STAT_ADD(w->stats.requests_h2, 1);
    moxy_hist_add(&w->stats.duration, moxy_req_elapsed_us(r));
    if (r->pool >= 0 && r->g->pools && r->g->pools[r->pool].stats) {
        moxy_pool_stats_t *ps = r->g->pools[r->pool].stats;
        MOXY_STAT_ADD(ps->requests[cls], 1);
        if (r->up_header_us) moxy_hist_add(&ps->header_time, r->up_header_us - r->up_started_us);
    }
}

#define LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)

void moxy_stats_sum(moxy_worker_t *const *workers, int n, moxy_stats_total_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < n; i++) {
        const moxy_stats_t *st = &workers[i]->stats;
        out->conns += LOAD(workers[i]->nconns);
        for (int c = 0; c < 6; c++) out->requests[c] += LOAD(st->requests[c]);
        for (int b = 0; b <= MOXY_HIST_BUCKETS; b++) out->duration[b] += LOAD(st->duration.bucket[b]);
        out->lua_errors += LOAD(st->lua_errors);
        out->budget_kills += LOAD(st->budget_kills);
        out->cache_hits += LOAD(st->cache_hits);
        out->cache_misses += LOAD(st->cache_misses);
        out->shard_forwarded += LOAD(st->shard_forwarded);
        out->shard_fills += LOAD(st->shard_fills);
        out->shard_fallbacks += LOAD(st->shard_fallbacks);
        for (int d = 0; d < 2; d++)
            for (int e = 0; e < 4; e++) {
                out->comp_responses[d][e] += LOAD(st->comp_responses[d][e]);
                out->comp_in[d][e] += LOAD(st->comp_in[d][e]);
                out->comp_out[d][e] += LOAD(st->comp_out[d][e]);
            }
        out->comp_skipped += LOAD(st->comp_skipped);
        out->decomp_failures += LOAD(st->decomp_failures);
        out->decomp_bombs += LOAD(st->decomp_bombs);
        out->comp_memory += LOAD(st->comp_memory);
        for (int k = 0; k < 2; k++) {
            out->tls_handshakes[k] += LOAD(st->tls_handshakes[k]);
            out->tls_versions[k] += LOAD(st->tls_versions[k]);
        }
        for (int k = 0; k < MOXY_STATS_TLS_FAILS; k++) out->tls_failures[k] += LOAD(st->tls_failures[k]);
        out->client_refused += LOAD(st->client_refused);
        for (int k = 0; k < 2; k++) out->accept_paused[k] += LOAD(st->accept_paused[k]);
        out->accept_fd_errors += LOAD(st->accept_fd_errors);
        out->h2_conns += LOAD(st->h2_conns);
        out->h2_conns_total += LOAD(st->h2_conns_total);
        out->h2_streams += LOAD(st->h2_streams);
        out->h2_refused += LOAD(st->h2_refused);
        out->h2_floods += LOAD(st->h2_floods);
        out->h2_stalls += LOAD(st->h2_stalls);
        out->requests_h2 += LOAD(st->requests_h2);
        for (int k = 0; k < MOXY_H2_CODES; k++) {
            out->h2_goaway[k] += LOAD(st->h2_goaway[k]);
            out->h2_rst_sent[k] += LOAD(st->h2_rst_sent[k]);
            out->h2_rst_recv[k] += LOAD(st->h2_rst_recv[k]);
        }
        for (int k = 0; k < MOXY_STATS_TLS_CIPHERS; k++) {
            const char *name = atomic_load_explicit(&st->tls_cipher_names[k], memory_order_acquire);
            if (!name) break;
            unsigned long long v = LOAD(st->tls_ciphers[k]);
            int j = 0;
            while (j < out->ntls_ciphers && strcmp(out->tls_cipher_names[j], name) != 0) j++;
            if (j == out->ntls_ciphers) {
                if (j == MOXY_STATS_TLS_CIPHERS * 2) continue;
                out->tls_cipher_names[out->ntls_ciphers++] = name;
            }
            out->tls_ciphers[j] += v;
        }
    }
}

void moxy_stats_tls_cipher(moxy_stats_t *st, const char *name)
{
    int k = 0;
    for (; k < MOXY_STATS_TLS_CIPHERS - 1; k++) {
        const char *have = atomic_load_explicit(&st->tls_cipher_names[k], memory_order_relaxed);
        if (have == name || (have && strcmp(have, name) == 0)) break;
        if (!have) {
            atomic_store_explicit(&st->tls_cipher_names[k], name, memory_order_release);
            break;
        }
    }
    if (k == MOXY_STATS_TLS_CIPHERS - 1 &&
        !atomic_load_explicit(&st->tls_cipher_names[k], memory_order_relaxed))
        atomic_store_explicit(&st->tls_cipher_names[k], "other", memory_order_release);
    MOXY_STAT_ADD(st->tls_ciphers[k], 1);
}
