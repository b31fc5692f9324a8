/*
 * http2_fuzz.c -- HTTP/2 requests through moxy's real HTTP/2 side
 * (http2/h2_conn.c, h2_stream.c: the head's checks, the stream's request,
 * the body both ways, resets, trailers) on a worker run in-process (see
 * http_fuzz.h), to an HTTP/1.1 origin the harness owns.
 *
 * The client is an nghttp2 client session, so that what the fuzzer
 * chooses reaches moxy as well-formed frames (HPACK included) and moxy's
 * answers are read by a strict HTTP/2 peer.  Input:
 *   byte 0    bit 0: the client's bytes go in two pieces, the loop settling
 *             between them; bit 1: the origin answers as soon as a head is
 *             in (before its body); bit 2: the origin answers with
 *             Connection: close and closes its sending side; bit 3: the
 *             bytes left after the program go to moxy raw, after the frames
 *   then a program, op by op (the low 2 bits of an op's byte say which):
 *     0  a request: a byte of flags (bit 0: END_STREAM with the head; bit
 *        1: a content-length of the body the stream will send; bit 2: no
 *        :authority), a method (one of a list, some not methods), a path,
 *        an authority and up to 7 fields (each string: a length byte, then
 *        the bytes, at most 48)
 *     1  a DATA piece of the newest stream (a length byte, the bytes; the
 *        op's bit 2: END_STREAM)
 *     2  RST_STREAM (CANCEL) of the newest stream
 *     3  trailers of the newest stream (up to 3 fields), END_STREAM
 *
 * Invariants:
 *  - what moxy sends the origin, on every connection, parses with a strict
 *    llhttp without error (no smuggling), and every complete request there
 *    is one the client sent (its x-fuzz-stream field says which): its
 *    method and path as sent, one Host (the :authority, else the client's
 *    Host), at most one Content-Length and Transfer-Encoding (then only
 *    chunked), not both, no hop-by-hop or connection-specific field, and
 *    its body exactly what the client sent on the stream;
 *  - what moxy sends the client is valid HTTP/2 to nghttp2's client (with
 *    its HTTP checks: :status, content-length against DATA);
 *  - when both peers have closed, the worker holds no connection.
 */
#define HTTP_FUZZ_LISTEN "{ { addr = \"127.0.0.1:1\", http2 = true } }"
#include "http_fuzz.h"
#include "http2/http2.h"

#include <nghttp2/nghttp2.h>

#define FUZZ_INPUT_MAX 32768
#define FUZZ_STREAMS 32

static unsigned origin_mode;

static void origin_on_accept(oconn_t *o)
{
    MOXY_UNUSED(o);
}

static void origin_answer(oconn_t *o, msg_t *m)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    static const char ok_close[] = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    const char *a = origin_mode & 4 ? ok_close : ok;
    size_t n = origin_mode & 4 ? sizeof(ok_close) - 1 : sizeof(ok) - 1;
    origin_send(o, a, m->method == HTTP_HEAD ? n - 2 : n);
    if (origin_mode & 4) shutdown(o->fd, SHUT_WR);
}

static void origin_on_head(oconn_t *o, msg_t *m)
{
    if (origin_mode & 2) origin_answer(o, m);
}

typedef struct {
    oconn_t *o;
    int i;
} fwd_t;
static fwd_t fwd[256];
static int nfwd;

static void origin_on_request(oconn_t *o, msg_t *m)
{
    if (nfwd < (int)MOXY_ARRAY_LEN(fwd)) fwd[nfwd++] = (fwd_t){o, (int)(m - o->mp.m)};
    if (!(origin_mode & 2)) origin_answer(o, m);
}

/* --- the client: an nghttp2 client session --- */

typedef struct {
    int32_t id;
    char method[16];
    char path[64];
    size_t path_len;
    char authority[64], host[64];
    size_t authority_len, host_len;
    char body[8192];
    size_t body_len, body_sent;
    int ended, reset; /* END_STREAM queued; reset by the client */
    int trailers;     /* trailers end the stream */
    nghttp2_nv trailer_nv[3];
    char trailer_buf[3][2][49];
} cstream_t;

static nghttp2_session *cs;
static cstream_t streams[FUZZ_STREAMS];
static int nstreams;
static const char *client_error;

static ssize_t c_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(flags);
    MOXY_UNUSED(arg);
    client_write(data, len);
    return (ssize_t)len;
}

static ssize_t c_data(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                      nghttp2_data_source *src, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(id);
    MOXY_UNUSED(arg);
    cstream_t *st = src->ptr;
    size_t n = MOXY_MIN(length, st->body_len - st->body_sent);
    memcpy(buf, st->body + st->body_sent, n);
    st->body_sent += n;
    if (st->body_sent == st->body_len) {
        if (!st->ended) return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->trailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(s, st->id, st->trailer_nv, (size_t)st->trailers);
        }
    }
    return (ssize_t)n;
}

/* A string of the program: a length byte (at most max), then the bytes. */
static size_t take_str(const uint8_t **d, size_t *n, char *out, size_t max)
{
    size_t len = fuzz_take_byte(d, n) % (max + 1);
    len = MOXY_MIN(len, *n);
    memcpy(out, *d, len);
    *d += len;
    *n -= len;
    return len;
}

static const char *const METHODS[] = {"GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE", "PATCH", "FOO",
                                      "CONNECT", "", "G T", "get", "PRI", "TRACE"};

static void run_program(const uint8_t *d, size_t n, const uint8_t **rest, size_t *rest_n)
{
    cstream_t *last = NULL;
    while (n > 0 && nstreams <= FUZZ_STREAMS) {
        unsigned op = fuzz_take_byte(&d, &n);
        if ((op & 3) == 0) {
            if (nstreams == FUZZ_STREAMS) break;
            cstream_t *st = &streams[nstreams];
            memset(st, 0, sizeof(*st));
            unsigned fl = fuzz_take_byte(&d, &n);
            snprintf(st->method, sizeof(st->method), "%s", METHODS[fuzz_take_byte(&d, &n) % MOXY_ARRAY_LEN(METHODS)]);
            st->path_len = take_str(&d, &n, st->path, 48);
            st->authority_len = take_str(&d, &n, st->authority, 48);
            nghttp2_nv nv[16];
            char names[7][49], values[7][49], idbuf[16], clbuf[16];
            size_t k = 0;
            nv[k++] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)st->method, 7, strlen(st->method), 0};
            nv[k++] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0};
            nv[k++] = (nghttp2_nv){(uint8_t *)":path", (uint8_t *)st->path, 5, st->path_len, 0};
            if (!(fl & 4))
                nv[k++] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)st->authority, 10, st->authority_len, 0};
            else
                st->authority_len = 0; /* none sent: the Host field is the authority */
            unsigned nf = fuzz_take_byte(&d, &n) % 8;
            for (unsigned i = 0; i < nf; i++) {
                size_t nl = take_str(&d, &n, names[i], 48), vl = take_str(&d, &n, values[i], 48);
                /* nghttp2's client sends names in lower case */
                if (nl == 13 && strncasecmp(names[i], "x-fuzz-stream", 13) == 0) continue;
                if (nl == 4 && strncasecmp(names[i], "host", 4) == 0) {
                    memcpy(st->host, values[i], vl);
                    st->host_len = vl;
                }
                nv[k++] = (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)values[i], nl, vl, 0};
            }
            /* the body this stream will send, when the program gives it one */
            st->ended = fl & 1;
            if (fl & 2) {
                /* the length of the DATA ops that follow for this stream (a guess the
                 * program may break: a mismatch is nghttp2's stream error) */
                size_t want = 0;
                const uint8_t *p = d;
                size_t left = n;
                while (left >= 2 && (p[0] & 3) == 1) {
                    size_t len = MOXY_MIN((size_t)p[1], left - 2);
                    want += len;
                    p += 2 + len;
                    left -= MOXY_MIN(left, 2 + len);
                }
                snprintf(clbuf, sizeof(clbuf), "%zu", want);
                nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)clbuf, 14, strlen(clbuf), 0};
            }
            snprintf(idbuf, sizeof(idbuf), "%d", nstreams);
            nv[k++] = (nghttp2_nv){(uint8_t *)"x-fuzz-stream", (uint8_t *)idbuf, 13, strlen(idbuf), 0};
            nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = c_data};
            st->id = nghttp2_submit_request(cs, NULL, nv, k, st->ended ? NULL : &prd, st);
            if (st->id < 0) break;
            nstreams++;
            last = st;
        } else if ((op & 3) == 1) {
            char scratch[256];
            int fits = last && !last->ended && !last->reset && last->body_len + 255 <= sizeof(last->body);
            size_t len = take_str(&d, &n, fits ? last->body + last->body_len : scratch, 255);
            if (!fits) continue;
            last->body_len += len;
            if (op & 4) last->ended = 1;
            nghttp2_session_resume_data(cs, last->id);
        } else if ((op & 3) == 2) {
            if (!last || last->reset) continue;
            last->reset = 1;
            nghttp2_submit_rst_stream(cs, NGHTTP2_FLAG_NONE, last->id, NGHTTP2_CANCEL);
        } else {
            unsigned nt = fuzz_take_byte(&d, &n) % 4;
            char tmp[2][49];
            if (!last || last->ended || last->reset) {
                for (unsigned i = 0; i < nt; i++) take_str(&d, &n, tmp[0], 48), take_str(&d, &n, tmp[1], 48);
                continue;
            }
            for (unsigned i = 0; i < nt; i++) {
                size_t nl = take_str(&d, &n, last->trailer_buf[i][0], 48);
                size_t vl = take_str(&d, &n, last->trailer_buf[i][1], 48);
                last->trailer_nv[i] = (nghttp2_nv){(uint8_t *)last->trailer_buf[i][0],
                                                   (uint8_t *)last->trailer_buf[i][1], nl, vl, 0};
            }
            last->trailers = (int)nt;
            last->ended = 1;
            if (!nt) last->trailers = 0;
            nghttp2_session_resume_data(cs, last->id);
        }
    }
    *rest = d;
    *rest_n = n;
}

/* Read what moxy sent the client into the client session: an error is a finding. */
static void client_read_all(void)
{
    size_t n = evbuffer_get_length(client_rx);
    if (!n) return;
    const uint8_t *p = evbuffer_pullup(client_rx, (ssize_t)n);
    ssize_t rv = nghttp2_session_mem_recv(cs, p, n);
    evbuffer_drain(client_rx, n);
    if (rv < 0 && !client_error) client_error = nghttp2_strerror((int)rv);
}

static int c_invalid(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *arg)
{
    MOXY_UNUSED(s);
    MOXY_UNUSED(arg);
    /* a stream moxy reset, or a GOAWAY, is fine; a malformed response is not */
    if (lib_error == NGHTTP2_ERR_HTTP_HEADER || lib_error == NGHTTP2_ERR_HTTP_MESSAGING)
        finding("stream %d: moxy's response is not valid HTTP/2: %s", f->hd.stream_id, nghttp2_strerror(lib_error));
    return 0;
}

/* --- the checks --- */

static void check_forwarded(const msg_t *f)
{
    int idx = -1;
    int have = count_named(f, "x-fuzz-stream", &idx);
    if (have != 1) finding("origin got a request without one x-fuzz-stream (%d)", have);
    int k = atoi(f->h[idx].value);
    if (k < 0 || k >= nstreams) finding("origin got a request for stream %d, %d were sent", k, nstreams);
    const cstream_t *st = &streams[k];
    if ((size_t)f->url_len != st->path_len || memcmp(f->url, st->path, st->path_len) != 0)
        finding("stream %d: :path %.*s forwarded as %.*s", k, (int)st->path_len, st->path, (int)f->url_len, f->url);
    if (strcmp(llhttp_method_name((llhttp_method_t)f->method), st->method) != 0)
        finding("stream %d: method %s forwarded as %s", k, st->method, llhttp_method_name((llhttp_method_t)f->method));
    int hi = -1;
    if (count_named(f, "host", &hi) != 1) finding("stream %d: %d Host fields", k, count_named(f, "host", NULL));
    const char *want = st->authority_len ? st->authority : st->host;
    size_t wlen = st->authority_len ? st->authority_len : st->host_len;
    if (f->h[hi].vlen != wlen || strncasecmp(f->h[hi].value, want, wlen) != 0)
        finding("stream %d: Host %.*s is not the :authority (%.*s) or else the Host (%.*s) sent", k,
                (int)f->h[hi].vlen, f->h[hi].value, (int)st->authority_len, st->authority, (int)st->host_len, st->host);
    int first = -1;
    int cl = count_named(f, "content-length", NULL), te = count_named(f, "transfer-encoding", &first);
    if (cl > 1) finding("stream %d: %d Content-Length fields", k, cl);
    if (te > 1 || (te && !ieq(f->h[first].value, f->h[first].vlen, "chunked")))
        finding("stream %d: Transfer-Encoding other than moxy's chunked", k);
    if (cl && te) finding("stream %d: both Content-Length and Transfer-Encoding", k);
    if (f->body_len != st->body_len || (f->body_len && memcmp(f->body, st->body, f->body_len) != 0))
        finding("stream %d: body of %zu bytes forwarded as %zu bytes", k, st->body_len, f->body_len);
    for (int i = 0; i < f->nh; i++) {
        const hf_t *h = &f->h[i];
        if (h->trailer) {
            if (trailer_banned(h->name, h->nlen))
                finding("stream %d: %.*s forwarded in the trailers", k, (int)h->nlen, h->name);
            continue;
        }
        if (ieq(h->name, h->nlen, "keep-alive") || ieq(h->name, h->nlen, "te") || ieq(h->name, h->nlen, "trailer") ||
            ieq(h->name, h->nlen, "connection") || ieq(h->name, h->nlen, "upgrade") ||
            ieq(h->name, h->nlen, "http2-settings") || (h->nlen >= 6 && ieq(h->name, 6, "proxy-")))
            finding("stream %d: hop-by-hop field %.*s forwarded", k, (int)h->nlen, h->name);
        if (h->nlen > 0 && h->name[0] == ':') finding("stream %d: pseudo-header %.*s forwarded", k, (int)h->nlen, h->name);
    }
}

static void client_start(void)
{
    static nghttp2_session_callbacks *cb;
    if (!cb) {
        nghttp2_session_callbacks_new(&cb);
        nghttp2_session_callbacks_set_send_callback(cb, c_send);
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, c_invalid);
    }
    nghttp2_session_client_new(&cs, cb, NULL);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(cs, NGHTTP2_FLAG_NONE, iv, 1);
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
    nstreams = 0;
    client_error = NULL;

    client_open();
    client_start();
    const uint8_t *rest;
    size_t rest_n;
    run_program(data, size, &rest, &rest_n);
    if (flags & 1) { /* the preface and SETTINGS first, the rest once moxy settled */
        nghttp2_session_send(cs);
        quiet("preface sent");
        client_read_all();
    }
    nghttp2_session_send(cs);
    if ((flags & 8) && rest_n) client_write(rest, rest_n);
    quiet("requests sent");
    client_read_all();
    nghttp2_session_send(cs); /* WINDOW_UPDATE, SETTINGS ACK: more of the bodies may go */
    quiet("client answered");
    client_read_all();
    teardown();
    client_read_all();
    if (client_error && !(flags & 8))
        finding("moxy's frames are not valid HTTP/2 to nghttp2's client: %s", client_error);
    nghttp2_session_del(cs);
    cs = NULL;

    oconn_t *list[256];
    int n = oconns_sorted(list, 256);
    for (int i = 0; i < n; i++)
        if (list[i]->mp.error)
            finding("origin connection %d: what moxy sent is not well-framed HTTP/1.1: %s", i, list[i]->mp.why);
    for (int k = 0; k < nfwd; k++) check_forwarded(&fwd[k].o->mp.m[fwd[k].i]);
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("HTTP_FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "client opened %d stream(s); origin got %d complete request(s) on %d connection(s)%s%s\n",
                nstreams, nfwd, n, client_error ? "; client: " : "", client_error ? client_error : "");
    origin_reset();
    return 0;
}
