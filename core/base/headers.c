/*
 * headers.c -- header lists and hop-by-hop rules; see headers.h.
 */
#include "base/headers.h"

#include <arpa/inet.h>
#include <event2/buffer.h>

static int grow(moxy_pool_t *pool, moxy_headers_t *hs)
{
    uint32_t cap = hs->cap ? hs->cap * 2 : 16;
    moxy_header_t *h = moxy_prealloc(pool, hs->h, hs->cap * sizeof(*h), cap * sizeof(*h));
    if (!h) return MOXY_ERROR;
    hs->h = h;
    hs->cap = cap;
    return MOXY_OK;
}

int moxy_headers_add(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                     const char *value, size_t vlen)
{
    if (hs->n == hs->cap && grow(pool, hs) != MOXY_OK) return MOXY_ERROR;
    char *buf = moxy_palloc(pool, nlen + vlen + 2);
    if (!buf) return MOXY_ERROR;
    memcpy(buf, name, nlen);
    buf[nlen] = '\0';
    memcpy(buf + nlen + 1, value, vlen);
    buf[nlen + 1 + vlen] = '\0';
    moxy_header_t *h = &hs->h[hs->n++];
    h->kind = moxy_header_kind(name, nlen);
    h->name = buf;
    h->name_len = (uint32_t)nlen;
    h->value = buf + nlen + 1;
    h->value_len = (uint32_t)vlen;
    return MOXY_OK;
}

int moxy_headers_add_ref(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                         const char *value, size_t vlen, uint32_t kind)
{
    if (hs->n == hs->cap && grow(pool, hs) != MOXY_OK) return MOXY_ERROR;
    moxy_header_t *h = &hs->h[hs->n++];
    h->kind = moxy_header_kind(name, nlen) | kind;
    h->name = (char *)name;
    h->name_len = (uint32_t)nlen;
    h->value = (char *)value;
    h->value_len = (uint32_t)vlen;
    return MOXY_OK;
}

uint32_t moxy_header_kind(const char *n, size_t l)
{
    switch (l) {
    case 2: return MOXY_STRIEQ_LIT(n, l, "te") ? MOXY_HK_HOP : 0;
    case 3: return MOXY_STRIEQ_LIT(n, l, "age") || MOXY_STRIEQ_LIT(n, l, "via") ? MOXY_HK_NOT_TRAILER : 0;
    case 4:
        if (MOXY_STRIEQ_LIT(n, l, "host")) return MOXY_HK_HOST;
        if (MOXY_STRIEQ_LIT(n, l, "date") || MOXY_STRIEQ_LIT(n, l, "vary")) return MOXY_HK_NOT_TRAILER;
        break;
    case 5: return MOXY_STRIEQ_LIT(n, l, "range") ? MOXY_HK_RANGE : 0;
    case 6:
        if (MOXY_STRIEQ_LIT(n, l, "expect")) return MOXY_HK_EXPECT;
        if (MOXY_STRIEQ_LIT(n, l, "cookie") || MOXY_STRIEQ_LIT(n, l, "accept") ||
            MOXY_STRIEQ_LIT(n, l, "pragma"))
            return MOXY_HK_NOT_TRAILER;
        break;
    case 7:
        if (MOXY_STRIEQ_LIT(n, l, "upgrade")) return MOXY_HK_HOP | MOXY_HK_UPGRADE;
        if (MOXY_STRIEQ_LIT(n, l, "trailer")) return MOXY_HK_HOP;
        if (MOXY_STRIEQ_LIT(n, l, "expires") || MOXY_STRIEQ_LIT(n, l, "warning")) return MOXY_HK_NOT_TRAILER;
        break;
    case 8:
        if (MOXY_STRIEQ_LIT(n, l, "if-match")) return MOXY_HK_CONDITION;
        if (MOXY_STRIEQ_LIT(n, l, "if-range")) return MOXY_HK_IF_RANGE;
        if (MOXY_STRIEQ_LIT(n, l, "location")) return MOXY_HK_NOT_TRAILER;
        break;
    case 9:
        if (MOXY_STRIEQ_LIT(n, l, "forwarded")) return MOXY_HK_FWD;
        break;
    case 10:
        if (MOXY_STRIEQ_LIT(n, l, "connection")) return MOXY_HK_HOP | MOXY_HK_CONNECTION;
        if (MOXY_STRIEQ_LIT(n, l, "keep-alive")) return MOXY_HK_HOP;
        if (MOXY_STRIEQ_LIT(n, l, "set-cookie")) return MOXY_HK_NOT_TRAILER;
        break;
    case 11:
        if (MOXY_STRIEQ_LIT(n, l, "retry-after")) return MOXY_HK_NOT_TRAILER;
        break;
    case 12:
        if (MOXY_STRIEQ_LIT(n, l, "x-request-id")) return MOXY_HK_XRID;
        if (MOXY_STRIEQ_LIT(n, l, "content-type") || MOXY_STRIEQ_LIT(n, l, "max-forwards"))
            return MOXY_HK_NOT_TRAILER;
        break;
    case 13:
        if (MOXY_STRIEQ_LIT(n, l, "if-none-match")) return MOXY_HK_CONDITION;
        if (MOXY_STRIEQ_LIT(n, l, "cache-control") || MOXY_STRIEQ_LIT(n, l, "authorization") ||
            MOXY_STRIEQ_LIT(n, l, "content-range"))
            return MOXY_HK_NOT_TRAILER;
        break;
    case 14:
        if (MOXY_STRIEQ_LIT(n, l, "content-length")) return MOXY_HK_CL;
        if (MOXY_STRIEQ_LIT(n, l, "accept-charset")) return MOXY_HK_NOT_TRAILER;
        break;
    case 15:
        if (MOXY_STRIEQ_LIT(n, l, "x-forwarded-for")) return MOXY_HK_XFF;
        if (MOXY_STRIEQ_LIT(n, l, "accept-encoding") || MOXY_STRIEQ_LIT(n, l, "accept-language"))
            return MOXY_HK_NOT_TRAILER;
        break;
    case 16:
        if (MOXY_STRIEQ_LIT(n, l, "x-forwarded-host")) return MOXY_HK_XFH;
        if (MOXY_STRIEQ_LIT(n, l, "content-encoding") || MOXY_STRIEQ_LIT(n, l, "www-authenticate"))
            return MOXY_HK_NOT_TRAILER;
        break;
    case 17:
        if (MOXY_STRIEQ_LIT(n, l, "transfer-encoding")) return MOXY_HK_HOP | MOXY_HK_TE;
        if (MOXY_STRIEQ_LIT(n, l, "x-forwarded-proto")) return MOXY_HK_XFP;
        if (MOXY_STRIEQ_LIT(n, l, "if-modified-since")) return MOXY_HK_CONDITION;
        break;
    case 19:
        if (MOXY_STRIEQ_LIT(n, l, "if-unmodified-since")) return MOXY_HK_CONDITION;
        break;
    }
    return l >= 6 && moxy_strieq(n, 6, "proxy-", 6) ? MOXY_HK_HOP : 0;
}

uint32_t moxy_headers_kinds(const moxy_headers_t *hs)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < hs->n; i++) k |= hs->h[i].kind;
    return k;
}

int moxy_headers_find_kind(const moxy_headers_t *hs, uint32_t mask, uint32_t start)
{
    for (uint32_t i = start; i < hs->n; i++)
        if (hs->h[i].kind & mask) return (int)i;
    return -1;
}

int moxy_headers_find(const moxy_headers_t *hs, const char *name, size_t nlen, uint32_t start)
{
    for (uint32_t i = start; i < hs->n; i++)
        if (moxy_strieq(hs->h[i].name, hs->h[i].name_len, name, nlen)) return (int)i;
    return -1;
}

const moxy_header_t *moxy_headers_get(const moxy_headers_t *hs, const char *name, size_t nlen)
{
    int i = moxy_headers_find(hs, name, nlen, 0);
    return i >= 0 ? &hs->h[i] : NULL;
}

int moxy_headers_remove(moxy_headers_t *hs, const char *name, size_t nlen)
{
    int first = moxy_headers_find(hs, name, nlen, 0);
    if (first < 0) return 0; /* the common case: nothing moves */
    uint32_t j = (uint32_t)first;
    int removed = 0;
    for (uint32_t i = (uint32_t)first; i < hs->n; i++) {
        if (moxy_strieq(hs->h[i].name, hs->h[i].name_len, name, nlen)) {
            removed++;
            continue;
        }
        hs->h[j++] = hs->h[i];
    }
    hs->n = j;
    return removed;
}

/* 1 when h goes: its name is in set, and moxy did not write it. */
static inline int in_set(const moxy_header_t *h, const moxy_field_set_t *set)
{
    return ((set->lens >> MOXY_MIN(h->name_len, 63)) & 1) && !(h->kind & MOXY_HK_OWN) &&
           moxy_field_set_has(set, h->name, h->name_len);
}

int moxy_headers_remove_set(moxy_headers_t *hs, const moxy_field_set_t *set)
{
    if (hs->n == 0) return 0; /* hs->h may be NULL */
    moxy_header_t *h = hs->h, *end = h + hs->n;
    /* up to the first that goes, nothing is written (most heads: to the end) */
    while (h < end && !in_set(h, set)) h++;
    if (h == end) return 0;
    moxy_header_t *out = h;
    for (h++; h < end; h++)
        if (!in_set(h, set)) *out++ = *h;
    int removed = (int)(end - out);
    hs->n = (uint32_t)(out - hs->h);
    return removed;
}

int moxy_headers_remove_kind(moxy_headers_t *hs, uint32_t mask)
{
    uint32_t j = 0;
    int removed = 0;
    for (uint32_t i = 0; i < hs->n; i++) {
        if (hs->h[i].kind & mask) {
            removed++;
            continue;
        }
        hs->h[j++] = hs->h[i];
    }
    hs->n = j;
    return removed;
}

int moxy_headers_set(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                     const char *value, size_t vlen)
{
    moxy_headers_remove(hs, name, nlen);
    return moxy_headers_add(pool, hs, name, nlen, value, vlen);
}

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static const uint8_t tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
    ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int moxy_header_name_valid(const char *p, size_t n)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)p[i]]) return 0;
    return 1;
}

int moxy_header_value_valid(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x20 && ch != '\t') return 0;
        if (ch == 0x7f) return 0;
    }
    return 1;
}

/* RFC 3986 unreserved / sub-delims: the bytes of a reg-name besides pct-encoded. */
static int reg_name_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
           ch == '.' || ch == '_' || ch == '~' || ch == '!' || ch == '$' || ch == '&' || ch == '\'' ||
           ch == '(' || ch == ')' || ch == '*' || ch == '+' || ch == ',' || ch == ';' || ch == '=';
}

static int hex_digit(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* IP-literal's inside, n bytes at p: IPv6address or IPvFuture. */
static int ip_literal_valid(const char *p, size_t n)
{
    if (n > 0 && (p[0] == 'v' || p[0] == 'V')) { /* "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
        size_t i = 1;
        while (i < n && hex_digit((unsigned char)p[i])) i++;
        if (i == 1 || i >= n || p[i] != '.' || i + 1 == n) return 0;
        for (i++; i < n; i++)
            if (!reg_name_char((unsigned char)p[i]) && p[i] != ':') return 0;
        return 1;
    }
    char buf[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof(buf)) return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, addr) == 1;
}

int moxy_host_valid(const char *p, size_t n)
{
    size_t i = 0;
    if (n > 0 && p[0] == '[') {
        const char *e = memchr(p, ']', n);
        if (!e || !ip_literal_valid(p + 1, (size_t)(e - p - 1))) return 0;
        i = (size_t)(e - p) + 1;
    } else {
        while (i < n && p[i] != ':') {
            unsigned char ch = (unsigned char)p[i];
            if (ch == '%') {
                if (i + 2 >= n || !hex_digit((unsigned char)p[i + 1]) || !hex_digit((unsigned char)p[i + 2]))
                    return 0;
                i += 3;
                continue;
            }
            if (!reg_name_char(ch)) return 0;
            i++;
        }
        if (i == 0) return 0; /* RFC 9110 4.2.1: no empty host in an http URI */
    }
    if (i == n) return 1;
    if (p[i] != ':') return 0;
    /* port: at most 5 digits, at most 65535 (empty: the scheme's default) */
    size_t digits = n - i - 1;
    if (digits > 5) return 0;
    unsigned port = 0;
    for (i++; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        port = port * 10 + (unsigned)(p[i] - '0');
    }
    return port <= 65535;
}

int moxy_list_has_token(const char *v, size_t vlen, const char *token, size_t tlen)
{
    size_t i = 0;
    while (i < vlen) {
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < vlen && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e > s && moxy_strieq(v + s, e - s, token, tlen)) return 1;
    }
    return 0;
}

int moxy_header_connection_named(const moxy_headers_t *conn, const char *n, size_t l)
{
    if (!conn) return 0;
    for (uint32_t i = 0; i < conn->n; i++) {
        const moxy_header_t *c = &conn->h[i];
        if ((c->kind & MOXY_HK_CONNECTION) && moxy_list_has_token(c->value, c->value_len, n, l))
            return 1;
    }
    return 0;
}

/* 1 when a Connection header names more than close, keep-alive and upgrade
 * (which are hop-by-hop or no header at all anyway): only then must every
 * header be checked against it. */
static int connection_names_more(const moxy_headers_t *hs)
{
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *c = &hs->h[i];
        if (!(c->kind & MOXY_HK_CONNECTION)) continue;
        const char *v = c->value;
        size_t n = c->value_len, j = 0;
        while (j < n) {
            while (j < n && (v[j] == ' ' || v[j] == '\t' || v[j] == ',')) j++;
            size_t s = j;
            while (j < n && v[j] != ',' && v[j] != ' ' && v[j] != '\t') j++;
            if (j == s) continue;
            if (!MOXY_STRIEQ_LIT(v + s, j - s, "close") && !MOXY_STRIEQ_LIT(v + s, j - s, "keep-alive") &&
                !MOXY_STRIEQ_LIT(v + s, j - s, "upgrade"))
                return 1;
        }
    }
    return 0;
}

const moxy_headers_t *moxy_headers_connection_list(const moxy_headers_t *hs)
{
    return connection_names_more(hs) ? hs : NULL;
}

size_t moxy_headers_size(const moxy_headers_t *hs)
{
    size_t n = 0;
    for (uint32_t i = 0; i < hs->n; i++) n += hs->h[i].name_len + hs->h[i].value_len + 4;
    return n;
}

/* A header marked for removal by moxy_headers_drop_connection_named (a
 * kind bit no header name has). */
#define HK_DROP (1u << 31)

int moxy_headers_drop_connection_named(moxy_headers_t *hs, uint32_t keep)
{
    const moxy_headers_t *conn = moxy_headers_connection_list(hs);
    if (!conn) return 0;
    /* Mark first, then remove: the Connection headers themselves (hop-by-
     * hop, never marked) are read while the list is walked. */
    int marked = 0;
    for (uint32_t i = 0; i < hs->n; i++) {
        moxy_header_t *h = &hs->h[i];
        if (h->kind & (MOXY_HK_HOP | keep)) continue;
        if (moxy_header_connection_named(conn, h->name, h->name_len)) {
            h->kind |= HK_DROP;
            marked++;
        }
    }
    if (marked) moxy_headers_remove_kind(hs, HK_DROP);
    return marked;
}

size_t moxy_headers_write(char *p, const moxy_headers_t *hs, int keep_upgrade, uint32_t skip)
{
    char *start = p;
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        if (h->kind & skip) continue;
        if ((h->kind & MOXY_HK_HOP) && !(keep_upgrade && (h->kind & MOXY_HK_UPGRADE))) continue;
        memcpy(p, h->name, h->name_len);
        p += h->name_len;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, h->value, h->value_len);
        p += h->value_len;
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - start);
}

char *moxy_write_u64(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

char *moxy_write_hex(char *p, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

void moxy_chunk_head(struct evbuffer *o, uint64_t len)
{
    char line[24], *e = moxy_write_hex(line, len);
    *e++ = '\r';
    *e++ = '\n';
    evbuffer_add(o, line, (size_t)(e - line));
}

void moxy_chunk_end(struct evbuffer *o, const moxy_headers_t *trailers)
{
    evbuffer_add(o, "0\r\n", 3);
    for (uint32_t i = 0; trailers && i < trailers->n; i++) {
        const moxy_header_t *h = &trailers->h[i];
        if (h->kind & MOXY_HK_TRAILER_FORBIDDEN) continue;
        evbuffer_add(o, h->name, h->name_len);
        evbuffer_add(o, ": ", 2);
        evbuffer_add(o, h->value, h->value_len);
        evbuffer_add(o, "\r\n", 2);
    }
    evbuffer_add(o, "\r\n", 2);
}
