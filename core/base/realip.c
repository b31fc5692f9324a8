/*
 * realip.c -- trusted proxies, the X-Forwarded-For / Forwarded walk and the
 * PROXY protocol header; see realip.h.
 */
#include "base/realip.h"
#include "http/http.h"
#include "http/worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>

/* --- address blocks --- */

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

void moxy_cidr_init(moxy_cidr_t *m, int family, int bits)
{
    if (family == 6 && bits >= 96 && memcmp(m->addr, V4_MAPPED, 12) == 0) {
        memmove(m->addr, m->addr + 12, 4);
        family = 4;
        bits -= 96;
    }
    int size = family == 4 ? 4 : 16;
    if (bits < 0) bits = 0;
    if (bits > size * 8) bits = size * 8;
    m->family = (uint8_t)family;
    m->bits = (uint8_t)bits;
    for (int i = 0; i < 16; i++) {
        int keep = bits - i * 8; /* bits of byte i inside the prefix */
        if (i >= size || keep <= 0)
            m->addr[i] = 0;
        else if (keep < 8)
            m->addr[i] &= (uint8_t)(0xff << (8 - keep));
    }
}

int moxy_cidr_match(const moxy_cidr_t *list, int n, int family, const uint8_t *addr)
{
    if (family == 6 && memcmp(addr, V4_MAPPED, 12) == 0) {
        family = 4;
        addr += 12;
    }
    for (int k = 0; k < n; k++) {
        const moxy_cidr_t *m = &list[k];
        if (m->family != family) continue;
        int whole = m->bits / 8, rest = m->bits % 8;
        if (memcmp(addr, m->addr, (size_t)whole) != 0) continue;
        if (rest && ((addr[whole] ^ m->addr[whole]) & (0xff << (8 - rest)) & 0xff)) continue;
        return 1;
    }
    return 0;
}

/* --- one hop --- */

/* The decimal port of the n bytes at p (1..5 digits, <= 65535), or -1. */
static int parse_port(const char *p, size_t n)
{
    if (n == 0 || n > 5) return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

int moxy_ip_pton(const char *p, size_t n, int *family, uint8_t addr[16])
{
    char buf[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof(buf)) return MOXY_ERROR;
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (*family)
        return inet_pton(*family == 4 ? AF_INET : AF_INET6, buf, addr) == 1 ? MOXY_OK : MOXY_ERROR;
    if (inet_pton(AF_INET, buf, addr) == 1) {
        *family = 4;
        return MOXY_OK;
    }
    if (inet_pton(AF_INET6, buf, addr) != 1) return MOXY_ERROR;
    *family = 6;
    if (memcmp(addr, V4_MAPPED, 12) == 0) {
        memmove(addr, addr + 12, 4);
        *family = 4;
    }
    return MOXY_OK;
}

int moxy_ip_parse(const char *p, size_t n, int *family, uint8_t addr[16], int *port)
{
    *port = -1;
    if (n > 0 && p[0] == '[') { /* [v6] or [v6]:port */
        const char *end = memchr(p, ']', n);
        if (!end) return MOXY_ERROR;
        size_t alen = (size_t)(end - p - 1), after = n - alen - 2;
        if (after > 0) {
            if (end[1] != ':' || (*port = parse_port(end + 2, after - 1)) < 0) return MOXY_ERROR;
        }
        *family = 6;
        return moxy_ip_pton(p + 1, alen, family, addr);
    }
    const char *colon = memchr(p, ':', n);
    if (colon && memchr(colon + 1, ':', n - (size_t)(colon - p) - 1)) { /* bare v6 */
        *family = 6;
        return moxy_ip_pton(p, n, family, addr);
    }
    size_t alen = colon ? (size_t)(colon - p) : n;
    if (colon && (*port = parse_port(colon + 1, n - alen - 1)) < 0) return MOXY_ERROR;
    *family = 4;
    return moxy_ip_pton(p, alen, family, addr);
}

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
    moxy_client_t *c = r->c;
    walk_t w = {.conf = r->g->conf};
    int forwarded = w.conf->real_ip_header == MOXY_REALIP_FORWARDED;
    uint32_t kind = forwarded ? MOXY_HK_FWD : MOXY_HK_XFF;
    for (uint32_t i = r->headers.n; i-- > 0;) {
        const moxy_header_t *h = &r->headers.h[i];
        if ((h->kind & kind) && walk_value(&w, h->value, h->value_len, forwarded)) break;
    }
    if (w.hops == 0) return;
    char *ip = moxy_palloc(&c->pool, INET6_ADDRSTRLEN);
    if (!ip || !inet_ntop(w.family == 4 ? AF_INET : AF_INET6, w.addr, ip, INET6_ADDRSTRLEN)) return;
    r->client_ip = ip;
    r->client_port = w.port;
}

/* --- the PROXY protocol --- */

static const uint8_t V2_SIG[12] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

/* The v1 line (p[0..n) up to, not including, its CRLF). */
static int proxy_v1(const char *p, size_t n, moxy_proxy_hdr_t *h)
{
    p += 6; /* "PROXY " */
    n -= 6;
    if (n >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (n == 7 || p[7] == ' ')) return MOXY_OK;
    if (n < 5 || (memcmp(p, "TCP4 ", 5) != 0 && memcmp(p, "TCP6 ", 5) != 0)) {
        h->why = "v1: protocol is not TCP4, TCP6 or UNKNOWN";
        return MOXY_ERROR;
    }
    int family = p[3] == '4' ? 4 : 6;
    const char *f[4];
    size_t flen[4];
    const char *s = p + 5, *end = p + n;
    for (int i = 0; i < 4; i++) {
        const char *sp = i < 3 ? memchr(s, ' ', (size_t)(end - s)) : end;
        if (!sp) {
            h->why = "v1: expected source, destination, source port, destination port";
            return MOXY_ERROR;
        }
        f[i] = s;
        flen[i] = (size_t)(sp - s);
        s = sp + 1;
    }
    uint8_t dst[16];
    if (memchr(f[3], ' ', flen[3]) || moxy_ip_pton(f[0], flen[0], &family, h->addr) != MOXY_OK ||
        moxy_ip_pton(f[1], flen[1], &family, dst) != MOXY_OK) {
        h->why = family == 4 ? "v1: bad TCP4 address" : "v1: bad TCP6 address";
        return MOXY_ERROR;
    }
    int sport = parse_port(f[2], flen[2]), dport = parse_port(f[3], flen[3]);
    if (sport < 0 || dport < 0) {
        h->why = "v1: bad port";
        return MOXY_ERROR;
    }
    h->family = family;
    h->port = (uint16_t)sport;
    return MOXY_OK;
}

int moxy_proxy_parse(const uint8_t *p, size_t n, moxy_proxy_hdr_t *h)
{
    memset(h, 0, sizeof(*h));
    if (n == 0) {
        h->len = MOXY_PROXY_V2_HEAD; /* tells v1 from v2, and v2's length */
        return MOXY_AGAIN;
    }
    if (p[0] == 'P') {
        h->version = 1;
        if (memcmp(p, "PROXY ", MOXY_MIN(n, 6)) != 0) goto not_proxy;
        size_t look = MOXY_MIN(n, MOXY_PROXY_V1_MAX);
        for (size_t i = 0; i < look; i++) {
            if (p[i] == '\n') {
                if (i < 7 || p[i - 1] != '\r') {
                    h->why = "v1: line does not end with CRLF";
                    return MOXY_ERROR;
                }
                h->len = i + 1;
                return proxy_v1((const char *)p, i - 1, h);
            }
            if (p[i] < 0x20 && p[i] != '\r') {
                h->why = "v1: control character in the header";
                return MOXY_ERROR;
            }
        }
        if (n >= MOXY_PROXY_V1_MAX) {
            h->why = "v1: no CRLF within 107 bytes";
            return MOXY_ERROR;
        }
        h->len = MOXY_PROXY_V1_MAX; /* at most: the line may end sooner */
        return MOXY_AGAIN;
    }
    if (p[0] == '\r') {
        h->version = 2;
        if (memcmp(p, V2_SIG, MOXY_MIN(n, 12)) != 0) goto not_proxy;
        if (n < MOXY_PROXY_V2_HEAD) {
            h->len = MOXY_PROXY_V2_HEAD;
            return MOXY_AGAIN;
        }
        int cmd = p[12] & 0x0f, fam = p[13] >> 4, proto = p[13] & 0x0f;
        size_t len = ((size_t)p[14] << 8) | p[15];
        if ((p[12] >> 4) != 2) {
            h->why = "v2: version is not 2";
            return MOXY_ERROR;
        }
        if (cmd > 1) {
            h->why = "v2: command is not LOCAL or PROXY";
            return MOXY_ERROR;
        }
        if (fam > 3 || proto > 2) {
            h->why = "v2: unknown address family or protocol";
            return MOXY_ERROR;
        }
        static const size_t need[4] = {0, 12, 36, 216}; /* UNSPEC, INET, INET6, UNIX */
        if (len < need[fam]) {
            h->why = "v2: address block shorter than its family's";
            return MOXY_ERROR;
        }
        h->len = MOXY_PROXY_V2_HEAD + len; /* TLVs after the addresses are skipped */
        if (n < h->len) return MOXY_AGAIN;
        if (cmd == 1 && proto == 1 && (fam == 1 || fam == 2)) { /* PROXY, TCP over IPv4/IPv6 */
            const uint8_t *a = p + MOXY_PROXY_V2_HEAD;
            size_t asize = fam == 1 ? 4 : 16;
            h->family = fam == 1 ? 4 : 6;
            memcpy(h->addr, a, asize);
            h->port = (uint16_t)((a[2 * asize] << 8) | a[2 * asize + 1]);
        }
        return MOXY_OK; /* LOCAL, UNSPEC, UNIX, UDP: the socket's address stays */
    }
not_proxy:
    h->why = "no PROXY protocol header";
    return MOXY_ERROR;
}
