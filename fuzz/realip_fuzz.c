/*
 * realip_fuzz.c -- the real client address behind trusted proxies
 * (realip.c): moxy_cidr_init, moxy_cidr_match, moxy_ip_parse, moxy_ip_pton
 * and moxy_realip_resolve's walk of X-Forwarded-For / Forwarded.
 *
 * Input:
 *   byte 0          flags: bit 0 real_ip_header = Forwarded (else XFF)
 *   line 1          trusted_proxies: blocks separated by spaces, "addr[/bits]"
 *                   (built as config.c's read_cidrs builds them; bad ones skipped)
 *   other lines     request headers "Name: value"; a line without ':' is a
 *                   value of the configured real-IP header
 *
 * The request is the minimum real one: a moxy_req_t with its header list,
 * a client connection (its pool takes the result) and a generation whose
 * configuration holds the trusted blocks and real_ip_header.  Each header
 * value lives in its own allocation of exactly its length (no NUL): ASan
 * sees any read outside it.
 *
 * Invariants:
 *  - moxy_ip_parse: MOXY_OK gives family 4 or 6 and a port -1..65535; the
 *    address written out by inet_ntop parses back to the same bytes;
 *  - moxy_ip_pton with family 0 never returns an IPv4-mapped IPv6 address;
 *  - moxy_cidr_init clears the bits past the prefix; moxy_cidr_match agrees
 *    with a bit-by-bit model (IPv4-mapped addresses as IPv4);
 *  - moxy_realip_resolve: a client_ip it sets parses back as an address and
 *    is the address of the walk's model (X-Forwarded-For: the first
 *    untrusted hop from the right, the last trusted one before an entry
 *    that does not parse, the left-most when all are trusted, at most
 *    MOXY_REALIP_MAX_HOPS entries); its port is -1..65535.
 */
#include "fuzz.h"
#include "base/headers.h"
#include "base/pool.h"
#include "base/addr.h"
#include "http/realip.h"
#include "http/worker.h"

#include <arpa/inet.h>
#include <assert.h>

#define MAX_TRUSTED 16
#define MAX_HEADERS 64

/* 1 when the bits first bits of a and b agree. */
static int prefix_eq(const uint8_t *a, const uint8_t *b, int bits)
{
    for (int i = 0; i < bits; i++) {
        int byte = i / 8, bit = 7 - i % 8;
        if (((a[byte] >> bit) & 1) != ((b[byte] >> bit) & 1)) return 0;
    }
    return 1;
}

static const uint8_t MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* moxy_cidr_match's model. */
static int model_match(const moxy_cidr_t *list, int n, int family, const uint8_t *addr)
{
    if (family == 6 && memcmp(addr, MAPPED, 12) == 0) {
        family = 4;
        addr += 12;
    }
    for (int k = 0; k < n; k++)
        if (list[k].family == family && prefix_eq(addr, list[k].addr, list[k].bits)) return 1;
    return 0;
}

/* Checks on one parsed hop. */
static void check_ip(const char *p, size_t n, const moxy_cidr_t *trusted, int ntrusted)
{
    int family = 0, port = 0;
    uint8_t addr[16];
    char *copy = malloc(n ? n : 1); /* exact size (moxy never passes NULL) */
    memcpy(copy, p, n);
    if (moxy_ip_parse(copy, n, &family, addr, &port) == MOXY_OK) {
        assert(family == 4 || family == 6);
        assert(port >= -1 && port <= 65535);
        char text[INET6_ADDRSTRLEN];
        assert(inet_ntop(family == 4 ? AF_INET : AF_INET6, addr, text, sizeof(text)));
        int f2 = family;
        uint8_t a2[16];
        assert(moxy_ip_pton(text, strlen(text), &f2, a2) == MOXY_OK);
        assert(memcmp(a2, addr, family == 4 ? 4 : 16) == 0);
        assert(moxy_cidr_match(trusted, ntrusted, family, addr) == model_match(trusted, ntrusted, family, addr));
    }
    family = 0;
    if (moxy_ip_pton(copy, n, &family, addr) == MOXY_OK) {
        assert(family == 4 || family == 6);
        if (family == 6) assert(memcmp(addr, MAPPED, 12) != 0);
    }
    free(copy);
}

/* The X-Forwarded-For walk's model over hs: MOXY_OK with the address, or
 * MOXY_DECLINED when nothing changes the client. */
static int model_walk(const moxy_headers_t *hs, const moxy_cidr_t *trusted, int ntrusted, int *family,
                      uint8_t addr[16], int *port)
{
    int hops = 0;
    for (uint32_t i = hs->n; i-- > 0;) {
        const moxy_header_t *h = &hs->h[i];
        if (!(h->kind & MOXY_HK_XFF)) continue;
        const char *v = h->value;
        size_t end = h->value_len;
        for (;;) { /* entries from the right */
            size_t start = end;
            while (start > 0 && v[start - 1] != ',') start--;
            size_t a = start, b = end;
            while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
            if (b > a) {
                int f, pt;
                uint8_t ad[16];
                if (moxy_ip_parse(v + a, b - a, &f, ad, &pt) != MOXY_OK) return hops ? MOXY_OK : MOXY_DECLINED;
                *family = f;
                memcpy(addr, ad, 16);
                *port = pt;
                if (++hops >= MOXY_REALIP_MAX_HOPS || !model_match(trusted, ntrusted, f, ad)) return MOXY_OK;
            }
            if (start == 0) break;
            end = start - 1;
        }
    }
    return hops ? MOXY_OK : MOXY_DECLINED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned flags = fuzz_take_byte(&data, &size);
    const char *p = (const char *)data, *end = p + size;

    moxy_conf_t conf;
    memset(&conf, 0, sizeof(conf));
    moxy_cidr_t trusted[MAX_TRUSTED];
    conf.trusted = trusted;
    conf.real_ip_header = (flags & 1) ? MOXY_REALIP_FORWARDED : MOXY_REALIP_XFF;

    /* line 1: the trusted blocks */
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    while (p < le) {
        while (p < le && *p == ' ') p++;
        const char *s = p;
        while (p < le && *p != ' ') p++;
        if (p == s || conf.ntrusted == MAX_TRUSTED) continue;
        char buf[64];
        size_t n = (size_t)(p - s);
        if (n >= sizeof(buf)) continue;
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *slash = strchr(buf, '/');
        int bits = -1;
        if (slash) {
            *slash = '\0';
            bits = atoi(slash + 1);
        }
        moxy_cidr_t *m = &trusted[conf.ntrusted];
        memset(m, 0, sizeof(*m));
        int family = strchr(buf, ':') ? 6 : 4;
        if (inet_pton(family == 4 ? AF_INET : AF_INET6, buf, m->addr) != 1) continue;
        if (bits < 0 || bits > (family == 4 ? 32 : 128)) bits = family == 4 ? 32 : 128;
        uint8_t before[16];
        memcpy(before, m->addr, 16);
        moxy_cidr_init(m, family, bits);
        /* bits past the prefix are clear, the prefix is kept */
        assert(m->family == 4 || m->family == 6);
        int size_b = m->family == 4 ? 32 : 128;
        assert(m->bits <= size_b);
        for (int i = m->bits; i < 128; i++) assert(!((m->addr[i / 8] >> (7 - i % 8)) & 1));
        if (m->family == family) assert(prefix_eq(m->addr, before, m->bits));
        else assert(family == 6 && prefix_eq(m->addr, before + 12, m->bits));
        conf.ntrusted++;
    }
    p = nl ? nl + 1 : end;

    /* the other lines: headers, each value in its own exact allocation */
    moxy_worker_t w;
    memset(&w, 0, sizeof(w));
    moxy_wgen_t g;
    memset(&g, 0, sizeof(g));
    g.w = &w;
    g.conf = &conf;
    moxy_client_addr_t addr;
    memset(&addr, 0, sizeof(addr));
    strcpy(addr.ip, "127.0.0.1"); /* a trusted peer: moxy_realip_resolve runs */
    moxy_req_t r;
    memset(&r, 0, sizeof(r));
    moxy_pool_init(&r.mem);
    r.w = &w;
    r.addr = &addr;
    r.g = &g;
    moxy_header_t hs[MAX_HEADERS];
    char *owned[MAX_HEADERS * 2];
    int nowned = 0;
    r.headers.h = hs;
    r.headers.cap = MAX_HEADERS;
    const char *dflt = conf.real_ip_header == MOXY_REALIP_FORWARDED ? "Forwarded" : "X-Forwarded-For";
    while (p < end && r.headers.n < MAX_HEADERS) {
        nl = memchr(p, '\n', (size_t)(end - p));
        le = nl ? nl : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        const char *name = dflt, *value = p;
        size_t nlen = strlen(dflt), vlen = (size_t)(le - p);
        if (colon) {
            name = p;
            nlen = (size_t)(colon - p);
            value = colon + 1;
            while (value < le && *value == ' ') value++;
            vlen = (size_t)(le - value);
        }
        char *nm = malloc(nlen ? nlen : 1), *vl = malloc(vlen ? vlen : 1);
        memcpy(nm, name, nlen);
        memcpy(vl, value, vlen);
        owned[nowned++] = nm;
        owned[nowned++] = vl;
        moxy_header_t *h = &hs[r.headers.n++];
        h->name = nm;
        h->name_len = (uint32_t)nlen;
        h->value = vl;
        h->value_len = (uint32_t)vlen;
        h->kind = moxy_header_kind(nm, nlen);
        /* every comma-separated entry, as a hop */
        for (size_t i = 0; i <= vlen;) {
            size_t s = i;
            while (i < vlen && vl[i] != ',') i++;
            size_t a = s, b = i;
            while (a < b && (vl[a] == ' ' || vl[a] == '\t')) a++;
            while (b > a && (vl[b - 1] == ' ' || vl[b - 1] == '\t')) b--;
            check_ip(vl + a, b - a, trusted, conf.ntrusted);
            i++;
        }
        p = nl ? nl + 1 : end;
    }

    r.client_port = 12345;
    moxy_realip_resolve(&r);
    if (r.client_ip) {
        int family = 0;
        uint8_t addr[16];
        assert(moxy_ip_pton(r.client_ip, strlen(r.client_ip), &family, addr) == MOXY_OK);
        assert(r.client_port >= -1 && r.client_port <= 65535);
        if (conf.real_ip_header == MOXY_REALIP_XFF) {
            int mf, mport;
            uint8_t maddr[16];
            assert(model_walk(&r.headers, trusted, conf.ntrusted, &mf, maddr, &mport) == MOXY_OK);
            char text[INET6_ADDRSTRLEN];
            inet_ntop(mf == 4 ? AF_INET : AF_INET6, maddr, text, sizeof(text));
            assert(strcmp(text, r.client_ip) == 0);
            assert(mport == r.client_port);
        }
    } else {
        assert(r.client_port == 12345);
        if (conf.real_ip_header == MOXY_REALIP_XFF) {
            int mf, mport;
            uint8_t maddr[16];
            assert(model_walk(&r.headers, trusted, conf.ntrusted, &mf, maddr, &mport) == MOXY_DECLINED);
        }
    }
    for (int i = 0; i < nowned; i++) free(owned[i]);
    moxy_pool_reset(&r.mem);
    return 0;
}
