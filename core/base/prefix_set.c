/*
 * prefix_set.c -- longest-prefix-match sets of address blocks; see
 * prefix_set.h for the structure and why.
 */
#include "base/prefix_set.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>

/* An address as a 128-bit number: IPv6 bytes 0-7 in hi and 8-15 in lo
 * (network order); an IPv4 address in lo alone. */
typedef struct {
    uint64_t hi, lo;
} u128_t;

/* A prefix as the builder holds it. */
typedef struct {
    u128_t start;  /* its first address */
    uint32_t seq;  /* the order of its add: the first of duplicates wins */
    int32_t value; /* 0..MOXY_PREFIX_VALUE_MAX */
    uint8_t bits;  /* prefix length */
} entry_t;

struct moxy_prefix_set_builder_s {
    entry_t *e[2]; /* [0] IPv4, [1] IPv6, in the order added until a build sorts them */
    size_t n[2], cap[2];
    size_t adds; /* n[0] + n[1]: every add counts against limit */
    size_t limit;
};

/* One family's ranges: range i is [start[i], start[i + 1]) and its longest
 * match has value[i]; start[0] is 0.  index[t] is the range holding the
 * first address of slice t (the addresses whose top k bits are t), and
 * index[2^k] the last range, so an address of slice t is in a range of
 * index[t]..index[t + 1]. */
typedef struct {
    uint32_t n; /* ranges, >= 1 */
    uint32_t k; /* index bits, 0..20 */
    const int32_t *value;
    const uint32_t *index;
} table_t;

struct moxy_prefix_set_s {
    table_t t4, t6;
    const uint32_t *start4; /* t4's starts */
    const u128_t *start6;   /* t6's starts */
    moxy_prefix_set_stats_t stats;
    void *mem; /* one allocation for the arrays */
};

#define INDEX_BITS_MAX 20
#define WIDTH(f) ((f) == 0 ? 32 : 128)

static void fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (!errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* --- 128-bit numbers --- */

static inline int u128_lt(u128_t a, u128_t b)
{
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}

static inline int u128_eq(u128_t a, u128_t b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

/* The number whose low h bits (0..128) are set. */
static u128_t low_ones(int h)
{
    u128_t m = {0, 0};
    if (h >= 64) {
        m.lo = ~0ull;
        m.hi = h == 128 ? ~0ull : (1ull << (h - 64)) - 1;
    } else {
        m.lo = (1ull << h) - 1;
    }
    return m;
}

static inline uint64_t be64(const uint8_t *p)
{
    return (uint64_t)p[0] << 56 | (uint64_t)p[1] << 48 | (uint64_t)p[2] << 40 |
           (uint64_t)p[3] << 32 | (uint64_t)p[4] << 24 | (uint64_t)p[5] << 16 |
           (uint64_t)p[6] << 8 | (uint64_t)p[7];
}

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* --- the builder --- */

moxy_prefix_set_builder_t *moxy_prefix_set_builder_new(size_t limit)
{
    moxy_prefix_set_builder_t *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->limit = limit == 0 || limit > MOXY_PREFIX_SET_MAX ? MOXY_PREFIX_SET_MAX : limit;
    return b;
}

void moxy_prefix_set_builder_free(moxy_prefix_set_builder_t *b)
{
    if (!b) return;
    free(b->e[0]);
    free(b->e[1]);
    free(b);
}

int moxy_prefix_set_add(moxy_prefix_set_builder_t *b, const moxy_cidr_t *m, int value, char *err,
                        size_t errlen)
{
    if (value < 0 || value > MOXY_PREFIX_VALUE_MAX) {
        fail(err, errlen, "value %d out of range (0..%d)", value, MOXY_PREFIX_VALUE_MAX);
        return MOXY_ERROR;
    }
    if ((m->family != 4 && m->family != 6) || m->bits > (m->family == 4 ? 32 : 128)) {
        fail(err, errlen, "bad block (family %d, /%d)", m->family, m->bits);
        return MOXY_ERROR;
    }
    if (b->adds >= b->limit) {
        fail(err, errlen, "too many prefixes (at most %zu)", b->limit);
        return MOXY_ERROR;
    }
    moxy_cidr_t c = *m;
    moxy_cidr_init(&c, c.family, c.bits); /* a mapped block to IPv4, bits past the prefix cleared */
    int f = c.family == 4 ? 0 : 1;
    if (b->n[f] == b->cap[f]) {
        size_t cap = b->cap[f] ? b->cap[f] * 2 : 256;
        if (cap > b->limit) cap = b->limit;
        entry_t *e = realloc(b->e[f], cap * sizeof(*e));
        if (!e) {
            fail(err, errlen, "out of memory");
            return MOXY_ERROR;
        }
        b->e[f] = e;
        b->cap[f] = cap;
    }
    entry_t *e = &b->e[f][b->n[f]++];
    if (f == 0)
        e->start = (u128_t){0, be32(c.addr)};
    else
        e->start = (u128_t){be64(c.addr), be64(c.addr + 8)};
    e->seq = (uint32_t)b->adds++;
    e->value = value;
    e->bits = c.bits;
    return MOXY_OK;
}

/* The n bytes at p as a quoted string in out (outlen > 4): '"' and '\' and
 * bytes outside printable ASCII escaped, at most 64 bytes of p, "..." after
 * a cut. */
static void quote(char *out, size_t outlen, const char *p, size_t n)
{
    size_t o = 0, cut = n > 64 ? 64 : n;
    out[o++] = '"';
    for (size_t i = 0; i < cut && o + 6 < outlen; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    if (cut < n && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
}

int moxy_prefix_set_add_text(moxy_prefix_set_builder_t *b, const char *p, size_t n, int value,
                             char *err, size_t errlen)
{
    moxy_cidr_t m;
    const char *why;
    if (moxy_cidr_parse(p, n, &m, &why) != MOXY_OK) {
        char q[300];
        quote(q, sizeof(q), p, n);
        fail(err, errlen, "%s in %s", why, q);
        return MOXY_ERROR;
    }
    return moxy_prefix_set_add(b, &m, value, err, errlen);
}

/* --- list files --- */

static int blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int moxy_prefix_set_read(moxy_prefix_set_builder_t *b, FILE *f, const char *name, int value,
                         char *err, size_t errlen)
{
    char line[MOXY_PREFIX_LINE_MAX];
    size_t len = 0, lineno = 0;
    int over = 0, c;
    do {
        c = getc_unlocked(f);
        if (c != EOF && c != '\n') {
            if (len < sizeof(line))
                line[len++] = (char)c;
            else
                over = 1; /* the rest is dropped: only a comment may run that long */
            continue;
        }
        if (c == EOF && len == 0 && !over) break; /* the end, after a last '\n' or none */
        lineno++;
        const char *hash = memchr(line, '#', len);
        if (!hash && over) {
            fail(err, errlen, "%s:%zu: line too long (more than %d bytes before a comment)", name,
                 lineno, MOXY_PREFIX_LINE_MAX);
            return MOXY_ERROR;
        }
        size_t s = 0, e = hash ? (size_t)(hash - line) : len;
        while (s < e && blank(line[s]))
            s++;
        while (e > s && blank(line[e - 1]))
            e--;
        if (e > s) {
            char why[512];
            if (moxy_prefix_set_add_text(b, line + s, e - s, value, why, sizeof(why)) != MOXY_OK) {
                fail(err, errlen, "%s:%zu: %s", name, lineno, why);
                return MOXY_ERROR;
            }
        }
        len = 0;
        over = 0;
    } while (c != EOF);
    if (ferror(f)) {
        fail(err, errlen, "%s: %s", name, strerror(errno));
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

int moxy_prefix_set_load(moxy_prefix_set_builder_t *b, const char *path, int value, char *err,
                         size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return MOXY_ERROR;
    }
    int rc = moxy_prefix_set_read(b, f, path, value, err, errlen);
    fclose(f);
    return rc;
}

/* --- the build --- */

static int entry_cmp(const void *pa, const void *pb)
{
    const entry_t *a = pa, *b = pb;
    if (!u128_eq(a->start, b->start)) return u128_lt(a->start, b->start) ? -1 : 1;
    if (a->bits != b->bits) return a->bits < b->bits ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Where a sweep writes its ranges: nothing but the count when value is
 * NULL; the starts to start4 (IPv4) or start6 (IPv6). */
typedef struct {
    uint32_t *start4;
    u128_t *start6;
    int32_t *value;
    size_t n;
    int32_t last;      /* the value of range n - 1 */
    size_t prefixes;   /* distinct prefixes met */
    size_t duplicates; /* prefixes met again */
} ranges_t;

/* A range from start on with value, merged with the one before when their
 * values are the same. */
static void range_add(ranges_t *r, u128_t start, int32_t value)
{
    if (r->n && r->last == value) return;
    if (r->value) {
        r->value[r->n] = value;
        if (r->start4)
            r->start4[r->n] = (uint32_t)start.lo;
        else
            r->start6[r->n] = start;
    }
    r->last = value;
    r->n++;
}

/* Cut the address space of width bits (32, 128) into the ranges of the n
 * entries e, sorted by entry_cmp: a walk in address order keeps the
 * prefixes that hold the current address on a stack, innermost on top (two
 * prefixes are nested or apart, and after duplicates are skipped nested
 * ones are strictly longer: at most width + 1 of them hold an address, so
 * the stack cannot overflow).  pos is the first address whose range is not
 * written yet, and the top's value is its longest match. */
static void sweep(const entry_t *e, size_t n, int width, ranges_t *r)
{
    struct {
        u128_t end;
        int32_t value;
    } stack[129];
    int depth = 0, done = 0; /* done: pos went past the last address */
    u128_t pos = {0, 0}, last = low_ones(width);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && u128_eq(e[i].start, e[i - 1].start) && e[i].bits == e[i - 1].bits) {
            r->duplicates++;
            continue;
        }
        r->prefixes++;
        /* close the prefixes that end before this one starts */
        while (depth > 0 && u128_lt(stack[depth - 1].end, e[i].start)) {
            depth--;
            if (!u128_lt(stack[depth].end, pos)) {
                range_add(r, pos, stack[depth].value);
                pos = stack[depth].end; /* < e[i].start <= last: no carry out */
                if (++pos.lo == 0) pos.hi++;
            }
        }
        if (u128_lt(pos, e[i].start))
            range_add(r, pos, depth ? stack[depth - 1].value : MOXY_PREFIX_NONE);
        u128_t host = low_ones(width - e[i].bits);
        stack[depth].end = (u128_t){e[i].start.hi | host.hi, e[i].start.lo | host.lo};
        stack[depth].value = e[i].value;
        depth++;
        pos = e[i].start;
    }
    while (depth > 0) {
        depth--;
        if (!done && !u128_lt(stack[depth].end, pos)) {
            range_add(r, pos, stack[depth].value);
            if (u128_eq(stack[depth].end, last)) {
                done = 1;
            } else {
                pos = stack[depth].end;
                if (++pos.lo == 0) pos.hi++;
            }
        }
    }
    if (!done) range_add(r, pos, MOXY_PREFIX_NONE);
}

/* Index bits for n ranges: about log2(n), at most INDEX_BITS_MAX. */
static uint32_t index_bits(size_t n)
{
    uint32_t k = 0;
    while (k < INDEX_BITS_MAX && ((size_t)2 << k) <= n)
        k++;
    return k;
}

/* Fill in t's index (2^k + 1 entries at index): one walk of the starts. */
static void index_fill(uint32_t *index, uint32_t k, const uint32_t *start4, const u128_t *start6,
                       uint32_t n)
{
    uint32_t i = 0, slices = 1u << k;
    for (uint32_t t = 0; t < slices; t++) {
        /* the slice's first address: t in the top k bits */
        if (start4) {
            uint32_t first = k ? t << (32 - k) : 0;
            while (i + 1 < n && start4[i + 1] <= first)
                i++;
        } else {
            uint64_t first = k ? (uint64_t)t << (64 - k) : 0;
            while (i + 1 < n && (start6[i + 1].hi < first ||
                                 (start6[i + 1].hi == first && start6[i + 1].lo == 0)))
                i++;
        }
        index[t] = i;
    }
    index[slices] = n - 1;
}

moxy_prefix_set_t *moxy_prefix_set_build(moxy_prefix_set_builder_t *b, char *err, size_t errlen)
{
    ranges_t count[2] = {{0}, {0}};
    for (int f = 0; f < 2; f++) {
        if (b->n[f] > 1) qsort(b->e[f], b->n[f], sizeof(entry_t), entry_cmp);
        sweep(b->e[f], b->n[f], WIDTH(f), &count[f]);
    }
    size_t n4 = count[0].n, n6 = count[1].n;
    uint32_t k4 = index_bits(n4), k6 = index_bits(n6);
    /* the u128 starts first, then 4-byte arrays: each one aligned */
    size_t bytes =
        n6 * sizeof(u128_t) + (n4 + n4 + n6 + ((size_t)1 << k4) + 1 + ((size_t)1 << k6) + 1) * 4;
    moxy_prefix_set_t *s = calloc(1, sizeof(*s));
    char *mem = malloc(bytes);
    if (!s || !mem) {
        free(s);
        free(mem);
        fail(err, errlen, "out of memory (%zu bytes for the prefix set)", bytes);
        return NULL;
    }
    s->mem = mem;
    u128_t *start6 = (u128_t *)mem;
    uint32_t *start4 = (uint32_t *)(start6 + n6);
    int32_t *value4 = (int32_t *)(start4 + n4);
    int32_t *value6 = value4 + n4;
    uint32_t *index4 = (uint32_t *)(value6 + n6);
    uint32_t *index6 = index4 + ((size_t)1 << k4) + 1;

    ranges_t r4 = {.start4 = start4, .value = value4}, r6 = {.start6 = start6, .value = value6};
    sweep(b->e[0], b->n[0], 32, &r4);
    sweep(b->e[1], b->n[1], 128, &r6);
    index_fill(index4, k4, start4, NULL, (uint32_t)n4);
    index_fill(index6, k6, NULL, start6, (uint32_t)n6);

    s->t4 = (table_t){(uint32_t)n4, k4, value4, index4};
    s->t6 = (table_t){(uint32_t)n6, k6, value6, index6};
    s->start4 = start4;
    s->start6 = start6;
    s->stats.prefixes[0] = r4.prefixes;
    s->stats.prefixes[1] = r6.prefixes;
    s->stats.duplicates = r4.duplicates + r6.duplicates;
    s->stats.ranges[0] = n4;
    s->stats.ranges[1] = n6;
    s->stats.bytes = sizeof(*s) + bytes;
    return s;
}

/* --- lookups --- */

int moxy_prefix_set_lookup(const moxy_prefix_set_t *s, int family, const uint8_t *addr)
{
    if (family == 6 && moxy_ip_v4_mapped(addr)) {
        family = 4;
        addr += 12;
    }
    /* The slice t narrows the search to index[t]..index[t + 1]; there, the
     * last range whose start is <= the address, by halving a window whose
     * first range always qualifies (no branch on the comparison).  (x >> 1)
     * >> (w - 1 - k) is x's top k bits, 0 for k = 0, with no shift by w. */
    uint32_t base, len;
    if (family == 4) {
        const uint32_t *start = s->start4, x = be32(addr);
        const uint32_t *index = s->t4.index + ((x >> 1) >> (31 - s->t4.k));
        base = index[0];
        len = index[1] - base + 1;
        while (len > 1) {
            uint32_t half = len / 2;
            base = start[base + half] <= x ? base + half : base;
            len -= half;
        }
        return s->t4.value[base];
    }
    if (family != 6) return MOXY_PREFIX_NONE;
    const u128_t *start = s->start6;
    uint64_t hi = be64(addr), lo = be64(addr + 8);
    const uint32_t *index = s->t6.index + ((hi >> 1) >> (63 - s->t6.k));
    base = index[0];
    len = index[1] - base + 1;
    while (len > 1) {
        uint32_t half = len / 2;
        const u128_t *c = &start[base + half];
        base = c->hi < hi || (c->hi == hi && c->lo <= lo) ? base + half : base;
        len -= half;
    }
    return s->t6.value[base];
}

void moxy_prefix_set_stats(const moxy_prefix_set_t *s, moxy_prefix_set_stats_t *st)
{
    *st = s->stats;
}

void moxy_prefix_set_free(moxy_prefix_set_t *s)
{
    if (!s) return;
    free(s->mem);
    free(s);
}
