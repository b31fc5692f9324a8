/*
 * cache_policy.h -- the rules of RFC 9111 (and 9110, 5861) the cache
 * applies, as functions of header lists and stored objects: Cache-Control
 * directives, HTTP dates, freshness lifetimes, Vary, client conditions,
 * byte ranges, and the default cache key.  http_cache.c applies them to
 * requests.
 */
#ifndef MOXY_CACHE_POLICY_H
#define MOXY_CACHE_POLICY_H

#include "cache/cache.h"
#include "http/http-t.h"
#include "base/pool.h"

/* The Cache-Control directives moxy acts on. */
typedef struct {
    unsigned no_store : 1, no_cache : 1, private_ : 1, public_ : 1, must_revalidate : 1, only_if_cached : 1,
        must_understand : 1;
    double max_age, s_maxage, max_stale, min_fresh, swr, sie; /* < 0: absent */
} moxy_cc_t;

/* A delta-seconds value (RFC 9111 1.2.2) of n bytes at p; -1 when malformed. */
double moxy_cache_delta_seconds(const char *p, size_t n);

/* The directives of every field called name (nlen bytes) in hs, into cc. */
void moxy_cache_cc_parse(const moxy_headers_t *hs, const char *name, size_t nlen, moxy_cc_t *cc);

/* A response's directives (RFC 9213): those of the first of the targeted
 * fields (ntargeted names, e.g. "CDN-Cache-Control") it carries that is a
 * valid Structured Field Dictionary -- 1 --, else its Cache-Control's -- 0. */
int moxy_cache_response_cc(const moxy_headers_t *hs, char *const *targeted, int ntargeted, moxy_cc_t *cc);

/* h's value as an HTTP-date (IMF-fixdate, RFC 850, asctime): Unix time, or -1. */
double moxy_cache_date(const moxy_header_t *h);

/* The Age of a response with head hs (RFC 9111 5.1): the first value of
 * its first Age field, 0 when it has none or it is not a number. */
double moxy_cache_age(const moxy_headers_t *hs);

/* The default key of host and uri (ulen bytes, the path its first plen;
 * the path starts with '/'): "http://host/path?parameters sorted"
 * ("https://" when https: the two schemes never share an object), the host
 * in lower case with every byte that a host may not hold (RFC 3986 3.2.2:
 * '/', '?', '#', '%', '@', ...) percent-encoded, so that no two hosts and
 * targets share a key unless they differ only in the host's case or the
 * order of the query's parameters.  In pool; its length in *klen.  NULL
 * when out of memory. */
char *moxy_cache_build_key(moxy_pool_t *pool, int https, const char *host, const char *uri, size_t ulen,
                           size_t plen, uint32_t *klen);

/* What a Vary may ask for.  A response whose Vary names more distinct
 * fields, or whose names take more bytes (lower case, ", "-separated), is
 * not stored; a request whose values of the fields take more bytes is
 * neither served a variant nor stored. */
#define MOXY_CACHE_VARY_NAMES 32
#define MOXY_CACHE_VARY_BYTES 1024
#define MOXY_CACHE_VARY_VALUES_MAX 16384

/* The values in req of the fields named by vary (names separated by commas
 * and spaces), normalised ("\n" between fields, "," between repeats and list
 * members, trimmed), in pool; NULL when vary names more than
 * MOXY_CACHE_VARY_NAMES fields, the values take more than
 * MOXY_CACHE_VARY_VALUES_MAX bytes, or out of memory. */
char *moxy_cache_vary_values(moxy_pool_t *pool, const moxy_headers_t *req, const char *vary);

/* A response's Vary field names, lower case, each once (in any case), ", "-
 * separated, into *out (malloc'ed, the caller frees it; NULL without Vary),
 * or "*" for a Vary with "*" anywhere.  MOXY_OK; MOXY_DECLINED (*out NULL)
 * when they are more than MOXY_CACHE_VARY_NAMES or take more than
 * MOXY_CACHE_VARY_BYTES: not to be stored; MOXY_ERROR out of memory. */
int moxy_cache_vary_of(const moxy_headers_t *hs, char **out);

/* 1 for the statuses cacheable by default (heuristic freshness allowed). */
int moxy_cache_heuristic_status(int status);

/* The freshness lifetime in seconds of a response of status with head hs
 * (cc parsed from it; date its Date, or when it came); -1: none. */
double moxy_cache_lifetime(const moxy_headers_t *hs, int status, const moxy_cc_t *cc, double date);

/* 1 when the conditions in req (If-None-Match, else If-Modified-Since)
 * are satisfied by o: a 304 answers. */
int moxy_cache_not_modified(const moxy_headers_t *req, const moxy_cache_obj_t *o);

/* The single byte range req asks of o's body (len bytes): 1 with [*from,
 * *to]; 0 for the whole body (no Range, several, If-Range not matching);
 * -1 when unsatisfiable (416). */
int moxy_cache_byte_range(const moxy_headers_t *req, const moxy_cache_obj_t *o, uint64_t len, uint64_t *from,
                          uint64_t *to);

#endif
