/*
 * tls_client.c -- TLS to origins (see tls.h): a pool's client side (its
 * CAs, its client certificate), the process's default ones for moxy.http,
 * and a connection's start toward an origin.
 */
#include "net/tls.h"
#include "net/tls_int.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>

int moxy_tls_connect(moxy_conn_t *c, moxy_tls_client_t *cl, const char *sni, const char *host)
{
    SSL_CTX *ctx = (SSL_CTX *)cl;
    tls_conn_t *t = moxy_tls_conn_new(c, ctx);
    if (!t) return MOXY_ERROR;
    int ok = 1;
    if (sni) ok = SSL_set_tlsext_host_name(t->ssl, sni) == 1;
    if (ok && host && SSL_CTX_get_verify_mode(ctx) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* an IP address is checked against the certificate's IP names */
        ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1 || X509_VERIFY_PARAM_set1_host(vp, host, 0) == 1;
    }
    ERR_clear_error(); /* set1_ip_asc's refusal of a name */
    if (!ok) {
        moxy_tls_conn_free(t);
        return MOXY_ERROR;
    }
    SSL_set_connect_state(t->ssl);
    moxy_tls_conn_attach(c, t);
    return MOXY_OK;
}

int moxy_conn_idle_readable(moxy_conn_t *c)
{
    char byte;
    ssize_t n = moxy_conn_recv(c, &byte, 1);
    return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

moxy_tls_client_t *moxy_tls_client_new(const moxy_tls_origin_conf_t *oc, const char *where, FILE *err)
{
    if (moxy_tls_bio_ready() != MOXY_OK) {
        fprintf(err, "%s: OpenSSL could not be set up\n", where);
        return NULL;
    }
    char msg[1200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        moxy_tls_ssl_fail(err, where);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    static const unsigned char h1[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, h1, sizeof(h1) - 1);
    if (oc->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = oc->ca ? SSL_CTX_load_verify_locations(ctx, oc->ca, NULL) : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            snprintf(msg, sizeof(msg), "%s.ca: cannot read CA certificates from %s", where,
                     oc->ca ? oc->ca : "the system's store");
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (oc->client_cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, oc->client_cert) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_cert: cannot read a certificate from %s", where, oc->client_cert);
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, oc->client_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_key: %s is not the key of %s", where, oc->client_key,
                     oc->client_cert);
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return (moxy_tls_client_t *)ctx;
}

static moxy_tls_client_t *default_clients[2];
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_clients_make(void)
{
    for (int v = 0; v < 2; v++) {
        moxy_tls_origin_conf_t oc = {.verify = v};
        default_clients[v] = moxy_tls_client_new(&oc, "moxy.http", stderr);
    }
}

moxy_tls_client_t *moxy_tls_client_default(int verify)
{
    pthread_once(&default_once, default_clients_make);
    return default_clients[verify != 0];
}

void moxy_tls_client_free(moxy_tls_client_t *cl)
{
    SSL_CTX_free((SSL_CTX *)cl);
}
