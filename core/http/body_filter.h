/*
 * body_filter.h -- the chain a response body passes through on its way to
 * r's stream:
 *
 *   producer (an origin) -> taps (the cache's fill) -> on_body -> coder -> stream
 *
 * A producer hands the body on with moxy_body_move / moxy_body_add and
 * ends it with moxy_body_end.  Taps see every byte in order and the end,
 * and keep what they need (the cache stores what the origin sent); the
 * bytes go on unchanged.  The on_body hooks then transform them, when
 * they filter this response: bytes wait in r->filter_in, the hooks' output
 * goes out through r's stream.  Last, a content coder (compress.h)
 * compresses the body, or decodes it, when the response is to be.  A
 * cache hit produces its body into the stage directly (it fills nothing).
 */
#ifndef MOXY_BODY_FILTER_H
#define MOXY_BODY_FILTER_H

#include "http/http-t.h"

/* A tap: it sees the body, and leaves it as it is. */
typedef struct {
    const char *name;
    /* The body's next n bytes, at p. */
    void (*data)(moxy_req_t *r, const char *p, size_t n);
    /* The body is complete (a body that is not never gets here: the tap's
     * request cleanup sees to it). */
    void (*end)(moxy_req_t *r);
} moxy_body_tap_ops_t;

struct moxy_body_tap_s {
    const moxy_body_tap_ops_t *ops;
    moxy_body_tap_t *next;
};

/* Add a tap at the end of r's (before the head is sent).  MOXY_ERROR: out
 * of memory. */
int moxy_body_tap_add(moxy_req_t *r, const moxy_body_tap_ops_t *ops);

/* The producer's side: the n bytes at the front of from (moved on, not
 * copied, when nothing transforms them), the n bytes at p, the end (which
 * ends the response once on_body is through). */
void moxy_body_move(moxy_req_t *r, struct evbuffer *from, size_t n);
void moxy_body_add(moxy_req_t *r, const char *p, size_t n);
void moxy_body_end(moxy_req_t *r);

/* Decide whether r's response body goes through the stage -- on_body
 * hooks, a content coder (compress.h) -- before its head is written (a
 * body through the stage loses its Content-Length: chunked, or close-
 * delimited for HTTP/1.0): sets r->filtering, r->filter_hooks, r->coder,
 * and makes the stage's buffers.  MOXY_ERROR: out of memory. */
int moxy_body_filter_start(moxy_req_t *r);

/* Send r's head after moxy_body_filter_start -- unless the stage holds it
 * until its first output (a decoded body: one that fails to decode before
 * any byte is a 502 instead of a cut response). */
void moxy_body_send_head(moxy_req_t *r);

/* Hand what r->filter_in holds -- and the end, once r->filter_eof is set --
 * to the hooks and send their output; then ask r's origin (r->up, if any)
 * for more, or to wait.  The end of the body ends the response
 * (moxy_req_response_done); a hook that fails cuts it. */
void moxy_body_filter_continue(moxy_req_t *r);

#endif
