/*
 * origin.h -- what the two halves of the proxy's origin side share:
 * http_upstream.c (pools, tries, connections, failures) and
 * origin_response.c (the response).  Not for other folders: http.h is the
 * proxy's interface.
 */
#ifndef MOXY_ORIGIN_H
#define MOXY_ORIGIN_H

#include "http/http.h"
#include "http/request.h"
#include "proxy/upstream.h"

/* The cache, as moxy_upstream_set_cache handed it over. */
extern const moxy_proxy_cache_t *moxy_origin_cache;

/* Keep u's memory across a call that may close it / let it go. */
void moxy_origin_hold(moxy_upconn_t *u);
void moxy_origin_release(moxy_upconn_t *u);

/* Stop reading u (its events stay set up). */
void moxy_origin_stop_read(moxy_upconn_t *u);

/* The origin failed u's request: another try when the failure came before
 * any response byte and the request may (retry), else the client gets
 * status (moxy_req_upstream_failed). */
void moxy_origin_fail(moxy_upconn_t *u, int status, const char *why, int retry);

/* r's try failed with status (why) before its response went on: start the
 * next one when r may, closing u (if any).  1 when it did. */
int moxy_origin_try_again(moxy_req_t *r, moxy_upconn_t *u, int status, const char *why);

/* The try's outcome (ok or not) to its peer's passive health. */
void moxy_origin_try_report(moxy_req_t *r, int ok);

/* The try lets go of its peer (its requests in flight). */
void moxy_origin_try_release(moxy_req_t *r);

/* The index in g of the pool with shared state state, or -1. */
int moxy_origin_pool_of_state(const moxy_wgen_t *g, const moxy_upstream_t *state);

/* Keep u idle in rt for its server (its read event armed with the idle
 * timeout): MOXY_OK, or MOXY_DECLINED when rt keeps enough (close u). */
int moxy_origin_idle_put(moxy_pool_rt_t *rt, moxy_upconn_t *u);

/* Run fn(u, what) for an event of u, holding u, its request (if any) and
 * the request's connection across it: any may end meanwhile. */
void moxy_origin_event(moxy_upconn_t *u, short what, void (*fn)(moxy_upconn_t *u, short what));

/* Go on with u's TLS handshake (its pool has tls; TCP is connected): when
 * done, u is connected and its request goes; a failure fails the try. */
void moxy_origin_tls_step(moxy_upconn_t *u);

/* A try's origin object, not connected: its buffers and response parser
 * (pool, server as moxy_upconn_t says), or NULL (out of memory). */
moxy_upconn_t *moxy_origin_upconn_new(moxy_worker_t *w, int pool, int server);

/* --- origin_h2.c: HTTP/2 origins (the pool's protocol = "h2") --- */

/* Start r's try on p, server r->server of its pool, as a stream of an
 * HTTP/2 connection to it: one that has room, else a new one (also for
 * r->fresh_conn).  r->up is the stream; its request goes once the
 * connection is ready.  MOXY_ERROR with *err: no connection could be
 * started (nothing changed). */
int moxy_origin_h2_try(moxy_req_t *r, moxy_peer_t *p, const char **err);

/* u's stream is let go (reset if still open); its connection idles or
 * closes once it carries no stream. */
void moxy_origin_h2_detach(moxy_upconn_t *u);

/* u->out has more of the request body (or it ended): its DATA go on. */
void moxy_origin_h2_send(moxy_upconn_t *u);

/* Read u's response on (after a pause). */
void moxy_origin_h2_resume(moxy_upconn_t *u);

/* The response, as moxy_h1_resp_head and moxy_h1_resp_body read it from
 * an HTTP/1 connection: MOXY_OK once the final head is in (its fields in
 * the parser's lists; MOXY_AGAIN before, u->eof set if the stream failed,
 * u->fail_why saying why); then *take bytes of u->in are body (their
 * window goes back to the origin), MOXY_OK once the body is whole,
 * MOXY_ERROR when the stream failed in it. */
int moxy_origin_h2_head(moxy_upconn_t *u);
int moxy_origin_h2_body(moxy_upconn_t *u, size_t *take);

/* A pool's HTTP/2 connections: set up for nservers servers; close the
 * idle ones (all: every one, its streams failing); close all and free;
 * move them all to another generation's pool (index pool of g). */
int moxy_origin_h2_init_pool(moxy_pool_rt_t *rt, int nservers);
void moxy_origin_h2_close_idle(moxy_pool_rt_t *rt, int nservers, int all);
void moxy_origin_h2_free_pool(moxy_pool_rt_t *rt, int nservers);
void moxy_origin_h2_move(moxy_pool_rt_t *from, moxy_pool_rt_t *to, moxy_wgen_t *g, int pool, int nservers);

/* origin_response.c: get u's parser ready for the response to u->req;
 * u's read event; go on with what u has read. */
void moxy_origin_response_start(moxy_upconn_t *u);
void moxy_origin_read_cb(evutil_socket_t fd, short what, void *arg);
void moxy_origin_process(moxy_upconn_t *u);

/* A first try of r to r->pool as it is, without on_upstream hooks: the
 * peer, on_upstream_request, the connection (cache.shard's fallback). */
void moxy_origin_try_pool(moxy_req_t *r);

/* --- origin_shard.c: cache.shard's tries to a key's owner --- */

/* After on_upstream chose r's pool: when the cache routed r to its key's
 * owner (r->shard_owner) and the owner is usable, this try goes there
 * (r->pool the shard pool, r->server the owner, counted in its requests in
 * flight): 1.  0: the try goes to r->pool's origin as usual (no owner; the
 * owner went down since the lookup: a fallback, noted; or a hook chose the
 * shard pool itself: cancelled). */
int moxy_origin_shard_begin(moxy_req_t *r);

/* r, routed to its key's owner, goes elsewhere by a hook's choice
 * (set_peer, or the shard pool as its origin pool): no longer sharded
 * (its response may be stored here; the access log's shard=none). */
void moxy_origin_shard_cancel(moxy_req_t *r);

/* The marks of a fill request on r's fields (the sender's server in the
 * pool, the key, the origin's pool, the secret), set, not added.
 * MOXY_OK, or MOXY_ERROR (out of memory). */
int moxy_origin_shard_mark(moxy_req_t *r);

/* The pool whose Host the request head of r's try carries: the origin's
 * for a try to the owner (what the origin would get), else uc. */
const moxy_upstream_conf_t *moxy_origin_shard_host_pool(const moxy_req_t *r, const moxy_upstream_conf_t *uc);

/* r's try to its owner failed before any response byte (u: its
 * connection, or NULL; why: for the log): the owner's passive health told,
 * the marks removed, r goes to its origin pool at once (a first try
 * there).  1 when it did; 0 when r cannot be sent again (a body streamed,
 * the client gone, a response started). */
int moxy_origin_shard_fallback(moxy_req_t *r, moxy_upconn_t *u, const char *why);

/* Note that r goes to the origin itself though a node owns its key (why:
 * for the log): its state, the access log's shard=fallback, the counter,
 * and a warning at most once a second per worker. */
void moxy_origin_shard_fell_back(moxy_req_t *r, const char *why);

#endif
