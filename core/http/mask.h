/*
 * mask.h -- what clients learn of the origins and of moxy (mask = {...}):
 * the fields that name an origin's software, version or host (Server,
 * X-Powered-By, ...) removed from its responses, moxy's own Server field,
 * and the name moxy goes by in Via.
 *
 * The order, for a response from an origin or from the cache: its head is
 * masked, moxy's Server is added when it has none left, then on_response
 * runs -- a hook sees what the client would, and whatever it sets (a
 * Server of its own, a masked name) goes out.  The cache stores the head
 * as the origin sent it; each hit is masked on its way out, so a listener
 * or a reload that masks otherwise applies to stored objects at once.
 * Interim heads (103) and trailers lose the masked fields too.  moxy's
 * own answers (error pages, txn:respond) get its Server when they have
 * none.  Which mask: the listener's the request came in on, else the top
 * level's.
 */
#ifndef MOXY_MASK_H
#define MOXY_MASK_H

#include "base/config.h"
#include "base/headers.h"
#include "http/http-t.h"

/* The mask that applies to r: its listener's, else the top level's (set
 * when r is made: r->mask). */
static inline const moxy_mask_conf_t *moxy_mask_of(const moxy_req_t *r)
{
    return r->mask;
}

/* moxy's Server into hs, a head of r's, when one is configured and hs has
 * none; not copied (r holds the configuration). */
void moxy_mask_add_server(moxy_req_t *r, moxy_headers_t *hs);

/* r's response head (r->resp_headers), as an origin or the cache gave it,
 * before on_response: the masked fields out (but those moxy wrote itself:
 * MOXY_HK_OWN), moxy's Server in when it has none.  One pass over the
 * head; no allocation but the Server field's slot. */
static inline void moxy_mask_response(moxy_req_t *r)
{
    const moxy_mask_conf_t *m = r->mask;
    if (m->headers.n) moxy_headers_remove_set(&r->resp_headers, &m->headers);
    if (m->server) moxy_mask_add_server(r, &r->resp_headers);
}

/* The masked fields out of hs, a head of r's that goes to the client
 * without on_response (an interim head, the trailers). */
static inline void moxy_mask_fields(const moxy_req_t *r, moxy_headers_t *hs)
{
    if (r->mask->headers.n) moxy_headers_remove_set(hs, &r->mask->headers);
}

/* moxy's Server into r's own answer (resp_headers) when one is configured
 * and the answer has none. */
static inline void moxy_mask_server(moxy_req_t *r)
{
    if (r->mask->server) moxy_mask_add_server(r, &r->resp_headers);
}

/* The Via value for r's response ("1.1 moxy": the protocol the origin
 * answered in, HTTP/1.1 for a stored response), its length in *len; NULL:
 * none (r is moxy's own answer, or via = false). */
static inline const char *moxy_mask_via(const moxy_req_t *r, size_t *len)
{
    if (r->local) return NULL;
    int v = r->resp_h2 ? MOXY_VIA_2 : MOXY_VIA_11;
    *len = r->mask->via_len[v];
    return r->mask->via_value[v];
}

#endif
