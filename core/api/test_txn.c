/*
 * test_txn.c -- `moxy test`'s transactions (lua/moxy/test.lua): a real
 * moxy_req_t, detached from any socket, that a spec's hooks run on through
 * the same FFI exports (ffi.c) as in production.
 *
 * A moxy_test_t owns a worker of its own (a configuration holding the pools
 * the spec names, one listener called "test", an event_base that never runs:
 * it only answers the cached-time calls) and one request without a
 * connection, built in its own memory as the parser would build it.  lua/moxy/test.lua drives the phases in the order
 * http_client.c and http_upstream.c do; the functions below are the request
 * bookkeeping of those files that is not reachable without a socket (the
 * steps of a try, moxy's own answers).  The rules themselves -- request id,
 * forwarding headers, the origin's head, the retry rule, the error page,
 * a local answer's headers -- are the production functions of http.h,
 * called here, not copied.
 */
#include "api/ffi.h"
#include "api/geoip.h"
#include "base/headers.h"
#include "http/http.h"
#include "http/body_filter.h"
#include "http/request.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "proxy/upstream.h"
#include "http/worker.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

struct moxy_test_s {
    moxy_worker_t *w; /* its generation's conf (moxy_conf_release) and base are ours too */
    moxy_req_t *r;    /* its one request, without a connection */
    moxy_client_addr_t addr; /* the request's client */
};

/* --- the test worker --- */

/* A configuration as config.c makes one from a file with only upstreams:
 * npools pools (one server each, "ip:port" text peers[i]) and one listener
 * "test" without a pool of its own. */
static moxy_conf_t *test_conf(const char **pools, const char **peers, int npools, int default_pool,
                              int tries)
{
    moxy_conf_t *conf = calloc(1, sizeof(*conf));
    if (!conf) return NULL;
    atomic_store(&conf->refs, 1);
    conf->upstreams = calloc((size_t)npools + 1, sizeof(*conf->upstreams));
    conf->listens = calloc(1, sizeof(*conf->listens));
    conf->path = strdup("moxy test");
    if (!conf->upstreams || !conf->listens || !conf->path) goto err;
    for (int i = 0; i < npools; i++) {
        moxy_upstream_conf_t *u = &conf->upstreams[i];
        conf->nupstreams = i + 1; /* what moxy_conf_release frees */
        u->name = strdup(pools[i]);
        u->servers = calloc(1, sizeof(*u->servers));
        if (!u->name || !u->servers) goto err;
        u->nservers = 1;
        u->servers[0].weight = 1;
        u->servers[0].addr.text = strdup(peers[i]);
        if (!u->servers[0].addr.text) goto err;
        u->keepalive = 64;
        u->keepalive_timeout = 60;
        u->tries = tries > 0 ? tries : 2;
        u->retry_budget = 0.2;
        u->retry_budget_min = 10;
    }
    if (moxy_upstreams_create(conf, NULL) != MOXY_OK) goto err;
    conf->default_upstream = default_pool >= 0 && default_pool < npools ? default_pool : -1;
    conf->nlistens = 1;
    conf->listens[0].name = strdup("test");
    conf->listens[0].addr.text = strdup("test");
    if (!conf->listens[0].name || !conf->listens[0].addr.text) goto err;
    conf->listens[0].upstream = -1;
    conf->listens[0].backlog = 4096;
    /* the defaults of config.c's read_conf */
    conf->cpu_budget = 0.05;
    conf->limits.header_bytes = 32768;
    conf->limits.headers = 100;
    conf->limits.uri_bytes = 8192;
    conf->limits.body_bytes = 64ull * 1024 * 1024;
    conf->limits.connections = 10000;
    conf->timeouts.client_header = 10;
    conf->timeouts.client_body = 30;
    conf->timeouts.client_send = 60;
    conf->timeouts.connect = 3;
    conf->timeouts.upstream = 60;
    conf->timeouts.keepalive = 75;
    conf->timeouts.drain = 60;
    conf->log.level = MOXY_LOG_INFO;
    return conf;
err:
    moxy_conf_release(conf);
    return NULL;
}

EXPORT void moxy_ffi_test_free(moxy_test_t *t)
{
    if (!t) return;
    if (t->r) { /* the hooks' state is test.lua's */
        moxy_req_end(t->r);
        moxy_req_release(t->r);
    }
    moxy_worker_t *w = t->w;
    if (w) {
        const moxy_conf_t *conf = w->g ? w->g->conf : NULL;
        if (conf && moxy_lua_conf() == conf) moxy_lua_use_conf(NULL);
        moxy_geoip_worker_free(w);
        moxy_worker_buf_free_all(w);
        free(w->g);
        if (w->base) event_base_free(w->base);
        moxy_conf_release((moxy_conf_t *)conf);
        moxy_stats_free(w);
        free(w);
    }
    free(t);
}

EXPORT moxy_test_t *moxy_ffi_test_new(const char **pools, const char **peers, int npools,
                                      int default_pool, int tries)
{
    moxy_test_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    moxy_conf_t *conf = test_conf(pools, peers, npools, default_pool, tries);
    if (!conf) goto err;
    /* its event base never runs: event_base_gettimeofday_cached (txn.started,
     * Date) reads the clock through it.  No VM: test.lua runs the hooks. */
    moxy_worker_t *w = t->w = moxy_worker_alloc(-1);
    if (!w || w->error[0] || !(w->g = moxy_wgen_alloc(w, conf))) {
        moxy_conf_release(conf);
        goto err;
    }
    moxy_lua_use_conf(conf); /* moxy.upstream's calls find the test's pools */
    return t;
err:
    moxy_ffi_test_free(t);
    return NULL;
}

EXPORT int moxy_ffi_test_mask(moxy_test_t *t, const char **names, int n, const char *server, const char *via)
{
    moxy_mask_conf_t *m = &((moxy_conf_t *)t->w->g->conf)->mask; /* t's own: no request runs on it yet */
    moxy_mask_conf_free(m);
    return moxy_mask_conf_set(m, names, n, server, via);
}

/* --- the request --- */

static int fail_msg(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return MOXY_ERROR;
}

/* The llhttp method called name (len bytes), or -1: one the request parser
 * does not know. */
static int method_of(const char *name, size_t len, const char **static_name)
{
    static const struct {
        int num;
        const char *name;
    } methods[] = {
#define MOXY_METHOD(NUM, NAME, STRING) {NUM, #STRING},
        HTTP_METHOD_MAP(MOXY_METHOD)
#undef MOXY_METHOD
    };
    for (size_t i = 0; i < MOXY_ARRAY_LEN(methods); i++) {
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0) {
            *static_name = methods[i].name;
            return methods[i].num;
        }
    }
    return -1;
}

EXPORT moxy_req_t *moxy_ffi_test_req(moxy_test_t *t, const char *method, size_t mlen,
                                     const char *uri, size_t ulen, int minor, const char *ip,
                                     size_t iplen, int port, char *err, size_t errlen)
{
    const moxy_conf_t *conf = t->w->g->conf;
    if (t->r) {
        fail_msg(err, errlen, "this test transaction has a request already");
        return NULL;
    }
    /* what the parser refuses before the hooks would run */
    const char *mname = NULL;
    int m = method_of(method, mlen, &mname);
    if (m < 0) {
        fail_msg(err, errlen, "unknown method (llhttp's request methods, in capitals)");
        return NULL;
    }
    if (m == HTTP_CONNECT) {
        fail_msg(err, errlen, "CONNECT is not supported (moxy answers 405)");
        return NULL;
    }
    if (ulen == 0 || (uri[0] != '/' && !(ulen == 1 && uri[0] == '*' && m == HTTP_OPTIONS))) {
        fail_msg(err, errlen, "the path must start with /");
        return NULL;
    }
    if (ulen > conf->limits.uri_bytes) {
        fail_msg(err, errlen, "URI too long (limits.uri_bytes: moxy answers 414)");
        return NULL;
    }
    for (size_t i = 0; i < ulen; i++) {
        unsigned char ch = (unsigned char)uri[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '#') {
            fail_msg(err, errlen,
                     "the path and query may not hold spaces, controls, '#' or non-ASCII bytes "
                     "(percent-encode them)");
            return NULL;
        }
    }
    if (minor != 0 && minor != 1) {
        fail_msg(err, errlen, "http_version must be \"1.0\" or \"1.1\"");
        return NULL;
    }
    char ipbuf[sizeof(t->addr.ip)];
    unsigned char addr[16];
    if (iplen == 0 || iplen >= sizeof(ipbuf)) {
        fail_msg(err, errlen, "client_ip must be an IPv4 or IPv6 address");
        return NULL;
    }
    memcpy(ipbuf, ip, iplen);
    ipbuf[iplen] = '\0';
    if (inet_pton(AF_INET, ipbuf, addr) != 1 && inet_pton(AF_INET6, ipbuf, addr) != 1) {
        fail_msg(err, errlen, "client_ip must be an IPv4 or IPv6 address");
        return NULL;
    }
    if (port < 0 || port > 65535) {
        fail_msg(err, errlen, "client_port must be in 0..65535");
        return NULL;
    }
    memcpy(t->addr.ip, ipbuf, iplen + 1);
    t->addr.port = (uint16_t)port;
    memcpy(t->addr.sock_ip, ipbuf, iplen + 1); /* no PROXY header, no trusted proxy: one address */
    t->addr.sock_port = t->addr.port;

    /* client_new_request + on_url + on_headers_complete */
    moxy_req_t *r = moxy_req_new(t->w, t->w->g, 0);
    char *u = r ? moxy_pstrdup(&r->mem, uri, ulen) : NULL;
    if (!u) {
        if (r) {
            moxy_req_end(r);
            moxy_req_release(r);
        }
        fail_msg(err, errlen, "out of memory");
        return NULL;
    }
    r->addr = &t->addr;
    r->method = (uint8_t)m;
    r->method_name = (char *)mname;
    r->http_major = 1;
    r->http_minor = (uint8_t)minor;
    r->uri = u;
    r->uri_len = r->uri_cap = (uint32_t)ulen;
    char *q = memchr(u, '?', ulen);
    r->path_len = q ? (uint32_t)(q - u) : (uint32_t)ulen;
    r->head_bytes = mlen + ulen + 11;
    t->r = r;
    return r;
}

EXPORT int moxy_ffi_test_header(moxy_req_t *r, int which, const char *name, size_t nlen,
                                const char *val, size_t vlen)
{
    /* llhttp skips the spaces around a value; on_header_value_complete the trailing ones */
    while (vlen > 0 && (val[0] == ' ' || val[0] == '\t')) {
        val++;
        vlen--;
    }
    while (vlen > 0 && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t'))
        vlen--;
    if (!moxy_header_name_valid(name, nlen) || !moxy_header_value_valid(val, vlen))
        return MOXY_ERROR;
    moxy_headers_t *hs = which ? &r->resp_headers : &r->headers;
    if ((int)hs->n >= r->g->conf->limits.headers) return MOXY_DECLINED;
    if (!which) r->head_bytes += nlen + vlen + 4;
    return moxy_headers_add(&r->mem, hs, name, nlen, val, vlen);
}

EXPORT int moxy_ffi_test_req_start(moxy_req_t *r, const char *body, size_t blen, int has_body,
                                   char *err, size_t errlen)
{
    const moxy_conf_t *conf = r->g->conf;
    if (r->head_bytes > conf->limits.header_bytes)
        return fail_msg(err, errlen, "request head over limits.header_bytes (moxy answers 431)");
    /* check_head */
    int hosts = 0, cls = 0, tes = 0, conn_close = 0, conn_keep = 0;
    const moxy_header_t *cl = NULL;
    for (uint32_t i = 0; i < r->headers.n; i++) {
        moxy_header_t *h = &r->headers.h[i];
        if (h->kind & MOXY_HK_HOST) {
            hosts++;
            r->host = h->value;
        } else if (h->kind & MOXY_HK_CL) {
            cls++;
            cl = h;
        } else if (h->kind & MOXY_HK_TE) {
            tes++;
            if (!MOXY_STRIEQ_LIT(h->value, h->value_len, "chunked"))
                return fail_msg(err, errlen, "unsupported Transfer-Encoding (moxy answers 400)");
        } else if (h->kind & MOXY_HK_EXPECT) {
            if (!MOXY_STRIEQ_LIT(h->value, h->value_len, "100-continue"))
                return fail_msg(err, errlen, "unsupported Expect (moxy answers 417)");
        } else if (h->kind & MOXY_HK_CONNECTION) {
            conn_close |= moxy_list_has_token(h->value, h->value_len, "close", 5);
            conn_keep |= moxy_list_has_token(h->value, h->value_len, "keep-alive", 10);
        }
    }
    if (hosts > 1) return fail_msg(err, errlen, "more than one Host header (moxy answers 400)");
    if (hosts == 0 && r->http_minor >= 1)
        return fail_msg(err, errlen, "missing Host header (moxy answers 400)");
    if (r->host && !moxy_host_valid(r->host, strlen(r->host)))
        return fail_msg(err, errlen, "invalid Host header (moxy answers 400)");
    if (cls > 1)
        return fail_msg(err, errlen, "more than one Content-Length header (moxy answers 400)");
    if (tes > 1)
        return fail_msg(err, errlen, "more than one Transfer-Encoding header (moxy answers 400)");
    if (cls && tes)
        return fail_msg(err, errlen,
                        "both Content-Length and Transfer-Encoding (moxy answers 400)");
    if (tes && r->http_minor == 0)
        return fail_msg(err, errlen, "Transfer-Encoding in HTTP/1.0 (moxy answers 400)");
    if (tes && !has_body) return fail_msg(err, errlen, "Transfer-Encoding: chunked without a body");
    if (cl) {
        char num[24];
        int n = snprintf(num, sizeof(num), "%zu", blen);
        if (!has_body || cl->value_len != (uint32_t)n || memcmp(cl->value, num, (size_t)n) != 0)
            return fail_msg(err, errlen, "the Content-Length header does not match the body");
    }
    r->has_cl = cls > 0;
    r->has_te = tes > 0;
    if (blen > conf->limits.body_bytes)
        return fail_msg(err, errlen, "request body over limits.body_bytes (moxy answers 413)");

    /* client_start_request */
    r->keepalive = r->http_minor >= 1 ? !conn_close : (conn_keep && !conn_close);
    moxy_headers_drop_connection_named(&r->headers, MOXY_HK_HOST | MOXY_HK_CL);
    moxy_req_set_id(r);
    int m = r->method;
    r->retryable = m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
                   m == HTTP_DELETE || m == HTTP_TRACE;
    /* the body, as if a hook's txn:read_body had buffered all of it */
    r->body_kind = tes ? MOXY_BODY_CHUNKED : blen ? MOXY_BODY_LENGTH : MOXY_BODY_NONE;
    r->body_length = tes ? 0 : blen;
    r->body_read = blen;
    r->body_done = 1;
    if (has_body) {
        r->body_buffered = 1;
        if (!moxy_req_body_buffer(r) || (blen && evbuffer_add(r->body_buf, body, blen) != 0))
            return fail_msg(err, errlen, "out of memory");
    }
    if (moxy_req_add_forwarding(r) != MOXY_OK) return fail_msg(err, errlen, "out of memory");
    return MOXY_OK;
}

/* --- a try (http_upstream.c) --- */

EXPORT void moxy_ffi_test_try_start(moxy_req_t *r)
{
    /* moxy_upstream_try, up to the on_upstream hooks */
    moxy_upstream_try_begin(r);
}

EXPORT int moxy_ffi_test_try_peer(moxy_req_t *r)
{
    /* try_after_upstream_hooks: set_peer's address, or the pool's server */
    const moxy_conf_t *conf = r->g->conf;
    if (r->peer_addr) {
        r->peer = r->peer_addr->text;
        return 1;
    }
    if (r->pool < 0) {
        int li = r->listen_index;
        r->pool =
            conf->listens[li].upstream >= 0 ? conf->listens[li].upstream : conf->default_upstream;
    }
    if (r->pool < 0) return MOXY_DECLINED;
    r->server = 0; /* a test pool has one server */
    r->peer = conf->upstreams[r->pool].servers[0].addr.text;
    return 0;
}

EXPORT int moxy_ffi_test_origin_request(moxy_req_t *r, const char **head, size_t *hlen,
                                        const char **body, size_t *blen)
{
    /* try_connect: what moxy_upstream_write_head queues for the origin,
     * copied out of a scratch buffer into request memory */
    moxy_worker_t *w = r->w;
    event_base_gettimeofday_cached(w->base, &r->up_started);
    r->up_started_us = r->up_connected_us = moxy_mono_us();
    const moxy_upstream_conf_t *uc = r->server >= 0 ? &w->g->conf->upstreams[r->pool] : NULL;
    struct evbuffer *out = evbuffer_new();
    if (!out) return MOXY_ERROR;
    int ok = moxy_upstream_write_head(r, uc, out) == MOXY_OK;
    /* the head ends at its first empty line; the body follows */
    struct evbuffer_ptr end = evbuffer_search(out, "\r\n\r\n", 4, NULL);
    size_t n = evbuffer_get_length(out);
    char *copy = ok && end.pos >= 0 ? moxy_palloc(&r->mem, n + 1) : NULL;
    if (copy) evbuffer_remove(out, copy, n);
    evbuffer_free(out);
    if (!copy) return MOXY_ERROR;
    copy[n] = '\0';
    *head = copy;
    *hlen = (size_t)end.pos + 4;
    *body = copy + *hlen;
    *blen = n - *hlen;
    return MOXY_OK;
}

EXPORT int moxy_ffi_test_try_failed(moxy_req_t *r, const char *why, size_t len, int upstream_hooks)
{
    /* try_again, without the log line (test.lua writes it) */
    int max = moxy_upstream_may_retry(r, upstream_hooks);
    if (!max) return 0;
    const char *copy = moxy_pstrdup(&r->mem, why, len);
    if (!copy) return 0;
    r->error = copy;
    r->last_server = r->server;
    return max;
}

EXPORT int moxy_ffi_test_response(moxy_req_t *r, int status, size_t body_len)
{
    /* rs_headers_complete, for a response with Content-Length */
    r->status = r->up_status = status;
    event_base_gettimeofday_cached(r->w->base, &r->up_header);
    r->up_header_us = moxy_mono_us();
    if (r->method == HTTP_HEAD || status == 204 || status == 304) {
        r->resp_body_kind = MOXY_BODY_NONE;
        return 0;
    }
    r->resp_body_kind = MOXY_BODY_LENGTH;
    r->resp_body_left = body_len;
    return 1;
}

EXPORT void moxy_ffi_test_masked(moxy_req_t *r)
{
    moxy_mask_response(r);
}

EXPORT int moxy_ffi_test_resp_start(moxy_req_t *r, int body_hooks)
{
    /* moxy_body_filter_start + moxy_stream_send_head: the head is out */
    r->filtering = r->filter_hooks = body_hooks && !r->no_filter && r->resp_body_kind != MOXY_BODY_NONE;
    r->resp_head_sent = 1;
    r->resp_state = MOXY_R_BODY;
    return r->filtering;
}

EXPORT void moxy_ffi_test_body_sent(moxy_req_t *r, size_t n, int done)
{
    r->bytes_sent += n;
    if (!done) return;
    r->resp_body_left = 0;
    r->resp_state = MOXY_R_DONE;
    r->up_done_us = moxy_mono_us();
}

/* --- moxy's own answers (http_response.c) --- */

EXPORT void moxy_ffi_test_fail(moxy_req_t *r, int status, const char *why, size_t len)
{
    const char *copy = moxy_pstrdup(&r->mem, why, len);
    if (copy) r->error = copy;
    if (!status) return; /* the response was cut: only why */
    /* moxy_req_fail, before the on_error hooks */
    if (!r->body_done) r->keepalive = 0;
    r->status = status;
    r->resp_headers.n = 0;
    r->local = 0;
}

EXPORT int moxy_ffi_test_answered(moxy_req_t *r)
{
    return r->local;
}

EXPORT void moxy_ffi_test_error_page(moxy_req_t *r, int status)
{
    /* http_response.c's error_page, up to moxy_resp_local */
    char body[MOXY_ERROR_PAGE_MAX];
    size_t n = moxy_resp_error_body(r, status, body, sizeof(body));
    r->local_body = moxy_pstrdup(&r->mem, body, n);
    r->local_body_len = r->local_body ? n : 0;
    r->status = status;
    r->local = 1;
}

EXPORT void moxy_ffi_test_local(moxy_req_t *r, const char **body, size_t *len)
{
    /* moxy_resp_local: the head and body are out at once */
    size_t n = r->local_body ? r->local_body_len : 0;
    moxy_resp_local_prepare(r, r->status, n);
    r->resp_head_sent = 1;
    r->resp_state = MOXY_R_DONE;
    int has_body = moxy_resp_has_body(r);
    *body = has_body && n ? r->local_body : "";
    *len = has_body ? n : 0;
    r->bytes_sent = *len;
}

EXPORT int moxy_ffi_test_geoip(const char **names, const char **paths, int n, char *err, size_t errlen)
{
    return moxy_geoip_open((const char *const *)names, (const char *const *)paths, n, err, errlen);
}

EXPORT void moxy_ffi_test_phase(moxy_req_t *r, int phase)
{
    r->hook_phase = phase;
}

EXPORT int moxy_ffi_test_cache(moxy_req_t *r, int step, int on, double max_object, double *ttl, const char **why)
{
    switch (step) {
    case 0:
        moxy_cache_test_mode(on);
        return 0;
    case 1:
        return moxy_cache_test_key(r);
    case 2:
        moxy_cache_test_lookup(r);
        return 0;
    case 3:
        moxy_cache_response_head(r);
        return 0;
    case 4:
        *why = moxy_cache_test_verdict(r, (size_t)max_object, ttl);
        return *why == NULL;
    }
    return 0;
}
