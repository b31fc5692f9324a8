/*
 * http_request_fuzz.c -- the HTTP/1 request path through moxy's real client
 * and origin code (http_client.c, http_upstream.c, http_response.c,
 * headers.c, realip.c) on a worker run in-process (see http_fuzz.h).
 *
 * Input:
 *   byte 0    bit 0: the bytes go in two pieces, the loop settling between
 *             them (a head or body split across reads); bit 1: the client
 *             half-closes at once instead of after moxy settled; bit 2: the
 *             origin answers as soon as a request's head is in (before its
 *             body); bit 3: the origin answers with Connection: close and
 *             closes its sending side
 *   the rest  what the client sends on one connection (any number of
 *             requests, pipelined)
 * The origin answers each request it gets with a fixed 200 (Content-Length:
 * 2, "ok"; no body for HEAD), once it is complete (or at its head, bit 2).
 *
 * Invariants (the most important of the fuzzing effort: request smuggling):
 *  - what moxy sends the origin, on every connection, parses with a strict
 *    llhttp (HTTP_REQUEST, no lenient flag) without error; a connection
 *    may end inside a request only where moxy gave up on it;
 *  - the k-th complete request the origin gets is the k-th request the
 *    client sent (the same strict parser over the client's bytes): same
 *    method, same target, the same body (decoded); never more requests
 *    than the client sent;
 *  - each has exactly one Host, at most one Content-Length, at most one
 *    Transfer-Encoding and then only "chunked" (moxy's own), not both; no
 *    hop-by-hop field (Keep-Alive, TE, Trailer, Proxy-*, Connection other
 *    than moxy's "upgrade", Upgrade unless the client asked to upgrade);
 *    no field the client's Connection header named (other than the fields
 *    moxy writes itself: Host, X-Forwarded-*, Via, X-Request-Id, framing);
 *  - the trailers of a chunked body carry no framing, routing, hop-by-hop
 *    or forwarding field (trailers);
 *  - moxy's own fields are there: one X-Forwarded-For ending with the
 *    client's address, X-Forwarded-Proto, Via, X-Request-Id (own-headers);
 *  - what the client receives parses as responses (strict, 1xx without
 *    content), at most one final response per request;
 *  - when both peers have closed, the worker holds no connection.
 * A violation aborts with both sides' bytes on stderr.  HTTP_FUZZ_SKIP
 * (http_fuzz.h) leaves out named checks, to fuzz past a known finding.
 */
#include "http_fuzz.h"

#define FUZZ_INPUT_MAX 65536

static void origin_on_accept(oconn_t *o)
{
    MOXY_UNUSED(o);
}

/* The origin's complete requests, in the order they came (one client: one
 * request at a time, so this is the order moxy sent them). */
typedef struct {
    oconn_t *o;
    int i;
} fwd_t;
static fwd_t fwd[1024];
static int nfwd;

static unsigned origin_mode; /* input flags: 4 answer at the head, 8 close after answering */

static void origin_answer(oconn_t *o, msg_t *m)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    static const char ok_close[] = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    const char *a = origin_mode & 8 ? ok_close : ok;
    size_t n = origin_mode & 8 ? sizeof(ok_close) - 1 : sizeof(ok) - 1;
    origin_send(o, a, m->method == HTTP_HEAD ? n - 2 : n);
    if (origin_mode & 8) shutdown(o->fd, SHUT_WR); /* reads on: moxy may still send the body */
}

static void origin_on_head(oconn_t *o, msg_t *m)
{
    if (origin_mode & 4) origin_answer(o, m); /* before the body: moxy must not reuse the connection early */
}

static void origin_on_request(oconn_t *o, msg_t *m)
{
    if (nfwd < (int)MOXY_ARRAY_LEN(fwd)) fwd[nfwd++] = (fwd_t){o, (int)(m - o->mp.m)};
    if (!(origin_mode & 4)) origin_answer(o, m);
}

/* Fields moxy writes itself (a client's Connection may name them: moxy's own stay). */
static int moxy_own(const char *n, size_t l)
{
    static const char *const own[] = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via",
                                      "x-request-id", "content-length", "transfer-encoding", "connection", "upgrade"};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(own); i++)
        if (ieq(n, l, own[i])) return 1;
    return 0;
}

static void check_forwarded(int k, const msg_t *f, const mparser_t *cp)
{
    if (k >= cp->n || !cp->m[k].head_done)
        finding("origin got request %d (%.*s), the client sent %d", k + 1, (int)f->url_len, f->url ? f->url : "",
                cp->n);
    const msg_t *c = &cp->m[k];
    if (f->method != c->method) finding("request %d: method %d forwarded as %d", k + 1, c->method, f->method);
    if (f->url_len != c->url_len || (f->url_len && memcmp(f->url, c->url, f->url_len) != 0))
        finding("request %d: target changed", k + 1);
    if (!c->complete) finding("request %d: complete at the origin, not from the client", k + 1);
    if (f->body_len != c->body_len || (f->body_len && memcmp(f->body, c->body, f->body_len) != 0))
        finding("request %d: body of %zu bytes forwarded as %zu bytes", k + 1, c->body_len, f->body_len);
    int first = -1;
    if (count_named(f, "host", NULL) != 1) finding("request %d: %d Host fields", k + 1, count_named(f, "host", NULL));
    int cl = count_named(f, "content-length", NULL), te = count_named(f, "transfer-encoding", &first);
    if (cl > 1) finding("request %d: %d Content-Length fields", k + 1, cl);
    if (te > 1 || (te && !ieq(f->h[first].value, f->h[first].vlen, "chunked")))
        finding("request %d: Transfer-Encoding other than moxy's chunked", k + 1);
    if (cl && te) finding("request %d: both Content-Length and Transfer-Encoding", k + 1);
    /* moxy's own fields are there, whatever the client's Connection says (own-headers) */
    if (!skipped("own-headers")) {
        int x = -1;
        if (count_named(f, "x-forwarded-for", &x) != 1 || f->h[x].vlen < 10 ||
            memcmp(f->h[x].value + f->h[x].vlen - 10, "192.0.2.10", 10) != 0)
            finding("request %d: not one X-Forwarded-For ending with the client's address", k + 1);
        if (count_named(f, "x-forwarded-proto", NULL) != 1) finding("request %d: no X-Forwarded-Proto", k + 1);
        if (count_named(f, "via", &x) < 1) finding("request %d: no Via", k + 1);
        if (count_named(f, "x-request-id", NULL) < 1) finding("request %d: no X-Request-Id", k + 1);
    }
    for (int i = 0; i < f->nh; i++) {
        const hf_t *h = &f->h[i];
        if (h->trailer) {
            /* RFC 9110 6.5.1: no framing, routing, hop-by-hop or forwarding field in
             * trailers (a recipient that merges them into the head would see them there) */
            if (!skipped("trailers") && trailer_banned(h->name, h->nlen))
                finding("request %d: %.*s forwarded in the trailers", k + 1, (int)h->nlen, h->name);
            continue;
        }
        if (ieq(h->name, h->nlen, "keep-alive") || ieq(h->name, h->nlen, "te") || ieq(h->name, h->nlen, "trailer") ||
            (h->nlen >= 6 && ieq(h->name, 6, "proxy-")))
            finding("request %d: hop-by-hop field %.*s forwarded", k + 1, (int)h->nlen, h->name);
        if (ieq(h->name, h->nlen, "connection") && !(c->upgrade && ieq(h->value, h->vlen, "upgrade")))
            finding("request %d: Connection: %.*s forwarded", k + 1, (int)h->vlen, h->value);
        if (ieq(h->name, h->nlen, "upgrade") && !c->upgrade)
            finding("request %d: Upgrade forwarded without an upgrade", k + 1);
        if (!moxy_own(h->name, h->nlen) && connection_names(c, h->name, h->nlen))
            finding("request %d: %.*s forwarded though the client's Connection names it", k + 1, (int)h->nlen,
                    h->name);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!W) setup();
    if (size > FUZZ_INPUT_MAX) return 0;
    cur_input = data;
    cur_size = size;
    unsigned flags = fuzz_take_byte(&data, &size);
    origin_mode = flags;
    nfwd = 0;

    /* the client's requests, as a strict parser reads them */
    mparser_t cp;
    mp_init(&cp, HTTP_REQUEST);
    mp_feed(&cp, (const char *)data, size);
    mp_finish(&cp);
    if (cp.error == HPE_INVALID_TRANSFER_ENCODING && skipped("te-framing")) {
        /* a Transfer-Encoding llhttp refuses ("chunked" then a tab): moxy
         * decides the framing before llhttp checks it (a known finding) */
        mp_free(&cp);
        return 0;
    }

    client_open();
    if ((flags & 1) && size > 1) {
        client_write(data, size / 2);
        quiet("first piece sent");
        client_write(data + size / 2, size - size / 2);
    } else {
        client_write(data, size);
    }
    if (!(flags & 2)) quiet("request sent");
    teardown();

    /* what the origin got */
    oconn_t *list[256];
    int n = oconns_sorted(list, 256);
    for (int i = 0; i < n; i++)
        if (list[i]->mp.error)
            finding("origin connection %d: what moxy sent is not well-framed HTTP/1.1: %s", i, list[i]->mp.why);
    for (int k = 0; k < nfwd; k++) check_forwarded(k, &fwd[k].o->mp.m[fwd[k].i], &cp);

    /* what the client got */
    int methods[256];
    nreq_methods = cp.n < 256 ? cp.n : 256;
    for (int i = 0; i < nreq_methods; i++) methods[i] = cp.m[i].method;
    req_methods = methods;
    mparser_t rp;
    /* a request the strict parser refuses may still be answered (400) */
    check_client_responses(&rp, cp.n + (cp.error || cp.n == 0 ? 1 : 0));
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("HTTP_FUZZ_VERBOSE") != NULL;
    if (verbose) {
        fprintf(stderr, "client sent %d request(s)%s%s; origin got %d on %d connection(s); client got", cp.n,
                cp.error ? ", then: " : "", cp.error ? cp.why : "", nfwd, n);
        for (int i = 0; i < rp.n; i++) fprintf(stderr, " %d%s", rp.m[i].status, rp.m[i].complete ? "" : "(cut)");
        fprintf(stderr, "%s\n", client_eof ? ", then close" : "");
    }
    mp_free(&rp);
    mp_free(&cp);
    origin_reset();
    return 0;
}
