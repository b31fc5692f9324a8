/*
 * accept_encoding_fuzz.c -- Accept-Encoding parsed and a coding chosen
 * (codec/accept.c).
 *
 * An input is one selector byte (which codings are offered, and in which
 * order), then field lines separated by '\n', each added as one
 * Accept-Encoding line.
 *
 * Invariants: the weight of every coding equals a second, independent
 * model's (elements split at ',', the token before ';' or space, "q="
 * read with strtod-free rules, the highest weight of a coding named twice,
 * bad elements skipped); the chosen coding is offered and accepted, no
 * offered coding weighs more, ties go to the first in the order; identity
 * is chosen when nothing offered is accepted, or identity is named above
 * the best; nothing reads past the input.
 */
#include "fuzz.h"
#include "codec/accept.h"

#include <assert.h>

/* The model's weight of an element's "q=" parameter value, or -1. */
static int model_q(const char *p, size_t n)
{
    if (n == 1 && (p[0] == '0' || p[0] == '1')) return (p[0] - '0') * 1000;
    if (n < 2 || n > 5 || p[1] != '.') return -1;
    if (p[0] == '1') {
        for (size_t i = 2; i < n; i++)
            if (p[i] != '0') return -1;
        return 1000;
    }
    if (p[0] != '0') return -1;
    int q = 0, scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9') return -1;
        q += (p[i] - '0') * scale;
    }
    return q;
}

static int tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int ows(char c)
{
    return c == ' ' || c == '\t';
}

/* One element (trimmed) into the model: name and weight, or -1. */
static void model_element(const char *e, size_t n, const char **name, size_t *nlen, int *q)
{
    size_t i = 0;
    while (i < n && tchar((unsigned char)e[i])) i++;
    *name = e;
    *nlen = i;
    *q = i ? 1000 : -1;
    while (*q >= 0) {
        while (i < n && ows(e[i])) i++;
        if (i == n) return;
        if (e[i] != ';') {
            *q = -1;
            return;
        }
        i++;
        while (i < n && ows(e[i])) i++;
        size_t ks = i;
        while (i < n && tchar((unsigned char)e[i])) i++;
        size_t ke = i;
        if (ke == ks || i == n || e[i] != '=') {
            *q = -1;
            return;
        }
        size_t vs = ++i;
        while (i < n && e[i] != ';' && !ows(e[i])) i++;
        if (ke - ks == 1 && (e[ks] | 0x20) == 'q') *q = model_q(e + vs, i - vs);
    }
}

static int model_coding(const char *s, size_t n)
{
    static const char *const names[] = {"identity", "gzip", "br", "zstd"};
    for (int k = 0; k < 4; k++)
        if (fuzz_ieq(s, n, names[k], strlen(names[k]))) return k;
    if (fuzz_ieq(s, n, "x-gzip", 6)) return 1;
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = fuzz_take_byte(&data, &size);
    char *in = size ? malloc(size) : NULL; /* exactly size bytes */
    if (size) memcpy(in, data, size);

    moxy_accept_t a;
    moxy_accept_init(&a);
    int mq[4] = {-1, -1, -1, -1}, mstar = -1, lines = 0;
    for (size_t i = 0; i <= size && size;) {
        size_t end = i;
        while (end < size && in[end] != '\n') end++;
        moxy_accept_add(&a, in + i, end - i);
        lines++;
        for (size_t s = i; s <= end;) { /* the model: split at ',' */
            size_t e = s;
            while (e < end && in[e] != ',') e++;
            size_t ts = s, te = e;
            while (ts < te && ows(in[ts])) ts++;
            while (te > ts && ows(in[te - 1])) te--;
            if (te > ts) {
                const char *name;
                size_t nlen;
                int q;
                model_element(in + ts, te - ts, &name, &nlen, &q);
                if (q >= 0) {
                    int *slot = nlen == 1 && name[0] == '*' ? &mstar : NULL;
                    int c = slot ? -1 : model_coding(name, nlen);
                    if (c >= 0) slot = &mq[c];
                    if (slot && q > *slot) *slot = q;
                }
            }
            s = e + 1;
        }
        i = end + 1;
    }
    assert(a.present == (lines > 0));
    for (int k = 0; k < 4; k++) assert(a.q[k] == mq[k]);
    assert(a.star == mstar);

    static const uint8_t orders[6][3] = {{2, 3, 1}, {1, 2, 3}, {3, 1, 2}, {1, 3, 2}, {2, 1, 3}, {3, 2, 1}};
    const uint8_t *order = orders[sel % 6];
    unsigned offer = ((sel >> 3) & 7) << 1; /* bits 1..3 */
    int chosen = moxy_accept_choose(&a, offer, order, 3);
    assert(chosen >= 0 && chosen < MOXY_ENC_COUNT);
    /* the model's weights */
    int w[4];
    for (int k = 0; k < 4; k++) w[k] = mq[k] >= 0 ? mq[k] : mstar >= 0 ? mstar : (k == 0 ? 1 : -1);
    int best = 0, bq = 0;
    for (int i = 0; i < 3 && a.present; i++)
        if ((offer >> order[i]) & 1 && w[order[i]] > bq) best = order[i], bq = w[order[i]];
    if (best && mq[0] > bq) best = 0;
    assert(chosen == best);
    if (chosen) assert(moxy_accept_allows(&a, chosen));
    for (int k = 0; k < 4; k++) assert(moxy_accept_allows(&a, k) == (!a.present || w[k] > 0));
    free(in);
    return 0;
}
