/*
 * origin_codec.h -- HTTP/1.1 toward an origin: the request head the proxy
 * sends, and the response parser every client of moxy shares (the proxy,
 * moxy.http and health checks).
 *
 * The parser reads a response from an evbuffer in two steps.
 * moxy_h1_resp_head reads heads until the final one: its fields go to the
 * header list rs->fields (split reads joined), an interim (1xx) head's too
 * before ops->interim sees it, and the framing is decided once, with the same checks for
 * every client: a bounded head, a bounded number of fields and of interim
 * heads, no framing on a 1xx, Content-Length and Transfer-Encoding not both
 * (llhttp, strict), keep-alive from the version and Connection.  Then
 * moxy_h1_resp_body says how much of what was read is body: bodies with a
 * Content-Length or delimited by the close are left in the buffer for the
 * caller to move without a copy; chunked bodies are decoded, piece by piece
 * to ops->body, their trailers to the list rs->trailers.
 */
#ifndef MOXY_ORIGIN_CODEC_H
#define MOXY_ORIGIN_CODEC_H

#include "http/http-t.h"

#include <llhttp.h>

struct evbuffer;

typedef struct moxy_h1_resp_s moxy_h1_resp_t;

/* A name or value being read: its first piece is only pointed to, in the
 * buffer being parsed; a second piece, or the end of the parse call while
 * it is still being read, copies it into the parser's memory. */
typedef struct {
    char *p;
    uint32_t len, cap; /* cap 0: p points into the buffer being parsed */
} moxy_h1_piece_t;

/* What the parser hands its owner.  Each returns NULL to go on or why the
 * response is refused (a static string).  Any may be NULL. */
typedef struct {
    /* An interim head (1xx other than 101) is complete, its fields in
     * rs->fields (emptied after). */
    const char *(*interim)(moxy_h1_resp_t *rs, int status);
    /* A piece of a chunked body, decoded. */
    const char *(*body)(moxy_h1_resp_t *rs, const char *at, size_t n);
} moxy_h1_resp_ops_t;

struct moxy_h1_resp_s {
    llhttp_t parser;
    const moxy_h1_resp_ops_t *ops;
    void *data;      /* the owner's */
    moxy_pool_t *mem; /* where fields are kept (needed with fields or trailers) */
    moxy_headers_t *fields;   /* the head's fields (names as received, values without
                                 surrounding whitespace), or NULL: not kept */
    moxy_headers_t *trailers; /* the trailers', or NULL */
    const char *why; /* MOXY_ERROR: why the response was refused */
    size_t max_head;  /* bytes of a head (names, values, 4 per field); the trailers get as many */
    uint32_t max_fields; /* fields of a head; the trailers get as many */

    /* the final head */
    int status;
    moxy_body_kind_t body_kind;
    uint64_t body_left; /* MOXY_BODY_LENGTH: bytes still to come */
    unsigned keepalive : 1;  /* the connection may carry another request after this one */
    unsigned head_done : 1;  /* moxy_h1_resp_head returned MOXY_OK */
    unsigned in_trailers : 1;
    unsigned done : 1;       /* the whole response is in */

    /* the parser's own */
    unsigned head_request : 1; /* the response to HEAD: no body */
    unsigned interim : 1;      /* in an interim response */
    unsigned conn_close : 1, conn_keepalive : 1; /* Connection tokens of the head */
    unsigned interims;         /* interim heads so far */
    size_t head_bytes, interim_bytes;
    uint32_t nfields;
    moxy_h1_piece_t name, value;
};

/* Get rs ready for one response (again for every response on a kept
 * connection, and for a retry), its fields kept in fields and trailers
 * (either NULL: not kept) from mem.  head_request: the request was HEAD. */
void moxy_h1_resp_init(moxy_h1_resp_t *rs, const moxy_h1_resp_ops_t *ops, void *data, moxy_pool_t *mem,
                       moxy_headers_t *fields, moxy_headers_t *trailers, int head_request, size_t max_head,
                       uint32_t max_fields);

/* Parse heads from the front of in, draining what was read: MOXY_OK when
 * the final head is in (rs->status, body_kind, body_left, keepalive set);
 * MOXY_AGAIN when in is used up; MOXY_ERROR with rs->why. */
int moxy_h1_resp_head(moxy_h1_resp_t *rs, struct evbuffer *in);

/* After the head: *take is the number of bytes at the front of in that are
 * body for the caller to remove (Content-Length and close-delimited
 * bodies; chunked ones are decoded to ops->body and drained here).
 * MOXY_OK when the body is complete once *take is removed (eof: the origin
 * closed); MOXY_AGAIN when more is to come; MOXY_ERROR with rs->why. */
int moxy_h1_resp_body(moxy_h1_resp_t *rs, struct evbuffer *in, int eof, size_t *take);

/* Queue r's request head (and a body a hook read) for an origin on out:
 * "Host: host", r's fields less the hop-by-hop ones, the framing of the
 * body that follows.  MOXY_ERROR: out of memory. */
int moxy_h1_write_request(const moxy_req_t *r, const char *host, struct evbuffer *out);

#endif
