/*
 * http_cache.h -- what the cache's two halves share: http_cache.c (keys,
 * lookups, hits, collapsed misses, background refreshes) and cache_fill.c
 * (the origin's response stored).  Not for other folders: http.h is the
 * cache's interface.
 */
#ifndef MOXY_HTTP_CACHE_H
#define MOXY_HTTP_CACHE_H

#include "cache/cache.h"
#include "http/http.h"

struct timeval;

/* 1 when o, stale, may still answer r whose origin failed now: within
 * its stale-if-error (RFC 5861 4), or, without one, cache.stale_if_error
 * (RFC 9111 4.2.4: the origin is as good as disconnected) unless it must
 * be revalidated before every use, or has s-maxage, which implies
 * proxy-revalidate for a shared cache (RFC 9111 5.2.2.10; the origin's
 * own stale-if-error or stale-while-revalidate still counts). */
int moxy_cache_stale_if_error_allows(const moxy_req_t *r, const moxy_cache_obj_t *o, double now);

/* r's cache key (r->cache_key, r->cache_klen, r->cache_hash), made once
 * (on_cache_key's changes count).  MOXY_ERROR: out of memory. */
int moxy_cache_make_key(moxy_req_t *r);

/* The "Name: value\r\n" lines of a stored head (len bytes) appended to
 * list, copied into pool.  MOXY_ERROR: out of memory. */
int moxy_cache_head_parse(moxy_pool_t *pool, const char *head, size_t len, moxy_headers_t *list);

/* Serve r from o (a fresh hit, or a 304 for the client's condition). */
void moxy_cache_serve(moxy_req_t *r, moxy_cache_obj_t *o, double now);

/* r's time as its key's leader is over; not_storable: its response was not
 * stored (the key is not coalesced for a while). */
void moxy_cache_flight_over(moxy_req_t *r, int not_storable);

/* --- cache_variant.c: compressed variants --- */

/* r is a hit on r->cache_obj whose stage decided to compress it
 * (moxy_body_filter_start ran; its head is not sent): answer it with the
 * object's variant of that coding when there is one (r's coder cancelled,
 * r->cache_obj the variant, its length known -- or streamed while another
 * hit makes it), else make it from r's coded body when no other hit is. */
void moxy_cache_variant_hit(moxy_req_t *r);

/* r will stream r->cache_obj as it fills (stream_step every 2 ms):
 * its timer made.  MOXY_ERROR: out of memory. */
int moxy_cache_stream_setup(moxy_req_t *r);

/* tv in seconds. */
double moxy_cache_tv_secs(const struct timeval *tv);

/* r holds something of the cache's (an object reference, a flight, a
 * wait): moxy_cache_req_free lets it go when r ends. */
void moxy_cache_attach(moxy_req_t *r);

/* The wall clock of r's worker (its loop's cached time), in seconds. */
double moxy_cache_wall_now(const moxy_req_t *r);

/* Set r's Cache-Status field (RFC 9211) to "moxy; " and what fmt says. */
void moxy_cache_set_status(moxy_req_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 for a request the cache looks up: a GET or HEAD, not a protocol
 * switch (a WebSocket handshake's 101 is no response to keep, and a
 * waiter would wait for a tunnel to end). */
int moxy_cache_looked_up(const moxy_req_t *r);

/* 1 when a hook called txn.cache:bypass() for r (noted as its cache
 * status): no lookup, no store. */
int moxy_cache_bypassed(moxy_req_t *r);

/* Count r's lookup as a hit or a miss, in its worker's counts (r's own
 * thread: one writer, no locked instruction on the request path). */
void moxy_cache_count_lookup(moxy_req_t *r, int hit);

/* Told of each purge a client (PURGE) or a script (moxy.cache.purge,
 * purge_prefix) made here, after it was applied: prefix 1 for a prefix,
 * key (len bytes).  The fleet broadcasts it (ops/modules.c sets it); NULL:
 * nobody is told. */
typedef void (*moxy_cache_purged_fn)(int prefix, const char *key, size_t len);
void moxy_cache_set_purge_hook(moxy_cache_purged_fn fn);

/* --- cache_shard.c: the fleet's caches as one --- */

/* r misses (no object, or one it does not keep): with cache.shard, the
 * owner of its key among the fleet's usable nodes.  MOXY_OK: another node
 * (r->shard_owner: the proxy's try goes there, proxy/origin_shard.c);
 * MOXY_DECLINED: this node fills it, as without sharding (this node owns
 * it, no node is usable, or r is not for sharing: a peer's fill, no-store,
 * a stale object kept here, set_peer, a key no field can carry). */
int moxy_cache_shard_route(moxy_req_t *r);

#endif
