/*
 * prefix_set_fuzz.c -- the prefix sets of access control lists
 * (base/prefix_set.c) against a linear model, and the list-file reader and
 * the block parser (base/addr.c's moxy_cidr_parse) against models of their
 * own.
 *
 * Input: byte 0 chooses.
 *   even: blocks, then addresses.  Byte 0's bits 1..7: the builder's limit
 *         (0: none).  Then blocks, up to 64, each
 *           h      bit 7 set: no more blocks; bit 0: IPv6; bits 1..3: the
 *                  value (0..7); bit 6: added as text (inet_ntop + "/bits")
 *           b      the prefix length, b % (32 + 1) or b % (128 + 1)
 *           addr   IPv4: 4 bytes.  IPv6: a shape byte s and 4 bytes put at
 *                  bytes 4 * (s & 3); the others 0x00, or 0xff when s & 4;
 *                  s & 8 makes it IPv4-mapped (::ffff:0:0/96), so that
 *                  blocks of a small input meet, nest and map.
 *         then addresses: a byte (bit 0: IPv6) and 4 or 16 bytes each.
 *   odd:  the rest is a list file, read by moxy_prefix_set_read (value 1).
 *
 * Invariants:
 *  - every add within the limit is taken, the next one refused with
 *    "too many prefixes (at most N)";
 *  - a lookup gives the value of the model's longest matching block, the
 *    first added among equal ones (a bit-by-bit match over all blocks), at
 *    every block's first and last address, the ones before and after, the
 *    first and last address of each family, the input's addresses, and
 *    each IPv4 address again as ::ffff:a.b.c.d;
 *  - the counts: distinct blocks, duplicates, ranges <= 2 * blocks + 1;
 *  - a list file is taken when each line, cut at '#' (a line's first
 *    MOXY_PREFIX_LINE_MAX bytes must hold the '#' when it is longer) and
 *    trimmed of spaces, tabs and CRs, is empty or a block the parser's
 *    model takes; else the error names the first line that is not, as
 *    "fuzz:LINE: "; a file taken gives a set equal to the model's;
 *  - moxy_cidr_parse agrees with its model (inet_pton of the text before
 *    '/', 1-3 digits after it within the family's width), and what it
 *    makes, written out, parses back to the same block.
 */
#include "base/addr.h"
#include "base/prefix_set.h"
#include "fuzz.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdio.h>

#define MAX_BLOCKS 64
#define MAX_MODEL 4096 /* the blocks of a list file the model keeps */

typedef struct {
    moxy_cidr_t m;
    int value;
} block_t;

static block_t model[MAX_MODEL];
static int nmodel;

static int bit_of(const uint8_t *a, int i)
{
    return (a[i / 8] >> (7 - i % 8)) & 1;
}

/* The model's lookup: every block, bit by bit; the longest wins, then the
 * first added. */
static int model_lookup(int family, const uint8_t *addr)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == 6 && memcmp(addr, mapped, 12) == 0) {
        family = 4;
        addr += 12;
    }
    int best = -1, value = MOXY_PREFIX_NONE;
    for (int k = 0; k < nmodel; k++) {
        const moxy_cidr_t *m = &model[k].m;
        if (m->family != family || m->bits <= best) continue;
        int i = 0;
        while (i < m->bits && bit_of(m->addr, i) == bit_of(addr, i))
            i++;
        if (i == m->bits) best = m->bits, value = model[k].value;
    }
    return value;
}

static void check_at(const moxy_prefix_set_t *s, int family, const uint8_t *addr)
{
    int got = moxy_prefix_set_lookup(s, family, addr), want = model_lookup(family, addr);
    assert(got == want);
    if (family == 4) {
        uint8_t m[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(m + 12, addr, 4);
        assert(moxy_prefix_set_lookup(s, 6, m) == want);
    }
}

/* Add delta (+1 or -1) to the size-byte big-endian number at a; 0 when it
 * wrapped around. */
static int step(uint8_t *a, int size, int delta)
{
    for (int i = size - 1; i >= 0; i--) {
        a[i] = (uint8_t)(a[i] + delta);
        if (a[i] != (delta > 0 ? 0 : 0xff)) return 1;
    }
    return 0;
}

/* Every block's edges, and each family's first and last address. */
static void check_edges(const moxy_prefix_set_t *s)
{
    for (int k = 0; k < nmodel; k++) {
        const moxy_cidr_t *m = &model[k].m;
        int size = m->family == 4 ? 4 : 16;
        uint8_t first[16], last[16], x[16];
        memcpy(first, m->addr, 16);
        memcpy(last, m->addr, 16);
        for (int i = m->bits; i < size * 8; i++)
            last[i / 8] |= (uint8_t)(0x80 >> (i % 8));
        check_at(s, m->family, first);
        check_at(s, m->family, last);
        memcpy(x, first, 16);
        if (step(x, size, -1)) check_at(s, m->family, x);
        memcpy(x, last, 16);
        if (step(x, size, +1)) check_at(s, m->family, x);
    }
    uint8_t zeros[16] = {0}, ones[16];
    memset(ones, 0xff, sizeof(ones));
    check_at(s, 4, zeros);
    check_at(s, 4, ones);
    check_at(s, 6, zeros);
    check_at(s, 6, ones);
}

/* The counts of s against the model. */
static void check_stats(const moxy_prefix_set_t *s, int added)
{
    size_t distinct[2] = {0, 0};
    for (int k = 0; k < nmodel; k++) {
        int dup = 0;
        for (int j = 0; j < k && !dup; j++)
            dup = model[j].m.family == model[k].m.family && model[j].m.bits == model[k].m.bits &&
                  memcmp(model[j].m.addr, model[k].m.addr, 16) == 0;
        if (!dup) distinct[model[k].m.family == 4 ? 0 : 1]++;
    }
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    assert(st.prefixes[0] == distinct[0] && st.prefixes[1] == distinct[1]);
    assert(st.duplicates == (size_t)added - distinct[0] - distinct[1]);
    assert(st.ranges[0] >= 1 && st.ranges[0] <= 2 * distinct[0] + 1);
    assert(st.ranges[1] >= 1 && st.ranges[1] <= 2 * distinct[1] + 1);
    assert(st.bytes > 0);
}

/* moxy_cidr_parse's model: MOXY_OK with m as moxy_cidr_init makes it. */
static int model_parse(const char *p, size_t n, moxy_cidr_t *m)
{
    size_t alen = 0;
    while (alen < n && p[alen] != '/')
        alen++;
    char text[64];
    if (alen == 0 || alen >= sizeof(text) || memchr(p, '\0', n)) return MOXY_ERROR;
    memcpy(text, p, alen);
    text[alen] = '\0';
    int v6 = memchr(text, ':', alen) != NULL, max = v6 ? 128 : 32, bits = max;
    memset(m->addr, 0, 16);
    if (inet_pton(v6 ? AF_INET6 : AF_INET, text, m->addr) != 1) return MOXY_ERROR;
    if (alen < n) {
        size_t d = n - alen - 1;
        if (d < 1 || d > 3) return MOXY_ERROR;
        bits = 0;
        for (size_t i = 0; i < d; i++) {
            char c = p[alen + 1 + i];
            if (c < '0' || c > '9') return MOXY_ERROR;
            bits = bits * 10 + (c - '0');
        }
        if (bits > max) return MOXY_ERROR;
    }
    moxy_cidr_init(m, v6 ? 6 : 4, bits);
    return MOXY_OK;
}

/* moxy_cidr_parse of p agrees with its model; what it makes parses back. */
static int check_parse(const char *p, size_t n, moxy_cidr_t *out)
{
    char *copy = n ? malloc(n) : NULL; /* exactly n bytes: ASan sees a read past them */
    if (n) memcpy(copy, p, n);
    moxy_cidr_t m, want;
    const char *why = NULL;
    int rc = moxy_cidr_parse(copy ? copy : "", n, &m, &why);
    free(copy);
    assert(rc == model_parse(p, n, &want));
    if (rc != MOXY_OK) {
        assert(why && *why);
        return rc;
    }
    assert(m.family == want.family && m.bits == want.bits && memcmp(m.addr, want.addr, 16) == 0);
    char text[INET6_ADDRSTRLEN + 8];
    inet_ntop(m.family == 4 ? AF_INET : AF_INET6, m.addr, text, INET6_ADDRSTRLEN);
    snprintf(text + strlen(text), 8, "/%d", m.bits);
    moxy_cidr_t back;
    assert(moxy_cidr_parse(text, strlen(text), &back, &why) == MOXY_OK);
    assert(back.family == m.family && back.bits == m.bits && memcmp(back.addr, m.addr, 16) == 0);
    *out = m;
    return MOXY_OK;
}

static void blocks(unsigned sel, const uint8_t *data, size_t size)
{
    size_t limit = sel >> 1;
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(limit);
    assert(b);
    char err[256];
    int added = 0;
    nmodel = 0;
    while (size > 0 && nmodel < MAX_BLOCKS) {
        unsigned h = fuzz_take_byte(&data, &size);
        if (h & 0x80) break;
        int v6 = h & 1, width = v6 ? 128 : 32, value = (h >> 1) & 7;
        moxy_cidr_t m = {.family = (uint8_t)(v6 ? 6 : 4)};
        int bits = (int)(fuzz_take_byte(&data, &size) % (unsigned)(width + 1));
        if (v6) {
            unsigned s = fuzz_take_byte(&data, &size);
            memset(m.addr, s & 4 ? 0xff : 0, 16);
            if (s & 8) {
                memset(m.addr, 0, 10);
                m.addr[10] = m.addr[11] = 0xff;
            }
            for (int i = 0; i < 4; i++)
                m.addr[4 * (s & 3) + (unsigned)i] = (uint8_t)fuzz_take_byte(&data, &size);
        } else {
            for (int i = 0; i < 4; i++)
                m.addr[i] = (uint8_t)fuzz_take_byte(&data, &size);
        }
        moxy_cidr_init(&m, m.family, bits);
        int rc;
        if (h & 0x40) {
            char text[INET6_ADDRSTRLEN + 8];
            inet_ntop(m.family == 4 ? AF_INET : AF_INET6, m.addr, text, INET6_ADDRSTRLEN);
            snprintf(text + strlen(text), 8, "/%d", m.bits);
            moxy_cidr_t parsed;
            assert(check_parse(text, strlen(text), &parsed) == MOXY_OK);
            rc = moxy_prefix_set_add_text(b, text, strlen(text), value, err, sizeof(err));
        } else {
            rc = moxy_prefix_set_add(b, &m, value, err, sizeof(err));
        }
        if (limit && (size_t)added >= limit) {
            char want[64];
            snprintf(want, sizeof(want), "too many prefixes (at most %zu)", limit);
            assert(rc == MOXY_ERROR && strcmp(err, want) == 0);
            continue;
        }
        assert(rc == MOXY_OK);
        model[nmodel++] = (block_t){m, value};
        added++;
    }
    moxy_prefix_set_t *s = moxy_prefix_set_build(b, err, sizeof(err));
    assert(s);
    check_stats(s, added);
    check_edges(s);
    while (size > 0) {
        int v6 = fuzz_take_byte(&data, &size) & 1;
        uint8_t a[16] = {0};
        for (int i = 0; i < (v6 ? 16 : 4); i++)
            a[i] = (uint8_t)fuzz_take_byte(&data, &size);
        check_at(s, v6 ? 6 : 4, a);
    }
    moxy_prefix_set_free(s);
    moxy_prefix_set_builder_free(b);
}

static int blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static void list_file(const uint8_t *data, size_t size)
{
    /* the model: the first line that is not empty or a block */
    nmodel = 0;
    size_t bad_line = 0, lineno = 0;
    for (size_t i = 0; i < size && !bad_line;) {
        size_t end = i;
        while (end < size && data[end] != '\n')
            end++;
        lineno++;
        const char *line = (const char *)data + i;
        size_t len = end - i, kept = len < MOXY_PREFIX_LINE_MAX ? len : MOXY_PREFIX_LINE_MAX;
        const char *hash = memchr(line, '#', kept);
        if (!hash && len > MOXY_PREFIX_LINE_MAX) {
            bad_line = lineno;
            break;
        }
        size_t s = 0, e = hash ? (size_t)(hash - line) : kept;
        while (s < e && blank(line[s]))
            s++;
        while (e > s && blank(line[e - 1]))
            e--;
        moxy_cidr_t m;
        if (e > s) {
            if (check_parse(line + s, e - s, &m) != MOXY_OK)
                bad_line = lineno;
            else if (nmodel < MAX_MODEL)
                model[nmodel++] = (block_t){m, 1};
        }
        i = end + 1;
    }
    if (nmodel == MAX_MODEL) return; /* past what the model keeps: not compared */

    char *copy = fuzz_dup(data, size);
    FILE *f = size ? fmemopen(copy, size, "r") : fopen("/dev/null", "r");
    assert(f);
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    char err[1200];
    int rc = moxy_prefix_set_read(b, f, "fuzz", 1, err, sizeof(err));
    fclose(f);
    free(copy);
    if (bad_line) {
        char want[32];
        snprintf(want, sizeof(want), "fuzz:%zu: ", bad_line);
        assert(rc == MOXY_ERROR && strncmp(err, want, strlen(want)) == 0);
    } else {
        assert(rc == MOXY_OK);
        moxy_prefix_set_t *s = moxy_prefix_set_build(b, err, sizeof(err));
        assert(s);
        check_stats(s, nmodel);
        check_edges(s);
        moxy_prefix_set_free(s);
    }
    moxy_prefix_set_builder_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = fuzz_take_byte(&data, &size);
    if (sel & 1)
        list_file(data, size);
    else
        blocks(sel, data, size);
    return 0;
}
