/*
 * addr.c -- IP addresses and address blocks; see addr.h.
 */
#include "base/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* --- address blocks --- */

void moxy_cidr_init(moxy_cidr_t *m, int family, int bits)
{
    if (family == 6 && bits >= 96 && moxy_ip_v4_mapped(m->addr)) {
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

int moxy_cidr_parse(const char *p, size_t n, moxy_cidr_t *m, const char **why)
{
    const char *slash = memchr(p, '/', n);
    size_t alen = slash ? (size_t)(slash - p) : n;
    int family = memchr(p, ':', alen) ? 6 : 4;
    int max = family == 4 ? 32 : 128, bits = max;
    if (memchr(p, '\0', n) || moxy_ip_pton(p, alen, &family, m->addr) != MOXY_OK) {
        *why = "bad address";
        return MOXY_ERROR;
    }
    if (slash) {
        const char *d = slash + 1;
        size_t dlen = n - alen - 1, i = 0;
        for (bits = 0; i < dlen && i < 3 && d[i] >= '0' && d[i] <= '9'; i++)
            bits = bits * 10 + (d[i] - '0');
        if (dlen == 0 || i != dlen) {
            *why = "bad prefix length";
            return MOXY_ERROR;
        }
        if (bits > max) {
            *why = family == 4 ? "prefix length past /32" : "prefix length past /128";
            return MOXY_ERROR;
        }
    }
    moxy_cidr_init(m, family, bits);
    return MOXY_OK;
}

int moxy_cidr_match(const moxy_cidr_t *list, int n, int family, const uint8_t *addr)
{
    if (family == 6 && moxy_ip_v4_mapped(addr)) {
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

/* --- addresses --- */

int moxy_port_parse(const char *p, size_t n)
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
    if (moxy_ip_v4_mapped(addr)) {
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
            if (end[1] != ':' || (*port = moxy_port_parse(end + 2, after - 1)) < 0) return MOXY_ERROR;
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
    if (colon && (*port = moxy_port_parse(colon + 1, n - alen - 1)) < 0) return MOXY_ERROR;
    *family = 4;
    return moxy_ip_pton(p, alen, family, addr);
}
