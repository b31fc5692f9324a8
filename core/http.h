/*
 * http.h -- the HTTP/1.x proxy: client side (http_client.c), origin side
 * (http_upstream.c), responses moxy writes itself (http_response.c) and the
 * access log (access_log.c).  Types are in http-t.h.
 */
#ifndef MOXY_HTTP_H
#define MOXY_HTTP_H

#include "http-t.h"

/* Prepare the parser settings of both sides; once, on the main thread,
 * before any worker starts. */
void moxy_http_init(void);
void moxy_upstream_http_init(void);

/* --- client side (http_client.c) --- */

/* Take over an accepted, non-blocking socket fd from listener listen_index. */
void moxy_client_accept(moxy_worker_t *w, int fd, const struct sockaddr *sa, int listen_index);

/* Keep c's memory valid across calls that may close it (an event callback
 * holds its client); release frees it if it was closed meanwhile.  After any
 * call that may close c, check c->dead. */
void moxy_client_hold(moxy_client_t *c);
void moxy_client_release(moxy_client_t *c);

/* Close now: the request (if any) is logged as aborted, its origin connection closed. */
void moxy_client_close(moxy_client_t *c);

/* Abort the on_log hooks of requests detached from their connection, and
 * log them (the worker stops). */
void moxy_client_end_detached(moxy_worker_t *w);

/* Drain (QUIT): close if idle, else close after the current response. */
void moxy_client_drain(moxy_client_t *c);

/* Write what c->out holds, as much as the socket takes; arms the write event
 * for the rest.  May close c (write error): callers must not touch c after,
 * unless it returns MOXY_OK. */
int moxy_client_send(moxy_client_t *c);

/* The origin connection drained its output below the low watermark: read
 * more of the request body. */
void moxy_client_resume_read(moxy_client_t *c);

/* The whole response of r is queued for the client. */
void moxy_req_response_done(moxy_req_t *r);

/* The origin failed (status 502/504, why for the log): answer with an error
 * page if nothing was sent yet, else cut the client connection. */
void moxy_req_upstream_failed(moxy_req_t *r, int status, const char *why);

/* The hooks of r that yielded are done (rc as moxy_lua_on_request returns):
 * carry on with the request. */
void moxy_req_hooks_done(moxy_req_t *r, int rc);

/* txn:read_body: buffer r's body (up to max bytes, 0: limits.body_bytes)
 * for the running hook.  MOXY_OK: r->body_buf holds it; MOXY_AGAIN: the
 * hook waits for it (moxy_lua_current_task); MOXY_ERROR: too large or
 * malformed (r->body_status, r->body_error: answered so when the hooks end
 * without an answer); MOXY_DECLINED: the body already streams to the
 * origin. */
int moxy_req_read_body(moxy_req_t *r, uint64_t max);

/* Give r a new random request id (also set as its X-Request-Id header). */
void moxy_req_make_id(moxy_req_t *r);

/* Switch the client connection to a two-way tunnel with r's origin connection. */
void moxy_client_tunnel(moxy_client_t *c);

/* --- origin side (http_upstream.c) --- */

/* Start a try of r: on_upstream hooks, a peer of r->pool (or set_peer's),
 * on_upstream_request hooks, then an idle keep-alive connection or a new
 * one.  A try that fails before any response byte starts the next one when
 * r may retry; otherwise the client gets the answer. */
void moxy_upstream_try(moxy_req_t *r);

/* Hooks of r that yielded in an origin-side phase (on_upstream,
 * on_upstream_request, on_response, on_body) are done (rc as moxy_lua_run
 * returns): go on with the try or the response. */
void moxy_upstream_hooks_done(moxy_req_t *r, int rc);

/* r ends: free what its response body filter held. */
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

/* Set up the worker's pools / free them (idle connections closed). */
int moxy_upstream_init_worker(moxy_worker_t *w);
void moxy_upstream_free_worker(moxy_worker_t *w);

/* --- responses moxy writes (http_response.c) --- */

/* Queue the status line and headers of r's response for the client, choosing
 * the framing (Content-Length kept, chunked for HTTP/1.1, close for 1.0). */
int moxy_resp_write_head(moxy_req_t *r);

/* Answer r with status, body and r->resp_headers (set by a hook or empty).
 * Marks r done once queued. */
void moxy_resp_local(moxy_req_t *r, int status, const char *body, size_t len);

/* Answer r with a small error page (HTML, or JSON when the client accepts
 * it), logging why at level warn. */
void moxy_resp_error(moxy_req_t *r, int status, const char *why);

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

#endif
