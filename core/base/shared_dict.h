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

/* The FFI exports of lua/moxy/shared.lua (tools/check-ffi.lua compares them with
 * its ffi.cdef; bump api/ffi.h's MOXY_FFI_ABI on any change). */
/* BEGIN FFI lua/moxy/shared.lua */
typedef struct moxy_shdict_s moxy_shdict_t;

/* What moxy_ffi_shdict_stats fills in, summed over the dict's stripes:
 * capacity (bytes, the configured size), used (bytes counted: keys + values
 * + a per-item overhead), items (expired ones not met yet included),
 * evictions (live items dropped to make room), hits and misses (of get). */
typedef struct {
    size_t capacity, used, items, evictions, hits, misses;
} moxy_shdict_stats_t;

/* The type tag of a stored value. */
enum {
    MOXY_SHDICT_NIL = 0,     /* no value: moxy_ffi_shdict_store deletes the key */
    MOXY_SHDICT_STRING = 1,  /* bytes */
    MOXY_SHDICT_NUMBER = 2,  /* a double, in num */
    MOXY_SHDICT_BOOLEAN = 3, /* 0 or 1, in num */
    MOXY_SHDICT_TABLE = 4    /* bytes of LuaJIT's string.buffer encode */
};

/* What moxy_ffi_shdict_store does about the key being there or not. */
enum {
    MOXY_SHDICT_SET = 0,    /* store either way */
    MOXY_SHDICT_ADD = 1,    /* only when absent, else MOXY_SHDICT_E_EXISTS */
    MOXY_SHDICT_REPLACE = 2 /* only when present, else MOXY_SHDICT_E_NOT_FOUND */
};

/* Why a call failed, in its *err out-parameter. */
enum {
    MOXY_SHDICT_E_NO_MEMORY = 1, /* bigger than a stripe's budget, or malloc failed */
    MOXY_SHDICT_E_EXISTS = 2,
    MOXY_SHDICT_E_NOT_FOUND = 3,
    MOXY_SHDICT_E_NOT_NUMBER = 4,
    MOXY_SHDICT_E_BAD_KEY = 5 /* empty, or longer than 65535 bytes */
};

/* The dict called name (nlen bytes), or NULL when none was created. */
moxy_shdict_t *moxy_ffi_shdict_find(const char *name, size_t nlen);

/* For tests and tools: the dict called name, created with a budget of size
 * bytes when absent (an existing one is returned as it is, data and size).
 * NULL: size 0 or out of memory.  The registry owns it until exit. */
moxy_shdict_t *moxy_ffi_shdict_create(const char *name, size_t nlen, size_t size);

/* Copy key's value out, under the lock.  *type gets its MOXY_SHDICT_* tag,
 * *num the number (or boolean 0/1).  A string or table is copied into *val,
 * a caller buffer of *vlen bytes, or when longer into a malloc'd buffer put
 * in *val with *must_free = 1 (free it with moxy_ffi_shdict_free); *vlen gets
 * its length.  MOXY_OK; MOXY_DECLINED: absent or expired (a miss);
 * MOXY_ERROR: bad key, or out of memory. */
int moxy_ffi_shdict_get(moxy_shdict_t *d, const char *key, size_t klen, int *type, char **val,
                        size_t *vlen, double *num, int *must_free);

/* Store under key, as op (MOXY_SHDICT_SET/ADD/REPLACE) says, a value of type
 * (MOXY_SHDICT_NIL deletes the key): the slen bytes at str (copied) for a
 * string or table, num for a number or boolean; it expires in ttl seconds
 * (0: never).  MOXY_OK; MOXY_DECLINED with *err E_EXISTS (ADD) or
 * E_NOT_FOUND (REPLACE); MOXY_ERROR with *err E_NO_MEMORY or E_BAD_KEY
 * (then an old value is left as it was). */
int moxy_ffi_shdict_store(moxy_shdict_t *d, int op, const char *key, size_t klen, int type,
                          const char *str, size_t slen, double num, double ttl, int *err);

/* Add by to key's number atomically; *out gets the sum.  An absent key is
 * created as init + by, expiring in ttl seconds (0: never), when has_init;
 * else MOXY_DECLINED (*err E_NOT_FOUND).  An existing key keeps its ttl.
 * MOXY_ERROR with *err E_NOT_NUMBER, E_NO_MEMORY or E_BAD_KEY. */
int moxy_ffi_shdict_incr(moxy_shdict_t *d, const char *key, size_t klen, double by, double init,
                         int has_init, double ttl, double *out, int *err);

/* What moxy_ffi_shdict_gcra tells of a limit's key: seconds until the
 * request would have been allowed (0 when it was), seconds until the key
 * is back to its full burst, and the requests it allows now (after this
 * one). */
typedef struct {
    double retry_after, reset, remaining;
} moxy_gcra_t;

/* GCRA (the generic cell rate algorithm) on key, atomically: one request
 * of cost (in requests; 0: only look) against a rate of one per interval
 * seconds with burst more at once.  The key holds the theoretical arrival
 * time (a number, expiring once it no longer limits).  MOXY_OK: allowed
 * (and counted); MOXY_DECLINED: not allowed, nothing changed; *out says
 * more.  MOXY_ERROR with *err E_NOT_NUMBER, E_NO_MEMORY or E_BAD_KEY. */
int moxy_ffi_shdict_gcra(moxy_shdict_t *d, const char *key, size_t klen, double interval, double burst,
                         double cost, moxy_gcra_t *out, int *err);

/* Seconds key has left into *ttl (0: never expires).  MOXY_DECLINED: absent. */
int moxy_ffi_shdict_ttl(moxy_shdict_t *d, const char *key, size_t klen, double *ttl);

/* Make key expire ttl seconds from now (0: never).  MOXY_DECLINED: absent. */
int moxy_ffi_shdict_expire(moxy_shdict_t *d, const char *key, size_t klen, double ttl);

/* Up to max live keys (max <= 0: all), stripe by stripe, each under its own
 * lock (not a snapshot of the whole dict), in a malloc'd *buf of *len bytes
 * (NULL when there is none; free it with moxy_ffi_shdict_free): *count
 * entries, each a size_t length, the key's bytes, padding to a multiple of
 * sizeof(size_t).  MOXY_OK, or MOXY_ERROR when out of memory. */
int moxy_ffi_shdict_keys(moxy_shdict_t *d, int max, char **buf, size_t *len, int *count);

/* Remove every item (the counters of the stats stay). */
void moxy_ffi_shdict_flush_all(moxy_shdict_t *d);

/* Fill *out; see moxy_shdict_stats_t. */
void moxy_ffi_shdict_stats(moxy_shdict_t *d, moxy_shdict_stats_t *out);

/* Free a buffer that moxy_ffi_shdict_get or moxy_ffi_shdict_keys malloc'd. */
void moxy_ffi_shdict_free(void *p);
/* END FFI */

#endif
