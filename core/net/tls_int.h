/*
 * tls_int.h -- what tls.c (the transport, origins) and tls_server.c (a
 * listener's certificates) share.  Not for other files: tls.h is the
 * interface.
 */
#ifndef MOXY_TLS_INT_H
#define MOXY_TLS_INT_H

#include "net/tls.h"

#include <openssl/ssl.h>
#include <stdio.h>

/* tls.c: moxy's BIO made ready (main thread, before a worker uses it):
 * MOXY_OK or MOXY_ERROR. */
int moxy_tls_bio_ready(void);

/* tls.c: print OpenSSL's last error reason after prefix on err. */
void moxy_tls_ssl_fail(FILE *err, const char *prefix);

/* tls_server.c: the context connections of s start on. */
SSL_CTX *moxy_tls_server_first(const moxy_tls_server_t *s);

#endif
