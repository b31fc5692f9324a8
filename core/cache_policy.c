/*
 * cache_policy.c -- RFC 9111's rules as functions (see cache_policy.h).
 */
#include "cache_policy.h"
#include "headers.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* A delta-seconds argument (RFC 9111 1.2.2): digits, or -1 when malformed. */
double moxy_cache_delta_seconds(const char *p, size_t n)
{
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') { /* quoted: tolerated (RFC 9111 5.2) */
        p++;
        n -= 2;
    }
    if (n == 0) return -1;
    double v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v > 2147483648.0 ? 2147483648.0 : v; /* RFC 9111 1.2.2: cap at 2^31 */
}

/* Parse every field called name in hs into cc (directives of all of them). */
void moxy_cache_cc_parse(const moxy_headers_t *hs, const char *name, size_t nlen, moxy_cc_t *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->max_stale = cc->min_fresh = cc->swr = cc->sie = -1;
    for (int i = moxy_headers_find(hs, name, nlen, 0); i >= 0; i = moxy_headers_find(hs, name, nlen, (uint32_t)i + 1)) {
        const char *p = hs->h[i].value, *end = p + hs->h[i].value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
            const char *d = p;
            while (p < end && *p != ',' && *p != '=') p++;
            size_t dl = (size_t)(p - d);
            while (dl && (d[dl - 1] == ' ' || d[dl - 1] == '\t')) dl--;
            const char *a = NULL;
            size_t al = 0;
            if (p < end && *p == '=') {
                p++;
                while (p < end && (*p == ' ' || *p == '\t')) p++;
                a = p;
                if (p < end && *p == '"') { /* quoted-string, may hold commas */
                    p++;
                    while (p < end && *p != '"') p += *p == '\\' && p + 1 < end ? 2 : 1;
                    if (p < end) p++;
                } else {
                    while (p < end && *p != ',') p++;
                }
                al = (size_t)(p - a);
                while (al && (a[al - 1] == ' ' || a[al - 1] == '\t')) al--;
            }
            if (MOXY_STRIEQ_LIT(d, dl, "no-store")) cc->no_store = 1;
            else if (MOXY_STRIEQ_LIT(d, dl, "no-cache")) cc->no_cache = 1; /* with field names: the whole response (stricter) */
            else if (MOXY_STRIEQ_LIT(d, dl, "private")) cc->private_ = 1;
            else if (MOXY_STRIEQ_LIT(d, dl, "public")) cc->public_ = 1;
            else if (MOXY_STRIEQ_LIT(d, dl, "must-revalidate") || MOXY_STRIEQ_LIT(d, dl, "proxy-revalidate"))
                cc->must_revalidate = 1;
            else if (MOXY_STRIEQ_LIT(d, dl, "only-if-cached")) cc->only_if_cached = 1;
            else if (MOXY_STRIEQ_LIT(d, dl, "max-age")) cc->max_age = a ? moxy_cache_delta_seconds(a, al) : -1;
            else if (MOXY_STRIEQ_LIT(d, dl, "s-maxage")) cc->s_maxage = a ? moxy_cache_delta_seconds(a, al) : -1;
            else if (MOXY_STRIEQ_LIT(d, dl, "max-stale")) cc->max_stale = a ? moxy_cache_delta_seconds(a, al) : 1e12;
            else if (MOXY_STRIEQ_LIT(d, dl, "min-fresh")) cc->min_fresh = a ? moxy_cache_delta_seconds(a, al) : -1;
            else if (MOXY_STRIEQ_LIT(d, dl, "stale-while-revalidate")) cc->swr = a ? moxy_cache_delta_seconds(a, al) : -1;
            else if (MOXY_STRIEQ_LIT(d, dl, "stale-if-error")) cc->sie = a ? moxy_cache_delta_seconds(a, al) : -1;
            if (p < end && *p == ',') p++;
        }
    }
}

/* An HTTP-date (RFC 9110 5.6.7: IMF-fixdate, RFC 850, asctime) as Unix
 * time, or -1 when it is not one. */
double moxy_cache_date(const moxy_header_t *h)
{
    if (!h || h->value_len >= 64) return -1;
    char buf[64];
    memcpy(buf, h->value, h->value_len);
    buf[h->value_len] = '\0';
    static const char *const fmts[] = {"%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(fmts); i++) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(buf, fmts[i], &tm);
        if (end && *end == '\0') return (double)timegm(&tm);
    }
    return -1;
}

/* The default key of host and uri (ulen bytes, the path its first plen):
 * http://host (lower case) + path, then the query's parameters sorted (so
 * that ?a=1&b=2 and ?b=2&a=1 share an object).  In pool; NULL when out of
 * memory. */
char *moxy_cache_build_key(moxy_pool_t *pool, const char *host, const char *uri, size_t ulen, size_t plen,
                       uint32_t *klen)
{
    size_t hl = strlen(host);
    char *k = moxy_palloc(pool, 7 + hl + ulen + 2);
    if (!k) return NULL;
    char *p = k;
    memcpy(p, "http://", 7);
    p += 7;
    for (size_t i = 0; i < hl; i++) *p++ = (char)((host[i] >= 'A' && host[i] <= 'Z') ? host[i] + 32 : host[i]);
    memcpy(p, uri, plen);
    p += plen;
    if (plen + 1 < ulen) { /* a query */
        const char *q = uri + plen + 1, *qe = uri + ulen;
        /* up to 64 parameters sorted; more: kept in their order */
        const char *ps[64];
        size_t pl[64], np = 0;
        int sortable = 1;
        for (const char *s = q; s < qe && sortable;) {
            const char *e = memchr(s, '&', (size_t)(qe - s));
            if (!e) e = qe;
            if (e > s) {
                if (np == MOXY_ARRAY_LEN(ps)) sortable = 0;
                else {
                    ps[np] = s;
                    pl[np++] = (size_t)(e - s);
                }
            }
            s = e + 1;
        }
        *p++ = '?';
        if (!sortable) {
            memcpy(p, q, (size_t)(qe - q));
            p += qe - q;
        } else {
            for (size_t i = 1; i < np; i++) { /* insertion sort: few parameters */
                for (size_t j = i; j > 0; j--) {
                    size_t m = MOXY_MIN(pl[j - 1], pl[j]);
                    int c = memcmp(ps[j - 1], ps[j], m);
                    if (c < 0 || (c == 0 && pl[j - 1] <= pl[j])) break;
                    const char *tp = ps[j];
                    size_t tl = pl[j];
                    ps[j] = ps[j - 1];
                    pl[j] = pl[j - 1];
                    ps[j - 1] = tp;
                    pl[j - 1] = tl;
                }
            }
            for (size_t i = 0; i < np; i++) {
                if (i) *p++ = '&';
                memcpy(p, ps[i], pl[i]);
                p += pl[i];
            }
        }
    }
    *p = '\0';
    *klen = (uint32_t)(p - k);
    return k;
}

/* The request's values of the fields named by vary (", "-separated lower
 * case names), "\n"-separated, each field's values joined with ", " and
 * trimmed.  Request pool; NULL when out of memory. */
char *moxy_cache_vary_values(moxy_pool_t *pool, const moxy_headers_t *req, const char *vary)
{
    size_t cap = 1;
    for (uint32_t i = 0; i < req->n; i++) cap += req->h[i].value_len + 3;
    cap += strlen(vary);
    char *out = moxy_palloc(pool, cap), *p = out;
    if (!out) return NULL;
    for (const char *v = vary; *v;) {
        const char *e = strchr(v, ',');
        size_t nl = e ? (size_t)(e - v) : strlen(v);
        if (p > out) *p++ = '\n';
        int first = 1;
        for (uint32_t i = 0; i < req->n; i++) {
            const moxy_header_t *h = &req->h[i];
            if (!moxy_strieq(h->name, h->name_len, v, nl)) continue;
            const char *a = h->value, *b = h->value + h->value_len;
            while (a < b && (*a == ' ' || *a == '\t')) a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
            if (!first) {
                memcpy(p, ", ", 2);
                p += 2;
            }
            memcpy(p, a, (size_t)(b - a));
            p += b - a;
            first = 0;
        }
        v += nl;
        while (*v == ',' || *v == ' ') v++;
    }
    *p = '\0';
    return out;
}

/* The response's Vary names, lower case, ", "-separated (NULL: no Vary),
 * or "*" (never served from cache). */
char *moxy_cache_vary_of(const moxy_headers_t *hs)
{
    size_t cap = 1;
    for (uint32_t i = 0; i < hs->n; i++)
        if (MOXY_STRIEQ_LIT(hs->h[i].name, hs->h[i].name_len, "vary")) cap += hs->h[i].value_len + 2;
    if (cap == 1) return NULL;
    char *out = malloc(cap), *p = out;
    if (!out) return NULL;
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        if (!MOXY_STRIEQ_LIT(h->name, h->name_len, "vary")) continue;
        for (const char *a = h->value, *end = h->value + h->value_len; a < end;) {
            while (a < end && (*a == ' ' || *a == '\t' || *a == ',')) a++;
            const char *b = a;
            while (b < end && *b != ',' && *b != ' ' && *b != '\t') b++;
            if (b > a) {
                if (p > out) {
                    memcpy(p, ", ", 2);
                    p += 2;
                }
                for (const char *c = a; c < b; c++) *p++ = (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c);
            }
            a = b;
        }
    }
    *p = '\0';
    if (p == out) {
        free(out);
        return NULL;
    }
    return out;
}

/* Statuses a cache may store with heuristic freshness (RFC 9110 15.1). */
int moxy_cache_heuristic_status(int s)
{
    return s == 200 || s == 203 || s == 204 || s == 206 || s == 300 || s == 301 || s == 308 || s == 404 ||
           s == 405 || s == 410 || s == 414 || s == 501;
}

/* The freshness lifetime (RFC 9111 4.2.1) of a response of status with
 * head hs (cc parsed from it, date its Date or when it came): s-maxage,
 * max-age, Expires - Date, or the heuristic; -1: none. */
double moxy_cache_lifetime(const moxy_headers_t *hs, int status, const moxy_cc_t *cc, double date)
{
    const moxy_header_t *expires = moxy_headers_get(hs, "Expires", 7);
    const moxy_header_t *lm = moxy_headers_get(hs, "Last-Modified", 13);
    if (cc->s_maxage >= 0) return cc->s_maxage;
    if (cc->max_age >= 0) return cc->max_age;
    if (expires) {
        double e = moxy_cache_date(expires);
        return e < 0 ? 0 : MOXY_MAX(0, e - date); /* an invalid Expires is in the past */
    }
    if (lm && (moxy_cache_heuristic_status(status) || cc->public_)) {
        double m = moxy_cache_date(lm);
        if (m >= 0 && m < date) return (date - m) / 10; /* the 10% rule (RFC 9111 4.2.2) */
    }
    return -1;
}

/* 1 when a client's conditional request is satisfied by o: 304. */
int moxy_cache_not_modified(const moxy_headers_t *req, const moxy_cache_obj_t *o)
{
    const moxy_header_t *inm = moxy_headers_get(req, "If-None-Match", 13);
    if (inm) {
        if (!o->etag) return 0;
        /* weak comparison (RFC 9110 13.1.2): W/ prefixes ignored */
        const char *tag = o->etag;
        if (tag[0] == 'W' && tag[1] == '/') tag += 2;
        size_t tl = strlen(tag);
        for (const char *p = inm->value, *end = inm->value + inm->value_len; p < end;) {
            while (p < end && (*p == ' ' || *p == ',' || *p == '\t')) p++;
            if (p < end && *p == '*') return 1;
            if (end - p >= 2 && p[0] == 'W' && p[1] == '/') p += 2;
            const char *e = p;
            if (e < end && *e == '"') {
                e++;
                while (e < end && *e != '"') e++;
                if (e < end) e++;
            } else {
                while (e < end && *e != ',') e++;
            }
            if ((size_t)(e - p) == tl && memcmp(p, tag, tl) == 0) return 1;
            p = e;
        }
        return 0;
    }
    const moxy_header_t *ims = moxy_headers_get(req, "If-Modified-Since", 17);
    if (ims && o->lm_time >= 0) {
        double since = moxy_cache_date(ims);
        return since >= 0 && o->lm_time <= since;
    }
    return 0;
}

/* A single byte range of r (RFC 9110 14.1.2) over a body of len bytes:
 * 1 and [*from, *to] when it asks for one that is satisfiable, 0 when it
 * asks for none (no Range, not bytes, several ranges, or If-Range does not
 * match o: the whole body goes), -1 when unsatisfiable (416). */
int moxy_cache_byte_range(const moxy_headers_t *req, const moxy_cache_obj_t *o, uint64_t len, uint64_t *from,
                          uint64_t *to)
{
    const moxy_header_t *h = moxy_headers_get(req, "Range", 5);
    if (!h || h->value_len < 7 || !moxy_strieq(h->value, 6, "bytes=", 6)) return 0;
    if (memchr(h->value, ',', h->value_len)) return 0; /* several ranges: the whole body */
    const moxy_header_t *ir = moxy_headers_get(req, "If-Range", 8);
    if (ir) { /* only a strong validator that matches keeps the range */
        int etag_ok = o->etag && o->etag[0] == '"' && ir->value_len == strlen(o->etag) &&
                      memcmp(ir->value, o->etag, ir->value_len) == 0;
        int date_ok = o->last_modified && ir->value_len == strlen(o->last_modified) &&
                      memcmp(ir->value, o->last_modified, ir->value_len) == 0;
        if (!etag_ok && !date_ok) return 0;
    }
    const char *p = h->value + 6, *end = h->value + h->value_len;
    while (p < end && *p == ' ') p++;
    uint64_t a = 0, b = 0;
    int has_a = 0, has_b = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (a > UINT64_MAX / 10 - 10) return 0;
        a = a * 10 + (uint64_t)(*p++ - '0');
        has_a = 1;
    }
    if (p >= end || *p != '-') return 0;
    p++;
    while (p < end && *p >= '0' && *p <= '9') {
        if (b > UINT64_MAX / 10 - 10) return 0;
        b = b * 10 + (uint64_t)(*p++ - '0');
        has_b = 1;
    }
    while (p < end && *p == ' ') p++;
    if (p != end || (!has_a && !has_b)) return 0; /* malformed: ignored */
    if (!has_a) { /* a suffix: the last b bytes */
        if (b == 0) return -1;
        *from = b >= len ? 0 : len - b;
        *to = len - 1;
        return len ? 1 : -1;
    }
    if (has_b && b < a) return 0;
    if (a >= len) return -1;
    *from = a;
    *to = has_b && b < len ? b : len - 1;
    return 1;
}

