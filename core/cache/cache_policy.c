/*
 * cache_policy.c -- RFC 9111's rules as functions (see cache_policy.h).
 */
#include "cache/cache_policy.h"
#include "base/headers.h"

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

static void cc_init(moxy_cc_t *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->max_stale = cc->min_fresh = cc->swr = cc->sie = -1;
}

/* Directive d (dl bytes, any case) into cc.  flag: for a directive that
 * takes no argument, whether it is set (an argument -- field names -- is
 * read as the directive without one: the whole response, stricter);
 * delta: the argument of one that takes seconds, -1 when absent or not a
 * delta-seconds; -2: leave those as they are. */
static void cc_apply(moxy_cc_t *cc, const char *d, size_t dl, int flag, double delta)
{
    if (delta < -1.5) {
        if (MOXY_STRIEQ_LIT(d, dl, "max-age") || MOXY_STRIEQ_LIT(d, dl, "s-maxage") ||
            MOXY_STRIEQ_LIT(d, dl, "min-fresh") || MOXY_STRIEQ_LIT(d, dl, "stale-while-revalidate") ||
            MOXY_STRIEQ_LIT(d, dl, "stale-if-error"))
            return;
    }
    if (MOXY_STRIEQ_LIT(d, dl, "no-store")) cc->no_store |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "no-cache")) cc->no_cache |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "private")) cc->private_ |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "public")) cc->public_ |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "must-revalidate") || MOXY_STRIEQ_LIT(d, dl, "proxy-revalidate"))
        cc->must_revalidate |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "only-if-cached")) cc->only_if_cached |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "must-understand")) cc->must_understand |= flag;
    else if (MOXY_STRIEQ_LIT(d, dl, "max-age")) cc->max_age = delta;
    else if (MOXY_STRIEQ_LIT(d, dl, "s-maxage")) cc->s_maxage = delta;
    else if (MOXY_STRIEQ_LIT(d, dl, "min-fresh")) cc->min_fresh = delta;
    else if (MOXY_STRIEQ_LIT(d, dl, "stale-while-revalidate")) cc->swr = delta;
    else if (MOXY_STRIEQ_LIT(d, dl, "stale-if-error")) cc->sie = delta;
}

/* Parse every field called name in hs into cc (directives of all of them). */
void moxy_cache_cc_parse(const moxy_headers_t *hs, const char *name, size_t nlen, moxy_cc_t *cc)
{
    cc_init(cc);
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
            if (MOXY_STRIEQ_LIT(d, dl, "max-stale")) cc->max_stale = a ? moxy_cache_delta_seconds(a, al) : 1e12;
            else cc_apply(cc, d, dl, 1, a ? moxy_cache_delta_seconds(a, al) : -1);
            if (p < end && *p == ',') p++;
        }
    }
}

/* --- targeted fields (RFC 9213): Structured Field Dictionaries (RFC 8941 3.2) --- */

typedef struct {
    const char *p, *end;
} sf_t;

static int sf_key_char(int c, int first)
{
    return (c >= 'a' && c <= 'z') || c == '*' ||
           (!first && ((c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'));
}

static int sf_tchar(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~:/", c));
}

/* A key; its length, 0 when there is none. */
static size_t sf_key(sf_t *s)
{
    const char *k = s->p;
    if (s->p >= s->end || !sf_key_char(*s->p, 1)) return 0;
    while (s->p < s->end && sf_key_char(*s->p, 0)) s->p++;
    return (size_t)(s->p - k);
}

enum { SF_BAD = 0, SF_INT, SF_TRUE, SF_FALSE, SF_OTHER };

/* A bare item: its type; *num its value for an integer. */
static int sf_item(sf_t *s, double *num)
{
    const char *p = s->p, *end = s->end;
    if (p >= end) return SF_BAD;
    if (*p == '-' || (*p >= '0' && *p <= '9')) { /* integer or decimal */
        int neg = *p == '-', n = 0, frac = -1;
        if (neg) p++;
        double v = 0;
        for (; p < end && ((*p >= '0' && *p <= '9') || (*p == '.' && frac < 0)); p++) {
            if (*p == '.') {
                if (n == 0 || n > 12) return SF_BAD;
                frac = 0;
            } else if (frac >= 0) {
                if (++frac > 3) return SF_BAD;
            } else {
                if (++n > 15) return SF_BAD;
                v = v * 10 + (*p - '0');
            }
        }
        if (n == 0 || frac == 0) return SF_BAD;
        s->p = p;
        *num = neg ? -v : v;
        return frac < 0 ? SF_INT : SF_OTHER;
    }
    if (*p == '"') { /* string */
        for (p++; p < end && *p != '"'; p++) {
            if (*p == '\\') {
                if (++p >= end || (*p != '"' && *p != '\\')) return SF_BAD;
            } else if (*p < 0x20 || *p > 0x7e) {
                return SF_BAD;
            }
        }
        if (p >= end) return SF_BAD;
        s->p = p + 1;
        return SF_OTHER;
    }
    if (*p == ':') { /* byte sequence */
        for (p++; p < end && *p != ':'; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '+' ||
                  *p == '/' || *p == '='))
                return SF_BAD;
        if (p >= end) return SF_BAD;
        s->p = p + 1;
        return SF_OTHER;
    }
    if (*p == '?') { /* boolean */
        if (p + 1 >= end || (p[1] != '0' && p[1] != '1')) return SF_BAD;
        s->p = p + 2;
        return p[1] == '1' ? SF_TRUE : SF_FALSE;
    }
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '*') { /* token */
        while (p < end && sf_tchar(*p)) p++;
        s->p = p;
        return SF_OTHER;
    }
    return SF_BAD;
}

/* Parameters (";key[=item]"...): 1, or 0 when malformed. */
static int sf_params(sf_t *s)
{
    while (s->p < s->end && *s->p == ';') {
        s->p++;
        while (s->p < s->end && *s->p == ' ') s->p++;
        if (!sf_key(s)) return 0;
        double n;
        if (s->p < s->end && *s->p == '=') {
            s->p++;
            if (sf_item(s, &n) == SF_BAD) return 0;
        }
    }
    return 1;
}

/* A member's value after its key: SF_TRUE for none (a bare key), else the
 * item's type (an inner list is SF_OTHER).  SF_BAD when malformed. */
static int sf_value(sf_t *s, double *num)
{
    int type = SF_TRUE;
    if (s->p < s->end && *s->p == '=') {
        s->p++;
        if (s->p < s->end && *s->p == '(') { /* inner list */
            s->p++;
            for (;;) {
                while (s->p < s->end && *s->p == ' ') s->p++;
                if (s->p >= s->end) return SF_BAD;
                if (*s->p == ')') {
                    s->p++;
                    break;
                }
                double n;
                if (sf_item(s, &n) == SF_BAD || !sf_params(s)) return SF_BAD;
                if (s->p < s->end && *s->p != ' ' && *s->p != ')') return SF_BAD;
            }
            type = SF_OTHER;
        } else if ((type = sf_item(s, num)) == SF_BAD) {
            return SF_BAD;
        }
    }
    return sf_params(s) ? type : SF_BAD;
}

/* The dictionary v (n bytes) into cc: 1, or 0 when it is not a valid
 * dictionary (then none of it counts).  Directives of the wrong type are
 * ignored (RFC 9213 2.1). */
static int sf_dict_cc(const char *v, size_t n, moxy_cc_t *cc)
{
    sf_t s = {v, v + n};
    while (s.p < s.end && *s.p == ' ') s.p++;
    while (s.p < s.end) {
        const char *k = s.p;
        size_t kl = sf_key(&s);
        double num = -1;
        int type = kl ? sf_value(&s, &num) : SF_BAD;
        if (type == SF_BAD) return 0;
        if (type == SF_INT) /* seconds; a negative number is no delta-seconds */
            cc_apply(cc, k, kl, 0, num >= 0 ? MOXY_MIN(num, 2147483648.0) : -1);
        else /* a flag: set unless ?0; an argument of the wrong type is ignored */
            cc_apply(cc, k, kl, type != SF_FALSE, -2);
        while (s.p < s.end && (*s.p == ' ' || *s.p == '\t')) s.p++;
        if (s.p >= s.end) break;
        if (*s.p != ',') return 0;
        s.p++;
        while (s.p < s.end && (*s.p == ' ' || *s.p == '\t')) s.p++;
        if (s.p >= s.end) return 0; /* a trailing comma */
    }
    return 1;
}

int moxy_cache_response_cc(const moxy_headers_t *hs, char *const *targeted, int ntargeted, moxy_cc_t *cc)
{
    for (int t = 0; t < ntargeted; t++) {
        size_t nl = strlen(targeted[t]);
        int i = moxy_headers_find(hs, targeted[t], nl, 0);
        if (i < 0) continue;
        /* its lines joined by ", " (RFC 8941 3.2), then parsed as one */
        char buf[2048];
        size_t len = 0;
        int fits = 1;
        for (; i >= 0 && fits; i = moxy_headers_find(hs, targeted[t], nl, (uint32_t)i + 1)) {
            const moxy_header_t *h = &hs->h[i];
            if (len + h->value_len + 2 > sizeof(buf)) fits = 0;
            else {
                if (len) {
                    memcpy(buf + len, ", ", 2);
                    len += 2;
                }
                memcpy(buf + len, h->value, h->value_len);
                len += h->value_len;
            }
        }
        cc_init(cc);
        if (fits && sf_dict_cc(buf, len, cc)) return 1;
    }
    moxy_cache_cc_parse(hs, "Cache-Control", 13, cc);
    return 0;
}

/* --- HTTP-date (RFC 9110 5.6.7), strictly: a malformed Expires means
 * "already expired", so a loose parse would keep what must not be kept --- */

static const char *const WDAY[] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
static const char MONTHS[] = "janfebmaraprmayjunjulaugsepoctnovdec";

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* The value of exactly n digits at p, or -1. */
static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The month (0-11) named by the 3 letters at p (any case), or -1. */
static int month3(const char *p)
{
    for (int m = 0; m < 12; m++)
        if (lower(p[0]) == MONTHS[3 * m] && lower(p[1]) == MONTHS[3 * m + 1] && lower(p[2]) == MONTHS[3 * m + 2])
            return m;
    return -1;
}

/* 1 when the n letters at p are a day name, short (n = 3) or long. */
static int day_name(const char *p, size_t n)
{
    for (int d = 0; d < 7; d++)
        if (n == 3 ? moxy_strieq(p, 3, WDAY[d], 3) : moxy_strieq(p, n, WDAY[d], strlen(WDAY[d]))) return 1;
    return 0;
}

/* "HH:MM:SS" at p into tm: 1, or 0 when malformed. */
static int time_of_day(const char *p, struct tm *tm)
{
    tm->tm_hour = digits(p, 2);
    tm->tm_min = digits(p + 3, 2);
    tm->tm_sec = digits(p + 6, 2);
    return p[2] == ':' && p[5] == ':' && tm->tm_hour >= 0 && tm->tm_hour <= 23 && tm->tm_min >= 0 &&
           tm->tm_min <= 59 && tm->tm_sec >= 0 && tm->tm_sec <= 60;
}

static int gmt(const char *p)
{
    return lower(p[0]) == 'g' && lower(p[1]) == 'm' && lower(p[2]) == 't';
}

/* An HTTP-date in one of its three forms, or -1:
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT" (a two-digit year more
 *                than 50 years ahead is in the past century: RFC 9110 5.6.7)
 *   asctime      "Sun Nov  6 08:49:37 1994"
 * Names are matched in any case; the rest exactly as written. */
static double http_date(const char *p, size_t n, double now)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *comma = memchr(p, ',', n);
    if (n == 29 && comma == p + 3) { /* IMF-fixdate */
        if (!day_name(p, 3) || p[4] != ' ' || p[7] != ' ' || p[11] != ' ' || p[16] != ' ' || p[25] != ' ' ||
            !gmt(p + 26))
            return -1;
        tm.tm_mday = digits(p + 5, 2);
        tm.tm_mon = month3(p + 8);
        tm.tm_year = digits(p + 12, 4) - 1900;
        if (!time_of_day(p + 17, &tm)) return -1;
    } else if (comma && comma > p + 3 && n == (size_t)(comma - p) + 24) { /* RFC 850 */
        const char *d = comma + 2;
        if (!day_name(p, (size_t)(comma - p)) || comma[1] != ' ' || d[2] != '-' || d[6] != '-' || d[9] != ' ' ||
            d[18] != ' ' || !gmt(d + 19))
            return -1;
        tm.tm_mday = digits(d, 2);
        tm.tm_mon = month3(d + 3);
        int yy = digits(d + 7, 2);
        if (yy < 0 || !time_of_day(d + 10, &tm)) return -1;
        time_t t = (time_t)now;
        struct tm nowtm;
        gmtime_r(&t, &nowtm);
        int year = (nowtm.tm_year + 1900) / 100 * 100 + yy;
        if (year > nowtm.tm_year + 1900 + 50) year -= 100;
        tm.tm_year = year - 1900;
    } else if (n == 24 && !comma) { /* asctime */
        if (!day_name(p, 3) || p[3] != ' ' || p[7] != ' ' || p[10] != ' ' || p[19] != ' ') return -1;
        tm.tm_mon = month3(p + 4);
        tm.tm_mday = p[8] == ' ' ? digits(p + 9, 1) : digits(p + 8, 2);
        tm.tm_year = digits(p + 20, 4) - 1900;
        if (!time_of_day(p + 11, &tm)) return -1;
    } else {
        return -1;
    }
    if (tm.tm_mon < 0 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_year < 0) return -1;
    return (double)timegm(&tm);
}

double moxy_cache_date(const moxy_header_t *h)
{
    if (!h) return -1;
    return http_date(h->value, h->value_len, (double)time(NULL));
}

double moxy_cache_age(const moxy_headers_t *hs)
{
    const moxy_header_t *h = moxy_headers_get(hs, "Age", 3);
    if (!h) return 0;
    /* the first member of the first line: digits, then the end, a list
     * separator or a parameter; anything else is no Age at all */
    const char *p = h->value, *end = p + h->value_len;
    double v = 0;
    const char *d = p;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    if (p == d || (p < end && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')) return 0;
    return v > 2147483648.0 ? 2147483648.0 : v;
}

/* 1 for the bytes a host keeps as they are in a key: those of a reg-name
 * (RFC 3986 3.2.2: unreserved, sub-delims), of an IP-literal ('[', ']',
 * ':', hex digits) and of a port.  Everything else ('/', '?', '#', '%',
 * '@', spaces, controls, bytes >= 0x80) is percent-encoded. */
static int host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~!$&'()*+,;=:[]", c));
}

/* The default key of host and uri (ulen bytes, the path its first plen;
 * the path starts with '/'): "http://" + the host, lower case, its bytes
 * that a host may not hold percent-encoded + the path, then the query's
 * parameters sorted (so that ?a=1&b=2 and ?b=2&a=1 share an object).
 * Injective: the encoded host holds no '/', so the key's first '/' after
 * "http://" ends it, and '%' itself is encoded -- a Host of
 * "shop.example/cc/login" cannot take the key of "shop.example" and
 * "/cc/login/...".  In pool; NULL when out of memory. */
char *moxy_cache_build_key(moxy_pool_t *pool, int https, const char *host, const char *uri, size_t ulen,
                           size_t plen, uint32_t *klen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t hl = strlen(host), henc = 0;
    for (size_t i = 0; i < hl; i++) henc += host_char((unsigned char)host[i]) ? 1 : 3;
    /* the query's parameters, rejoined, take at most the bytes they took */
    size_t slen = https ? 8 : 7;
    size_t cap = slen + henc + ulen + 1;
    if (cap > UINT32_MAX) return NULL;
    char *k = moxy_palloc(pool, cap);
    if (!k) return NULL;
    char *p = k;
    memcpy(p, https ? "https://" : "http://", slen);
    p += slen;
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)host[i];
        if (host_char(c)) {
            *p++ = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        } else {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        }
    }
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

/* Where vary_values writes: it counts every byte, and stores those that fit
 * in cap (none when out is NULL), so that one pass sizes and the next one
 * fills the same bytes. */
typedef struct {
    char *out;
    size_t len, cap;
} vwriter_t;

static void vput(vwriter_t *w, char c)
{
    if (w->len < w->cap) w->out[w->len] = c;
    w->len++;
}

/* The values of the fields named by vary into w (see moxy_cache_vary_values);
 * the number of names, or -1 past MOXY_CACHE_VARY_NAMES. */
static int vary_write(vwriter_t *w, const moxy_headers_t *req, const char *vary)
{
    int names = 0;
    for (const char *v = vary;;) {
        while (*v == ',' || *v == ' ' || *v == '\t') v++;
        if (!*v) break;
        const char *e = v;
        while (*e && *e != ',' && *e != ' ' && *e != '\t') e++;
        size_t nl = (size_t)(e - v);
        if (++names > MOXY_CACHE_VARY_NAMES) return -1;
        if (names > 1) vput(w, '\n');
        /* lists compare without the whitespace around their commas (and
         * lines joined the same way); language and coding tokens in any case */
        int fold = MOXY_STRIEQ_LIT(v, nl, "accept-language") || MOXY_STRIEQ_LIT(v, nl, "accept-encoding");
        int first = 1;
        for (uint32_t i = 0; i < req->n; i++) {
            const moxy_header_t *h = &req->h[i];
            if (!moxy_strieq(h->name, h->name_len, v, nl)) continue;
            if (!first) vput(w, ',');
            first = 0;
            /* each member of the list trimmed, the members joined by ',' */
            const char *a = h->value, *end = h->value + h->value_len;
            for (;;) {
                const char *b = memchr(a, ',', (size_t)(end - a));
                const char *me = b ? b : end;
                while (a < me && (*a == ' ' || *a == '\t')) a++;
                while (me > a && (me[-1] == ' ' || me[-1] == '\t')) me--;
                for (; a < me; a++) vput(w, fold && *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a);
                if (!b) break;
                vput(w, ',');
                a = b + 1;
            }
        }
        v = e;
    }
    return names;
}

/* The request's values of the fields named by vary (lower case names,
 * separated by commas and spaces), "\n" between fields, each field's lines
 * and list members joined with "," and trimmed.  Sized by a first pass that
 * counts what the second copies: a field named twice is copied twice.
 * Request pool; NULL when vary names more than MOXY_CACHE_VARY_NAMES
 * fields, when the values would pass MOXY_CACHE_VARY_VALUES_MAX bytes, or
 * out of memory. */
char *moxy_cache_vary_values(moxy_pool_t *pool, const moxy_headers_t *req, const char *vary)
{
    vwriter_t w = {NULL, 0, 0};
    if (vary_write(&w, req, vary) < 0 || w.len > MOXY_CACHE_VARY_VALUES_MAX) return NULL;
    size_t need = w.len;
    w = (vwriter_t){moxy_palloc(pool, need + 1), 0, need};
    if (!w.out) return NULL;
    vary_write(&w, req, vary);
    w.out[need] = '\0';
    return w.out;
}

/* The response's Vary names, lower case, each once, ", "-separated, into
 * *out (malloc'ed; NULL: no Vary), or "*" (never served from cache).
 * MOXY_DECLINED past MOXY_CACHE_VARY_NAMES names or MOXY_CACHE_VARY_BYTES
 * bytes; MOXY_ERROR when out of memory. */
int moxy_cache_vary_of(const moxy_headers_t *hs, char **out)
{
    char buf[MOXY_CACHE_VARY_BYTES + 1];
    size_t len = 0, off[MOXY_CACHE_VARY_NAMES], nlen[MOXY_CACHE_VARY_NAMES];
    int n = 0, over = 0;
    *out = NULL;
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        if (!MOXY_STRIEQ_LIT(h->name, h->name_len, "vary")) continue;
        for (const char *a = h->value, *end = h->value + h->value_len; a < end;) {
            while (a < end && (*a == ' ' || *a == '\t' || *a == ',')) a++;
            const char *b = a;
            while (b < end && *b != ',' && *b != ' ' && *b != '\t') b++;
            size_t tl = (size_t)(b - a);
            if (tl == 1 && *a == '*') { /* a "*" anywhere: no request matches (RFC 9111 4.1) */
                *out = strdup("*");
                return *out ? MOXY_OK : MOXY_ERROR;
            }
            int seen = 0; /* a name repeated (in any case) counts once */
            for (int j = 0; j < n && !seen; j++) seen = moxy_strieq(buf + off[j], nlen[j], a, tl);
            if (tl && !seen && !over) {
                size_t sep = len ? 2 : 0;
                if (n == MOXY_CACHE_VARY_NAMES || len + sep + tl > MOXY_CACHE_VARY_BYTES) {
                    over = 1; /* go on: a "*" further on still says more */
                } else {
                    memcpy(buf + len, ", ", sep);
                    len += sep;
                    off[n] = len;
                    nlen[n++] = tl;
                    for (size_t c = 0; c < tl; c++) buf[len++] = (char)(a[c] >= 'A' && a[c] <= 'Z' ? a[c] + 32 : a[c]);
                }
            }
            a = b;
        }
    }
    if (over) return MOXY_DECLINED;
    if (len == 0) return MOXY_OK;
    buf[len] = '\0';
    *out = strdup(buf);
    return *out ? MOXY_OK : MOXY_ERROR;
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
        /* an invalid Expires, or several, is in the past (RFC 9111 5.3) */
        double e = moxy_headers_find(hs, "Expires", 7, (uint32_t)(expires - hs->h) + 1) < 0 ? moxy_cache_date(expires) : -1;
        return e < 0 ? 0 : MOXY_MAX(0, e - date);
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

