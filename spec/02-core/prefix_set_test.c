/*
 * prefix_set_test.c -- core/base/prefix_set.c against a reference, and its
 * edges, its text and its list files.  Built and run by `make ctest` (which
 * `make test` runs); prints what failed and exits 1 when anything did.
 *
 *   build/prefix_set_test [SEED]     (default: a fixed seed; printed either way)
 *
 * The big part: sets of 100,000 random prefixes per family -- fresh ones of
 * mixed lengths, ones nested in an earlier one, duplicates of an earlier one
 * with another value; a tenth added as text -- looked up at 1,000,000
 * addresses (half uniform, half inside a random prefix) and at every
 * prefix's edges (its first and last address, the one before, the one
 * after); every result must equal the reference's: a hash table per prefix
 * length, probed from the longest down (the first add of a prefix wins).
 * Then the same with values 0 and 1 only (allow/deny: neighbouring ranges
 * merge).  IPv4 lookups are made a second time as IPv4-mapped IPv6.
 */
#include "base/addr.h"
#include "base/prefix_set.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (++failures <= 30) {                                                                \
                fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                    \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* --- random numbers: splitmix64 --- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rnd_below(uint64_t n)
{
    return (int)(rnd() % n);
}

/* --- addresses as numbers: IPv6 bytes 0-7 in hi, 8-15 in lo; IPv4 in lo --- */

typedef struct {
    uint64_t hi, lo;
} num_t;

/* The bits past a prefix of bits in an address of width bits. */
static num_t host_mask(int width, int bits)
{
    int h = width - bits;
    num_t m = {0, 0};
    if (h >= 64) {
        m.lo = ~0ull;
        m.hi = h == 128 ? ~0ull : (1ull << (h - 64)) - 1;
    } else {
        m.lo = (1ull << h) - 1;
    }
    return m;
}

static num_t key_clear(num_t a, num_t m)
{
    return (num_t){a.hi & ~m.hi, a.lo & ~m.lo};
}

static num_t key_set(num_t a, num_t m)
{
    return (num_t){a.hi | m.hi, a.lo | m.lo};
}

static int key_eq(num_t a, num_t b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

static num_t key_random(int width)
{
    num_t k = {rnd(), rnd()};
    return width == 32 ? (num_t){0, k.lo & 0xffffffffull} : k;
}

static void key_bytes(num_t k, int width, uint8_t *out)
{
    if (width == 32) {
        for (int i = 0; i < 4; i++)
            out[i] = (uint8_t)(k.lo >> (24 - 8 * i));
        return;
    }
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(k.hi >> (56 - 8 * i));
        out[8 + i] = (uint8_t)(k.lo >> (56 - 8 * i));
    }
}

static const char *key_text(num_t k, int width, char *buf, size_t n)
{
    uint8_t b[16];
    key_bytes(k, width, b);
    return inet_ntop(width == 32 ? AF_INET : AF_INET6, b, buf, (socklen_t)n);
}

/* --- the reference: a hash table per prefix length --- */

typedef struct {
    num_t *keys;
    int *values;
    uint8_t *tag; /* 0: a free slot; else 1..255 from the key's hash, compared first */
    size_t mask, n;
    uint64_t top[64]; /* for lengths >= 12: bit t set when a prefix's top 12 bits are t */
} table_t;

typedef struct {
    int width;
    table_t t[129];
} ref_t;

static uint64_t hash_of(num_t k)
{
    uint64_t h =
        k.hi * 0x9e3779b97f4a7c15ull ^ (k.lo + 0x632be59bd9b4e019ull) * 0xc2b2ae3d27d4eb4full;
    return h ^ (h >> 31);
}

static uint8_t tag_of(uint64_t h)
{
    return (uint8_t)(h >> 56) | 1;
}

/* Tables for width-bit addresses, per_len[b] prefixes of length b at most. */
static void ref_init(ref_t *r, int width, const size_t *per_len)
{
    r->width = width;
    for (int b = 0; b <= width; b++) {
        size_t cap = 4;
        while (cap < per_len[b] * 3)
            cap *= 2;
        table_t *t = &r->t[b];
        *t = (table_t){
            calloc(cap, sizeof(num_t)), calloc(cap, sizeof(int)), calloc(cap, 1), cap - 1, 0, {0}};
        if (!t->keys || !t->values || !t->tag) abort();
    }
}

static void ref_free(ref_t *r)
{
    for (int b = 0; b <= r->width; b++) {
        free(r->t[b].keys);
        free(r->t[b].values);
        free(r->t[b].tag);
    }
}

/* An address's top 12 bits. */
static unsigned top12(num_t a, int width)
{
    return (unsigned)(width == 32 ? a.lo >> 20 : a.hi >> 52);
}

/* Add start/bits with value, unless it is there: the first one wins. */
static void ref_add(ref_t *r, num_t start, int bits, int value)
{
    table_t *t = &r->t[bits];
    uint64_t h = hash_of(start);
    size_t i = (size_t)h & t->mask;
    for (; t->tag[i]; i = (i + 1) & t->mask)
        if (key_eq(t->keys[i], start)) return;
    t->tag[i] = tag_of(h);
    unsigned top = top12(start, r->width);
    t->top[top / 64] |= 1ull << (top % 64);
    t->keys[i] = start;
    t->values[i] = value;
    t->n++;
}

static int ref_lookup(const ref_t *r, num_t a)
{
    unsigned top = top12(a, r->width);
    for (int b = r->width; b >= 0; b--) {
        const table_t *t = &r->t[b];
        if (!t->n) continue;
        if (b >= 12 && !(t->top[top / 64] >> (top % 64) & 1)) continue; /* no prefix there */
        num_t k = key_clear(a, host_mask(r->width, b));
        uint64_t h = hash_of(k);
        for (size_t i = (size_t)h & t->mask; t->tag[i]; i = (i + 1) & t->mask)
            if (t->tag[i] == tag_of(h) && key_eq(t->keys[i], k)) return t->values[i];
    }
    return MOXY_PREFIX_NONE;
}

/* --- the big comparison --- */

typedef struct {
    num_t start;
    int bits, value;
} pfx_t;

static size_t compared;

static void compare_at(const moxy_prefix_set_t *s, const ref_t *ref, num_t a, const char *what)
{
    int width = ref->width;
    uint8_t b[16];
    key_bytes(a, width, b);
    int got = moxy_prefix_set_lookup(s, width == 32 ? 4 : 6, b), want = ref_lookup(ref, a);
    char text[INET6_ADDRSTRLEN];
    CHECK(got == want, "lookup of %s (%s): got %d, want %d", key_text(a, width, text, sizeof(text)),
          what, got, want);
    compared++;
    if (width == 32 && (a.lo & 7) == 0) { /* the same address as ::ffff:a.b.c.d */
        uint8_t m[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(m + 12, b, 4);
        got = moxy_prefix_set_lookup(s, 6, m);
        CHECK(got == want, "lookup of ::ffff:%s: got %d, want %d",
              key_text(a, width, text, sizeof(text)), got, want);
    }
}

/* A fresh prefix's length: mostly long enough to be specific, a few short. */
static int fresh_bits(int width)
{
    int short_max = width == 32 ? 7 : 15;
    return rnd_below(100) < 2 ? rnd_below((uint64_t)short_max + 1)
                              : short_max + 1 + rnd_below((uint64_t)(width - short_max));
}

static void big(int width, int nprefix, int nlookup, int nvalues)
{
    int family = width == 32 ? 4 : 6;
    pfx_t *p = calloc((size_t)nprefix, sizeof(*p));
    if (!p) abort();
    size_t per_len[129] = {0};
    int n = 0, nested = 0, dups = 0;
    while (n < nprefix) {
        int r = rnd_below(100);
        pfx_t x;
        if (n > 0 && r < 5) { /* the same prefix again, another value */
            x = p[rnd_below((uint64_t)n)];
            dups++;
        } else if (n > 0 && r < 50) { /* inside an earlier one */
            pfx_t parent = p[rnd_below((uint64_t)n)];
            if (parent.bits == width) continue;
            x.bits = parent.bits + 1 + rnd_below((uint64_t)(width - parent.bits));
            num_t h = host_mask(width, parent.bits), noise = key_random(width);
            x.start = key_set(parent.start, (num_t){noise.hi & h.hi, noise.lo & h.lo});
            x.start = key_clear(x.start, host_mask(width, x.bits));
            nested++;
        } else {
            x.bits = fresh_bits(width);
            x.start = key_clear(key_random(width), host_mask(width, x.bits));
        }
        x.value = rnd_below((uint64_t)nvalues);
        moxy_cidr_t m;
        key_bytes(x.start, width, m.addr);
        moxy_cidr_init(&m, family, x.bits);
        if (m.family != family) continue; /* an IPv4-mapped block: another family's */
        p[n++] = x;
        per_len[x.bits]++;
    }

    ref_t ref;
    ref_init(&ref, width, per_len);
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    char err[256];
    for (int i = 0; i < n; i++) {
        ref_add(&ref, p[i].start, p[i].bits, p[i].value);
        moxy_cidr_t m;
        key_bytes(p[i].start, width, m.addr);
        if (i % 10 == 0) { /* as text */
            char text[INET6_ADDRSTRLEN + 8];
            key_text(p[i].start, width, text, sizeof(text));
            snprintf(text + strlen(text), 8, "/%d", p[i].bits);
            CHECK(moxy_prefix_set_add_text(b, text, strlen(text), p[i].value, err, sizeof(err)) ==
                      MOXY_OK,
                  "%s: %s", text, err);
        } else {
            moxy_cidr_init(&m, family, p[i].bits);
            CHECK(moxy_prefix_set_add(b, &m, p[i].value, err, sizeof(err)) == MOXY_OK, "%s", err);
        }
    }
    double t0 = now_ms();
    moxy_prefix_set_t *s = moxy_prefix_set_build(b, err, sizeof(err));
    double built = now_ms() - t0;
    if (!s) {
        fprintf(stderr, "FAIL build: %s\n", err);
        exit(1);
    }
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    int f = width == 32 ? 0 : 1;
    size_t distinct = 0;
    for (int bits = 0; bits <= width; bits++)
        distinct += ref.t[bits].n;
    CHECK(st.prefixes[f] == distinct, "%zu prefixes, want %zu", st.prefixes[f], distinct);
    CHECK(st.prefixes[1 - f] == 0 && st.ranges[1 - f] == 1, "the other family is empty");
    CHECK(st.duplicates == (size_t)n - distinct, "%zu duplicates, want %zu", st.duplicates,
          (size_t)n - distinct);

    compared = 0;
    t0 = now_ms();
    for (int i = 0; i < nlookup; i++) {
        num_t a = key_random(width);
        if (i & 1) { /* inside a prefix */
            const pfx_t *x = &p[rnd_below((uint64_t)n)];
            num_t h = host_mask(width, x->bits);
            a = key_set(x->start, (num_t){a.hi & h.hi, a.lo & h.lo});
        }
        compare_at(s, &ref, a, i & 1 ? "inside a prefix" : "random");
    }
    num_t last_addr = host_mask(width, 0);
    for (int i = 0; i < n; i++) {
        num_t first = p[i].start, last = key_set(first, host_mask(width, p[i].bits));
        compare_at(s, &ref, first, "a prefix's first address");
        compare_at(s, &ref, last, "a prefix's last address");
        if (first.hi || first.lo) {
            num_t before = first;
            if (before.lo-- == 0) before.hi--;
            compare_at(s, &ref, before, "the address before a prefix");
        }
        if (!key_eq(last, last_addr)) {
            num_t after = last;
            if (++after.lo == 0) after.hi++;
            compare_at(s, &ref, after, "the address after a prefix");
        }
    }
    compare_at(s, &ref, (num_t){0, 0}, "the first address");
    compare_at(s, &ref, last_addr, "the last address");
    printf("  IPv%d: %d prefixes (%d nested, %d duplicates), values 0..%d: %zu ranges, %zu KiB, "
           "built in %.1f ms; %zu lookups compared in %.0f ms\n",
           family, n, nested, dups, nvalues - 1, st.ranges[f], st.bytes / 1024, built, compared,
           now_ms() - t0);

    moxy_prefix_set_free(s);
    moxy_prefix_set_builder_free(b);
    ref_free(&ref);
    free(p);
}

/* --- small cases --- */

/* The set of the given texts, values 0, 1, 2... in order. */
static moxy_prefix_set_t *set_of(const char *const *texts, int n)
{
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    char err[256];
    for (int i = 0; i < n; i++)
        CHECK(moxy_prefix_set_add_text(b, texts[i], strlen(texts[i]), i, err, sizeof(err)) ==
                  MOXY_OK,
              "%s: %s", texts[i], err);
    moxy_prefix_set_t *s = moxy_prefix_set_build(b, err, sizeof(err));
    moxy_prefix_set_builder_free(b);
    if (!s) {
        fprintf(stderr, "FAIL build: %s\n", err);
        exit(1);
    }
    return s;
}

/* The value s gives the address text a (either family). */
static int at(const moxy_prefix_set_t *s, const char *a)
{
    uint8_t addr[16];
    int family = strchr(a, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(family, a, addr) != 1) {
        fprintf(stderr, "FAIL: bad test address %s\n", a);
        exit(1);
    }
    return moxy_prefix_set_lookup(s, family == AF_INET ? 4 : 6, addr);
}

/* The lookup of address text a in s gives want. */
#define EXPECT(s, a, want)                                                                         \
    do {                                                                                           \
        int got_ = at(s, a);                                                                       \
        CHECK(got_ == (want), "lookup of %s: got %d, want %d", a, got_, (want));                   \
    } while (0)

static void parse_cases(void)
{
    static const struct {
        const char *text;
        int ok, family, bits;
        const char *addr; /* as inet_ntop writes it, or the error */
    } cases[] = {
        {"10.0.0.0/8", 1, 4, 8, "10.0.0.0"},
        {"10.1.2.3/8", 1, 4, 8, "10.0.0.0"}, /* the bits past the prefix cleared */
        {"192.0.2.7", 1, 4, 32, "192.0.2.7"},
        {"0.0.0.0/0", 1, 4, 0, "0.0.0.0"},
        {"10.0.0.0/008", 1, 4, 8, "10.0.0.0"},
        {"2001:db8::/32", 1, 6, 32, "2001:db8::"},
        {"2001:db8::1", 1, 6, 128, "2001:db8::1"},
        {"::/0", 1, 6, 0, "::"},
        {"::ffff:10.0.0.0/104", 1, 4, 8, "10.0.0.0"}, /* IPv4-mapped: the IPv4 block */
        {"::ffff:192.0.2.7", 1, 4, 32, "192.0.2.7"},
        {"::ffff:0:0/96", 1, 4, 0, "0.0.0.0"},
        {"::ffff:0:0/95", 1, 6, 95, "::fffe:0:0"},
        {"", 0, 0, 0, "bad address"},
        {"/8", 0, 0, 0, "bad address"},
        {"10.0.0.0/", 0, 0, 0, "bad prefix length"},
        {"10.0.0.0/33", 0, 0, 0, "prefix length past /32"},
        {"::/129", 0, 0, 0, "prefix length past /128"},
        {"10.0.0.0/0008", 0, 0, 0, "bad prefix length"},
        {"10.0.0.0/-1", 0, 0, 0, "bad prefix length"},
        {"10.0.0.0/+8", 0, 0, 0, "bad prefix length"},
        {"10.0.0.0/8/8", 0, 0, 0, "bad prefix length"},
        {"10.0.0.0/8 ", 0, 0, 0, "bad prefix length"},
        {" 10.0.0.0/8", 0, 0, 0, "bad address"},
        {"10.0.0.256", 0, 0, 0, "bad address"},
        {"10.0.0", 0, 0, 0, "bad address"},
        {"010.0.0.1", 0, 0, 0, "bad address"},
        {"2001:db8::/3x", 0, 0, 0, "bad prefix length"},
        {"2001:db8:::1", 0, 0, 0, "bad address"},
        {"[::1]", 0, 0, 0, "bad address"},
        {"localhost", 0, 0, 0, "bad address"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        moxy_cidr_t m;
        const char *why = NULL;
        int rc = moxy_cidr_parse(cases[i].text, strlen(cases[i].text), &m, &why);
        if (!cases[i].ok) {
            CHECK(rc == MOXY_ERROR && why && strcmp(why, cases[i].addr) == 0, "\"%s\": %s",
                  cases[i].text, rc == MOXY_OK ? "taken" : why);
            continue;
        }
        char text[INET6_ADDRSTRLEN] = "";
        if (rc == MOXY_OK)
            inet_ntop(m.family == 4 ? AF_INET : AF_INET6, m.addr, text, sizeof(text));
        CHECK(rc == MOXY_OK && m.family == cases[i].family && m.bits == cases[i].bits &&
                  strcmp(text, cases[i].addr) == 0,
              "\"%s\": %s family %d /%d %s", cases[i].text, rc == MOXY_OK ? "" : why, m.family,
              m.bits, text);
    }
    /* a NUL inside is not the end of the text */
    moxy_cidr_t m;
    const char *why;
    CHECK(moxy_cidr_parse("10.0.0.1\0x", 10, &m, &why) == MOXY_ERROR, "a NUL taken");
    CHECK(moxy_cidr_parse("10.0.0.0/8\0", 11, &m, &why) == MOXY_ERROR, "a NUL taken");
}

static void lookup_cases(void)
{
    /* empty */
    moxy_prefix_set_t *s = set_of(NULL, 0);
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    CHECK(at(s, "0.0.0.0") == MOXY_PREFIX_NONE && at(s, "255.255.255.255") == MOXY_PREFIX_NONE &&
              at(s, "::") == MOXY_PREFIX_NONE &&
              at(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == MOXY_PREFIX_NONE,
          "an empty set matches");
    CHECK(st.prefixes[0] == 0 && st.prefixes[1] == 0 && st.ranges[0] == 1 && st.ranges[1] == 1 &&
              st.bytes > 0,
          "empty set's stats");
    moxy_prefix_set_free(s);

    /* nested, and the two ends of the address space */
    static const char *const nested[] = {
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "0.0.0.0/32",
        "255.255.255.255/32",
        "::/0",
        "2001:db8::/32",
        "2001:db8::/48",
        "2001:db8::1/128",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        "::/128",
        "10.255.255.0/24",
    };
    s = set_of(nested, 14);
    EXPECT(s, "9.255.255.255", 0);
    EXPECT(s, "10.0.0.0", 1);
    EXPECT(s, "10.1.2.2", 3);
    EXPECT(s, "10.1.2.3", 4);
    EXPECT(s, "10.1.2.4", 3);
    EXPECT(s, "10.1.3.0", 2);
    EXPECT(s, "10.2.0.0", 1);
    EXPECT(s, "10.255.254.255", 1);
    EXPECT(s, "10.255.255.255", 13);
    EXPECT(s, "11.0.0.0", 0);
    EXPECT(s, "0.0.0.0", 5);
    EXPECT(s, "0.0.0.1", 0);
    EXPECT(s, "255.255.255.255", 6);
    EXPECT(s, "255.255.255.254", 0);
    EXPECT(s, "::", 12);
    EXPECT(s, "::1", 7);
    EXPECT(s, "2001:db8::1", 10);
    EXPECT(s, "2001:db8::2", 9);
    EXPECT(s, "2001:db8:1::", 8);
    EXPECT(s, "2001:db9::", 7);
    EXPECT(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 11);
    EXPECT(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 7);
    /* IPv4-mapped: looked up as IPv4, never as IPv6 (not even ::/0) */
    EXPECT(s, "::ffff:10.1.2.3", 4);
    EXPECT(s, "::ffff:11.0.0.0", 0);
    /* another family */
    CHECK(moxy_prefix_set_lookup(s, 0, (const uint8_t *)"\0\0\0\0") == MOXY_PREFIX_NONE,
          "family 0");
    moxy_prefix_set_free(s);

    static const char *const mapped[] = {"::ffff:10.0.0.0/104", "::/0"};
    s = set_of(mapped, 2);
    CHECK(at(s, "10.9.9.9") == 0, "a mapped block is the IPv4 block");
    EXPECT(s, "::ffff:10.9.9.9", 0);
    CHECK(at(s, "::ffff:11.9.9.9") == MOXY_PREFIX_NONE, "a mapped address matched ::/0");
    EXPECT(s, "::fffe:11.9.9.9", 1);
    moxy_prefix_set_free(s);

    /* duplicates: the first one wins; the builder builds again after more adds */
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(3);
    char err[256];
    CHECK(moxy_prefix_set_add_text(b, "10.0.0.0/8", 10, 7, err, sizeof(err)) == MOXY_OK, "%s", err);
    CHECK(moxy_prefix_set_add_text(b, "10.9.9.9/8", 10, 8, err, sizeof(err)) == MOXY_OK, "%s", err);
    s = moxy_prefix_set_build(b, err, sizeof(err));
    moxy_prefix_set_stats(s, &st);
    CHECK(at(s, "10.1.1.1") == 7 && st.prefixes[0] == 1 && st.duplicates == 1, "first one wins");
    moxy_prefix_set_free(s);
    CHECK(moxy_prefix_set_add_text(b, "10.1.0.0/16", 11, 9, err, sizeof(err)) == MOXY_OK, "%s",
          err);
    /* the limit (3 adds, duplicates count) */
    CHECK(moxy_prefix_set_add_text(b, "10.2.0.0/16", 11, 9, err, sizeof(err)) == MOXY_ERROR &&
              strcmp(err, "too many prefixes (at most 3)") == 0,
          "%s", err);
    s = moxy_prefix_set_build(b, err, sizeof(err));
    CHECK(at(s, "10.1.1.1") == 9 && at(s, "10.2.1.1") == 7, "built again");
    moxy_prefix_set_free(s);
    moxy_prefix_set_builder_free(b);

    /* neighbours with the same value are one range: memory as values allow */
    b = moxy_prefix_set_builder_new(0);
    static const char *const halves[] = {"10.0.0.0/9", "10.128.0.0/9", "10.64.0.0/10"};
    for (int i = 0; i < 3; i++)
        CHECK(moxy_prefix_set_add_text(b, halves[i], strlen(halves[i]), 1, err, sizeof(err)) ==
                  MOXY_OK,
              "%s", err);
    s = moxy_prefix_set_build(b, err, sizeof(err));
    moxy_prefix_set_stats(s, &st);
    CHECK(st.prefixes[0] == 3 && st.ranges[0] == 3, "%zu ranges, want 3 (none, 10/8, none)",
          st.ranges[0]);
    EXPECT(s, "9.255.255.255", MOXY_PREFIX_NONE);
    EXPECT(s, "10.0.0.0", 1);
    EXPECT(s, "10.255.255.255", 1);
    EXPECT(s, "11.0.0.0", MOXY_PREFIX_NONE);
    moxy_prefix_set_free(s);
    moxy_prefix_set_builder_free(b);

    /* errors */
    b = moxy_prefix_set_builder_new(0);
    CHECK(moxy_prefix_set_add_text(b, "10.0.0.0/8", 10, -1, err, sizeof(err)) == MOXY_ERROR &&
              strcmp(err, "value -1 out of range (0..2147483647)") == 0,
          "%s", err);
    CHECK(moxy_prefix_set_add_text(b, "10.0.0.0/8", 10, MOXY_PREFIX_VALUE_MAX, err, sizeof(err)) ==
              MOXY_OK,
          "%s", err);
    CHECK(moxy_prefix_set_add_text(b, "10.0.0.0/33", 11, 1, err, sizeof(err)) == MOXY_ERROR &&
              strcmp(err, "prefix length past /32 in \"10.0.0.0/33\"") == 0,
          "%s", err);
    CHECK(moxy_prefix_set_add_text(b, "a\"\\\x01\xff", 5, 1, err, sizeof(err)) == MOXY_ERROR &&
              strcmp(err, "bad address in \"a\\x22\\x5c\\x01\\xff\"") == 0,
          "%s", err);
    char long_text[100];
    memset(long_text, '1', sizeof(long_text));
    CHECK(moxy_prefix_set_add_text(b, long_text, sizeof(long_text), 1, err, sizeof(err)) ==
                  MOXY_ERROR &&
              strstr(err, "bad address in \"1111") && strstr(err, "1111...\"") &&
              strlen(err) == 16 + 64 + 4,
          "%s", err);
    moxy_cidr_t bad = {.family = 4, .bits = 33};
    CHECK(moxy_prefix_set_add(b, &bad, 1, err, sizeof(err)) == MOXY_ERROR, "/33 taken");
    bad = (moxy_cidr_t){.family = 5, .bits = 8};
    CHECK(moxy_prefix_set_add(b, &bad, 1, err, sizeof(err)) == MOXY_ERROR, "family 5 taken");
    /* a block with host bits set, or mapped, as given by hand: normalised */
    moxy_cidr_t raw = {
        .family = 6,
        .bits = 120,
        .addr = {[10] = 0xff, [11] = 0xff, [12] = 192, [13] = 0, [14] = 2, [15] = 99}};
    CHECK(moxy_prefix_set_add(b, &raw, 5, err, sizeof(err)) == MOXY_OK, "%s", err);
    s = moxy_prefix_set_build(b, err, sizeof(err));
    EXPECT(s, "10.3.3.3", MOXY_PREFIX_VALUE_MAX);
    EXPECT(s, "192.0.2.1", 5);
    EXPECT(s, "192.0.3.1", MOXY_PREFIX_NONE);
    moxy_prefix_set_free(s);
    moxy_prefix_set_builder_free(b);
    moxy_prefix_set_free(NULL);
    moxy_prefix_set_builder_free(NULL);
}

/* --- list files --- */

static char tmpdir[64];

static const char *write_file(const char *name, const char *text, size_t n)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "FAIL: cannot write %s\n", path);
        exit(1);
    }
    return path;
}

/* Load text as a file into a fresh builder: MOXY_OK with *s built, or
 * MOXY_ERROR with err. */
static int load_text(const char *text, size_t n, moxy_prefix_set_t **s, char *err, size_t errlen)
{
    const char *path = write_file("list.txt", text, n);
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    int rc = moxy_prefix_set_load(b, path, 1, err, errlen);
    *s = rc == MOXY_OK ? moxy_prefix_set_build(b, err, errlen) : NULL;
    moxy_prefix_set_builder_free(b);
    return rc;
}

static void file_cases(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s", "/tmp/moxy-prefix-set-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    moxy_prefix_set_t *s;
    char err[512], want[600];
    static const char good[] = "# deny list\n"
                               "\n"
                               "10.0.0.0/8\n"
                               "   192.0.2.7   \n"
                               "\t2001:db8::/32\t# documentation\r\n"
                               "198.51.100.0/24# no space before the comment\n"
                               "   # an indented comment\n"
                               "::ffff:203.0.113.0/120\r\n"
                               "\r\n"
                               "2001:db8::1"; /* no last '\n' */
    CHECK(load_text(good, sizeof(good) - 1, &s, err, sizeof(err)) == MOXY_OK && s, "%s", err);
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    CHECK(st.prefixes[0] == 4 && st.prefixes[1] == 2, "%zu and %zu prefixes", st.prefixes[0],
          st.prefixes[1]);
    CHECK(at(s, "10.2.3.4") == 1 && at(s, "192.0.2.7") == 1 &&
              at(s, "192.0.2.8") == MOXY_PREFIX_NONE && at(s, "2001:db8:5::") == 1 &&
              at(s, "198.51.100.200") == 1 && at(s, "203.0.113.9") == 1 &&
              at(s, "::ffff:203.0.113.9") == 1 && at(s, "2001:db9::") == MOXY_PREFIX_NONE,
          "the good list's lookups");
    moxy_prefix_set_free(s);

    CHECK(load_text("", 0, &s, err, sizeof(err)) == MOXY_OK && s, "empty file: %s", err);
    moxy_prefix_set_free(s);

    static const char bad[] = "10.0.0.0/8\n# fine\n\n  10.0.0.300/8  # a typo\n192.0.2.0/24\n";
    CHECK(load_text(bad, sizeof(bad) - 1, &s, err, sizeof(err)) == MOXY_ERROR, "a bad line taken");
    snprintf(want, sizeof(want), "%s/list.txt:4: bad address in \"10.0.0.300/8\"", tmpdir);
    CHECK(strcmp(err, want) == 0, "%s", err);

    static const char two[] = "10.0.0.0/8 10.1.0.0/16\n";
    CHECK(load_text(two, sizeof(two) - 1, &s, err, sizeof(err)) == MOXY_ERROR, "two blocks taken");
    snprintf(want, sizeof(want), "%s/list.txt:1: bad prefix length in \"10.0.0.0/8 10.1.0.0/16\"",
             tmpdir);
    CHECK(strcmp(err, want) == 0, "%s", err);

    static const char nul[] = "10.0.0.0/8\n10.1.0.0/16\0\n";
    CHECK(load_text(nul, sizeof(nul) - 1, &s, err, sizeof(err)) == MOXY_ERROR, "a NUL taken");
    snprintf(want, sizeof(want), "%s/list.txt:2: bad address in \"10.1.0.0/16\\x00\"", tmpdir);
    CHECK(strcmp(err, want) == 0, "%s", err);

    /* a line longer than MOXY_PREFIX_LINE_MAX: fine when a comment, else an error */
    size_t n = MOXY_PREFIX_LINE_MAX * 3;
    char *text = malloc(n + 32);
    memset(text, ' ', n);
    memcpy(text, "10.0.0.0/8 #", 12);
    strcpy(text + n, "\n192.0.2.1\n");
    CHECK(load_text(text, strlen(text), &s, err, sizeof(err)) == MOXY_OK && s &&
              at(s, "192.0.2.1") == 1 && at(s, "10.0.0.1") == 1,
          "a long comment: %s", err);
    moxy_prefix_set_free(s);
    memset(text, ' ', n);
    memcpy(text + n - 10, "10.0.0.0/8", 10);
    strcpy(text + n, "\n");
    CHECK(load_text(text, strlen(text), &s, err, sizeof(err)) == MOXY_ERROR, "a long line taken");
    snprintf(want, sizeof(want),
             "%s/list.txt:1: line too long (more than %d bytes before a comment)", tmpdir,
             MOXY_PREFIX_LINE_MAX);
    CHECK(strcmp(err, want) == 0, "%s", err);
    /* just at the limit: taken */
    memset(text, ' ', MOXY_PREFIX_LINE_MAX);
    memcpy(text + MOXY_PREFIX_LINE_MAX - 10, "10.0.0.0/8", 10);
    strcpy(text + MOXY_PREFIX_LINE_MAX, "\n");
    CHECK(load_text(text, strlen(text), &s, err, sizeof(err)) == MOXY_OK && s &&
              at(s, "10.0.0.1") == 1,
          "a line of %d bytes: %s", MOXY_PREFIX_LINE_MAX, err);
    moxy_prefix_set_free(s);
    free(text);

    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    snprintf(want, sizeof(want), "%s/absent.txt", tmpdir);
    CHECK(moxy_prefix_set_load(b, want, 1, err, sizeof(err)) == MOXY_ERROR &&
              strstr(err, "/absent.txt: No such file or directory"),
          "%s", err);
    /* a directory: read fails */
    CHECK(moxy_prefix_set_load(b, tmpdir, 1, err, sizeof(err)) == MOXY_ERROR && strstr(err, tmpdir),
          "a directory loaded: %s", err);
    moxy_prefix_set_builder_free(b);

    snprintf(want, sizeof(want), "%s/list.txt", tmpdir);
    unlink(want);
    rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x5eed2024ull;
    printf("prefix_set_test: seed %llu (run again with: %s %llu)\n", (unsigned long long)seed,
           argv[0], (unsigned long long)seed);
    rng_state = seed;
    double t0 = now_ms();
    parse_cases();
    lookup_cases();
    file_cases();
    big(32, 100000, 1000000, 1000);
    big(128, 100000, 1000000, 1000);
    big(32, 100000, 200000, 2);
    big(128, 100000, 200000, 2);
    if (failures) {
        printf("prefix_set_test: %d failures\n", failures);
        return 1;
    }
    printf("prefix_set_test: ok (%.1f s)\n", (now_ms() - t0) / 1e3);
    return 0;
}
