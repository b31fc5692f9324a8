/*
 * http1.h -- what the two halves of HTTP/1's server side share:
 * request_head.c reads a request's head and framing, http_client.c runs the
 * connection and its requests.
 */
#ifndef MOXY_HTTP1_H
#define MOXY_HTTP1_H

#include "http/http-t.h"

#include <llhttp.h>

struct evbuffer;

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

#endif
