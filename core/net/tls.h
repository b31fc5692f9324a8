/*
 * tls.h -- TLS (OpenSSL 3) on a connection: the second transport, and a
 * listener's server side (its certificates, chosen by the name a client
 * asks for).
 *
 * A listener's moxy_tls_server_t is made from its configuration when a
 * generation is loaded (main thread) and shared by every worker; a
 * connection started on it keeps what it needs even if its generation goes
 * first.  A connection becomes TLS with moxy_tls_accept once the PROXY
 * protocol header (if any) is read: the bytes read after that header are
 * handed over and read first.  Then moxy_tls_handshake is called whenever
 * the socket is ready, until it is done; after it, the connection reads
 * and writes through its transport as a plain one does.  Decrypted bytes a
 * read leaves in the transport raise no socket event: readers ask
 * moxy_conn_pending.
 */
#ifndef MOXY_TLS_H
#define MOXY_TLS_H

#include "base/config.h"
#include "net/conn.h"

#include <stdio.h>

typedef struct moxy_tls_server_s moxy_tls_server_t;

/* The server side of listener l (conf's file path for errors; keys: the
 * listener's configuration key, "listen[1]"): its certificates and keys
 * read, each key checked against its certificate, the names each one
 * serves read from it.  NULL with a message on err naming the file and
 * the key. */
moxy_tls_server_t *moxy_tls_server_new(const moxy_conf_t *conf, const moxy_listen_conf_t *l, const char *keys,
                                       FILE *err);

/* Take one more reference to s (a connection that will start TLS on it
 * once its PROXY protocol header is read) / let go of one (connections in
 * a handshake keep s). */
moxy_tls_server_t *moxy_tls_server_hold(moxy_tls_server_t *s);
void moxy_tls_server_free(moxy_tls_server_t *s);

/* Warnings about s's certificates (expired, or expiring within 14 days),
 * logged; the soonest expiry (seconds since the epoch). */
long long moxy_tls_server_check_expiry(const moxy_tls_server_t *s, const char *listener);

/* The soonest expiry of s's certificates (seconds since the epoch), quietly. */
long long moxy_tls_server_expiry(const moxy_tls_server_t *s);

/* c (plain, its socket open) becomes a TLS server connection of s; the
 * bytes of from (read from the socket already) are moved in and read
 * first.  hello: the handshake stops at the client's hello for hooks to
 * choose the certificate (MOXY_TLS_WANT_HELLO).  MOXY_OK, or MOXY_ERROR
 * (out of memory; c unchanged). */
int moxy_tls_accept(moxy_conn_t *c, moxy_tls_server_t *s, struct evbuffer *from, int hello);

/* Why a handshake failed, as counted (moxy_tls_handshake's *kind). */
enum {
    MOXY_TLS_FAIL_PROTOCOL = 0, /* no protocol version in common (TLS 1.0, 1.1) */
    MOXY_TLS_FAIL_CIPHER,       /* no cipher, group or signature in common */
    MOXY_TLS_FAIL_NAME,         /* a name no certificate serves, refused */
    MOXY_TLS_FAIL_HTTP,         /* plain HTTP sent to a TLS listener */
    MOXY_TLS_FAIL_CLOSED,       /* the client closed or reset in the middle */
    MOXY_TLS_FAIL_TIMEOUT,      /* not done within timeouts.client_header */
    MOXY_TLS_FAIL_REFUSED,      /* an on_tls_hello hook refused it, or failed */
    MOXY_TLS_FAIL_IDLE,         /* the client closed without sending a byte (a TCP probe) */
    MOXY_TLS_FAIL_OTHER,        /* anything else (a malformed message, ...) */
    MOXY_TLS_FAIL_N
};

/* The names of MOXY_TLS_FAIL_* ("protocol", ...), for metrics. */
extern const char *const moxy_tls_fail_names[MOXY_TLS_FAIL_N];

/* Go on with c's handshake: MOXY_OK when it is done; MOXY_AGAIN when it
 * waits for the socket to be readable (*want EV_READ) or writable
 * (EV_WRITE), or for the caller's hooks at the client's hello (*want
 * MOXY_TLS_WANT_HELLO: see below); MOXY_ERROR when it failed (*why: a
 * reason for the log, *kind: MOXY_TLS_FAIL_*). */
int moxy_tls_handshake(moxy_conn_t *c, short *want, const char **why, int *kind);

/* --- the client's hello, for hooks (a connection accepted with hello) ---
 *
 * When moxy_tls_handshake says MOXY_TLS_WANT_HELLO, the client's hello is
 * in and nothing is answered yet: the caller reads it (moxy_tls_hello),
 * may choose the certificate (moxy_tls_hello_use, _supply) or refuse the
 * handshake (moxy_tls_hello_refuse), at once or later, and then calls
 * moxy_tls_handshake again.  Without a choice, the name the client asks
 * for chooses, as without hooks. */
#define MOXY_TLS_WANT_HELLO 0x1000

typedef struct {
    const char *sni;            /* the name asked for (lower case), or NULL */
    const unsigned char *alpn;  /* the protocols offered, as on the wire
                                   (each a length byte then the name), or NULL */
    size_t alpn_len;
    const char *ja4;            /* the hello's JA4 fingerprint, or NULL */
} moxy_tls_hello_t;

/* 1 and *h filled while c's handshake waits at the client's hello; else 0. */
int moxy_tls_hello(const moxy_conn_t *c, moxy_tls_hello_t *h);

/* Present the certificates the listener loaded for name (len bytes; as
 * SNI chooses: exact, or a wildcard one label deep), else the one a hook
 * supplied for name earlier (kept by the listener, at most its
 * hello_cache).  MOXY_OK, or MOXY_DECLINED: none. */
int moxy_tls_hello_use(moxy_conn_t *c, const char *name, size_t len);

/* Present the certificate of cert (PEM: the certificate, then its chain)
 * with key (PEM, not encrypted), and keep it for name (len bytes; 0:
 * not kept) for later moxy_tls_hello_use.  MOXY_OK, or MOXY_ERROR with
 * the reason in err (not a certificate, not its key, too large). */
int moxy_tls_hello_supply(moxy_conn_t *c, const char *name, size_t len, const char *cert, size_t cert_len,
                          const char *key, size_t key_len, char *err, size_t errlen);

/* The handshake fails (a handshake_failure alert; counted as "refused"). */
void moxy_tls_hello_refuse(moxy_conn_t *c);

/* --- TLS to origins --- */

typedef struct moxy_tls_client_s moxy_tls_client_t;

/* The client side for a pool's tls (where: "FILE: upstreams.NAME.tls" for
 * errors): its CAs and client certificate read.  NULL with a message on
 * err. */
moxy_tls_client_t *moxy_tls_client_new(const moxy_tls_origin_conf_t *oc, const char *where, FILE *err);

/* The process's client side for calls that name no CA of their own
 * (moxy.http): the system's CAs, verifying (verify 1) or not.  Made on the
 * first call, kept for the process's life.  NULL when OpenSSL fails. */
moxy_tls_client_t *moxy_tls_client_default(int verify);

/* Let go of cl (connections made with it keep what they need). */
void moxy_tls_client_free(moxy_tls_client_t *cl);

/* c (plain, connected) becomes a TLS client connection of cl: it asks for
 * sni (NULL: no name is sent, e.g. for an IP address) and, when cl
 * verifies, checks that the certificate names host (a DNS name, or an IP
 * address as text).  It offers the session the same peer (address, sni,
 * host) gave last on cl, if any (tls_client.c).  Then moxy_tls_handshake until it is done.  MOXY_OK,
 * or MOXY_ERROR (out of memory; c unchanged). */
int moxy_tls_connect(moxy_conn_t *c, moxy_tls_client_t *cl, const char *sni, const char *host);

/* On an idle connection that became readable: 1 when it must be closed
 * (the peer sent data or closed), 0 when the transport only took a message
 * of its own (a TLS 1.3 session ticket) and the connection stays. */
int moxy_conn_idle_readable(moxy_conn_t *c);

/* What a TLS connection negotiated (NULL / 0 for a plain one). */
typedef struct moxy_tls_info_s {
    const char *sni;     /* the name the client asked for, or NULL */
    const char *version; /* "TLSv1.3" */
    const char *cipher;  /* "TLS_AES_128_GCM_SHA256" */
    const char *alpn;    /* "http/1.1", or NULL */
    int resumed;         /* the session was resumed */
    /* mutual TLS: the client's certificate (has_cert 0: none was sent) */
    int has_cert;
    int verified;        /* it chains to the listener's client_ca */
    const char *subject, *issuer; /* RFC 2253 */
    const char *serial;  /* hex */
    const char *fingerprint; /* SHA-256 of the DER, hex */
    long long not_after; /* seconds since the epoch */
    const char *ja4;     /* the client hello's JA4 fingerprint, or NULL (server side) */
} moxy_tls_info_t;

/* 1 when c is a TLS connection past its handshake that agreed on ALPN
 * "h2" (an HTTP/2 origin or health check must). */
int moxy_tls_alpn_h2(const moxy_conn_t *c);

/* 1 and *info filled when c is a TLS connection past its handshake. */
int moxy_tls_info(const moxy_conn_t *c, moxy_tls_info_t *info);

/* Whether this kernel offers TLS offload (kTLS: the "tls" TCP upper layer
 * protocol); *why says what the probe found.  moxy encrypts in OpenSSL
 * either way: this says what a sendfile over TLS could use. */
int moxy_tls_kernel_offload(const char **why);

extern const moxy_transport_t moxy_transport_tls;

#endif
