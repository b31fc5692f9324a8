/*
 * ffi.c -- the FFI exports of ffi.h.
 */
#include "api/ffi.h"
#include "http/compress.h"
#include "net/tls.h"
#include "base/headers.h"
#include "base/shared_dict.h"
#include "http/http.h"
#include "http/request.h"
#include "base/log.h"
#include "proxy/upstream.h"
#include "http/worker.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT int moxy_ffi_abi_version(void)
{
    return MOXY_FFI_ABI;
}

static moxy_headers_t *list_of(moxy_req_t *r, int which)
{
    return which ? &r->resp_headers : &r->headers;
}

EXPORT int moxy_ffi_req_tls(moxy_req_t *r, moxy_ffi_tls_t *out)
{
    const moxy_tls_info_t *t = r->tls;
    if (!t) return MOXY_DECLINED;
    out->sni = t->sni;
    out->version = t->version;
    out->cipher = t->cipher;
    out->alpn = t->alpn;
    out->resumed = t->resumed;
    out->has_cert = t->has_cert;
    out->verified = t->verified;
    out->subject = t->subject;
    out->issuer = t->issuer;
    out->serial = t->serial;
    out->fingerprint = t->fingerprint;
    out->not_after = (double)t->not_after;
    out->ja4 = t->ja4;
    return MOXY_OK;
}

EXPORT int moxy_ffi_req_field(moxy_req_t *r, int field, const char **out, size_t *len)
{
    const moxy_conf_t *conf = r->g->conf;
    switch (field) {
    case MOXY_FFI_F_METHOD:
        *out = r->method_name;
        *len = strlen(r->method_name);
        return MOXY_OK;
    case MOXY_FFI_F_URI:
        if (!r->uri) return MOXY_DECLINED; /* a request line that did not parse */
        *out = r->uri;
        *len = r->uri_len;
        return MOXY_OK;
    case MOXY_FFI_F_PATH:
        if (!r->uri) return MOXY_DECLINED;
        *out = r->uri;
        *len = r->path_len;
        return MOXY_OK;
    case MOXY_FFI_F_QUERY:
        if (r->path_len >= r->uri_len) return MOXY_DECLINED;
        *out = r->uri + r->path_len + 1;
        *len = r->uri_len - r->path_len - 1;
        return MOXY_OK;
    case MOXY_FFI_F_HOST:
        if (!r->host) return MOXY_DECLINED;
        *out = r->host;
        *len = strlen(r->host);
        return MOXY_OK;
    case MOXY_FFI_F_CLIENT_IP:
        *out = moxy_req_client_ip(r);
        *len = strlen(*out);
        return MOXY_OK;
    case MOXY_FFI_F_SCHEME:
        *out = r->https ? "https" : "http";
        *len = strlen(*out);
        return MOXY_OK;
    case MOXY_FFI_F_SOCKET_IP:
        *out = r->addr->sock_ip;
        *len = strlen(r->addr->sock_ip);
        return MOXY_OK;
    case MOXY_FFI_F_ID:
        *out = r->id;
        *len = strlen(r->id);
        return MOXY_OK;
    case MOXY_FFI_F_LISTENER:
        *out = conf->listens[r->listen_index].name;
        *len = strlen(*out);
        return MOXY_OK;
    case MOXY_FFI_F_VERSION:
        *out = r->http_major == 2 ? "2" : r->http_minor ? "1.1" : "1.0";
        *len = strlen(*out);
        return MOXY_OK;
    case MOXY_FFI_F_BODY_ERROR:
        if (!r->body_error) return MOXY_DECLINED;
        *out = r->body_error;
        *len = strlen(r->body_error);
        return MOXY_OK;
    case MOXY_FFI_F_PEER:
        if (!r->peer) return MOXY_DECLINED;
        *out = r->peer;
        *len = strlen(r->peer);
        return MOXY_OK;
    case MOXY_FFI_F_ERROR:
        if (!r->error) return MOXY_DECLINED;
        *out = r->error;
        *len = strlen(r->error);
        return MOXY_OK;
    case MOXY_FFI_F_POOL:
        if (r->pool < 0) return MOXY_DECLINED;
        *out = conf->upstreams[r->pool].name;
        *len = strlen(*out);
        return MOXY_OK;
    }
    return MOXY_ERROR;
}

EXPORT int moxy_ffi_header_get(moxy_req_t *r, int which, const char *name, size_t nlen, int index,
                               const char **val, size_t *vlen)
{
    moxy_headers_t *hs = list_of(r, which);
    int i = -1;
    for (int k = 0; k <= index; k++) {
        i = moxy_headers_find(hs, name, nlen, (uint32_t)(i + 1));
        if (i < 0) return MOXY_DECLINED;
    }
    *val = hs->h[i].value;
    *vlen = hs->h[i].value_len;
    return MOXY_OK;
}

EXPORT int moxy_ffi_header_set(moxy_req_t *r, int which, const char *name, size_t nlen,
                               const char *val, size_t vlen, int add)
{
    if (!moxy_header_name_valid(name, nlen) || !moxy_header_value_valid(val, vlen)) return MOXY_ERROR;
    /* the request's Host names the cache key, X-Forwarded-Host and the
     * origin's Host: held to the rules a client's is (RFC 3986 host[:port]) */
    if (!which && MOXY_STRIEQ_LIT(name, nlen, "host") && !moxy_host_valid(val, vlen)) return MOXY_ERROR;
    moxy_pool_t *pool = &r->mem;
    moxy_headers_t *hs = list_of(r, which);
    int rc = add ? moxy_headers_add(pool, hs, name, nlen, val, vlen)
                 : moxy_headers_set(pool, hs, name, nlen, val, vlen);
    if (rc == MOXY_OK && !which && MOXY_STRIEQ_LIT(name, nlen, "host")) {
        int i = moxy_headers_find_kind(hs, MOXY_HK_HOST, 0);
        r->host = i >= 0 ? hs->h[i].value : NULL;
    }
    return rc;
}

EXPORT int moxy_ffi_header_remove(moxy_req_t *r, int which, const char *name, size_t nlen)
{
    int n = moxy_headers_remove(list_of(r, which), name, nlen);
    if (!which && MOXY_STRIEQ_LIT(name, nlen, "host")) r->host = NULL;
    return n;
}

EXPORT int moxy_ffi_header_at(moxy_req_t *r, int which, int index, const char **name, size_t *nlen,
                              const char **val, size_t *vlen)
{
    moxy_headers_t *hs = list_of(r, which);
    if (index < 0 || (uint32_t)index >= hs->n) return MOXY_DECLINED;
    *name = hs->h[index].name;
    *nlen = hs->h[index].name_len;
    *val = hs->h[index].value;
    *vlen = hs->h[index].value_len;
    return MOXY_OK;
}

/* 1 when the n bytes at p may stand in a request target (RFC 3986 characters,
 * no '#'); '?' only when query is 1. */
static int target_valid(const char *p, size_t n, int query)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '#' || (ch == '?' && !query)) return 0;
    }
    return 1;
}

EXPORT int moxy_ffi_req_set_target(moxy_req_t *r, const char *path, size_t plen, const char *query,
                                   size_t qlen, int has_query)
{
    if (plen == 0 || path[0] != '/' || !target_valid(path, plen, 0)) return MOXY_ERROR;
    if (has_query && !target_valid(query, qlen, 1)) return MOXY_ERROR;
    size_t n = plen + (has_query ? qlen + 1 : 0);
    char *uri = moxy_palloc(&r->mem, n + 1);
    if (!uri) return MOXY_ERROR;
    memcpy(uri, path, plen);
    if (has_query) {
        uri[plen] = '?';
        memcpy(uri + plen + 1, query, qlen);
    }
    uri[n] = '\0';
    r->uri = uri;
    r->uri_len = r->uri_cap = (uint32_t)n;
    r->path_len = (uint32_t)plen;
    return MOXY_OK;
}

static int bodiless(int status)
{
    return status < 200 || status == 204 || status == 304;
}

EXPORT int moxy_ffi_resp_status(moxy_req_t *r, int status)
{
    if (status > 0 && status <= 999 && r->status && !bodiless(status) && !bodiless(r->status))
        r->status = status;
    return r->status;
}

EXPORT int moxy_ffi_upstream_pick(moxy_req_t *r, const char *name, size_t len, const char *key, size_t klen,
                                  int has_key, const char *peer, size_t plen)
{
    const moxy_conf_t *conf = r->g->conf;
    int i = moxy_conf_upstream_index(conf, name, len);
    if (i < 0) return MOXY_DECLINED;
    r->want_server = -1;
    moxy_peer_t *p = NULL;
    if (plen) {
        moxy_upstream_t *up = conf->upstreams[i].state;
        if (up && (p = moxy_upstream_find_peer(up, peer, plen))) r->want_server = (int)(p - up->peers);
    }
    r->pool = i;
    r->peer_addr = NULL;
    r->has_hash = has_key != 0;
    if (has_key) r->hash = moxy_hash64(key, klen);
    return plen && !p ? MOXY_ERROR : MOXY_OK;
}

/* A count to give back when a request ends (moxy.ratelimit's concurrency). */
typedef struct {
    moxy_shdict_t *dict;
    double by;
    size_t klen;
    char key[];
} req_incr_t;

static void req_incr_run(void *arg)
{
    req_incr_t *d = arg;
    double out;
    int err;
    moxy_ffi_shdict_incr(d->dict, d->key, d->klen, d->by, 0, 0, 0, &out, &err);
}

EXPORT int moxy_ffi_req_defer_incr(moxy_req_t *r, void *dict, const char *key, size_t klen, double by)
{
    req_incr_t *d = moxy_palloc(&r->mem, sizeof(*d) + klen);
    if (!d || !dict || !moxy_req_defer(r, req_incr_run, d)) return MOXY_ERROR;
    d->dict = dict;
    d->by = by;
    d->klen = klen;
    memcpy(d->key, key, klen);
    return MOXY_OK;
}

EXPORT int moxy_ffi_log_field(moxy_req_t *r, const char *name, size_t nlen, const char *val, size_t vlen, int quoted)
{
    if (nlen == 0 || nlen > 64) return MOXY_ERROR;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!(ch == '_' || (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z'))) return MOXY_ERROR;
    }
    return moxy_req_log_field(r, name, nlen, val, vlen, quoted);
}

EXPORT int moxy_ffi_respond(moxy_req_t *r, int status, const char *body, size_t len)
{
    if (status < 200 || status > 999 || status == 101) return MOXY_ERROR;
    r->local_body = len ? moxy_pstrdup(&r->mem, body, len) : NULL;
    if (len && !r->local_body) return MOXY_ERROR;
    r->local_body_len = len;
    r->status = status;
    r->local = 1;
    return MOXY_OK;
}

/* Seconds from a to b (moxy_mono_us() values), or -1 when either is not set. */
static double secs_between(long long a, long long b)
{
    if (!a || !b) return -1;
    return (double)(b - a) / 1e6;
}

EXPORT double moxy_ffi_req_number(moxy_req_t *r, int which)
{
    switch (which) {
    case MOXY_FFI_N_TRIES: return r->tries;
    case MOXY_FFI_N_STARTED: return (double)r->started.tv_sec + (double)r->started.tv_usec / 1e6;
    case MOXY_FFI_N_UP_STATUS: return r->up_status ? r->up_status : -1;
    case MOXY_FFI_N_CONNECT_TIME: return secs_between(r->up_started_us, r->up_connected_us);
    case MOXY_FFI_N_HEADER_TIME: return secs_between(r->up_started_us, r->up_header_us);
    case MOXY_FFI_N_RESPONSE_TIME: return secs_between(r->up_started_us, r->up_done_us);
    case MOXY_FFI_N_DURATION: return (double)moxy_req_elapsed_us(r) / 1e6;
    case MOXY_FFI_N_BYTES_SENT: return (double)r->bytes_sent;
    case MOXY_FFI_N_STATUS: return r->status ? r->status : -1;
    }
    return -1;
}

EXPORT int moxy_ffi_upstream_set_peer(moxy_req_t *r, const char *host, size_t len, int port)
{
    char ip[64];
    if (len == 0 || len >= sizeof(ip) || port < 1 || port > 65535) return MOXY_ERROR;
    memcpy(ip, host, len);
    ip[len] = '\0';
    moxy_pool_t *pool = &r->mem;
    moxy_addr_t *a = moxy_palloc(pool, sizeof(*a));
    char *text = moxy_palloc(pool, len + 10);
    if (!a || !text) return MOXY_ERROR;
    memset(a, 0, sizeof(*a));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->sa;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        a->salen = sizeof(*s4);
        snprintf(text, len + 10, "%s:%d", ip, port);
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        a->salen = sizeof(*s6);
        snprintf(text, len + 10, "[%s]:%d", ip, port);
    } else {
        return MOXY_ERROR;
    }
    a->text = text;
    r->peer_addr = a;
    return MOXY_OK;
}

EXPORT int moxy_ffi_req_read_body(moxy_req_t *r, double max)
{
    return moxy_req_read_body(r, max > 0 ? (uint64_t)max : 0);
}

EXPORT int moxy_ffi_req_body(moxy_req_t *r, const char **out, size_t *len)
{
    if (!r->body_buffered) return MOXY_ERROR;
    *len = r->body_buf ? evbuffer_get_length(r->body_buf) : 0;
    *out = *len ? (const char *)evbuffer_pullup(r->body_buf, -1) : "";
    return MOXY_OK;
}

EXPORT int moxy_ffi_req_flag(moxy_req_t *r, int flag, int value)
{
    switch (flag) {
    case MOXY_FFI_FLAG_RETRYABLE: r->retryable = value != 0; return MOXY_OK;
    case MOXY_FFI_FLAG_NO_FILTER: r->no_filter = value != 0; return MOXY_OK;
    }
    return MOXY_ERROR;
}

EXPORT int moxy_ffi_req_body_decode(moxy_req_t *r, double max)
{
    return moxy_compress_decode_body(r, max > 0 ? (uint64_t)max : 0);
}

EXPORT int moxy_ffi_resp_compress(moxy_req_t *r, int want, int encoding, int level)
{
    if (r->resp_head_sent || r->filtering || r->head_held) return MOXY_DECLINED;
    r->compress_want = (int8_t)(want > 0 ? 1 : want < 0 ? -1 : 0);
    r->compress_enc = (uint8_t)(encoding >= 1 && encoding <= 3 ? encoding : 0);
    r->compress_level = (uint8_t)(level >= 0 && level <= 19 ? level : 0);
    return MOXY_OK;
}

EXPORT int moxy_ffi_client_port(moxy_req_t *r, int socket)
{
    return socket ? r->addr->sock_port : moxy_req_client_port(r);
}

EXPORT int moxy_ffi_log(moxy_req_t *r, int level, const char *msg, size_t len)
{
    if (level < MOXY_LOG_ERR || level > MOXY_LOG_DEBUG) level = MOXY_LOG_ERR;
    if (!moxy_log_enabled(level)) return MOXY_DECLINED;
    if (len > 1800) len = 1800; /* one line; moxy_log cuts the rest anyway */
    moxy_log_bytes(level, r ? r->id : NULL, msg, len);
    return MOXY_OK;
}
