/*
 * shared_dict.h -- moxy.shared: named dictionaries shared by every worker
 * thread of the process (not by separate moxy processes).
 *
 * A process-wide registry holds the dicts by name.  The main thread creates
 * the ones the configuration declares before any worker starts; Lua reaches
 * them through the FFI exports of ffi.h (block "lua/moxy/shared.lua").
 *
 * Creation is idempotent by name: asking for a name the registry already
 * holds returns that dict with its data, its size unchanged.  So a future
 * hot reload that declares the same name keeps the dict and what is in it.
 * Dicts are never freed before exit (a Lua VM may hold a pointer to any of
 * them); the registry frees them all from an atexit handler.
 *
 * Memory model: a dict of `size` bytes is split into up to 16 stripes by key
 * hash (fewer for small dicts, so that a stripe holds at least 64 KiB), each
 * with its own mutex, hash table, LRU list and a budget of size / stripes
 * bytes.  An item costs its key + value + a fixed per-item overhead.  Storing
 * past a stripe's budget first drops expired items near the old end of its
 * LRU list, then evicts the least recently used live ones (counted).  An
 * item bigger than a stripe's budget is refused ("no memory").  Items expire
 * lazily: an expired item is removed when an operation meets it.
 */
#ifndef MOXY_SHARED_DICT_H
#define MOXY_SHARED_DICT_H

#include "base/config.h"
#include "base/moxy.h"

typedef struct moxy_shdict_s moxy_shdict_t;

#define MOXY_SHDICT_MAX_STRIPES 16
#define MOXY_SHDICT_MIN_STRIPE_BYTES (64 * 1024)
#define MOXY_SHDICT_MAX_KEY 65535 /* bytes; keys are 1..MAX_KEY bytes */

/* Create every dict conf->shared declares, keeping (with their data) those
 * the registry already holds.  Call on the main thread before the workers
 * start.  MOXY_OK, or MOXY_ERROR after writing why to err (out of memory). */
int moxy_shdict_create_all(const moxy_conf_t *conf, FILE *err);

/* The dict called name (len bytes), created with a budget of size bytes when
 * the registry does not hold it yet.  Thread-safe.  NULL when out of memory
 * or size is 0.  The registry owns the dict. */
moxy_shdict_t *moxy_shdict_open(const char *name, size_t len, size_t size);

/* The dict called name (len bytes), or NULL.  Thread-safe. */
moxy_shdict_t *moxy_shdict_find(const char *name, size_t len);

/* Free every dict and the registry (registered with atexit by the first
 * creation; no thread may use a dict afterwards). */
void moxy_shdict_free_all(void);

#endif
