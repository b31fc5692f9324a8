/*
 * http_response_fuzz.c -- the HTTP/1 response path through moxy's real
 * origin and client code (http_upstream.c: the response head, 1xx, bodies
 * by length, chunks or close, trailers; http_response.c: the head moxy
 * writes; http_client.c: keep-alive; compress.c, body_filter.c and
 * coder.c: the response's content coding, both ways) on a worker run
 * in-process (see http_fuzz.h).  The pool decodes gzip, br and zstd
 * (compression = { decompress = { gzip, br, zstd } }); compression is on
 * with its defaults.
 *
 * Input:
 *   byte 0    which fixed request the client sends: 0-7 without
 *             Accept-Encoding (GET, HEAD, POST with a body, HTTP/1.0, two
 *             pipelined GETs, an upgrade, a chunked POST with Expect:
 *             100-continue, Connection: close); 8-15 with one (GET with
 *             gzip, br, "zstd;q=1, gzip;q=0.5", identity; HTTP/1.0 GET with
 *             "gzip, br"; HEAD with gzip; GET with "gzip, br, zstd" and
 *             Range; HTTP/1.0 GET with identity); modulo 16
 *   the rest  what the origin answers on the first request's connection,
 *             at once, keeping the connection open until moxy settled,
 *             then closing its sending side
 * Later origin connections (moxy's retry of a stale connection, a second
 * request) get no answer, only the close.
 *
 * Invariants:
 *  - what the client receives parses with a strict llhttp (HTTP_RESPONSE,
 *    no lenient flag; 1xx responses have no content, RFC 9110 15.2; HEAD
 *    responses none) as a sequence of responses, each complete but the last
 *    (cut where moxy gave up), at most one final response per request;
 *  - no response reaches the client with a framing, routing or hop-by-hop
 *    field in its trailers (trailers), nor with a field of the default mask
 *    list (Server, X-Powered-By, ...) in its head or trailers (masked);
 *  - the first final response the client gets, when it is the origin's
 *    (moxy's Via, not one of its error pages) and complete, is the origin's
 *    first final response as a strict parser reads the input (1xx without
 *    content): the same status, and the same body -- through the content
 *    coding moxy changed, decoded here by zlib, libbrotli and libzstd
 *    directly (not moxy's coder.c):
 *      . the same coding (Content-Encoding: none, identity, or the same
 *        one): the same bytes;
 *      . a coding moxy added (coded-body): the client's body decodes as a
 *        whole stream to the origin's body;
 *      . a coding moxy removed (decoded-body): the client's body is the
 *        origin's decoded; when the origin's does not decode (undecodable)
 *        or passes the guard, more than 1 MiB and 100 times the coded
 *        bytes decoded (bomb), the client gets no complete response (a 502
 *        or a cut one);
 *      . no other change (coding-changed);
 *    a body delimited by the close (HTTP/1.0) ends where moxy stopped: a
 *    prefix of that;
 *  - a response whose coding moxy changed is cut (not complete) only when
 *    the origin's was cut, or its body does not decode or may pass the
 *    guard (coding-cut; coding-cut:DIR-CODING, e.g. coding-cut:decode-zstd,
 *    leaves out one direction and coding);
 *  - the head of that response, complete or not: never two Content-Encoding
 *    fields unless the origin's were the same (two-codings); when moxy
 *    changed the coding: no Content-Length (coded-length), Vary names
 *    Accept-Encoding (vary), the origin's strong ETag is not kept as it was
 *    (etag), no Accept-Ranges (accept-ranges); a coding added is one the
 *    request's Accept-Encoding accepts (coding-accepted), the one it
 *    weighs highest, ties br, zstd, gzip (coding-choice); a coding removed
 *    is one it does not accept (decode-unwanted); never for HEAD,
 *    a Range request, 1xx, 204, 304, 206, Content-Range, Cache-Control:
 *    no-transform, nor (compressing) a type that is not compressible or a
 *    Content-Length under 256 (no-recode);
 *  - a plain 200 (one Content-Type text/html, text/plain or
 *    application/json, no Cache-Control, Content-Range or Content-Encoding,
 *    chunked, close-delimited or at least 256 bytes) to a client that
 *    accepts a coding reaches it compressed (not-compressed); a plain 200
 *    with Content-Encoding gzip, br or zstd whose body decodes within the
 *    guard reaches a client that takes only identity of them decoded
 *    (not-decoded);
 *  - when both peers have closed, the worker holds no connection.
 * A violation aborts with both sides' bytes on stderr.
 */
#define HTTP_FUZZ_POOL_EXTRA ", compression = { decompress = { gzip = true, br = true, zstd = true } }"
#include "http_fuzz.h"

#include <brotli/decode.h>
#include <zlib.h>
#include <zstd.h>

#define FUZZ_INPUT_MAX 65536

/* Content codings, as the harness names them. */
enum { ENC_OTHER = -1, ENC_NONE = 0, ENC_GZIP = 1, ENC_BR = 2, ENC_ZSTD = 3 };
#define ENC_BIT(e) (1u << (e))
static const char *const enc_names[] = {"identity", "gzip", "br", "zstd"};

static const struct {
    const char *text;
    int methods[2]; /* of its requests */
    int n;
    int ae;          /* it has Accept-Encoding */
    unsigned accept; /* ENC_BIT()s of the codings it accepts (q > 0) */
    int best;        /* the coding moxy picks for it */
    int range;       /* it has Range */
} REQUESTS[] = {
    {"GET /r HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_GET}, 1, 0, 0, ENC_NONE, 0},
    {"HEAD /r HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_HEAD}, 1, 0, 0, ENC_NONE, 0},
    {"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", {HTTP_POST}, 1, 0, 0, ENC_NONE, 0},
    {"GET /r HTTP/1.0\r\n\r\n", {HTTP_GET}, 1, 0, 0, ENC_NONE, 0},
    {"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_GET, HTTP_GET}, 2, 0, 0, ENC_NONE, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", {HTTP_GET}, 1, 0, 0, ENC_NONE, 0},
    {"POST /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     {HTTP_POST},
     1, 0, 0, ENC_NONE, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n", {HTTP_GET}, 1, 0, 0, ENC_NONE, 0},
    /* 8-15: with Accept-Encoding (compression, both ways) */
    {"GET /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n", {HTTP_GET}, 1, 1, ENC_BIT(ENC_GZIP), ENC_GZIP, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: br\r\n\r\n", {HTTP_GET}, 1, 1, ENC_BIT(ENC_BR), ENC_BR, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: zstd;q=1, gzip;q=0.5\r\n\r\n",
     {HTTP_GET},
     1, 1, ENC_BIT(ENC_ZSTD) | ENC_BIT(ENC_GZIP), ENC_ZSTD, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: identity\r\n\r\n", {HTTP_GET}, 1, 1, 0, ENC_NONE, 0},
    {"GET /r HTTP/1.0\r\nAccept-Encoding: gzip, br\r\n\r\n", {HTTP_GET}, 1, 1, ENC_BIT(ENC_GZIP) | ENC_BIT(ENC_BR), ENC_BR, 0},
    {"HEAD /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n", {HTTP_HEAD}, 1, 1, ENC_BIT(ENC_GZIP), ENC_GZIP, 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br, zstd\r\nRange: bytes=0-99\r\n\r\n",
     {HTTP_GET},
     1, 1, ENC_BIT(ENC_GZIP) | ENC_BIT(ENC_BR) | ENC_BIT(ENC_ZSTD), ENC_BR, 1},
    {"GET /r HTTP/1.0\r\nAccept-Encoding: identity\r\n\r\n", {HTTP_GET}, 1, 1, 0, ENC_NONE, 0},
};

static const uint8_t *answer; /* what the origin sends */
static size_t answer_len;

static void origin_on_accept(oconn_t *o)
{
    MOXY_UNUSED(o);
}

static void origin_on_head(oconn_t *o, msg_t *m)
{
    MOXY_UNUSED(o);
    MOXY_UNUSED(m);
}

static void origin_on_request(oconn_t *o, msg_t *m)
{
    /* the first request of the first connection gets the input */
    if (o->index == 0 && m == &o->mp.m[0] && answer_len) origin_send(o, answer, answer_len);
}

/* The origin's answer as a strict recipient reads it: 1xx and HEAD without content. */
static int head_request;
static int origin_skip_body(mparser_t *mp, msg_t *m)
{
    MOXY_UNUSED(mp);
    if (m->status >= 100 && m->status < 200 && m->status != 101) return !skipped("1xx-body");
    if (m->status == 204 || m->status == 304) return 1; /* RFC 9110 15.3.5, 15.4.5 (llhttp 8 reads a body
                                                           after a 204 with Transfer-Encoding) */
    return head_request;
}

/* 1 when a response of this status has content (not 1xx, 204, 304). */
static int moxy_resp_has_body_status(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

static int has_moxy_via(const msg_t *m)
{
    for (int i = 0; i < m->nh; i++)
        if (!m->h[i].trailer && ieq(m->h[i].name, m->h[i].nlen, "via") && ieq(m->h[i].value, m->h[i].vlen, "1.1 moxy"))
            return 1;
    return 0;
}

/* --- content codings, decoded by the libraries directly --- */

/* What a decoder made of its input: a whole stream (one or more gzip
 * members, zstd frames; one brotli stream) and nothing after it; a stream
 * that was valid as far as it went but ended short; invalid data (or bytes
 * after a brotli stream, a zstd window over 8 MiB, RFC 9659); more than
 * the cap decoded. */
enum { DEC_OK, DEC_CUT, DEC_BAD, DEC_BIG };
static const char *const dec_names[] = {"whole", "cut short", "invalid", "too large"};

/* Decoded output, at most DEC_CAP bytes: past 100 times the largest input
 * (and past 1 MiB), moxy's guard must have stopped it. */
#define DEC_CAP ((size_t)8 << 20)

typedef struct {
    char *p;
    size_t n, cap;
} dbuf_t;

static int dbuf_put(dbuf_t *b, const uint8_t *p, size_t n)
{
    if (b->n + n > DEC_CAP) return 0;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 65536;
        while (c < b->n + n + 1) c *= 2;
        b->p = realloc(b->p, c);
        if (!b->p) abort();
        b->cap = c;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 1;
}

static uint8_t dec_room[65536];

/* gzip (RFC 1952): members one after another; bytes after a member that
 * do not start another (0x1f) are ignored, as browsers do. */
static int dec_gzip(const uint8_t *in, size_t n, dbuf_t *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 15 + 16) != Z_OK) abort(); /* gzip only, not zlib's wrapper */
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    int res;
    for (;;) {
        z.next_out = dec_room;
        z.avail_out = sizeof(dec_room);
        int rc = inflate(&z, Z_NO_FLUSH);
        if (!dbuf_put(out, dec_room, sizeof(dec_room) - z.avail_out)) {
            res = DEC_BIG;
            break;
        }
        if (rc == Z_STREAM_END) {
            if (z.avail_in == 0 || z.next_in[0] != 0x1f) {
                res = DEC_OK;
                break;
            }
            if (inflateReset(&z) != Z_OK) abort(); /* another member */
            continue;
        }
        if (rc == Z_OK) continue;
        res = rc == Z_BUF_ERROR && z.avail_in == 0 ? DEC_CUT : DEC_BAD;
        break;
    }
    inflateEnd(&z);
    return res;
}

/* br (RFC 7932): one stream, nothing after it. */
static int dec_br(const uint8_t *in, size_t n, dbuf_t *out)
{
    BrotliDecoderState *s = BrotliDecoderCreateInstance(NULL, NULL, NULL);
    if (!s) abort();
    const uint8_t *next_in = in;
    size_t avail_in = n;
    int res;
    for (;;) {
        uint8_t *next_out = dec_room;
        size_t avail_out = sizeof(dec_room);
        BrotliDecoderResult rc = BrotliDecoderDecompressStream(s, &avail_in, &next_in, &avail_out, &next_out, NULL);
        if (!dbuf_put(out, dec_room, sizeof(dec_room) - avail_out)) {
            res = DEC_BIG;
            break;
        }
        if (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT) continue;
        if (rc == BROTLI_DECODER_RESULT_SUCCESS) res = avail_in ? DEC_BAD : DEC_OK;
        else if (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) res = DEC_CUT;
        else res = DEC_BAD;
        break;
    }
    BrotliDecoderDestroyInstance(s);
    return res;
}

/* zstd (RFC 8878, RFC 9659: a window of at most 8 MiB): frames one after
 * another (skippable ones too). */
static int dec_zstd(const uint8_t *in, size_t n, dbuf_t *out)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d || ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 23))) abort();
    ZSTD_inBuffer ib = {in, n, 0};
    int res;
    for (;;) {
        ZSTD_outBuffer ob = {dec_room, sizeof(dec_room), 0};
        size_t rc = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(rc)) {
            res = DEC_BAD;
            break;
        }
        if (!dbuf_put(out, dec_room, ob.pos)) {
            res = DEC_BIG;
            break;
        }
        if (ob.pos == ob.size || ib.pos < ib.size) continue;
        res = rc == 0 ? DEC_OK : DEC_CUT;
        break;
    }
    ZSTD_freeDCtx(d);
    return res;
}

static int decode(int enc, const char *in, size_t n, dbuf_t *out)
{
    const uint8_t *p = (const uint8_t *)(in ? in : "");
    if (n == 0) return DEC_OK; /* a coded body of no bytes: nothing */
    switch (enc) {
    case ENC_GZIP: return dec_gzip(p, n, out);
    case ENC_BR: return dec_br(p, n, out);
    case ENC_ZSTD: return dec_zstd(p, n, out);
    }
    abort();
}

/* --- a model of the fields that decide --- */

/* The first header field (not trailer) of m called name, or NULL. */
static const hf_t *field(const msg_t *m, const char *name)
{
    int i = -1;
    return count_named(m, name, &i) ? &m->h[i] : NULL;
}

/* A value without the spaces around it. */
static void trim(const char **v, size_t *n)
{
    while (*n && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t')) (*n)--;
    while (*n && (**v == ' ' || **v == '\t')) (*v)++, (*n)--;
}

/* m's content coding: none (no Content-Encoding, one that is empty or
 * identity), gzip (or x-gzip), br, zstd, or another (a list, two fields,
 * an unknown coding). */
static int coding_of(const msg_t *m)
{
    int first = -1, n = count_named(m, "content-encoding", &first);
    if (n == 0) return ENC_NONE;
    if (n > 1) return ENC_OTHER;
    const char *v = m->h[first].value;
    size_t l = m->h[first].vlen;
    trim(&v, &l);
    if (l == 0 || ieq(v, l, "identity")) return ENC_NONE;
    if (ieq(v, l, "gzip") || ieq(v, l, "x-gzip")) return ENC_GZIP;
    if (ieq(v, l, "br")) return ENC_BR;
    if (ieq(v, l, "zstd")) return ENC_ZSTD;
    return ENC_OTHER;
}

/* 1 when a field of m called name has token as a comma-list element (the
 * whole element, case aside). */
static int list_has(const msg_t *m, const char *name, const char *token)
{
    for (int i = 0; i < m->nh; i++) {
        if (m->h[i].trailer || !ieq(m->h[i].name, m->h[i].nlen, name)) continue;
        const char *v = m->h[i].value;
        size_t n = m->h[i].vlen, j = 0;
        while (j < n) {
            size_t s = j;
            while (j < n && v[j] != ',') j++;
            const char *e = v + s;
            size_t l = j - s;
            trim(&e, &l);
            if (ieq(e, l, token)) return 1;
            j++;
        }
    }
    return 0;
}

/* 1 when m's one Content-Type is of a type moxy compresses by default
 * (lua/moxy/config.lua, M.COMPRESS_TYPES; parameters aside); -1 when m
 * has more than one. */
static int compressible(const msg_t *m)
{
    static const char *const types[] = {
        "text/*", "application/json", "application/*+json", "application/javascript", "application/x-javascript",
        "application/ecmascript", "application/xml", "application/*+xml", "image/svg+xml", "application/wasm",
        "font/ttf", "font/otf", "font/collection", "application/vnd.ms-fontobject", "application/x-font-ttf",
        "application/x-font-opentype", "image/x-icon", "image/vnd.microsoft.icon", "image/bmp",
    };
    int first = -1, n = count_named(m, "content-type", &first);
    if (n != 1) return n ? -1 : 0;
    const char *v = m->h[first].value;
    size_t l = 0;
    while (l < m->h[first].vlen && v[l] != ';') l++;
    trim(&v, &l);
    const char *slash = memchr(v, '/', l);
    if (!slash) return 0;
    size_t tl = (size_t)(slash - v); /* "text" */
    for (size_t i = 0; i < MOXY_ARRAY_LEN(types); i++) {
        const char *p = types[i], *ps = strchr(p, '/');
        size_t ptl = (size_t)(ps - p);
        if (strcmp(ps + 1, "*") == 0) {
            if (fuzz_ieq(v, tl, p, ptl)) return 1;
        } else if (ps[1] == '*') { /* "*+json": a subtype that ends in "+json" */
            size_t sl = strlen(ps + 2), vsl = l - tl - 1;
            if (fuzz_ieq(v, tl, p, ptl) && vsl > sl && fuzz_ieq(v + l - sl, sl, ps + 2, sl)) return 1;
        } else if (ieq(v, l, p)) {
            return 1;
        }
    }
    return 0;
}

/* m's Content-Length when it has exactly one, a number; else -1. */
static long long content_length(const msg_t *m)
{
    int first = -1;
    if (count_named(m, "content-length", &first) != 1) return -1;
    const char *v = m->h[first].value;
    size_t l = m->h[first].vlen;
    trim(&v, &l);
    if (l == 0 || l > 15) return -1;
    long long x = 0;
    for (size_t i = 0; i < l; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

/* 1 when m's framing is plain: no Transfer-Encoding, or exactly "chunked". */
static int plain_framing(const msg_t *m)
{
    int first = -1, n = count_named(m, "transfer-encoding", &first);
    if (n == 0) return 1;
    if (n > 1) return 0;
    const char *v = m->h[first].value;
    size_t l = m->h[first].vlen;
    trim(&v, &l);
    return ieq(v, l, "chunked");
}

/* 1 when m's one Content-Type is exactly one of the most common
 * compressible types (a parameter may follow). */
static int plainly_compressible(const msg_t *m)
{
    static const char *const types[] = {"text/html", "text/plain", "application/json"};
    int first = -1;
    if (count_named(m, "content-type", &first) != 1) return 0;
    const char *v = m->h[first].value;
    size_t l = 0;
    while (l < m->h[first].vlen && v[l] != ';') l++;
    for (size_t i = 0; i < MOXY_ARRAY_LEN(types); i++)
        if (ieq(v, l, types[i])) return 1;
    return 0;
}

/* 1 when the bytes at a (an) are the first an of b (bn). */
static int prefix_of(const char *a, size_t an, const char *b, size_t bn)
{
    return an <= bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* The checks on the content coding of got, the client's first final
 * response, the origin's (moxy's Via), against want, the origin's (NULL
 * when the origin sent none whole); complete: got is; by_close: got's body
 * ends at the close.  Returns 1 when got's body was checked (through a
 * coding), 0 when the caller compares the bytes. */
static int check_coding(unsigned which, const msg_t *got, const msg_t *want, int complete, int by_close)
{
    int c = coding_of(got);
    int nce_got = count_named(got, "content-encoding", NULL);
    if (!want) return 0;
    int o = coding_of(want);
    int nce_want = count_named(want, "content-encoding", NULL);
    if (nce_got > 1 && nce_got != nce_want && !skipped("two-codings"))
        finding("the client's response has %d Content-Encoding fields, the origin's %d", nce_got, nce_want);
    if (c == o && (c != ENC_OTHER || nce_got == nce_want)) return 0; /* the bytes as they came */
    if (!((o == ENC_NONE && c > ENC_NONE) || (o > ENC_NONE && c == ENC_NONE))) {
        if (skipped("coding-changed")) return 1;
        finding("the origin's response with content coding %s (%d field(s)) reached the client with %s (%d field(s))",
                o >= 0 ? enc_names[o] : "(another)", nce_want, c >= 0 ? enc_names[c] : "(another)", nce_got);
    }
    int encoded = o == ENC_NONE; /* moxy compressed; else it decoded */
    int enc = encoded ? c : o;
    if (nce_got > 1 && !skipped("two-codings"))
        finding("moxy %s the response and it has %d Content-Encoding fields", encoded ? "compressed" : "decoded", nce_got);

    /* the head of a response whose coding moxy changed */
    if (count_named(got, "content-length", NULL) && !skipped("coded-length"))
        finding("moxy %s the response (%s) and it has a Content-Length", encoded ? "compressed" : "decoded",
                enc_names[enc]);
    if (!list_has(got, "vary", "accept-encoding") && !list_has(got, "vary", "*") && !skipped("vary"))
        finding("moxy %s the response (%s) and its Vary does not name Accept-Encoding",
                encoded ? "compressed" : "decoded", enc_names[enc]);
    const hf_t *we = field(want, "etag"), *ge = field(got, "etag");
    if (we && we->vlen >= 2 && we->value[0] == '"' && ge && ge->vlen == we->vlen &&
        memcmp(ge->value, we->value, we->vlen) == 0 && !skipped("etag"))
        finding("moxy %s the response (%s) and kept its strong ETag %.*s", encoded ? "compressed" : "decoded",
                enc_names[enc], (int)we->vlen, we->value);
    if (count_named(got, "accept-ranges", NULL) && !skipped("accept-ranges"))
        finding("moxy %s the response (%s) and kept Accept-Ranges", encoded ? "compressed" : "decoded", enc_names[enc]);

    /* when moxy may change it */
    const char *never = NULL;
    if (REQUESTS[which].methods[0] == HTTP_HEAD) never = "a HEAD request";
    else if (REQUESTS[which].range) never = "a Range request";
    else if (want->status < 200) never = "a 1xx";
    else if (want->status == 204 || want->status == 206 || want->status == 304) never = "a 204, 206 or 304";
    else if (count_named(want, "content-range", NULL)) never = "a response with Content-Range";
    else if (list_has(want, "cache-control", "no-transform")) never = "a response with Cache-Control: no-transform";
    else if (encoded && compressible(want) == 0) never = "a response of a type not compressed";
    else if (encoded && plain_framing(want) && !count_named(want, "transfer-encoding", NULL) &&
             content_length(want) >= 0 && content_length(want) < 256)
        never = "a response of a Content-Length under 256";
    if (never && !skipped("no-recode"))
        finding("moxy %s (%s) %s", encoded ? "compressed" : "decoded", enc_names[enc], never);
    if (encoded) {
        if (!REQUESTS[which].ae || !(REQUESTS[which].accept & ENC_BIT(c))) {
            if (!skipped("coding-accepted")) finding("moxy compressed with %s, which the request does not accept", enc_names[c]);
        } else if (c != REQUESTS[which].best && !skipped("coding-choice")) {
            finding("moxy compressed with %s, the request's best is %s", enc_names[c], enc_names[REQUESTS[which].best]);
        }
    } else if ((!REQUESTS[which].ae || (REQUESTS[which].accept & ENC_BIT(o))) && !skipped("decode-unwanted")) {
        finding("moxy decoded %s for a request that accepts it", enc_names[o]);
    }

    if (!complete) {
        /* cut: only a body that does not decode, or passes the guard, may
         * be (the origin's response was whole, and nothing else cuts it) */
        if (!want->complete || by_close) return 1;
        int bad = 0;
        size_t dn = 0;
        int res = DEC_OK;
        if (!encoded) {
            dbuf_t d = {0};
            res = decode(o, want->body, want->body_len, &d);
            dn = d.n;
            bad = res != DEC_OK || d.n > ((size_t)1 << 20);
            free(d.p);
        }
        char id[48];
        snprintf(id, sizeof(id), "coding-cut:%s-%s", encoded ? "encode" : "decode", enc_names[enc]);
        if (!bad && !skipped("coding-cut") && !skipped(id)) {
            if (encoded)
                finding("moxy compressed the origin's whole response (%s, a body of %zu bytes) and cut it after %zu "
                        "coded bytes (%s)",
                        enc_names[enc], want->body_len, got->body_len, id);
            finding("moxy decoded the origin's whole response (%s, %zu bytes that decode to %zu) and cut it after %zu "
                    "bytes (%s)",
                    enc_names[enc], want->body_len, dn, got->body_len, id);
        }
        return 1;
    }
    /* the body, through the coding */
    dbuf_t d = {0};
    if (encoded) {
        /* the client's body decodes to the origin's */
        int res = decode(c, got->body, got->body_len, &d);
        int ok = by_close ? (res == DEC_OK || res == DEC_CUT) && prefix_of(d.p, d.n, want->body, want->body_len)
                          : res == DEC_OK && d.n == want->body_len && prefix_of(d.p, d.n, want->body, want->body_len);
        if (!ok && !skipped("coded-body"))
            finding("moxy compressed the origin's body of %zu bytes with %s: the client's %zu bytes decode (%s) to %zu "
                    "bytes%s",
                    want->body_len, enc_names[c], got->body_len, dec_names[res], d.n,
                    prefix_of(d.p, d.n, want->body, want->body_len) ? "" : ", not the origin's");
    } else {
        /* the client's body is the origin's decoded */
        int res = decode(o, want->body, want->body_len, &d);
        int bomb = res == DEC_BIG || (d.n > ((size_t)1 << 20) && d.n > 100 * want->body_len);
        if (by_close) {
            /* cut where moxy stopped: a prefix of what decodes */
            if (!prefix_of(got->body, got->body_len, d.p, d.n) && !skipped("decoded-body"))
                finding("moxy decoded the origin's %zu bytes of %s (%s, %zu bytes): the client's %zu bytes are not a "
                        "prefix of them",
                        want->body_len, enc_names[o], dec_names[res], d.n, got->body_len);
        } else if (bomb) {
            if (!skipped("bomb"))
                finding("moxy decoded the origin's %zu bytes of %s past its guard: %zu bytes (%s) to a complete "
                        "response of %zu bytes",
                        want->body_len, enc_names[o], d.n, dec_names[res], got->body_len);
        } else if (res != DEC_OK) {
            if (!skipped("undecodable"))
                finding("the origin's %zu bytes of %s do not decode (%s, %zu bytes out), yet the client got a complete "
                        "%d of %zu bytes without a coding",
                        want->body_len, enc_names[o], dec_names[res], d.n, got->status, got->body_len);
        } else if ((got->body_len != d.n || !prefix_of(got->body, got->body_len, d.p, d.n)) && !skipped("decoded-body")) {
            finding("moxy decoded the origin's %zu bytes of %s: %zu bytes, the client got %zu bytes%s", want->body_len,
                    enc_names[o], d.n, got->body_len,
                    prefix_of(got->body, got->body_len, d.p, d.n) ? "" : " that differ");
        }
    }
    free(d.p);
    return 1;
}

/* The checks that moxy did code what it should have: got, the client's
 * first final response, complete and the origin's, with the origin's
 * coding (want, the origin's whole response). */
static void check_coded_when_due(unsigned which, const msg_t *got, const msg_t *want)
{
    if (!REQUESTS[which].ae || REQUESTS[which].range || REQUESTS[which].methods[0] == HTTP_HEAD) return;
    if (want->status != 200 || got->status != 200 || count_named(want, "cache-control", NULL) ||
        count_named(want, "content-range", NULL) || !plain_framing(want) || !plainly_compressible(want))
        return;
    int o = coding_of(want), c = coding_of(got);
    if (count_named(want, "content-encoding", NULL) == 0) {
        if (!REQUESTS[which].accept) return;
        long long cl = content_length(want);
        if (count_named(want, "content-length", NULL) && (cl < 256 || count_named(want, "transfer-encoding", NULL)))
            return;
        if (c == ENC_NONE && !skipped("not-compressed"))
            finding("a plain 200 reached a client that accepts %s uncompressed", enc_names[REQUESTS[which].best]);
        return;
    }
    if (o <= ENC_NONE || (REQUESTS[which].accept & ENC_BIT(o)) || c != o) return;
    dbuf_t d = {0};
    int res = decode(o, want->body, want->body_len, &d);
    free(d.p);
    if (res == DEC_OK && d.n <= ((size_t)1 << 20) && !skipped("not-decoded"))
        finding("a plain 200 of %s reached a client that does not accept it undecoded", enc_names[o]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!W) setup();
    if (size > FUZZ_INPUT_MAX) return 0;
    cur_input = data;
    cur_size = size;
    unsigned which = fuzz_take_byte(&data, &size) % MOXY_ARRAY_LEN(REQUESTS);
    answer = data;
    answer_len = size;

    /* the origin's answer as a strict recipient reads it */
    mparser_t op;
    mp_init(&op, HTTP_RESPONSE);
    head_request = REQUESTS[which].methods[0] == HTTP_HEAD;
    op.skip_body = origin_skip_body;
    mp_feed(&op, (const char *)answer, answer_len);
    mp_finish(&op);
    if (skipped("trailers") && trailers_banned(&op)) { /* moxy forwards trailers as they come (a known finding) */
        mp_free(&op);
        return 0;
    }
    if (skipped("1xx-body")) {
        /* a 1xx with framing fields: moxy's llhttp reads a body after it and
         * sends it on (a known finding): not worth running while skipped */
        for (int i = 0; i < op.n; i++)
            if (op.m[i].head_done && op.m[i].status < 200 && op.m[i].status != 101 &&
                (count_named(&op.m[i], "content-length", NULL) || count_named(&op.m[i], "transfer-encoding", NULL))) {
                mp_free(&op);
                return 0;
            }
    }

    int methods[2];
    memcpy(methods, REQUESTS[which].methods, sizeof(methods));
    req_methods = methods;
    nreq_methods = REQUESTS[which].n;

    client_open();
    client_write((const uint8_t *)REQUESTS[which].text, strlen(REQUESTS[which].text));
    quiet("request sent, answer written");
    teardown();

    mparser_t rp;
    check_client_responses(&rp, REQUESTS[which].n);
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("HTTP_FUZZ_VERBOSE") != NULL;
    if (verbose) {
        fprintf(stderr, "request %u; origin connections %d; client got", which, noconns);
        for (int i = 0; i < rp.n; i++) {
            const hf_t *ce = field(&rp.m[i], "content-encoding");
            fprintf(stderr, " %d%s", rp.m[i].status, rp.m[i].complete ? "" : "(cut)");
            if (ce) fprintf(stderr, "[%.*s, %zu bytes]", (int)ce->vlen, ce->value, rp.m[i].body_len);
        }
        fprintf(stderr, "%s\n", client_eof ? ", then close" : "");
    }

    /* the client's first final response against the origin's */
    const msg_t *got = NULL;
    for (int i = 0; i < rp.n && !got; i++)
        if (rp.m[i].head_done && (rp.m[i].status >= 200 || rp.m[i].status == 101)) got = &rp.m[i];
    if (got && got->status != 101 && has_moxy_via(got)) {
        const msg_t *want = NULL;
        for (int i = 0; i < op.n && !want; i++)
            if (op.m[i].head_done && (op.m[i].status >= 200 || op.m[i].status == 101)) want = &op.m[i];
        /* a body delimited by the close (an HTTP/1.0 client) ends where moxy
         * stops: a prefix of the origin's, which may have been cut */
        int by_close = !count_named(got, "content-length", NULL) && !count_named(got, "transfer-encoding", NULL) &&
                       moxy_resp_has_body_status(got->status) && REQUESTS[which].methods[0] != HTTP_HEAD;
        if (!got->complete) {
            /* its head, as far as it came */
            if (want && want->head_done) check_coding(which, got, want, 0, by_close);
        } else {
            if (!want || (!want->complete && !by_close))
                finding("the client got a complete %d from the origin, which sent no complete final response%s%s",
                        got->status, op.error ? ": " : "", op.error ? op.why : "");
            if (want->status != got->status)
                finding("the origin's %d reached the client as %d", want->status, got->status);
            if (!check_coding(which, got, want, 1, by_close)) {
                if (by_close ? got->body_len > want->body_len : got->body_len != want->body_len)
                    finding("the origin's body of %zu bytes reached the client as %zu bytes", want->body_len,
                            got->body_len);
                if (got->body_len && memcmp(want->body, got->body, got->body_len) != 0)
                    finding("the origin's body reached the client changed");
            }
            if (want->complete) check_coded_when_due(which, got, want);
        }
    }
    mp_free(&op);
    mp_free(&rp);
    origin_reset();
    return 0;
}
