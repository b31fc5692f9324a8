/*
 * request_head.c -- an HTTP/1 request's head and framing as llhttp (strict)
 * reads them, with moxy's own checks on top: the request line and target
 * (absolute-form), Host, framing fields (Content-Length, Transfer-Encoding),
 * Upgrade, trailers, and the raw-byte checks llhttp leaves to us (see
 * http1.h).  What a request then becomes is http_client.c's.
 */
#include "http1/http1.h"
#include "base/headers.h"
#include "base/log.h"
#include "http/http.h"
#include "http/worker.h"

#include <string.h>

/* Fail the parse with status for the client (400 unless said otherwise). */
static int parse_fail(llhttp_t *p, int status, const char *why)
{
    moxy_client_t *c = p->data;
    c->req->status = status;
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    r->head_bytes += n;
    if (r->uri_len + n > c->req->g->conf->limits.uri_bytes) return parse_fail(p, 414, "URI too long");
    return moxy_pool_append(&r->mem, &r->uri, &r->uri_len, &r->uri_cap, at, n);
}

/* A piece of a header name (value = 0) or value, counted against header_bytes. */
static int header_piece(llhttp_t *p, const char *at, size_t n, int value)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    r->head_bytes += n;
    if (r->head_bytes > c->req->g->conf->limits.header_bytes)
        return parse_fail(p, 431, "request header fields too large");
    return value ? moxy_pool_append(&r->mem, &r->value, &r->value_len, &r->value_cap, at, n)
                 : moxy_pool_append(&r->mem, &r->field, &r->field_len, &r->field_cap, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    return header_piece(p, at, n, 0);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    return header_piece(p, at, n, 1);
}

static int on_header_value_complete(llhttp_t *p)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    const char *v = r->value ? r->value : "";
    uint32_t vl = r->value_len;
    r->head_bytes += 4;
    /* llhttp in strict mode has checked the name's characters (token) and
     * the value (no NUL, CR, LF or other controls), but lets an empty name
     * through; the smuggling specs hold it to that. */
    if (r->field_len == 0) return parse_fail(p, 400, "empty header name");
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    moxy_headers_t *hs = r->in_trailers ? &r->trailers : &r->headers;
    if ((int)hs->n >= c->req->g->conf->limits.headers)
        return parse_fail(p, 431, r->in_trailers ? "too many request trailer fields" : "too many request headers");
    if (r->in_trailers && MOXY_STRIEQ_LIT(r->field, r->field_len, "content-length"))
        return parse_fail(p, 400, "Content-Length in trailers");
    if (moxy_headers_add(&r->mem, hs, r->field, r->field_len, v, vl) != MOXY_OK) return -1;
    r->field_len = r->value_len = 0;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    moxy_client_t *c = p->data;
    c->req->value_len = 0;
    return 0;
}

/* Checks llhttp leaves to us; returns 0 or a parse_fail. */
static int check_head(llhttp_t *p, moxy_req_t *r)
{
    int hosts = 0, cls = 0, tes = 0;
    for (uint32_t i = 0; i < r->headers.n; i++) {
        moxy_header_t *h = &r->headers.h[i];
        if (h->name_len == 2 && (h->kind & MOXY_HK_HOP) &&
            moxy_list_has_token(h->value, h->value_len, "trailers", 8))
            r->te_trailers = 1; /* TE (hop-by-hop): an HTTP/2 origin hears of it */
        if (!(h->kind & (MOXY_HK_HOST | MOXY_HK_CL | MOXY_HK_TE | MOXY_HK_EXPECT))) continue;
        if (h->kind & MOXY_HK_HOST) {
            hosts++;
            r->host = h->value;
        } else if (h->kind & MOXY_HK_CL) {
            cls++;
        } else if (h->kind & MOXY_HK_TE) {
            tes++;
            /* Only a lone "chunked" is unambiguous. */
            if (!MOXY_STRIEQ_LIT(h->value, h->value_len, "chunked"))
                return parse_fail(p, 400, "unsupported Transfer-Encoding");
        } else {
            if (!MOXY_STRIEQ_LIT(h->value, h->value_len, "100-continue"))
                return parse_fail(p, 417, "unsupported expectation");
            if (r->http_minor >= 1) r->expect_continue = 1;
        }
    }
    if (hosts > 1) return parse_fail(p, 400, "more than one Host header");
    if (hosts == 0 && r->http_major == 1 && r->http_minor >= 1)
        return parse_fail(p, 400, "missing Host header");
    if (cls > 1) return parse_fail(p, 400, "more than one Content-Length header");
    if (tes > 1) return parse_fail(p, 400, "more than one Transfer-Encoding header");
    if (cls && tes) return parse_fail(p, 400, "both Content-Length and Transfer-Encoding");
    if (tes && r->http_minor == 0) return parse_fail(p, 400, "Transfer-Encoding in HTTP/1.0");
    r->has_cl = cls > 0;
    r->has_te = tes > 0;
    return 0;
}

/* The absolute-form target of r ("http://authority/path?query", RFC 9112
 * 3.2.2), which a server must accept: its authority replaces Host (checked
 * by check_head: there is at most one), and r->uri becomes the origin-form
 * scripts and origins see.  Returns 0 or a parse_fail. */
static int absolute_form(llhttp_t *p, moxy_req_t *r)
{
    const char *u = r->uri;
    size_t n = r->uri_len, i = 0;
    while (i < n && ((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= 'A' && u[i] <= 'Z') ||
                     (i > 0 && ((u[i] >= '0' && u[i] <= '9') || u[i] == '+' || u[i] == '-' || u[i] == '.'))))
        i++;
    if (i == 0 || n - i < 3 || memcmp(u + i, "://", 3) != 0)
        return parse_fail(p, 400, "request target is not an absolute path");
    if (!MOXY_STRIEQ_LIT(u, i, "http") && !MOXY_STRIEQ_LIT(u, i, "https"))
        return parse_fail(p, 400, "request target's scheme is not http");
    const char *a = u + i + 3;
    size_t alen = 0;
    while (a + alen < u + n && a[alen] != '/' && a[alen] != '?') alen++;
    if (memchr(a, '@', alen)) return parse_fail(p, 400, "userinfo in the request target");
    if (!moxy_host_valid(a, alen)) return parse_fail(p, 400, "invalid authority in the request target");
    const char *rest = a + alen;
    size_t rlen = (size_t)(u + n - rest);
    /* an empty path is "/", or "*" for OPTIONS (RFC 9112 3.2.4) */
    int star = rlen == 0 && p->method == HTTP_OPTIONS;
    size_t slash = rlen == 0 || rest[0] == '?' ? 1 : 0;
    char *t = moxy_palloc(&r->mem, slash + rlen + 1);
    if (!t) return -1;
    if (slash) t[0] = star ? '*' : '/';
    memcpy(t + slash, rest, rlen);
    t[slash + rlen] = '\0';
    moxy_headers_remove_kind(&r->headers, MOXY_HK_HOST);
    if (moxy_headers_add(&r->mem, &r->headers, "Host", 4, a, alen) != MOXY_OK) return -1;
    r->host = r->headers.h[r->headers.n - 1].value;
    r->uri = t;
    r->uri_len = r->uri_cap = (uint32_t)(slash + rlen);
    return 0;
}

/* The next protocol of the Upgrade value v[0..n) from *j on (protocol-name
 * [ "/" version ], RFC 9110 7.8): its start, its length with the version,
 * and the length of its name.  0 when none is left. */
static int upgrade_next(const char *v, size_t n, size_t *j, size_t *start, size_t *len, size_t *name)
{
    for (;;) {
        while (*j < n && (v[*j] == ' ' || v[*j] == '\t' || v[*j] == ',')) (*j)++;
        if (*j >= n) return 0;
        size_t s = *j, e;
        while (*j < n && v[*j] != ',') (*j)++;
        for (e = *j; e > s && (v[e - 1] == ' ' || v[e - 1] == '\t');) e--;
        if (e == s) continue;
        const char *slash = memchr(v + s, '/', e - s);
        *start = s;
        *len = e - s;
        *name = slash ? (size_t)(slash - v - s) : e - s;
        return 1;
    }
}

/* 1 when r's listener lets a tunnel carry the protocol name[0..n). */
static int upgrade_allowed(const moxy_req_t *r, const char *name, size_t n)
{
    const char *allowed = r->g->conf->listens[r->listen_index].upgrade;
    return allowed && moxy_list_has_token(allowed, strlen(allowed), name, n);
}

/* The client asks to switch protocols (Upgrade with Connection: upgrade).
 * Only the protocols its listener allows go through a tunnel (the Upgrade
 * field keeps just those); for any other, or an HTTP/1.0 client (RFC 9110
 * 7.8), Upgrade and HTTP2-Settings go and the request is proxied as plain
 * HTTP/1.1.  Returns 0 or -1 (out of memory). */
static int request_upgrade(moxy_req_t *r)
{
    char *keep = NULL;
    uint32_t klen = 0, kcap = 0;
    for (uint32_t i = 0; r->http_minor >= 1 && i < r->headers.n; i++) {
        const moxy_header_t *h = &r->headers.h[i];
        if (!(h->kind & MOXY_HK_UPGRADE)) continue;
        size_t j = 0, s, len, name;
        while (upgrade_next(h->value, h->value_len, &j, &s, &len, &name)) {
            if (!upgrade_allowed(r, h->value + s, name)) continue;
            if ((klen && moxy_pool_append(&r->mem, &keep, &klen, &kcap, ", ", 2)) ||
                moxy_pool_append(&r->mem, &keep, &klen, &kcap, h->value + s, len))
                return -1;
        }
    }
    moxy_headers_remove_kind(&r->headers, MOXY_HK_UPGRADE);
    if (!keep) {
        moxy_headers_remove(&r->headers, "HTTP2-Settings", 14);
        r->upgrade = 0;
        return 0;
    }
    r->upgrade = 1;
    return moxy_headers_add(&r->mem, &r->headers, "Upgrade", 7, keep, klen) == MOXY_OK ? 0 : -1;
}

int moxy_req_upgrade_allowed(const moxy_req_t *r, const moxy_headers_t *resp)
{
    int seen = 0;
    for (uint32_t i = 0; i < resp->n; i++) {
        const moxy_header_t *h = &resp->h[i];
        if (!(h->kind & MOXY_HK_UPGRADE)) continue;
        size_t j = 0, s, len, name;
        while (upgrade_next(h->value, h->value_len, &j, &s, &len, &name)) {
            if (!upgrade_allowed(r, h->value + s, name)) return 0;
            seen = 1;
        }
    }
    return seen;
}

static int on_headers_complete(llhttp_t *p)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    if (r->in_trailers) return 0;
    r->method = p->method;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->method_name = (char *)llhttp_method_name((llhttp_method_t)p->method);
    if (r->http_major != 1) return parse_fail(p, 505, "HTTP version not supported");
    if (p->method == HTTP_CONNECT) return parse_fail(p, 405, "CONNECT is not supported");
    if (!r->uri) return parse_fail(p, 400, "no request target");
    int rc = check_head(p, r);
    if (rc) return rc;
    /* what moxy read as a lone "chunked" (its value trimmed of trailing
     * whitespace) llhttp must have taken for chunked too: else one of them
     * sees a body where the other sees the next request */
    if (r->has_te && !(p->flags & F_CHUNKED)) return parse_fail(p, 400, "unsupported Transfer-Encoding");
    if (r->uri[0] != '/' && !(r->uri_len == 1 && r->uri[0] == '*' && p->method == HTTP_OPTIONS)) {
        if ((rc = absolute_form(p, r))) return rc; /* its authority, checked, is the Host */
    } else if (r->host && !moxy_host_valid(r->host, strlen(r->host))) {
        return parse_fail(p, 400, "invalid Host header");
    }
    if (p->flags & F_CHUNKED) {
        r->body_kind = MOXY_BODY_CHUNKED;
    } else if (r->has_cl) {
        r->body_kind = p->content_length ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
        r->body_left = r->body_length = p->content_length;
    } else {
        r->body_kind = MOXY_BODY_NONE;
    }
    if (p->upgrade && (rc = request_upgrade(r))) return rc;
    if (r->uri) {
        char *q = memchr(r->uri, '?', r->uri_len);
        r->path_len = q ? (uint32_t)(q - r->uri) : r->uri_len;
    }
    return HPE_PAUSED; /* run the hooks before reading on */
}

static int on_chunk_header(llhttp_t *p)
{
    moxy_client_t *c = p->data;
    if (p->content_length == 0) c->req->in_trailers = 1;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    r->body_read += n;
    if (r->body_read > c->req->g->conf->limits.body_bytes)
        return parse_fail(p, 413, "request body too large");
    if (r->buffering) evbuffer_add(r->body_buf, at, n);
    else if (r->up) r->origin->body_data(r, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    moxy_client_t *c = p->data;
    moxy_req_t *r = c->req;
    if (r->body_kind != MOXY_BODY_CHUNKED) return HPE_PAUSED;
    r->body_done = 1;
    if (r->up && !r->buffering) r->origin->body_end(r);
    return HPE_PAUSED; /* the next request waits for this one's response */
}

const llhttp_settings_t *moxy_h1_request_settings(void)
{
    static llhttp_settings_t s;
    static int ready;
    if (!ready) { /* set once, before any worker thread starts (see moxy_http_init) */
        llhttp_settings_init(&s);
        s.on_url = on_url;
        s.on_header_field = on_header_field;
        s.on_header_value = on_header_value;
        s.on_header_field_complete = on_header_field_complete;
        s.on_header_value_complete = on_header_value_complete;
        s.on_headers_complete = on_headers_complete;
        s.on_chunk_header = on_chunk_header;
        s.on_body = on_body;
        s.on_message_complete = on_message_complete;
        ready = 1;
    }
    return &s;
}

/* moxy_h1_chunked_check's parser: framing only, no callback but the end. */
static llhttp_settings_t body_check_settings;

static int check_message_complete(llhttp_t *p)
{
    MOXY_UNUSED(p);
    return HPE_PAUSED; /* the rest is the next request's */
}

void moxy_http_init(void)
{
    moxy_h1_request_settings();
    llhttp_settings_init(&body_check_settings);
    body_check_settings.on_message_complete = check_message_complete;
}

/* What llhttp (8.1, strict) lets through in a head and we refuse: obs-fold
 * (a line starting with SP or HTAB, RFC 9112 5.2) and a request line with
 * more than one SP between its parts, or a tab; the same for a request line
 * after empty lines.  Scans the head bytes p[0..n).
 * Returns NULL or the reason. */
static const char *head_scan(moxy_req_t *r, const char *p, size_t n)
{
    const char *end = p + n;
    /* memchr, not a loop a byte at a time: a head line costs a few
     * instructions, not ten a byte */
    while (!r->head_line && p < end) {
        if (!r->head_begun) {
            /* empty lines before the request line (RFC 9112 2.2: a
             * server SHOULD ignore them): not the request line yet */
            if (*p == '\r' || *p == '\n') {
                p++;
                continue;
            }
            r->head_begun = 1;
        }
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        const char *stop = lf ? lf : end;
        size_t len = (size_t)(stop - p);
        if ((r->head_prev == ' ' && *p == ' ') || memchr(p, '\t', len)) return "malformed request line";
        for (const char *sp = p; (sp = memchr(sp, ' ', (size_t)(stop - sp))) && sp + 1 < stop; sp++)
            if (sp[1] == ' ') return "malformed request line";
        if (!lf) {
            r->head_prev = end[-1]; /* p < end: the line goes on in the next read */
            return NULL;
        }
        r->head_line = 1;
        r->head_prev = '\n';
        p = lf + 1;
    }
    /* the header lines: a line that starts with SP or HTAB is obs-fold */
    while (p < end) {
        if (r->head_prev == '\n' && (*p == ' ' || *p == '\t')) return "obsolete line folding";
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        if (!lf) {
            r->head_prev = end[-1];
            return NULL;
        }
        r->head_prev = '\n';
        p = lf + 1;
    }
    return NULL;
}

int moxy_h1_parse(moxy_client_t *c, const char **reason)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(c->in, -1, NULL, v, 16);
    if (n > 16) n = 16;
    size_t consumed = 0;
    int rc = MOXY_AGAIN;
    for (int i = 0; i < n; i++) {
        const char *base = v[i].iov_base;
        llhttp_errno_t err = llhttp_execute(&c->req->parser, base, v[i].iov_len);
        size_t used = err == HPE_OK ? v[i].iov_len
                      : err == HPE_PAUSED ? (size_t)(llhttp_get_error_pos(&c->req->parser) - base) : 0;
        if (c->state == MOXY_C_HEAD && used && (*reason = head_scan(c->req, base, used))) {
            c->req->status = 400;
            rc = MOXY_ERROR;
            break;
        }
        if (err == HPE_OK) {
            consumed += used;
            continue;
        }
        if (err == HPE_PAUSED) {
            consumed += used;
            llhttp_resume(&c->req->parser);
            rc = MOXY_OK;
            break;
        }
        *reason = llhttp_get_error_reason(&c->req->parser);
        if (!*reason) *reason = llhttp_errno_name(err);
        rc = MOXY_ERROR;
        break;
    }
    if (consumed) evbuffer_drain(c->in, consumed);
    return rc;
}

const char *moxy_h1_chunked_check(const llhttp_t *parser, struct evbuffer *in)
{
    /* a copy of the parser where the real one stands reads what came so
     * far; the real one reads it again as it goes to the origin */
    llhttp_t p = *parser;
    p.settings = &body_check_settings;
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    if (n > 16) n = 16;
    llhttp_errno_t err = HPE_OK;
    for (int i = 0; i < n && err == HPE_OK; i++) err = llhttp_execute(&p, v[i].iov_base, v[i].iov_len);
    if (err == HPE_OK || err == HPE_PAUSED) return NULL;
    const char *why = llhttp_get_error_reason(&p);
    return why ? why : llhttp_errno_name(err);
}
