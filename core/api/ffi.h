/*
 * ffi.h -- the C functions Lua calls through LuaJIT's FFI (as lua-resty-core
 * does): the request pointer first, plain C types, an int status (MOXY_OK or
 * MOXY_ERROR / MOXY_DECLINED), results through out-parameters.  FFI calls are
 * compiled by the JIT; lua_CFunctions never are.
 *
 * Each block "BEGIN FFI <file>" ... "END FFI" lists what the ffi.cdef of that
 * Lua module declares: tools/check-ffi.lua (make lint, and a spec) compares
 * them.  Bump MOXY_FFI_ABI on any change.
 */
#ifndef MOXY_FFI_H
#define MOXY_FFI_H

#include <stddef.h>

#define MOXY_FFI_ABI 16

/* BEGIN FFI lua/moxy/txn.lua */
typedef struct moxy_req_s moxy_req_t;

/* The ABI version the Lua side must match. */
int moxy_ffi_abi_version(void);

/* A field of the request (MOXY_FFI_F_*): a pointer into request memory, valid
 * until the request ends.  MOXY_DECLINED when absent (e.g. no query). */
int moxy_ffi_req_field(moxy_req_t *r, int field, const char **out, size_t *len);

/* Value of the index-th (0-based) header called name, in the request
 * (which = 0) or response (which = 1) headers.  MOXY_DECLINED: none. */
int moxy_ffi_header_get(moxy_req_t *r, int which, const char *name, size_t nlen, int index,
                        const char **val, size_t *vlen);

/* Set (add = 0: replacing all of that name) or add (add = 1) a header.
 * MOXY_ERROR on an invalid name or value (CR, LF, NUL...). */
int moxy_ffi_header_set(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                        size_t vlen, int add);

/* Add the field name = value (nlen, vlen bytes; value a string when quoted,
 * else the text of a number or boolean) to the request's access-log line;
 * a name given again replaces its value.  MOXY_OK; MOXY_ERROR: a bad name
 * (1..64 of A-Z a-z 0-9 _) or out of memory. */
int moxy_ffi_log_field(moxy_req_t *r, const char *name, size_t nlen, const char *val, size_t vlen, int quoted);

/* Remove every header called name; returns how many were removed. */
int moxy_ffi_header_remove(moxy_req_t *r, int which, const char *name, size_t nlen);

/* The index-th header (0-based) of the list.  MOXY_DECLINED past the end. */
int moxy_ffi_header_at(moxy_req_t *r, int which, int index, const char **name, size_t *nlen,
                       const char **val, size_t *vlen);

/* Replace the request target with path (plen bytes, starting with '/') and,
 * when has_query, '?' and query (qlen bytes).  MOXY_ERROR on bytes that do
 * not belong in a request target (controls, space, '#', '?' in the path). */
int moxy_ffi_req_set_target(moxy_req_t *r, const char *path, size_t plen, const char *query,
                            size_t qlen, int has_query);

/* The response status (0 before there is one); with status > 0, first
 * change it (on_response): refused (returns the old one) for 1xx, 204 and
 * 304 either way, which would change whether the response has a body. */
int moxy_ffi_resp_status(moxy_req_t *r, int status);

/* Send the request to pool name; with has_key, key (klen bytes) is the hash
 * key of a balance = "hash" pool; with plen > 0, peer (the address of one
 * of its servers, as configured) is preferred while it is usable.
 * MOXY_DECLINED: no such pool (nothing changed); MOXY_ERROR: the pool is
 * picked but has no such peer. */
int moxy_ffi_upstream_pick(moxy_req_t *r, const char *name, size_t len, const char *key, size_t klen,
                           int has_key, const char *peer, size_t plen);

/* Answer the request with status and body (copied); the response headers
 * set so far go with it.  MOXY_ERROR: bad status. */
int moxy_ffi_respond(moxy_req_t *r, int status, const char *body, size_t len);

/* A number about the request (MOXY_FFI_N_*); -1 for an unknown one. */
double moxy_ffi_req_number(moxy_req_t *r, int which);

/* The real client's port (socket = 0; -1: the trusted proxy's header gave
 * none), or the TCP peer's (socket = 1). */
int moxy_ffi_client_port(moxy_req_t *r, int socket);

/* Send this try of r to host (an IP address, len bytes) and port instead
 * of a pool's server.  MOXY_ERROR: not an IP address. */
int moxy_ffi_upstream_set_peer(moxy_req_t *r, const char *host, size_t len, int port);

/* txn:read_body: buffer r's body, up to max bytes (0: limits.body_bytes).
 * MOXY_OK: moxy_ffi_req_body has it; MOXY_AGAIN: the running hook must
 * wait (runtime.wait), then call moxy_ffi_req_body; MOXY_ERROR: too large or
 * malformed (MOXY_FFI_F_BODY_ERROR says why; the request is answered so
 * unless a hook answers); MOXY_DECLINED: already streaming to the origin. */
int moxy_ffi_req_read_body(moxy_req_t *r, double max);

/* The buffered body (valid until the request ends).  MOXY_ERROR when it is
 * not (or not all) buffered. */
int moxy_ffi_req_body(moxy_req_t *r, const char **out, size_t *len);

/* Set (value 1) or clear (0) a flag of r (MOXY_FFI_FLAG_*).  MOXY_ERROR for
 * an unknown flag. */
int moxy_ffi_req_flag(moxy_req_t *r, int flag, int value);

/* Write msg (len bytes) to the error log at level (MOXY_LOG_*), with r's id
 * when r is not NULL.  MOXY_DECLINED when the level is not logged. */
int moxy_ffi_log(moxy_req_t *r, int level, const char *msg, size_t len);
/* txn.cache: op 1 bypass (no lookup, no store: before the lookup), 2
 * no_store, 3 store for ttl seconds (stale: seconds it may be served stale
 * after, < 0 none; on_response).  MOXY_OK (also without a cache: nothing
 * to do); MOXY_DECLINED: not in a phase where it can act. */
int moxy_ffi_cache_op(moxy_req_t *r, int op, double ttl, double stale);

/* txn.cache's fields: the key (NULL before the lookup), the status
 * (MOXY_CACHE_*), the age of the object served (-1: none). */
int moxy_ffi_cache_info(moxy_req_t *r, const char **key, size_t *klen, double *age);

/* txn.cache.key = key (len bytes), in on_request and on_cache_key.
 * MOXY_OK (without a cache: ignored); MOXY_DECLINED: too late;
 * MOXY_ERROR: out of memory. */
int moxy_ffi_cache_set_key(moxy_req_t *r, const char *key, size_t len);
/* END FFI */

/* BEGIN FFI lua/moxy/cache.lua */
/* moxy.cache.purge(key) / purge_prefix(prefix): objects dropped, or -1
 * when there is no cache. */
int moxy_ffi_cache_purge(const char *key, size_t len, int prefix);
/* END FFI */

/* BEGIN FFI lua/moxy/runtime.lua */
/* Park the running hook (or timer callback) for secs: it yields next, and
 * is resumed when the time is up.  MOXY_DECLINED outside hooks. */
int moxy_ffi_sleep(double secs);

/* Call runtime.timers[id] after delay seconds, then every interval seconds
 * (interval > 0) until cancelled.  MOXY_DECLINED: no event loop on this
 * thread (moxy -t, init); MOXY_ERROR: too many timers. */
int moxy_ffi_timer_add(double delay, double interval, int id);

/* Cancel timer id (a running callback finishes).  MOXY_DECLINED: unknown. */
int moxy_ffi_timer_cancel(int id);

/* moxy.watch: with watch = true, a change to the file at path (len bytes,
 * relative to the configuration's directory) reloads.  Recorded while the
 * main thread loads a generation's scripts (their top level and init
 * hooks); a no-op in workers.  MOXY_ERROR: out of memory. */
int moxy_ffi_watch(const char *path, size_t len);
/* END FFI */

/* Field numbers of moxy_ffi_req_field (also in txn.lua). */
enum {
    MOXY_FFI_F_METHOD = 0,
    MOXY_FFI_F_URI,
    MOXY_FFI_F_PATH,
    MOXY_FFI_F_QUERY,
    MOXY_FFI_F_HOST,
    MOXY_FFI_F_CLIENT_IP,
    MOXY_FFI_F_ID,
    MOXY_FFI_F_LISTENER,
    MOXY_FFI_F_VERSION,
    MOXY_FFI_F_POOL,
    MOXY_FFI_F_ERROR,
    MOXY_FFI_F_PEER,
    MOXY_FFI_F_BODY_ERROR,
    MOXY_FFI_F_SOCKET_IP,  /* the TCP peer (CLIENT_IP: the real client) */
};

/* Numbers of moxy_ffi_req_number (-1: not known yet). */
enum {
    MOXY_FFI_N_TRIES = 0,      /* origin connections tried for this request */
    MOXY_FFI_N_STARTED,        /* when the request's first byte came, epoch seconds */
    MOXY_FFI_N_UP_STATUS,      /* the origin's status (before on_response changed it) */
    MOXY_FFI_N_CONNECT_TIME,   /* seconds to connect to the origin (0: a kept-alive connection) */
    MOXY_FFI_N_HEADER_TIME,    /* seconds from the try's start to the origin's response head */
    MOXY_FFI_N_RESPONSE_TIME,  /* seconds from the try's start to the origin's last byte */
    MOXY_FFI_N_DURATION,       /* seconds from the request's first byte until now */
    MOXY_FFI_N_BYTES_SENT,     /* response body bytes queued for the client */
    MOXY_FFI_N_STATUS,         /* the status sent to the client */
};

/* Flags of moxy_ffi_req_flag. */
enum {
    MOXY_FFI_FLAG_RETRYABLE = 0, /* may go to another peer after a failure */
    MOXY_FFI_FLAG_NO_FILTER,     /* the response body skips on_body */
};

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

/* BEGIN FFI lua/moxy/http.lua */
/* Start an HTTP/1.1 call for the running hook or timer callback, which then
 * waits (runtime.wait) for its result: a table { status, headers, body }, or
 * nil and an error.  host (hlen bytes: an IP literal without brackets, or a
 * name) and port say where to connect; req (rlen bytes, copied) is the whole
 * request, head and body; head: a HEAD request (no body comes back);
 * keepalive: the connection may be kept and reused; timeout: seconds for
 * the whole call; connect_timeout: seconds per connect (<= 0: the
 * configuration's timeouts.connect); max_body: bytes the response body may
 * have.  MOXY_OK: started; MOXY_DECLINED: no hook or timer callback runs;
 * MOXY_ERROR: failed at once, the reason in err (errlen bytes, NUL-ended). */
int moxy_ffi_http_start(const char *host, size_t hlen, int port, const char *req, size_t rlen,
                        int head, int keepalive, double timeout, double connect_timeout,
                        size_t max_body, char *err, size_t errlen);
/* END FFI */

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

/* BEGIN FFI lua/moxy/geo.lua */
/* A value of txn.client.geo (moxy_ffi_geo_client). */
enum { MOXY_FFI_GEO_NONE = 0, MOXY_FFI_GEO_STRING = 1, MOXY_FFI_GEO_NUMBER = 2, MOXY_FFI_GEO_BOOLEAN = 3 };
typedef struct {
    int type;      /* MOXY_FFI_GEO_* */
    const char *s; /* STRING: len bytes, valid until the running Lua code yields or returns */
    size_t len;
    double n;      /* NUMBER; BOOLEAN: 0 or 1 */
} moxy_ffi_geo_value_t;

/* One entry of a record, in the order of libmaxminddb's entry data list
 * (a map: its size, then key, value, key, value...; an array: its size,
 * then its values). */
typedef struct {
    int type;                  /* libmaxminddb's MMDB_DATA_TYPE_* */
    unsigned size;             /* map: pairs; array: values */
    const char *s;             /* string, bytes: len bytes (valid as above) */
    size_t len;
    double n;                  /* double, float, uint16, uint32, int32, boolean */
    unsigned long long u, u_hi; /* uint64: u; uint128: u_hi, u */
} moxy_ffi_geo_item_t;

/* Field `field` (lua/moxy/geo.lua's FIELDS order) of the client's record:
 * from the first database, in name order, that has it.  The lookups are
 * made once per database and request.  MOXY_OK; MOXY_DECLINED: no
 * database knows it (or no database, or the address is not an IP);
 * MOXY_ERROR: out of memory. */
int moxy_ffi_geo_client(moxy_req_t *r, int field, moxy_ffi_geo_value_t *out);

/* Field `field` of any address ip (iplen bytes), as moxy_ffi_geo_client
 * (no cache).  MOXY_OK; MOXY_DECLINED: unknown, or not an IP; MOXY_ERROR:
 * out of memory. */
int moxy_ffi_geo_field(const char *ip, size_t iplen, int field, moxy_ffi_geo_value_t *out);

/* The number of databases, and the name of database i (NULL: none). */
int moxy_ffi_geo_count(void);
const char *moxy_ffi_geo_name(int i);

/* Look ip (iplen bytes, IPv4 or IPv6) up in database db: its record as at
 * most max items (*n of them).  MOXY_OK; MOXY_DECLINED: not found;
 * MOXY_ERROR: the reason in err ("invalid address", "database error: ...",
 * "record too large ..."). */
int moxy_ffi_geo_lookup(const char *ip, size_t iplen, int db, moxy_ffi_geo_item_t *items, int max, int *n,
                        char *err, size_t errlen);
/* END FFI */

/* BEGIN FFI lua/moxy/test.lua */
/* `moxy test` (core/api/test_txn.c): a request detached from any socket, whose
 * phases lua/moxy/test.lua drives as http_client.c and http_upstream.c do.
 * A moxy_test_t owns a worker of its own (pools, a listener "test", an
 * event_base that never runs), a client with fd -1 and its one request. */
typedef struct moxy_test_s moxy_test_t;

/* A test worker whose configuration has npools pools called pools[i], each
 * with one server whose "ip:port" text is peers[i] (strings copied), the
 * pool default_pool (index, or -1) as default_upstream, tries as every
 * pool's tries, and config.c's default limits and timeouts.  NULL: out of
 * memory.  The caller frees it with moxy_ffi_test_free. */
moxy_test_t *moxy_ffi_test_new(const char **pools, const char **peers, int npools, int default_pool,
                               int tries);

/* Free t, its request and everything the request holds. */
void moxy_ffi_test_free(moxy_test_t *t);

/* t's request (one per t): method (one llhttp parses), uri (path and
 * query, as on the request line), HTTP/1.minor, from client ip:port.  NULL
 * with the reason in err (errlen bytes, NUL-ended) where the parser would
 * refuse it.  Owned by t. */
moxy_req_t *moxy_ffi_test_req(moxy_test_t *t, const char *method, size_t mlen, const char *uri,
                              size_t ulen, int minor, const char *ip, size_t iplen, int port,
                              char *err, size_t errlen);

/* Add a header to r's request (which = 0) or response (which = 1) headers,
 * as the parsers do (value trimmed).  MOXY_ERROR: invalid name or value;
 * MOXY_DECLINED: over limits.headers. */
int moxy_ffi_test_header(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                         size_t vlen);

/* r's head is complete: the parser's checks, Host, keep-alive, the request
 * id, X-Forwarded-* and Via, and (has_body) the body's blen bytes, already
 * buffered as after txn:read_body.  MOXY_ERROR with the reason in err. */
int moxy_ffi_test_req_start(moxy_req_t *r, const char *body, size_t blen, int has_body, char *err,
                            size_t errlen);

/* A try of r starts (moxy_upstream_try, up to the on_upstream hooks). */
void moxy_ffi_test_try_start(moxy_req_t *r);

/* The on_upstream hooks ran: the try's peer.  0: a server of r's pool (the
 * listener's or default_upstream when no hook picked one); 1: set_peer's
 * address; MOXY_DECLINED: no pool (502). */
int moxy_ffi_test_try_peer(moxy_req_t *r);

/* What the origin receives for this try: the request head moxy writes
 * (*head, *hlen) and the body (*body, *blen); in request memory.  MOXY_OK,
 * or MOXY_ERROR (out of memory). */
int moxy_ffi_test_origin_request(moxy_req_t *r, const char **head, size_t *hlen, const char **body,
                                 size_t *blen);

/* The try failed for why (len bytes, copied): the tries r may make when it
 * goes on to another try (try_again's rules; upstream_hooks: there are
 * on_upstream hooks), 0 when it fails. */
int moxy_ffi_test_try_failed(moxy_req_t *r, const char *why, size_t len, int upstream_hooks);

/* The origin answered status (its headers added with moxy_ffi_test_header)
 * with body_len bytes of body: 1 when the response has a body, 0 when not
 * (HEAD, 204, 304). */
int moxy_ffi_test_response(moxy_req_t *r, int status, size_t body_len);

/* The on_response hooks let the response go: its head is out.  1 when its
 * body goes through on_body (body_hooks: there are on_body hooks). */
int moxy_ffi_test_resp_start(moxy_req_t *r, int body_hooks);

/* n bytes of response body went to the client; done: the last of them. */
void moxy_ffi_test_body_sent(moxy_req_t *r, size_t n, int done);

/* r failed with status for why (len bytes, copied), before its on_error
 * hooks (moxy_req_fail); status 0: the response was cut, only why is kept. */
void moxy_ffi_test_fail(moxy_req_t *r, int status, const char *why, size_t len);

/* 1 when r is answered by a hook (txn:respond) or by moxy. */
int moxy_ffi_test_answered(moxy_req_t *r);

/* moxy's error page for status (HTML, or JSON for Accept: ...json) as r's
 * answer. */
void moxy_ffi_test_error_page(moxy_req_t *r, int status);

/* r's local answer goes out (moxy_resp_local: Date, Content-Type added):
 * *body, *len get what the client receives of its body. */
void moxy_ffi_test_local(moxy_req_t *r, const char **body, size_t *len);

/* Make the n databases names[i] at paths[i] the process's GeoIP databases
 * (t.run's opts.geoip; n = 0: none).  MOXY_OK, or MOXY_ERROR with
 * "geoip.NAME: why" in err. */
int moxy_ffi_test_geoip(const char **names, const char **paths, int n, char *err, size_t errlen);

/* The hooks of phase (MOXY_PHASE_*) run for r now (what lua_bridge.c's
 * task_start notes, for the calls that depend on the phase). */
void moxy_ffi_test_phase(moxy_req_t *r, int phase);

/* t.run's opts.cache, step by step as http_cache.c would go (there is no
 * store: every lookup misses).  step 0: test mode on or off (on:
 * txn.cache's calls act as with a cache; r unused); 1: r's key made: 1
 * when on_cache_key runs for r; 2: the lookup (a miss, or bypass); 3: the
 * origin's head is in, before on_response (Cache-Status added, the head
 * kept as stored); 4: after on_response, whether the response would be
 * stored, bodies up to max_object: 1 with *ttl, or 0 with *why. */
int moxy_ffi_test_cache(moxy_req_t *r, int step, int on, double max_object, double *ttl, const char **why);
/* END FFI */

#endif
