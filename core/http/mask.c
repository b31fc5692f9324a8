/*
 * mask.c -- masking the origins; see mask.h.
 */
#include "http/mask.h"

void moxy_mask_add_server(moxy_req_t *r, moxy_headers_t *hs)
{
    const moxy_mask_conf_t *m = r->mask;
    if (!m->server || moxy_headers_find(hs, "Server", 6, 0) >= 0) return;
    /* the configuration outlives r (r holds its generation): not copied */
    moxy_headers_add_ref(&r->mem, hs, "Server", 6, m->server, m->server_len, 0);
}
