/*
 * background.c -- requests moxy makes itself (a cache refresh in the
 * background): a request without a connection, whose stream drops what it
 * is given and ends the request when its response is done.
 */
#include "base/headers.h"
#include "http/http.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <string.h>

/* --- the stream of a request without a client: ctx is the request --- */

static void none_hold(void *ctx)
{
    MOXY_UNUSED(ctx);
}

static void none_read_on(void *ctx, const moxy_req_t *r)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
}

static int none_send_head(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(ctx);
    r->resp_head_sent = 1;
    r->resp_state = MOXY_R_BODY;
    return MOXY_OK;
}

static void none_send_interim(void *ctx, moxy_req_t *r, int status, const moxy_headers_t *h)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    MOXY_UNUSED(status);
    MOXY_UNUSED(h);
}

static void none_send_body(void *ctx, moxy_req_t *r, struct evbuffer *from, size_t n)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    evbuffer_drain(from, n);
}

static void none_send_data(void *ctx, moxy_req_t *r, const void *data, size_t n)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    MOXY_UNUSED(data);
    MOXY_UNUSED(n);
}

static int none_send_ref(void *ctx, moxy_req_t *r, const void *data, size_t n, moxy_ref_release_fn release,
                         void *arg)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    release(data, n, arg);
    return MOXY_OK;
}

static int none_send_file(void *ctx, moxy_req_t *r, struct evbuffer_file_segment *seg, uint64_t off, uint64_t n)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    MOXY_UNUSED(seg);
    MOXY_UNUSED(off);
    MOXY_UNUSED(n);
    return MOXY_OK; /* the caller frees its own reference to seg */
}

static int none_read_body(void *ctx, moxy_req_t *r, uint64_t max)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(max);
    r->body_error = "a request moxy makes itself has no body to read";
    return MOXY_DECLINED; /* never here: its body is none (moxy_req_read_body) */
}

static int none_body_check(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(r);
    return MOXY_OK;
}

static int none_zero(void *ctx)
{
    MOXY_UNUSED(ctx);
    return 0;
}

static void none_response_done(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(ctx);
    moxy_req_finish(r);
}

static void none_abort(void *ctx)
{
    moxy_req_abort(ctx, "aborted");
}

static int none_tunnel(void *ctx, moxy_req_t *r)
{
    MOXY_UNUSED(r);
    none_abort(ctx); /* a GET moxy makes asks for no upgrade: never here */
    return MOXY_DONE;
}

static int none_tunnel_relay(void *ctx, struct evbuffer *from, int eof)
{
    MOXY_UNUSED(ctx);
    MOXY_UNUSED(eof);
    evbuffer_drain(from, evbuffer_get_length(from));
    return MOXY_OK;
}

static const moxy_stream_ops_t no_client = {
    .hold = none_hold,
    .release = none_hold,
    .read_on = none_read_on,
    .resume_read = none_hold,
    .read_body = none_read_body,
    .body_check = none_body_check,
    .send_head = none_send_head,
    .send_interim = none_send_interim,
    .send_body = none_send_body,
    .send_data = none_send_data,
    .send_ref = none_send_ref,
    .send_file = none_send_file,
    .flush = none_zero, /* MOXY_OK */
    .backlogged = none_zero,
    .sendfile = none_zero,
    .response_done = none_response_done,
    .abort = none_abort,
    .tunnel = none_tunnel,
    .tunnel_relay = none_tunnel_relay,
};

/* --- the request --- */

/* from's head, as its hooks left it, into r (its memory); MOXY_ERROR: out of memory. */
static int request_copy(moxy_req_t *r, const moxy_req_t *from)
{
    moxy_pool_t *pool = &r->mem;
    r->method = HTTP_GET;
    r->method_name = "GET";
    r->http_major = 1;
    r->http_minor = 1;
    if (!(r->uri = moxy_pstrdup(pool, from->uri, from->uri_len))) return MOXY_ERROR;
    r->uri_len = r->uri_cap = from->uri_len;
    r->path_len = from->path_len;
    if (from->host && !(r->host = moxy_pstrdup(pool, from->host, strlen(from->host)))) return MOXY_ERROR;
    for (uint32_t i = 0; i < from->headers.n; i++) {
        const moxy_header_t *h = &from->headers.h[i];
        /* not the client's own conditions and Range: a background request
         * asks for the whole object, with the stored one's validators */
        if (h->kind & (MOXY_HK_CONDITION | MOXY_HK_IF_RANGE | MOXY_HK_RANGE | MOXY_HK_CL | MOXY_HK_TE |
                       MOXY_HK_EXPECT))
            continue;
        if (moxy_headers_add(pool, &r->headers, h->name, h->name_len, h->value, h->value_len) != MOXY_OK)
            return MOXY_ERROR;
    }
    if (from->client_ip && !(r->client_ip = moxy_pstrdup(pool, from->client_ip, strlen(from->client_ip))))
        return MOXY_ERROR;
    r->client_port = from->client_port;
    if (from->peer_addr) {
        moxy_addr_t *a = moxy_palloc(pool, sizeof(*a));
        if (!a) return MOXY_ERROR;
        *a = *from->peer_addr;
        if (!(a->text = moxy_pstrdup(pool, a->text, strlen(a->text)))) return MOXY_ERROR;
        r->peer_addr = a;
    }
    r->pool = from->pool;
    r->want_server = from->want_server;
    r->hash = from->hash;
    r->has_hash = from->has_hash;
    r->no_filter = from->no_filter;
    r->shard_fill = from->shard_fill; /* a peer's fill's refresh runs no hook either */
    r->compress_want = from->compress_want;
    return MOXY_OK;
}

moxy_req_t *moxy_req_background(moxy_req_t *from)
{
    moxy_req_t *r = moxy_req_new(from->w, from->g, from->listen_index);
    if (!r) return NULL;
    r->addr = from->addr;
    r->https = from->https;
    r->body_kind = MOXY_BODY_NONE;
    r->body_done = 1;
    r->retryable = 1;
    if (request_copy(r, from) != MOXY_OK || moxy_req_detach(r) != MOXY_OK) {
        moxy_req_end(r);
        moxy_req_release(r);
        return NULL;
    }
    r->stream = &no_client;
    r->stream_ctx = r;
    moxy_req_make_id(r);
    moxy_lua_req_fork(r, from);
    return r;
}
