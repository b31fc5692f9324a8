/*
 * realip.c -- the X-Forwarded-For / Forwarded walk over trusted proxies;
 * see realip.h.
 */
#include "http/realip.h"
#include "base/addr.h"
#include "http/http.h"
#include "http/worker.h"

#include <string.h>

/* Forwarded's for= value (RFC 7239 6): the node of one element, n bytes at
 * p, quotes removed.  Like moxy_ip_parse, plus an obfuscated port
 * ("[2001:db8::1]:_x", ignored); "unknown" and obfuscated nodes ("_hidden")
 * are MOXY_ERROR: they name no address. */
static int forwarded_node(const char *p, size_t n, int *family, uint8_t addr[16], int *port)
{
    const char *colon; /* the ':' before the port, if any */
    if (n && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        colon = close && close + 1 < p + n ? close + 1 : NULL;
    } else {
        colon = memchr(p, ':', n);
    }
    size_t left = colon ? n - (size_t)(colon - p) : 0;
    if (left >= 2 && colon[0] == ':' && colon[1] == '_') n -= left; /* obfuscated port */
    return moxy_ip_parse(p, n, family, addr, port);
}

/* The for= node of one Forwarded element (n bytes at p, "for=...;proto=...").
 * MOXY_OK with *node, *nlen, or MOXY_ERROR: none. */
static int forwarded_for(const char *p, size_t n, const char **node, size_t *nlen)
{
    const char *end = p + n;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pe = semi ? semi : end;
        while (p < pe && (*p == ' ' || *p == '\t'))
            p++;
        if (pe - p > 4 && MOXY_STRIEQ_LIT(p, 4, "for=")) {
            const char *v = p + 4, *ve = pe;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (ve - v >= 2 && v[0] == '"' && ve[-1] == '"') {
                v++;
                ve--;
                if (memchr(v, '\\', (size_t)(ve - v)))
                    return MOXY_ERROR; /* no escapes in an address */
            }
            *node = v;
            *nlen = (size_t)(ve - v);
            return MOXY_OK;
        }
        p = semi ? semi + 1 : end;
    }
    return MOXY_ERROR;
}

/* --- the walk --- */

typedef struct {
    const moxy_conf_t *conf;
    int hops; /* entries that named an address; > 0: the fields below hold the last */
    int family;
    uint8_t addr[16];
    int port;
} walk_t;

/* One entry (n bytes, spaces trimmed, not empty).  0: a trusted hop, go on;
 * 1: stop (an untrusted hop, taken, or an entry that names no address, not
 * taken). */
static int walk_hop(walk_t *w, const char *p, size_t n, int forwarded)
{
    int family, port;
    uint8_t addr[16];
    if (forwarded) {
        const char *node;
        size_t nlen;
        if (forwarded_for(p, n, &node, &nlen) != MOXY_OK ||
            forwarded_node(node, nlen, &family, addr, &port) != MOXY_OK)
            return 1;
    } else if (moxy_ip_parse(p, n, &family, addr, &port) != MOXY_OK) {
        return 1;
    }
    w->family = family;
    memcpy(w->addr, addr, 16);
    w->port = port;
    if (++w->hops >= MOXY_REALIP_MAX_HOPS) return 1;
    return !moxy_cidr_match(w->conf->trusted, w->conf->ntrusted, family, addr);
}

/* The entries of one header value, from the right.  1: the walk stopped. */
static int walk_value(walk_t *w, const char *v, size_t n, int forwarded)
{
    const char *end = v + n;
    while (end > v) {
        const char *start = end;
        while (start > v && start[-1] != ',')
            start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a && walk_hop(w, a, (size_t)(b - a), forwarded))
            return 1; /* empty entries are skipped */
        end = start > v ? start - 1 : v;
    }
    return 0;
}

void moxy_realip_resolve(moxy_req_t *r)
{
    walk_t w = {.conf = r->g->conf};
    int forwarded = w.conf->real_ip_header == MOXY_REALIP_FORWARDED;
    uint32_t kind = forwarded ? MOXY_HK_FWD : MOXY_HK_XFF;
    for (uint32_t i = r->headers.n; i-- > 0;) {
        const moxy_header_t *h = &r->headers.h[i];
        if ((h->kind & kind) && walk_value(&w, h->value, h->value_len, forwarded)) break;
    }
    if (w.hops == 0) return;
    char *ip = moxy_palloc(&r->mem, INET6_ADDRSTRLEN);
    if (!ip || !inet_ntop(w.family == 4 ? AF_INET : AF_INET6, w.addr, ip, INET6_ADDRSTRLEN)) return;
    r->client_ip = ip;
    r->client_port = w.port;
}
