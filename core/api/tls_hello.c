/*
 * tls_hello.c -- the `hello` object's C side (see tls_hello.h).
 */
#include "api/tls_hello.h"
#include "base/moxy.h"
#include "http/http-t.h"
#include "http/worker.h"
#include "net/tls.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int moxy_ffi_hello(void *conn, moxy_ffi_hello_t *out)
{
    moxy_client_t *c = conn;
    moxy_tls_hello_t h;
    if (!moxy_tls_hello(&c->conn, &h)) return MOXY_DECLINED;
    out->sni = h.sni;
    out->alpn = h.alpn;
    out->alpn_len = h.alpn_len;
    out->ja4 = h.ja4;
    out->client_ip = c->addr.ip;
    out->client_port = c->addr.port;
    out->listener = c->s.listen_index >= 0 ? c->w->g->conf->listens[c->s.listen_index].name : "";
    return MOXY_OK;
}

EXPORT int moxy_ffi_hello_use(void *conn, const char *name, size_t len)
{
    moxy_client_t *c = conn;
    return moxy_tls_hello_use(&c->conn, name, len);
}

EXPORT int moxy_ffi_hello_supply(void *conn, const char *name, size_t nlen, const char *cert, size_t clen,
                                 const char *key, size_t klen, char *err, size_t errlen)
{
    moxy_client_t *c = conn;
    return moxy_tls_hello_supply(&c->conn, name, nlen, cert, clen, key, klen, err, errlen);
}

EXPORT void moxy_ffi_hello_refuse(void *conn)
{
    moxy_client_t *c = conn;
    moxy_tls_hello_refuse(&c->conn);
}
