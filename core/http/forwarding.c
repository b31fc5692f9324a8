/*
 * forwarding.c -- the fields that tell an origin who asked: X-Forwarded-For,
 * -Proto, -Host and Via (mask.via: moxy's name in it), as moxy writes them.
 */
#include "base/headers.h"
#include "http/http.h"
#include "http/mask.h"

#include <string.h>

/* X-Forwarded-*, Via: set before the hooks so scripts see what goes out. */
int moxy_req_add_forwarding(moxy_req_t *r)
{
    moxy_pool_t *pool = &r->mem;
    moxy_headers_t *hs = &r->headers;

    /* X-Forwarded-For: what came in (all lines, joined) plus the client. */
    size_t len = strlen(r->addr->ip);
    for (uint32_t i = 0; i < hs->n; i++)
        if (hs->h[i].kind & MOXY_HK_XFF)
            len += hs->h[i].value_len + 2;
    char *xff = moxy_palloc(pool, len + 1), *p = xff;
    if (!xff) return MOXY_ERROR;
    for (uint32_t i = 0; i < hs->n; i++) {
        moxy_header_t *h = &hs->h[i];
        if ((h->kind & MOXY_HK_XFF) && h->value_len) {
            memcpy(p, h->value, h->value_len);
            p += h->value_len;
            *p++ = ',';
            *p++ = ' ';
        }
    }
    p = stpcpy(p, r->addr->ip);
    /* what the client claimed is replaced, in one pass */
    moxy_headers_remove_kind(hs, MOXY_HK_XFF | MOXY_HK_XFP | MOXY_HK_XFH);
    if (moxy_headers_add(pool, hs, "X-Forwarded-For", 15, xff, (size_t)(p - xff)) != MOXY_OK ||
        moxy_headers_add(pool, hs, "X-Forwarded-Proto", 17, r->https ? "https" : "http", r->https ? 5 : 4) !=
            MOXY_OK ||
        (r->host && moxy_headers_add(pool, hs, "X-Forwarded-Host", 16, r->host, strlen(r->host)) != MOXY_OK))
        return MOXY_ERROR;
    /* the protocol the request came in and moxy's name (RFC 9110 7.6.3;
     * mask.via: a pseudonym, or none) */
    const moxy_mask_conf_t *m = moxy_mask_of(r);
    int v = r->http_major == 2 ? MOXY_VIA_2 : r->http_minor == 0 ? MOXY_VIA_10 : MOXY_VIA_11;
    if (!m->via_value[v]) return MOXY_OK;
    return moxy_headers_add(pool, hs, "Via", 3, m->via_value[v], m->via_len[v]);
}
