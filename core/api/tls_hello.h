/*
 * tls_hello.h -- the `hello` object of on_tls_hello hooks: what a TLS
 * client's hello says and the choice of the certificate (the FFI exports
 * of lua/moxy/tls_hello.lua), over net/tls.h's hello calls.  conn is the
 * connection the hooks run for (an HTTP/1 moxy_client_t, whose handshake
 * waits at the hello); each call is valid only while its hooks run.
 */
#ifndef MOXY_API_TLS_HELLO_H
#define MOXY_API_TLS_HELLO_H

#include <stddef.h>

/* BEGIN FFI lua/moxy/tls_hello.lua */
/* What the hello says, and who sent it.  Strings are valid while the
 * hooks run; sni, alpn and ja4 are NULL when absent. */
typedef struct {
    const char *sni;            /* lower case */
    const unsigned char *alpn;  /* the protocols offered, as on the wire */
    size_t alpn_len;
    const char *ja4;
    const char *client_ip;      /* the client's (after a PROXY protocol header) */
    int client_port;
    const char *listener;       /* the listener's name */
} moxy_ffi_hello_t;

/* conn's hello into *out: MOXY_OK, or MOXY_DECLINED when its handshake
 * is not waiting at the hello. */
int moxy_ffi_hello(void *conn, moxy_ffi_hello_t *out);

/* Present the certificates loaded for name, or the one supplied for it
 * earlier: MOXY_OK, or MOXY_DECLINED when there are none. */
int moxy_ffi_hello_use(void *conn, const char *name, size_t len);

/* Present cert (PEM chain) with key (PEM) and keep it for name (nlen 0:
 * not kept): MOXY_OK, or MOXY_ERROR with the reason in err (errlen
 * bytes of room). */
int moxy_ffi_hello_supply(void *conn, const char *name, size_t nlen, const char *cert, size_t clen,
                          const char *key, size_t klen, char *err, size_t errlen);

/* Refuse the handshake. */
void moxy_ffi_hello_refuse(void *conn);
/* END FFI */

#endif
