/*
 * stats.h -- what moxy counts (ops/metrics.h renders it).
 *
 * Each worker counts in its own moxy_stats_t (one writer: a relaxed load and
 * store, no locked instruction on the request path); the admin listener on
 * the main thread sums the workers' counts when it is asked (relaxed loads),
 * and reads the shared upstream and dict state as they are.
 */
#ifndef MOXY_STATS_H
#define MOXY_STATS_H

#include "http/http-t.h"

#include <stdatomic.h>

#define MOXY_STATS_TLS_FAILS 12 /* at least net/tls.h's MOXY_TLS_FAIL_N */
#define MOXY_STATS_TLS_CIPHERS 16 /* ciphers counted apart (the rest as "other") */
#define MOXY_H2_CODES 14 /* HTTP/2 error codes NO_ERROR..HTTP_1_1_REQUIRED (RFC 9113 7); larger as the last */
#define MOXY_HIST_BUCKETS 13 /* upper bounds (whole µs) in stats.c, then +Inf */

/* A latency histogram: counts per bucket (not cumulative) and the sum. */
typedef struct {
    atomic_ullong bucket[MOXY_HIST_BUCKETS + 1];
    atomic_ullong sum_us;
} moxy_hist_t;

/* The upper bound, in seconds, of histogram bucket i (0 <= i < MOXY_HIST_BUCKETS;
 * bucket MOXY_HIST_BUCKETS is +Inf). */
double moxy_hist_bound(int i);

/* A worker's counts for the pools of one name, whatever generation they
 * belong to (a reload keeps counting on).  Made on the worker's thread (or
 * before it starts), never freed before the worker: the admin listener
 * walks the list while it grows. */
typedef struct moxy_pool_stats_s {
    struct moxy_pool_stats_s *_Atomic next;
    char *name;
    atomic_ullong requests[6]; /* requests answered for this pool, by status class (index 1..5; 0: none) */
    moxy_hist_t header_time;   /* try start to the origin's response head */
    moxy_hist_t connect_time;  /* try start to a new connection's establishment */
    atomic_llong idle;         /* idle keep-alive connections (gauge) */
    atomic_llong h2_conns;     /* open HTTP/2 connections (gauge) */
    atomic_ullong h2_streams;  /* HTTP/2 streams (tries) sent */
    atomic_ullong h2_resets;   /* of those, reset or refused by the origin */
    atomic_ullong h2_goaways;  /* GOAWAYs the origins sent */
    atomic_ullong cut;         /* responses whose origin failed after their head went to the client */
} moxy_pool_stats_t;

/* A worker's counts. */
typedef struct {
    atomic_ullong requests[6]; /* by status class */
    moxy_hist_t duration;      /* first byte to last byte, every request */
    atomic_ullong lua_errors;  /* hook runs that failed (script errors, budget, memory) */
    atomic_ullong budget_kills; /* of those, runs stopped past lua.cpu_budget */
    atomic_ullong cache_hits;   /* cache lookups answered from the cache */
    atomic_ullong cache_misses; /* cache lookups that went to the origin */
    atomic_ullong shard_forwarded; /* cache.shard: misses sent to their key's owner */
    atomic_ullong shard_fills;     /* cache.shard: peers' fill requests served as the owner */
    atomic_ullong shard_fallbacks; /* cache.shard: misses whose owner could not be reached, to the origin */
    atomic_ullong tls_handshakes[2];  /* completed TLS handshakes: [0] full, [1] resumed */
    atomic_ullong tls_versions[2];    /* of those, [0] TLS 1.2, [1] TLS 1.3 */
    atomic_ullong tls_failures[MOXY_STATS_TLS_FAILS]; /* failed, by net/tls.h's MOXY_TLS_FAIL_* */
    /* completed TLS handshakes by cipher: names as OpenSSL keeps them (for
     * the process's life), set once per slot before its first count; NULL
     * slots are free, the last counts the rest */
    _Atomic(const char *) tls_cipher_names[MOXY_STATS_TLS_CIPHERS];
    atomic_ullong tls_ciphers[MOXY_STATS_TLS_CIPHERS];
    atomic_ullong client_refused;     /* connections closed past limits.connections_per_client */
    atomic_ullong accept_paused[2];   /* accept pauses: [0] out of descriptors, [1] limits.connections */
    atomic_ullong accept_fd_errors;   /* accepts that failed with EMFILE or ENFILE */
    atomic_llong h2_conns;            /* open HTTP/2 client connections (gauge; also in nconns) */
    atomic_ullong h2_conns_total;     /* HTTP/2 client connections since start */
    atomic_ullong h2_streams;         /* HTTP/2 streams that became requests */
    atomic_ullong h2_refused;         /* streams refused past max_concurrent_streams, or while closing */
    atomic_ullong h2_floods;          /* connections closed for a flood (ENHANCE_YOUR_CALM) */
    atomic_ullong h2_stalls;          /* streams reset for a window kept closed past client_send */
    atomic_ullong h2_goaway[MOXY_H2_CODES];   /* GOAWAY sent, by error code */
    atomic_ullong h2_rst_sent[MOXY_H2_CODES]; /* RST_STREAM sent, by error code */
    atomic_ullong h2_rst_recv[MOXY_H2_CODES]; /* RST_STREAM received, by error code */
    atomic_ullong requests_h2;        /* requests that came over HTTP/2 */
    /* compression (compress.c), [0] compressed, [1] decoded, by coding (codec/coder.h's MOXY_ENC_*) */
    atomic_ullong comp_responses[2][4];
    atomic_ullong comp_in[2][4], comp_out[2][4]; /* bytes into and out of the coder */
    atomic_ullong comp_skipped;     /* responses sent as they were: the memory budget (or out of memory) */
    atomic_ullong decomp_failures;  /* decoded bodies that did not decode: the response cut (or a 502) */
    atomic_ullong decomp_bombs;     /* decoded bodies stopped past decompress.max_size or max_ratio */
    atomic_llong comp_memory;       /* bytes of coder state the worker holds (gauge) */
    atomic_llong loop_lag_us;  /* how late the worker's one-second timer fired last (gauge) */
    long long timer_due_us;    /* when it is due next (monotonic µs; the worker's own) */
    moxy_pool_stats_t *_Atomic pools; /* by pool name, newest first */
} moxy_stats_t;

/* The workers' counts summed (moxy_stats_sum). */
typedef struct {
    long long conns;                                    /* open client connections */
    unsigned long long requests[6];                     /* by status class */
    unsigned long long duration[MOXY_HIST_BUCKETS + 1]; /* the duration histogram's counts per bucket */
    unsigned long long lua_errors, budget_kills;
    unsigned long long cache_hits, cache_misses; /* cache lookups */
    unsigned long long shard_forwarded, shard_fills, shard_fallbacks; /* cache.shard */
    unsigned long long comp_responses[2][4], comp_in[2][4], comp_out[2][4];
    unsigned long long comp_skipped, decomp_failures, decomp_bombs;
    long long comp_memory;
    unsigned long long tls_handshakes[2], tls_versions[2], tls_failures[MOXY_STATS_TLS_FAILS];
    unsigned long long client_refused; /* past limits.connections_per_client */
    unsigned long long accept_paused[2], accept_fd_errors; /* accept paused: descriptors, connections */
    long long h2_conns;
    unsigned long long h2_conns_total, h2_streams, h2_refused, h2_floods, h2_stalls, requests_h2;
    unsigned long long h2_goaway[MOXY_H2_CODES], h2_rst_sent[MOXY_H2_CODES], h2_rst_recv[MOXY_H2_CODES];
    int ntls_ciphers;                             /* handshakes by cipher name ("other": the rest) */
    const char *tls_cipher_names[MOXY_STATS_TLS_CIPHERS * 2];
    unsigned long long tls_ciphers[MOXY_STATS_TLS_CIPHERS * 2];
} moxy_stats_total_t;

/* Add n to a counter only its worker writes (no locked instruction). */
#define MOXY_STAT_ADD(v, n) \
    atomic_store_explicit(&(v), atomic_load_explicit(&(v), memory_order_relaxed) + (n), memory_order_relaxed)
#define MOXY_STAT_SET(v, n) atomic_store_explicit(&(v), (n), memory_order_relaxed)

/* One more TLS handshake of w with the cipher name (a string OpenSSL
 * keeps for the process's life); on w's thread. */
/* The names of HTTP/2's error codes (RFC 9113 7), MOXY_H2_CODES of them. */
extern const char *const moxy_h2_code_names[MOXY_H2_CODES];

void moxy_stats_tls_cipher(moxy_stats_t *st, const char *name);

/* w's counts for the pools called name: found, or made (on w's thread, or
 * before it runs).  NULL when out of memory. */
moxy_pool_stats_t *moxy_stats_pool(moxy_worker_t *w, const char *name);

/* w's counts for the pools called name, or NULL (any thread: a read). */
const moxy_pool_stats_t *moxy_stats_pool_find(const moxy_worker_t *w, const char *name);

/* Free w's per-pool counts (the worker is over). */
void moxy_stats_free(moxy_worker_t *w);

/* Sum the n workers' counts into *out (relaxed loads, any thread: each
 * count is read as it is at that moment). */
void moxy_stats_sum(moxy_worker_t *const *workers, int n, moxy_stats_total_t *out);

/* Count us microseconds in h (its worker's thread). */
void moxy_hist_add(moxy_hist_t *h, long long us);

/* Count r, which is over (status, duration, pool, origin timing). */
void moxy_stats_request(moxy_req_t *r);

#endif
