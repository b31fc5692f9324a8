/*
 * upstream.h -- the running state of upstream pools that every worker shares:
 * for each server (a "peer") its health as requests see it (passive) and as
 * the health checks see it (active), requests in flight, a latency EWMA, the
 * drain flag and, for a server given by name, its resolved addresses; for
 * each pool the retry budget.  balancer.c picks a peer from this state;
 * health_check.c and resolver.c, on the main thread, write parts of it.
 *
 * Threads: workers read everything with relaxed atomics and write in-flight
 * counts, the EWMA and the failure counters; a pool's mutex is taken only
 * when a failure may change a peer's state (rare), and the address mutex
 * only to copy a named peer's address at connect.  Nothing on the path of a
 * healthy request takes a lock.
 *
 * Lifetime: the state of a configuration's pools is made by
 * moxy_upstreams_create() before any worker or check starts and freed with
 * the configuration that made it (a later configuration that kept a pool
 * holds a reference to it).
 */
#ifndef MOXY_UPSTREAM_H
#define MOXY_UPSTREAM_H

#include "base/config.h"
#include "base/moxy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

/* The FFI exports of lua/moxy/upstream.lua (tools/check-ffi.lua compares them with
 * its ffi.cdef; bump api/ffi.h's MOXY_FFI_ABI on any change). */
/* BEGIN FFI lua/moxy/upstream.lua */
/* One peer of a pool as moxy.upstream.peers() shows it. */
typedef struct {
    const char *addr;      /* as configured; valid while the configuration is */
    int state;             /* 0 up, 1 down (ejected), 2 unhealthy, 3 drained, 4 unresolved */
    int weight;            /* configured */
    double weight_now;     /* with slow start */
    int backup, max_conns;
    int active;            /* requests in flight, all workers */
    double ewma_ms;        /* latency EWMA to the response head; 0: no sample */
    int fails;             /* consecutive failures */
    double down_for;       /* seconds left of an ejection; 0: none */
    unsigned long long requests, failures, checks;
    unsigned long long ejections;   /* passive health ejections */
    unsigned long long transitions; /* health-check verdict changes (up <-> unhealthy) */
    char check_error[96];  /* why the last health check failed, "" */
} moxy_ffi_peer_t;

/* Peers of the pool called name (len bytes) in the running configuration;
 * -1: no such pool, -2: no configuration here (not in a hook or timer). */
int moxy_ffi_upstream_npeers(const char *name, size_t len);

/* Fill *out with peer i of the pool called name.  MOXY_OK or MOXY_DECLINED. */
int moxy_ffi_upstream_peer(const char *name, size_t len, int i, moxy_ffi_peer_t *out);

/* Drain (drained = 1) or enable the peer addr of the pool called name, for
 * every worker.  MOXY_OK; MOXY_DECLINED: no such pool or peer. */
int moxy_ffi_upstream_drain(const char *name, size_t len, const char *addr, size_t alen, int drained);

/* Peers of the pool called name that can take a request now (usable and
 * under max_conns); -1: no such pool; -2: no configuration here. */
int moxy_ffi_upstream_usable(const char *name, size_t len);

/* The pool's retries and retries the budget refused, since start. */
int moxy_ffi_upstream_retries(const char *name, size_t len, unsigned long long *retries,
                              unsigned long long *denied);
/* END FFI */

#define MOXY_PEER_MAX_ADDRS 8
#define MOXY_EWMA_DECAY_MS 5000.0 /* the latency EWMA's time constant */
#define MOXY_BUDGET_SLOTS 10 /* the retry budget's window: this many one-second slots */

/* A peer's state as moxy.upstream.peers() shows it. */
enum {
    MOXY_PEER_UP = 0,
    MOXY_PEER_DOWN,       /* ejected by passive health until down_until */
    MOXY_PEER_UNHEALTHY,  /* health checks fail */
    MOXY_PEER_DRAINED,    /* takes no new requests */
    MOXY_PEER_UNRESOLVED, /* a name that never resolved */
};
#define MOXY_PEER_NSTATES (MOXY_PEER_UNRESOLVED + 1)

/* The name of peer state s (MOXY_PEER_*, 0 <= s < MOXY_PEER_NSTATES), as
 * /status and /history show it (upstream.lua's STATES has the same). */
static inline const char *moxy_peer_state_name(int s)
{
    static const char *const names[MOXY_PEER_NSTATES] = {
        [MOXY_PEER_UP] = "up",
        [MOXY_PEER_DOWN] = "down",
        [MOXY_PEER_UNHEALTHY] = "unhealthy",
        [MOXY_PEER_DRAINED] = "drained",
        [MOXY_PEER_UNRESOLVED] = "unresolved",
    };
    return names[s];
}

typedef struct moxy_peer_s {
    const moxy_server_conf_t *conf; /* address text, weight, backup, max_conns, slow_start */
    struct moxy_upstream_s *pool;

    /* addresses: fixed for an IP literal; a name's are written by resolver.c */
    pthread_mutex_t addr_lock;
    struct sockaddr_storage addrs[MOXY_PEER_MAX_ADDRS];
    socklen_t addrlens[MOXY_PEER_MAX_ADDRS];
    int naddrs;                 /* under addr_lock */
    atomic_int resolved;        /* naddrs > 0 (readable without the lock) */
    atomic_uint addr_gen;       /* changes when the addresses do: older idle connections close */
    atomic_uint addr_next;      /* round-robin over several addresses */

    atomic_int active;          /* requests in flight to it, all workers */
    atomic_int drained;         /* no new requests */
    atomic_int check_down;      /* the health checks say it is unhealthy */
    atomic_llong down_until;    /* passive: ejected until this moxy_mono_ms() */
    atomic_llong up_since;      /* back in service at (slow start runs from here); 0: always up */
    atomic_llong ewma_us;       /* peak EWMA of the time to the response head, µs; 0: no sample */
    atomic_llong ewma_at;       /* moxy_mono_ms() of its last sample */
    atomic_int fails;           /* consecutive failures (passive) */
    long long first_fail;       /* when the current run of failures started (pool lock) */
    long long ejected_at;       /* moxy_mono_ms() of the last passive ejection (pool lock) */
    int ejections;              /* ejections since the last success (pool lock) */
    atomic_ullong requests;     /* tries sent to it */
    atomic_ullong failures;     /* tries that failed (passive's view) */
    atomic_ullong ejections_total; /* times passive health ejected it */
    atomic_ullong transitions;  /* times the health checks' verdict changed */

    /* written by health_check.c on the main thread, read by anyone */
    atomic_int check_ok, check_fail; /* consecutive results */
    atomic_ullong checks;       /* checks run */
    char check_error[96];       /* why the last check failed ("" when it passed), check_lock */
    pthread_mutex_t check_lock;
} moxy_peer_t;

/* One slot of the retry budget's window. */
typedef struct {
    atomic_llong second;        /* the second it counts (moxy_mono_ms() / 1000) */
    atomic_uint requests, retries;
} moxy_budget_slot_t;

typedef struct moxy_upstream_s {
    const moxy_upstream_conf_t *conf;
    moxy_peer_t *peers;         /* one per conf->servers, same order */
    int npeers;
    int nprimary;               /* peers that are not backups */
    uint16_t *maglev;           /* balance = "hash": the lookup table over the primaries, or NULL */
    uint32_t maglev_size;       /* a prime */
    pthread_mutex_t lock;       /* passive health transitions */
    moxy_budget_slot_t budget[MOXY_BUDGET_SLOTS];
    atomic_ullong retries, budget_denied; /* totals */
} moxy_upstream_t;


/* Make the running state of every pool of conf (conf->upstreams[i].state),
 * IP literals' addresses filled in, names unresolved.  With old (the
 * configuration serving before a reload, or NULL): a pool defined exactly
 * as in old keeps old's state (and a reference to the configuration that
 * made it); a pool that changed gets a new state that carries over what
 * its servers, by address, went through.  MOXY_OK, or MOXY_ERROR when out
 * of memory (what was made is freed by moxy_conf_release). */
int moxy_upstreams_create(moxy_conf_t *conf, const moxy_conf_t *old);

/* Free one pool's state (moxy_conf_release calls it). */
void moxy_upstream_state_free(moxy_upstream_t *up);

/* Why p is not usable for a new request now (MOXY_PEER_*), MOXY_PEER_UP when
 * it is.  max_conns is not looked at (see moxy_peer_full). */
int moxy_peer_state(const moxy_peer_t *p, long long now);

/* 1 when p has max_conns requests in flight. */
static inline int moxy_peer_full(const moxy_peer_t *p)
{
    return p->conf->max_conns > 0 &&
           atomic_load_explicit(&p->active, memory_order_relaxed) >= p->conf->max_conns;
}

/* p's weight now, in 1/16ths: its configured weight, ramped up over
 * slow_start after it came back. */
int moxy_peer_weight(const moxy_peer_t *p, long long now);

/* Copy p's address for a new connection into sa (rotating over several),
 * with the address generation it belongs to.  MOXY_OK, or MOXY_DECLINED
 * when the name has no address yet. */
int moxy_peer_addr(moxy_peer_t *p, struct sockaddr_storage *sa, socklen_t *salen, unsigned *gen);

/* A try to p ended.  ok: it answered (with a status that is not a failure);
 * else it failed (connect error, timeout, reset, a passive.statuses status)
 * and enough failures within the window eject it.  latency_us > 0 feeds the
 * EWMA.  Thread-safe. */
void moxy_peer_report(moxy_peer_t *p, int ok, long long latency_us);

/* An active check of p that started at started (moxy_mono_ms()) passed:
 * a passive ejection that began before it ends now (Envoy's default), with
 * slow start; logged.  Any thread. */
void moxy_peer_check_passed(moxy_peer_t *p, long long started);

/* The health checks' verdict on p changed: healthy or not (why: the last
 * failure).  Main thread; logs the transition. */
void moxy_peer_set_checked(moxy_peer_t *p, int healthy, const char *why);

/* What p is now, as moxy.upstream.peers(), /status and /metrics show it
 * (state, weights, in-flight requests, EWMA, counters, last check error). */
void moxy_peer_snapshot(moxy_peer_t *p, long long now, moxy_ffi_peer_t *out);

/* Drain p (no new requests; those in flight finish) or put it back. */
void moxy_peer_set_drained(moxy_peer_t *p, int drained);

/* The peer of up whose address text is addr (len bytes), or NULL. */
moxy_peer_t *moxy_upstream_find_peer(moxy_upstream_t *up, const char *addr, size_t len);

/* Count a request to up in the retry budget's window (now: moxy_mono_ms()). */
void moxy_budget_request(moxy_upstream_t *up, long long now);

/* Take one retry from up's budget: 1 when allowed (and counted), 0 when the
 * window's retries already reached retry_budget x requests + the minimum. */
int moxy_budget_retry(moxy_upstream_t *up);

/* 64-bit hash of the len bytes at key, for consistent hashing. */
uint64_t moxy_hash64(const void *key, size_t len);

/* Pick a peer of up for a new try: usable (moxy_peer_state), not full, not
 * tried (tried: a bitmap of up->npeers bits, bit i set when server i had a
 * try; last: the previous try's server or -1), primaries before backups, by
 * the pool's algorithm -- or want (>= 0) when it is such a peer.  hash is the key's hash for balance = "hash"
 * (without a key from Lua, the caller passes the client address's).  rr and
 * rng are the calling worker's round-robin weights (one int per server) and
 * random state; now is moxy_mono_ms().  Returns the server index, or -1
 * (*why: "no live peer" or "every live peer is at max_conns"). */
int moxy_balancer_pick(moxy_upstream_t *up, int *rr, uint64_t rng[2], uint64_t hash, const uint64_t *tried,
                       int last, int want, long long now, const char **why);

/* The primary of up (balance = "hash") that owns hash: the Maglev table's
 * choice, or its next choices (as moxy_balancer_pick rehashes) while that
 * one is not usable (moxy_peer_state: ejected, unhealthy, drained,
 * unresolved; max_conns is not looked at, so that ownership does not move
 * with load).  -1: no table, or no usable peer in 21 choices. */
int moxy_balancer_owner(const moxy_upstream_t *up, uint64_t hash, long long now);

/* 1 when ip (an address as text, "10.0.0.1" or "2001:db8::1") is one of the
 * addresses of a peer of up (a name's: those it resolved to).  Takes each
 * named peer's address lock. */
int moxy_upstream_has_address(moxy_upstream_t *up, const char *ip);

/* 1 when moxy_balancer_pick would find a peer (tried, last as there). */
int moxy_balancer_available(moxy_upstream_t *up, const uint64_t *tried, int last);

/* p's latency EWMA now (µs, decayed since its last sample); 0: none. */
double moxy_peer_ewma(const moxy_peer_t *p, long long now);

/* A TLS pool's names for server (an index of uc's servers): returns the
 * host its certificate must name -- uc's tls.name, else the server's DNS
 * name, else its IP address (written into buf, len bytes) -- and sets *sni
 * to the name to ask for (never an address: NULL then). */
const char *moxy_upstream_tls_names(const moxy_upstream_conf_t *uc, int server, char *buf, size_t len,
                                    const char **sni);

/* c (plain, connected to server of uc's pool) becomes a TLS client
 * connection as the pool says (those names, its client side); then
 * moxy_tls_handshake.  MOXY_OK, or MOXY_ERROR (out of memory). */
struct moxy_conn_s;
int moxy_upstream_tls_connect(struct moxy_conn_s *c, const moxy_upstream_conf_t *uc, int server);

/* Build up's Maglev table (balance = "hash").  MOXY_OK or MOXY_ERROR (out of memory). */
int moxy_balancer_build(moxy_upstream_t *up);

/* The primary that the Maglev table maps hash to, ignoring health (for specs
 * and the remap measurement), or -1. */
int moxy_balancer_maglev_lookup(const moxy_upstream_t *up, uint64_t hash);

#endif
