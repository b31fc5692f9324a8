/*
 * body_filter.h -- the response body through the on_body hooks, whatever
 * produces it (an origin, the cache): bytes go into r->filter_in, the
 * hooks' output goes out through r's stream.
 */
#ifndef MOXY_BODY_FILTER_H
#define MOXY_BODY_FILTER_H

#include "http/http-t.h"

/* Decide whether r's response body goes through on_body, before its head is
 * written (a filtered body loses its Content-Length: chunked, or close-
 * delimited for HTTP/1.0): sets r->filtering, and when set makes
 * r->filter_in and r->filter_out.  MOXY_ERROR: out of memory. */
int moxy_body_filter_start(moxy_req_t *r);

/* Hand what r->filter_in holds -- and the end, once r->filter_eof is set --
 * to the hooks and send their output; then ask r's origin (r->up, if any)
 * for more, or to wait.  The end of the body ends the response
 * (moxy_req_response_done); a hook that fails cuts it. */
void moxy_body_filter_continue(moxy_req_t *r);

#endif
