/*
 * tls.c -- TLS on a connection (see tls.h): the transport, the
 * handshake, what it negotiated.  A listener's certificates are in
 * tls_server.c, the client side toward origins in tls_client.c.
 *
 * The transport reads and writes the socket through a BIO of moxy's own:
 * it hands out first the bytes read before the handshake (after a PROXY
 * protocol header), then the socket's, and sends with MSG_NOSIGNAL.
 * Writes take up to 16 KiB at a time from the front of the buffer, so
 * that records are full-sized.
 */
#include "net/tls.h"
#include "net/tls_int.h"
#include "base/log.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TLS_WRITE_MAX 16384 /* bytes per SSL_write: one full record */

static BIO_METHOD *bio_method;

/* --- the BIO --- */

static int bio_read(BIO *b, char *out, size_t len, size_t *got)
{
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->first && evbuffer_get_length(t->first) > 0) {
        int n = evbuffer_remove(t->first, out, len);
        if (n > 0) {
            *got = (size_t)n;
            t->got_bytes = 1;
            return 1;
        }
    }
    ssize_t n = recv(t->fd, out, len, 0);
    if (n > 0) {
        *got = (size_t)n;
        t->got_bytes = 1;
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
        /* a full record from the first chunk as it is; smaller chunks (a
         * head before its body) are joined first.  n only grows while a
         * write waits, as SSL_write's retry asks. */
        struct evbuffer_iovec v;
        const unsigned char *p = evbuffer_peek(b, -1, NULL, &v, 1) >= 1 && v.iov_len >= n
                                     ? v.iov_base
                                     : evbuffer_pullup(b, (ev_ssize_t)n);
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
        moxy_tls_conn_free(t);
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

/* A TLS connection state for c on ctx, its BIO ours; NULL when out of memory. */
tls_conn_t *moxy_tls_conn_new(moxy_conn_t *c, SSL_CTX *ctx)
{
    tls_conn_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->fd = c->fd;
    t->ssl = SSL_new(ctx);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (!b) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    return t;
}

/* t becomes c's transport state. */
void moxy_tls_conn_attach(moxy_conn_t *c, tls_conn_t *t)
{
    c->t = &moxy_transport_tls;
    c->ctx = t;
}

/* Free t, not attached to a connection (its socket stays open). */
void moxy_tls_conn_free(tls_conn_t *t)
{
    SSL_free(t->ssl);
    if (t->first) evbuffer_free(t->first);
    free(t->subject);
    free(t->issuer);
    free(t->serial);
    free(t->fingerprint);
    free(t->sni);
    free(t->alpn);
    moxy_tls_hello_forget(t);
    free(t);
}

tls_conn_t *moxy_tls_conn_of(const SSL *ssl)
{
    return BIO_get_data(SSL_get_rbio(ssl));
}

int moxy_tls_accept(moxy_conn_t *c, moxy_tls_server_t *s, struct evbuffer *from, int hello)
{
    tls_conn_t *t = moxy_tls_conn_new(c, moxy_tls_server_first(s));
    if (!t) return MOXY_ERROR;
    t->server = s;
    t->hello_hook = hello != 0;
    SSL_set_msg_callback(t->ssl, moxy_tls_on_message);
    if (from && evbuffer_get_length(from) > 0) {
        if (!(t->first = evbuffer_new()) || evbuffer_add_buffer(t->first, from) != 0) {
            moxy_tls_conn_free(t);
            return MOXY_ERROR;
        }
    }
    SSL_set_accept_state(t->ssl);
    moxy_tls_conn_attach(c, t);
    return MOXY_OK;
}

const char *const moxy_tls_fail_names[MOXY_TLS_FAIL_N] = {
    "protocol", "cipher", "name", "http", "closed", "timeout", "refused", "idle", "other",
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
        free(t->sni); /* the hello's: moxy_tls_info reads OpenSSL's */
        free(t->alpn);
        t->sni = NULL;
        t->alpn = NULL;
        return MOXY_OK;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return MOXY_AGAIN;
    }
    if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) {
        *want = MOXY_TLS_WANT_HELLO;
        return MOXY_AGAIN;
    }
    unsigned long code = ERR_peek_last_error();
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    *kind = code ? fail_kind(ERR_GET_REASON(code)) : MOXY_TLS_FAIL_OTHER;
    if (t->hello_refused) {
        *kind = MOXY_TLS_FAIL_REFUSED;
        r = "refused by an on_tls_hello hook";
    }
    if (e == SSL_ERROR_SYSCALL) {
        r = errno ? strerror(errno) : "the peer closed";
        *kind = t->got_bytes ? MOXY_TLS_FAIL_CLOSED : MOXY_TLS_FAIL_IDLE;
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
    if (info->sni && !moxy_tls_host_ok(info->sni, strlen(info->sni))) info->sni = NULL; /* not a host name */
    info->version = SSL_get_version(t->ssl);
    info->cipher = SSL_get_cipher_name(t->ssl);
    info->alpn = alen == 8 && memcmp(alpn, "http/1.1", 8) == 0 ? "http/1.1"
                 : alen == 2 && memcmp(alpn, "h2", 2) == 0    ? "h2"
                                                              : NULL;
    info->resumed = SSL_session_reused(t->ssl);
    info->ja4 = t->ja4[0] ? t->ja4 : NULL;
    return 1;
}

int moxy_tls_alpn_h2(const moxy_conn_t *c)
{
    if (c->t != &moxy_transport_tls || !c->ctx || !((tls_conn_t *)c->ctx)->done) return 0;
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(((tls_conn_t *)c->ctx)->ssl, &alpn, &alen);
    return alen == 2 && memcmp(alpn, "h2", 2) == 0;
}

/* --- shared with tls_server.c --- */

/* Print OpenSSL's error queue's last reason after prefix on err. */
void moxy_tls_ssl_fail(FILE *err, const char *prefix)
{
    unsigned long code = ERR_peek_last_error();
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    fprintf(err, "%s%s%s\n", prefix, r ? ": " : "", r ? r : "");
    ERR_clear_error();
}

int moxy_tls_host_ok(const char *s, size_t n)
{
    if (n == 0 || n > MOXY_TLS_HOST_MAX || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                 (c == '.' && s[i - 1] != '.');
        if (!ok) return 0;
    }
    return 1;
}

size_t moxy_tls_host_lower(const char *s, size_t n, char out[MOXY_TLS_HOST_MAX + 1])
{
    if (n > 0 && s[n - 1] == '.') n--;
    if (!moxy_tls_host_ok(s, n)) return 0;
    for (size_t i = 0; i < n; i++) out[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    out[n] = '\0';
    return n;
}

int moxy_tls_kernel_offload(const char **why)
{
    /* the ULP's module answers an unconnected socket with ENOTCONN; without
     * it the kernel knows no "tls" (ENOENT) */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return 0;
    }
    int rc = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls"));
    int e = errno;
    close(fd);
    *why = rc == 0 || e == ENOTCONN ? "the tls upper layer protocol is there" : strerror(e);
    return rc == 0 || e == ENOTCONN;
}

int moxy_tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    MOXY_UNUSED(buf);
    MOXY_UNUSED(size);
    MOXY_UNUSED(rwflag);
    MOXY_UNUSED(u);
    return -1;
}

int moxy_tls_bio_ready(void)
{
    return bio_method_ready();
}
