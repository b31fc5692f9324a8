/*
 * balancer.c -- picking the peer of a pool for a try (upstream.h).
 *
 * Candidates are the peers that are usable now (not drained, not ejected, not
 * unhealthy, resolved), not full (max_conns) and not tried already by this
 * request; primaries first, backups only when no primary is a candidate.
 * Among the candidates:
 *
 *   round_robin  smooth weighted round-robin (nginx): each pick adds every
 *                candidate's weight to its current weight, takes the largest
 *                and subtracts the total from it -- a weight-5 peer is spread
 *                among the others, not picked five times in a row.  The
 *                current weights are the worker's (no shared writes).
 *   least_conn   fewest requests in flight (all workers) per weight; ties by
 *                round-robin among the tied.
 *   ewma         power of two choices: two candidates drawn at random by
 *                weight, the one with the lower max(latency EWMA, 1 ms) x
 *                (in flight + 1) wins.
 *   hash         Maglev consistent hashing over the primaries: a table of a
 *                prime M >= 100 x peers entries, each peer filling entries in
 *                its own permutation order in proportion to its weight.  A
 *                key whose peer is not a candidate is rehashed (up to 20
 *                times) and then goes round-robin, so keys of healthy peers
 *                never move when another peer fails.
 *   random       random, weighted.
 *
 * Weights are moxy_peer_weight(): the configured weight in 1/16ths, ramped
 * during slow start.  Nothing here allocates or takes a lock.
 */
#include "proxy/upstream.h"

#include <stdlib.h>

uint64_t moxy_hash64(const void *key, size_t len)
{
    /* FNV-1a, then splitmix64's finaliser for the avalanche FNV lacks */
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* --- Maglev --- */

static const uint32_t maglev_primes[] = {65537, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593};

int moxy_balancer_build(moxy_upstream_t *up)
{
    int n = 0, wmax = 1;
    int *idx = calloc((size_t)up->npeers + 1, sizeof(int));
    if (!idx) return MOXY_ERROR;
    for (int i = 0; i < up->npeers; i++) {
        if (up->peers[i].conf->backup) continue;
        idx[n++] = i;
        if (up->peers[i].conf->weight > wmax) wmax = up->peers[i].conf->weight;
    }
    uint32_t m = maglev_primes[MOXY_ARRAY_LEN(maglev_primes) - 1];
    for (size_t i = 0; i < MOXY_ARRAY_LEN(maglev_primes); i++) {
        if (maglev_primes[i] >= 100u * (uint32_t)n) {
            m = maglev_primes[i];
            break;
        }
    }
    uint16_t *table = malloc(m * sizeof(*table));
    uint32_t *offset = calloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *skip = calloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *next = calloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *count = calloc((size_t)n + 1, sizeof(uint32_t));
    if (!table || !offset || !skip || !next || !count) {
        free(idx);
        free(table);
        free(offset);
        free(skip);
        free(next);
        free(count);
        return MOXY_ERROR;
    }
    for (uint32_t j = 0; j < m; j++) table[j] = UINT16_MAX;
    for (int k = 0; k < n; k++) {
        /* the permutation depends on the address only, not on the order */
        const char *t = up->peers[idx[k]].conf->addr.text;
        uint64_t h = moxy_hash64(t, strlen(t));
        offset[k] = (uint32_t)((h >> 32) % m);
        skip[k] = (uint32_t)((h & 0xffffffffu) % (m - 1)) + 1;
    }
    uint32_t filled = 0;
    for (uint64_t round = 1; filled < m; round++) {
        for (int k = 0; k < n && filled < m; k++) {
            /* a peer of weight w places an entry while it has fewer than
             * round x w / wmax of them (Envoy's weighted Maglev) */
            if ((uint64_t)count[k] * (uint64_t)wmax >= round * (uint64_t)up->peers[idx[k]].conf->weight) continue;
            uint32_t c;
            do {
                c = (uint32_t)((offset[k] + (uint64_t)next[k] * skip[k]) % m);
                next[k]++;
            } while (table[c] != UINT16_MAX);
            table[c] = (uint16_t)idx[k];
            count[k]++;
            filled++;
        }
    }
    free(idx);
    free(offset);
    free(skip);
    free(next);
    free(count);
    free(up->maglev);
    up->maglev = table;
    up->maglev_size = m;
    return MOXY_OK;
}

int moxy_balancer_maglev_lookup(const moxy_upstream_t *up, uint64_t hash)
{
    if (!up->maglev) return -1;
    return up->maglev[hash % up->maglev_size];
}

/* --- candidates --- */

typedef struct {
    moxy_upstream_t *up;
    long long now;
    const uint64_t *tried;
    int last;
    int backup;  /* the pass: 0 primaries, 1 backups */
    int full;    /* a usable peer was skipped for max_conns */
} pick_t;

static int candidate(pick_t *k, int i)
{
    const moxy_peer_t *p = &k->up->peers[i];
    if (p->conf->backup != k->backup || i == k->last || (k->tried[i >> 6] >> (i & 63)) & 1) return 0;
    if (moxy_peer_state(p, k->now) != MOXY_PEER_UP) return 0;
    if (moxy_peer_full(p)) {
        k->full = 1;
        return 0;
    }
    return 1;
}

/* Smooth weighted round-robin among the candidates; with only_load >= 0,
 * only among those with in-flight x best_w == only_load x own weight (the
 * least_conn ties). */
static int pick_rr(pick_t *k, int *rr, long long only_load, long long best_w)
{
    moxy_upstream_t *up = k->up;
    int best = -1, total = 0;
    for (int i = 0; i < up->npeers; i++) {
        if (!candidate(k, i)) continue;
        int w = moxy_peer_weight(&up->peers[i], k->now);
        if (only_load >= 0) {
            long long a = atomic_load_explicit(&up->peers[i].active, memory_order_relaxed);
            if (a * best_w != only_load * w) continue;
        }
        rr[i] += w;
        total += w;
        if (best < 0 || rr[i] > rr[best]) best = i;
    }
    if (best >= 0) rr[best] -= total;
    return best;
}

static int pick_least_conn(pick_t *k, int *rr)
{
    moxy_upstream_t *up = k->up;
    long long best_a = -1, best_w = 1;
    for (int i = 0; i < up->npeers; i++) {
        if (!candidate(k, i)) continue;
        long long a = atomic_load_explicit(&up->peers[i].active, memory_order_relaxed);
        long long w = moxy_peer_weight(&up->peers[i], k->now);
        if (best_a < 0 || a * best_w < best_a * w) {
            best_a = a;
            best_w = w;
        }
    }
    if (best_a < 0) return -1;
    int i = pick_rr(k, rr, best_a, best_w);
    return i >= 0 ? i : pick_rr(k, rr, -1, 1); /* the counts moved meanwhile */
}

/* A candidate drawn at random by weight, or -1. */
static int pick_random(pick_t *k, uint64_t rng[2], int not)
{
    moxy_upstream_t *up = k->up;
    uint64_t total = 0;
    for (int i = 0; i < up->npeers; i++)
        if (i != not && candidate(k, i)) total += (uint64_t)moxy_peer_weight(&up->peers[i], k->now);
    if (total == 0) return -1;
    uint64_t r = moxy_rng_next(rng) % total;
    int any = -1;
    for (int i = 0; i < up->npeers; i++) {
        if (i == not || !candidate(k, i)) continue;
        any = i;
        uint64_t w = (uint64_t)moxy_peer_weight(&up->peers[i], k->now);
        if (r < w) return i;
        r -= w;
    }
    return any; /* weights changed between the passes */
}

/* Latencies below this are not told apart by the ewma balancer: a
 * scheduling hiccup of a millisecond or two on a sub-millisecond link would
 * otherwise make a peer look ten times slower and starve it for the seconds
 * its peak EWMA takes to decay; below it, requests in flight decide. */
#define EWMA_FLOOR_US 1000.0

static double ewma_cost(const moxy_peer_t *p, long long now)
{
    double e = moxy_peer_ewma(p, now);
    return (e > EWMA_FLOOR_US ? e : EWMA_FLOOR_US) * (atomic_load_explicit(&p->active, memory_order_relaxed) + 1);
}

static int pick_ewma(pick_t *k, uint64_t rng[2])
{
    int a = pick_random(k, rng, -1);
    if (a < 0) return -1;
    int b = pick_random(k, rng, a);
    if (b < 0) return a;
    return ewma_cost(&k->up->peers[b], k->now) < ewma_cost(&k->up->peers[a], k->now) ? b : a;
}

static int pick_hash(pick_t *k, int *rr, uint64_t hash)
{
    moxy_upstream_t *up = k->up;
    if (up->maglev && !k->backup) {
        uint64_t h = hash;
        for (int i = 0; i < 21; i++) {
            int p = up->maglev[h % up->maglev_size];
            if (candidate(k, p)) return p;
            h = moxy_hash64(&h, sizeof(h)) ^ (uint64_t)i; /* rehash: the key's next choice */
        }
    }
    return pick_rr(k, rr, -1, 1);
}

int moxy_balancer_owner(const moxy_upstream_t *up, uint64_t hash, long long now)
{
    if (!up->maglev) return -1;
    uint64_t h = hash;
    for (int i = 0; i < 21; i++) { /* pick_hash's walk, on health alone */
        int p = up->maglev[h % up->maglev_size];
        if (moxy_peer_state(&up->peers[p], now) == MOXY_PEER_UP) return p;
        h = moxy_hash64(&h, sizeof(h)) ^ (uint64_t)i;
    }
    return -1;
}

int moxy_balancer_pick(moxy_upstream_t *up, int *rr, uint64_t rng[2], uint64_t hash, const uint64_t *tried,
                       int last, int want, long long now, const char **why)
{
    pick_t k = {.up = up, .now = now, .tried = tried, .last = last};
    if (want >= 0 && want < up->npeers) { /* the script's choice, while it is usable */
        k.backup = up->peers[want].conf->backup;
        if (candidate(&k, want)) return want;
        k.backup = 0;
    }
    if (up->npeers == 1) { /* nothing to choose: is it usable? */
        if (candidate(&k, 0)) return 0;
        *why = k.full ? "every live peer is at max_conns" : "no live peer";
        return -1;
    }
    for (k.backup = 0; k.backup <= 1; k.backup++) {
        int i;
        switch (up->conf->balance) {
        case MOXY_BAL_LEAST_CONN: i = pick_least_conn(&k, rr); break;
        case MOXY_BAL_EWMA: i = pick_ewma(&k, rng); break;
        case MOXY_BAL_HASH: i = pick_hash(&k, rr, hash); break;
        case MOXY_BAL_RANDOM: i = pick_random(&k, rng, -1); break;
        default: i = pick_rr(&k, rr, -1, 1); break;
        }
        if (i >= 0) return i;
    }
    *why = k.full ? "every live peer is at max_conns" : "no live peer";
    return -1;
}

int moxy_balancer_available(moxy_upstream_t *up, const uint64_t *tried, int last)
{
    pick_t k = {.up = up, .now = moxy_mono_ms(), .tried = tried, .last = last};
    for (k.backup = 0; k.backup <= 1; k.backup++)
        for (int i = 0; i < up->npeers; i++)
            if (candidate(&k, i)) return 1;
    return 0;
}
