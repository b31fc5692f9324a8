/*
 * h2_stream.c -- an HTTP/2 stream as a request: its head read from the
 * decoded fields (pseudo-headers checked, RFC 9113 8.3; :authority is the
 * Host; cookie crumbs joined, 8.2.3), its body passed on to the origin as
 * it comes (its window opened again only as the bytes leave moxy, so that a
 * slow origin holds back this stream and no other), and the response: head
 * and trailers as HEADERS, the body as DATA moved from the stream's buffer
 * into the connection's (the stream seam, http-t.h's moxy_stream_ops_t,
 * with the stream as ctx).
 *
 * nghttp2 has already refused (with RST_STREAM PROTOCOL_ERROR) a head with
 * upper-case names, connection-specific fields (Connection, Keep-Alive,
 * Proxy-Connection, Transfer-Encoding, Upgrade; TE but "trailers"),
 * missing, repeated or misplaced pseudo-headers, a body longer or shorter
 * than its content-length, and values with CR, LF or NUL.
 */
#include "http2/h2_int.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "http/realip.h"
#include "http/request.h"
#include "http/stats.h"
#include "http/worker.h"
#include "net/io.h"
#include "net/tls.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

static const moxy_stream_ops_t h2_stream_ops;
static void stream_pump(h2_stream_t *s);

static h2_stream_t *stream_of(h2_conn_t *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->ng, id);
}

/* Reset stream s with err (its request, if any, is aborted when nghttp2
 * closes it). */
static void stream_reset(h2_stream_t *s, uint32_t err)
{
    if (s->closed) return;
    nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, err);
    h2_conn_flush_later(s->h);
}

/* --- the request's head --- */

/* The method named n bytes at p as llhttp numbers it, or -1. */
static int method_number(const char *p, size_t n)
{
    static const struct {
        const char *name;
        int m;
    } common[] = {{"GET", HTTP_GET},   {"POST", HTTP_POST},     {"HEAD", HTTP_HEAD},
                  {"PUT", HTTP_PUT},   {"DELETE", HTTP_DELETE}, {"OPTIONS", HTTP_OPTIONS},
                  {"PATCH", HTTP_PATCH}};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(common); i++)
        if (strlen(common[i].name) == n && memcmp(common[i].name, p, n) == 0) return common[i].m;
    for (int m = 0; m <= HTTP_FLUSH; m++) {
        const char *name = llhttp_method_name((llhttp_method_t)m);
        if (strlen(name) == n && memcmp(name, p, n) == 0) return m;
    }
    return -1;
}

/* The head is refused once complete: status, why (the first reason kept). */
static int stream_bad(h2_stream_t *s, int status, const char *why)
{
    if (!s->bad_status) {
        s->bad_status = status;
        s->bad_why = why;
    }
    return 0;
}

int h2_stream_begin(h2_conn_t *h, const nghttp2_frame *f)
{
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0; /* trailers */
    const moxy_conf_t *conf = h->w->g->conf;
    if (h->goaway || h->s.listen_index < 0 || h->nstreams >= conf->http2.max_concurrent_streams) {
        /* past the limit the client was told (or closing): refused, and the
         * client may try again (RFC 9113 8.7); a client that keeps on spends
         * its budget */
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        MOXY_STAT_ADD(h->w->stats.h2_refused, 1);
        return h2_conn_budget(h, 1) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    h2_stream_t *s = calloc(1, sizeof(*s));
    moxy_req_t *r = s ? moxy_req_new(h->w, h->w->g, h->s.listen_index) : NULL;
    if (!r) {
        free(s);
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    s->h = h;
    s->id = f->hd.stream_id;
    s->r = r;
    r->addr = &h->addr;
    r->http_major = 2;
    r->http_minor = 0;
    r->keepalive = 1;
    r->head_bytes = 1;
    r->stream = &h2_stream_ops;
    r->stream_ctx = s;
    moxy_req_keep_tls(r, &h->conn); /* kept with the request: it may outlive h */
    nghttp2_session_set_stream_user_data(h->ng, s->id, s);
    LIST_INSERT_HEAD(&h->streams, s, link);
    h->nstreams++;
    MOXY_STAT_ADD(h->w->stats.h2_streams, 1);
    return 0;
}

/* A pseudo-header field of s's head. */
static int stream_pseudo(h2_stream_t *s, const char *name, size_t nlen, const char *v, size_t vlen)
{
    moxy_req_t *r = s->r;
    const moxy_conf_t *conf = r->g->conf;
    if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
        int m = method_number(v, vlen);
        if (m < 0) { /* a token (nghttp2 checked): named in the log line */
            r->method_name = moxy_pstrdup(&r->mem, v, vlen);
            return stream_bad(s, 501, "unknown method");
        }
        if (m == HTTP_CONNECT) return stream_bad(s, 405, "CONNECT is not supported");
        if (m == HTTP_PRI) return stream_bad(s, 400, "PRI is not a method");
        r->method = (uint8_t)m;
        r->method_name = (char *)llhttp_method_name((llhttp_method_t)m);
    } else if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
        if (vlen > conf->limits.uri_bytes) return stream_bad(s, 414, "request target too long");
        for (size_t i = 0; i < vlen; i++) {
            unsigned char ch = (unsigned char)v[i];
            if (ch <= 0x20 || ch >= 0x7f || ch == '#') return stream_bad(s, 400, "invalid character in :path");
        }
        if (vlen == 0 || (v[0] != '/' && !(vlen == 1 && v[0] == '*')))
            return stream_bad(s, 400, ":path is not an absolute path");
        r->uri = moxy_pstrdup(&r->mem, v, vlen);
        if (!r->uri) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        r->uri_len = r->uri_cap = (uint32_t)vlen;
        const char *q = memchr(r->uri, '?', vlen);
        r->path_len = q ? (uint32_t)(q - r->uri) : (uint32_t)vlen;
    } else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) {
        if (memchr(v, '@', vlen)) return stream_bad(s, 400, "userinfo in :authority");
        if (!moxy_host_valid(v, vlen)) return stream_bad(s, 400, "invalid :authority");
        if (moxy_headers_add(&r->mem, &r->headers, "host", 4, v, vlen) != MOXY_OK)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        r->host = r->headers.h[r->headers.n - 1].value;
        s->has_authority = 1;
    } else if (nlen == 7 && memcmp(name, ":scheme", 7) == 0) {
        if (!MOXY_STRIEQ_LIT(v, vlen, "http") && !MOXY_STRIEQ_LIT(v, vlen, "https"))
            return stream_bad(s, 400, ":scheme is not http or https");
    } else {
        return stream_bad(s, 400, "unknown pseudo-header"); /* :protocol (RFC 8441) is not offered */
    }
    return 0;
}

int h2_stream_field(h2_conn_t *h, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                    const uint8_t *value, size_t vlen)
{
    h2_stream_t *s = stream_of(h, f->hd.stream_id);
    if (!s || !s->r || s->closed) return 0;
    moxy_req_t *r = s->r;
    const moxy_conf_t *conf = r->g->conf;
    int trailers = s->started;
    /* the decoded size, however small the HPACK block was (an HPACK bomb
     * decodes a few bytes into megabytes): bounded, then refused */
    s->field_bytes += (uint32_t)MOXY_MIN(nlen + vlen + 32, (size_t)UINT32_MAX / 2);
    s->nfields++;
    if (s->field_bytes > conf->limits.header_bytes)
        return stream_bad(s, 431, trailers ? "request trailer fields too large" : "request header fields too large");
    if (s->nfields > (uint32_t)conf->limits.headers + 4)
        return stream_bad(s, 431, trailers ? "too many request trailer fields" : "too many request headers");
    const char *n = (const char *)name, *v = (const char *)value;
    /* once refused, only the pseudo-headers are kept: the log line names the request */
    if (s->bad_status && (trailers || nlen == 0 || n[0] != ':')) return 0;
    if (nlen > 0 && n[0] == ':') return trailers ? stream_bad(s, 400, "pseudo-header in trailers")
                                                 : stream_pseudo(s, n, nlen, v, vlen);
    if (trailers) {
        if (moxy_header_kind(n, nlen) & MOXY_HK_TRAILER_FORBIDDEN) return 0; /* dropped (RFC 9110 6.5.1) */
        return moxy_headers_add(&r->mem, &r->trailers, n, nlen, v, vlen) == MOXY_OK
                   ? 0
                   : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    uint32_t kind = moxy_header_kind(n, nlen);
    if (kind & MOXY_HK_HOST) {
        /* a Host beside :authority must name the same (RFC 9113 8.3.1); alone, it is the Host */
        int i = moxy_headers_find_kind(&r->headers, MOXY_HK_HOST, 0);
        if (i >= 0 && (r->headers.h[i].value_len != vlen || strncasecmp(r->headers.h[i].value, v, vlen) != 0))
            return stream_bad(s, 400, "Host differs from :authority");
        if (i >= 0) return 0;
        if (!moxy_host_valid(v, vlen)) return stream_bad(s, 400, "invalid Host header");
    } else if (kind & MOXY_HK_CL) {
        uint64_t len = 0;
        if (vlen == 0 || vlen > 19) return stream_bad(s, 400, "invalid Content-Length");
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9') return stream_bad(s, 400, "invalid Content-Length");
            len = len * 10 + (uint64_t)(v[i] - '0');
        }
        r->has_cl = 1;
        r->body_length = len;
    } else if (kind & MOXY_HK_EXPECT) {
        if (!MOXY_STRIEQ_LIT(v, vlen, "100-continue")) return stream_bad(s, 417, "unsupported expectation");
        r->expect_continue = 1;
        return 0;
    } else if (kind & (MOXY_HK_HOP | MOXY_HK_CONNECTION | MOXY_HK_UPGRADE | MOXY_HK_TE)) {
        /* TE: trailers, the only one nghttp2 lets through, is for this hop
         * (an HTTP/2 origin is told again: gRPC's servers want it) */
        if (nlen == 2) r->te_trailers = 1;
        return 0;
    } else if (nlen == 6 && memcmp(n, "cookie", 6) == 0) {
        if (moxy_headers_find(&r->headers, "cookie", 6, 0) >= 0) s->cookies = 1;
    }
    if (moxy_headers_add(&r->mem, &r->headers, n, nlen, v, vlen) != MOXY_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (kind & MOXY_HK_HOST) r->host = r->headers.h[r->headers.n - 1].value;
    return 0;
}

/* The cookie crumbs of r's head as one field for HTTP/1 origins (RFC 9113
 * 8.2.3: joined with "; "), where the first one was. */
static int join_cookies(moxy_req_t *r)
{
    size_t total = 0;
    int first = -1;
    for (uint32_t i = 0; i < r->headers.n; i++) {
        const moxy_header_t *f = &r->headers.h[i];
        if (f->name_len == 6 && memcmp(f->name, "cookie", 6) == 0) {
            if (first < 0) first = (int)i;
            total += f->value_len + 2;
        }
    }
    char *v = moxy_palloc(&r->mem, total + 1);
    if (!v || first < 0) return MOXY_ERROR;
    size_t n = 0;
    uint32_t out = 0;
    for (uint32_t i = 0; i < r->headers.n; i++) {
        moxy_header_t f = r->headers.h[i];
        if (f.name_len == 6 && memcmp(f.name, "cookie", 6) == 0) {
            if (n) {
                memcpy(v + n, "; ", 2);
                n += 2;
            }
            memcpy(v + n, f.value, f.value_len);
            n += f.value_len;
            if ((int)i != first) continue;
        }
        r->headers.h[out++] = f;
    }
    r->headers.n = out;
    v[n] = '\0';
    r->headers.h[first].value = v;
    r->headers.h[first].value_len = (uint32_t)n;
    return MOXY_OK;
}

static void stream_hooks_done(moxy_req_t *r, int rc)
{
    moxy_stream_ref_t ref = moxy_req_stream(r);
    moxy_stream_hold(ref);
    moxy_req_after_request_hooks(r, rc);
    moxy_stream_read_on(ref, r);
    moxy_stream_release(ref);
}

/* The head of s is complete (end_stream: no body follows): check it and
 * start the request, or answer why not. */
static void stream_start(h2_stream_t *s, int end_stream)
{
    moxy_req_t *r = s->r;
    h2_conn_t *h = s->h;
    const moxy_conf_t *conf = r->g->conf;
    s->started = 1;
    s->in_eof = end_stream;
    s->body_ms = moxy_mono_ms();
    if (!s->bad_status && (!r->method_name || !r->uri)) stream_bad(s, 400, "missing :method or :path");
    if (!s->bad_status && !r->host) stream_bad(s, 400, "missing :authority and Host");
    if (!s->bad_status && r->uri[0] == '*' && r->method != HTTP_OPTIONS) stream_bad(s, 400, "* is for OPTIONS only");
    if (!s->bad_status && s->cookies && join_cookies(r) != MOXY_OK) stream_bad(s, 500, "out of memory");
    if (!r->method_name) r->method_name = "-";
    if (!r->uri) {
        r->uri = "-";
        r->uri_len = r->path_len = 1;
    }
    moxy_req_set_id(r);
    if (end_stream) {
        r->body_kind = MOXY_BODY_NONE;
        r->body_done = 1;
    } else if (r->has_cl) {
        r->body_kind = r->body_length ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
        r->body_left = r->body_length;
    } else {
        r->body_kind = MOXY_BODY_CHUNKED; /* toward an HTTP/1.1 origin: chunked by moxy */
    }
    if (r->body_kind == MOXY_BODY_NONE) r->body_done = 1;
    if (s->bad_status) {
        r->keepalive = 0;
        moxy_resp_error(r, s->bad_status, s->bad_why);
        return;
    }
    if (h->trusted) moxy_realip_resolve(r);
    r->retryable = r->method == HTTP_GET || r->method == HTTP_HEAD || r->method == HTTP_OPTIONS ||
                   r->method == HTTP_PUT || r->method == HTTP_DELETE || r->method == HTTP_TRACE;
    if (r->has_cl && r->body_length > conf->limits.body_bytes) {
        moxy_resp_error(r, 413, "request body too large");
        return;
    }
    int early = moxy_req_early_check(r);
    if (early != 0) {
        if (early > 0) moxy_req_after_request_hooks(r, MOXY_OK);
        return;
    }
    if (moxy_req_add_forwarding(r) != MOXY_OK) {
        moxy_resp_error(r, 500, "out of memory");
        return;
    }
    int rc = moxy_lua_run(r, MOXY_PHASE_REQUEST, stream_hooks_done);
    if (rc != MOXY_AGAIN) moxy_req_after_request_hooks(r, rc);
}

int h2_stream_frame(h2_conn_t *h, const nghttp2_frame *f)
{
    h2_stream_t *s = stream_of(h, f->hd.stream_id);
    if (!s || s->closed) return 0;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    s->busy++;
    h2_conn_hold(h);
    if (f->hd.type == NGHTTP2_HEADERS && !s->started) {
        if (s->r) stream_start(s, end);
    } else if (f->hd.type == NGHTTP2_HEADERS && s->bad_status && s->r && !s->r->resp_head_sent) {
        moxy_req_origin_cut(s->r); /* bad trailers: the body cannot be finished */
        moxy_resp_error(s->r, s->bad_status, s->bad_why);
    } else if (end) {
        s->in_eof = 1;
        stream_pump(s);
    }
    s->busy--;
    if (s->closed && s->busy == 0) h2_stream_free(s);
    h2_conn_release(h);
    return 0;
}

/* --- the request's body --- */

/* Give the client back the window of n body bytes of s that left moxy. */
static void stream_ack(h2_stream_t *s, size_t n)
{
    if (!n || s->closed) return;
    nghttp2_session_consume(s->h->ng, s->id, n);
    h2_conn_flush_later(s->h);
}

/* Wake the hook that waits for s's whole body (txn:read_body). */
static void body_wake(moxy_req_t *r)
{
    moxy_lua_task_t *t = r->body_task;
    r->body_task = NULL;
    if (t) moxy_lua_task_wake(t, 0);
}

/* Move what s holds of its request's body on: into r->body_buf while a
 * hook reads it whole, else to the origin connection once there is one
 * (chunked when its length is not known), as much as the origin takes;
 * the window of what left is given back. */
static void stream_pump(h2_stream_t *s)
{
    moxy_req_t *r = s->r;
    size_t have = s->body ? evbuffer_get_length(s->body) : 0;
    if (!r) {
        if (have) evbuffer_drain(s->body, have);
        stream_ack(s, have);
        return;
    }
    if (r->buffering) {
        if (have) {
            evbuffer_add_buffer(r->body_buf, s->body);
            stream_ack(s, have);
        }
        if (evbuffer_get_length(r->body_buf) > r->body_max) {
            r->body_status = 413;
            r->body_error = "request body too large";
        } else if (s->in_eof) {
            r->body_done = 1;
            r->body_buffered = 1;
        } else {
            return;
        }
        r->buffering = 0;
        body_wake(r);
        return;
    }
    if (!r->up || r->hook || r->body_buffered || r->body_status || s->pumping) return;
    int moved = have > 0;
    if (have) {
        r->origin->body(r, s->body, have);
        s->unacked += have;
    }
    if (s->in_eof && !s->body_ended) {
        s->body_ended = 1;
        r->body_done = 1;
        moved = 1;
        r->origin->body_end(r);
    }
    if (moved) {
        s->pumping = 1; /* the origin's send may ask for more (resume_read): what there is went */
        r->origin->send(r);
        s->pumping = 0;
    }
    if (s->r == r && r->up && !r->origin->backlogged(r)) {
        stream_ack(s, s->unacked);
        s->unacked = 0;
    }
}

int h2_stream_data(h2_conn_t *h, int32_t id, const uint8_t *data, size_t len)
{
    nghttp2_session_consume_connection(h->ng, len); /* each stream's window bounds what it holds */
    h2_stream_t *s = stream_of(h, id);
    if (!s || s->closed || !s->r || s->r->body_done || s->r->body_status) {
        if (s && !s->closed) nghttp2_session_consume_stream(h->ng, id, len);
        return 0;
    }
    moxy_req_t *r = s->r;
    if (!s->body && !(s->body = moxy_worker_buf_get(h->w))) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    evbuffer_add(s->body, data, len);
    r->body_read += len;
    s->body_ms = moxy_mono_ms();
    if (r->body_kind == MOXY_BODY_LENGTH) r->body_left -= MOXY_MIN(r->body_left, (uint64_t)len);
    if (!r->has_cl && r->body_read > r->g->conf->limits.body_bytes && !r->resp_head_sent) {
        s->busy++;
        moxy_req_origin_cut(r);
        moxy_resp_error(r, 413, "request body too large");
        s->busy--;
        return 0;
    }
    s->busy++;
    stream_pump(s);
    s->busy--;
    return 0;
}

/* --- the response --- */

/* Fields of h for HEADERS into nv (from r's memory): names in lower case
 * (RFC 9113 8.2.1), without hop-by-hop and connection-specific ones and
 * those with a kind bit of skip.  The number set. */
static size_t fields_nv(moxy_req_t *r, const moxy_headers_t *hs, uint32_t skip, nghttp2_nv *nv)
{
    size_t n = 0;
    const moxy_headers_t *conn = moxy_headers_connection_list(hs);
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *f = &hs->h[i];
        if (f->kind & (skip | MOXY_HK_HOP | MOXY_HK_CONNECTION | MOXY_HK_UPGRADE | MOXY_HK_TE)) continue;
        if (conn && moxy_header_connection_named(conn, f->name, f->name_len)) continue;
        char *name = moxy_palloc(&r->mem, f->name_len);
        if (!name) continue;
        for (uint32_t k = 0; k < f->name_len; k++) name[k] = (char)tolower((unsigned char)f->name[k]);
        nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)f->value, f->name_len, f->value_len, 0};
    }
    return n;
}

#define NV_LIT(n, v, vlen) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), 0})

static ssize_t stream_data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                                   uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    return h2_stream_data_read(ng, id, buf, length, flags, src, arg);
}

static int stream_send_head(void *ctx, moxy_req_t *r)
{
    h2_stream_t *s = ctx;
    int body = moxy_resp_has_body(r);
    int sized = !r->filtering && (r->resp_body_kind == MOXY_BODY_LENGTH || r->resp_body_kind == MOXY_BODY_NONE);
    int no_cl = (body && !sized) || r->status == 204 || r->status < 200;
    nghttp2_nv *nv = moxy_palloc(&r->mem, sizeof(*nv) * (r->resp_headers.n + 5));
    char *status = moxy_palloc(&r->mem, 4), *cl = moxy_palloc(&r->mem, 24);
    if (!nv || !status || !cl) return MOXY_ERROR;
    snprintf(status, 4, "%03d", r->status);
    size_t n = 0;
    nv[n++] = NV_LIT(":status", status, 3);
    /* moxy writes the length of a body it sends whole; a HEAD's or a 304's is the origin's */
    n += fields_nv(r, &r->resp_headers, MOXY_HK_XRID | (no_cl || (body && sized) ? MOXY_HK_CL : 0), nv + n);
    if (body && sized) nv[n++] = NV_LIT("content-length", cl, (size_t)(moxy_write_u64(cl, r->resp_body_left) - cl));
    size_t vialen = 0;
    const char *via = moxy_mask_via(r, &vialen);
    if (via) nv[n++] = NV_LIT("via", via, vialen);
    nv[n++] = NV_LIT("x-request-id", r->id, strlen(r->id));
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = stream_data_read_cb};
    int has_data = body && r->status >= 200 && !(sized && r->resp_body_left == 0 && r->resp_trailers.n == 0);
    if (nghttp2_submit_response(s->h->ng, s->id, nv, n, has_data ? &prd : NULL) != 0) return MOXY_ERROR;
    s->head_sent = 1;
    s->has_data = has_data;
    r->resp_head_sent = 1;
    r->resp_state = MOXY_R_BODY;
    h2_conn_flush_later(s->h);
    return MOXY_OK;
}

static void stream_send_interim(void *ctx, moxy_req_t *r, int status, const moxy_headers_t *hs)
{
    h2_stream_t *s = ctx;
    size_t cap = (hs ? hs->n : 0) + 1;
    nghttp2_nv *nv = moxy_palloc(&r->mem, sizeof(*nv) * cap);
    char *st = moxy_palloc(&r->mem, 4);
    if (!nv || !st) return;
    snprintf(st, 4, "%03d", status);
    size_t n = 0;
    nv[n++] = NV_LIT(":status", st, 3);
    if (hs) n += fields_nv(r, hs, MOXY_HK_CL, nv + n);
    nghttp2_submit_headers(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NULL, nv, n, NULL);
    h2_conn_flush_later(s->h);
}

/* s's body buffer, made with its first piece (NULL: out of memory). */
static struct evbuffer *stream_out(h2_stream_t *s)
{
    if (!s->out) s->out = moxy_worker_buf_get(s->h->w);
    return s->out;
}

/* A piece went into s->out: its DATA may go. */
static void stream_more(h2_stream_t *s)
{
    if (s->deferred && !s->closed) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h->ng, s->id);
    }
    h2_conn_flush_later(s->h);
}

static void stream_send_body(void *ctx, moxy_req_t *r, struct evbuffer *from, size_t n)
{
    h2_stream_t *s = ctx;
    MOXY_UNUSED(r);
    n = MOXY_MIN(n, evbuffer_get_length(from));
    if (!n || !stream_out(s)) return;
    moxy_io_move(s->out, from, n);
    stream_more(s);
}

static void stream_send_data(void *ctx, moxy_req_t *r, const void *data, size_t n)
{
    h2_stream_t *s = ctx;
    MOXY_UNUSED(r);
    if (!n || !stream_out(s)) return;
    evbuffer_add(s->out, data, n);
    stream_more(s);
}

static int stream_send_ref(void *ctx, moxy_req_t *r, const void *data, size_t n, moxy_ref_release_fn release,
                           void *arg)
{
    h2_stream_t *s = ctx;
    MOXY_UNUSED(r);
    if (n == 0) {
        release(data, n, arg);
        return MOXY_OK;
    }
    if (!stream_out(s) || evbuffer_add_reference(s->out, data, n, release, arg) != 0) return MOXY_ERROR;
    stream_more(s);
    return MOXY_OK;
}

/* HTTP/2 frames every piece: moxy_stream_sendfile says 0, and file
 * segments are never handed to a stream. */
static int stream_send_file(void *ctx, moxy_req_t *r, struct evbuffer_file_segment *seg, uint64_t off, uint64_t n)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(seg);
    MOXY_UNUSED(off);
    MOXY_UNUSED(n);
    r->error = "file segment sent to an HTTP/2 stream";
    return MOXY_ERROR;
}

static int stream_sendfile(void *ctx)
{
    MOXY_UNUSED(ctx);
    return 0;
}

static int stream_flush(void *ctx)
{
    h2_stream_t *s = ctx;
    h2_conn_flush_later(s->h);
    return s->h->dead ? MOXY_ERROR : MOXY_OK;
}

static int stream_backlogged(void *ctx)
{
    h2_stream_t *s = ctx;
    return s->out && evbuffer_get_length(s->out) > moxy_high_water();
}

/* r's trailers kept by s for after r is logged: one block with their bytes. */
static void keep_trailers(h2_stream_t *s, moxy_req_t *r)
{
    size_t bytes = 0, n = 0;
    for (uint32_t i = 0; i < r->resp_trailers.n; i++) {
        const moxy_header_t *f = &r->resp_trailers.h[i];
        if (f->kind & MOXY_HK_TRAILER_FORBIDDEN) continue;
        bytes += f->name_len + f->value_len;
        n++;
    }
    if (!n) return;
    nghttp2_nv *nv = malloc(sizeof(*nv) * n + bytes);
    if (!nv) return;
    char *p = (char *)(nv + n);
    size_t k = 0;
    for (uint32_t i = 0; i < r->resp_trailers.n; i++) {
        const moxy_header_t *f = &r->resp_trailers.h[i];
        if (f->kind & MOXY_HK_TRAILER_FORBIDDEN) continue;
        nv[k] = (nghttp2_nv){(uint8_t *)p, (uint8_t *)p + f->name_len, f->name_len, f->value_len, 0};
        for (uint32_t j = 0; j < f->name_len; j++) p[j] = (char)tolower((unsigned char)f->name[j]);
        memcpy(p + f->name_len, f->value, f->value_len);
        p += f->name_len + f->value_len;
        k++;
    }
    s->trailers = nv;
    s->ntrailers = n;
}

/* s lets go of its request r: it ends on its own (on_log, its log line). */
static void stream_log(h2_stream_t *s)
{
    moxy_req_t *r = s->r;
    s->r = NULL;
    r->stream_ctx = NULL;
    s->h->nstreams--;
    moxy_req_finish(r);
}

static void stream_response_done(void *ctx, moxy_req_t *r)
{
    h2_stream_t *s = ctx;
    if (s->r != r) return;
    s->out_eof = 1;
    if (s->has_data) keep_trailers(s, r);
    /* the origin did not finish with us (e.g. the body was cut); a body
     * still coming is dropped as it comes, and the client is told to stop
     * once the response is out (h2_stream_sent) */
    moxy_req_origin_cut(r);
    stream_more(s);
    stream_log(s);
}

void h2_stream_drop(h2_stream_t *s, const char *why)
{
    moxy_req_t *r = s->r;
    if (r) {
        s->r = NULL;
        r->stream_ctx = NULL;
        s->h->nstreams--;
        moxy_req_abort(r, why); /* a hook waiting for the body is dropped with it */
    }
    if (s->busy == 0) h2_stream_free(s);
}

static void stream_abort(void *ctx)
{
    h2_stream_t *s = ctx;
    stream_reset(s, NGHTTP2_INTERNAL_ERROR);
    if (s->r) {
        moxy_req_t *r = s->r;
        s->r = NULL;
        r->stream_ctx = NULL;
        s->h->nstreams--;
        moxy_req_abort(r, "response cut");
    }
}

/* HTTP/2 has no 101 (RFC 9113 8.6): a request of a stream never asks for
 * an upgrade (r->upgrade stays 0), and an origin's 101 is refused before a
 * tunnel starts.  Should one start, the stream is reset. */
static int stream_tunnel(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(r);
    stream_abort(ctx);
    return MOXY_DONE;
}

static int stream_tunnel_relay(void *ctx, struct evbuffer *from, int eof)
{
    MOXY_UNUSED(from);
    MOXY_UNUSED(eof);
    stream_abort(ctx);
    return MOXY_DONE;
}

static void stream_hold(void *ctx)
{
    h2_stream_t *s = ctx;
    s->busy++;
    h2_conn_hold(s->h);
}

static void stream_release(void *ctx)
{
    h2_stream_t *s = ctx;
    h2_conn_t *h = s->h;
    if (--s->busy == 0 && s->closed) h2_stream_free(s);
    h2_conn_release(h);
}

static void stream_read_on(void *ctx, const moxy_req_t *r)
{
    h2_stream_t *s = ctx;
    if (s->r != r || s->closed) return;
    stream_pump(s);
}

static void stream_resume_read(void *ctx)
{
    h2_stream_t *s = ctx;
    if (s->closed) return;
    stream_pump(s);
}

static void body_cancel(void *op)
{
    moxy_req_t *r = op;
    r->body_task = NULL;
    r->buffering = 0;
}

static int stream_read_body(void *ctx, moxy_req_t *r, uint64_t max)
{
    h2_stream_t *s = ctx;
    if (r->body_sent || r->up || r->buffering) {
        r->body_error = "the body is already on its way to the origin";
        return MOXY_DECLINED;
    }
    uint64_t limit = r->g->conf->limits.body_bytes;
    if (!max || max > limit) max = limit;
    r->body_max = max;
    if (r->has_cl && r->body_length > max) {
        r->body_status = 413;
        r->body_error = "request body too large";
        return MOXY_ERROR;
    }
    if (!moxy_req_body_buffer(r)) return MOXY_ERROR;
    if (r->expect_continue) {
        r->expect_continue = 0;
        stream_send_interim(s, r, 100, NULL);
    }
    r->buffering = 1;
    stream_pump(s);
    if (r->body_status) return MOXY_ERROR;
    if (r->body_buffered) return MOXY_OK;
    moxy_lua_task_t *t = moxy_lua_current_task();
    if (!t) {
        r->buffering = 0;
        return MOXY_ERROR;
    }
    r->body_task = t;
    moxy_lua_task_wait(t, r, body_cancel);
    return MOXY_AGAIN;
}

static int stream_body_check(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    return MOXY_OK; /* nghttp2 frames the body: nothing is left to check */
}

static const moxy_stream_ops_t h2_stream_ops = {
    .hold = stream_hold,
    .release = stream_release,
    .read_on = stream_read_on,
    .resume_read = stream_resume_read,
    .read_body = stream_read_body,
    .body_check = stream_body_check,
    .send_head = stream_send_head,
    .send_interim = stream_send_interim,
    .send_body = stream_send_body,
    .send_data = stream_send_data,
    .send_ref = stream_send_ref,
    .send_file = stream_send_file,
    .flush = stream_flush,
    .backlogged = stream_backlogged,
    .sendfile = stream_sendfile,
    .response_done = stream_response_done,
    .abort = stream_abort,
    .tunnel = stream_tunnel,
    .tunnel_relay = stream_tunnel_relay,
};

/* --- DATA toward the client --- */

ssize_t h2_stream_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *arg)
{
    MOXY_UNUSED(ng);
    MOXY_UNUSED(id);
    MOXY_UNUSED(buf);
    MOXY_UNUSED(arg);
    h2_stream_t *s = src->ptr;
    size_t have = s->out ? evbuffer_get_length(s->out) : 0;
    if (have == 0 && !s->out_eof) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = MOXY_MIN(have, length);
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == have && s->out_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(s->h->ng, s->id, s->trailers, s->ntrailers);
        }
    }
    return (ssize_t)n;
}

int h2_stream_data_send(h2_conn_t *h, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src)
{
    h2_stream_t *s = src->ptr;
    MOXY_UNUSED(f); /* no padding: moxy sets no padding callback */
    if (h->https) {
        /* header and payload in one piece of h->out (h2_conn.c sizes them to
         * fill a TLS record), which the transport encrypts where it is */
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(h->out, (ev_ssize_t)(9 + length), &v, 1) < 1)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        memcpy(v.iov_base, framehd, 9);
        if (length && evbuffer_remove(s->out, (char *)v.iov_base + 9, length) != (int)length)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        v.iov_len = 9 + length;
        if (evbuffer_commit_space(h->out, &v, 1) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    } else { /* plain: the payload is moved, written with the header by writev */
        if (evbuffer_add(h->out, framehd, 9) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
        if (length) moxy_io_move(h->out, s->out, length);
    }
    s->stall_ms = 0;
    moxy_req_t *r = s->r;
    size_t left = s->out ? evbuffer_get_length(s->out) : 0;
    if (r && r->up && left < moxy_low_water()) r->origin->resume_read(r);
    return 0;
}

/* --- the stream's end --- */

void h2_stream_sent(h2_conn_t *h, const nghttp2_frame *f)
{
    h2_stream_t *s = stream_of(h, f->hd.stream_id);
    /* the response is out while the client still sends a body nobody
     * reads: it is told to stop (RFC 9113 8.1) */
    if (s && !s->in_eof && !s->closed)
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
}

void h2_stream_free(h2_stream_t *s)
{
    moxy_worker_t *w = s->h->w;
    if (s->out) {
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
        moxy_worker_buf_put(w, s->out);
    }
    if (s->body) {
        evbuffer_drain(s->body, evbuffer_get_length(s->body));
        moxy_worker_buf_put(w, s->body);
    }
    free(s->trailers);
    free(s);
}

void h2_stream_closed(h2_conn_t *h, int32_t id, uint32_t error_code)
{
    h2_stream_t *s = stream_of(h, id);
    if (!s) return;
    nghttp2_session_set_stream_user_data(h->ng, id, NULL);
    LIST_REMOVE(s, link);
    s->closed = 1;
    h2_stream_drop(s, error_code == NGHTTP2_NO_ERROR ? "client closed the stream" : "client reset the stream");
}

void h2_stream_tick(h2_conn_t *h, long long now_ms)
{
    const moxy_conf_t *conf = h->w->g->conf;
    long long send_ms = (long long)(conf->timeouts.client_send * 1000);
    long long body_ms = (long long)(conf->timeouts.client_body * 1000);
    int conn_closed = nghttp2_session_get_remote_window_size(h->ng) <= 0;
    h2_stream_t *s, *next;
    for (s = LIST_FIRST(&h->streams); s; s = next) {
        next = LIST_NEXT(s, link);
        if (s->closed) continue;
        /* a response that waits on a window the client keeps closed */
        int waiting = s->out && evbuffer_get_length(s->out) > 0 &&
                      (conn_closed || nghttp2_session_get_stream_remote_window_size(h->ng, s->id) <= 0);
        if (!waiting) {
            s->stall_ms = 0;
        } else if (!s->stall_ms) {
            s->stall_ms = now_ms;
        } else if (now_ms - s->stall_ms >= send_ms) {
            moxy_log(MOXY_LOG_INFO, s->r ? s->r->id : NULL,
                     "client %s: HTTP/2 stream %d: flow-control window closed past timeouts.client_send",
                     h->addr.ip, s->id);
            MOXY_STAT_ADD(h->w->stats.h2_stalls, 1);
            if (s->r && !s->r->error) s->r->error = "client window closed";
            stream_reset(s, NGHTTP2_CANCEL);
            continue;
        }
        /* a request body that stopped coming */
        moxy_req_t *r = s->r;
        if (r && s->started && !s->in_eof && !r->body_done && now_ms - s->body_ms >= body_ms) {
            if (!r->resp_head_sent) { /* answered; the client is told to stop once the answer is out */
                moxy_req_origin_cut(r);
                moxy_resp_error(r, 408, "client body timeout");
            } else {
                r->error = "client body timeout";
                stream_reset(s, NGHTTP2_CANCEL);
            }
        }
    }
}

void h2_streams_cut_gen(h2_conn_t *h, const moxy_wgen_t *g)
{
    h2_stream_t *s;
    LIST_FOREACH(s, &h->streams, link) {
        if (s->r && s->r->g == g) stream_abort(s);
    }
}
