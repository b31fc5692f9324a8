/*
 * http.h -- the HTTP/1.x proxy: client side (http_client.c), origin side
 * (http_upstream.c), responses moxy writes itself (http_response.c) and the
 * access log (access_log.c).  Types are in http-t.h.
 */
#ifndef MOXY_HTTP_H
#define MOXY_HTTP_H

#include "base/config.h"
#include "http/http-t.h"

struct evbuffer;

/* Room for any of moxy's error pages (moxy_resp_error_body). */
#define MOXY_ERROR_PAGE_MAX 512

/* Prepare the request parser's settings; once, on the main thread,
 * before any worker starts. */
void moxy_http_init(void);

/* --- requests moxy makes itself (background.c) --- */

/* A request moxy makes itself (a cache refresh in the background;
 * background.c) on from's worker and generation: a GET of from's URI with
 * from's headers as its hooks left them, less the client's conditions and
 * Range, to from's pool or peer.  It has no connection (request.h's
 * moxy_req_detach): what it would send a client is dropped.  It runs the
 * origin-side phases and on_log (its txn.ctx is from's), is logged, and
 * ends on its own.  Not started: the caller sets it up, then calls
 * moxy_upstream_try.  NULL: out of memory. */
moxy_req_t *moxy_req_background(moxy_req_t *from);


/* txn:read_body: buffer r's body (up to max bytes, 0: limits.body_bytes)
 * for the running hook.  MOXY_OK: r->body_buf holds it; MOXY_AGAIN: the
 * hook waits for it (moxy_lua_current_task); MOXY_ERROR: too large or
 * malformed (r->body_status, r->body_error: answered so when the hooks end
 * without an answer); MOXY_DECLINED: the body already streams to the
 * origin, or r has no connection (r->body_error says which).  The checks
 * every protocol shares are request.c's; the reading is the stream's. */
int moxy_req_read_body(moxy_req_t *r, uint64_t max);

/* Before r's head goes to an origin: check the framing of the chunked body
 * bytes that came with the head (or while its hooks ran), so that a request
 * whose body is already known bad is answered 400 without contacting an
 * origin.  MOXY_OK: nothing wrong so far (or nothing to check); MOXY_ERROR:
 * r was answered 400 and its connection closes after. */
int moxy_req_body_check(moxy_req_t *r);

/* Give r a new random request id (also set as its X-Request-Id header). */
void moxy_req_make_id(moxy_req_t *r);

/* Set r's request id when its head is complete: the client's X-Request-Id
 * when it is a valid one (1 to 128 of A-Z a-z 0-9 - _ . :), else a new one
 * (moxy_req_make_id). */
void moxy_req_set_id(moxy_req_t *r);

/* Replace the X-Forwarded-For/-Proto/-Host r came with by moxy's (For: the
 * values that came in, joined, then the client's address; Host: r->host, if
 * any) and add Via; in request memory.  MOXY_OK, or MOXY_ERROR (out of
 * memory). */
int moxy_req_add_forwarding(moxy_req_t *r);

/* The real client of r (realip.c; the connection's client when no trusted
 * proxy said otherwise) and its port (-1: unknown). */
static inline const char *moxy_req_client_ip(const moxy_req_t *r)
{
    return r->client_ip ? r->client_ip : r->addr->ip;
}

static inline int moxy_req_client_port(const moxy_req_t *r)
{
    return r->client_ip ? r->client_port : r->addr->port;
}

/* 1 when the protocols an origin's 101 to r switches to (the Upgrade field
 * of resp) are named and all allowed by r's listener (its `upgrade` list). */
int moxy_req_upgrade_allowed(const moxy_req_t *r, const moxy_headers_t *resp);

/* Microseconds of the precise monotonic clock from r's first byte to its
 * end (ended_us), or to now while it runs; never negative. */
static inline long long moxy_req_elapsed_us(const moxy_req_t *r)
{
    long long us = (r->ended_us ? r->ended_us : moxy_mono_us()) - r->started_us;
    return us > 0 ? us : 0;
}


/* --- origin side (http_upstream.c) --- */

/* Start a try of r: on_upstream hooks, a peer of r->pool (or set_peer's),
 * on_upstream_request hooks, then an idle keep-alive connection or a new
 * one.  A try that fails before any response byte starts the next one when
 * r may retry; otherwise the client gets the answer. */
void moxy_upstream_try(moxy_req_t *r);

/* The bookkeeping a try of r starts with (moxy_upstream_try, before the
 * on_upstream hooks): count it, forget the last try's server and times, and
 * set_peer's address after the first try. */
void moxy_upstream_try_begin(moxy_req_t *r);

/* What the proxy asks of the cache while an origin answers (the functions
 * of the same names, moxy_cache_*, below): handed over once at start-up by
 * ops/main.c (moxy_upstream_set_cache(&moxy_cache_for_proxy)), so that the
 * proxy never calls up into cache/. */
typedef struct {
    int (*upstream_head)(moxy_req_t *r);
    void (*answer_kept)(moxy_req_t *r);
    int (*stale_on_error)(moxy_req_t *r, int status);
    void (*response_head)(moxy_req_t *r);
    int (*response_decide)(moxy_req_t *r);
} moxy_proxy_cache_t;

void moxy_upstream_set_cache(const moxy_proxy_cache_t *cache);

/* The cache's moxy_proxy_cache_t. */
extern const moxy_proxy_cache_t moxy_cache_for_proxy;

/* The cache's per-worker part (registered by ops/modules.c): the jobs that
 * make compressed copies of stored objects (cache/cache_variant.c). */
extern struct moxy_module_s moxy_cache_module;

/* The origin failed (status 502/504, why for the log): a stale object the
 * cache may serve (stale-if-error), else an error page if nothing was sent
 * yet, else the client connection is cut (HTTP/2: the stream reset) and
 * counted in the pool's moxy_pool_responses_cut_total. */
void moxy_req_upstream_failed(moxy_req_t *r, int status, const char *why);

/* Queue on out the request head moxy sends to r's origin -- request line,
 * Host (uc->host, else the client's, else the peer's address), r's headers,
 * the body's framing -- then the body a hook buffered, if any.  uc: the
 * try's pool, NULL for a set_peer address.  MOXY_OK, or MOXY_ERROR (out of
 * memory). */
int moxy_upstream_write_head(const moxy_req_t *r, const moxy_upstream_conf_t *uc,
                             struct evbuffer *out);

/* A try of r failed before any response byte: whether r may go on to
 * another one (idempotent method, tries left, no response head sent, no
 * body streamed that could not be sent again, and another peer to go to: a
 * second server in its pool, or upstream_hooks, on_upstream hooks that may
 * pick one).  The number of tries r may make, or 0.  Logs and changes
 * nothing. */
int moxy_upstream_may_retry(const moxy_req_t *r, int upstream_hooks);

/* r ends: what its try still holds is let go. */
void moxy_upstream_req_free(moxy_req_t *r);

/* The client drained below the low watermark: read more of the response. */
void moxy_upstream_resume_read(moxy_upconn_t *u);

/* Stop reading the client's body until the origin catches up: 1 when u's
 * output is above the high watermark. */
int moxy_upstream_backlogged(const moxy_upconn_t *u);

/* Write what u->out holds. */
void moxy_upstream_send(moxy_upconn_t *u);

/* Close an origin connection, detached from its request. */
void moxy_upconn_close(moxy_upconn_t *u);

/* Close the worker's idle origin connections (drain). */
void moxy_upstream_close_idle(moxy_worker_t *w);

/* Set up g's pools (g->conf->upstreams) / free them (idle connections closed). */
int moxy_upstream_init_wgen(moxy_wgen_t *g);
void moxy_upstream_free_wgen(moxy_wgen_t *g);

/* The worker moves from generation old to g: idle connections of a pool g
 * kept unchanged (the same shared state) move to g's pool; the others close. */
void moxy_upstream_switch_wgen(moxy_wgen_t *old, moxy_wgen_t *g);

/* --- the HTTP cache (http_cache.c) --- */

/* After on_request: look r up.  MOXY_DONE: r is answered from the cache
 * (or refused: only-if-cached); MOXY_DECLINED: go to the origin. */
/* The content handler (request.h): a request's answer from the cache, or
 * from the origin (moxy_upstream_try) when the cache has none. */
void moxy_cache_content(moxy_req_t *r);

int moxy_cache_request(moxy_req_t *r);

/* The early check (request.h's moxy_req_set_early_check) of cache.shard
 * (cache_shard.c): 1 when r is a fill request of a peer node (its marks
 * believed: the pool's address, the secret), which skips on_request and
 * every hook but on_log, under the key and toward the pool its marks name;
 * -1 when r was answered (421: its pool is not one of this node's); 0
 * otherwise, the marks removed from r's fields if it had any. */
int moxy_cache_shard_check(moxy_req_t *r);

/* The on_response hooks of a hit are done (rc as moxy_lua_run): write it. */
void moxy_cache_after_response_hooks(moxy_req_t *r, int rc);

/* The origin's response head is in (before on_response): decide whether
 * it is stored, start its object; an unsafe method's success invalidates. */
void moxy_cache_response_head(moxy_req_t *r);

/* After on_response (whose txn.cache calls count): store the origin's
 * response or not; its object starts filling.  MOXY_OK; MOXY_DONE for a
 * background request (moxy_req_background) whose response is not stored:
 * nobody wants its body, the caller drops it. */
int moxy_cache_response_decide(moxy_req_t *r);

/* The origin's head is in, before anything else looks at it: a 304 to a
 * revalidation, or a 5xx within stale-if-error, is answered from the
 * stored object (MOXY_DONE: the origin's response is the caller's to
 * finish or close); MOXY_DECLINED: go on. */
int moxy_cache_upstream_head(moxy_req_t *r);

/* After MOXY_DONE from moxy_cache_upstream_head, the origin's connection
 * let go: answer from the stored object. */
void moxy_cache_answer_kept(moxy_req_t *r);

/* The origin failed (status: what the client would get): answer with the
 * stale object r kept when stale-if-error allows.  1 when it did. */
int moxy_cache_stale_on_error(moxy_req_t *r, int status);

/* r ends: drop its references (an unfinished object is not stored). */
void moxy_cache_req_free(moxy_req_t *r);

/* moxy.test (core/api/test_txn.c) drives the cache's steps of a request
 * without a store: test mode on (txn.cache's calls act as with a cache)
 * or off; r's key as the lookup makes it (1: on_cache_key runs; 0: r is
 * not looked up); r looked up (a miss: there is no store, or bypass);
 * after on_response, whether the response would be stored: NULL with its
 * freshness lifetime in *ttl, or why not. */
void moxy_cache_test_mode(int on);
int moxy_cache_test_key(moxy_req_t *r);
void moxy_cache_test_lookup(moxy_req_t *r);
const char *moxy_cache_test_verdict(moxy_req_t *r, size_t max_object, double *ttl);


/* --- responses moxy gives itself (http_response.c) --- */

/* 1 when r's response carries a body (not for HEAD, 1xx, 204, 304). */
static inline int moxy_resp_has_body(const moxy_req_t *r)
{
    return !(r->method == HTTP_HEAD || r->status == 204 || r->status == 304 || r->status < 200);
}

/* Answer r with status, body and r->resp_headers (set by a hook or empty).
 * Marks r done once queued. */
void moxy_resp_local(moxy_req_t *r, int status, const char *body, size_t len);

/* The part of moxy_resp_local that writes nothing: r becomes a local answer
 * of status with a len-byte body, and gets the Date and Content-Type
 * (text/plain, when len > 0) headers its r->resp_headers lack. */
void moxy_resp_local_prepare(moxy_req_t *r, int status, size_t len);

/* Answer r with a small error page (HTML, or JSON when the client accepts
 * it), logging why at level warn. */
void moxy_resp_error(moxy_req_t *r, int status, const char *why);

/* moxy's error page for status (HTML, or JSON when the client accepts it):
 * sets r->resp_headers to the page's (Content-Type, Cache-Control), writes
 * the body into buf (size > 0 bytes; MOXY_ERROR_PAGE_MAX holds any page)
 * and returns its length.  Answers nothing (moxy_resp_error does). */
size_t moxy_resp_error_body(moxy_req_t *r, int status, char *buf, size_t size);

/* The request failed after it was accepted (a 5xx: script error, origin
 * refused, timed out...): log why, then let the on_error hooks answer, or
 * answer with moxy's error page. */
void moxy_req_fail(moxy_req_t *r, int status, const char *why);

/* The on_error hooks of r that yielded are done (rc as moxy_lua_run). */
void moxy_req_error_hooks_done(moxy_req_t *r, int rc);

/* Standard reason phrase of a status code. */
const char *moxy_status_reason(int status);

/* --- access log (access_log.c) --- */

/* Append r's line to the worker's access-log buffer. */
void moxy_access_log(moxy_req_t *r);

/* The cached Date header value of the current second, "Fri, 27 Nov 2026 ...". */
const char *moxy_http_date(moxy_worker_t *w, size_t *len);

/* The pools' part in a worker's life (lifecycle.h): made and freed with
 * each generation, idle connections carried over or closed on a switch,
 * closed when the worker drains. */
extern struct moxy_module_s moxy_upstream_module;

#endif
