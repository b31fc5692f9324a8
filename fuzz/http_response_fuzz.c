/*
 * http_response_fuzz.c -- the HTTP/1 response path through moxy's real
 * origin and client code (http_upstream.c: the response head, 1xx, bodies
 * by length, chunks or close, trailers; http_response.c: the head moxy
 * writes; http_client.c: keep-alive) on a worker run in-process (see
 * http_fuzz.h).
 *
 * Input:
 *   byte 0    which fixed request the client sends (GET, HEAD, POST with a
 *             body, HTTP/1.0, two pipelined GETs, an upgrade, a chunked
 *             POST with Expect: 100-continue, Connection: close)
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
 *    field in its trailers (trailers);
 *  - the first final response the client gets, when it is the origin's
 *    (moxy's Via, not one of its error pages) and complete, is the origin's
 *    first final response as a strict parser reads the input (1xx without
 *    content): the same status, the same body (decoded);
 *  - when both peers have closed, the worker holds no connection.
 * A violation aborts with both sides' bytes on stderr.
 */
#include "http_fuzz.h"

#define FUZZ_INPUT_MAX 65536

static const struct {
    const char *text;
    int methods[2]; /* of its requests */
    int n;
} REQUESTS[] = {
    {"GET /r HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_GET}, 1},
    {"HEAD /r HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_HEAD}, 1},
    {"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", {HTTP_POST}, 1},
    {"GET /r HTTP/1.0\r\n\r\n", {HTTP_GET}, 1},
    {"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", {HTTP_GET, HTTP_GET}, 2},
    {"GET /r HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", {HTTP_GET}, 1},
    {"POST /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     {HTTP_POST},
     1},
    {"GET /r HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n", {HTTP_GET}, 1},
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
        for (int i = 0; i < rp.n; i++) fprintf(stderr, " %d%s", rp.m[i].status, rp.m[i].complete ? "" : "(cut)");
        fprintf(stderr, "%s\n", client_eof ? ", then close" : "");
    }

    /* the client's first final response against the origin's */
    const msg_t *got = NULL;
    for (int i = 0; i < rp.n && !got; i++)
        if (rp.m[i].head_done && (rp.m[i].status >= 200 || rp.m[i].status == 101)) got = &rp.m[i];
    if (got && got->complete && got->status != 101 && has_moxy_via(got)) {
        const msg_t *want = NULL;
        for (int i = 0; i < op.n && !want; i++)
            if (op.m[i].head_done && (op.m[i].status >= 200 || op.m[i].status == 101)) want = &op.m[i];
        /* a body delimited by the close (an HTTP/1.0 client) ends where moxy
         * stops: a prefix of the origin's, which may have been cut */
        int by_close = !count_named(got, "content-length", NULL) && !count_named(got, "transfer-encoding", NULL) &&
                       moxy_resp_has_body_status(got->status) && REQUESTS[which].methods[0] != HTTP_HEAD;
        if (!want || (!want->complete && !by_close))
            finding("the client got a complete %d from the origin, which sent no complete final response%s%s",
                    got->status, op.error ? ": " : "", op.error ? op.why : "");
        if (want->status != got->status) finding("the origin's %d reached the client as %d", want->status, got->status);
        if (by_close ? got->body_len > want->body_len : got->body_len != want->body_len)
            finding("the origin's body of %zu bytes reached the client as %zu bytes", want->body_len, got->body_len);
        if (got->body_len && memcmp(want->body, got->body, got->body_len) != 0)
            finding("the origin's body reached the client changed");
    }
    mp_free(&op);
    mp_free(&rp);
    origin_reset();
    return 0;
}
