/*
 * tls_hello_fuzz.c -- what a client sends first to a TLS listener, through
 * moxy's side of it (net/tls.c): the transport's BIO (bytes read before the
 * handshake handed over first), certificate choice by SNI (on_servername:
 * exact names, wildcards, refuse_unknown), ALPN (on_alpn), session tickets
 * (on_ticket), the handshake's failure kinds, moxy_tls_info.
 *
 * Input:
 *   byte 0    bit 0: the listener refuses unknown names; bit 1: the
 *             bytes come after the accept (handed over) rather than from
 *             the socket; bit 2: mutual TLS asked for (optional); bit 3:
 *             the handshake stops at the hello for hooks (tls_hello.c),
 *             which then (bits 4-5) do nothing, use b.test's
 *             certificates, supply b's certificate and key, or refuse
 *   the rest  the client's bytes (a ClientHello and what follows it), then
 *             the client closes its side
 * The listener has two certificates made at start (ECDSA P-256 for a.test
 * and *.w.test, the first; RSA 2048 for b.test).
 *
 * Invariants (besides ASan, UBSan and LSan):
 *  - the handshake ends (done or failed) within a bounded number of steps
 *    once the client's bytes are used up, never waits forever;
 *  - a failure has a reason and a MOXY_TLS_FAIL_* kind in range;
 *  - a finished handshake's moxy_tls_info has a version and a cipher;
 *  - at the hello stop, the name is lower case printable ASCII of at most
 *    253 bytes, the ALPN list is well-formed, a JA4 is 36 characters.
 * A violation aborts.
 */
#include "fuzz.h"
#include "net/tls.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static moxy_tls_server_t *servers[8]; /* by flags & 7 */
static char *b_pem, *b_key;           /* b's certificate and key, for supply */
static size_t b_pem_len, b_key_len;

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    static char buf[16384];
    if (!f) abort();
    *len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    char *p = malloc(*len);
    if (!p) abort();
    memcpy(p, buf, *len);
    return p;
}

/* The hooks' part at the hello stop: check what the hello says, decide. */
static void at_hello(moxy_conn_t *c, unsigned what)
{
    moxy_tls_hello_t h;
    if (!moxy_tls_hello(c, &h)) abort();
    if (h.sni) {
        size_t n = strlen(h.sni);
        if (n == 0 || n > 253) abort();
        for (size_t i = 0; i < n; i++)
            if (h.sni[i] <= 0x20 || h.sni[i] >= 0x7f || (h.sni[i] >= 'A' && h.sni[i] <= 'Z')) abort();
    }
    for (size_t i = 0; i < h.alpn_len; i += 1 + h.alpn[i])
        if (h.alpn[i] == 0 || h.alpn[i] > h.alpn_len - i - 1) abort();
    if (h.ja4 && strlen(h.ja4) != 36) abort();
    char err[256];
    switch (what & 3) {
    case 1:
        if (moxy_tls_hello_use(c, "B.test", 6) != MOXY_OK) abort();
        break;
    case 2:
        if (moxy_tls_hello_supply(c, "s.test", 6, b_pem, b_pem_len, b_key, b_key_len, err, sizeof(err)) != MOXY_OK)
            abort();
        if (moxy_tls_hello_use(c, "s.test", 6) != MOXY_OK) abort();
        break;
    case 3:
        moxy_tls_hello_refuse(c);
        break;
    }
}

/* A self-signed certificate for names, its key of kind ("EC" or "RSA"), in dir. */
static void make_cert(const char *dir, const char *base, const char *kind, const char *san)
{
    EVP_PKEY *pkey = strcmp(kind, "EC") == 0 ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
    X509 *x = X509_new();
    if (!pkey || !x) abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
    X509_set_pubkey(x, pkey);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)base, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (!ext || !X509_add_ext(x, ext, -1) || !X509_sign(x, pkey, EVP_sha256())) abort();
    X509_EXTENSION_free(ext);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.pem", dir, base);
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_X509(f, x)) abort();
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.key", dir, base);
    f = fopen(path, "w");
    if (!f || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL)) abort();
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

static void setup(void)
{
    static char dir[] = "/tmp/moxy-tls-fuzz.XXXXXX";
    if (!mkdtemp(dir)) abort();
    make_cert(dir, "a", "EC", "DNS:a.test,DNS:*.w.test");
    make_cert(dir, "b", "RSA", "DNS:b.test");
    static char ap[600], ak[600], bp[600], bk[600];
    snprintf(ap, sizeof(ap), "%s/a.pem", dir);
    snprintf(ak, sizeof(ak), "%s/a.key", dir);
    snprintf(bp, sizeof(bp), "%s/b.pem", dir);
    snprintf(bk, sizeof(bk), "%s/b.key", dir);
    b_pem = slurp(bp, &b_pem_len);
    b_key = slurp(bk, &b_key_len);
    static moxy_tls_cert_conf_t certs[2];
    certs[0] = (moxy_tls_cert_conf_t){.cert = ap, .key = ak};
    certs[1] = (moxy_tls_cert_conf_t){.cert = bp, .key = bk};
    for (int v = 0; v < 8; v++) {
        static moxy_tls_conf_t tcs[8];
        static moxy_listen_conf_t ls[8];
        static moxy_conf_t conf;
        conf.path = "fuzz.lua";
        tcs[v] = (moxy_tls_conf_t){.certs = certs, .ncerts = 2, .refuse_unknown = v & 1, .min_version = 12,
                                   .max_version = 13, .client_ca = (v & 4) ? ap : NULL,
                                   .verify_clients = (v & 4) ? 1 : 0, .verify_depth = 3, .hello_cache = 4};
        ls[v].tls = &tcs[v];
        servers[v] = moxy_tls_server_new(&conf, &ls[v], "listen[1]", stderr);
        if (!servers[v]) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    unsigned flags = fuzz_take_byte(&data, &size);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) abort();
    struct evbuffer *first = evbuffer_new();
    if (flags & 2) {
        evbuffer_add(first, data, size);
    } else if (size > 0 && write(sv[1], data, size) != (ssize_t)size) {
        /* more than the socket buffer: hand the rest over instead */
        evbuffer_add(first, data, size);
    }
    shutdown(sv[1], SHUT_WR); /* the client has said all it will */
    moxy_conn_t c;
    moxy_conn_plain(&c, sv[0]);
    if (moxy_tls_accept(&c, servers[flags & 7], first, flags & 8) != MOXY_OK) abort();
    int rc = MOXY_AGAIN, steps = 0;
    short want = 0;
    const char *why = NULL;
    int kind = -1;
    while (rc == MOXY_AGAIN && steps++ < 64) {
        rc = moxy_tls_handshake(&c, &want, &why, &kind);
        if (rc == MOXY_AGAIN && want == MOXY_TLS_WANT_HELLO) {
            if (!(flags & 8)) abort(); /* stopped without hooks */
            at_hello(&c, flags >> 4);
            continue;
        }
        if (rc == MOXY_AGAIN && want == EV_READ) {
            /* nothing more will come (the client shut down): one more try sees the end */
            rc = moxy_tls_handshake(&c, &want, &why, &kind);
            if (rc == MOXY_AGAIN && want == EV_READ) abort(); /* waits for bytes that cannot come */
        }
        /* EV_WRITE: the socket pair's buffer was full; the peer never reads:
         * drain it so the next step can write */
        char sink[65536];
        while (read(sv[1], sink, sizeof(sink)) > 0) {
        }
    }
    if (rc == MOXY_AGAIN) abort();
    if (rc == MOXY_ERROR && (!why || kind < 0 || kind >= MOXY_TLS_FAIL_N)) abort();
    if (rc == MOXY_OK) {
        moxy_tls_info_t info;
        if (!moxy_tls_info(&c, &info) || !info.version || !info.cipher) abort();
    }
    moxy_conn_close(&c);
    close(sv[1]);
    evbuffer_free(first);
    return 0;
}
