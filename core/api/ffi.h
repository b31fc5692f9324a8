/*
 * ffi.h -- the C functions Lua calls through LuaJIT's FFI (as lua-resty-core
 * does): the request pointer first, plain C types, an int status (MOXY_OK or
 * MOXY_ERROR / MOXY_DECLINED), results through out-parameters.  FFI calls are
 * compiled by the JIT; lua_CFunctions never are.
 *
 * Each block "BEGIN FFI <file>" ... "END FFI" lists what the ffi.cdef of that
 * Lua module declares: tools/check-ffi.lua (make lint, and a spec) compares
 * them.  Bump MOXY_FFI_ABI on any change.  The blocks of modules that live
 * below api/ are in their own headers, so that nothing below includes this
 * one: lua/moxy/runtime.lua in http/lua_bridge.h, shared.lua in
 * base/shared_dict.h, http.lua in proxy/http_fetch.h, upstream.lua in
 * proxy/upstream.h.
 */
#ifndef MOXY_FFI_H
#define MOXY_FFI_H

#include <stddef.h>

#define MOXY_FFI_ABI 26

/* BEGIN FFI lua/moxy/txn.lua */
typedef struct moxy_req_s moxy_req_t;

/* The ABI version the Lua side must match. */
int moxy_ffi_abi_version(void);

/* A field of the request (MOXY_FFI_F_*): a pointer into request memory, valid
 * until the request ends.  MOXY_DECLINED when absent (e.g. no query). */
int moxy_ffi_req_field(moxy_req_t *r, int field, const char **out, size_t *len);

/* What the TLS connection of a request negotiated (txn.client.tls); the
 * strings are valid until the request ends, NULL when absent. */
typedef struct {
    const char *sni, *version, *cipher, *alpn;
    int resumed;
    int has_cert, verified; /* mutual TLS: a client certificate came; it verified */
    const char *subject, *issuer, *serial, *fingerprint;
    double not_after;
    const char *ja4; /* the client hello's JA4 fingerprint */
} moxy_ffi_tls_t;

/* r's TLS facts into *out: MOXY_OK, or MOXY_DECLINED when r did not come
 * over TLS. */
int moxy_ffi_req_tls(moxy_req_t *r, moxy_ffi_tls_t *out);

/* Value of the index-th (0-based) header called name, in the request
 * (which = 0) or response (which = 1) headers.  MOXY_DECLINED: none. */
int moxy_ffi_header_get(moxy_req_t *r, int which, const char *name, size_t nlen, int index,
                        const char **val, size_t *vlen);

/* Set (add = 0: replacing all of that name) or add (add = 1) a header.
 * MOXY_ERROR on an invalid name or value (CR, LF, NUL...). */
int moxy_ffi_header_set(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                        size_t vlen, int add);

/* When r ends (whatever way: answered, failed, the client gone), add by
 * to key's number in the shared dict d (a moxy_shdict_t): what
 * moxy.ratelimit's concurrency limits use to give back a request's place.
 * MOXY_ERROR: out of memory (nothing is deferred). */
int moxy_ffi_req_defer_incr(moxy_req_t *r, void *d, const char *key, size_t klen, double by);

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

/* txn:read_body{decode = true}: the buffered body decoded
 * (moxy_compress_decode_body, max its size limit or 0).  MOXY_OK, or
 * MOXY_ERROR with the body's error set. */
int moxy_ffi_req_body_decode(moxy_req_t *r, double max);

/* txn.resp:compress: want 1 compress (with encoding 1 gzip, 2 br, 3 zstd,
 * or 0: the client's choice; level 0: the configured one), -1 leave the
 * body as the origin sent it (no compression, no decoding), 0 as
 * configured.  MOXY_DECLINED once the response's head is decided. */
int moxy_ffi_resp_compress(moxy_req_t *r, int want, int encoding, int level);

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
    MOXY_FFI_F_SCHEME,     /* "http" or "https" */
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

/* t's configuration's mask (t.run's opts.mask, or config.lua's default):
 * the n field names (any case) removed from origins' heads, moxy's Server
 * (NULL: none) and its name in Via (NULL: no Via); strings copied.  Call it
 * before moxy_ffi_test_req.  MOXY_OK, or MOXY_ERROR (out of memory). */
int moxy_ffi_test_mask(moxy_test_t *t, const char **names, int n, const char *server, const char *via);

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

/* The origin's head of r goes on to on_response: masked (http/mask.h). */
void moxy_ffi_test_masked(moxy_req_t *r);

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
