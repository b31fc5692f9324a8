/*
 * tls_int.h -- what tls.c (the transport), tls_server.c (a listener's
 * certificates) and tls_client.c (TLS to origins) share.  Not for other files: tls.h is the
 * interface.
 */
#ifndef MOXY_TLS_INT_H
#define MOXY_TLS_INT_H

#include "net/ja4.h"
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
    unsigned got_bytes : 1; /* the peer sent something */
    unsigned hello_hook : 1;  /* stop at the client's hello for hooks (moxy_tls_accept's hello) */
    unsigned hello_wait : 1;  /* stopped there: hooks run */
    unsigned hello_chose : 1; /* a hook chose the certificate: the name asked for does not */
    unsigned hello_refused : 1;
    int has_cert, verified;
    char *subject, *issuer, *serial, *fingerprint; /* the client certificate's (mutual TLS) */
    long long not_after;
    moxy_tls_server_t *server;  /* a server connection's listener side (its SSL holds it) */
    char *sni;                  /* the hello's, kept while hooks run */
    unsigned char *alpn;
    size_t alpn_len;
    char ja4[MOXY_JA4_LEN + 1]; /* the hello's fingerprint ("": none) */
    /* what the hooks chose, applied when the handshake goes on (the last
     * choice wins): a listener's context, or a certificate (references) */
    SSL_CTX *hello_ctx;
    X509 *hello_cert;
    STACK_OF(X509) *hello_chain;
    EVP_PKEY *hello_key;
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

/* tls.c: OpenSSL's passphrase callback for keys moxy reads: there is no
 * passphrase (an encrypted key fails instead of asking a terminal). */
int moxy_tls_no_passphrase(char *buf, int size, int rwflag, void *u);

/* tls.c: print OpenSSL's last error reason after prefix on err. */
void moxy_tls_ssl_fail(FILE *err, const char *prefix);

/* tls_server.c: the context connections of s start on. */
SSL_CTX *moxy_tls_server_first(const moxy_tls_server_t *s);

/* tls_server.c: the context serving name (lower case, NUL-terminated) on
 * s, exactly or by a wildcard one label deep; NULL: none. */
SSL_CTX *moxy_tls_server_find(const moxy_tls_server_t *s, const char *name);

/* tls_server.c: the cache of certificates hooks supplied to s's
 * connections (tls_hello.c), made with s. */
struct tls_hello_cache_s *moxy_tls_server_hello_cache(const moxy_tls_server_t *s);

/* tls_hello.c: a cache keeping at most max certificates / free it. */
struct tls_hello_cache_s *moxy_tls_hello_cache_new(int max);
void moxy_tls_hello_cache_free(struct tls_hello_cache_s *hc);

/* tls_hello.c: OpenSSL's client hello callback of a server's contexts:
 * stops the handshake for the hooks once, then applies their refusal. */
int moxy_tls_on_client_hello(SSL *ssl, int *alert, void *arg);

/* tls_hello.c: let go of what t's hooks chose and was not applied. */
void moxy_tls_hello_forget(tls_conn_t *t);

/* tls_hello.c: OpenSSL's message callback of a server connection until
 * the client's hello is in: its JA4 fingerprint. */
void moxy_tls_on_message(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                         void *arg);

/* tls.c: 1 when the n bytes at s are a host name as SNI may carry one:
 * letters, digits, '-', '_', dots between labels, at most 253 bytes (no
 * '/', '%', space...: scripts put it in URLs, keys and logs). */
int moxy_tls_host_ok(const char *s, size_t n);

#define MOXY_TLS_HOST_MAX 253

/* tls.c: the n bytes at s as a name to look up (an absolute name's dot
 * dropped, lower case) into out, NUL-terminated: its length, or 0 when it
 * is not a host name (moxy_tls_host_ok). */
size_t moxy_tls_host_lower(const char *s, size_t n, char out[MOXY_TLS_HOST_MAX + 1]);

/* tls.c: the connection state of ssl (its BIO's). */
tls_conn_t *moxy_tls_conn_of(const SSL *ssl);

#endif
