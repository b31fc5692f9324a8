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

/* c (plain, its socket open) becomes a TLS server connection of s; the
 * bytes of from (read from the socket already) are moved in and read
 * first.  MOXY_OK, or MOXY_ERROR (out of memory; c unchanged). */
int moxy_tls_accept(moxy_conn_t *c, moxy_tls_server_t *s, struct evbuffer *from);

/* Go on with c's handshake: MOXY_OK when it is done; MOXY_AGAIN when it
 * waits for the socket to be readable (*want EV_READ) or writable
 * (EV_WRITE); MOXY_ERROR when it failed (*why: a reason for the log). */
int moxy_tls_handshake(moxy_conn_t *c, short *want, const char **why);

/* What a TLS connection negotiated (NULL / 0 for a plain one). */
typedef struct moxy_tls_info_s {
    const char *sni;     /* the name the client asked for, or NULL */
    const char *version; /* "TLSv1.3" */
    const char *cipher;  /* "TLS_AES_128_GCM_SHA256" */
    const char *alpn;    /* "http/1.1", or NULL */
    int resumed;         /* the session was resumed */
} moxy_tls_info_t;

/* 1 and *info filled when c is a TLS connection past its handshake. */
int moxy_tls_info(const moxy_conn_t *c, moxy_tls_info_t *info);

extern const moxy_transport_t moxy_transport_tls;

#endif
