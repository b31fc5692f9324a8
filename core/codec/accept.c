/*
 * accept.c -- Accept-Encoding parsed and a coding chosen; see accept.h.
 *
 *   Accept-Encoding  = #( codings [ weight ] )
 *   codings          = content-coding / "identity" / "*"
 *   weight           = OWS ";" OWS "q=" qvalue
 *   qvalue           = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
 */
#include "codec/accept.h"
#include "base/moxy.h"

#include <string.h>

void moxy_accept_init(moxy_accept_t *a)
{
    for (int e = 0; e < MOXY_ENC_COUNT; e++) a->q[e] = -1;
    a->star = -1;
    a->present = 0;
}

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The qvalue at p (n bytes, nothing around it), times 1000, or -1. */
static int qvalue(const char *p, size_t n)
{
    if (n == 0 || (p[0] != '0' && p[0] != '1')) return -1;
    int q = (p[0] - '0') * 1000;
    if (n == 1) return q;
    if (p[1] != '.' || n > 5) return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9') return -1;
        q += (p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

static size_t skip_ows(const char *v, size_t i, size_t n)
{
    while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
    return i;
}

/* One element v[0..n): "coding *( OWS ; OWS param )".  Its coding and
 * weight, or -1 as *q when it does not parse. */
static void element(const char *v, size_t n, const char **name, size_t *nlen, int *q)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)v[i])) i++;
    *name = v;
    *nlen = i;
    *q = i ? 1000 : -1;
    i = skip_ows(v, i, n);
    while (*q >= 0 && i < n) {
        if (v[i] != ';') {
            *q = -1;
            return;
        }
        i = skip_ows(v, i + 1, n);
        size_t k = i;
        while (i < n && is_tchar((unsigned char)v[i])) i++;
        size_t klen = i - k;
        if (klen == 0 || i >= n || v[i] != '=') {
            *q = -1;
            return;
        }
        size_t s = ++i;
        while (i < n && v[i] != ';' && v[i] != ' ' && v[i] != '\t') i++;
        if (klen == 1 && (v[k] == 'q' || v[k] == 'Q')) *q = qvalue(v + s, i - s);
        /* other parameters: none is defined; ignored */
        i = skip_ows(v, i, n);
    }
}

void moxy_accept_add(moxy_accept_t *a, const char *v, size_t n)
{
    a->present = 1;
    size_t i = 0;
    while (i < n) {
        size_t end = i;
        /* no quoted strings in this field's grammar: a comma ends an element */
        while (end < n && v[end] != ',') end++;
        size_t s = skip_ows(v, i, end), e = end;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e > s) {
            const char *name;
            size_t nlen;
            int q;
            element(v + s, e - s, &name, &nlen, &q);
            if (q >= 0) {
                int16_t *slot = NULL;
                if (nlen == 1 && name[0] == '*') {
                    slot = &a->star;
                } else {
                    int enc = moxy_enc_parse(name, nlen);
                    if (enc >= 0) slot = &a->q[enc];
                }
                if (slot && q > *slot) *slot = (int16_t)q;
            }
        }
        i = end + 1;
    }
}

/* enc's weight in a: named, else "*"'s, else -1 (identity: 1 when
 * neither names it, RFC 9110 12.5.3). */
static int weight(const moxy_accept_t *a, int enc)
{
    if (a->q[enc] >= 0) return a->q[enc];
    if (a->star >= 0) return a->star;
    return enc == MOXY_ENC_IDENTITY ? 1 : -1;
}

int moxy_accept_allows(const moxy_accept_t *a, int enc)
{
    if (!a->present) return 1;
    return weight(a, enc) > 0;
}

int moxy_accept_choose(const moxy_accept_t *a, unsigned offer, const uint8_t *order, int n)
{
    if (!a->present) return MOXY_ENC_IDENTITY;
    int best = MOXY_ENC_IDENTITY, bq = 0;
    for (int i = 0; i < n; i++) {
        int e = order[i];
        if (e <= MOXY_ENC_IDENTITY || e >= MOXY_ENC_COUNT || !(offer & (1u << e))) continue;
        int q = weight(a, e);
        if (q > bq) {
            best = e;
            bq = q;
        }
    }
    /* identity named above the best coding: the client would rather not */
    if (best != MOXY_ENC_IDENTITY && a->q[MOXY_ENC_IDENTITY] > bq) return MOXY_ENC_IDENTITY;
    return best;
}
