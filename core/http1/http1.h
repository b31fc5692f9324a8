/*
 * http1.h -- HTTP/1's server side, the parts of which share this header:
 * http_client.c runs the connection and its requests, request_head.c reads
 * a request's head and framing, request_body.c its body, response.c frames
 * what goes back.
 */
#ifndef MOXY_HTTP1_H
#define MOXY_HTTP1_H

#include "http/http-t.h"

#include <llhttp.h>
#include <sys/socket.h>

struct evbuffer;

/* --- the connection (http_client.c) --- */

/* Take over an accepted, non-blocking socket fd from listener listen_index. */
void moxy_client_accept(moxy_worker_t *w, int fd, const struct sockaddr *sa, int listen_index);

/* Keep c's memory valid across calls that may close it (an event callback
 * holds its client); release frees it if it was closed meanwhile.  After any
 * call that may close c, check c->dead. */
void moxy_client_hold(moxy_client_t *c);
void moxy_client_release(moxy_client_t *c);

/* Close now: the request (if any) is logged as aborted, its origin connection closed. */
void moxy_client_close(moxy_client_t *c);

/* Drain (QUIT, upgrade, a listener gone): close after the current response;
 * an idle connection closes unless a request comes within
 * MOXY_DRAIN_IDLE_GRACE_MS (served, with Connection: close). */
void moxy_client_drain(moxy_client_t *c);

/* Write what c->out holds, as much as the socket takes; arms the write event
 * for the rest.  May close c (write error): callers must not touch c after,
 * unless it returns MOXY_OK. */
int moxy_client_send(moxy_client_t *c);

/* Switch the client connection to a two-way tunnel with r's origin connection. */
void moxy_client_tunnel(moxy_client_t *c);

/* Reading: stop; (re)arm with the timeout that fits where c is; parse and
 * start requests and move body bytes, whatever c->in allows (not
 * re-entered: a call from below leaves the work to the loop running). */
void moxy_h1_stop_read(moxy_client_t *c);
void moxy_h1_want_read(moxy_client_t *c);
void moxy_h1_process(moxy_client_t *c);

/* Answer a request that could not be parsed or was refused before its
 * hooks ran (status, why for the log), then close: nothing after a bad
 * head can be trusted. */
void moxy_h1_reject(moxy_client_t *c, int status, const char *why);

/* --- the request body (request_body.c) --- */

/* Move what c->in holds of the body of c's request into its body_buf
 * (txn:read_body).  MOXY_AGAIN: more to come; MOXY_OK: all there;
 * MOXY_ERROR: too large or malformed (r->body_status says which). */
int moxy_h1_body_buffer(moxy_client_t *c);

/* The body is in (or failed): resume the hook waiting for it. */
void moxy_h1_body_wake(moxy_req_t *r);

/* The stream's read_body and body_check (request.h's moxy_req_read_body,
 * moxy_req_body_check) for c's request r, past the checks every protocol
 * shares. */
int moxy_h1_body_read_whole(moxy_client_t *c, moxy_req_t *r, uint64_t max);
int moxy_h1_body_check(moxy_client_t *c, moxy_req_t *r);

/* Move request body bytes from c->in to the origin connection.  MOXY_OK
 * when the caller may go on, MOXY_ERROR when c was answered/closed. */
int moxy_h1_read_body(moxy_client_t *c);

/* The origin took the body bytes it was given: read more of the body (or
 * of a tunnel). */
void moxy_h1_resume_read(moxy_client_t *c);

/* --- the request head (request_head.c) --- */

/* The llhttp settings of a request: every callback checks and stores into
 * the client's current request (parser->data is the moxy_client_t).  Made
 * once, by moxy_http_init before any worker starts. */
const llhttp_settings_t *moxy_h1_request_settings(void);

/* Feed c->in to c->req's parser.  MOXY_OK: paused (head or message
 * complete), consumed bytes drained; MOXY_AGAIN: all consumed, need more;
 * MOXY_ERROR: parse error, *reason says why (r->status holds the status to
 * answer, 0 for a plain 400). */
int moxy_h1_parse(moxy_client_t *c, const char **reason);

/* The chunked body bytes already in `in` checked for framing by a copy of
 * parser where it stands (the real one reads them again later): NULL when
 * they are well framed so far, else why not. */
const char *moxy_h1_chunked_check(const llhttp_t *parser, struct evbuffer *in);

/* --- the response toward the client (response.c) --- */

/* Queue r's status line and head on out, choosing the framing (its
 * Content-Length kept, chunked for HTTP/1.1 when the length is unknown,
 * delimited by the close for HTTP/1.0): sets r->resp_chunked_out,
 * r->keepalive, r->resp_head_sent.  MOXY_ERROR: out of memory. */
int moxy_h1_write_head(struct evbuffer *out, moxy_req_t *r);

/* Queue an interim head (status, fields h; h NULL: 100 Continue), unless
 * r's client speaks HTTP/1.0. */
void moxy_h1_write_interim(struct evbuffer *out, const moxy_req_t *r, int status, const moxy_headers_t *h);

/* Queue a piece of r's body as a chunk when r is chunked, else as it is:
 * the first n bytes of from (memory: moved, or copied when small, io.h's
 * moxy_io_move; no more than from holds), or n bytes at data (copied).
 * An empty piece queues nothing. */
void moxy_h1_write_body(struct evbuffer *out, const moxy_req_t *r, struct evbuffer *from, size_t n);
void moxy_h1_write_data(struct evbuffer *out, const moxy_req_t *r, const void *data, size_t n);

/* Queue a piece of r's body by reference (n bytes at data, release(data,
 * n, arg) once they have left out, or at once when n is 0), or n bytes
 * from offset off of a file segment; chunked when r is.  MOXY_ERROR: out
 * of memory. */
int moxy_h1_write_ref(struct evbuffer *out, const moxy_req_t *r, const void *data, size_t n,
                      moxy_ref_release_fn release, void *arg);
int moxy_h1_write_file(struct evbuffer *out, const moxy_req_t *r, struct evbuffer_file_segment *seg,
                       uint64_t off, uint64_t n);

/* The end of r's body: the last chunk and r's trailers when r is chunked. */
void moxy_h1_write_end(struct evbuffer *out, const moxy_req_t *r);

#endif
