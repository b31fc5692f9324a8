/*
 * fleet.h -- the fleet: cache purges and shared-dict invalidations
 * broadcast to every moxy node over Redis pub/sub (docs/fleet.md).
 *
 * Process-wide, not per worker: one thread with its own event loop holds
 * a subscriber connection (SUBSCRIBE channel) and a publisher client to
 * the configured Redis (net/redis.h).  Any thread publishes by queueing a
 * message (bounded) and waking that thread; workers never wait on Redis.
 * Messages received are checked (base/fleet_msg.h: format, signature,
 * age, replays, a rate) and applied on the fleet thread: the cache and the
 * shared dicts are process-wide and thread-safe.  A node applies its own
 * purges itself before it publishes them and ignores their echo; a
 * message received is never published again.
 *
 * Pub/sub is fire-and-forget: what is published while a node is not
 * subscribed never reaches it.
 */
#ifndef MOXY_API_FLEET_H
#define MOXY_API_FLEET_H

#include "base/config.h"
#include "base/fleet_msg.h"
#include "http/lifecycle.h"

#define MOXY_FLEET_QUEUE_MAX 4096               /* messages waiting to be published */
#define MOXY_FLEET_QUEUE_BYTES (8 * 1024 * 1024) /* their bytes */

/* Why received messages were dropped (moxy_fleet_stats_t.dropped). */
enum {
    MOXY_FLEET_DROP_MALFORMED = 0,
    MOXY_FLEET_DROP_TOO_LARGE,
    MOXY_FLEET_DROP_SIGNATURE,
    MOXY_FLEET_DROP_STALE,  /* older (or further ahead) than max_age */
    MOXY_FLEET_DROP_REPLAY, /* a message seen already */
    MOXY_FLEET_DROP_RATE,   /* over the rate of messages applied */
    MOXY_FLEET_DROP_N
};

/* What /metrics shows (counts since the process started). */
typedef struct {
    int enabled;                   /* fleet = {...} is running */
    int connected;                 /* the subscription is up */
    unsigned long long published;  /* messages Redis took */
    unsigned long long publish_failed; /* not queued, or Redis refused or did not answer */
    unsigned long long received;   /* messages that came on the channel, own echoes included */
    unsigned long long applied;    /* messages of other nodes applied here */
    unsigned long long dropped[MOXY_FLEET_DROP_N];
} moxy_fleet_stats_t;

/* The fleet follows conf (main thread; at start and at each reload): it
 * starts, keeps its connections when conf's fleet section is the same as
 * the running one's, starts again with new settings, or stops when conf
 * has none.  MOXY_OK, or MOXY_ERROR (logged: the thread could not start). */
int moxy_fleet_apply(const moxy_conf_t *conf);

/* Stop the fleet's thread and free everything (main thread, at exit). */
void moxy_fleet_stop(void);

/* Broadcast kind (MOXY_FLEET_*) with its arguments to the other nodes,
 * from any thread; the caller has applied it here already.  Never blocks
 * on Redis.  MOXY_OK: queued; MOXY_DECLINED: no fleet configured;
 * MOXY_ERROR: not queued (queue full, too large), counted and logged. */
int moxy_fleet_publish(int kind, const char *a1, size_t a1len, const char *a2, size_t a2len);

/* The cache's purge hook (cache/http_cache.h): a PURGE or a script's purge
 * made here, broadcast. */
void moxy_fleet_cache_purged(int prefix, const char *key, size_t len);

/* The counts into *st. */
void moxy_fleet_stats(moxy_fleet_stats_t *st);

/* The drop reason's label for /metrics ("bad_signature", ...). */
const char *moxy_fleet_drop_name(int reason);

/* Follows reloads (registered by ops/modules.c). */
extern moxy_module_t moxy_fleet_module;

/* BEGIN FFI lua/moxy/fleet.lua */
/* moxy.fleet.delete(dict, key) (key non-NULL) / moxy.fleet.flush(dict):
 * applied to the dict called name (nlen bytes) here, then broadcast.
 * 0: applied and queued; 1: applied, not broadcast (no fleet); 2: applied,
 * the broadcast failed (counted); -1: no such dict; -2: bad key. */
int moxy_ffi_fleet_dict(const char *name, size_t nlen, const char *key, size_t klen);
/* END FFI */

#endif
