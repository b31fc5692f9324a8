/*
 * admin_history.h -- the last five minutes of what the status page draws
 * (GET /history on the admin listener): once a second the main thread sums
 * the workers' counts and reads the pools' peers into a fixed ring.
 *
 * Memory: one static ring of MOXY_HISTORY_SAMPLES samples and, per peer
 * slot, a state and an in-flight count per sample; nothing is allocated.
 * At most MOXY_HISTORY_PEERS peers (over every pool) have a slot; a peer
 * that does not get one is counted in "untracked" and not drawn.  A slot
 * belongs to a pool name and peer address, not to a configuration, so a
 * reload that keeps a peer keeps its history, and a slot whose peer has been
 * gone for the whole window is given to the next new peer.
 *
 * Threads: main thread only (the admin listener's loop).
 */
#ifndef MOXY_ADMIN_HISTORY_H
#define MOXY_ADMIN_HISTORY_H

#include "base/config.h"
#include "ops/workers.h"

struct evbuffer;

#define MOXY_HISTORY_SAMPLES 300 /* one a second: five minutes */
#define MOXY_HISTORY_PEERS 128   /* peers drawn, over every pool */

/* Take one sample: the n workers' requests by status class and their
 * duration histogram (relaxed loads; the rates and percentiles of the
 * interval since the previous call are kept, the first call only sets the
 * baseline), their open connections, every peer of conf's pools (state,
 * requests in flight) and, when there is a cache, its hits and misses in
 * the interval and the bytes it holds.  conf may differ from the previous
 * call's. */
void moxy_history_sample(moxy_worker_t *const *workers, int n, const moxy_conf_t *conf);

/* Append the ring, oldest sample first, to out as one compact JSON object
 * (docs/operations.md, "Status page", describes it).  Rates are per second
 * and percentiles in milliseconds, both computed here.  MOXY_OK, or
 * MOXY_ERROR when out is out of memory. */
int moxy_history_json(struct evbuffer *out);

#endif
