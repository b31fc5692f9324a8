/*
 * tls_server.c -- a TLS listener's side (see tls.h): its certificates,
 * chosen by the name a client asks for, ALPN, session tickets, OCSP
 * stapling and client certificates.
 *
 * A listener's certificates are grouped by the names they serve (read from
 * each certificate: its DNS subject alternative names, else its common
 * name): certificates with the same names (an RSA and an ECDSA one) share
 * one SSL_CTX, and OpenSSL picks the one the client can use.  A connection
 * starts on the first group's context; the name the client sends (SNI)
 * moves it to the context serving that name, exactly or by a wildcard of
 * one label.  A client without a name, or with one no certificate serves,
 * stays on the first group, or is refused (unrecognized_name) when the
 * listener says so.  The server object lives in the first context's extra
 * data and is freed with it: an SSL holds a reference to the context it
 * started on, so a handshake never outlives the names it looks up.
 */
#include "net/tls.h"
#include "net/tls_int.h"
#include "base/log.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TLS_TICKET_KEYS_MAX 16
#define TLS_TICKET_ROTATE_S 3600 /* the process's own ticket keys: a new one this often */
#define TLS_TICKET_KEEP 3        /* ... and this many kept (the newest encrypts) */
#define TLS_NAMES_MAX 1024  /* names one certificate may serve */

/* Mozilla's "intermediate" profile, ECDHE and AEAD only (TLS 1.2). */
#define TLS_CIPHERS_DEFAULT                                                                     \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_SUITES_DEFAULT "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS_DEFAULT "X25519:P-256"

typedef struct {
    char *name; /* lower case; "*.example.com" for a wildcard */
    SSL_CTX *ctx;
} tls_name_t;

typedef struct {
    SSL_CTX *ctx;
    char *key; /* its names, sorted, joined: certificates with the same key share ctx */
    X509 **certs;
    unsigned char **ocsp; /* [i]: the DER OCSP response stapled for certs[i], or NULL */
    long *ocsp_len;
    int ncerts;
} tls_group_t;

/* Session ticket keys: the first encrypts new tickets, all decrypt. */
typedef struct {
    unsigned char name[16], hmac[32], aes[32];
} tls_ticket_key_t;

typedef struct {
    pthread_mutex_t lock;
    tls_ticket_key_t keys[TLS_TICKET_KEYS_MAX];
    int n;
    int rotating;          /* the process's own ring: a new key every TLS_TICKET_ROTATE_S */
    long long rotated_ms;  /* when the newest was made (moxy_mono_ms) */
} tls_ticket_ring_t;

/* The process's own keys: shared by every listener, worker and generation
 * (a reload does not cost clients their sessions). */
static tls_ticket_ring_t process_ring = {.lock = PTHREAD_MUTEX_INITIALIZER, .rotating = 1};

struct moxy_tls_server_s {
    tls_ticket_ring_t *ring; /* &process_ring, or the listener's ticket_keys file's */
    tls_group_t *groups; /* groups[0].ctx: where connections start */
    int ngroups;
    tls_name_t *names;
    int nnames;
    int refuse_unknown;
    int h2;                 /* ALPN offers "h2" too (the listener's http2), preferred */
    struct tls_hello_cache_s *hello_cache; /* certificates hooks supplied (tls_hello.c) */
};

static int server_index = -1; /* SSL_CTX ex_data: the moxy_tls_server_t (its first context's, which frees it) */
static int ring_index = -1;   /* SSL_CTX ex_data: the server's ticket keys (every context of it) */

/* --- session tickets --- */

/* A new random key at the front of ring (the oldest beyond keep dropped).
 * MOXY_ERROR when the random generator fails. */
static int ring_add(tls_ticket_ring_t *ring, int keep)
{
    tls_ticket_key_t k;
    if (RAND_bytes((unsigned char *)&k, sizeof(k)) != 1) return MOXY_ERROR;
    int n = ring->n < keep ? ring->n + 1 : keep;
    memmove(&ring->keys[1], &ring->keys[0], (size_t)(n - 1) * sizeof(k));
    ring->keys[0] = k;
    ring->n = n;
    ring->rotated_ms = moxy_mono_ms();
    OPENSSL_cleanse(&k, sizeof(k));
    return MOXY_OK;
}

/* OpenSSL's ticket callback: encrypt with the newest key (enc 1), or find
 * the ticket's key to decrypt (0: none, a full handshake; 2: a new ticket
 * is issued: the key is an older one, or the connection is TLS 1.3, whose
 * clients use a ticket once (RFC 8446 C.4) and would otherwise make every
 * other connection a full handshake). */
static int on_ticket(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    tls_ticket_ring_t *ring = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ring_index);
    if (!ring) return 0;
    int rc = 0;
    pthread_mutex_lock(&ring->lock);
    if (ring->rotating && (ring->n == 0 || moxy_mono_ms() - ring->rotated_ms >= TLS_TICKET_ROTATE_S * 1000LL))
        ring_add(ring, TLS_TICKET_KEEP);
    const tls_ticket_key_t *k = NULL;
    if (enc) {
        if (ring->n > 0 && RAND_bytes(iv, EVP_MAX_IV_LENGTH) == 1) {
            k = &ring->keys[0];
            memcpy(name, k->name, 16);
            rc = 1;
        }
    } else {
        for (int i = 0; i < ring->n && !k; i++)
            if (memcmp(ring->keys[i].name, name, 16) == 0) {
                k = &ring->keys[i];
                rc = i == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
            }
    }
    tls_ticket_key_t key;
    if (k) key = *k;
    pthread_mutex_unlock(&ring->lock);
    if (!k) return 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof(key.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv)
                 : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv);
    ok = ok && EVP_MAC_CTX_set_params(hctx, params);
    OPENSSL_cleanse(&key, sizeof(key));
    return ok ? rc : -1;
}

/* The ring of a ticket_keys file (checked by config.lua: 80-byte keys). */
static tls_ticket_ring_t *ring_from_file(const char *path, const char *where, FILE *err)
{
    FILE *f = fopen(path, "rb");
    tls_ticket_ring_t *ring = calloc(1, sizeof(*ring));
    size_t n = 0;
    if (f && ring) n = fread(ring->keys, 1, sizeof(ring->keys) + 1, f);
    if (f) fclose(f);
    if (!ring || n == 0 || n % sizeof(tls_ticket_key_t) != 0 || n > sizeof(ring->keys)) {
        fprintf(err, "%s.ticket_keys: %s: expected 1 to %d keys of 80 bytes each\n", where, path,
                TLS_TICKET_KEYS_MAX);
        free(ring);
        return NULL;
    }
    ring->n = (int)(n / sizeof(tls_ticket_key_t));
    pthread_mutex_init(&ring->lock, NULL);
    return ring;
}

/* --- a listener's certificates --- */

SSL_CTX *moxy_tls_server_find(const moxy_tls_server_t *s, const char *name)
{
    for (int i = 0; i < s->nnames; i++)
        if (strcmp(s->names[i].name, name) == 0) return s->names[i].ctx;
    const char *dot = strchr(name, '.');
    if (!dot || !dot[1]) return NULL;
    for (int i = 0; i < s->nnames; i++) {
        const char *n = s->names[i].name;
        if (n[0] == '*' && n[1] == '.' && strcmp(n + 1, dot) == 0) return s->names[i].ctx;
    }
    return NULL;
}

/* SNI: move the connection to the certificates of the name it asked for. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    moxy_tls_server_t *s = arg;
    if (moxy_tls_conn_of(ssl)->hello_chose) return SSL_TLSEXT_ERR_OK; /* a hook chose */
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[MOXY_TLS_HOST_MAX + 1];
    SSL_CTX *ctx = sni && moxy_tls_host_lower(sni, strlen(sni), name) ? moxy_tls_server_find(s, name) : NULL;
    if (!ctx) {
        if (!s->refuse_unknown) return SSL_TLSEXT_ERR_OK;
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (ctx != SSL_get_SSL_CTX(ssl) && !SSL_set_SSL_CTX(ssl, ctx)) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ALPN: "h2" first when the listener speaks HTTP/2 (arg: its server), then
 * "http/1.1"; a client that offers neither gets no ALPN answer. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned inlen, void *arg)
{
    MOXY_UNUSED(ssl);
    const moxy_tls_server_t *s = arg;
    static const unsigned char h2[] = "\x02h2\x08http/1.1";
    const unsigned char *ours = s && s->h2 ? h2 : h2 + 3;
    unsigned ourlen = (unsigned)(s && s->h2 ? sizeof(h2) - 1 : sizeof(h2) - 4);
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void server_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    MOXY_UNUSED(parent);
    MOXY_UNUSED(ad);
    MOXY_UNUSED(idx);
    MOXY_UNUSED(argl);
    MOXY_UNUSED(argp);
    moxy_tls_server_t *s = ptr;
    if (!s) return;
    for (int i = 0; i < s->nnames; i++) free(s->names[i].name);
    for (int i = 0; i < s->ngroups; i++) {
        tls_group_t *g = &s->groups[i];
        if (i > 0) SSL_CTX_free(g->ctx); /* the first is being freed: it holds s */
        for (int k = 0; k < g->ncerts; k++) {
            X509_free(g->certs[k]);
            free(g->ocsp[k]);
        }
        free(g->certs);
        free(g->ocsp);
        free(g->ocsp_len);
        free(g->key);
    }
    free(s->names);
    free(s->groups);
    if (s->hello_cache) moxy_tls_hello_cache_free(s->hello_cache);
    if (s->ring && s->ring != &process_ring) {
        OPENSSL_cleanse(s->ring->keys, sizeof(s->ring->keys));
        pthread_mutex_destroy(&s->ring->lock);
        free(s->ring);
    }
    free(s);
}


/* verify_clients = "optional": a certificate that does not verify lets the
 * handshake go on (txn.client.tls.verified is false). */
static int verify_optional(int ok, X509_STORE_CTX *x)
{
    MOXY_UNUSED(ok);
    MOXY_UNUSED(x);
    return 1;
}

/* A context configured as tc says (protocols, ciphers, groups, options). */
static SSL_CTX *ctx_new(const moxy_tls_conf_t *tc, const char *where, FILE *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        moxy_tls_ssl_fail(err, where);
        return NULL;
    }
    char msg[1024];
    int minv = tc->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    int maxv = tc->max_version == 12 ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_max_proto_version(ctx, maxv);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* (OpenSSL 3 refuses a client's renegotiation unless told otherwise) */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (!SSL_CTX_set_cipher_list(ctx, tc->ciphers ? tc->ciphers : TLS_CIPHERS_DEFAULT)) {
        snprintf(msg, sizeof(msg), "%s.ciphers: no cipher OpenSSL knows", where);
        moxy_tls_ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set_ciphersuites(ctx, tc->ciphersuites ? tc->ciphersuites : TLS_SUITES_DEFAULT)) {
        snprintf(msg, sizeof(msg), "%s.ciphersuites: not a list of TLS 1.3 suites OpenSSL knows", where);
        moxy_tls_ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set1_groups_list(ctx, tc->groups ? tc->groups : TLS_GROUPS_DEFAULT)) {
        snprintf(msg, sizeof(msg), "%s.groups: not a list of groups OpenSSL knows", where);
        moxy_tls_ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* read whole records (and what follows them) in one recv, not the
     * header and the body apart: readers see it through moxy_conn_pending */
    SSL_CTX_set_read_ahead(ctx, 1);
    static const unsigned char sid[] = "moxy";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    if (tc->verify_clients && tc->client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(tc->client_ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, tc->client_ca, NULL) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_ca: cannot read CA certificates from %s", where, tc->client_ca);
            moxy_tls_ssl_fail(err, msg);
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* the CAs a client is told to choose from */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (tc->verify_clients == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           tc->verify_clients == 2 ? NULL : verify_optional);
        SSL_CTX_set_verify_depth(ctx, tc->verify_depth > 0 ? tc->verify_depth : 3);
    }
    return ctx;
}

/* The names cert serves, lower case, sorted, in *names (*n of them). */
static int cert_names(X509 *cert, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int nsans = sans ? sk_GENERAL_NAME_num(sans) : 0;
    char **out = calloc((size_t)(nsans > 0 ? nsans : 1), sizeof(char *));
    if (!out) goto err;
    for (int i = 0; i < nsans && *n < TLS_NAMES_MAX; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS) continue;
        const unsigned char *d = ASN1_STRING_get0_data(gn->d.dNSName);
        int len = ASN1_STRING_length(gn->d.dNSName);
        if (len <= 0 || len > 253 || memchr(d, 0, (size_t)len)) continue;
        char *s = strndup((const char *)d, (size_t)len);
        if (!s) goto err;
        for (char *q = s; *q; q++)
            if (*q >= 'A' && *q <= 'Z') *q = (char)(*q + 32);
        out[(*n)++] = s;
    }
    if (*n == 0) { /* no DNS name: the subject's common name */
        char cn[256];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) > 0) {
            for (char *q = cn; *q; q++)
                if (*q >= 'A' && *q <= 'Z') *q = (char)(*q + 32);
            if (!(out[0] = strdup(cn))) goto err;
            *n = 1;
        }
    }
    GENERAL_NAMES_free(sans);
    for (int i = 1; i < *n; i++) /* sort (few names) */
        for (int k = i; k > 0 && strcmp(out[k - 1], out[k]) > 0; k--) {
            char *x = out[k];
            out[k] = out[k - 1];
            out[k - 1] = x;
        }
    *names = out;
    return MOXY_OK;
err:
    GENERAL_NAMES_free(sans);
    if (out)
        for (int i = 0; i < *n; i++) free(out[i]);
    free(out);
    *n = 0;
    return MOXY_ERROR;
}

/* The group of s for the certificate with names (taking them), made when
 * none serves exactly these names; NULL with a message on err. */
static tls_group_t *group_for(moxy_tls_server_t *s, const moxy_tls_conf_t *tc, char **names, int n,
                              const char *where, const char *tls_where, FILE *err)
{
    size_t klen = 1;
    for (int i = 0; i < n; i++) klen += strlen(names[i]) + 1;
    char *key = malloc(klen), *p = key;
    if (!key) goto oom;
    for (int i = 0; i < n; i++) p += sprintf(p, "%s ", names[i]);
    *p = '\0';
    for (int i = 0; i < s->ngroups; i++) {
        if (strcmp(s->groups[i].key, key) == 0) {
            free(key);
            for (int k = 0; k < n; k++) free(names[k]);
            free(names);
            return &s->groups[i];
        }
    }
    tls_group_t *gs = realloc(s->groups, (size_t)(s->ngroups + 1) * sizeof(*gs));
    if (!gs) goto oom;
    s->groups = gs;
    tls_name_t *ns = realloc(s->names, (size_t)(s->nnames + n + 1) * sizeof(*ns));
    if (!ns) goto oom;
    s->names = ns;
    tls_group_t *g = &s->groups[s->ngroups];
    memset(g, 0, sizeof(*g));
    g->ctx = ctx_new(tc, tls_where, err);
    if (g->ctx) SSL_CTX_set_alpn_select_cb(g->ctx, on_alpn, s);
    if (!g->ctx) {
        free(key);
        for (int k = 0; k < n; k++) free(names[k]);
        free(names);
        return NULL;
    }
    g->key = key;
    SSL_CTX_set_ex_data(g->ctx, ring_index, s->ring);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(g->ctx, on_ticket);
    SSL_CTX_set_client_hello_cb(g->ctx, moxy_tls_on_client_hello, NULL);
    s->ngroups++;
    for (int k = 0; k < n; k++) { /* a name two groups serve goes to the first */
        if (moxy_tls_server_find(s, names[k]) && names[k][0] != '*') {
            free(names[k]);
            continue;
        }
        s->names[s->nnames].name = names[k];
        s->names[s->nnames].ctx = g->ctx;
        s->nnames++;
    }
    free(names);
    return g;
oom:
    fprintf(err, "%s: out of memory\n", where);
    free(key);
    for (int k = 0; k < n; k++) free(names[k]);
    free(names);
    return NULL;
}

/* OCSP stapling: the response kept for the certificate the connection
 * presents, to a client that asks (status_request). */
static int on_status(SSL *ssl, void *arg)
{
    const moxy_tls_server_t *s = arg;
    X509 *cert = SSL_get_certificate(ssl);
    for (int i = 0; i < s->ngroups; i++) {
        const tls_group_t *g = &s->groups[i];
        for (int k = 0; k < g->ncerts; k++) {
            if (g->certs[k] != cert || !g->ocsp[k]) continue;
            unsigned char *copy = OPENSSL_malloc((size_t)g->ocsp_len[k]); /* the SSL frees it */
            if (!copy) return SSL_TLSEXT_ERR_NOACK;
            memcpy(copy, g->ocsp[k], (size_t)g->ocsp_len[k]);
            SSL_set_tlsext_status_ocsp_resp(ssl, copy, g->ocsp_len[k]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* A DER OCSP response file, checked to be one that says "successful". */
static int ocsp_read(const char *path, unsigned char **der, long *len, const char *where, FILE *err)
{
    FILE *f = fopen(path, "rb");
    unsigned char buf[65536];
    size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
    if (f) fclose(f);
    const unsigned char *p = buf;
    OCSP_RESPONSE *resp = n > 0 && n < sizeof(buf) ? d2i_OCSP_RESPONSE(NULL, &p, (long)n) : NULL;
    if (!resp || OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        fprintf(err, "%s.ocsp: %s is not a successful OCSP response (DER, at most 64 KiB)\n", where, path);
        OCSP_RESPONSE_free(resp);
        ERR_clear_error();
        return MOXY_ERROR;
    }
    OCSP_RESPONSE_free(resp);
    if (!(*der = malloc(n))) {
        fprintf(err, "%s: out of memory\n", where);
        return MOXY_ERROR;
    }
    memcpy(*der, buf, n);
    *len = (long)n;
    return MOXY_OK;
}

/* Load certificate i of tc into s. */
static int load_cert(moxy_tls_server_t *s, const moxy_tls_conf_t *tc, int i, const char *tls_where, FILE *err)
{
    const moxy_tls_cert_conf_t *cc = &tc->certs[i];
    char where[600], msg[1200];
    snprintf(where, sizeof(where), "%s.certificates[%d]", tls_where, i + 1);
    /* the chain: the first certificate is the server's */
    BIO *in = BIO_new_file(cc->cert, "r");
    X509 *cert = in ? PEM_read_bio_X509_AUX(in, NULL, moxy_tls_no_passphrase, NULL) : NULL;
    if (!cert) {
        snprintf(msg, sizeof(msg), "%s.cert: cannot read a certificate from %s", where, cc->cert);
        moxy_tls_ssl_fail(err, msg);
        BIO_free(in);
        return MOXY_ERROR;
    }
    char **names;
    int n;
    if (cert_names(cert, &names, &n) != MOXY_OK || n == 0) {
        fprintf(err, "%s.cert: %s names no host (no DNS subject alternative name, no common name)\n", where,
                cc->cert);
        X509_free(cert);
        BIO_free(in);
        return MOXY_ERROR;
    }
    tls_group_t *g = group_for(s, tc, names, n, where, tls_where, err);
    if (!g) {
        X509_free(cert);
        BIO_free(in);
        return MOXY_ERROR;
    }
    int ok = SSL_CTX_use_certificate(g->ctx, cert) == 1;
    X509 *ca;
    while (ok && (ca = PEM_read_bio_X509(in, NULL, NULL, NULL))) {
        if (!SSL_CTX_add0_chain_cert(g->ctx, ca)) {
            X509_free(ca);
            ok = 0;
        }
    }
    BIO_free(in);
    if (ok) ERR_clear_error(); /* the end of the file */
    if (!ok) {
        snprintf(msg, sizeof(msg), "%s.cert: %s", where, cc->cert);
        moxy_tls_ssl_fail(err, msg);
        X509_free(cert);
        return MOXY_ERROR;
    }
    BIO *kin = BIO_new_file(cc->key, "r");
    EVP_PKEY *pkey = kin ? PEM_read_bio_PrivateKey(kin, NULL, moxy_tls_no_passphrase, NULL) : NULL;
    BIO_free(kin);
    if (!pkey) {
        snprintf(msg, sizeof(msg), "%s.key: cannot read a private key from %s", where, cc->key);
        moxy_tls_ssl_fail(err, msg);
        X509_free(cert);
        return MOXY_ERROR;
    }
    if (X509_check_private_key(cert, pkey) != 1) {
        fprintf(err, "%s.key: %s does not match the certificate %s\n", where, cc->key, cc->cert);
        ERR_clear_error();
        EVP_PKEY_free(pkey);
        X509_free(cert);
        return MOXY_ERROR;
    }
    ok = SSL_CTX_use_PrivateKey(g->ctx, pkey) == 1;
    EVP_PKEY_free(pkey);
    if (!ok) {
        snprintf(msg, sizeof(msg), "%s.key: %s", where, cc->key);
        moxy_tls_ssl_fail(err, msg);
        X509_free(cert);
        return MOXY_ERROR;
    }
    unsigned char *der = NULL;
    long dlen = 0;
    if (cc->ocsp && ocsp_read(cc->ocsp, &der, &dlen, where, err) != MOXY_OK) {
        X509_free(cert);
        return MOXY_ERROR;
    }
    X509 **cs = realloc(g->certs, (size_t)(g->ncerts + 1) * sizeof(*cs));
    if (cs) g->certs = cs;
    unsigned char **os = cs ? realloc(g->ocsp, (size_t)(g->ncerts + 1) * sizeof(*os)) : NULL;
    if (os) g->ocsp = os;
    long *ls = os ? realloc(g->ocsp_len, (size_t)(g->ncerts + 1) * sizeof(*ls)) : NULL;
    if (!ls) {
        fprintf(err, "%s: out of memory\n", where);
        free(der);
        X509_free(cert);
        return MOXY_ERROR;
    }
    g->ocsp_len = ls;
    g->certs[g->ncerts] = cert;
    g->ocsp[g->ncerts] = der;
    g->ocsp_len[g->ncerts] = dlen;
    g->ncerts++;
    if (der) {
        SSL_CTX_set_tlsext_status_cb(g->ctx, on_status);
        SSL_CTX_set_tlsext_status_arg(g->ctx, s);
    }
    return MOXY_OK;
}

moxy_tls_server_t *moxy_tls_server_new(const moxy_conf_t *conf, const moxy_listen_conf_t *l, const char *keys,
                                       FILE *err)
{
    const moxy_tls_conf_t *tc = l->tls;
    if (moxy_tls_bio_ready() != MOXY_OK ||
        (server_index < 0 &&
         (server_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, server_free_cb)) < 0) ||
        (ring_index < 0 && (ring_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL)) < 0)) {
        fprintf(err, "%s: %s.tls: OpenSSL could not be set up\n", conf->path, keys);
        return NULL;
    }
    moxy_tls_server_t *s = calloc(1, sizeof(*s));
    if (!s) {
        fprintf(err, "%s: %s.tls: out of memory\n", conf->path, keys);
        return NULL;
    }
    s->refuse_unknown = tc->refuse_unknown;
    s->h2 = l->http2;
    if (!(s->hello_cache = moxy_tls_hello_cache_new(tc->hello_cache))) {
        fprintf(err, "%s: %s.tls: out of memory\n", conf->path, keys);
        free(s);
        return NULL;
    }
    char tls_where[512];
    snprintf(tls_where, sizeof(tls_where), "%s: %s.tls", conf->path, keys);
    s->ring = tc->ticket_keys ? ring_from_file(tc->ticket_keys, tls_where, err) : &process_ring;
    if (!s->ring) {
        moxy_tls_hello_cache_free(s->hello_cache);
        free(s);
        return NULL;
    }
    for (int i = 0; i < tc->ncerts; i++) {
        if (load_cert(s, tc, i, tls_where, err) != MOXY_OK) goto err;
    }
    SSL_CTX *first = s->groups[0].ctx;
    SSL_CTX_set_tlsext_servername_callback(first, on_servername);
    SSL_CTX_set_tlsext_servername_arg(first, s);
    if (!SSL_CTX_set_ex_data(first, server_index, s)) {
        fprintf(err, "%s: %s.tls: out of memory\n", conf->path, keys);
        goto err;
    }
    return s;
err:
    if (s->ngroups > 0 && SSL_CTX_get_ex_data(s->groups[0].ctx, server_index) == s) {
        SSL_CTX_free(s->groups[0].ctx); /* frees s */
        return NULL;
    }
    if (s->ngroups > 0) SSL_CTX_free(s->groups[0].ctx);
    server_free_cb(NULL, s, NULL, 0, 0, NULL);
    return NULL;
}

moxy_tls_server_t *moxy_tls_server_hold(moxy_tls_server_t *s)
{
    SSL_CTX_up_ref(s->groups[0].ctx);
    return s;
}

void moxy_tls_server_free(moxy_tls_server_t *s)
{
    if (s) SSL_CTX_free(s->groups[0].ctx); /* s goes with it, once no SSL holds it */
}

long long moxy_tls_server_expiry(const moxy_tls_server_t *s)
{
    long long soonest = 0;
    for (int i = 0; i < s->ngroups; i++) {
        for (int k = 0; k < s->groups[i].ncerts; k++) {
            struct tm tm;
            if (!ASN1_TIME_to_tm(X509_get0_notAfter(s->groups[i].certs[k]), &tm)) continue;
            long long t = (long long)timegm(&tm);
            if (!soonest || t < soonest) soonest = t;
        }
    }
    return soonest;
}

long long moxy_tls_server_check_expiry(const moxy_tls_server_t *s, const char *listener)
{
    long long soonest = 0;
    time_t now = time(NULL);
    for (int i = 0; i < s->ngroups; i++) {
        for (int k = 0; k < s->groups[i].ncerts; k++) {
            X509 *cert = s->groups[i].certs[k];
            const ASN1_TIME *na = X509_get0_notAfter(cert);
            struct tm tm;
            if (!ASN1_TIME_to_tm(na, &tm)) continue;
            long long t = (long long)timegm(&tm);
            if (!soonest || t < soonest) soonest = t;
            char date[32];
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm);
            char cn[256] = "?";
            X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
            if (t <= (long long)now)
                moxy_log_warn("listener %s: the certificate for %s EXPIRED on %s", listener, cn, date);
            else if (t - (long long)now < 14 * 86400)
                moxy_log_warn("listener %s: the certificate for %s expires on %s (in %lld days)", listener, cn, date,
                              (t - (long long)now) / 86400);
        }
    }
    return soonest;
}

SSL_CTX *moxy_tls_server_first(const moxy_tls_server_t *s)
{
    return s->groups[0].ctx;
}

struct tls_hello_cache_s *moxy_tls_server_hello_cache(const moxy_tls_server_t *s)
{
    return s->hello_cache;
}
