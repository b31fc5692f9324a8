/*
 * tls_int.h -- what tls.c (the transport), tls_server.c (a listener's
 * certificates) and tls_client.c (TLS to origins) share.  Not for other files: tls.h is the
 * interface.
 */
#ifndef MOXY_TLS_INT_H
#define MOXY_TLS_INT_H

#include "net/tls.h"

#include <event2/buffer.h>
#include <openssl/ssl.h>
#include <stdio.h>

/* The transport's state: the SSL and its BIO's own. */
typedef struct {
    SSL *ssl;
    struct evbuffer *first; /* bytes read before the handshake, read first */
    int fd;
    unsigned done : 1;      /* the handshake is done */
    unsigned failed : 1;    /* a protocol error: its session is not resumed */
    unsigned peer_read : 1; /* peer's facts below are filled */
    int has_cert, verified;
    char *subject, *issuer, *serial, *fingerprint; /* the client certificate's (mutual TLS) */
    long long not_after;
} tls_conn_t;

/* tls.c: a TLS connection state for c on ctx, reading and writing c's
 * socket through moxy's BIO; NULL when out of memory. */
tls_conn_t *moxy_tls_conn_new(moxy_conn_t *c, SSL_CTX *ctx);

/* tls.c: t becomes c's transport state (c->t is moxy_transport_tls). */
void moxy_tls_conn_attach(moxy_conn_t *c, tls_conn_t *t);

/* tls.c: free t, never attached (its socket stays open). */
void moxy_tls_conn_free(tls_conn_t *t);

/* tls.c: moxy's BIO made ready (main thread, before a worker uses it):
 * MOXY_OK or MOXY_ERROR. */
int moxy_tls_bio_ready(void);

/* tls.c: print OpenSSL's last error reason after prefix on err. */
void moxy_tls_ssl_fail(FILE *err, const char *prefix);

/* tls_server.c: the context connections of s start on. */
SSL_CTX *moxy_tls_server_first(const moxy_tls_server_t *s);

#endif
