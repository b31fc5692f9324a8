/*
 * headers_fuzz.c -- header lists in a request pool (headers.c): add,
 * remove, remove_kind, set, find, find_kind, get, kinds, the kinds of
 * names, comma lists (moxy_list_has_token), the Connection rules
 * (moxy_headers_connection_list, moxy_header_connection_named), the head
 * writer (moxy_headers_size, moxy_headers_write) and the chunk writers,
 * driven by a sequence of operations on one moxy_pool_t.
 *
 * Input: operations separated by '\n'; each is an opcode byte followed by
 * arguments separated by '\x01' (a name, a value, a number as decimal
 * text).  A model list (plain malloc'ed copies) follows every change.
 *
 * Invariants:
 *  - the list equals the model after every operation (names, values,
 *    order), each header's kind is moxy_header_kind of its name and that
 *    kind agrees with a table of the RFC's names;
 *  - remove/remove_kind return how many the model lost; find, find_kind,
 *    get and kinds agree with the model;
 *  - moxy_list_has_token agrees with a model of comma lists with OWS;
 *  - moxy_headers_write writes at most moxy_headers_size bytes; what it
 *    writes is, in order, the list's "Name: value" lines that are not
 *    hop-by-hop (Upgrade only when kept) nor skipped by kind;
 *  - moxy_headers_drop_connection_named removes (in order) exactly the
 *    fields a Connection list names, but hop-by-hop ones and kept kinds;
 *  - moxy_chunk_head writes "<hex>\r\n" of the length; moxy_chunk_end
 *    writes "0\r\n", the trailers' lines but MOXY_HK_TRAILER_FORBIDDEN ones, "\r\n"; with
 *    valid names and values that parses (strict llhttp) as a body's end.
 */
#include "fuzz.h"
#include "base/headers.h"
#include "base/pool.h"

#include <assert.h>
#include <event2/buffer.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_MODEL 512
#define MAX_OPS 96 /* the rest of a longer input is not looked at: executions stay fast */

typedef struct {
    char *name, *value;
    size_t nlen, vlen;
    uint32_t kind; /* moxy_header_kind (checked against model_kind when added) */
} mh_t;

static mh_t model[MAX_MODEL];
static int nmodel;

static void model_clear(void)
{
    for (int i = 0; i < nmodel; i++) {
        free(model[i].name);
        free(model[i].value);
    }
    nmodel = 0;
}

/* The kinds of names, from the RFCs and moxy's own list (http-t.h). */
static uint32_t model_kind(const char *n, size_t l)
{
    static const struct {
        const char *name;
        uint32_t kind;
    } names[] = {
        {"te", MOXY_HK_HOP},
        {"host", MOXY_HK_HOST},
        {"range", MOXY_HK_RANGE},
        {"expect", MOXY_HK_EXPECT},
        {"upgrade", MOXY_HK_HOP | MOXY_HK_UPGRADE},
        {"trailer", MOXY_HK_HOP},
        {"if-match", MOXY_HK_CONDITION},
        {"if-range", MOXY_HK_IF_RANGE},
        {"forwarded", MOXY_HK_FWD},
        {"connection", MOXY_HK_HOP | MOXY_HK_CONNECTION},
        {"keep-alive", MOXY_HK_HOP},
        {"x-request-id", MOXY_HK_XRID},
        {"if-none-match", MOXY_HK_CONDITION},
        {"content-length", MOXY_HK_CL},
        {"x-forwarded-for", MOXY_HK_XFF},
        {"x-forwarded-host", MOXY_HK_XFH},
        {"transfer-encoding", MOXY_HK_HOP | MOXY_HK_TE},
        {"x-forwarded-proto", MOXY_HK_XFP},
        {"if-modified-since", MOXY_HK_CONDITION},
        {"if-unmodified-since", MOXY_HK_CONDITION},
        /* RFC 9110 6.5.1: not in a trailer */
        {"age", MOXY_HK_NOT_TRAILER}, {"via", MOXY_HK_NOT_TRAILER}, {"date", MOXY_HK_NOT_TRAILER},
        {"vary", MOXY_HK_NOT_TRAILER},
        {"cookie", MOXY_HK_NOT_TRAILER}, {"accept", MOXY_HK_NOT_TRAILER}, {"pragma", MOXY_HK_NOT_TRAILER},
        {"expires", MOXY_HK_NOT_TRAILER}, {"warning", MOXY_HK_NOT_TRAILER}, {"location", MOXY_HK_NOT_TRAILER},
        {"set-cookie", MOXY_HK_NOT_TRAILER}, {"retry-after", MOXY_HK_NOT_TRAILER},
        {"content-type", MOXY_HK_NOT_TRAILER}, {"max-forwards", MOXY_HK_NOT_TRAILER},
        {"cache-control", MOXY_HK_NOT_TRAILER}, {"authorization", MOXY_HK_NOT_TRAILER},
        {"content-range", MOXY_HK_NOT_TRAILER}, {"accept-charset", MOXY_HK_NOT_TRAILER},
        {"accept-encoding", MOXY_HK_NOT_TRAILER}, {"accept-language", MOXY_HK_NOT_TRAILER},
        {"content-encoding", MOXY_HK_NOT_TRAILER}, {"www-authenticate", MOXY_HK_NOT_TRAILER},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (fuzz_ieq(n, l, names[i].name, strlen(names[i].name))) return names[i].kind;
    if (l >= 6 && fuzz_ieq(n, 6, "proxy-", 6)) return MOXY_HK_HOP;
    return 0;
}

/* moxy_list_has_token's model: comma-separated elements, OWS (SP, HTAB)
 * around each, compared without case. */
static int model_has_token(const char *v, size_t n, const char *t, size_t tl)
{
    size_t i = 0;
    for (;;) {
        size_t s = i;
        while (i < n && v[i] != ',') i++;
        size_t a = s, b = i;
        while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
        if (b > a && fuzz_ieq(v + a, b - a, t, tl)) return 1;
        if (i >= n) return 0;
        i++;
    }
}

/* 1 when some Connection header of the model names name in any reading
 * (comma list, or elements split at spaces too): such a header may go or
 * stay; any other non-hop-by-hop header must be written. */
static int model_named_any(const char *name, size_t nlen)
{
    for (int i = 0; i < nmodel; i++) {
        if (!(model[i].kind & MOXY_HK_CONNECTION)) continue;
        const char *v = model[i].value;
        size_t n = model[i].vlen, j = 0;
        while (j < n) {
            while (j < n && (v[j] == ' ' || v[j] == '\t' || v[j] == ',')) j++;
            size_t s = j;
            while (j < n && v[j] != ',' && v[j] != ' ' && v[j] != '\t') j++;
            if (j > s && fuzz_ieq(v + s, j - s, name, nlen)) return 1;
        }
        if (model_has_token(v, n, name, nlen)) return 1;
    }
    return 0;
}

/* 1 when a Connection header of the model names name as a comma-list
 * element.  A field called "close" is left out: "Connection: close" is the
 * option, and moxy does not look for such a field (the name is reserved,
 * RFC 9110 16.3.2.1; model_named_any lets it go or stay). */
static int model_named_list(const char *name, size_t nlen);
static int model_named(const char *name, size_t nlen)
{
    return !fuzz_ieq(name, nlen, "close", 5) && model_named_list(name, nlen);
}

/* 1 when a Connection header of the model names name as a comma-list element. */
static int model_named_list(const char *name, size_t nlen)
{
    for (int i = 0; i < nmodel; i++)
        if ((model[i].kind & MOXY_HK_CONNECTION) &&
            model_has_token(model[i].value, model[i].vlen, name, nlen))
            return 1;
    return 0;
}

static void check_list(const moxy_headers_t *hs)
{
    assert((int)hs->n == nmodel);
    assert(hs->n <= hs->cap);
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        assert(h->name_len == model[i].nlen && memcmp(h->name, model[i].name, h->name_len) == 0);
        assert(h->value_len == model[i].vlen && memcmp(h->value, model[i].value, h->value_len) == 0);
        assert(h->name[h->name_len] == '\0' && h->value[h->value_len] == '\0');
        assert(h->kind == model[i].kind);
    }
}

static void model_add(const char *n, size_t nl, const char *v, size_t vl)
{
    if (nmodel == MAX_MODEL) abort();
    mh_t *m = &model[nmodel++];
    m->name = malloc(nl + 1);
    m->value = malloc(vl + 1);
    memcpy(m->name, n, nl);
    memcpy(m->value, v, vl);
    m->nlen = nl;
    m->vlen = vl;
    m->kind = moxy_header_kind(n, nl);
    /* model and moxy agree on names that can occur (tokens: llhttp and the
     * Lua API check them); moxy_strieq_lit reads a CR as '-' (headers.h) */
    if (moxy_header_name_valid(n, nl)) assert(m->kind == model_kind(n, nl));
}

static int model_remove(const char *n, size_t nl, uint32_t mask)
{
    int j = 0, removed = 0;
    for (int i = 0; i < nmodel; i++) {
        int gone = n ? fuzz_ieq(model[i].name, model[i].nlen, n, nl)
                     : (model[i].kind & mask) != 0;
        if (gone) {
            free(model[i].name);
            free(model[i].value);
            removed++;
        } else {
            model[j++] = model[i];
        }
    }
    nmodel = j;
    return removed;
}

/* The argument list of one operation. */
typedef struct {
    const char *p[4];
    size_t n[4];
    int count;
} args_t;

static unsigned long num(const args_t *a, int i)
{
    if (i >= a->count) return 0;
    unsigned long v = 0;
    for (size_t k = 0; k < a->n[i] && k < 20; k++) v = v * 31 + (unsigned char)a->p[i][k];
    return v;
}

static uint32_t mask_of(unsigned long v)
{
    return (uint32_t)(v & 0x7fff);
}

static void check_write(const moxy_headers_t *hs, int keep_upgrade, uint32_t skip)
{
    size_t size = moxy_headers_size(hs);
    char *buf = malloc(size + 1); /* exact: ASan sees a write past size */
    size_t n = moxy_headers_write(buf, hs, keep_upgrade, skip);
    assert(n <= size);
    /* walk the output against the model in order */
    size_t pos = 0;
    int k = 0;
    while (k < nmodel) {
        const mh_t *m = &model[k];
        uint32_t kind = m->kind;
        size_t line = m->nlen + 2 + m->vlen + 2;
        int match = pos + line <= n && memcmp(buf + pos, m->name, m->nlen) == 0 &&
                    memcmp(buf + pos + m->nlen, ": ", 2) == 0 &&
                    memcmp(buf + pos + m->nlen + 2, m->value, m->vlen) == 0 &&
                    memcmp(buf + pos + line - 2, "\r\n", 2) == 0;
        int hop = (kind & MOXY_HK_HOP) && !(keep_upgrade && (kind & MOXY_HK_UPGRADE));
        /* what a Connection header names was dropped on the way in
         * (moxy_headers_drop_connection_named, op 11): the writer writes it */
        int forbidden = hop || (kind & skip);
        int required = !forbidden;
        if (match && !forbidden) {
            pos += line;
        } else {
            /* not written: it must be one that may go */
            assert(!required);
        }
        k++;
    }
    if (pos != n) { /* nothing else was written */
        fprintf(stderr, "write (keep_upgrade %d, skip %#x) wrote %zu bytes, %zu expected:\n", keep_upgrade, skip, n, pos);
        for (int i = 0; i < nmodel; i++)
            fprintf(stderr, "  [%d] %.*s: %.*s (kind %#x)\n", i, (int)model[i].nlen, model[i].name, (int)model[i].vlen,
                    model[i].value, model[i].kind);
        fprintf(stderr, "wrote: %.*s\n", (int)n, buf);
        abort();
    }
    free(buf);
}

/* Strict llhttp over "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body. */
static int done_cb(llhttp_t *p)
{
    *(int *)p->data = 1;
    return 0;
}

static void check_chunk_end(const moxy_headers_t *hs)
{
    struct evbuffer *o = evbuffer_new();
    moxy_chunk_end(o, hs);
    size_t n = evbuffer_get_length(o);
    char *b = malloc(n + 1);
    evbuffer_remove(o, b, n);
    assert(n >= 5 && memcmp(b, "0\r\n", 3) == 0 && memcmp(b + n - 2, "\r\n", 2) == 0);
    size_t pos = 3;
    int valid = 1;
    for (uint32_t i = 0; hs && i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        /* the framing is checked for lists llhttp takes as trailers: tokens,
         * valid values, and none of the fields whose values llhttp
         * interprets there (the lists moxy writes come from llhttp, or from
         * the Lua API, which checks names and values) */
        if (!moxy_header_name_valid(h->name, h->name_len) || !moxy_header_value_valid(h->value, h->value_len) ||
            (h->kind & (MOXY_HK_CL | MOXY_HK_TE | MOXY_HK_CONNECTION | MOXY_HK_UPGRADE)) ||
            MOXY_STRIEQ_LIT(h->name, h->name_len, "proxy-connection"))
            valid = 0;
        size_t line = h->name_len + 2 + h->value_len + 2;
        int match = pos + line <= n - 2 && memcmp(b + pos, h->name, h->name_len) == 0 &&
                    memcmp(b + pos + h->name_len, ": ", 2) == 0 &&
                    memcmp(b + pos + h->name_len + 2, h->value, h->value_len) == 0 &&
                    memcmp(b + pos + line - 2, "\r\n", 2) == 0;
        if (h->kind & MOXY_HK_TRAILER_FORBIDDEN) continue; /* never written */
        assert(match); /* every other field is */
        pos += line;
    }
    assert(pos == n - 2);
    if (valid) {
        static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        llhttp_settings_t s;
        llhttp_settings_init(&s);
        s.on_message_complete = done_cb;
        llhttp_t p;
        llhttp_init(&p, HTTP_RESPONSE, &s);
        int done = 0;
        p.data = &done;
        assert(llhttp_execute(&p, head, sizeof(head) - 1) == HPE_OK);
        llhttp_errno_t err = llhttp_execute(&p, b, n);
        if (err != HPE_OK) fprintf(stderr, "chunk_end: %s (%s)\n", llhttp_errno_name(err), llhttp_get_error_reason(&p));
        assert(err == HPE_OK && done);
    }
    free(b);
    evbuffer_free(o);
}

static void check_chunk_head(uint64_t len)
{
    struct evbuffer *o = evbuffer_new();
    moxy_chunk_head(o, len);
    size_t n = evbuffer_get_length(o);
    char b[32];
    assert(n >= 3 && n < sizeof(b));
    evbuffer_remove(o, b, n);
    assert(b[n - 2] == '\r' && b[n - 1] == '\n');
    b[n - 2] = '\0';
    for (size_t i = 0; i < n - 2; i++) assert((b[i] >= '0' && b[i] <= '9') || (b[i] >= 'a' && b[i] <= 'f'));
    assert(n - 2 == 1 || b[0] != '0');
    assert(strtoull(b, NULL, 16) == len);
    char d[24];
    char *e = moxy_write_u64(d, len);
    *e = '\0';
    assert(strtoull(d, NULL, 10) == len);
    evbuffer_free(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moxy_pool_t pool;
    moxy_pool_init(&pool);
    moxy_headers_t hs = {0};
    const char *p = (const char *)data, *end = p + size;
    nmodel = 0;
    int ops = 0;
    while (p < end && ops++ < MAX_OPS) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        unsigned op = (unsigned char)*p++;
        args_t a = {.count = 0};
        while (a.count < 4) {
            const char *sep = memchr(p, '\x01', (size_t)(le > p ? le - p : 0));
            const char *ae = sep ? sep : le;
            if (ae < p) ae = p;
            /* each argument in its own exact allocation */
            a.p[a.count] = p;
            a.n[a.count] = (size_t)(ae - p);
            a.count++;
            if (!sep) break;
            p = sep + 1;
        }
        char *copy[4];
        for (int i = 0; i < a.count; i++) {
            copy[i] = malloc(a.n[i] ? a.n[i] : 1);
            memcpy(copy[i], a.p[i], a.n[i]);
            a.p[i] = copy[i];
        }
        const char *n0 = a.p[0], *v1 = a.count > 1 ? a.p[1] : "";
        size_t n0l = a.n[0], v1l = a.count > 1 ? a.n[1] : 0;
        switch (op % 16) {
        case 0: /* add */
        case 1:
            if (nmodel < MAX_MODEL) {
                assert(moxy_headers_add(&pool, &hs, n0, n0l, v1, v1l) == MOXY_OK);
                model_add(n0, n0l, v1, v1l);
            }
            break;
        case 2: /* remove */
            assert(moxy_headers_remove(&hs, n0, n0l) == model_remove(n0, n0l, 0));
            break;
        case 3: { /* remove_kind */
            uint32_t mask = mask_of(num(&a, 0));
            assert(moxy_headers_remove_kind(&hs, mask) == model_remove(NULL, 0, mask));
            break;
        }
        case 4: /* set */
            if (nmodel < MAX_MODEL) {
                model_remove(n0, n0l, 0);
                assert(moxy_headers_set(&pool, &hs, n0, n0l, v1, v1l) == MOXY_OK);
                model_add(n0, n0l, v1, v1l);
            }
            break;
        case 5: { /* find, get */
            uint32_t start = (uint32_t)(num(&a, 1) % (uint32_t)(nmodel + 2));
            int want = -1;
            for (int i = (int)start; i < nmodel; i++)
                if (fuzz_ieq(model[i].name, model[i].nlen, n0, n0l)) {
                    want = i;
                    break;
                }
            assert(moxy_headers_find(&hs, n0, n0l, start) == want);
            const moxy_header_t *h = moxy_headers_get(&hs, n0, n0l);
            int first = moxy_headers_find(&hs, n0, n0l, 0);
            assert(first < 0 ? h == NULL : h == &hs.h[first]);
            break;
        }
        case 6: { /* find_kind, kinds */
            uint32_t mask = mask_of(num(&a, 0));
            uint32_t start = (uint32_t)(num(&a, 1) % (uint32_t)(nmodel + 2));
            int want = -1;
            uint32_t all = 0;
            for (int i = 0; i < nmodel; i++) {
                uint32_t k = model[i].kind;
                all |= k;
                if (want < 0 && i >= (int)start && (k & mask)) want = i;
            }
            assert(moxy_headers_find_kind(&hs, mask, start) == want);
            assert(moxy_headers_kinds(&hs) == all);
            break;
        }
        case 7: /* a name's kind */
            if (moxy_header_name_valid(n0, n0l)) assert(moxy_header_kind(n0, n0l) == model_kind(n0, n0l));
            break;
        case 8: /* comma lists */
            assert(moxy_list_has_token(n0, n0l, v1, v1l) == model_has_token(n0, n0l, v1, v1l));
            break;
        case 9:
        case 10: { /* the head writer */
            unsigned long f = num(&a, 0);
            check_write(&hs, (int)(f & 1), mask_of(f >> 1) & ~(uint32_t)MOXY_HK_HOP);
            break;
        }
        case 11: { /* Connection rules */
            const moxy_headers_t *conn = moxy_headers_connection_list(&hs);
            assert(conn == NULL || conn == &hs);
            int named = moxy_header_connection_named(conn, n0, n0l);
            if (named) assert(model_named_list(n0, n0l));
            /* a name other than close/keep-alive/upgrade that a Connection
             * list element names: the list must be checked */
            if (moxy_header_name_valid(n0, n0l) && model_named(n0, n0l) && !fuzz_ieq(n0, n0l, "close", 5) && !fuzz_ieq(n0, n0l, "keep-alive", 10) &&
                !fuzz_ieq(n0, n0l, "upgrade", 7))
                assert(named);
            assert(moxy_header_connection_named(NULL, n0, n0l) == 0);
            if (a.count < 3) break;
            /* drop what the Connection headers name, but the kinds of keep */
            uint32_t keep = mask_of(num(&a, 2));
            int dropped = moxy_headers_drop_connection_named(&hs, keep);
            int j = 0, k = 0, gone = 0;
            for (int i = 0; i < nmodel; i++) {
                mh_t *m = &model[i];
                int kept = (uint32_t)j < hs.n && hs.h[j].name_len == m->nlen && hs.h[j].value_len == m->vlen &&
                           memcmp(hs.h[j].name, m->name, m->nlen) == 0 &&
                           memcmp(hs.h[j].value, m->value, m->vlen) == 0;
                int spared = (m->kind & (MOXY_HK_HOP | keep)) != 0;
                /* must go: a token a Connection list names, but the names of
                 * the options (close, keep-alive, upgrade) */
                int must = !spared && moxy_header_name_valid(m->name, m->nlen) && model_named(m->name, m->nlen) &&
                           !fuzz_ieq(m->name, m->nlen, "keep-alive", 10) && !fuzz_ieq(m->name, m->nlen, "upgrade", 7);
                if (kept) {
                    assert(!must);
                    model[k++] = *m;
                    j++;
                } else {
                    assert(!spared && model_named_any(m->name, m->nlen));
                    free(m->name);
                    free(m->value);
                    gone++;
                }
            }
            assert((uint32_t)j == hs.n && gone == dropped);
            nmodel = k;
            break;
        }
        case 12: /* chunk writers */
            check_chunk_head((uint64_t)num(&a, 0) * (num(&a, 1) | 1));
            check_chunk_end(&hs);
            check_chunk_end(NULL);
            break;
        case 13: /* the request ends: its pool is reset */
            moxy_pool_reset(&pool);
            memset(&hs, 0, sizeof(hs));
            model_clear();
            break;
        case 14: { /* other users of the pool in between */
            size_t want = num(&a, 0) % 9000 + 1; /* palloc(0) of an empty pool is NULL */
            char *m = moxy_palloc(&pool, want);
            assert(m && ((uintptr_t)m & 15) == 0);
            memset(m, 0xa5, want);
            char *s = moxy_pstrdup(&pool, n0, n0l);
            assert(s && memcmp(s, n0, n0l) == 0 && s[n0l] == '\0');
            char *buf = NULL;
            uint32_t len = 0, cap = 0;
            for (int i = 0; i < 3; i++) assert(moxy_pool_append(&pool, &buf, &len, &cap, v1, v1l) == 0);
            assert(len == 3 * v1l && cap > len && buf[len] == '\0');
            for (int i = 0; i < 3; i++) assert(memcmp(buf + i * v1l, v1, v1l) == 0);
            break;
        }
        case 15: { /* validity of names and values */
            int tok = n0l > 0;
            for (size_t i = 0; i < n0l; i++) {
                unsigned char ch = (unsigned char)n0[i];
                if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      strchr("!#$%&'*+-.^_`|~", ch)) || ch == 0)
                    tok = 0;
            }
            assert(moxy_header_name_valid(n0, n0l) == tok);
            int val = 1;
            for (size_t i = 0; i < v1l; i++) {
                unsigned char ch = (unsigned char)v1[i];
                if ((ch < 0x20 && ch != '\t') || ch == 0x7f) val = 0;
            }
            assert(moxy_header_value_valid(v1, v1l) == val);
            break;
        }
        }
        check_list(&hs);
        for (int i = 0; i < a.count; i++) free(copy[i]);
        p = nl ? nl + 1 : end;
    }
    check_write(&hs, 0, 0);
    check_write(&hs, 1, MOXY_HK_HOST | MOXY_HK_CL | MOXY_HK_EXPECT);
    moxy_pool_reset(&pool);
    model_clear();
    return 0;
}
