/*
 * response.c -- HTTP/1's response framing toward a client: the status line
 * and head (with the body's framing moxy chooses), interim heads, body
 * pieces (chunked when the head said so) and the body's end with its
 * trailers.  http_client.c's stream calls write through these into the
 * connection's output.
 */
#include "base/headers.h"
#include "http/http.h"
#include "http/mask.h"
#include "http1/http1.h"
#include "net/io.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#define PUT_LIT(p, lit) (memcpy((p), lit, sizeof(lit) - 1), (p) += sizeof(lit) - 1)

int moxy_h1_write_head(struct evbuffer *out, moxy_req_t *r)
{
    int tunnel = r->status == 101;
    int body = moxy_resp_has_body(r);

    if (!r->body_done) r->keepalive = 0; /* the rest of the request body is not read */
    int sized = !r->filtering && (r->resp_body_kind == MOXY_BODY_LENGTH || r->resp_body_kind == MOXY_BODY_NONE);
    if (body && !sized) {
        if (r->http_minor >= 1) r->resp_chunked_out = 1;
        else r->keepalive = 0; /* HTTP/1.0: delimited by close */
    }

    /* Content-Length is moxy's to write when there is a body; for HEAD and
     * 304 the origin's tells the length of what was not sent; a 1xx or a 204
     * has none. */
    const char *reason = moxy_status_reason(r->status);
    size_t vialen = 0;
    const char *via = moxy_mask_via(r, &vialen);
    size_t idlen = strlen(r->id), rlen = strlen(reason);
    size_t max = 16 + rlen + moxy_headers_size(&r->resp_headers) + idlen + vialen + 160;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)max, &v, 1) < 1) return MOXY_ERROR;
    char *p = v.iov_base;
    PUT_LIT(p, "HTTP/1.1 ");
    p = moxy_write_u64(p, (uint64_t)r->status);
    *p++ = ' ';
    memcpy(p, reason, rlen);
    p += rlen;
    PUT_LIT(p, "\r\n");
    /* RFC 9110 8.6: no Content-Length on a 1xx or a 204 */
    int no_cl = body || r->status == 204 || r->status < 200;
    p += moxy_headers_write(p, &r->resp_headers, tunnel, MOXY_HK_XRID | (no_cl ? MOXY_HK_CL : 0));
    if (via) {
        PUT_LIT(p, "Via: ");
        memcpy(p, via, vialen);
        p += vialen;
        PUT_LIT(p, "\r\n");
    }
    PUT_LIT(p, "X-Request-Id: ");
    memcpy(p, r->id, idlen);
    p += idlen;
    PUT_LIT(p, "\r\n");
    if (body) {
        if (sized) {
            PUT_LIT(p, "Content-Length: ");
            p = moxy_write_u64(p, r->resp_body_left);
            PUT_LIT(p, "\r\n");
        } else if (r->resp_chunked_out) {
            PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (tunnel) PUT_LIT(p, "Connection: upgrade\r\n");
    else if (!r->keepalive) PUT_LIT(p, "Connection: close\r\n");
    else if (r->http_minor == 0) PUT_LIT(p, "Connection: keep-alive\r\n");
    PUT_LIT(p, "\r\n");
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
    r->resp_head_sent = 1;
    r->resp_state = MOXY_R_BODY;
    return MOXY_OK;
}

void moxy_h1_write_interim(struct evbuffer *out, const moxy_req_t *r, int status, const moxy_headers_t *h)
{
    if (r->http_minor < 1) return; /* RFC 9110 15.2: not to an HTTP/1.0 client */
    if (!h) {
        evbuffer_add(out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        return;
    }
    const char *reason = moxy_status_reason(status);
    struct evbuffer_iovec v;
    size_t max = 32 + strlen(reason) + moxy_headers_size(h);
    if (evbuffer_reserve_space(out, (ev_ssize_t)max, &v, 1) < 1) return;
    char *p = v.iov_base;
    p += sprintf(p, "HTTP/1.1 %d %s\r\n", status, reason);
    p += moxy_headers_write(p, h, 0, MOXY_HK_CL);
    *p++ = '\r';
    *p++ = '\n';
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
}

/* A body piece of n bytes (n > 0: a chunk of size 0 would end the body)
 * is a chunk when r is chunked: its size line before it, CRLF after. */
static void piece_open(struct evbuffer *out, const moxy_req_t *r, uint64_t n)
{
    if (r->resp_chunked_out) moxy_chunk_head(out, n);
}

static void piece_close(struct evbuffer *out, const moxy_req_t *r)
{
    if (r->resp_chunked_out) evbuffer_add(out, "\r\n", 2);
}

void moxy_h1_write_body(struct evbuffer *out, const moxy_req_t *r, struct evbuffer *from, size_t n)
{
    size_t have = evbuffer_get_length(from);
    if (n > have) n = have; /* the size line says what is really moved */
    if (n == 0) return;
    piece_open(out, r, n);
    moxy_io_move(out, from, n);
    piece_close(out, r);
}

void moxy_h1_write_data(struct evbuffer *out, const moxy_req_t *r, const void *data, size_t n)
{
    if (n == 0) return;
    piece_open(out, r, n);
    evbuffer_add(out, data, n);
    piece_close(out, r);
}

int moxy_h1_write_ref(struct evbuffer *out, const moxy_req_t *r, const void *data, size_t n,
                      moxy_ref_release_fn release, void *arg)
{
    if (n == 0) {
        release(data, n, arg);
        return MOXY_OK;
    }
    piece_open(out, r, n);
    if (evbuffer_add_reference(out, data, n, release, arg) != 0) return MOXY_ERROR;
    piece_close(out, r);
    return MOXY_OK;
}

int moxy_h1_write_file(struct evbuffer *out, const moxy_req_t *r, struct evbuffer_file_segment *seg,
                       uint64_t off, uint64_t n)
{
    if (n == 0) return MOXY_OK;
    piece_open(out, r, n);
    if (evbuffer_add_file_segment(out, seg, (ev_off_t)off, (ev_off_t)n) != 0) return MOXY_ERROR;
    piece_close(out, r);
    return MOXY_OK;
}

void moxy_h1_write_end(struct evbuffer *out, const moxy_req_t *r)
{
    if (r->resp_chunked_out) moxy_chunk_end(out, &r->resp_trailers);
}
