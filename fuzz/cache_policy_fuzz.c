/*
 * cache_policy_fuzz.c -- every parser of core/cache/cache_policy.c that reads
 * bytes an origin or a client chose, and the cache's key hash.
 *
 * The input's first byte picks the target; the rest is its text.  Most
 * targets read it as a header list, one "Name:value" per line ('\n'), each
 * name and value in an allocation of exactly its size (no NUL: ASan sees a
 * read past a field's end):
 *
 *   0 request Cache-Control         5 Vary values for a Vary list of its own
 *   1 response Cache-Control and       (the first line) and the headers after
 *     targeted fields (RFC 9213)   6 Range / If-Range over a stored object
 *   2 HTTP-dates (three forms)     7 If-None-Match / If-Modified-Since
 *   3 Age, delta-seconds           8 the default key (host, then the target)
 *   4 Vary names, then the values  9 freshness lifetime
 *     of the same list's fields    10 the key hash
 *
 * Invariants: durations are -1 or within [0, 2^31] (max-stale: 1e12 for
 * "any"); a date is -1 or a time that prints back as the same IMF-fixdate;
 * Vary names are lower case, distinct, within MOXY_CACHE_VARY_NAMES and
 * _BYTES; Vary values equal a plain reference implementation's, within
 * MOXY_CACHE_VARY_VALUES_MAX; a range lies within the body; the key fits
 * the bytes allocated for it and gives back its host (lower case) and path
 * when decoded -- no two hosts share a key; the hash is SipHash-1-3 (known
 * answers, checked once at start) and stable within the process.
 */
#include "fuzz.h"
#include "cache/cache_policy.h"
#include "base/headers.h"
#include "base/siphash.h"

#include <assert.h>
#include <stdio.h>
#include <time.h>

#define MAX_HEADERS 128

typedef struct {
    moxy_headers_t hs;
    moxy_header_t h[MAX_HEADERS];
} hlist_t;

static char *dup_exact(const char *p, size_t n)
{
    char *d = malloc(n ? n : 1);
    if (!d) abort();
    memcpy(d, p, n);
    return d;
}

/* The "Name:value" lines of the n bytes at p into l (value trimmed of one
 * leading space, as a parser would; empty names skipped). */
static void hlist_parse(hlist_t *l, const char *p, size_t n)
{
    l->hs.h = l->h;
    l->hs.n = 0;
    l->hs.cap = MAX_HEADERS;
    for (const char *end = p + n; p < end && l->hs.n < MAX_HEADERS;) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        const char *colon = memchr(p, ':', (size_t)(e - p));
        /* a parser lets no NUL into a field */
        if (colon && colon > p && !memchr(p, '\0', (size_t)(e - p))) {
            const char *v = colon + 1;
            if (v < e && *v == ' ') v++;
            moxy_header_t *h = &l->h[l->hs.n++];
            h->name_len = (uint32_t)(colon - p);
            h->value_len = (uint32_t)(e - v);
            h->name = dup_exact(p, h->name_len);
            h->value = dup_exact(v, h->value_len);
            h->kind = moxy_header_kind(h->name, h->name_len);
        }
        p = e + 1;
    }
}

static void hlist_free(hlist_t *l)
{
    for (uint32_t i = 0; i < l->hs.n; i++) {
        free(l->h[i].name);
        free(l->h[i].value);
    }
    l->hs.n = 0;
}

static void check_delta(double d)
{
    assert(d == -1 || (d >= 0 && d <= 2147483648.0));
}

static void check_cc(const moxy_cc_t *cc)
{
    check_delta(cc->max_age);
    check_delta(cc->s_maxage);
    check_delta(cc->min_fresh);
    check_delta(cc->swr);
    check_delta(cc->sie);
    assert(cc->max_stale == 1e12 || cc->max_stale == -1 || (cc->max_stale >= 0 && cc->max_stale <= 2147483648.0));
}

/* A date moxy_cache_date accepted prints back, as an IMF-fixdate, to a
 * string that parses to the same time. */
static void check_date(double t)
{
    if (t == -1) return;
    assert(t >= -2208988800.0 - 86400 * 31 && t < 253402300800.0 + 86400 * 31); /* years 1900-9999, +- a month */
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 > 9999) return;
    char buf[64];
    size_t n = strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    assert(n == 29);
    moxy_header_t h = {.name = "Date", .name_len = 4, .value = buf, .value_len = (uint32_t)n};
    assert(moxy_cache_date(&h) == t);
}

static void target_cc(const hlist_t *l, int response)
{
    moxy_cc_t cc;
    if (response) {
        static char *const targeted[] = {"CDN-Cache-Control", "Surrogate-Control"};
        int rc = moxy_cache_response_cc(&l->hs, targeted, 2, &cc);
        assert(rc == 0 || rc == 1);
        if (rc == 1)
            assert(moxy_headers_get(&l->hs, "CDN-Cache-Control", 17) ||
                   moxy_headers_get(&l->hs, "Surrogate-Control", 17));
    } else {
        moxy_cache_cc_parse(&l->hs, "Cache-Control", 13, &cc);
    }
    check_cc(&cc);
}

static void target_dates(const hlist_t *l, const char *text, size_t n)
{
    moxy_header_t whole = {.name = "Expires", .name_len = 7, .value = (char *)text, .value_len = (uint32_t)n};
    double t = moxy_cache_date(&whole);
    /* only the three forms' lengths: 29, 24, or a day name of 6 to 9 letters + 24 */
    if (t != -1) assert(n == 29 || n == 24 || (n >= 30 && n <= 33));
    check_date(t);
    for (uint32_t i = 0; i < l->hs.n; i++) check_date(moxy_cache_date(&l->hs.h[i]));
}

static void target_age(const hlist_t *l, const char *text, size_t n)
{
    double a = moxy_cache_age(&l->hs);
    assert(a >= 0 && a <= 2147483648.0);
    check_delta(moxy_cache_delta_seconds(text, n));
}

/* --- Vary: a reference for the values, written the plain way --- */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_put(sbuf_t *b, char c)
{
    if (b->len + 1 >= b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    b->p[b->len++] = c;
    b->p[b->len] = '\0';
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* The values moxy_cache_vary_values must give for vary (names split at
 * commas, spaces and tabs); *names their count. */
static sbuf_t reference_values(const moxy_headers_t *req, const char *vary, int *names)
{
    sbuf_t b = {NULL, 0, 0};
    sb_put(&b, 'x');
    b.len = 0;
    b.p[0] = '\0';
    *names = 0;
    const char *v = vary;
    for (;;) {
        while (*v == ',' || is_ws(*v)) v++;
        if (!*v) break;
        size_t nl = strcspn(v, ", \t");
        if ((*names)++) sb_put(&b, '\n');
        int fold = moxy_strieq(v, nl, "accept-language", 15) || moxy_strieq(v, nl, "accept-encoding", 15);
        int lines = 0;
        for (uint32_t i = 0; i < req->n; i++) {
            const moxy_header_t *h = &req->h[i];
            if (!moxy_strieq(h->name, h->name_len, v, nl)) continue;
            if (lines++) sb_put(&b, ',');
            size_t start = 0;
            for (size_t j = 0; j <= h->value_len; j++) {
                if (j < h->value_len && h->value[j] != ',') continue;
                size_t a = start, e = j;
                while (a < e && is_ws(h->value[a])) a++;
                while (e > a && is_ws(h->value[e - 1])) e--;
                for (size_t k = a; k < e; k++) {
                    char c = h->value[k];
                    sb_put(&b, fold && c >= 'A' && c <= 'Z' ? (char)(c + 32) : c);
                }
                if (j < h->value_len) sb_put(&b, ',');
                start = j + 1;
            }
        }
        v += nl;
    }
    return b;
}

static void check_values(const moxy_headers_t *req, const char *vary)
{
    moxy_pool_t pool;
    moxy_pool_init(&pool);
    char *got = moxy_cache_vary_values(&pool, req, vary);
    int names;
    sbuf_t want = reference_values(req, vary, &names);
    if (names > MOXY_CACHE_VARY_NAMES || want.len > MOXY_CACHE_VARY_VALUES_MAX) {
        assert(got == NULL);
    } else {
        assert(got != NULL);
        assert(strlen(got) == want.len);
        assert(memcmp(got, want.p, want.len) == 0);
    }
    free(want.p);
    moxy_pool_reset(&pool);
}

static void target_vary(const hlist_t *l)
{
    char *vary = (char *)1;
    int rc = moxy_cache_vary_of(&l->hs, &vary);
    assert(rc == MOXY_OK || rc == MOXY_DECLINED);
    if (rc == MOXY_DECLINED) {
        assert(vary == NULL);
        return;
    }
    if (!vary) { /* no Vary: no field named Vary with a name in it */
        for (uint32_t i = 0; i < l->hs.n; i++)
            if (moxy_strieq(l->hs.h[i].name, l->hs.h[i].name_len, "vary", 4))
                for (uint32_t j = 0; j < l->hs.h[i].value_len; j++)
                    assert(strchr(", \t", l->hs.h[i].value[j]));
        return;
    }
    size_t len = strlen(vary);
    assert(len > 0 && len <= MOXY_CACHE_VARY_BYTES);
    if (strcmp(vary, "*") != 0) {
        /* lower case names, distinct in any case, ", "-separated */
        const char *names[MOXY_CACHE_VARY_NAMES + 1];
        size_t nlens[MOXY_CACHE_VARY_NAMES + 1];
        int n = 0;
        for (const char *p = vary;;) {
            size_t nl = strcspn(p, ",");
            assert(nl > 0 && n < MOXY_CACHE_VARY_NAMES);
            for (size_t i = 0; i < nl; i++) assert(!(p[i] >= 'A' && p[i] <= 'Z') && !is_ws(p[i]));
            for (int j = 0; j < n; j++) assert(!moxy_strieq(names[j], nlens[j], p, nl));
            names[n] = p;
            nlens[n++] = nl;
            if (!p[nl]) break;
            assert(p[nl] == ',' && p[nl + 1] == ' ');
            p += nl + 2;
        }
        check_values(&l->hs, vary);
    }
    free(vary);
}

/* --- Range, conditions: over an object with the list's validators --- */

static uint64_t take_u64(const uint8_t **data, size_t *size)
{
    uint64_t v = 0;
    for (int i = 0; i < 8 && *size; i++) v |= (uint64_t)fuzz_take_byte(data, size) << (8 * i);
    return v;
}

/* o's ETag and Last-Modified from the list's "ETag" / "Last-Modified"
 * fields (NUL-terminated copies, as stored objects have). */
static void object_of(const hlist_t *l, moxy_cache_obj_t *o)
{
    memset(o, 0, sizeof(*o));
    const moxy_header_t *et = moxy_headers_get(&l->hs, "ETag", 4);
    const moxy_header_t *lm = moxy_headers_get(&l->hs, "Last-Modified", 13);
    if (et) o->etag = fuzz_dup((const uint8_t *)et->value, et->value_len);
    if (lm) o->last_modified = fuzz_dup((const uint8_t *)lm->value, lm->value_len);
    o->lm_time = lm ? moxy_cache_date(lm) : -1;
}

static void target_range(const hlist_t *l, uint64_t len)
{
    moxy_cache_obj_t o;
    object_of(l, &o);
    uint64_t from = 0, to = 0;
    int rc = moxy_cache_byte_range(&l->hs, &o, len, &from, &to);
    assert(rc == -1 || rc == 0 || rc == 1);
    if (rc == 1) assert(from <= to && to < len);
    free(o.etag);
    free(o.last_modified);
}

static void target_conditions(const hlist_t *l)
{
    moxy_cache_obj_t o;
    object_of(l, &o);
    int rc = moxy_cache_not_modified(&l->hs, &o);
    assert(rc == 0 || rc == 1);
    /* an If-None-Match that is exactly a plain stored strong tag matches it */
    const moxy_header_t *inm = moxy_headers_get(&l->hs, "If-None-Match", 13);
    if (inm && o.etag) {
        size_t tl = strlen(o.etag);
        int plain = tl >= 2 && o.etag[0] == '"' && o.etag[tl - 1] == '"' && !memchr(o.etag + 1, '"', tl - 2) &&
                    !memchr(o.etag, ',', tl);
        if (plain && inm->value_len == tl && memcmp(inm->value, o.etag, tl) == 0) assert(rc == 1);
    }
    free(o.etag);
    free(o.last_modified);
}

/* --- the key --- */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void target_key(const char *text, size_t n)
{
    const char *nl = memchr(text, '\n', n);
    size_t hl = nl ? (size_t)(nl - text) : n;
    if (memchr(text, '\0', hl)) return; /* a host is a C string */
    char *host = fuzz_dup((const uint8_t *)text, hl);
    const char *t = nl ? nl + 1 : text + n;
    size_t ulen = (size_t)(text + n - t);
    char *uri = dup_exact(t, ulen);
    const char *qm = memchr(uri, '?', ulen);
    size_t plen = qm ? (size_t)(qm - uri) : ulen;
    moxy_pool_t pool;
    moxy_pool_init(&pool);
    uint32_t klen = 0;
    char *k = moxy_cache_build_key(&pool, 0, host, uri, ulen, plen, &klen);
    assert(k);
    /* within what it allocated (7 + the host encoded, at most 3 bytes a byte, + the target + NUL) */
    assert(k[klen] == '\0' && klen <= 7 + 3 * hl + ulen);
    assert(memcmp(k, "http://", 7) == 0);
    /* decode the host: it is the lowered input's, in bytes a host may hold
     * or "%XX" -- never '/', so the key's first '/' ends it: no two hosts
     * and paths give one key */
    const char *p = k + 7, *end = k + klen;
    for (size_t i = 0; i < hl; i++) {
        unsigned char c;
        assert(p < end);
        if (*p == '%') {
            assert(end - p >= 3 && hexval(p[1]) >= 0 && hexval(p[2]) >= 0);
            c = (unsigned char)(hexval(p[1]) << 4 | hexval(p[2]));
            assert(!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))); /* only what must be */
            p += 3;
        } else {
            c = (unsigned char)*p++;
            assert(!(c >= 'A' && c <= 'Z'));
            assert(c > 0x20 && c < 0x7f && !strchr("/?#%@\"<>\\^`{|}", c));
        }
        unsigned char want = (unsigned char)host[i];
        if (want >= 'A' && want <= 'Z') want += 32;
        assert(c == want);
    }
    if (ulen && uri[0] == '/') {
        /* the path follows as it was; the query's parameters take no more bytes than they did */
        assert((size_t)(end - p) >= plen && memcmp(p, uri, plen) == 0);
        assert((size_t)(end - p) <= ulen);
        if (plen < ulen && (size_t)(end - p) > plen) assert(p[plen] == '?');
    }
    moxy_pool_reset(&pool);
    free(host);
    free(uri);
}

/* --- freshness --- */

static void target_lifetime(const hlist_t *l, int status)
{
    moxy_cc_t cc;
    moxy_cache_response_cc(&l->hs, NULL, 0, &cc);
    check_cc(&cc);
    double now = (double)time(NULL);
    double life = moxy_cache_lifetime(&l->hs, status, &cc, now);
    assert(life == -1 || life >= 0);
    assert(moxy_cache_heuristic_status(status) == 0 || moxy_cache_heuristic_status(status) == 1);
}

/* --- the hash --- */

/* SipHash-1-3 of 00 01 02 ... under the key 00..0f: the low 32 bits, as
 * the reference (and Linux's hsiphash on 64-bit machines) give them. */
static const uint32_t SIP13_LOW32[16] = {
    0x050fc4dcU, 0x7d57ca93U, 0x4dc7d44dU, 0xe7ddf7fbU, 0x88d38328U, 0x49533b67U, 0xc59f22a7U, 0x9bb11140U,
    0x8d299a8eU, 0x6c063de4U, 0x92ff097fU, 0xf94dc352U, 0x57b4d9a2U, 0x1229ffa7U, 0xc0f95d34U, 0x2a519956U,
};

/* The hash the cache's index used before it was keyed: FNV-1a, then a finaliser. */
static uint64_t unkeyed(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const uint64_t key[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    unsigned char in[16];
    for (int i = 0; i < 16; i++) in[i] = (unsigned char)i;
    for (size_t i = 0; i < 16; i++) {
        if ((uint32_t)moxy_siphash13(key, in, i) != SIP13_LOW32[i]) {
            fprintf(stderr, "cache_policy_fuzz: SipHash-1-3 of %zu bytes is not the reference's\n", i);
            abort();
        }
    }
    /* the cache's hash is the keyed one: not the unkeyed FNV of before, nor
     * SipHash under an all-zero key (as it would be if nothing seeded it) */
    static const char *const keys[] = {"http://shop.example/", "http://shop.example/cc/login", ""};
    const uint64_t zero[2] = {0, 0};
    int differs = 0;
    for (size_t i = 0; i < MOXY_ARRAY_LEN(keys); i++) {
        size_t n = strlen(keys[i]);
        uint64_t h = moxy_cache_hash(keys[i], n);
        if (h != moxy_hash_keyed(keys[i], n) || h == unkeyed(keys[i], n)) abort();
        differs |= h != moxy_siphash13(zero, keys[i], n);
    }
    if (!differs) {
        fprintf(stderr, "cache_policy_fuzz: the process's hash key is all zero\n");
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = fuzz_take_byte(&data, &size) % 11;
    uint64_t len = 0;
    int status = 200;
    if (sel == 6) {
        len = take_u64(&data, &size);
        if (len & 1) len = (len >> 1) % 4096; /* small bodies as often as any */
    } else if (sel == 9) {
        status = 100 + (int)(fuzz_take_byte(&data, &size) % 5) * 100 + (int)fuzz_take_byte(&data, &size) % 32;
    }
    char *text = dup_exact((const char *)data, size); /* size bytes (one when 0) */
    hlist_t l;
    hlist_parse(&l, text, size);
    switch (sel) {
    case 0: target_cc(&l, 0); break;
    case 1: target_cc(&l, 1); break;
    case 2: target_dates(&l, text, size); break;
    case 3: target_age(&l, text, size); break;
    case 4: target_vary(&l); break;
    case 5: { /* the first line is a Vary list as stored objects hold them, or any */
        const char *nl = memchr(text, '\n', size);
        size_t vl = nl ? (size_t)(nl - text) : size;
        if (memchr(text, '\0', vl)) break;
        char *vary = fuzz_dup((const uint8_t *)text, vl);
        hlist_t req;
        hlist_parse(&req, nl ? nl + 1 : "", nl ? size - vl - 1 : 0);
        check_values(&req.hs, vary);
        hlist_free(&req);
        free(vary);
        break;
    }
    case 6: target_range(&l, len); break;
    case 7: target_conditions(&l); break;
    case 8: target_key(text, size); break;
    case 9: target_lifetime(&l, status); break;
    default: {
        uint64_t h = moxy_cache_hash(text, size);
        assert(h == moxy_cache_hash(text, size) && h == moxy_hash_keyed(text, size));
        break;
    }
    }
    hlist_free(&l);
    free(text);
    return 0;
}
