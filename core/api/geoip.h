/*
 * geoip.h -- MaxMind databases (libmaxminddb), opened once with mmap and
 * shared by every worker, swapped without dropping a request when a file is
 * replaced on disk.
 *
 * A process-wide registry holds the databases the configuration names
 * (`geoip = { city = "GeoLite2-City.mmdb" }`).  Each has a current
 * *version* (an open MMDB_s with a reference count).  The main thread looks
 * at the files every second; a changed file is opened as a new version and
 * becomes current, or is rejected with a log line (the old version stays).
 * A worker keeps a reference to the version it looks up in and moves to the
 * current one at its next lookup (one atomic load per lookup when nothing
 * changed); its one-second timer lets go of a replaced version even when no
 * lookup comes.  A version is closed when its last reference goes.
 *
 * Lua reaches the lookups through the FFI exports of ffi.h (block
 * "lua/moxy/geo.lua").
 */
#ifndef MOXY_GEOIP_H
#define MOXY_GEOIP_H

#include "base/config.h"
#include "http/http-t.h"

#include <event2/event.h>

/* Open every database of conf (main thread, before the workers start).
 * MOXY_OK, or MOXY_ERROR after writing "file:line: geoip.NAME: why" to err
 * for each that cannot be opened. */
int moxy_geoip_open_all(const moxy_conf_t *conf, FILE *err);

/* Replace the registry with the n databases names[i] at paths[i] (moxy
 * test's t.run{geoip = ...}; no worker may run).  MOXY_OK, or MOXY_ERROR
 * with "geoip.NAME: why" in err and no database open. */
int moxy_geoip_open(const char *const *names, const char *const *paths, int n, char *err, size_t errlen);

/* Look at the files every second on base (the main thread's loop) and
 * swap in those that changed.  MOXY_OK or MOXY_ERROR. */
int moxy_geoip_watch_start(struct event_base *base);

/* Stop watching, and close every database (after the workers ended). */
void moxy_geoip_close_all(void);

/* A worker lets go of versions that were replaced (its one-second timer). */
void moxy_geoip_worker_refresh(moxy_worker_t *w);

/* A worker ends: let go of every version it holds. */
void moxy_geoip_worker_free(moxy_worker_t *w);

/* The GeoIP databases' part in a worker's life (lifecycle.h): its versions in a worker slot, refreshed each second, freed with the worker. */
extern struct moxy_module_s moxy_geoip_module;

#endif
