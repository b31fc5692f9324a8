/*
 * origin_codec.c -- HTTP/1.1 toward an origin (see origin_codec.h): the
 * proxy's request head, and the response parser on llhttp (strict) that the
 * proxy, moxy.http and health checks share.
 */
#include "http1/origin_codec.h"
#include "base/headers.h"
#include "http/request.h"

#include <event2/buffer.h>
#include <string.h>

/* --- the response: llhttp callbacks --- */

static int rs_fail(llhttp_t *p, const char *why)
{
    moxy_h1_resp_t *rs = p->data;
    rs->why = why;
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

/* Copy what pc points to into mem, so that it outlives the buffer being
 * parsed.  0, or -1 when out of memory. */
static int piece_pin(moxy_h1_resp_t *rs, moxy_h1_piece_t *pc)
{
    const char *at = pc->p;
    uint32_t n = pc->len;
    pc->p = NULL;
    pc->len = 0;
    return moxy_pool_append(rs->mem, &pc->p, &pc->len, &pc->cap, at, n);
}

/* A piece of a name (value 0) or value, counted against the head's bound.
 * The first piece is only pointed to: most names and values come whole. */
static int rs_piece(llhttp_t *p, const char *at, size_t n, int value)
{
    moxy_h1_resp_t *rs = p->data;
    rs->head_bytes += n;
    if (rs->head_bytes > rs->max_head) return rs_fail(p, "response head too large");
    if (!(rs->in_trailers ? rs->trailers : rs->fields)) return 0;
    moxy_h1_piece_t *pc = value ? &rs->value : &rs->name;
    if (pc->len == 0) {
        pc->p = (char *)at;
        pc->len = (uint32_t)n;
        pc->cap = 0;
        return 0;
    }
    if (pc->cap == 0 && piece_pin(rs, pc) != 0) return rs_fail(p, "out of memory");
    if (moxy_pool_append(rs->mem, &pc->p, &pc->len, &pc->cap, at, n) != 0) return rs_fail(p, "out of memory");
    return 0;
}

static int rs_name(llhttp_t *p, const char *at, size_t n)
{
    return rs_piece(p, at, n, 0);
}

static int rs_value(llhttp_t *p, const char *at, size_t n)
{
    return rs_piece(p, at, n, 1);
}

static int rs_name_complete(llhttp_t *p)
{
    moxy_h1_resp_t *rs = p->data;
    rs->value.len = 0;
    return 0;
}

static int rs_value_complete(llhttp_t *p)
{
    moxy_h1_resp_t *rs = p->data;
    rs->head_bytes += 4; /* ": " and CRLF */
    if (rs->head_bytes > rs->max_head) return rs_fail(p, "response head too large");
    if (++rs->nfields > rs->max_fields) return rs_fail(p, "too many response headers");
    moxy_headers_t *hs = rs->in_trailers ? rs->trailers : rs->fields;
    if (!hs) return 0;
    if (rs->name.len == 0) return rs_fail(p, "empty header name in response");
    const char *v = rs->value.p;
    uint32_t vl = rs->value.len;
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--; /* llhttp cut the leading ones */
    if (moxy_headers_add(rs->mem, hs, rs->name.p, rs->name.len, vl ? v : "", vl) != MOXY_OK)
        return rs_fail(p, "out of memory");
    const moxy_header_t *h = &hs->h[hs->n - 1];
    if ((h->kind & MOXY_HK_CONNECTION) && !rs->in_trailers) {
        if (moxy_list_has_token(v, vl, "close", 5)) rs->conn_close = 1;
        if (moxy_list_has_token(v, vl, "keep-alive", 10)) rs->conn_keepalive = 1;
    }
    rs->name.len = rs->value.len = 0;
    return 0;
}

/* The next head (an interim one's successor, or the trailers) starts afresh. */
static void rs_next_head(moxy_h1_resp_t *rs)
{
    rs->head_bytes = 0;
    rs->nfields = 0;
    rs->conn_close = rs->conn_keepalive = 0;
}

static int rs_headers_complete(llhttp_t *p)
{
    moxy_h1_resp_t *rs = p->data;
    if (rs->in_trailers) return 0;
    int status = p->status_code;
    if (status < 100 || status > 999) return rs_fail(p, "invalid status");
    if (status < 200 && status != 101) {
        /* A 1xx never has a body (RFC 9110 15.2): framing on one is an
         * attempt to split the response stream.  The interim heads of one
         * response share a bound in number and in bytes. */
        if (p->flags & (F_CHUNKED | F_CONTENT_LENGTH | F_TRANSFER_ENCODING))
            return rs_fail(p, "interim response with a body");
        if (++rs->interims > MOXY_MAX_INTERIM) return rs_fail(p, "too many interim responses");
        rs->interim_bytes += rs->head_bytes;
        if (rs->interim_bytes > rs->max_head) return rs_fail(p, "interim responses too large");
        if (rs->ops->interim) {
            const char *why = rs->ops->interim(rs, status);
            if (why) return rs_fail(p, why);
        }
        if (rs->fields) rs->fields->n = 0;
        rs->interim = 1;
        rs_next_head(rs);
        return 1; /* no body, whatever the status (llhttp reads one for 104-199) */
    }
    rs->status = status;
    int http10 = p->http_major == 1 && p->http_minor == 0;
    rs->keepalive = !rs->conn_close && (!http10 || rs->conn_keepalive);
    if (status == 101 || rs->head_request || status == 204 || status == 304) {
        rs->body_kind = MOXY_BODY_NONE;
    } else if (p->flags & F_CHUNKED) {
        rs->body_kind = MOXY_BODY_CHUNKED;
    } else if (p->flags & F_CONTENT_LENGTH) {
        rs->body_kind = MOXY_BODY_LENGTH;
        rs->body_left = p->content_length;
    } else {
        rs->body_kind = MOXY_BODY_EOF;
        rs->keepalive = 0;
    }
    return HPE_PAUSED;
}

static int rs_chunk_header(llhttp_t *p)
{
    moxy_h1_resp_t *rs = p->data;
    if (p->content_length == 0) { /* the last chunk: the trailers follow */
        rs->in_trailers = 1;
        rs_next_head(rs);
    }
    return 0;
}

static int rs_body(llhttp_t *p, const char *at, size_t n)
{
    moxy_h1_resp_t *rs = p->data;
    const char *why = rs->ops->body ? rs->ops->body(rs, at, n) : NULL;
    return why ? rs_fail(p, why) : 0;
}

static int rs_message_complete(llhttp_t *p)
{
    moxy_h1_resp_t *rs = p->data;
    if (rs->interim) { /* the final response follows */
        rs->interim = 0;
        return 0;
    }
    rs->done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_header_field = rs_name,
    .on_header_value = rs_value,
    .on_header_field_complete = rs_name_complete,
    .on_header_value_complete = rs_value_complete,
    .on_headers_complete = rs_headers_complete,
    .on_chunk_header = rs_chunk_header,
    .on_body = rs_body,
    .on_message_complete = rs_message_complete,
};

/* --- the response: driving the parser --- */

void moxy_h1_resp_init(moxy_h1_resp_t *rs, const moxy_h1_resp_ops_t *ops, void *data, moxy_pool_t *mem,
                       moxy_headers_t *fields, moxy_headers_t *trailers, int head_request, size_t max_head,
                       uint32_t max_fields)
{
    llhttp_init(&rs->parser, HTTP_RESPONSE, &resp_settings); /* clears the parser */
    rs->parser.data = rs;
    rs->ops = ops;
    rs->data = data;
    rs->mem = mem;
    rs->fields = fields;
    rs->trailers = trailers;
    rs->why = NULL;
    rs->max_head = max_head;
    rs->max_fields = max_fields;
    rs->status = 0;
    rs->body_kind = MOXY_BODY_NONE;
    rs->body_left = 0;
    rs->keepalive = rs->head_done = rs->in_trailers = rs->done = 0;
    rs->head_request = head_request != 0;
    rs->interim = rs->conn_close = rs->conn_keepalive = 0;
    rs->interims = 0;
    rs->head_bytes = rs->interim_bytes = 0;
    rs->nfields = 0;
    rs->name = rs->value = (moxy_h1_piece_t){NULL, 0, 0}; /* mem may have been emptied since */
}

/* Feed in to llhttp, draining what it read.  MOXY_OK: paused (the final
 * head, or the message's end); MOXY_AGAIN: all read; MOXY_ERROR: rs->why. */
static int resp_execute(moxy_h1_resp_t *rs, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    if (n > 16) n = 16;
    size_t consumed = 0;
    int rc = MOXY_AGAIN;
    for (int i = 0; i < n; i++) {
        const char *base = v[i].iov_base;
        llhttp_errno_t err = llhttp_execute(&rs->parser, base, v[i].iov_len);
        if (err == HPE_OK) {
            consumed += v[i].iov_len;
            continue;
        }
        if (err == HPE_PAUSED) {
            consumed += (size_t)(llhttp_get_error_pos(&rs->parser) - base);
            llhttp_resume(&rs->parser);
            rc = MOXY_OK;
            break;
        }
        if (!rs->why) rs->why = llhttp_get_error_reason(&rs->parser);
        if (!rs->why) rs->why = llhttp_errno_name(err);
        rc = MOXY_ERROR;
        break;
    }
    /* a name or value still being read must outlive the bytes drained */
    if (rc != MOXY_ERROR && ((rs->name.len && rs->name.cap == 0 && piece_pin(rs, &rs->name) != 0) ||
                             (rs->value.len && rs->value.cap == 0 && piece_pin(rs, &rs->value) != 0))) {
        rs->why = "out of memory";
        rc = MOXY_ERROR;
    }
    if (consumed) evbuffer_drain(in, consumed);
    return rc;
}

int moxy_h1_resp_head(moxy_h1_resp_t *rs, struct evbuffer *in)
{
    int rc = resp_execute(rs, in);
    if (rc == MOXY_OK) rs->head_done = 1;
    return rc;
}

int moxy_h1_resp_body(moxy_h1_resp_t *rs, struct evbuffer *in, int eof, size_t *take)
{
    size_t have = evbuffer_get_length(in);
    *take = 0;
    switch (rs->body_kind) {
    case MOXY_BODY_NONE:
        break;
    case MOXY_BODY_LENGTH:
        *take = have < rs->body_left ? have : (size_t)rs->body_left;
        rs->body_left -= *take;
        if (rs->body_left > 0) return MOXY_AGAIN;
        break;
    case MOXY_BODY_EOF:
        *take = have;
        if (!eof) return MOXY_AGAIN;
        break;
    case MOXY_BODY_CHUNKED: {
        int rc = resp_execute(rs, in);
        if (rc != MOXY_OK) return rc;
        break;
    }
    }
    rs->done = 1;
    return MOXY_OK;
}

/* --- the request head --- */

/* Write "<name: >value\r\n" at p (name with its ": "); the end. */
static char *put_field(char *p, const char *name, size_t nlen, const char *value, size_t vlen)
{
    memcpy(p, name, nlen);
    memcpy(p + nlen, value, vlen);
    memcpy(p + nlen + vlen, "\r\n", 2);
    return p + nlen + vlen + 2;
}

/* The head is written in one piece into space reserved on out: no copy of
 * it is made on the way to the socket. */
int moxy_h1_write_request(const moxy_req_t *r, const char *host, struct evbuffer *out)
{
    size_t mlen = strlen(r->method_name), hlen = strlen(host);
    /* a revalidation of a stale object: its validators (RFC 9111 4.3.1) */
    const char *etag = r->cache_conditional ? r->cache_etag : NULL;
    const char *lm = r->cache_conditional ? r->cache_last_modified : NULL;
    size_t elen = etag ? strlen(etag) : 0, lmlen = lm ? strlen(lm) : 0;
    size_t max = mlen + r->uri_len + hlen + moxy_headers_size(&r->headers) + elen + lmlen + 200;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)max, &v, 1) < 1) return MOXY_ERROR;
    char *p = v.iov_base;
    memcpy(p, r->method_name, mlen);
    p += mlen;
    *p++ = ' ';
    memcpy(p, r->uri, r->uri_len);
    p += r->uri_len;
    memcpy(p, " HTTP/1.1\r\nHost: ", 17);
    p += 17;
    memcpy(p, host, hlen);
    p += hlen;
    *p++ = '\r';
    *p++ = '\n';
    p += moxy_headers_write(p, &r->headers, r->upgrade, MOXY_HK_HOST | MOXY_HK_CL | MOXY_HK_EXPECT);
    if (r->upgrade) {
        memcpy(p, "Connection: upgrade\r\n", 21);
        p += 21;
    }
    if (etag) p = put_field(p, "If-None-Match: ", 15, etag, elen);
    if (lm) p = put_field(p, "If-Modified-Since: ", 19, lm, lmlen);
    size_t buffered = r->body_buffered && r->body_buf ? evbuffer_get_length(r->body_buf) : 0;
    if (r->body_buffered && r->body_kind != MOXY_BODY_NONE) {
        /* read by a hook: sent whole, with its length (a retry sends it again) */
        memcpy(p, "Content-Length: ", 16);
        p = moxy_write_u64(p + 16, buffered);
        *p++ = '\r';
        *p++ = '\n';
    } else if (r->body_kind == MOXY_BODY_CHUNKED) {
        memcpy(p, "Transfer-Encoding: chunked\r\n", 28);
        p += 28;
    } else if (r->has_cl) {
        memcpy(p, "Content-Length: ", 16);
        p = moxy_write_u64(p + 16, r->body_length);
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    if (evbuffer_commit_space(out, &v, 1) != 0) return MOXY_ERROR;
    if (buffered && evbuffer_add(out, evbuffer_pullup(r->body_buf, -1), buffered) != 0)
        return MOXY_ERROR;
    return MOXY_OK;
}
