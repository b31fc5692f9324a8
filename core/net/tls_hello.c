/*
 * tls_hello.c -- a TLS server connection at the client's hello (see
 * tls.h): its JA4 fingerprint, the stop for on_tls_hello hooks, what they
 * may decide (a loaded certificate by name, one they supply, a refusal),
 * and the listener's cache of supplied certificates.
 *
 * The fingerprint is taken from the hello message as received (OpenSSL's
 * message callback, set until the hello is in): OpenSSL 3.0 tells a
 * callback only the extensions it knows, and JA4 counts them all.
 *
 * The stop: the client hello callback of every context of a listener
 * returns "retry" once for a connection accepted with hello, after copying
 * the name asked for and the protocols offered; the handshake then says
 * MOXY_TLS_WANT_HELLO.  A decision is kept (references to a context, or to
 * a certificate, its chain and key; the last one wins); the next
 * moxy_tls_handshake calls the callback again, which applies it (the
 * connection's context, or its certificate and key) and lets the handshake
 * go on, or fails it for a refusal.  A chosen certificate stands: the name
 * callback (tls_server.c) then leaves the connection where it is.
 *
 * Supplied certificates are kept by name, per listener, at most
 * hello_cache of them, the least recently used going first.  Names come
 * from clients (SNI) and scripts: the table hashes them with the process's
 * key.  Workers share it under a mutex; a lookup takes its references to
 * the certificate under the lock, so an eviction never frees what a
 * connection is about to present.
 */
#include "net/tls.h"
#include "net/tls_int.h"
#include "base/siphash.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define HELLO_ALPN_MAX 512          /* bytes of the ALPN list shown to hooks (clients offer a few) */
#define HELLO_PEM_MAX (256 * 1024)  /* a supplied certificate chain, or key */
#define HELLO_CHAIN_MAX 16          /* certificates after the first */
#define HELLO_BUCKETS_MAX 65536

typedef struct tls_supplied_s {
    struct tls_supplied_s *next;           /* its bucket's chain */
    struct tls_supplied_s *older, *newer;  /* use order */
    uint64_t hash;
    X509 *cert;
    STACK_OF(X509) *chain;                 /* the intermediates, or NULL */
    EVP_PKEY *key;
    size_t name_len;
    char name[];
} tls_supplied_t;

struct tls_hello_cache_s {
    pthread_mutex_t lock;
    int max, n;
    size_t nbuckets; /* a power of two */
    tls_supplied_t **buckets;
    tls_supplied_t *newest, *oldest;
};

/* --- the hello --- */

void moxy_tls_on_message(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                         void *arg)
{
    MOXY_UNUSED(version);
    MOXY_UNUSED(arg);
    const unsigned char *m = buf;
    if (write_p || content_type != SSL3_RT_HANDSHAKE || len < 4 || m[0] != SSL3_MT_CLIENT_HELLO) return;
    tls_conn_t *t = moxy_tls_conn_of(ssl);
    if (moxy_ja4(m, len, t->ja4) != MOXY_OK) t->ja4[0] = '\0';
    SSL_set_msg_callback(ssl, NULL); /* the first hello only (not one after a retry request) */
}

/* The host name of a server_name extension (RFC 6066 3), lower case, an
 * absolute name's dot dropped, in a malloc'ed string; NULL when there is
 * none or it is not a plausible name. */
static char *hello_sni(const unsigned char *p, size_t len)
{
    if (len < 2 || (size_t)((p[0] << 8) | p[1]) != len - 2) return NULL;
    p += 2;
    len -= 2;
    while (len >= 3) {
        size_t n = (size_t)((p[1] << 8) | p[2]);
        if (n > len - 3) return NULL;
        if (p[0] == 0) { /* host_name: scripts put it in URLs, keys, logs */
            char name[MOXY_TLS_HOST_MAX + 1];
            return moxy_tls_host_lower((const char *)p + 3, n, name) ? strdup(name) : NULL;
        }
        p += 3 + n;
        len -= 3 + n;
    }
    return NULL;
}

/* The protocol list of an ALPN extension (RFC 7301 3.1), checked, in
 * *out (malloc'ed); 0 bytes when it is malformed. */
static size_t hello_alpn(const unsigned char *p, size_t len, unsigned char **out)
{
    *out = NULL;
    if (len < 2 || (size_t)((p[0] << 8) | p[1]) != len - 2) return 0;
    p += 2;
    len -= 2;
    size_t shown = 0; /* whole names, up to HELLO_ALPN_MAX bytes */
    for (size_t i = 0; i < len; i += 1 + p[i]) {
        if (p[i] == 0 || p[i] > len - i - 1) return 0;
        if (i + 1 + p[i] <= HELLO_ALPN_MAX) shown = i + 1 + p[i];
    }
    len = shown;
    if (len == 0 || !(*out = malloc(len))) return 0;
    memcpy(*out, p, len);
    return len;
}

int moxy_tls_on_client_hello(SSL *ssl, int *alert, void *arg)
{
    MOXY_UNUSED(arg);
    tls_conn_t *t = moxy_tls_conn_of(ssl);
    if (t->hello_refused) {
        *alert = SSL_AD_HANDSHAKE_FAILURE;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (!t->hello_hook) return SSL_CLIENT_HELLO_SUCCESS;
    if (t->hello_wait) { /* called again: the hooks are done */
        t->hello_wait = 0;
        t->hello_hook = 0;
        int ok = 1;
        if (t->hello_ctx && t->hello_ctx != SSL_get_SSL_CTX(ssl)) ok = SSL_set_SSL_CTX(ssl, t->hello_ctx) != NULL;
        if (ok && t->hello_cert) {
            SSL_certs_clear(ssl);
            ok = SSL_use_certificate(ssl, t->hello_cert) == 1 && SSL_use_PrivateKey(ssl, t->hello_key) == 1 &&
                 SSL_set1_chain(ssl, t->hello_chain) == 1;
        }
        t->hello_chose = t->hello_ctx || t->hello_cert;
        moxy_tls_hello_forget(t);
        if (!ok) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    const unsigned char *p;
    size_t len;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len)) t->sni = hello_sni(p, len);
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p, &len))
        t->alpn_len = hello_alpn(p, len, &t->alpn);
    t->hello_wait = 1;
    return SSL_CLIENT_HELLO_RETRY;
}

/* c's state when its handshake waits at the hello for hooks, else NULL. */
static tls_conn_t *waiting(const moxy_conn_t *c)
{
    if (c->t != &moxy_transport_tls || !c->ctx) return NULL;
    tls_conn_t *t = c->ctx;
    return t->hello_wait && !t->done ? t : NULL;
}

int moxy_tls_hello(const moxy_conn_t *c, moxy_tls_hello_t *h)
{
    tls_conn_t *t = waiting(c);
    if (!t) return 0;
    h->sni = t->sni;
    h->alpn = t->alpn;
    h->alpn_len = t->alpn_len;
    h->ja4 = t->ja4[0] ? t->ja4 : NULL;
    return 1;
}

void moxy_tls_hello_refuse(moxy_conn_t *c)
{
    tls_conn_t *t = waiting(c);
    if (t) t->hello_refused = 1;
}

void moxy_tls_hello_forget(tls_conn_t *t)
{
    SSL_CTX_free(t->hello_ctx);
    X509_free(t->hello_cert);
    sk_X509_pop_free(t->hello_chain, X509_free);
    EVP_PKEY_free(t->hello_key);
    t->hello_ctx = NULL;
    t->hello_cert = NULL;
    t->hello_chain = NULL;
    t->hello_key = NULL;
}

/* The hooks chose ctx: kept (a reference) in place of an earlier choice. */
static void choose_ctx(tls_conn_t *t, SSL_CTX *ctx)
{
    moxy_tls_hello_forget(t);
    SSL_CTX_up_ref(ctx);
    t->hello_ctx = ctx;
}

/* The hooks chose cert (its chain, key): kept (references) in place of an
 * earlier choice.  MOXY_ERROR: out of memory. */
static int choose_cert(tls_conn_t *t, X509 *cert, STACK_OF(X509) *chain, EVP_PKEY *key)
{
    STACK_OF(X509) *c = chain ? X509_chain_up_ref(chain) : NULL;
    if (chain && !c) return MOXY_ERROR;
    moxy_tls_hello_forget(t);
    X509_up_ref(cert);
    EVP_PKEY_up_ref(key);
    t->hello_cert = cert;
    t->hello_chain = c;
    t->hello_key = key;
    return MOXY_OK;
}

/* --- the cache of supplied certificates --- */

static void supplied_free(tls_supplied_t *e)
{
    X509_free(e->cert);
    sk_X509_pop_free(e->chain, X509_free);
    EVP_PKEY_free(e->key);
    free(e);
}

struct tls_hello_cache_s *moxy_tls_hello_cache_new(int max)
{
    struct tls_hello_cache_s *hc = calloc(1, sizeof(*hc));
    if (!hc) return NULL;
    hc->max = max;
    hc->nbuckets = 16;
    while (hc->nbuckets < (size_t)max && hc->nbuckets < HELLO_BUCKETS_MAX) hc->nbuckets *= 2;
    if (!(hc->buckets = calloc(hc->nbuckets, sizeof(*hc->buckets)))) {
        free(hc);
        return NULL;
    }
    pthread_mutex_init(&hc->lock, NULL);
    return hc;
}

void moxy_tls_hello_cache_free(struct tls_hello_cache_s *hc)
{
    tls_supplied_t *e = hc->newest, *next;
    for (; e; e = next) {
        next = e->older;
        supplied_free(e);
    }
    free(hc->buckets);
    pthread_mutex_destroy(&hc->lock);
    free(hc);
}

/* The slot holding name's entry (or the NULL at its chain's end); under the lock. */
static tls_supplied_t **cache_slot(struct tls_hello_cache_s *hc, const char *name, size_t len, uint64_t h)
{
    tls_supplied_t **p = &hc->buckets[h & (hc->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == h && (*p)->name_len == len && memcmp((*p)->name, name, len) == 0) break;
    return p;
}

static void lru_unlink(struct tls_hello_cache_s *hc, tls_supplied_t *e)
{
    if (e->newer) e->newer->older = e->older;
    else hc->newest = e->older;
    if (e->older) e->older->newer = e->newer;
    else hc->oldest = e->newer;
    e->older = e->newer = NULL;
}

static void lru_front(struct tls_hello_cache_s *hc, tls_supplied_t *e)
{
    e->older = hc->newest;
    e->newer = NULL;
    if (hc->newest) hc->newest->newer = e;
    hc->newest = e;
    if (!hc->oldest) hc->oldest = e;
}

/* Remove e (its slot: where it is chained); under the lock. */
static void cache_remove(struct tls_hello_cache_s *hc, tls_supplied_t **slot, tls_supplied_t *e)
{
    *slot = e->next;
    lru_unlink(hc, e);
    hc->n--;
    supplied_free(e);
}

/* Keep e (its name and hash set) in place of name's older entry, the
 * least recently used going when the cache is full. */
static void cache_put(struct tls_hello_cache_s *hc, tls_supplied_t *e)
{
    pthread_mutex_lock(&hc->lock);
    tls_supplied_t **slot = cache_slot(hc, e->name, e->name_len, e->hash);
    if (*slot) cache_remove(hc, slot, *slot);
    while (hc->n >= hc->max && hc->oldest) {
        tls_supplied_t *old = hc->oldest;
        cache_remove(hc, cache_slot(hc, old->name, old->name_len, old->hash), old);
    }
    slot = cache_slot(hc, e->name, e->name_len, e->hash);
    e->next = NULL;
    *slot = e;
    lru_front(hc, e);
    hc->n++;
    pthread_mutex_unlock(&hc->lock);
}

int moxy_tls_hello_use(moxy_conn_t *c, const char *name, size_t len)
{
    tls_conn_t *t = waiting(c);
    char buf[MOXY_TLS_HOST_MAX + 1];
    if (!t || !(len = moxy_tls_host_lower(name, len, buf))) return MOXY_DECLINED;
    SSL_CTX *ctx = moxy_tls_server_find(t->server, buf);
    if (ctx) {
        choose_ctx(t, ctx);
        return MOXY_OK;
    }
    struct tls_hello_cache_s *hc = moxy_tls_server_hello_cache(t->server);
    uint64_t h = moxy_hash_keyed(buf, len);
    int rc = MOXY_DECLINED;
    pthread_mutex_lock(&hc->lock);
    tls_supplied_t *e = *cache_slot(hc, buf, len, h);
    if (e) {
        lru_unlink(hc, e);
        lru_front(hc, e);
        rc = choose_cert(t, e->cert, e->chain, e->key) == MOXY_OK ? MOXY_OK : MOXY_DECLINED;
    }
    pthread_mutex_unlock(&hc->lock);
    return rc;
}

int moxy_tls_hello_supply(moxy_conn_t *c, const char *name, size_t len, const char *cert, size_t cert_len,
                          const char *key, size_t key_len, char *err, size_t errlen)
{
    tls_conn_t *t = waiting(c);
    if (!t) {
        snprintf(err, errlen, "the handshake is past the client's hello");
        return MOXY_ERROR;
    }
    char buf[MOXY_TLS_HOST_MAX + 1];
    if (len > 0 && !(len = moxy_tls_host_lower(name, len, buf))) {
        snprintf(err, errlen, "not a host name to keep the certificate for");
        return MOXY_ERROR;
    }
    if (cert_len == 0 || cert_len > HELLO_PEM_MAX || key_len == 0 || key_len > HELLO_PEM_MAX) {
        snprintf(err, errlen, "a certificate and a key of 1 byte to %d KiB are needed", HELLO_PEM_MAX / 1024);
        return MOXY_ERROR;
    }
    tls_supplied_t *e = calloc(1, sizeof(*e) + len + 1);
    BIO *in = BIO_new_mem_buf(cert, (int)cert_len);
    BIO *kin = BIO_new_mem_buf(key, (int)key_len);
    if (!e || !in || !kin) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!(e->cert = PEM_read_bio_X509(in, NULL, moxy_tls_no_passphrase, NULL))) {
        snprintf(err, errlen, "the certificate is not a PEM certificate");
        goto fail;
    }
    X509 *ca;
    while ((ca = PEM_read_bio_X509(in, NULL, moxy_tls_no_passphrase, NULL))) {
        if ((!e->chain && !(e->chain = sk_X509_new_null())) || sk_X509_num(e->chain) >= HELLO_CHAIN_MAX ||
            !sk_X509_push(e->chain, ca)) {
            X509_free(ca);
            snprintf(err, errlen, "the chain has more than %d certificates", HELLO_CHAIN_MAX);
            goto fail;
        }
    }
    ERR_clear_error(); /* the end of the chain */
    if (!(e->key = PEM_read_bio_PrivateKey(kin, NULL, moxy_tls_no_passphrase, NULL))) {
        snprintf(err, errlen, "the key is not a PEM private key (or it is encrypted)");
        goto fail;
    }
    if (X509_check_private_key(e->cert, e->key) != 1) {
        snprintf(err, errlen, "the key is not the certificate's");
        goto fail;
    }
    if (choose_cert(t, e->cert, e->chain, e->key) != MOXY_OK) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    BIO_free(in);
    BIO_free(kin);
    struct tls_hello_cache_s *hc = moxy_tls_server_hello_cache(t->server);
    if (len == 0 || hc->max == 0) {
        supplied_free(e);
        return MOXY_OK;
    }
    memcpy(e->name, buf, len);
    e->name_len = len;
    e->hash = moxy_hash_keyed(buf, len);
    cache_put(hc, e);
    return MOXY_OK;
fail:
    ERR_clear_error();
    BIO_free(in);
    BIO_free(kin);
    if (e) supplied_free(e);
    return MOXY_ERROR;
}
