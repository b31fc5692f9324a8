/*
 * proxy_protocol.c -- the PROXY protocol header; see proxy_protocol.h.
 */
#include "net/proxy_protocol.h"
#include "base/addr.h"

#include <string.h>

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
    int sport = moxy_port_parse(f[2], flen[2]), dport = moxy_port_parse(f[3], flen[3]);
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
