/*
 * compress.c -- a response's content coding on the way out; see
 * compress.h.
 *
 * The rules (RFC 9110 8.4, 12.5.3, 8.8.3; RFC 9111 5.2.1.6, 5.2.2.6):
 *   - a response is coded only when it is whole content: not for HEAD,
 *     1xx, 204, 304, 206, a request with Range, a response with
 *     Content-Range, a tunnel;
 *   - never when the request or the response says Cache-Control:
 *     no-transform;
 *   - compressed when it has no coding yet, its media type is one of the
 *     configured ones and its length (when known) is at least min_length
 *     -- or when on_response asked for it -- and the client accepts a
 *     coding moxy makes (the one it weighs highest; ties go to the
 *     configured order);
 *   - decoded when the origin's single coding is one the client does not
 *     accept, the client accepts identity, and decompress names it;
 *   - a response that could be compressed gets Vary: Accept-Encoding
 *     whether this one is or not (a cache down the line must not give a
 *     compressed copy to a client that cannot read it, nor the reverse);
 *   - a coded response's strong ETag becomes weak (its bytes are not the
 *     origin's), it loses Accept-Ranges (ranges of the coded bytes are not
 *     served), and its length is unknown (chunked, or the close for 1.0).
 */
#include "http/compress.h"
#include "base/headers.h"
#include "base/log.h"
#include "codec/accept.h"
#include "codec/coder.h"
#include "http/http.h"
#include "http/request.h"
#include "http/stats.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <string.h>

/* The compression configuration for r: its pool's, its listener's, or the
 * top level's. */
static const moxy_compress_conf_t *conf_of(const moxy_req_t *r)
{
    const moxy_conf_t *c = r->g->conf;
    if (r->pool >= 0 && r->pool < c->nupstreams && c->upstreams[r->pool].compress) return c->upstreams[r->pool].compress;
    if (r->listen_index >= 0 && r->listen_index < c->nlistens && c->listens[r->listen_index].compress)
        return c->listens[r->listen_index].compress;
    return &c->compress;
}

/* The worker's coders (made at the first use), with the current budget. */
static moxy_coders_t *coders_of(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    if (!w->coders) w->coders = moxy_coders_new(r->g->conf->compress_memory);
    else moxy_coders_set_budget(w->coders, r->g->conf->compress_memory);
    return w->coders;
}

static void memory_gauge(moxy_req_t *r)
{
    if (r->w->coders) MOXY_STAT_SET(r->w->stats.comp_memory, (long long)moxy_coders_memory(r->w->coders));
}

int moxy_media_type_match(char *const *patterns, int n, const char *v, size_t vlen)
{
    /* the type/subtype, before any parameter, without spaces */
    size_t end = 0;
    while (end < vlen && v[end] != ';') end++;
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
    size_t start = 0;
    while (start < end && (v[start] == ' ' || v[start] == '\t')) start++;
    const char *t = v + start;
    size_t tlen = end - start;
    const char *slash = memchr(t, '/', tlen);
    if (!slash) return 0;
    size_t typelen = (size_t)(slash - t) + 1; /* "text/" */
    for (int i = 0; i < n; i++) {
        const char *p = patterns[i];
        size_t plen = strlen(p);
        const char *star = memchr(p, '*', plen);
        if (!star) {
            if (moxy_strieq(t, tlen, p, plen)) return 1;
            continue;
        }
        size_t ptype = (size_t)(star - p); /* "text/" */
        if (ptype != typelen || !moxy_strieq(t, typelen, p, ptype)) continue;
        if (star + 1 == p + plen) return 1; /* "text/" + "*" */
        /* "application/" + "*+json": a subtype ending in "+json" */
        size_t slen = plen - ptype - 1;
        if (tlen - typelen > slen && moxy_strieq(t + tlen - slen, slen, star + 1, slen)) return 1;
    }
    return 0;
}

/* 1 when one of hs's Cache-Control lines has no-transform. */
static int no_transform(const moxy_headers_t *hs)
{
    for (int i = moxy_headers_find(hs, "Cache-Control", 13, 0); i >= 0;
         i = moxy_headers_find(hs, "Cache-Control", 13, (uint32_t)i + 1))
        if (moxy_list_has_token(hs->h[i].value, hs->h[i].value_len, "no-transform", 12)) return 1;
    return 0;
}

/* The response's content coding: MOXY_ENC_IDENTITY when it has none, the
 * coding when it is one moxy knows and the only one, else -1. */
static int content_coding(const moxy_headers_t *hs)
{
    int i = moxy_headers_find(hs, "Content-Encoding", 16, 0);
    if (i < 0) return MOXY_ENC_IDENTITY;
    if (moxy_headers_find(hs, "Content-Encoding", 16, (uint32_t)i + 1) >= 0) return -1;
    const char *v = hs->h[i].value;
    size_t n = hs->h[i].value_len;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    if (n == 0) return MOXY_ENC_IDENTITY;
    return moxy_enc_parse(v, n); /* a list ("gzip, br") parses as none */
}

static void accept_of(const moxy_req_t *r, moxy_accept_t *a)
{
    moxy_accept_init(a);
    const moxy_headers_t *hs = &r->headers;
    for (int i = moxy_headers_find(hs, "Accept-Encoding", 15, 0); i >= 0;
         i = moxy_headers_find(hs, "Accept-Encoding", 15, (uint32_t)i + 1))
        moxy_accept_add(a, hs->h[i].value, hs->h[i].value_len);
}

/* Vary: Accept-Encoding, unless the response varies on it (or on
 * everything) already. */
static int add_vary(moxy_req_t *r)
{
    moxy_headers_t *hs = &r->resp_headers;
    for (int i = moxy_headers_find(hs, "Vary", 4, 0); i >= 0; i = moxy_headers_find(hs, "Vary", 4, (uint32_t)i + 1)) {
        const moxy_header_t *h = &hs->h[i];
        if (moxy_list_has_token(h->value, h->value_len, "accept-encoding", 15) ||
            moxy_list_has_token(h->value, h->value_len, "*", 1))
            return MOXY_OK;
    }
    return moxy_headers_add(&r->mem, hs, "Vary", 4, "Accept-Encoding", 15);
}

/* The index of r's response ETag when it is strong, or -1. */
static int strong_etag(const moxy_req_t *r)
{
    int i = moxy_headers_find(&r->resp_headers, "ETag", 4, 0);
    if (i < 0) return -1;
    const moxy_header_t *h = &r->resp_headers.h[i];
    return h->value_len >= 2 && h->value[0] == '"' ? i : -1;
}

/* The strong ETag at index i made weak: W/"..." (RFC 9110 8.8.3). */
static int weaken_etag(moxy_req_t *r, int i)
{
    moxy_header_t *h = &r->resp_headers.h[i];
    char *v = moxy_palloc(&r->mem, h->value_len + 2);
    if (!v) return MOXY_ERROR;
    memcpy(v, "W/", 2);
    memcpy(v + 2, h->value, h->value_len);
    h->value = v;
    h->value_len += 2;
    return MOXY_OK;
}

/* 1 when the request's If-None-Match holds the weak form of the strong
 * ETag at index i: the client has a coded copy. */
static int client_holds_weak(const moxy_req_t *r, int i)
{
    const moxy_header_t *e = &r->resp_headers.h[i];
    const moxy_headers_t *hs = &r->headers;
    for (int k = moxy_headers_find(hs, "If-None-Match", 13, 0); k >= 0;
         k = moxy_headers_find(hs, "If-None-Match", 13, (uint32_t)k + 1)) {
        const char *v = hs->h[k].value, *end = v + hs->h[k].value_len;
        for (const char *p = v; (p = memmem(p, (size_t)(end - p), e->value, e->value_len)) != NULL; p++)
            if (p - v >= 2 && p[-2] == 'W' && p[-1] == '/') return 1;
    }
    return 0;
}

/* The coded response's fields: its coding named (or gone), its ETag weak,
 * no Accept-Ranges. */
static int recode_fields(moxy_req_t *r, int enc)
{
    moxy_headers_t *hs = &r->resp_headers;
    int rc = MOXY_OK;
    if (enc == MOXY_ENC_IDENTITY) moxy_headers_remove(hs, "Content-Encoding", 16);
    else rc = moxy_headers_set(&r->mem, hs, "Content-Encoding", 16, moxy_enc_name(enc), strlen(moxy_enc_name(enc)));
    moxy_headers_remove(hs, "Accept-Ranges", 13);
    int e = strong_etag(r);
    if (rc == MOXY_OK && e >= 0) rc = weaken_etag(r, e);
    return rc;
}

/* The coding r's client gets among what c offers (or script asked). */
static int choose(const moxy_req_t *r, const moxy_compress_conf_t *c, const moxy_accept_t *a)
{
    unsigned offer = 0;
    for (int i = 0; i < c->norder; i++) offer |= 1u << c->order[i];
    if (r->compress_enc) { /* txn.resp:compress{encoding = ...}: that one, if the client takes it */
        uint8_t only = r->compress_enc;
        return moxy_accept_choose(a, 1u << only, &only, 1);
    }
    return moxy_accept_choose(a, offer, c->order, c->norder);
}

/* 1 when r's response, as its head stands, is one c compresses for a
 * client that accepts a coding: its type and length (or on_response
 * asked).  The caller knows it has no coding and no no-transform. */
static int compressible(const moxy_req_t *r, const moxy_compress_conf_t *c)
{
    if (r->compress_want > 0) return 1;
    if (!c->enabled) return 0;
    const moxy_header_t *ct = moxy_headers_get(&r->resp_headers, "Content-Type", 12);
    if (!ct || !moxy_media_type_match(c->types, c->ntypes, ct->value, ct->value_len)) return 0;
    return !(r->resp_body_kind == MOXY_BODY_LENGTH && r->resp_body_left < c->min_length);
}

/* 1 when neither side forbids transforming the response (RFC 9111
 * 5.2.1.6, 5.2.2.6), nor did a script (txn.resp:compress(false)). */
static int transformable(const moxy_req_t *r)
{
    return r->compress_want >= 0 && !no_transform(&r->resp_headers) && !no_transform(&r->headers);
}

int moxy_compress_eligible(const moxy_req_t *r)
{
    return transformable(r) && content_coding(&r->resp_headers) == MOXY_ENC_IDENTITY && compressible(r, conf_of(r));
}

/* 1 when r's response is whole content a coder may take: a body, not a
 * range (206, a Range request, a Content-Range). */
static int whole_body(const moxy_req_t *r)
{
    return r->resp_body_kind != MOXY_BODY_NONE && moxy_resp_has_body(r) && r->status != 206 &&
           moxy_headers_find_kind(&r->headers, MOXY_HK_RANGE, 0) < 0 &&
           !moxy_headers_get(&r->resp_headers, "Content-Range", 13);
}

/* r's coder is c (MOXY_CODING_ENCODE or _DECODE of enc). */
static void coder_set(moxy_req_t *r, moxy_coder_t *c, int coding, int enc)
{
    r->coder = c;
    r->coding = (uint8_t)coding;
    r->coding_enc = (uint8_t)enc;
    memory_gauge(r);
}

/* No coder for r (the budget, out of memory): its body goes as it is. */
static void coder_skipped(moxy_req_t *r, const char *what, const char *why)
{
    MOXY_STAT_ADD(r->w->stats.comp_skipped, 1);
    moxy_log(MOXY_LOG_DEBUG, r->id, "compression: %s: %s", what, why ? why : "out of memory");
}

static int start_encode(moxy_req_t *r, const moxy_compress_conf_t *c)
{
    if (!compressible(r, c)) return MOXY_OK;
    /* it could be compressed: what a cache keeps of it depends on Accept-Encoding */
    if (add_vary(r) != MOXY_OK) return MOXY_ERROR;
    if (!whole_body(r)) return MOXY_OK;
    moxy_accept_t a;
    accept_of(r, &a);
    int enc = choose(r, c, &a);
    if (enc == MOXY_ENC_IDENTITY) return MOXY_OK;
    moxy_enc_params_t p = {c->enc[enc].level, c->enc[enc].window, c->enc[enc].mem_level};
    if (r->compress_level) {
        static const int max_level[MOXY_ENC_COUNT] = {0, 9, 11, 19};
        p.level = MOXY_MIN((int)r->compress_level, max_level[enc]);
    }
    const char *why = NULL;
    moxy_coders_t *cs = coders_of(r);
    moxy_coder_t *coder = cs ? moxy_coder_encoder(cs, enc, &p, r->resp_body_kind == MOXY_BODY_LENGTH ? r->resp_body_left : UINT64_MAX, &why)
                             : NULL;
    if (!coder) {
        coder_skipped(r, "sent uncompressed", why);
        return MOXY_OK;
    }
    coder_set(r, coder, MOXY_CODING_ENCODE, enc);
    return recode_fields(r, enc);
}

static int start_decode(moxy_req_t *r, const moxy_compress_conf_t *c, int enc)
{
    if (!(c->decompress & (1u << enc)) || !whole_body(r)) return MOXY_OK;
    moxy_accept_t a;
    accept_of(r, &a);
    if (moxy_accept_allows(&a, enc) || !moxy_accept_allows(&a, MOXY_ENC_IDENTITY)) return MOXY_OK;
    moxy_dec_limits_t lim = {c->max_size, c->max_ratio};
    const char *why = NULL;
    moxy_coders_t *cs = coders_of(r);
    moxy_coder_t *coder = cs ? moxy_coder_decoder(cs, enc, &lim, &why) : NULL;
    if (!coder) {
        coder_skipped(r, "sent undecoded", why);
        return MOXY_OK;
    }
    coder_set(r, coder, MOXY_CODING_DECODE, enc);
    /* the head waits for the first decoded bytes: a body that does not
     * decode (or a bomb) before them is a 502, not a cut response */
    r->head_held = 1;
    if (add_vary(r) != MOXY_OK) return MOXY_ERROR;
    return recode_fields(r, MOXY_ENC_IDENTITY);
}

int moxy_compress_start(moxy_req_t *r)
{
    r->coding = MOXY_CODING_NONE;
    if (r->tunnel || r->status < 200 || !transformable(r)) return MOXY_OK;
    const moxy_compress_conf_t *c = conf_of(r);
    if (r->status == 304) {
        /* the fields its 200 would have (RFC 9110 15.4.5): Vary, and the
         * ETag weak when that 200 would be compressed -- known for the
         * cache's 304s (r->compress_304), guessed for the origin's from
         * the weak ETag the client holds */
        int e = strong_etag(r);
        if (!r->compress_304 && (e < 0 || !c->enabled)) return MOXY_OK;
        moxy_accept_t a;
        accept_of(r, &a);
        int coded = choose(r, c, &a) != MOXY_ENC_IDENTITY;
        int weak = e >= 0 && coded && (r->compress_304 || client_holds_weak(r, e));
        if ((r->compress_304 || weak) && add_vary(r) != MOXY_OK) return MOXY_ERROR;
        if (weak && weaken_etag(r, e) != MOXY_OK) return MOXY_ERROR;
        return MOXY_OK;
    }
    int have = content_coding(&r->resp_headers);
    if (have == MOXY_ENC_IDENTITY) return start_encode(r, c);
    if (have > MOXY_ENC_IDENTITY) return start_decode(r, c, have);
    return MOXY_OK;
}

/* Feed c the n bytes at the front of in (drained), what (MOXY_CODE_*) for
 * the last of them, its output to out. */
static int run_buffer(moxy_coder_t *c, struct evbuffer *in, size_t n, int what, struct evbuffer *out,
                      const char **why)
{
    while (n > 0) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 8);
        if (k <= 0) break;
        size_t took = 0;
        for (int i = 0; i < MOXY_MIN(k, 8) && took < n; i++) {
            size_t len = MOXY_MIN(v[i].iov_len, n - took);
            int last = took + len == n;
            int rc = moxy_coder_run(c, v[i].iov_base, len, last ? what : MOXY_CODE_MORE, out, why);
            if (rc != MOXY_OK) return rc;
            took += len;
        }
        if (took == 0) break; /* never: n > 0 bytes are there */
        evbuffer_drain(in, took);
        n -= took;
    }
    return MOXY_OK;
}

/* A coder's failure (rc) counted: a bomb, or a decoder's bad input. */
static void count_failure(moxy_worker_t *w, int rc, int decode)
{
    if (rc == MOXY_DECLINED) MOXY_STAT_ADD(w->stats.decomp_bombs, 1);
    else if (decode) MOXY_STAT_ADD(w->stats.decomp_failures, 1);
}

void moxy_compress_count(moxy_worker_t *w, int decode, int enc, moxy_coder_t *c)
{
    moxy_stats_t *st = &w->stats;
    /* bytes before and after the coding, by coding: for a decoder, in is the coded side */
    MOXY_STAT_ADD(st->comp_responses[decode][enc], 1);
    MOXY_STAT_ADD(st->comp_in[decode][enc], moxy_coder_in(c));
    MOXY_STAT_ADD(st->comp_out[decode][enc], moxy_coder_out(c));
    moxy_coder_put(c);
    if (w->coders) MOXY_STAT_SET(st->comp_memory, (long long)moxy_coders_memory(w->coders));
}

int moxy_compress_run(moxy_req_t *r, struct evbuffer *in, int final, const char **why)
{
    if (!r->coded && !(r->coded = moxy_worker_buf_get(r->w))) {
        *why = "out of memory";
        return MOXY_ERROR;
    }
    size_t n = evbuffer_get_length(in);
    int rc = MOXY_OK;
    if (n) rc = run_buffer(r->coder, in, n, final ? MOXY_CODE_END : MOXY_CODE_FLUSH, r->coded, why);
    else if (final) rc = moxy_coder_run(r->coder, "", 0, MOXY_CODE_END, r->coded, why);
    if (rc != MOXY_OK) count_failure(r->w, rc, r->coding == MOXY_CODING_DECODE);
    return rc;
}

int moxy_compress_decode_body(moxy_req_t *r, uint64_t max)
{
    if (!r->body_buffered || !r->body_buf) return MOXY_OK;
    int enc = content_coding(&r->headers);
    if (enc == MOXY_ENC_IDENTITY) return MOXY_OK;
    if (enc < 0) {
        r->body_status = 415; /* RFC 9110 15.5.16 */
        r->body_error = "request body: a Content-Encoding moxy does not decode";
        return MOXY_ERROR;
    }
    const moxy_compress_conf_t *c = conf_of(r);
    moxy_dec_limits_t lim = {max && max < c->max_size ? max : c->max_size, c->max_ratio};
    const char *why = NULL;
    moxy_coders_t *cs = coders_of(r);
    moxy_coder_t *d = cs ? moxy_coder_decoder(cs, enc, &lim, &why) : NULL;
    struct evbuffer *out = moxy_worker_buf_get(r->w);
    if (!d || !out) {
        if (d) moxy_coder_put(d);
        if (out) moxy_worker_buf_put(r->w, out);
        r->body_status = 503;
        r->body_error = why ? why : "out of memory";
        return MOXY_ERROR;
    }
    /* read in place, piece by piece (no copy of the whole body) */
    size_t n = evbuffer_get_length(r->body_buf);
    int rc = n ? run_buffer(d, r->body_buf, n, MOXY_CODE_END, out, &why)
               : moxy_coder_run(d, "", 0, MOXY_CODE_END, out, &why);
    moxy_compress_count(r->w, 1, enc, d);
    if (rc != MOXY_OK) {
        count_failure(r->w, rc, 1);
        moxy_log(MOXY_LOG_WARN, r->id, "request body not decoded (%s): %s", moxy_enc_name(enc), why);
        evbuffer_drain(out, evbuffer_get_length(out));
        moxy_worker_buf_put(r->w, out);
        r->body_status = rc == MOXY_DECLINED ? 413 : 400;
        r->body_error = rc == MOXY_DECLINED ? "request body: decoded past its limits" : "request body: invalid coding";
        return MOXY_ERROR;
    }
    /* the decoded body replaces the coded one (drained as it was decoded),
     * and goes on with its length */
    moxy_worker_buf_put(r->w, r->body_buf);
    r->body_buf = out;
    moxy_headers_remove(&r->headers, "Content-Encoding", 16);
    return MOXY_OK;
}

struct moxy_coder_s *moxy_compress_take(moxy_req_t *r)
{
    moxy_coder_t *c = r->coder;
    r->coder = NULL;
    r->coding = MOXY_CODING_NONE;
    r->filtering = r->filter_hooks;
    return c;
}

void moxy_compress_cancel(moxy_req_t *r)
{
    if (!r->coder) return;
    moxy_coder_put(moxy_compress_take(r)); /* it coded nothing: nothing to count */
    memory_gauge(r);
}

const char *moxy_compress_what(const moxy_req_t *r)
{
    static const char *const what[2][MOXY_ENC_COUNT] = {
        {"no compression", "gzip compression", "br compression", "zstd compression"},
        {"no decoding", "gzip decoding", "br decoding", "zstd decoding"},
    };
    return what[r->coding == MOXY_CODING_DECODE][r->coding_enc < MOXY_ENC_COUNT ? r->coding_enc : 0];
}

void moxy_compress_end(moxy_req_t *r)
{
    if (r->coder) {
        moxy_compress_count(r->w, r->coding == MOXY_CODING_DECODE, r->coding_enc, r->coder);
        r->coder = NULL;
    }
    if (r->coded) moxy_worker_buf_put(r->w, r->coded);
    r->coded = NULL;
}
