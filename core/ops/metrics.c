/*
 * metrics.c -- the Prometheus text rendering (see metrics.h).
 */
#include "ops/metrics.h"
#include "cache/cache.h"
#include "api/ffi.h"
#include "api/fleet.h"
#include "ops/generation.h"
#include "http/http.h"
#include "base/shared_dict.h"
#include "base/counters.h"
#include "proxy/upstream.h"
#include "ops/workers.h"
#include "net/tls.h"
#include "http/stats.h"
#include "http/buffer_budget.h"

#include <event2/buffer.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)

static const char *const class_names[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

/* A label value with \, " and newline escaped (Prometheus' text format). */
static void put_label(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') evbuffer_add_printf(out, "\\%c", *s);
        else if (*s == '\n') evbuffer_add(out, "\\n", 2);
        else evbuffer_add(out, s, 1);
    }
}

static void head(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The histogram name{labels} (labels: "" or `pool="x"`) of the summed h[0..n). */
static void put_hist(struct evbuffer *out, const char *name, const char *labels, moxy_hist_t *const *h, int n)
{
    unsigned long long cum = 0, sum_us = 0;
    const char *sep = *labels ? "," : "";
    for (int b = 0; b <= MOXY_HIST_BUCKETS; b++) {
        for (int i = 0; i < n; i++) cum += LOAD(h[i]->bucket[b]);
        if (b < MOXY_HIST_BUCKETS)
            evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, moxy_hist_bound(b), cum);
        else
            evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, cum);
    }
    for (int i = 0; i < n; i++) sum_us += LOAD(h[i]->sum_us);
    if (*labels)
        evbuffer_add_printf(out, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels, (double)sum_us / 1e6, name,
                            labels, cum);
    else
        evbuffer_add_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)sum_us / 1e6, name, cum);
}

static void render_requests(struct evbuffer *out, moxy_worker_t *const *workers, int n, const moxy_conf_t *conf,
                            const moxy_stats_total_t *tot)
{
    head(out, "moxy_requests_total", "counter", "Requests answered, by status class.");
    for (int c = 0; c < 6; c++)
        evbuffer_add_printf(out, "moxy_requests_total{class=\"%s\"} %llu\n", class_names[c], tot->requests[c]);
    head(out, "moxy_pool_requests_total", "counter", "Requests answered, by upstream pool and status class.");
    for (int p = 0; p < conf->nupstreams; p++) {
        unsigned long long v[6] = {0};
        for (int i = 0; i < n; i++) {
            const moxy_pool_stats_t *ps = moxy_stats_pool_find(workers[i], conf->upstreams[p].name);
            for (int c = 0; ps && c < 6; c++) v[c] += LOAD(ps->requests[c]);
        }
        for (int c = 0; c < 6; c++) {
            evbuffer_add(out, "moxy_pool_requests_total{pool=\"", 31);
            put_label(out, conf->upstreams[p].name);
            evbuffer_add_printf(out, "\",class=\"%s\"} %llu\n", class_names[c], v[c]);
        }
    }
    moxy_hist_t *h[n > 0 ? n : 1];
    static moxy_hist_t none; /* a worker that never served the pool */
    head(out, "moxy_request_duration_seconds", "histogram", "Time from a request's first byte to its last response byte.");
    for (int i = 0; i < n; i++) h[i] = &workers[i]->stats.duration;
    put_hist(out, "moxy_request_duration_seconds", "", h, n);
    static const struct {
        const char *name, *help;
        size_t offset; /* of the histogram in moxy_pool_stats_t */
    } pool_hists[] = {
        {"moxy_upstream_header_seconds",
         "Time from the start of a try to the origin's response head (connect included), by pool.",
         offsetof(moxy_pool_stats_t, header_time)},
        {"moxy_upstream_connect_seconds",
         "Time from the start of a try to its new origin connection being established, by pool.",
         offsetof(moxy_pool_stats_t, connect_time)},
    };
    for (size_t k = 0; k < MOXY_ARRAY_LEN(pool_hists); k++) {
        head(out, pool_hists[k].name, "histogram", pool_hists[k].help);
        for (int p = 0; p < conf->nupstreams; p++) {
            /* pool names are letters, digits, _ . - (config.lua): nothing to escape */
            char labels[300];
            snprintf(labels, sizeof(labels), "pool=\"%.200s\"", conf->upstreams[p].name);
            for (int i = 0; i < n; i++) {
                const moxy_pool_stats_t *ps = moxy_stats_pool_find(workers[i], conf->upstreams[p].name);
                h[i] = ps ? (moxy_hist_t *)((char *)ps + pool_hists[k].offset) : &none;
            }
            put_hist(out, pool_hists[k].name, labels, h, n);
        }
    }
}

/* The value of peer metric m (render_upstreams' peer_metrics order). */
static double peer_value(const moxy_ffi_peer_t *st, size_t m)
{
    switch (m) {
    case 0: return st->state == MOXY_PEER_UP;
    case 1: return st->state;
    case 2: return st->active;
    case 3: return (double)st->requests;
    case 4: return (double)st->failures;
    case 5: return (double)st->checks;
    case 6: return st->ewma_ms / 1000;
    case 7: return st->weight_now;
    case 8: return (double)st->ejections;
    default: return (double)st->transitions;
    }
}

/* The value of pool metric m (render_upstreams' pool_metrics order) for pool i. */
static double pool_value(moxy_worker_t *const *workers, int n, const moxy_conf_t *conf, int i, size_t m)
{
    const moxy_upstream_t *up = conf->upstreams[i].state;
    if (m == 0) return (double)atomic_load(&up->retries);
    if (m == 1) return (double)atomic_load(&up->budget_denied);
    long long v = 0;
    for (int k = 0; k < n; k++) {
        const moxy_pool_stats_t *ps = moxy_stats_pool_find(workers[k], conf->upstreams[i].name);
        if (!ps) continue;
        switch (m) {
        case 2: v += LOAD(ps->idle); break;
        case 3: v += LOAD(ps->h2_conns); break;
        case 4: v += (long long)LOAD(ps->h2_streams); break;
        case 5: v += (long long)LOAD(ps->h2_resets); break;
        case 6: v += (long long)LOAD(ps->h2_goaways); break;
        default: v += (long long)LOAD(ps->cut); break;
        }
    }
    return (double)v;
}

static int render_upstreams(struct evbuffer *out, moxy_worker_t *const *workers, int n, const moxy_conf_t *conf)
{
    static const struct {
        const char *name, *type, *help;
    } peer_metrics[] = {
        {"moxy_peer_up", "gauge", "1 when the peer takes new requests (not ejected, unhealthy, drained or unresolved)."},
        {"moxy_peer_state", "gauge", "The peer's state: 0 up, 1 ejected, 2 unhealthy, 3 drained, 4 unresolved."},
        {"moxy_peer_active", "gauge", "Requests in flight to the peer."},
        {"moxy_peer_tries_total", "counter", "Tries sent to the peer."},
        {"moxy_peer_failures_total", "counter", "Tries to the peer that failed (passive health's view)."},
        {"moxy_peer_checks_total", "counter", "Active health checks of the peer."},
        {"moxy_peer_latency_ewma_seconds", "gauge", "The peer's latency EWMA to the response head."},
        {"moxy_peer_weight", "gauge", "The peer's weight now (slow start included)."},
        {"moxy_peer_ejections_total", "counter", "Times passive health ejected the peer."},
        {"moxy_peer_health_transitions_total", "counter", "Times the health checks' verdict on the peer changed."},
    }, pool_metrics[] = {
        {"moxy_pool_retries_total", "counter", "Retries of the pool's requests."},
        {"moxy_pool_retries_denied_total", "counter", "Retries the pool's retry budget refused."},
        {"moxy_pool_idle_connections", "gauge", "Idle keep-alive connections to the pool's origins."},
        {"moxy_pool_h2_connections", "gauge", "Open HTTP/2 connections to the pool's origins."},
        {"moxy_pool_h2_streams_total", "counter", "HTTP/2 streams (tries) sent to the pool's origins."},
        {"moxy_pool_h2_resets_total", "counter", "Of those, streams the origins reset or refused."},
        {"moxy_pool_h2_goaways_total", "counter", "GOAWAY frames the pool's origins sent."},
        {"moxy_pool_responses_cut_total", "counter",
         "Responses cut for the client: the origin failed (reset, closed, timed out) after the head went on."},
    };
    /* every peer read once, so that all its metrics tell the same moment */
    int total = 0;
    for (int i = 0; i < conf->nupstreams; i++) total += conf->upstreams[i].state->npeers;
    moxy_ffi_peer_t *snap = calloc((size_t)total + 1, sizeof(*snap));
    if (!snap) return MOXY_ERROR;
    long long now = moxy_mono_ms();
    for (int i = 0, k = 0; i < conf->nupstreams; i++)
        for (int j = 0; j < conf->upstreams[i].state->npeers; j++)
            moxy_peer_snapshot(&conf->upstreams[i].state->peers[j], now, &snap[k++]);
    for (size_t m = 0; m < MOXY_ARRAY_LEN(peer_metrics); m++) {
        head(out, peer_metrics[m].name, peer_metrics[m].type, peer_metrics[m].help);
        for (int i = 0, k = 0; i < conf->nupstreams; i++) {
            for (int j = 0; j < conf->upstreams[i].state->npeers; j++, k++) {
                evbuffer_add_printf(out, "%s{pool=\"", peer_metrics[m].name);
                put_label(out, conf->upstreams[i].name);
                evbuffer_add(out, "\",peer=\"", 8);
                put_label(out, snap[k].addr);
                evbuffer_add_printf(out, "\"} %.17g\n", peer_value(&snap[k], m));
            }
        }
    }
    free(snap);
    for (size_t m = 0; m < MOXY_ARRAY_LEN(pool_metrics); m++) {
        head(out, pool_metrics[m].name, pool_metrics[m].type, pool_metrics[m].help);
        for (int i = 0; i < conf->nupstreams; i++) {
            evbuffer_add_printf(out, "%s{pool=\"", pool_metrics[m].name);
            put_label(out, conf->upstreams[i].name);
            evbuffer_add_printf(out, "\"} %.17g\n", pool_value(workers, n, conf, i, m));
        }
    }
    return MOXY_OK;
}

static void render_dicts(struct evbuffer *out, const moxy_conf_t *conf)
{
    static const struct {
        const char *name, *type, *help;
    } dict_metrics[] = {
        {"moxy_shared_dict_capacity_bytes", "gauge", "Bytes the dict may hold."},
        {"moxy_shared_dict_used_bytes", "gauge", "Bytes the dict holds."},
        {"moxy_shared_dict_items", "gauge", "Items in the dict."},
        {"moxy_shared_dict_evictions_total", "counter", "Live items evicted to make room."},
    };
    for (size_t m = 0; m < MOXY_ARRAY_LEN(dict_metrics); m++) {
        head(out, dict_metrics[m].name, dict_metrics[m].type, dict_metrics[m].help);
        for (int i = 0; i < conf->nshared; i++) {
            moxy_shdict_t *d = moxy_shdict_find(conf->shared[i].name, strlen(conf->shared[i].name));
            if (!d) continue;
            moxy_shdict_stats_t st;
            moxy_ffi_shdict_stats(d, &st);
            size_t v = m == 0 ? st.capacity : m == 1 ? st.used : m == 2 ? st.items : st.evictions;
            evbuffer_add_printf(out, "%s{dict=\"", dict_metrics[m].name);
            put_label(out, conf->shared[i].name);
            evbuffer_add_printf(out, "\"} %zu\n", v);
        }
    }
}

/* cache.shard's counts: misses sent to their owner, fills served for
 * peers, fallbacks to the origin (only with sharding configured). */
static void render_cache_shard(struct evbuffer *out, const moxy_stats_total_t *tot, const moxy_conf_t *conf)
{
    if (!conf || !conf->cache.shard) return;
    const struct {
        const char *name, *help;
        unsigned long long v;
    } m[] = {
        {"moxy_cache_shard_forwarded_total", "Cache misses sent to their key's owner (cache.shard).", tot->shard_forwarded},
        {"moxy_cache_shard_fills_total", "Fill requests of peers served as the key's owner (cache.shard).", tot->shard_fills},
        {"moxy_cache_shard_fallbacks_total", "Misses whose owner could not be reached, sent to the origin (cache.shard).",
         tot->shard_fallbacks},
    };
    for (size_t i = 0; i < MOXY_ARRAY_LEN(m); i++) {
        head(out, m[i].name, "counter", m[i].help);
        evbuffer_add_printf(out, "%s %llu\n", m[i].name, m[i].v);
    }
}

static void render_cache(struct evbuffer *out, const moxy_stats_total_t *tot, const moxy_conf_t *conf)
{
    if (!moxy_cache_enabled()) return;
    moxy_cache_stats_t cs;
    moxy_cache_stats(&cs);
    const struct {
        const char *name, *type, *help;
        double v;
    } m[] = {
        {"moxy_cache_capacity_bytes", "gauge", "Bytes the cache may hold (cache.size).", (double)cs.capacity},
        {"moxy_cache_used_bytes", "gauge", "Bytes the cache holds (objects, their heads and bookkeeping).", (double)cs.used},
        {"moxy_cache_objects", "gauge", "Objects in the cache.", (double)cs.objects},
        {"moxy_cache_hits_total", "counter", "Lookups answered from the cache.", (double)tot->cache_hits},
        {"moxy_cache_misses_total", "counter", "Lookups that went to the origin (no object, stale, or the request asked).", (double)tot->cache_misses},
        {"moxy_cache_stores_total", "counter", "Responses stored.", (double)cs.stores},
        {"moxy_cache_evictions_total", "counter", "Objects evicted to make room.", (double)cs.evictions},
        {"moxy_cache_invalidations_total", "counter", "Objects dropped by unsafe methods and purges.", (double)cs.invalidations},
        {"moxy_cache_too_big_total", "counter", "Responses not stored: larger than cache.max_object.", (double)cs.too_big},
    };
    for (size_t i = 0; i < MOXY_ARRAY_LEN(m); i++) {
        head(out, m[i].name, m[i].type, m[i].help);
        evbuffer_add_printf(out, "%s %.17g\n", m[i].name, m[i].v);
    }
    render_cache_shard(out, tot, conf);
}

/* The fleet (fleet = {...}): broadcasts published, received, applied and
 * dropped by reason, and whether the subscription is up. */
static void render_fleet(struct evbuffer *out)
{
    moxy_fleet_stats_t st;
    moxy_fleet_stats(&st);
    if (!st.enabled && !st.received && !st.published && !st.publish_failed) return;
    const struct {
        const char *name, *type, *help;
        unsigned long long v;
    } m[] = {
        {"moxy_fleet_connected", "gauge", "1 while the subscription to the fleet's Redis channel is up.",
         (unsigned long long)st.connected},
        {"moxy_fleet_published_total", "counter", "Purges and invalidations of this node that Redis took.", st.published},
        {"moxy_fleet_publish_failures_total", "counter",
         "Purges and invalidations applied here but not broadcast (Redis down or slow, queue full).", st.publish_failed},
        {"moxy_fleet_received_total", "counter", "Messages that came on the channel (this node's echoes included).",
         st.received},
        {"moxy_fleet_applied_total", "counter", "Messages of other nodes applied here.", st.applied},
    };
    for (size_t i = 0; i < MOXY_ARRAY_LEN(m); i++) {
        head(out, m[i].name, m[i].type, m[i].help);
        evbuffer_add_printf(out, "%s %llu\n", m[i].name, m[i].v);
    }
    head(out, "moxy_fleet_dropped_total", "counter", "Messages received and dropped, by reason.");
    for (int r = 0; r < MOXY_FLEET_DROP_N; r++)
        evbuffer_add_printf(out, "moxy_fleet_dropped_total{reason=\"%s\"} %llu\n", moxy_fleet_drop_name(r),
                            st.dropped[r]);
}

/* Compression: bytes into and out of the coders by coding and direction,
 * responses, what was skipped and stopped, the coders' memory. */
static void render_compression(struct evbuffer *out, const moxy_stats_total_t *tot)
{
    static const char *const enc[4] = {"identity", "gzip", "br", "zstd"};
    static const char *const dir[2] = {"compress", "decompress"};
    const struct {
        const char *name, *help;
        const unsigned long long (*v)[4];
    } per[] = {
        {"moxy_compression_responses_total", "Responses compressed (direction=compress) or decoded for the client.",
         tot->comp_responses},
        {"moxy_compression_in_bytes_total", "Body bytes into the coder: the origin's (compress), the coded ones (decompress).",
         tot->comp_in},
        {"moxy_compression_out_bytes_total", "Body bytes out of the coder, to the client.", tot->comp_out},
    };
    for (size_t m = 0; m < MOXY_ARRAY_LEN(per); m++) {
        head(out, per[m].name, "counter", per[m].help);
        for (int d = 0; d < 2; d++)
            for (int e = 1; e < 4; e++)
                evbuffer_add_printf(out, "%s{direction=\"%s\",encoding=\"%s\"} %llu\n", per[m].name, dir[d], enc[e],
                                    per[m].v[d][e]);
    }
    head(out, "moxy_compression_skipped_total", "counter",
         "Responses sent as they were because the workers' coders were past compression.memory.");
    evbuffer_add_printf(out, "moxy_compression_skipped_total %llu\n", tot->comp_skipped);
    head(out, "moxy_decompression_failures_total", "counter", "Origin bodies that did not decode (invalid or cut).");
    evbuffer_add_printf(out, "moxy_decompression_failures_total %llu\n", tot->decomp_failures);
    head(out, "moxy_decompression_bombs_total", "counter",
         "Decoded bodies stopped past compression.decompress.max_size or max_ratio.");
    evbuffer_add_printf(out, "moxy_decompression_bombs_total %llu\n", tot->decomp_bombs);
    head(out, "moxy_compression_memory_bytes", "gauge", "Bytes the workers' compressors and decompressors hold.");
    evbuffer_add_printf(out, "moxy_compression_memory_bytes %lld\n", tot->comp_memory);
}

/* TLS: handshakes by kind and version, failures by reason, certificates'
 * expiry per listener (of the generation serving). */
_Static_assert(MOXY_TLS_FAIL_N <= MOXY_STATS_TLS_FAILS, "stats.h counts fewer TLS failure reasons than tls.h has");

static void render_tls(struct evbuffer *out, const moxy_stats_total_t *tot, const moxy_conf_t *conf)
{
    const moxy_gen_t *gen = moxy_gen_current();
    int any = 0;
    for (int i = 0; i < conf->nlistens; i++) any |= conf->listens[i].tls != NULL;
    if (!any) return;
    head(out, "moxy_tls_handshakes_total", "counter", "TLS handshakes done with clients, full or resumed.");
    evbuffer_add_printf(out, "moxy_tls_handshakes_total{kind=\"full\"} %llu\n"
                             "moxy_tls_handshakes_total{kind=\"resumed\"} %llu\n",
                        tot->tls_handshakes[0], tot->tls_handshakes[1]);
    head(out, "moxy_tls_handshakes_by_version_total", "counter", "TLS handshakes done with clients, by version.");
    evbuffer_add_printf(out, "moxy_tls_handshakes_by_version_total{version=\"TLSv1.2\"} %llu\n"
                             "moxy_tls_handshakes_by_version_total{version=\"TLSv1.3\"} %llu\n",
                        tot->tls_versions[0], tot->tls_versions[1]);
    head(out, "moxy_tls_handshakes_by_cipher_total", "counter", "TLS handshakes done with clients, by cipher.");
    for (int k = 0; k < tot->ntls_ciphers; k++) {
        evbuffer_add(out, "moxy_tls_handshakes_by_cipher_total{cipher=\"", 44);
        put_label(out, tot->tls_cipher_names[k]);
        evbuffer_add_printf(out, "\"} %llu\n", tot->tls_ciphers[k]);
    }
    head(out, "moxy_tls_handshake_failures_total", "counter", "TLS handshakes with clients that failed, by reason.");
    for (int k = 0; k < MOXY_TLS_FAIL_N; k++)
        evbuffer_add_printf(out, "moxy_tls_handshake_failures_total{reason=\"%s\"} %llu\n", moxy_tls_fail_names[k],
                            tot->tls_failures[k]);
    head(out, "moxy_tls_certificate_expiry_seconds", "gauge",
         "When the listener's certificate that expires first expires (Unix time).");
    for (int i = 0; gen && gen->conf == conf && gen->tls && i < conf->nlistens; i++) {
        if (!gen->tls[i]) continue;
        evbuffer_add(out, "moxy_tls_certificate_expiry_seconds{listener=\"", 46);
        put_label(out, conf->listens[i].name);
        evbuffer_add_printf(out, "\"} %lld\n", moxy_tls_server_expiry(gen->tls[i]));
    }
}

/* limits.buffer_memory: what the buffers hold against it. */
static void render_buffers(struct evbuffer *out)
{
    head(out, "moxy_buffer_memory_bytes", "gauge", "Bytes all connections' buffers hold (to 64 KiB per worker).");
    evbuffer_add_printf(out, "moxy_buffer_memory_bytes %zu\n", moxy_event_mem_held());
    head(out, "moxy_buffer_memory_limit_bytes", "gauge", "limits.buffer_memory (0: none).");
    evbuffer_add_printf(out, "moxy_buffer_memory_limit_bytes %zu\n", moxy_buffer_budget_limit());
    head(out, "moxy_buffer_memory_over", "gauge",
         "1 while the buffers are over limits.buffer_memory (each connection keeps less ahead of its peer).");
    evbuffer_add_printf(out, "moxy_buffer_memory_over %d\n", moxy_event_mem_over());
    head(out, "moxy_buffer_memory_over_total", "counter", "Times the buffers went over limits.buffer_memory.");
    evbuffer_add_printf(out, "moxy_buffer_memory_over_total %llu\n", moxy_buffer_budget_episodes());
}

/* Connections and requests by protocol, and HTTP/2's streams, refusals,
 * GOAWAYs and resets by error code (codes never seen are left out). */
static void render_protocols(struct evbuffer *out, const moxy_stats_total_t *tot)
{
    unsigned long long all = 0;
    for (int c = 0; c < 6; c++) all += tot->requests[c];
    head(out, "moxy_connections_by_protocol", "gauge", "Open client connections, by protocol.");
    evbuffer_add_printf(out, "moxy_connections_by_protocol{protocol=\"http/1.1\"} %lld\n"
                             "moxy_connections_by_protocol{protocol=\"h2\"} %lld\n",
                        tot->conns - tot->h2_conns, tot->h2_conns);
    head(out, "moxy_requests_by_protocol_total", "counter", "Requests answered, by the protocol they came on.");
    evbuffer_add_printf(out, "moxy_requests_by_protocol_total{protocol=\"http/1.1\"} %llu\n"
                             "moxy_requests_by_protocol_total{protocol=\"h2\"} %llu\n",
                        all - tot->requests_h2, tot->requests_h2);
    head(out, "moxy_client_connections_refused_total", "counter",
         "Client connections closed at accept past limits.connections_per_client.");
    evbuffer_add_printf(out, "moxy_client_connections_refused_total %llu\n", tot->client_refused);
    head(out, "moxy_accept_paused_total", "counter",
         "Times the workers stopped accepting: out of file descriptors, or at limits.connections.");
    evbuffer_add_printf(out, "moxy_accept_paused_total{reason=\"descriptors\"} %llu\n"
                             "moxy_accept_paused_total{reason=\"connections\"} %llu\n",
                        tot->accept_paused[0], tot->accept_paused[1]);
    head(out, "moxy_accept_descriptor_errors_total", "counter",
         "Accepts that failed for want of a file descriptor (EMFILE, ENFILE).");
    evbuffer_add_printf(out, "moxy_accept_descriptor_errors_total %llu\n", tot->accept_fd_errors);
    head(out, "moxy_client_addresses", "gauge",
         "Client addresses (IPv6: /64s) holding connections under limits.connections_per_client.");
    evbuffer_add_printf(out, "moxy_client_addresses %ld\n", moxy_conn_limit_tracked());
    head(out, "moxy_http2_connections_total", "counter", "HTTP/2 client connections since start.");
    evbuffer_add_printf(out, "moxy_http2_connections_total %llu\n", tot->h2_conns_total);
    head(out, "moxy_http2_streams_total", "counter", "HTTP/2 streams that became requests.");
    evbuffer_add_printf(out, "moxy_http2_streams_total %llu\n", tot->h2_streams);
    head(out, "moxy_http2_refused_streams_total", "counter",
         "HTTP/2 streams refused: past http2.max_concurrent_streams, or on a closing connection.");
    evbuffer_add_printf(out, "moxy_http2_refused_streams_total %llu\n", tot->h2_refused);
    head(out, "moxy_http2_floods_total", "counter",
         "HTTP/2 connections closed with ENHANCE_YOUR_CALM for a flood of control frames or resets.");
    evbuffer_add_printf(out, "moxy_http2_floods_total %llu\n", tot->h2_floods);
    head(out, "moxy_http2_stalled_streams_total", "counter",
         "HTTP/2 streams reset for a flow-control window kept closed past timeouts.client_send.");
    evbuffer_add_printf(out, "moxy_http2_stalled_streams_total %llu\n", tot->h2_stalls);
    static const struct {
        const char *name, *help;
        size_t off;
    } by_code[] = {
        {"moxy_http2_goaway_sent_total", "GOAWAY frames sent to clients, by error code.",
         offsetof(moxy_stats_total_t, h2_goaway)},
        {"moxy_http2_resets_sent_total", "RST_STREAM frames sent to clients, by error code.",
         offsetof(moxy_stats_total_t, h2_rst_sent)},
        {"moxy_http2_resets_received_total", "RST_STREAM frames received from clients, by error code.",
         offsetof(moxy_stats_total_t, h2_rst_recv)},
    };
    for (size_t i = 0; i < MOXY_ARRAY_LEN(by_code); i++) {
        const unsigned long long *v = (const unsigned long long *)((const char *)tot + by_code[i].off);
        head(out, by_code[i].name, "counter", by_code[i].help);
        for (int k = 0; k < MOXY_H2_CODES; k++)
            if (v[k] || k == 0)
                evbuffer_add_printf(out, "%s{code=\"%s\"} %llu\n", by_code[i].name, moxy_h2_code_names[k], v[k]);
    }
}

/* The counters of moxy's Lua modules and scripts (base/counters.h). */
static void put_counter(void *arg, const char *name, const char *labels, const char *help, double value)
{
    struct evbuffer *out = arg;
    if (help) { /* the first of its name: the HELP (one line) and TYPE lines */
        evbuffer_add_printf(out, "# HELP %s ", name);
        for (const char *p = *help ? help : "A counter of a script's."; *p; p++) {
            if (*p == '\\') evbuffer_add(out, "\\\\", 2);
            else if (*p == '\n') evbuffer_add(out, "\\n", 2);
            else evbuffer_add(out, p, 1);
        }
        evbuffer_add_printf(out, "\n# TYPE %s counter\n", name);
    }
    if (*labels) evbuffer_add_printf(out, "%s{%s} %.17g\n", name, labels, value);
    else evbuffer_add_printf(out, "%s %.17g\n", name, value);
}

static void render_counters(struct evbuffer *out)
{
    moxy_counters_each(put_counter, out);
    head(out, "moxy_counters_refused_total", "counter",
         "Counters (moxy.metrics, rate limits, ACL and WAF rules) not made: the table of 4096 was full.");
    evbuffer_add_printf(out, "moxy_counters_refused_total %llu\n", moxy_counters_refused());
}

int moxy_metrics_render(struct evbuffer *out, moxy_worker_t *const *workers, int n, const moxy_conf_t *conf,
                        double uptime)
{
    head(out, "moxy_info", "gauge", "moxy's version (the value is always 1).");
    evbuffer_add_printf(out, "moxy_info{version=\"%s\"} 1\n", MOXY_VERSION);
    head(out, "moxy_uptime_seconds", "gauge", "Seconds since moxy started.");
    evbuffer_add_printf(out, "moxy_uptime_seconds %.3f\n", uptime);
    const moxy_reload_status_t *rs = moxy_reload_status();
    head(out, "moxy_generation", "gauge", "The configuration generation serving (1 at start, +1 per reload).");
    evbuffer_add_printf(out, "moxy_generation %u\n", rs->generation);
    head(out, "moxy_reloads_total", "counter", "Reloads, by result (a failed one leaves the old generation serving).");
    evbuffer_add_printf(out, "moxy_reloads_total{result=\"ok\"} %llu\nmoxy_reloads_total{result=\"failed\"} %llu\n",
                        rs->reloads, rs->failures);
    head(out, "moxy_last_reload_success", "gauge", "1 when the last reload succeeded (or none was tried), else 0.");
    evbuffer_add_printf(out, "moxy_last_reload_success %d\n", rs->seq == 0 || rs->ok);
    head(out, "moxy_last_reload_timestamp_seconds", "gauge", "When the last reload was tried (Unix time; 0: none).");
    evbuffer_add_printf(out, "moxy_last_reload_timestamp_seconds %.3f\n", rs->at);
    head(out, "moxy_workers", "gauge", "Worker threads.");
    evbuffer_add_printf(out, "moxy_workers %d\n", n);
    moxy_stats_total_t tot;
    moxy_stats_sum(workers, n, &tot);
    head(out, "moxy_connections", "gauge", "Open client connections.");
    evbuffer_add_printf(out, "moxy_connections %lld\n", tot.conns);
    render_buffers(out);
    head(out, "moxy_lua_errors_total", "counter",
         "Hook and timer runs that failed: script errors, CPU budget and memory limit.");
    evbuffer_add_printf(out, "moxy_lua_errors_total %llu\n", tot.lua_errors);
    head(out, "moxy_lua_budget_kills_total", "counter", "Hook and timer runs stopped past lua.cpu_budget.");
    evbuffer_add_printf(out, "moxy_lua_budget_kills_total %llu\n", tot.budget_kills);
    unsigned long long log_fail[MOXY_LOGS], log_lost[MOXY_LOGS];
    for (int k = 0; k < MOXY_LOGS; k++) moxy_log_write_failures(k, &log_fail[k], &log_lost[k]);
    head(out, "moxy_log_write_failures_total", "counter",
         "Writes to a log that failed (a full disk...): their lines are dropped, not retried.");
    evbuffer_add_printf(out, "moxy_log_write_failures_total{log=\"access\"} %llu\n"
                             "moxy_log_write_failures_total{log=\"error\"} %llu\n",
                        log_fail[MOXY_LOG_ACCESS], log_fail[MOXY_LOG_ERROR]);
    head(out, "moxy_log_dropped_lines_total", "counter", "Log lines lost to failed writes.");
    evbuffer_add_printf(out, "moxy_log_dropped_lines_total{log=\"access\"} %llu\n"
                             "moxy_log_dropped_lines_total{log=\"error\"} %llu\n",
                        log_lost[MOXY_LOG_ACCESS], log_lost[MOXY_LOG_ERROR]);
    head(out, "moxy_worker_loop_lag_seconds", "gauge",
         "How late each worker's one-second timer fired last: time its event loop was kept busy.");
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(out, "moxy_worker_loop_lag_seconds{worker=\"%d\"} %.6f\n", workers[i]->id,
                            (double)LOAD(workers[i]->stats.loop_lag_us) / 1e6);
    render_requests(out, workers, n, conf, &tot);
    if (render_upstreams(out, workers, n, conf) != MOXY_OK) return MOXY_ERROR;
    render_dicts(out, conf);
    render_cache(out, &tot, conf);
    render_fleet(out);
    render_compression(out, &tot);
    render_tls(out, &tot, conf);
    render_protocols(out, &tot);
    render_counters(out);
    return MOXY_OK;
}
