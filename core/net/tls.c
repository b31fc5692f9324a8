/*
 * tls.c -- TLS on a connection, and a listener's certificates (see tls.h).
 *
 * The transport reads and writes the socket through a BIO of moxy's own:
 * it hands out first the bytes read before the handshake (after a PROXY
 * protocol header), then the socket's, and sends with MSG_NOSIGNAL.
 * Writes take up to 16 KiB at a time from the front of the buffer, so
 * that records are full-sized.
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
#include "base/log.h"

#include <errno.h>
#include <pthread.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TLS_WRITE_MAX 16384 /* bytes per SSL_write: one full record */
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
};

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

static BIO_METHOD *bio_method;
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
 * the ticket's key to decrypt (0: none, a full handshake; 2: an older
 * one, a new ticket is issued). */
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
                rc = i == 0 ? 1 : 2;
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

/* --- the BIO --- */

static int bio_read(BIO *b, char *out, size_t len, size_t *got)
{
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->first && evbuffer_get_length(t->first) > 0) {
        int n = evbuffer_remove(t->first, out, len);
        if (n > 0) {
            *got = (size_t)n;
            return 1;
        }
    }
    ssize_t n = recv(t->fd, out, len, 0);
    if (n > 0) {
        *got = (size_t)n;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_read(b);
    *got = 0;
    return n == 0 ? 0 : -1;
}

static int bio_write(BIO *b, const char *in, size_t len, size_t *put)
{
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = send(t->fd, in, len, MSG_NOSIGNAL);
    if (n >= 0) {
        *put = (size_t)n;
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(b);
    *put = 0;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    MOXY_UNUSED(b);
    MOXY_UNUSED(num);
    MOXY_UNUSED(ptr);
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* Made once, on the main thread (moxy_tls_server_new) before a worker uses it. */
static int bio_method_ready(void)
{
    if (bio_method) return MOXY_OK;
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "moxy socket");
    if (!m || !BIO_meth_set_read_ex(m, bio_read) || !BIO_meth_set_write_ex(m, bio_write) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return MOXY_ERROR;
    }
    bio_method = m;
    return MOXY_OK;
}

/* --- the transport --- */

/* errno for an SSL call's failure (rc its return); 0 at a clean end. */
static int ssl_errno(tls_conn_t *t, int rc)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify */
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return errno ? errno : 0; /* 0: the peer closed without close_notify */
    default:
        ERR_clear_error();
        t->failed = 1;
        return EPROTO;
    }
}

static ssize_t tls_recv(moxy_conn_t *c, void *p, size_t len)
{
    tls_conn_t *t = c->ctx;
    size_t got = 0;
    errno = 0;
    int rc = SSL_read_ex(t->ssl, p, len, &got);
    if (rc > 0) return (ssize_t)got;
    int e = ssl_errno(t, rc);
    if (e == 0) return 0;
    errno = e;
    return -1;
}

static ssize_t tls_read(moxy_conn_t *c, struct evbuffer *b, size_t max)
{
    struct evbuffer_iovec v;
    if (max == 0) max = 1;
    if (evbuffer_reserve_space(b, (ev_ssize_t)max, &v, 1) < 1) {
        errno = ENOMEM;
        return -1;
    }
    size_t room = v.iov_len < max ? v.iov_len : max;
    ssize_t n = tls_recv(c, v.iov_base, room);
    v.iov_len = n > 0 ? (size_t)n : 0;
    evbuffer_commit_space(b, &v, 1);
    return n;
}

static ssize_t tls_send(moxy_conn_t *c, const void *p, size_t len)
{
    tls_conn_t *t = c->ctx;
    size_t put = 0;
    errno = 0;
    int rc = SSL_write_ex(t->ssl, p, len, &put);
    if (rc > 0) return (ssize_t)put;
    int e = ssl_errno(t, rc);
    errno = e ? e : EPIPE;
    return -1;
}

static ssize_t tls_write(moxy_conn_t *c, struct evbuffer *b)
{
    ssize_t total = 0;
    for (;;) {
        size_t len = evbuffer_get_length(b);
        if (len == 0) return total;
        size_t n = len < TLS_WRITE_MAX ? len : TLS_WRITE_MAX;
        const unsigned char *p = evbuffer_pullup(b, (ev_ssize_t)n);
        if (!p) {
            errno = ENOMEM;
            return total ? total : -1;
        }
        ssize_t w = tls_send(c, p, n);
        if (w < 0) return total ? total : -1;
        evbuffer_drain(b, (size_t)w);
        total += w;
    }
}

static int tls_shutdown(moxy_conn_t *c)
{
    tls_conn_t *t = c->ctx;
    if (t->done) {
        SSL_shutdown(t->ssl); /* our close_notify; the peer's is not waited for */
        ERR_clear_error();
    }
    return shutdown(c->fd, SHUT_WR);
}

static size_t tls_pending(const moxy_conn_t *c)
{
    const tls_conn_t *t = c->ctx;
    if (t->first && evbuffer_get_length(t->first) > 0) return evbuffer_get_length(t->first);
    int n = SSL_pending(t->ssl);
    return n > 0 ? (size_t)n : (size_t)SSL_has_pending(t->ssl);
}

static void tls_close(moxy_conn_t *c)
{
    tls_conn_t *t = c->ctx;
    if (t) {
        /* OpenSSL drops the session of a connection freed before its
         * shutdown: one that ended well may be resumed */
        if (t->done && !t->failed) SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(t->ssl);
        if (t->first) evbuffer_free(t->first);
        free(t->subject);
        free(t->issuer);
        free(t->serial);
        free(t->fingerprint);
        free(t);
    }
    c->ctx = NULL;
    close(c->fd);
}

const moxy_transport_t moxy_transport_tls = {
    .name = "tls",
    .flags = 0, /* no sendfile: the bytes are encrypted here */
    .read = tls_read,
    .recv = tls_recv,
    .write = tls_write,
    .send = tls_send,
    .shutdown = tls_shutdown,
    .pending = tls_pending,
    .close = tls_close,
};

int moxy_tls_accept(moxy_conn_t *c, moxy_tls_server_t *s, struct evbuffer *from)
{
    tls_conn_t *t = calloc(1, sizeof(*t));
    if (!t) return MOXY_ERROR;
    t->fd = c->fd;
    t->ssl = SSL_new(s->groups[0].ctx);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (from && evbuffer_get_length(from) > 0) {
        t->first = evbuffer_new();
        if (t->first) evbuffer_add_buffer(t->first, from);
    }
    if (!b || (from && !t->first && evbuffer_get_length(from) > 0)) {
        BIO_free(b);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return MOXY_ERROR;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    SSL_set_accept_state(t->ssl);
    c->t = &moxy_transport_tls;
    c->ctx = t;
    return MOXY_OK;
}

const char *const moxy_tls_fail_names[MOXY_TLS_FAIL_N] = {
    "protocol", "cipher", "name", "http", "closed", "timeout", "other",
};

/* The MOXY_TLS_FAIL_* of OpenSSL's reason code r. */
static int fail_kind(int r)
{
    switch (r) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_VERSION_TOO_LOW:
        return MOXY_TLS_FAIL_PROTOCOL;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
        return MOXY_TLS_FAIL_CIPHER;
    case SSL_R_CALLBACK_FAILED: /* on_servername refused the name */
        return MOXY_TLS_FAIL_NAME;
    case SSL_R_HTTP_REQUEST:
        return MOXY_TLS_FAIL_HTTP;
    default:
        return MOXY_TLS_FAIL_OTHER;
    }
}

int moxy_tls_handshake(moxy_conn_t *c, short *want, const char **why, int *kind)
{
    tls_conn_t *t = c->ctx;
    errno = 0;
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        t->done = 1;
        if (t->first && evbuffer_get_length(t->first) == 0) {
            evbuffer_free(t->first);
            t->first = NULL;
        }
        return MOXY_OK;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return MOXY_AGAIN;
    }
    unsigned long code = ERR_peek_last_error();
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    *kind = code ? fail_kind(ERR_GET_REASON(code)) : MOXY_TLS_FAIL_OTHER;
    if (e == SSL_ERROR_SYSCALL) {
        r = errno ? strerror(errno) : "the peer closed";
        *kind = MOXY_TLS_FAIL_CLOSED;
    }
    long vr = SSL_get_verify_result(t->ssl);
    if (!SSL_is_server(t->ssl) && vr != X509_V_OK) r = X509_verify_cert_error_string(vr); /* why the origin's
                                                                                             certificate fails */
    *why = r ? r : "handshake failed";
    ERR_clear_error();
    return MOXY_ERROR;
}

/* A name as RFC 2253 text (malloc'ed), or NULL. */
static char *name_text(const X509_NAME *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return NULL;
    char *s = NULL;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        if (len >= 0) s = strndup(p, (size_t)len);
    }
    BIO_free(b);
    return s;
}

/* The client certificate's facts, read once per connection. */
static void peer_read(tls_conn_t *t)
{
    t->peer_read = 1;
    X509 *cert = SSL_get1_peer_certificate(t->ssl);
    if (!cert) return;
    t->has_cert = 1;
    t->verified = SSL_get_verify_result(t->ssl) == X509_V_OK;
    t->subject = name_text(X509_get_subject_name(cert));
    t->issuer = name_text(X509_get_issuer_name(cert));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    if (bn) {
        char *hex = BN_bn2hex(bn);
        if (hex) t->serial = strdup(hex);
        OPENSSL_free(hex);
        BN_free(bn);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (X509_digest(cert, EVP_sha256(), md, &mdlen) == 1 && (t->fingerprint = malloc(mdlen * 2 + 1))) {
        for (unsigned i = 0; i < mdlen; i++) sprintf(t->fingerprint + 2 * i, "%02x", md[i]);
    }
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm)) t->not_after = (long long)timegm(&tm);
    X509_free(cert);
    ERR_clear_error();
}

int moxy_tls_info(const moxy_conn_t *c, moxy_tls_info_t *info)
{
    if (c->t != &moxy_transport_tls || !c->ctx) return 0;
    tls_conn_t *t = c->ctx;
    if (!t->done) return 0;
    if (!t->peer_read && SSL_is_server(t->ssl)) peer_read(t);
    info->has_cert = t->has_cert;
    info->verified = t->verified;
    info->subject = t->subject;
    info->issuer = t->issuer;
    info->serial = t->serial;
    info->fingerprint = t->fingerprint;
    info->not_after = t->not_after;
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
    info->sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    info->version = SSL_get_version(t->ssl);
    info->cipher = SSL_get_cipher_name(t->ssl);
    info->alpn = alen == 8 && memcmp(alpn, "http/1.1", 8) == 0 ? "http/1.1" : NULL;
    info->resumed = SSL_session_reused(t->ssl);
    return 1;
}

/* --- TLS to origins --- */

static void ssl_fail(FILE *err, const char *prefix);

int moxy_tls_connect(moxy_conn_t *c, moxy_tls_client_t *cl, const char *sni, const char *host)
{
    SSL_CTX *ctx = (SSL_CTX *)cl;
    tls_conn_t *t = calloc(1, sizeof(*t));
    if (!t) return MOXY_ERROR;
    t->fd = c->fd;
    t->ssl = SSL_new(ctx);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    int ok = b != NULL;
    if (ok && sni) ok = SSL_set_tlsext_host_name(t->ssl, sni) == 1;
    if (ok && host && SSL_CTX_get_verify_mode(ctx) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* an IP address is checked against the certificate's IP names */
        ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1 || X509_VERIFY_PARAM_set1_host(vp, host, 0) == 1;
    }
    if (!ok) {
        BIO_free(b);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return MOXY_ERROR;
    }
    ERR_clear_error(); /* set1_ip_asc's refusal of a name */
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    SSL_set_connect_state(t->ssl);
    c->t = &moxy_transport_tls;
    c->ctx = t;
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
    if (bio_method_ready() != MOXY_OK) {
        fprintf(err, "%s: OpenSSL could not be set up\n", where);
        return NULL;
    }
    char msg[1200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ssl_fail(err, where);
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
            ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (oc->client_cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, oc->client_cert) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_cert: cannot read a certificate from %s", where, oc->client_cert);
            ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, oc->client_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_key: %s is not the key of %s", where, oc->client_key,
                     oc->client_cert);
            ssl_fail(err, msg);
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

/* --- a listener's certificates --- */

/* The server's context group serving name (lower case), or NULL. */
static SSL_CTX *server_find(const moxy_tls_server_t *s, const char *name)
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
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[256];
    size_t n = sni ? strlen(sni) : 0;
    SSL_CTX *ctx = NULL;
    if (n > 0 && n < sizeof(name)) {
        for (size_t i = 0; i < n; i++)
            name[i] = (char)((sni[i] >= 'A' && sni[i] <= 'Z') ? sni[i] + 32 : sni[i]);
        if (name[n - 1] == '.') n--; /* an absolute name */
        name[n] = '\0';
        ctx = server_find(s, name);
    }
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

/* ALPN: http/1.1 when the client offers it; nothing else is spoken yet. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned inlen, void *arg)
{
    MOXY_UNUSED(ssl);
    MOXY_UNUSED(arg);
    static const unsigned char h1[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, h1, sizeof(h1) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
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
    if (s->ring && s->ring != &process_ring) {
        OPENSSL_cleanse(s->ring->keys, sizeof(s->ring->keys));
        pthread_mutex_destroy(&s->ring->lock);
        free(s->ring);
    }
    free(s);
}

/* Print OpenSSL's error queue's last reason after prefix on err. */
static void ssl_fail(FILE *err, const char *prefix)
{
    unsigned long code = ERR_peek_last_error();
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    fprintf(err, "%s%s%s\n", prefix, r ? ": " : "", r ? r : "");
    ERR_clear_error();
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
        ssl_fail(err, where);
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
        ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set_ciphersuites(ctx, tc->ciphersuites ? tc->ciphersuites : TLS_SUITES_DEFAULT)) {
        snprintf(msg, sizeof(msg), "%s.ciphersuites: not a list of TLS 1.3 suites OpenSSL knows", where);
        ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set1_groups_list(ctx, tc->groups ? tc->groups : TLS_GROUPS_DEFAULT)) {
        snprintf(msg, sizeof(msg), "%s.groups: not a list of groups OpenSSL knows", where);
        ssl_fail(err, msg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* read whole records (and what follows them) in one recv, not the
     * header and the body apart: readers see it through moxy_conn_pending */
    SSL_CTX_set_read_ahead(ctx, 1);
    static const unsigned char sid[] = "moxy";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    if (tc->verify_clients && tc->client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(tc->client_ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, tc->client_ca, NULL) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_ca: cannot read CA certificates from %s", where, tc->client_ca);
            ssl_fail(err, msg);
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
    if (!g->ctx) {
        free(key);
        for (int k = 0; k < n; k++) free(names[k]);
        free(names);
        return NULL;
    }
    g->key = key;
    SSL_CTX_set_ex_data(g->ctx, ring_index, s->ring);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(g->ctx, on_ticket);
    s->ngroups++;
    for (int k = 0; k < n; k++) { /* a name two groups serve goes to the first */
        if (server_find(s, names[k]) && names[k][0] != '*') {
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
    X509 *cert = in ? PEM_read_bio_X509_AUX(in, NULL, NULL, NULL) : NULL;
    if (!cert) {
        snprintf(msg, sizeof(msg), "%s.cert: cannot read a certificate from %s", where, cc->cert);
        ssl_fail(err, msg);
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
        ssl_fail(err, msg);
        X509_free(cert);
        return MOXY_ERROR;
    }
    BIO *kin = BIO_new_file(cc->key, "r");
    EVP_PKEY *pkey = kin ? PEM_read_bio_PrivateKey(kin, NULL, NULL, NULL) : NULL;
    BIO_free(kin);
    if (!pkey) {
        snprintf(msg, sizeof(msg), "%s.key: cannot read a private key from %s", where, cc->key);
        ssl_fail(err, msg);
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
        ssl_fail(err, msg);
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
    if (bio_method_ready() != MOXY_OK ||
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
    char tls_where[512];
    snprintf(tls_where, sizeof(tls_where), "%s: %s.tls", conf->path, keys);
    s->ring = tc->ticket_keys ? ring_from_file(tc->ticket_keys, tls_where, err) : &process_ring;
    if (!s->ring) {
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
