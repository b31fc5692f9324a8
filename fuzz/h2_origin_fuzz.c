/*
 * h2_origin_fuzz.c -- HTTP/2 toward origins: a pool with protocol = "h2"
 * (proxy/origin_h2.c, cleartext with prior knowledge: streams on shared
 * nghttp2 client sessions; origin_response.c's moxy_origin_h2_head/_body;
 * http_upstream.c's tries) on a worker run in-process (see http_fuzz.h),
 * for fixed HTTP/1.1 requests from a client on the plain listener.
 *
 * The origin is an nghttp2 server session per connection the harness
 * accepts: it reads moxy's preface, SETTINGS, HEADERS and DATA (its HTTP
 * checks on), and answers by a program.  Input:
 *   byte 0    bits 0-2: the client's request (REQUESTS: GET, HEAD, POST with
 *             Content-Length, chunked POST with trailers, two pipelined
 *             GETs, GET with TE: trailers, POST of 20000 bytes, POST with
 *             Expect: 100-continue); bit 3: the origin sends no SETTINGS
 *             when it accepts; bit 4: its SETTINGS say
 *             MAX_CONCURRENT_STREAMS 1; bits 5-6: and INITIAL_WINDOW_SIZE
 *             (none, 0, 16, 1000); bit 7: the origin answers every stream
 *             but the first by itself (200, 4 bytes) once its request is in
 *   then a program, run once moxy settled with the request, op by op.  An
 *   op byte's low 4 bits say which op, bits 4-6 are its options, bit 7
 *   lets moxy settle after it (the frames of the ops before go out in one
 *   write).  Ops act on the newest stream moxy opened (or the one PICK
 *   chose) and its connection:
 *     0, 14  HEADERS: a status (STATUSES), flags (bit 0 END_STREAM, 1 fields
 *            never indexed, 2 no :status, 3 :status after the fields, 4 a
 *            second :status, 5 padded), a count (% 8) and that many fields
 *            (FIELDS: right and wrong content-lengths, connection-specific,
 *            upper-case, pseudo-headers, big values, ...)
 *     1, 15  DATA: a length byte; option 0: that many bytes of the input,
 *            else length * 97 bytes of a pattern; option 1: END_STREAM;
 *            option 2: padded
 *     2      trailers: a count (% 8), fields, END_STREAM after the DATA
 *            queued; option 0: with a :status
 *     3      RST_STREAM: an error code (RST_CODES)
 *     4      GOAWAY: last stream id (low 3 bits: 0, this one, the one
 *            before, the one after, 2^31-1, the last one seen) and code
 *     5      SETTINGS: an id and a value (SETTING_IDS, SETTING_VALUES);
 *            raw when nghttp2 will not make it
 *     6      PING
 *     7      WINDOW_UPDATE: bit 0 this stream (else the connection), an
 *            increment
 *     8      raw bytes: a length byte, the bytes
 *     9      a raw frame: type, flags, stream (0, this one, the next, 2,
 *            2^31-1), a length byte and the payload
 *     10     PICK: stream k (% the streams seen) until a new one opens
 *     11     a whole response: a status, a body length byte; option 0: with
 *            Content-Length; none for HEAD, 204, 304; only the head for 1xx
 *     12     close: option 0: GOAWAY first; then shut the sending side
 *     13     wait (moxy settles)
 * Frames go through nghttp2 (names not lower-cased, fields not checked:
 * the invalid ones go as chosen); the raw ops write past it.  Then each
 * side closes in turn (http_fuzz.h's teardown).
 *
 * A model of a strict HTTP/2 client reads what the origin sent on each
 * stream (nghttp2's frame-sent callbacks): whether the response is
 * complete and valid (heads, :status, fields, content-length against the
 * DATA, trailers) and not cut short by the origin (its RST_STREAM, a
 * GOAWAY below it, raw bytes or the close of its connection before its
 * end).
 *
 * Invariants (each check's id in parentheses, for HTTP_FUZZ_SKIP):
 *  - what the client receives parses with a strict llhttp as HTTP/1.1
 *    responses (1xx and HEAD, 204, 304 without content), each complete but
 *    the last, at most one final response per request (http_fuzz.h), each
 *    status three digits, 100 to 999 (status);
 *  - no hop-by-hop, connection-specific or pseudo-header field reaches the
 *    client in a head (Connection only as moxy's "close", one
 *    Transfer-Encoding only as moxy's chunked, never with Content-Length)
 *    or in trailers (hop);
 *  - a complete final response with moxy's Via ("2 moxy": the origin
 *    answered in HTTP/2) came from a stream where
 *    the origin sent a final head; when that stream's response is valid
 *    and complete, the client gets its status, its interim statuses (but
 *    100), its plain fields (and no other) and exactly its DATA bytes
 *    (forwarded);
 *  - what moxy sends on a connection without raw bytes is valid HTTP/2 to
 *    nghttp2's server, each stream one of the client's requests (method,
 *    :path, :authority h, :scheme http) with exactly the client's body
 *    when it ends (request);
 *  - when both peers have closed, the worker holds no connection, no
 *    HTTP/2 origin connection either (its pool's gauge is 0) (conns).
 * A violation aborts with both sides' bytes on stderr; HTTP_FUZZ_VERBOSE=1
 * lists the frames each side sent and the program's log first.  Known
 * findings, to go on past them: retry-fields and padded-length (the
 * client's side is not checked when a request went again after a try of
 * it got a head, or when a content-length of 20 digits or more went).
 */
#define HTTP_FUZZ_POOL_EXTRA ", protocol = \"h2\""
#include "http_fuzz.h"
#include "http/stats.h"

#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdatomic.h>

#define FUZZ_INPUT_MAX 32768
#define MAX_OPS 256
#define MAX_CONNS 16
#define MAX_STREAMS 32

/* --- the client's requests --- */

static char big_body[20000];
static char big_request[20100];

static const struct {
    const char *text; /* the bytes the client sends (NULL: big_request) */
    int method;       /* llhttp's, of each request */
    const char *paths[2];
    int n;
    const char *body; /* each request's body as the origin gets it (NULL: big_body) */
    size_t body_len;
} REQUESTS[] = {
    {"GET /r HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_GET, {"/r"}, 1, "", 0},
    {"HEAD /r HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_HEAD, {"/r"}, 1, "", 0},
    {"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", HTTP_POST, {"/r"}, 1, "abc", 3},
    {"POST /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-T: 1\r\n\r\n",
     HTTP_POST,
     {"/r"},
     1,
     "abcdefg",
     7},
    {"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_GET, {"/a", "/b"}, 2, "", 0},
    {"GET /r HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n", HTTP_GET, {"/r"}, 1, "", 0},
    {NULL, HTTP_POST, {"/r"}, 1, NULL, sizeof(big_body)},
    {"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc", HTTP_POST, {"/r"}, 1, "abc",
     3},
};

/* --- what the origin may send --- */

static const char *const STATUSES[] = {"200", "204", "304", "404", "100", "103", "200", "500", "101", "199",
                                       "302", "000", "099", "600", "999", "20",  "2000", "abc", "2 0", "+20"};

enum { F_PLAIN = 1, F_CL_RIGHT, F_CL_MORE, F_CL_LESS, F_CL_PADDED };

static char big_value[4000], huge_value[9000];

/* Fields a head or trailers take (value NULL: computed, by kind).  Plain
 * ones are valid and reach the client as they are. */
typedef struct {
    const char *name, *value;
    size_t vlen;
    int kind;
} field_t;
static const field_t FIELDS[] = {
    {"content-type", "text/plain", 10, F_PLAIN},
    {"x-a", "1", 1, F_PLAIN},
    {"cache-control", "no-store", 8, F_PLAIN},
    {"set-cookie", "a=b; Path=/", 11, F_PLAIN},
    {"link", "</s.css>; rel=preload", 21, F_PLAIN},
    {"x-empty", "", 0, F_PLAIN},
    {"x-big", big_value, sizeof(big_value), F_PLAIN},
    {"x-obs", "caf\xc3\xa9", 5, F_PLAIN},
    {"content-length", NULL, 0, F_CL_RIGHT},
    {"content-length", NULL, 0, F_CL_RIGHT},
    {"content-length", NULL, 0, F_CL_MORE},
    {"content-length", NULL, 0, F_CL_LESS},
    {"content-length", NULL, 0, F_CL_PADDED},
    {"content-length", "0", 1, 0},
    {"content-length", "abc", 3, 0},
    {"content-length", "18446744073709551616", 20, 0},
    {"connection", "close", 5, 0},
    {"keep-alive", "timeout=5", 9, 0},
    {"transfer-encoding", "chunked", 7, 0},
    {"upgrade", "h2c", 3, 0},
    {"proxy-connection", "keep-alive", 10, 0},
    {"te", "trailers", 8, 0},
    {"te", "gzip", 4, 0},
    {"trailer", "x-t", 3, 0},
    {"X-Upper", "1", 1, 0},
    {":status", "200", 3, 0},
    {":path", "/x", 2, 0},
    {":authority", "h", 1, 0},
    {"x-huge", huge_value, sizeof(huge_value), 0},
    {"x-crlf", "a\r\nInjected: 1", 14, 0},
    {"x-nul", "a\0b", 3, 0},
    {"x-ws", " lead", 5, 0},
    {"x y", "1", 1, 0},
    {"", "empty-name", 10, 0},
    {"host", "evil", 4, 0},
    {"x-forwarded-for", "1.2.3.4", 7, 0},
    {"via", "1.1 other", 9, 0},
    {"x-request-id", "origin-id", 9, 0},
    {"x-t", "1", 1, 0},
    {"content-encoding", "gzip", 4, 0},
};

static const uint32_t RST_CODES[] = {NGHTTP2_NO_ERROR,       NGHTTP2_PROTOCOL_ERROR, NGHTTP2_INTERNAL_ERROR,
                                     NGHTTP2_REFUSED_STREAM, NGHTTP2_CANCEL,         NGHTTP2_REFUSED_STREAM,
                                     NGHTTP2_STREAM_CLOSED,  NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_FLOW_CONTROL_ERROR,
                                     NGHTTP2_HTTP_1_1_REQUIRED, 0x1234};
static const uint32_t GOAWAY_CODES[] = {NGHTTP2_NO_ERROR, NGHTTP2_PROTOCOL_ERROR, NGHTTP2_INTERNAL_ERROR,
                                        NGHTTP2_ENHANCE_YOUR_CALM, 0x1234};
static const int32_t SETTING_IDS[] = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                      NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                      NGHTTP2_SETTINGS_MAX_FRAME_SIZE,         NGHTTP2_SETTINGS_HEADER_TABLE_SIZE,
                                      NGHTTP2_SETTINGS_ENABLE_PUSH,            NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                      NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 0x99};
static const uint32_t SETTING_VALUES[] = {0,     1,        2,          10,         100,        16384,
                                          65535, 65536,    16777215,   0x7fffffff, 0x80000000, 0xffffffff};
static const uint32_t INCREMENTS[] = {1, 1000, 65535, 0x7fffffff, 0, 1 << 20};

/* --- the origin's connections and the streams moxy opened on them --- */

typedef struct {
    oconn_t *o;
    nghttp2_session *s;    /* NULL past MAX_CONNS: its bytes are read and dropped */
    struct evbuffer *sent; /* every byte the origin wrote, for reports */
    int raw;               /* raw bytes went: the two ends' HPACK and stream states may differ */
    int wr_closed;         /* the origin shut its sending side */
    int recv_error;        /* nghttp2_session_mem_recv's error on moxy's bytes, 0: none */
    int req_bad;           /* an HTTP error nghttp2's server found in moxy's request, 0: none */
    int32_t req_bad_stream;
} hconn_t;

typedef struct {
    hconn_t *c;
    int32_t id;
    /* moxy's request as the origin read it */
    char method[16], path[64], authority[64], scheme[16];
    struct evbuffer *req_body;
    int req_end;
    /* what the origin still has to send: DATA waiting for its window, the
     * end (and the trailers) to go after it */
    struct evbuffer *pending;
    int want_end;
    nghttp2_nv trailer_nv[16];
    char trailer_val[8][32];
    size_t ntrailers;
    size_t pattern_off;
    /* the origin's response as a strict HTTP/2 client reads it */
    int phase;               /* 0: no head; 1: interim heads; 2: the final head */
    const char *invalid_why; /* NULL: valid so far */
    const char *tainted;     /* NULL, or why it was cut short by the origin */
    int ended;               /* END_STREAM went */
    int heads;               /* HEADERS frames sent */
    int status, interims[8], ninterims;
    long long cl;            /* its content-length, -1: none */
    int nobody;              /* HEAD, 204, 304: no content */
    struct evbuffer *body;   /* the DATA payload sent */
    int plain[8], nplain;    /* FIELDS indexes of plain fields in its final head */
} hstream_t;

static hconn_t conns[MAX_CONNS + 1]; /* the last: every connection past MAX_CONNS */
static int nconns_h;
static hstream_t streams[MAX_STREAMS];
static int nstreams;
static int pinned = -1, pinned_n; /* PICK's stream, while nstreams == pinned_n */
static unsigned origin_flags;     /* the input's byte 0 */
static unsigned which;            /* the client's request */
static size_t pad_next;           /* padding for the frames of the current op */
static struct evbuffer *oplog;    /* what the program did, for reports */
static int padded_length;         /* a content-length of 20 digits or more went (a known finding) */

__attribute__((format(printf, 1, 2))) static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(oplog, fmt, ap);
    va_end(ap);
}

static hstream_t *find_stream(const hconn_t *c, int32_t id)
{
    for (int i = 0; i < nstreams; i++)
        if (streams[i].c == c && streams[i].id == id) return &streams[i];
    return NULL;
}

/* The stream ops act on: PICK's, else the newest; NULL before any. */
static hstream_t *target(void)
{
    if (!nstreams) return NULL;
    if (pinned >= 0 && pinned_n == nstreams) return &streams[pinned];
    return &streams[nstreams - 1];
}

/* The connection ops act on: the target's, else the newest. */
static hconn_t *target_conn(void)
{
    hstream_t *st = target();
    if (st) return st->c;
    return nconns_h ? &conns[MOXY_MIN(nconns_h, MAX_CONNS) - 1] : NULL;
}

static int usable(const hconn_t *c)
{
    return c && c->s && !c->wr_closed && !c->o->closed;
}

/* --- the model: the origin's response on a stream, as sent --- */

static void invalid(hstream_t *st, const char *why)
{
    if (!st->invalid_why) st->invalid_why = why;
}

static void taint(hstream_t *st, const char *why)
{
    if (!st->ended && !st->tainted) st->tainted = why;
}

static void taint_conn(hconn_t *c, const char *why)
{
    for (int i = 0; i < nstreams; i++)
        if (streams[i].c == c) taint(&streams[i], why);
}

/* 1 when nghttp2's client takes field n: v in a response (RFC 9113 8.2). */
static int field_ok(const uint8_t *n, size_t nl, const uint8_t *v, size_t vl)
{
    static const char *const conn_specific[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                                "upgrade"};
    if (!nl) return 0;
    for (size_t i = 0; i < nl; i++) {
        int c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c)))) return 0;
    }
    for (size_t i = 0; i < MOXY_ARRAY_LEN(conn_specific); i++)
        if (ieq((const char *)n, nl, conn_specific[i])) return 0;
    if (ieq((const char *)n, nl, "te") && !ieq((const char *)v, vl, "trailers")) return 0;
    for (size_t i = 0; i < vl; i++)
        if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f) return 0;
    if (vl && (v[0] == ' ' || v[0] == '\t' || v[vl - 1] == ' ' || v[vl - 1] == '\t')) return 0;
    return 1;
}

static void model_end(hstream_t *st)
{
    st->ended = 1;
    size_t got = evbuffer_get_length(st->body);
    if (st->phase != 2) invalid(st, "END_STREAM before a final head");
    else if (st->nobody && got) invalid(st, "content in a response that has none");
    else if (!st->nobody && st->cl >= 0 && (long long)got != st->cl) invalid(st, "DATA other than its content-length");
}

/* A HEADERS frame the origin sent on st. */
static void model_head(hstream_t *st, const nghttp2_nv *nv, size_t n, int end)
{
    int trailers = st->phase == 2, regular = 0, nstatus = 0, status = -1, ncl = 0;
    st->heads++;
    const nghttp2_nv *cl = NULL;
    for (size_t i = 0; i < n; i++) {
        const nghttp2_nv *f = &nv[i];
        if (f->namelen && f->name[0] == ':') {
            if (trailers || regular) invalid(st, "a pseudo-header in trailers or after a field");
            if (f->namelen == 7 && memcmp(f->name, ":status", 7) == 0) {
                nstatus++;
                const uint8_t *v = f->value;
                if (f->valuelen == 3 && v[0] >= '0' && v[0] <= '9' && v[1] >= '0' && v[1] <= '9' && v[2] >= '0' &&
                    v[2] <= '9')
                    status = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
                else
                    invalid(st, "a :status other than 3 digits");
            } else {
                invalid(st, "a pseudo-header other than :status");
            }
            continue;
        }
        regular = 1;
        if (!field_ok(f->name, f->namelen, f->value, f->valuelen)) invalid(st, "a field nghttp2's client refuses");
        if (ieq((const char *)f->name, f->namelen, "content-length")) {
            ncl++;
            cl = f;
        }
    }
    if (trailers) {
        if (!end) invalid(st, "trailers without END_STREAM");
        if (ncl) invalid(st, "content-length in trailers");
    } else if (nstatus != 1 || status < 0) {
        invalid(st, "a head without one :status");
        st->phase = 2;
    } else if (status >= 100 && status < 200) {
        if (status == 101) invalid(st, "101 over HTTP/2");
        if (end) invalid(st, "an interim head with END_STREAM");
        if (ncl) invalid(st, "content-length in an interim head");
        if (st->ninterims < (int)MOXY_ARRAY_LEN(st->interims)) st->interims[st->ninterims++] = status;
        st->phase = 1;
    } else {
        if (status < 100) invalid(st, "a status below 100");
        st->phase = 2;
        st->status = status;
        st->nobody = strcmp(st->method, "HEAD") == 0 || status == 204 || status == 304;
        if (ncl > 1) invalid(st, "two content-lengths");
        if (ncl == 1) {
            long long v = 0;
            int ok = cl->valuelen > 0;
            for (size_t i = 0; ok && i < cl->valuelen; i++) {
                int d = cl->value[i] - '0';
                if (d < 0 || d > 9 || v > (INT64_MAX - d) / 10) ok = 0;
                else v = v * 10 + d;
            }
            if (ok && cl->valuelen >= 20) padded_length = 1;
            if (!ok) invalid(st, "a content-length that is not a number");
            else if (status == 204 && !(cl->valuelen == 1 && cl->value[0] == '0'))
                invalid(st, "a 204 with a content-length other than 0");
            st->cl = ok ? v : -1;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < MOXY_ARRAY_LEN(FIELDS) && st->nplain < (int)MOXY_ARRAY_LEN(st->plain); k++)
                if (FIELDS[k].kind == F_PLAIN && nv[i].namelen == strlen(FIELDS[k].name) &&
                    memcmp(nv[i].name, FIELDS[k].name, nv[i].namelen) == 0 && nv[i].valuelen == FIELDS[k].vlen &&
                    memcmp(nv[i].value, FIELDS[k].value, FIELDS[k].vlen) == 0) {
                    st->plain[st->nplain++] = (int)k;
                    break;
                }
    }
    if (end) model_end(st);
}

static void model_data(hstream_t *st, const uint8_t *p, size_t n)
{
    if (!n) return;
    if (st->phase != 2) invalid(st, "DATA before a final head");
    evbuffer_add(st->body, p, n);
}

/* --- the origin's nghttp2 server sessions --- */

static ssize_t s_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(flags);
    hconn_t *c = arg;
    if (!c->wr_closed) {
        evbuffer_add(c->o->out, data, len);
        evbuffer_add(c->sent, data, len);
    }
    return (ssize_t)len;
}

/* The DATA payload of st: what the ops queued; its end, and the trailers
 * after it, once an op asked for them. */
static ssize_t s_data(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                      nghttp2_data_source *src, void *arg)
{
    MOXY_UNUSED(arg);
    hstream_t *st = src->ptr;
    size_t have = evbuffer_get_length(st->pending), n = MOXY_MIN(len, have);
    evbuffer_remove(st->pending, buf, n);
    model_data(st, buf, n);
    if (n == have && st->want_end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->ntrailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(s, id, st->trailer_nv, st->ntrailers);
            st->ntrailers = 0;
        }
        return (ssize_t)n;
    }
    return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

/* Send st's queued DATA: resume its DATA item, or make one. */
static void kick_data(hstream_t *st)
{
    if (nghttp2_session_resume_data(st->c->s, st->id) == 0) return;
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = s_data};
    nghttp2_submit_data(st->c->s, NGHTTP2_FLAG_END_STREAM, st->id, &prd); /* DATA_EXIST: one goes already */
}

static void queue_pattern(hstream_t *st, size_t n)
{
    static const char pat[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    char buf[1024];
    while (n) {
        size_t k = MOXY_MIN(n, sizeof(buf));
        for (size_t i = 0; i < k; i++) buf[i] = pat[(st->pattern_off + i) % (sizeof(pat) - 1)];
        st->pattern_off += k;
        evbuffer_add(st->pending, buf, k);
        n -= k;
    }
}

/* bit 7 of byte 0: a whole 200 for a stream after the first. */
static void auto_answer(hstream_t *st)
{
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
                       {(uint8_t *)"content-length", (uint8_t *)"4", 14, 1, NGHTTP2_NV_FLAG_NONE}};
    int head = strcmp(st->method, "HEAD") == 0;
    if (nghttp2_submit_headers(st->c->s, head ? NGHTTP2_FLAG_END_STREAM : 0, st->id, NULL, nv, 2, NULL) < 0) return;
    if (head) return;
    evbuffer_add(st->pending, "auto", 4);
    st->want_end = 1;
    kick_data(st);
}

static int s_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(s);
    hconn_t *c = arg;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST || nstreams == MAX_STREAMS) return 0;
    hstream_t *st = &streams[nstreams++];
    memset(st, 0, sizeof(*st));
    st->c = c;
    st->id = f->hd.stream_id;
    st->cl = -1;
    st->req_body = evbuffer_new();
    st->pending = evbuffer_new();
    st->body = evbuffer_new();
    return 0;
}

static void copy_str(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    n = MOXY_MIN(n, cap - 1);
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static int s_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value,
                    size_t vlen, uint8_t flags, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(flags);
    hstream_t *st = find_stream(arg, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    if (nlen == 7 && memcmp(name, ":method", 7) == 0) copy_str(st->method, sizeof(st->method), value, vlen);
    else if (nlen == 5 && memcmp(name, ":path", 5) == 0) copy_str(st->path, sizeof(st->path), value, vlen);
    else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) copy_str(st->authority, sizeof(st->authority), value, vlen);
    else if (nlen == 7 && memcmp(name, ":scheme", 7) == 0) copy_str(st->scheme, sizeof(st->scheme), value, vlen);
    return 0;
}

static int s_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(s);
    hstream_t *st = find_stream(arg, f->hd.stream_id);
    if (!st || (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)) return 0;
    if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    st->req_end = 1;
    if ((origin_flags & 0x80) && st != &streams[0] && st->phase == 0) auto_answer(st);
    return 0;
}

static int s_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(flags);
    hstream_t *st = find_stream(arg, id);
    if (st) evbuffer_add(st->req_body, data, len);
    return 0;
}

static int s_invalid(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *arg)
{
    MOXY_UNUSED(s);
    hconn_t *c = arg;
    if ((lib_error == NGHTTP2_ERR_HTTP_HEADER || lib_error == NGHTTP2_ERR_HTTP_MESSAGING) && !c->req_bad) {
        c->req_bad = lib_error;
        c->req_bad_stream = f->hd.stream_id;
    }
    return 0;
}

static int s_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    MOXY_UNUSED(s);
    hconn_t *c = arg;
    hstream_t *st = find_stream(c, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (st) model_head(st, f->headers.nva, f->headers.nvlen, f->hd.flags & NGHTTP2_FLAG_END_STREAM);
        break;
    case NGHTTP2_DATA:
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) model_end(st);
        break;
    case NGHTTP2_RST_STREAM:
        if (st) taint(st, "the origin reset it");
        break;
    case NGHTTP2_GOAWAY:
        for (int i = 0; i < nstreams; i++)
            if (streams[i].c == c && streams[i].id > f->goaway.last_stream_id)
                taint(&streams[i], "a GOAWAY below it");
        break;
    }
    return 0;
}

static ssize_t s_padding(nghttp2_session *s, const nghttp2_frame *f, size_t max, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(arg);
    return (ssize_t)MOXY_MIN(f->hd.length + pad_next, max);
}

/* --- the origin's sockets (its own event callback: http_fuzz.h's reads HTTP/1) --- */

static void h2_cb(evutil_socket_t fd, short what, void *arg);

static hconn_t *conn_of(const oconn_t *o)
{
    return &conns[MOXY_MIN(o->index, MAX_CONNS)];
}

/* Watch o for reading (until moxy closed) and, when want_write, writing. */
static void conn_arm(oconn_t *o, int want_write)
{
    event_del(&o->ev);
    short ev = (short)((o->eof ? 0 : EV_READ) | (want_write ? EV_WRITE : 0));
    o->writing = want_write;
    if (!ev) return;
    event_assign(&o->ev, W->base, o->fd, ev | EV_PERSIST, h2_cb, o);
    event_add(&o->ev, NULL);
}

/* Write what o has to send while its socket takes it. */
static void conn_flush(oconn_t *o)
{
    if (o->closed) return;
    while (evbuffer_get_length(o->out) > 0) {
        int n = evbuffer_write(o->out, o->fd);
        if (n > 0) {
            moved += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        evbuffer_drain(o->out, evbuffer_get_length(o->out)); /* moxy went away, or the origin shut it */
    }
    int want = evbuffer_get_length(o->out) > 0;
    if (want != o->writing) conn_arm(o, want);
}

/* Frames c's session has to send, into its output (written by conn_flush). */
static void conn_send(hconn_t *c)
{
    if (usable(c)) nghttp2_session_send(c->s);
}

/* o's socket: what waits is written; moxy's bytes go to the server session,
 * and what it answers (acks, window updates, auto answers) goes out. */
static void h2_cb(evutil_socket_t fd, short what, void *arg)
{
    oconn_t *o = arg;
    hconn_t *c = conn_of(o);
    if (what & EV_WRITE) conn_flush(o);
    if (!(what & EV_READ)) return;
    uint8_t buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            moved += (size_t)n;
            evbuffer_add(o->raw, buf, (size_t)n);
            if (c->s && !c->recv_error) {
                ssize_t rv = nghttp2_session_mem_recv(c->s, buf, (size_t)n);
                if (rv < 0) c->recv_error = (int)rv;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        o->eof = 1; /* moxy closed (or reset) its side */
        moved++;
        break;
    }
    if (c->s) conn_send(c); /* SETTINGS and PING acks, window updates, answers */
    conn_flush(o);
    if (o->eof) conn_arm(o, o->writing);
}

static void origin_on_accept(oconn_t *o)
{
    hconn_t *c = conn_of(o);
    nconns_h++;
    /* frames go at once: with Nagle, a small write waits for moxy's delayed
     * ACK, after the loop settled */
    int one = 1;
    setsockopt(o->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    conn_arm(o, 0);
    if (o->index >= MAX_CONNS) return;
    static nghttp2_session_callbacks *cb;
    if (!cb) {
        nghttp2_session_callbacks_new(&cb);
        nghttp2_session_callbacks_set_send_callback(cb, s_send);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, s_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cb, s_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, s_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, s_data_chunk);
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, s_invalid);
        nghttp2_session_callbacks_set_on_frame_send_callback(cb, s_frame_send);
        nghttp2_session_callbacks_set_select_padding_callback(cb, s_padding);
    }
    memset(c, 0, sizeof(*c));
    c->o = o;
    c->sent = evbuffer_new();
    nghttp2_session_server_new(&c->s, cb, c);
    if (!(origin_flags & 8)) { /* the server's preface: its SETTINGS */
        static const uint32_t windows[] = {0, 0, 16, 1000};
        nghttp2_settings_entry iv[2];
        size_t k = 0;
        if (origin_flags & 0x10) iv[k++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1};
        if ((origin_flags >> 5) & 3)
            iv[k++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, windows[(origin_flags >> 5) & 3]};
        nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, k);
        nghttp2_session_send(c->s);
        conn_flush(o);
    }
}

/* http_fuzz.h's HTTP/1 origin hooks: this origin reads HTTP/2 (h2_cb),
 * and writes with conn_flush (origin_send would re-arm the HTTP/1 reader). */
static void origin_on_head(oconn_t *o, msg_t *m)
{
    MOXY_UNUSED(o);
    MOXY_UNUSED(m);
}

static void origin_on_request(oconn_t *o, msg_t *m)
{
    MOXY_UNUSED(o);
    MOXY_UNUSED(m);
    MOXY_UNUSED(origin_send);
}

/* --- the program --- */

enum {
    OP_HEADERS,
    OP_DATA,
    OP_TRAILERS,
    OP_RST,
    OP_GOAWAY,
    OP_SETTINGS,
    OP_PING,
    OP_WINDOW,
    OP_RAW,
    OP_RAW_FRAME,
    OP_PICK,
    OP_RESPONSE,
    OP_CLOSE,
    OP_WAIT,
};

typedef struct {
    uint8_t kind, opt, settle;
    uint8_t a, b, c, d;
    const uint8_t *p; /* field indexes, raw bytes, a DATA payload from the input */
    size_t n;
    size_t data_len; /* DATA: the payload's length */
} op_t;

static op_t ops[MAX_OPS];
static int nops;

/* n bytes of the input (fewer at its end). */
static const uint8_t *take_bytes(const uint8_t **d, size_t *n, size_t want, size_t *got)
{
    const uint8_t *p = *d;
    *got = MOXY_MIN(want, *n);
    *d += *got;
    *n -= *got;
    return p;
}

static void decode(const uint8_t *d, size_t n)
{
    nops = 0;
    while (n > 0 && nops < MAX_OPS) {
        op_t *op = &ops[nops++];
        memset(op, 0, sizeof(*op));
        unsigned b = fuzz_take_byte(&d, &n);
        op->kind = (uint8_t)(b & 15);
        if (op->kind == 14) op->kind = OP_HEADERS;
        if (op->kind == 15) op->kind = OP_DATA;
        op->opt = (uint8_t)((b >> 4) & 7);
        op->settle = (uint8_t)(b >> 7);
        switch (op->kind) {
        case OP_HEADERS:
            op->a = (uint8_t)fuzz_take_byte(&d, &n);
            op->b = (uint8_t)fuzz_take_byte(&d, &n);
            op->p = take_bytes(&d, &n, fuzz_take_byte(&d, &n) % 8, &op->n);
            break;
        case OP_DATA:
            op->a = (uint8_t)fuzz_take_byte(&d, &n);
            if (op->opt & 1) op->p = take_bytes(&d, &n, op->a, &op->n);
            op->data_len = op->opt & 1 ? op->n : (size_t)op->a * 97;
            break;
        case OP_TRAILERS:
            op->p = take_bytes(&d, &n, fuzz_take_byte(&d, &n) % 8, &op->n);
            break;
        case OP_RST:
        case OP_GOAWAY:
        case OP_WINDOW:
        case OP_PICK:
            op->a = (uint8_t)fuzz_take_byte(&d, &n);
            break;
        case OP_SETTINGS:
        case OP_RESPONSE:
            op->a = (uint8_t)fuzz_take_byte(&d, &n);
            op->b = (uint8_t)fuzz_take_byte(&d, &n);
            break;
        case OP_RAW:
            op->p = take_bytes(&d, &n, fuzz_take_byte(&d, &n), &op->n);
            break;
        case OP_RAW_FRAME:
            op->a = (uint8_t)fuzz_take_byte(&d, &n);
            op->b = (uint8_t)fuzz_take_byte(&d, &n);
            op->c = (uint8_t)fuzz_take_byte(&d, &n);
            op->p = take_bytes(&d, &n, fuzz_take_byte(&d, &n), &op->n);
            break;
        default: /* PING, CLOSE, WAIT */
            break;
        }
    }
}

/* The "right" content-length for a head at op k: the DATA of the ops that
 * follow, up to one with END_STREAM, trailers or another head. */
static size_t right_length(int k)
{
    size_t sum = 0;
    for (int i = k + 1; i < nops; i++) {
        const op_t *op = &ops[i];
        if (op->kind == OP_DATA) {
            sum += op->data_len;
            if (op->opt & 2) break;
        } else if (op->kind == OP_HEADERS || op->kind == OP_TRAILERS || op->kind == OP_RESPONSE ||
                   op->kind == OP_PICK) {
            break;
        }
    }
    return sum;
}

/* nv for FIELDS[idx] (a computed value goes in buf). */
static nghttp2_nv field_nv(unsigned idx, char *buf, size_t cap, size_t right, uint8_t flags)
{
    const field_t *f = &FIELDS[idx % MOXY_ARRAY_LEN(FIELDS)];
    const char *v = f->value;
    size_t vl = f->vlen;
    if (!v) {
        size_t want = f->kind == F_CL_MORE ? right + 1 : f->kind == F_CL_LESS ? (right ? right - 1 : 1) : right;
        vl = (size_t)snprintf(buf, cap, f->kind == F_CL_PADDED ? "%022zu" : "%zu", want);
        v = buf;
    }
    /* the names are static and go as they are (NO_COPY_NAME: not lower-cased) */
    return (nghttp2_nv){(uint8_t *)f->name, (uint8_t *)v, strlen(f->name), vl, (uint8_t)(flags | NGHTTP2_NV_FLAG_NO_COPY_NAME)};
}

/* A frame the origin writes past nghttp2 (the connection's states may part). */
static void raw_write(hconn_t *c, const void *p, size_t n)
{
    evbuffer_add(c->o->out, p, n);
    evbuffer_add(c->sent, p, n);
    if (!c->raw) taint_conn(c, "raw bytes on its connection");
    c->raw = 1;
}

static void raw_frame(hconn_t *c, uint8_t type, uint8_t flags, uint32_t sid, const uint8_t *payload, size_t n)
{
    uint8_t h[9] = {(uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n, type, flags, (uint8_t)((sid >> 24) & 0x7f),
                    (uint8_t)(sid >> 16), (uint8_t)(sid >> 8), (uint8_t)sid};
    raw_write(c, h, 9);
    if (n) raw_write(c, payload, n);
}

static void op_headers(int k, const op_t *op, hstream_t *st)
{
    nghttp2_nv nv[16];
    char vals[8][32];
    size_t n = 0;
    unsigned fl = op->b;
    uint8_t nvf = (fl & 2) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
    const char *status = STATUSES[op->a % MOXY_ARRAY_LEN(STATUSES)];
    nghttp2_nv snv = {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status),
                      (uint8_t)(nvf | NGHTTP2_NV_FLAG_NO_COPY_NAME)};
    if (!(fl & 4) && !(fl & 8)) nv[n++] = snv;
    size_t right = right_length(k);
    for (size_t i = 0; i < op->n; i++) nv[n++] = field_nv(op->p[i], vals[i], sizeof(vals[i]), right, nvf);
    if (fl & 8) nv[n++] = snv;
    if (fl & 16) nv[n++] = snv;
    pad_next = fl & 32 ? 17 : 0;
    int rv = nghttp2_submit_headers(st->c->s, (fl & 1) ? NGHTTP2_FLAG_END_STREAM : 0, st->id, NULL, nv, n, NULL);
    logf_("HEADERS stream %d: %s, %zu field(s)%s%s -> %d\n", st->id, (fl & 4) ? "no :status" : status, op->n,
          (fl & 1) ? ", END_STREAM" : "", (fl & 2) ? ", never indexed" : "", rv);
}

static void op_trailers(const op_t *op, hstream_t *st)
{
    size_t n = 0;
    if (op->opt & 1)
        st->trailer_nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NO_COPY_NAME};
    for (size_t i = 0; i < op->n; i++)
        st->trailer_nv[n++] = field_nv(op->p[i], st->trailer_val[i], sizeof(st->trailer_val[i]), 0, 0);
    logf_("trailers stream %d: %zu field(s)\n", st->id, n);
    if (st->phase < 2) { /* no final head yet: a HEADERS frame as it is */
        nghttp2_submit_headers(st->c->s, NGHTTP2_FLAG_END_STREAM, st->id, NULL, st->trailer_nv, n, NULL);
        return;
    }
    st->ntrailers = n; /* after the DATA queued (s_data) */
    st->want_end = 1;
    kick_data(st);
}

static void op_data(const op_t *op, hstream_t *st)
{
    if (op->opt & 1) evbuffer_add(st->pending, op->p, op->n);
    else queue_pattern(st, op->data_len);
    if (op->opt & 2) st->want_end = 1;
    pad_next = op->opt & 4 ? 33 : 0;
    logf_("DATA stream %d: %zu bytes%s\n", st->id, op->data_len, (op->opt & 2) ? ", END_STREAM" : "");
    kick_data(st);
}

static void op_response(const op_t *op, hstream_t *st)
{
    const char *status = STATUSES[op->a % MOXY_ARRAY_LEN(STATUSES)];
    size_t len = op->b;
    int interim = status[0] == '1' && strlen(status) == 3;
    int nobody = strcmp(st->method, "HEAD") == 0 || strcmp(status, "204") == 0 || strcmp(status, "304") == 0;
    char clbuf[24];
    nghttp2_nv nv[3] = {{(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
                        {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE}};
    size_t n = 2;
    if ((op->opt & 1) && !interim)
        nv[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)clbuf, 14,
                               (size_t)snprintf(clbuf, sizeof(clbuf), "%zu", len), NGHTTP2_NV_FLAG_NONE};
    int end = !interim && (nobody || len == 0);
    logf_("response stream %d: %s, %zu bytes\n", st->id, status, interim || nobody ? 0 : len);
    if (nghttp2_submit_headers(st->c->s, end ? NGHTTP2_FLAG_END_STREAM : 0, st->id, NULL, nv, n, NULL) < 0) return;
    if (interim || end) return;
    queue_pattern(st, len);
    st->want_end = 1;
    kick_data(st);
}

static void op_goaway(const op_t *op, hconn_t *c, hstream_t *st)
{
    int32_t id = st ? st->id : 0, last;
    switch (op->a & 7) {
    case 0: last = 0; break;
    case 1: last = id; break;
    case 2: last = id > 2 ? id - 2 : 0; break;
    case 3: last = id + 2; break;
    case 4: last = 0x7fffffff; break;
    default: last = nghttp2_session_get_last_proc_stream_id(c->s); break;
    }
    uint32_t code = GOAWAY_CODES[(op->a >> 3) % MOXY_ARRAY_LEN(GOAWAY_CODES)];
    int rv = nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE, last, code, NULL, 0);
    logf_("GOAWAY last %d code %u -> %d\n", last, code, rv);
    if (rv != 0) {
        uint8_t p[8] = {(uint8_t)(last >> 24), (uint8_t)(last >> 16), (uint8_t)(last >> 8), (uint8_t)last,
                        (uint8_t)(code >> 24), (uint8_t)(code >> 16), (uint8_t)(code >> 8), (uint8_t)code};
        conn_send(c);
        raw_frame(c, NGHTTP2_GOAWAY, 0, 0, p, 8);
    }
}

static void op_settings(const op_t *op, hconn_t *c)
{
    nghttp2_settings_entry e = {SETTING_IDS[op->a % MOXY_ARRAY_LEN(SETTING_IDS)],
                                SETTING_VALUES[op->b % MOXY_ARRAY_LEN(SETTING_VALUES)]};
    int rv = nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, &e, 1);
    logf_("SETTINGS 0x%x = %u -> %d\n", (unsigned)e.settings_id, e.value, rv);
    if (rv != 0) { /* a value nghttp2 will not send */
        uint8_t p[6] = {(uint8_t)(e.settings_id >> 8), (uint8_t)e.settings_id, (uint8_t)(e.value >> 24),
                        (uint8_t)(e.value >> 16), (uint8_t)(e.value >> 8), (uint8_t)e.value};
        conn_send(c);
        raw_frame(c, NGHTTP2_SETTINGS, 0, 0, p, 6);
    }
}

static void op_window(const op_t *op, hconn_t *c, hstream_t *st)
{
    int32_t sid = (op->a & 1) && st && st->c == c ? st->id : 0;
    uint32_t inc = INCREMENTS[(op->a >> 1) % MOXY_ARRAY_LEN(INCREMENTS)];
    int rv = nghttp2_submit_window_update(c->s, NGHTTP2_FLAG_NONE, sid, (int32_t)inc);
    logf_("WINDOW_UPDATE stream %d +%u -> %d\n", sid, inc, rv);
    if (rv != 0) {
        uint8_t p[4] = {(uint8_t)((inc >> 24) & 0x7f), (uint8_t)(inc >> 16), (uint8_t)(inc >> 8), (uint8_t)inc};
        conn_send(c);
        raw_frame(c, NGHTTP2_WINDOW_UPDATE, 0, (uint32_t)sid, p, 4);
    }
}

static void op_raw_frame(const op_t *op, hconn_t *c, hstream_t *st)
{
    uint32_t id = st && st->c == c ? (uint32_t)st->id : 1;
    static const int sel_kinds = 5;
    uint32_t sid;
    switch (op->c % sel_kinds) {
    case 0: sid = 0; break;
    case 1: sid = id; break;
    case 2: sid = id + 2; break;
    case 3: sid = 2; break;
    default: sid = 0x7fffffff; break;
    }
    logf_("raw frame type %u flags 0x%x stream %u, %zu bytes\n", op->a, op->b, sid, op->n);
    conn_send(c);
    raw_frame(c, op->a, op->b, sid, op->p, op->n);
}

static void op_close(const op_t *op, hconn_t *c)
{
    if (op->opt & 1) {
        nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->s),
                              NGHTTP2_NO_ERROR, NULL, 0);
        conn_send(c);
    }
    logf_("close (connection %d)%s\n", c->o->index, (op->opt & 1) ? " after a GOAWAY" : "");
    conn_flush(c->o);
    shutdown(c->o->fd, SHUT_WR);
    c->wr_closed = 1;
    taint_conn(c, "the origin closed its connection");
}

/* Op k of the program. */
static void run_op(int k)
{
    const op_t *op = &ops[k];
    hstream_t *st = target();
    hconn_t *c = target_conn();
    if (op->kind == OP_PICK) {
        if (nstreams) {
            pinned = op->a % nstreams;
            pinned_n = nstreams;
            logf_("pick stream %d\n", streams[pinned].id);
        }
        return;
    }
    if (op->kind == OP_WAIT || !usable(c)) return;
    int stream_op = op->kind == OP_HEADERS || op->kind == OP_DATA || op->kind == OP_TRAILERS ||
                    op->kind == OP_RST || op->kind == OP_RESPONSE;
    if (stream_op && !st) return;
    pad_next = 0;
    switch (op->kind) {
    case OP_HEADERS: op_headers(k, op, st); break;
    case OP_DATA: op_data(op, st); break;
    case OP_TRAILERS: op_trailers(op, st); break;
    case OP_RST: {
        uint32_t code = RST_CODES[op->a % MOXY_ARRAY_LEN(RST_CODES)];
        logf_("RST_STREAM stream %d code %u\n", st->id, code);
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, code);
        break;
    }
    case OP_GOAWAY: op_goaway(op, c, st); break;
    case OP_SETTINGS: op_settings(op, c); break;
    case OP_PING:
        logf_("PING\n");
        nghttp2_submit_ping(c->s, NGHTTP2_FLAG_NONE, NULL);
        break;
    case OP_WINDOW: op_window(op, c, st); break;
    case OP_RAW:
        logf_("raw bytes: %zu\n", op->n);
        conn_send(c);
        raw_write(c, op->p, op->n);
        break;
    case OP_RAW_FRAME: op_raw_frame(op, c, st); break;
    case OP_RESPONSE: op_response(op, st); break;
    case OP_CLOSE: op_close(op, c); return;
    }
    conn_send(c);
    pad_next = 0;
}

static void flush_all(void)
{
    for (int i = 0; i < MOXY_MIN(nconns_h, MAX_CONNS); i++) conn_flush(conns[i].o);
}

/* --- reports --- */

static const char *frame_type(unsigned t)
{
    static const char *const names[] = {"DATA",   "HEADERS", "PRIORITY", "RST_STREAM",   "SETTINGS",
                                        "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"};
    return t < MOXY_ARRAY_LEN(names) ? names[t] : "?";
}

/* The frames of n bytes (past the client preface when there is one). */
static void list_frames(const char *what, const uint8_t *p, size_t n)
{
    fprintf(stderr, "--- %s: %zu bytes ---\n", what, n);
    if (n >= 24 && memcmp(p, NGHTTP2_CLIENT_MAGIC, 24) == 0) {
        fprintf(stderr, "  client preface\n");
        p += 24;
        n -= 24;
    }
    int shown = 0;
    while (n >= 9 && shown++ < 200) {
        size_t len = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
        uint32_t sid = ((uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8]) & 0x7fffffff;
        fprintf(stderr, "  %s (%u) flags 0x%02x stream %u length %zu\n", frame_type(p[3]), p[3], p[4], sid, len);
        if (len > n - 9) {
            fprintf(stderr, "  (cut: %zu bytes left)\n", n - 9);
            return;
        }
        p += 9 + len;
        n -= 9 + len;
    }
    if (n) fprintf(stderr, "  %zu bytes that are no frame\n", n);
}

static void report(void)
{
    fprintf(stderr, "--- the origin's program ---\n%.*s", (int)evbuffer_get_length(oplog),
            (const char *)evbuffer_pullup(oplog, -1));
    for (int i = 0; i < MOXY_MIN(nconns_h, MAX_CONNS); i++) {
        char what[64];
        snprintf(what, sizeof(what), "origin connection %d, the origin sent%s", i, conns[i].raw ? " (raw bytes too)" : "");
        list_frames(what, evbuffer_pullup(conns[i].sent, -1), evbuffer_get_length(conns[i].sent));
        snprintf(what, sizeof(what), "origin connection %d, moxy sent", i);
        list_frames(what, evbuffer_pullup(conns[i].o->raw, -1), evbuffer_get_length(conns[i].o->raw));
    }
    for (int i = 0; i < nstreams; i++) {
        const hstream_t *st = &streams[i];
        fprintf(stderr, "stream %d (connection %d): %s %s; response %d, %zu bytes%s; %s%s%s\n", st->id,
                st->c->o->index, st->method, st->path, st->status, evbuffer_get_length(st->body),
                st->ended ? ", ended" : "", st->invalid_why ? "invalid: " : "valid",
                st->invalid_why ? st->invalid_why : "", st->tainted ? "; cut short" : "");
    }
}

/* An invariant failed: the program and the frames, then http_fuzz.h's report. */
__attribute__((noreturn, format(printf, 1, 2))) static void h2_finding(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    report();
    finding("%s", msg);
}

/* --- the checks --- */

static int has_moxy_via(const msg_t *m)
{
    for (int i = 0; i < m->nh; i++)
        if (!m->h[i].trailer && ieq(m->h[i].name, m->h[i].nlen, "via") && ieq(m->h[i].value, m->h[i].vlen, "2 moxy"))
            return 1;
    return 0;
}

/* Each status three digits (status); no hop-by-hop, connection-specific
 * or pseudo-header field in what the client got, but moxy's own framing
 * (hop). */
static void check_client_fields(const mparser_t *rp)
{
    for (int i = 0; i < rp->n; i++) {
        const msg_t *m = &rp->m[i];
        int nconn = 0, nte = 0, ncl = 0;
        /* RFC 9112 4: status-code = 3DIGIT (llhttp takes fewer) */
        if (m->head_done && (m->status < 100 || m->status > 999) && !skipped("status"))
            h2_finding("response %d: status %d is no three-digit status code", i, m->status);
        for (int j = 0; j < m->nh; j++) {
            const hf_t *h = &m->h[j];
            if (skipped("hop")) break;
            if (h->nlen && h->name[0] == ':') h2_finding("response %d: pseudo-header %.*s reached the client", i, (int)h->nlen, h->name);
            if (h->trailer) {
                if (trailer_banned(h->name, h->nlen))
                    h2_finding("response %d: %.*s reached the client in trailers", i, (int)h->nlen, h->name);
                continue;
            }
            if (ieq(h->name, h->nlen, "connection")) {
                nconn++;
                if (!ieq(h->value, h->vlen, "close"))
                    h2_finding("response %d: Connection: %.*s reached the client", i, (int)h->vlen, h->value);
            } else if (ieq(h->name, h->nlen, "keep-alive") || ieq(h->name, h->nlen, "upgrade") ||
                       ieq(h->name, h->nlen, "te") || ieq(h->name, h->nlen, "trailer") ||
                       ieq(h->name, h->nlen, "http2-settings") || (h->nlen >= 6 && ieq(h->name, 6, "proxy-"))) {
                h2_finding("response %d: hop-by-hop field %.*s reached the client", i, (int)h->nlen, h->name);
            } else if (ieq(h->name, h->nlen, "transfer-encoding")) {
                nte++;
                if (!ieq(h->value, h->vlen, "chunked"))
                    h2_finding("response %d: Transfer-Encoding: %.*s reached the client", i, (int)h->vlen, h->value);
            } else if (ieq(h->name, h->nlen, "content-length")) {
                ncl++;
            }
        }
        if (skipped("hop")) continue;
        if (nconn > 1 || nte > 1 || ncl > 1 || (nte && ncl))
            h2_finding("response %d: %d Connection, %d Transfer-Encoding, %d Content-Length fields", i, nconn, nte, ncl);
        if (m->status < 200 && (nte || ncl)) h2_finding("interim response %d with framing fields", i);
    }
}

/* The last stream that carried request k (a retry is a later stream). */
static const hstream_t *stream_of(int k)
{
    const hstream_t *found = NULL;
    for (int i = 0; i < nstreams; i++)
        if (strcmp(streams[i].path, REQUESTS[which].paths[k]) == 0) found = &streams[i];
    return found;
}

/* Complete final responses with moxy's Via against the origin's (forwarded). */
static void check_forwarded(const mparser_t *rp)
{
    int fin = 0, ci[16], nci = 0;
    for (int i = 0; i < rp->n && fin < REQUESTS[which].n; i++) {
        const msg_t *m = &rp->m[i];
        if (!m->head_done) break;
        if (m->status >= 100 && m->status < 200) {
            if (m->status != 100 && nci < 16) ci[nci++] = m->status; /* 100 is moxy's business with the client */
            continue;
        }
        int k = fin++, nc = nci;
        nci = 0;
        if (!m->complete || !has_moxy_via(m) || skipped("forwarded")) continue;
        const hstream_t *st = stream_of(k);
        if (!st || st->phase != 2)
            h2_finding("request %d: the client got a %d with moxy's Via, no stream had the origin's final head", k,
                       m->status);
        if (st->invalid_why || !st->ended || st->tainted) continue;
        if (st->status != m->status) h2_finding("request %d: the origin's %d reached the client as %d", k, st->status, m->status);
        size_t want = evbuffer_get_length(st->body);
        const char *body = (const char *)evbuffer_pullup(st->body, -1);
        if (want != m->body_len || (want && memcmp(body, m->body, want) != 0))
            h2_finding("request %d: the origin's %zu DATA bytes reached the client as %zu bytes%s", k, want, m->body_len,
                       want == m->body_len ? " (changed)" : "");
        int no = 0, oi[8];
        for (int j = 0; j < st->ninterims; j++)
            if (st->interims[j] != 100) oi[no++] = st->interims[j];
        if (no != nc || (no && memcmp(oi, ci, (size_t)no * sizeof(int)) != 0))
            h2_finding("request %d: the origin sent %d interim response(s) (but 100), the client got %d", k, no, nc);
        for (int j = 0; j < st->nplain; j++) {
            const field_t *f = &FIELDS[st->plain[j]];
            int found = 0;
            for (int h = 0; h < m->nh && !found; h++)
                found = !m->h[h].trailer && ieq(m->h[h].name, m->h[h].nlen, f->name) && m->h[h].vlen == f->vlen &&
                        memcmp(m->h[h].value, f->value, f->vlen) == 0;
            if (!found) h2_finding("request %d: the origin's %s field did not reach the client", k, f->name);
        }
        for (int h = 0; h < m->nh; h++) /* and none it did not send on that stream */
            for (size_t j = 0; j < MOXY_ARRAY_LEN(FIELDS); j++) {
                if (FIELDS[j].kind != F_PLAIN || m->h[h].trailer || !ieq(m->h[h].name, m->h[h].nlen, FIELDS[j].name))
                    continue;
                int sent = 0;
                for (int i2 = 0; i2 < st->nplain; i2++) sent |= strcmp(FIELDS[st->plain[i2]].name, FIELDS[j].name) == 0;
                if (!sent)
                    h2_finding("request %d: a %s field the origin did not send on stream %d reached the client", k,
                               FIELDS[j].name, st->id);
            }
    }
}

/* 1 when a request went again after the origin sent a head on an earlier
 * try of it (a known finding: that try's fields stay in the retry's head). */
static int retried_after_head(void)
{
    for (int k = 0; k < REQUESTS[which].n; k++) {
        const hstream_t *last = stream_of(k);
        for (int i = 0; i < nstreams; i++)
            if (&streams[i] != last && strcmp(streams[i].path, REQUESTS[which].paths[k]) == 0 && streams[i].heads)
                return 1;
    }
    return 0;
}

/* What moxy sent the origin: valid HTTP/2, the client's requests (request). */
static void check_requests(void)
{
    if (skipped("request")) return;
    for (int i = 0; i < MOXY_MIN(nconns_h, MAX_CONNS); i++) {
        const hconn_t *c = &conns[i];
        if (c->raw) continue;
        if (c->recv_error)
            h2_finding("origin connection %d: moxy's bytes are not HTTP/2 to nghttp2's server: %s", i,
                       nghttp2_strerror(c->recv_error));
        if (c->req_bad)
            h2_finding("origin connection %d: moxy's request on stream %d is not valid HTTP/2: %s", i,
                       c->req_bad_stream, nghttp2_strerror(c->req_bad));
    }
    for (int i = 0; i < nstreams; i++) {
        const hstream_t *st = &streams[i];
        if (st->c->raw) continue;
        int k = -1;
        for (int j = 0; j < REQUESTS[which].n; j++)
            if (strcmp(st->path, REQUESTS[which].paths[j]) == 0) k = j;
        if (k < 0) h2_finding("stream %d: :path %s is none of the client's", st->id, st->path);
        if (strcmp(st->method, llhttp_method_name((llhttp_method_t)REQUESTS[which].method)) != 0)
            h2_finding("stream %d: :method %s for a %s", st->id, st->method,
                       llhttp_method_name((llhttp_method_t)REQUESTS[which].method));
        if (strcmp(st->authority, "h") != 0 || strcmp(st->scheme, "http") != 0)
            h2_finding("stream %d: :authority %s, :scheme %s", st->id, st->authority, st->scheme);
        if (!st->req_end) continue;
        const char *want = REQUESTS[which].body ? REQUESTS[which].body : big_body;
        size_t wlen = REQUESTS[which].body_len, got = evbuffer_get_length(st->req_body);
        if (got != wlen || (got && memcmp(evbuffer_pullup(st->req_body, -1), want, got) != 0))
            h2_finding("stream %d: the client's body of %zu bytes reached the origin as %zu bytes", st->id, wlen, got);
    }
}

/* --- per input --- */

static void h2_setup(void)
{
    setup();
    oplog = evbuffer_new();
    memset(big_value, 'a', sizeof(big_value));
    memset(huge_value, 'b', sizeof(huge_value));
    for (size_t i = 0; i < sizeof(big_body); i++) big_body[i] = (char)('A' + i % 26);
    int n = snprintf(big_request, sizeof(big_request), "POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n",
                     sizeof(big_body));
    memcpy(big_request + n, big_body, sizeof(big_body));
    big_request[n + sizeof(big_body)] = '\0';
}

static void h2_reset(void)
{
    for (int i = 0; i < MOXY_MIN(nconns_h, MAX_CONNS); i++) {
        if (conns[i].s) nghttp2_session_del(conns[i].s);
        if (conns[i].sent) evbuffer_free(conns[i].sent);
        memset(&conns[i], 0, sizeof(conns[i]));
    }
    for (int i = 0; i < nstreams; i++) {
        evbuffer_free(streams[i].req_body);
        evbuffer_free(streams[i].pending);
        evbuffer_free(streams[i].body);
    }
    nconns_h = nstreams = 0;
    padded_length = 0;
    pinned = -1;
    evbuffer_drain(oplog, evbuffer_get_length(oplog));
    origin_reset();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!W) h2_setup();
    if (size > FUZZ_INPUT_MAX) return 0;
    cur_input = data;
    cur_size = size;
    origin_flags = fuzz_take_byte(&data, &size);
    which = origin_flags % MOXY_ARRAY_LEN(REQUESTS);
    decode(data, size);
    int methods[2] = {REQUESTS[which].method, REQUESTS[which].method};
    req_methods = methods;
    nreq_methods = REQUESTS[which].n;

    client_open();
    const char *req = REQUESTS[which].text ? REQUESTS[which].text : big_request;
    client_write((const uint8_t *)req, strlen(req));
    quiet("request sent");
    for (int k = 0; k < nops; k++) {
        run_op(k);
        if (ops[k].settle || ops[k].kind == OP_WAIT || k == nops - 1) {
            flush_all();
            quiet("the origin's program");
        }
    }
    teardown();

    /* HTTP_FUZZ_VERBOSE=1: what each side sent, before the checks (those of
     * http_fuzz.h report without the frames) */
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("HTTP_FUZZ_VERBOSE") != NULL;
    if (verbose) {
        report();
        dump("the client received", (const char *)evbuffer_pullup(client_rx, -1), evbuffer_get_length(client_rx));
    }
    mparser_t rp;
    memset(&rp, 0, sizeof(rp));
    /* the known findings, when skipped: the client's side is not checked */
    int known = (skipped("retry-fields") && retried_after_head()) || (skipped("padded-length") && padded_length);
    if (!known) {
        check_client_responses(&rp, REQUESTS[which].n);
        check_client_fields(&rp);
        check_forwarded(&rp);
    }
    check_requests();
    long long open = atomic_load(&W->g->pools[0].stats->h2_conns);
    if (open != 0 && !skipped("conns"))
        h2_finding("%lld HTTP/2 origin connection(s) still open after both peers closed", open);

    if (verbose) {
        fprintf(stderr, "request %u; origin connections %d; client got", which, nconns_h);
        for (int i = 0; i < rp.n; i++) fprintf(stderr, " %d%s", rp.m[i].status, rp.m[i].complete ? "" : "(cut)");
        fprintf(stderr, "%s\n\n", client_eof ? ", then close" : "");
    }
    mp_free(&rp);
    h2_reset();
    return 0;
}
