/*
 * http2.h -- HTTP/2 toward clients (RFC 9113, on libnghttp2): a
 * connection's streams are requests with the same phases, cache, upstreams
 * and logs as HTTP/1's, behind the same stream seam (http-t.h's
 * moxy_stream_ops_t).
 *
 * HTTP/1 (http1/) accepts every connection, reads its PROXY header and
 * runs its TLS handshake; it hands the connection here when ALPN chose
 * "h2", or when a cleartext connection on a listener with http2 starts
 * with the HTTP/2 preface (prior knowledge).
 */
#ifndef MOXY_HTTP2_H
#define MOXY_HTTP2_H

#include "http/http-t.h"

struct evbuffer;

/* The HTTP/2 connection preface a client sends first (RFC 9113 3.4). */
#define MOXY_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define MOXY_H2_PREFACE_LEN 24

/* What HTTP/1 hands over with a connection. */
typedef struct {
    int listen_index;             /* its listener (the current generation's conf->listens[]) */
    const moxy_client_addr_t *addr;
    unsigned trusted : 1;         /* its peer is in trusted_proxies */
    unsigned local_peer : 1;      /* its peer is on this host */
    moxy_conn_slot_t climit;      /* its place under limits.connections_per_client, moved to
                                     HTTP/2 (given back when the connection goes) */
} moxy_h2_from_t;

/* Serve conn (its transport ready: TLS done, or plain) as an HTTP/2
 * connection of worker w: conn and from->climit's place are moved (the
 * caller's copies are no longer used; the place is given back when the
 * connection goes, or at once on failure), in holds the bytes already read (the preface among them; it is
 * emptied, and stays the caller's).  Counted in w's connections from then
 * on; on failure conn is closed.  MOXY_OK or MOXY_ERROR. */
int moxy_h2_accept(moxy_worker_t *w, moxy_conn_t *conn, const moxy_h2_from_t *from, struct evbuffer *in);

/* The number of bytes of in that match the preface's start: MOXY_H2_PREFACE_LEN when in starts with the
 * whole preface, less when it stops short of it, and -1 when it is not the preface. */
int moxy_h2_preface_match(struct evbuffer *in);

/* For any nghttp2 session (toward clients here, toward origins in proxy/):
 * make its frames (its send callback appends them to out, up to the high
 * watermark) and write them to conn while the socket takes them.  MOXY_OK
 * with *left the bytes that wait in out for the socket (0: all went, and
 * nghttp2 has nothing more to send), or MOXY_ERROR with *why (nghttp2's
 * error or the socket's). */
struct nghttp2_session;
int moxy_h2_send(struct nghttp2_session *ng, moxy_conn_t *conn, struct evbuffer *out, size_t *left,
                 const char **why);

#endif
